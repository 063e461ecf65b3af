r"""Make the shipped pre-trained demo CLIP (gmm_jax/assets/demo_clip) from scratch.

    python experiments/make_demo_model.py [--workdir=runs/demo_model] \
        [--out=gmm_jax/assets/demo_clip] [--config.X=...]

Pre-trains exactly what ``python train.py --config=configs/demo.py
--config.demo.pretrain.rebuild=True`` pre-trains (``demo_flow.pretrain_config``: CLIP
loss, learned temperature, the ``config.demo.pretrain`` settings, seeded, so the run is
deterministic up to floating-point reduction order) in WORKDIR/pretrain (resumable), writes
the model directory to OUT, evaluates it (retrieval, geometry and zero-shot on source_test,
retrieval and zero-shot on target_test) into WORKDIR/eval, and writes OUT/metrics.json:

    {"command", "step", "tau", "train_seconds", "eval": {metric: value},
     "quick": {split: demo_model.quick_metrics(...)}}

``quick`` is what tests/test_demo_model.py recomputes from the shipped files.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_ROOT, "configs", "demo.py"), "Demo config file.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_model", "Pre-training directory.")
_OUT = flags.DEFINE_string("out", os.path.join(_ROOT, "gmm_jax", "assets", "demo_clip"),
                           "Model directory to write.")

# What the model is judged on (docs/demo.md): capability on the source domain, transfer
# to the target domain, and the modality gap.
KEEP = ("retrieval/i2t_r1", "retrieval/i2t_r5", "retrieval/t2i_r1", "retrieval/t2i_r5",
        "retrieval/rsum", "retrieval_target_test/i2t_r1", "retrieval_target_test/t2i_r1",
        "retrieval_target_test/rsum", "zeroshot/gmm_demo_source_test/top1",
        "zeroshot/gmm_demo_target_test/top1", "gap/centroid_distance",
        "gap/linear_separability", "gap/mean_positive_cosine", "gap/uniformity",
        "gap/alignment")


def eval_config(config):
    """Evaluation of the pre-trained model: source_test, plus target_test."""
    from gmm_jax import demo_flow
    ecfg = demo_flow.eval_config(config)
    ecfg.data.eval_split = "source_test"
    ecfg.eval.suites = "retrieval,geometry,zeroshot"
    ecfg.eval.retrieval.extra_splits = "target_test"
    ecfg.eval.zeroshot.datasets = "gmm_demo:source_test,gmm_demo:target_test"
    return ecfg


def main(argv):
    del argv
    from gmm_jax import demo_flow, demo_model, eval_lib, pretrained
    config = _CONFIG.value
    workdir, out = os.path.abspath(_WORKDIR.value), os.path.abspath(_OUT.value)
    pre_dir = os.path.join(workdir, "pretrain")
    t0 = time.perf_counter()
    pre_cfg = demo_flow.pretrain_config(config)
    marker = demo_flow.train_stage(pre_cfg, pre_dir, print)
    model_dir, tau = demo_flow.export_model(pre_dir, marker)
    if os.path.isdir(out):
        shutil.rmtree(out)
    model, params, tok = pretrained.load_pretrained(model_dir)
    pretrained.save_pretrained(out, model.config, params, tok)
    print(f"model written to {out} (tau {tau:.4f}); evaluating", flush=True)
    values = eval_lib.evaluate(model, params, tok, eval_config(config),
                               os.path.join(workdir, "eval"), title="pre-trained demo CLIP")
    quick = {s: demo_model.quick_metrics(model, params, tok, s) for s in demo_model.QUICK_SPLITS}
    info = {"command": "python " + " ".join(sys.argv), "step": marker["step"], "tau": tau,
            "train_seconds": marker.get("seconds"),
            "seconds_total": round(time.perf_counter() - t0, 1),
            "eval": {k: values[k] for k in KEEP if k in values}, "quick": quick,
            "quick_examples": demo_model.QUICK_EXAMPLES}
    with open(os.path.join(out, demo_model.METRICS_FILE), "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    app.run(main)
