"""The whole flow with every user path a ``gs://`` path, offline (run by
tests/test_gcs_paths.py in its own process: the mocks below are global).

    python tests/gcs_paths_worker.py MIRROR DATA_DIR OUT_JSON

``etils.epath.testing.mock_epath`` serves ``gs://B/x`` from ``MIRROR/B/x``. Everything the
project reads or writes goes through epath, so it is served by the mock; a plain
``open()`` / ``os.path.exists`` / ``os.path.isdir`` / ``os.path.isfile`` on a ``gs://``
string raises (and is recorded), and the process runs in a directory holding a file named
``gs:`` so that any other local write to ``gs://...`` (``os.makedirs``, a C++ library)
fails too.

Three libraries reach Cloud Storage without epath; each gets one documented test-only
mapping onto the same mirror (the project's own code gets none):
  * tensorstore (Orbax's array data): Orbax builds a ``gcs`` kvstore spec for ``gs://``
    paths (``gcs_utils.get_kvstore_for_gcs``); here it is a ``file`` kvstore on the mirror.
    Orbax's other GCS-only calls ask the Cloud Storage API whether the bucket has a
    hierarchical namespace (answered "no", as for most buckets); its deletes go through
    epath.
  * TensorBoard (``tf.summary.create_file_writer``): TF's C++ file system writes
    ``gs://`` itself; the log dir is mapped onto the mirror.
  * TFDS records (``DATA_DIR``): tf.data reads them in C++, beyond any Python mock, so the
    demo data stays local; the own-data reader (captions files, images) is the project's
    code and is checked on ``gs://`` paths.
"""
from __future__ import annotations

import builtins
import json
import os
import sys

SUITES = "retrieval,geometry,calibration"  # the suites that write files; quick


def main(mirror, data_dir, out_json):
    from etils.epath import testing as epath_testing

    def local(p):
        s = os.fspath(p)
        return os.path.join(mirror, s[len("gs://"):]) if s.startswith("gs://") else s

    def remote(s):
        s = os.fspath(s)
        return "gs://" + s[len(mirror) + 1:] if s.startswith(mirror + os.sep) else s

    def one(orig, path, *a, **k):
        return orig(local(path), *a, **k)

    def two(orig, path, dst, *a, **k):
        return orig(local(path), local(dst), *a, **k)

    def glob(orig, pattern):
        return [remote(p) for p in orig(local(pattern))]

    def walk(orig, top, **k):
        for root, dirs, files in orig(local(top), **k):
            yield remote(root), dirs, files

    bypasses = []

    def guard(fn, name):
        def wrapped(p, *a, **k):
            if isinstance(p, (str, bytes, os.PathLike)) and os.fsdecode(p).startswith("gs:"):
                bypasses.append(f"{name}({os.fsdecode(p)!r})")
                raise AssertionError(f"bypass of the path layer: {name}({os.fsdecode(p)!r})")
            return fn(p, *a, **k)
        return wrapped

    real_open = builtins.open
    builtins.open = guard(real_open, "open")
    for fn in ("exists", "isdir", "isfile"):
        setattr(os.path, fn, guard(getattr(os.path, fn), f"os.path.{fn}"))

    import tensorflow as tf
    from orbax.checkpoint._src.path import gcs_utils
    gcs_utils.get_kvstore_for_gcs = lambda p: {"driver": "file", "path": local(p)}
    gcs_utils.is_hierarchical_namespace_enabled = lambda p: False
    create_writer = tf.summary.create_file_writer
    tf.summary.create_file_writer = lambda logdir, *a, **k: create_writer(local(logdir), *a, **k)

    mocks = {f: one for f in ("exists", "isdir", "listdir", "makedirs", "mkdir", "open",
                              "remove", "rmtree", "stat")}
    # mock_epath replaces the backend table, which etils reads only when TensorFlow is not
    # installed (with TF it picks its gfile backend for gs:// directly): say it is not.
    from etils.epath import gpath
    gpath._is_tf_installed = lambda: False
    with epath_testing.mock_epath(**mocks, rename=two, replace=two, copy=two, glob=glob,
                                  walk=walk):
        result = None
        try:
            result = flow(data_dir)
        finally:
            with real_open(out_json, "w") as f:
                json.dump({"result": result, "bypasses": bypasses}, f, indent=1)


