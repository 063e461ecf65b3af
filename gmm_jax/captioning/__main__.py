r"""Captioning metrics of one model on the data of a config.

    python -m gmm_jax.captioning --config=configs/demo.py --workdir=/ckpt/run1 --out=DIR
    python -m gmm_jax.captioning --config=configs/coco.py --checkpoint=/models/clip-b32 \
        --cap.steps=5000 --cap.cache_dir=/tmp/capcache --out=DIR

``--config`` supplies ``config.data`` (dataset and splits); the captioner's knobs are
``--cap.*`` (``gmm_jax.captioning.captioning_config``). Writes ``captioning.json`` and
``captioning_samples.md`` to ``--out``.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gmm_jax import paths
from gmm_jax.captioning.config import captioning_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Train/eval config file (its "
                                          "config.data names the dataset).", lock_config=False)
_CAP = config_flags.DEFINE_config_dict("cap", captioning_config(), "Captioning knobs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run (Orbax checkpoint, latest step).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted model directory.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", None, "Default: the source's train split.")
_TEST_SPLIT = flags.DEFINE_string("test_split", None, "Default: the source's eval split.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")


def _fail(msg: str):
    print(f"python -m gmm_jax.captioning: error: {msg}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    del argv
    from gmm_jax.captioning.config import check_config
    from gmm_jax.captioning.run import captioning_on_data
    if _CONFIG.value is None or not _OUT.value:
        _fail("--config and --out are required")
    if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
        _fail("give exactly one of --workdir (a training run) or --checkpoint (a model dir)")
    try:
        check_config(_CAP.value, where="--cap")
        if _WORKDIR.value:
            from gmm_jax.checkpointing import load_run
            model, params, tok, _, _ = load_run(_WORKDIR.value)
        else:
            from gmm_jax.pretrained import load_pretrained
            model, params, tok = load_pretrained(_CHECKPOINT.value)
        if tok is None:
            _fail("the model has no tokenizer/ directory")
        metrics, md = captioning_on_data(model, params, tok, _CONFIG.value.data, _CAP.value,
                                         _TRAIN_SPLIT.value, _TEST_SPLIT.value)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    paths.write_json(paths.join(_OUT.value, "captioning.json"), metrics, indent=1,
                     sort_keys=True)
    paths.write_text(paths.join(_OUT.value, "captioning_samples.md"), md)
    for k, v in sorted(metrics.items()):
        logging.info("%s = %s", k, v)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    print(md)


if __name__ == "__main__":
    app.run(main)