def flow(data_dir):
    """Each step of the user's flow on gs:// paths; returns what the test checks."""
    import numpy as np
    from absl import flags

    from gmm_jax import checkpointing, convert, demo_flow, eval_main, paths, train_lib
    from gmm_jax.data import image_text_files
    from gmm_jax.tokenizer import Tokenizer
    from tests.demo_tiny_config import get_config
    out, banners = {}, []
    G = "gs://bucket"
    cfg = get_config(data_dir)
    cfg.eval.suites = SUITES

    # the demo's stages: pre-train, export, evaluate; a second pass reuses each one
    pre_dir = f"{G}/demo/pretrain"
    pre = demo_flow.pretrain_config(cfg)
    pre.total_steps = 2
    ecfg = demo_flow.eval_config(cfg)
    marker = demo_flow.train_stage(pre, pre_dir, banners.append)
    model_dir, tau = demo_flow.export_model(pre_dir, marker)
    ev = demo_flow.evaluate_stage(ecfg, pre_dir, marker, None, "pretrained")
    stamp = paths.path(ev, "metrics.json").stat().mtime
    again = demo_flow.train_stage(pre, pre_dir, banners.append)
    assert demo_flow.export_model(pre_dir, again)[0] == model_dir
    assert demo_flow.evaluate_stage(ecfg, pre_dir, again, None, "pretrained") == ev
    out["stage_reused"] = any("reusing" in b for b in banners)
    out["eval_reused"] = paths.path(ev, "metrics.json").stat().mtime == stamp

    # fine-tune from the exported gs:// model (config.init, config.tokenizer), then resume
    ft_dir = f"{G}/runs/ft"
    ft = demo_flow.finetune_config(cfg, "m2mix", model_dir, tau)
    ft.tokenizer = paths.join(model_dir, "tokenizer")
    ft.total_steps, ft.checkpoint_every_steps = 2, 2
    train_lib.train_and_evaluate(ft, ft_dir)
    ft.total_steps = 4
    out["resumed_to"] = int(train_lib.train_and_evaluate(ft, ft_dir)["step"])
    out["steps"] = checkpointing.finished_steps(ft_dir)

    # eval.py on the run, then --compare (absl flags parsed as the command line would)
    cfg_file = f"{os.path.dirname(os.path.abspath(__file__))}/demo_tiny_config.py:{data_dir}"

    def eval_cli(*args):
        flags.FLAGS.unparse_flags()
        argv = flags.FLAGS(["eval.py", f"--config={cfg_file}", *args])
        flags.FLAGS["config"].value.eval.suites = SUITES  # the config file's eval, quicker
        eval_main.main(argv)

    eval_cli(f"--workdir={ft_dir}", f"--out={G}/evals/ft")
    eval_cli("--compare", ev, f"{G}/evals/ft", f"--out={G}/evals/cmp")
    out["compare_md"] = paths.read_text(f"{G}/evals/cmp/compare.md")

    # export the run as a Hugging Face directory and load it back
    assert convert.main(["--src", ft_dir, "--format", "run", "--to", "hf",
                         "--out", f"{G}/export/hf"]) == 0
    _, params, tok, _, _ = checkpointing.load_run(ft_dir)
    _, back = convert.from_hf(f"{G}/export/hf")
    a, b = _leaves(params), _leaves(back)
    out["hf_same_keys"] = sorted(a) == sorted(b)
    out["hf_max_abs_diff"] = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
                                 for k in a if k in b)
    out["hf_tokenizer_same"] = (Tokenizer.from_path(f"{G}/export/hf").encoder == tok.encoder)

    # the demo report (json, markdown, gap figures) on gs://
    rep = demo_flow.write_report(f"{G}/demo", {"pretrained": ev, "ft": f"{G}/evals/ft"}, {
        "command": "test", "eval_split": ecfg.data.eval_split,
        "stages": {"pretrained": {"dir": pre_dir, "step": marker["step"]}}})
    out["report"] = {k: paths.exists(v) for k, v in rep.items()}

    # own data: captions files and images read through the path layer
    oc = image_text_files.make_config(f"{G}/own/captions.jsonl", f"{G}/own/images")
    stats = {}
    pairs = list(image_text_files.generate_pairs(
        image_text_files.parse_captions_file(oc.files_path), oc.images_dir, False, stats))
    out["own_pairs"] = len(pairs)
    out["own_bad"] = stats["num_bad_images"]
    out["own_files_path"] = oc.files_path
    return out


def _leaves(tree):
    import jax
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(*sys.argv[1:4])
