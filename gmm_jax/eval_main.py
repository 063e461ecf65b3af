r"""Evaluate a checkpoint: the paper's metrics table and figures (``eval.py``, ``gmm-eval``).

    python eval.py --config=configs/coco.py --workdir=/ckpt/run1 [--step N] [--out DIR]
    python eval.py --config=configs/coco.py --checkpoint=/models/clip-b32 --out DIR
    python eval.py --compare DIR1 DIR2 ... --out DIR

The first form loads a training run's Orbax checkpoint (the latest step unless
``--step``) and writes to ``WORKDIR/eval/`` (``WORKDIR/eval_step_N/`` with ``--step``);
the second a converted model directory (``python -m gmm_jax.convert``), the zero-shot
baseline; the third writes ``compare.md`` / ``compare.json`` for several eval outputs.
Knobs: ``--config.eval.*`` (see ``gmm_jax.eval_lib.default_eval_config``). Nothing is
downloaded: a suite whose data set is missing is skipped with one warning (``--strict``:
exit 2 naming it); results of the suites that ran are always written.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gmm_jax import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Train/eval config file.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with an Orbax checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted model directory "
                                  "(save_pretrained / gmm_jax.convert --out).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_COMPARE = flags.DEFINE_boolean("compare", False, "Compare the eval directories given as "
                                "positional arguments.")
_NO_SHARD = flags.DEFINE_boolean("no_shard", False, "Run on one device instead of a data mesh.")
_STRICT = flags.DEFINE_boolean("strict", False, "Fail (before any work) when a suite's data "
                               "set is not present locally, instead of skipping that suite "
                               "with a warning. Evaluation never downloads.")


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gmm-eval"


def _fail(msg: str):
    print(f"{_prog()}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def _compare(dirs):
    from gmm_jax import eval_lib
    if len(dirs) < 1:
        _fail("--compare needs one or more eval directories as arguments")
    out = _OUT.value or "."
    paths.makedirs(out)
    try:
        md, data = eval_lib.compare_runs(dirs, out)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    gaps = {name: d for name, d in zip(data["runs"], dirs)
            if paths.exists(paths.join(d, "embeddings.npz"))}
    if gaps:
        eval_lib.gap_figure_side_by_side(gaps, paths.join(out, "gap_side_by_side.png"))
    print(md)
    print(f"wrote {paths.join(out, 'compare.md')} and compare.json")


def _load_model():
    """(model, params, tokenizer, default out dir) from --workdir or --checkpoint."""
    if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
        _fail("give exactly one of --workdir (a training run) or --checkpoint (a model dir)")
    if _CHECKPOINT.value:
        path = _CHECKPOINT.value
        if not paths.isdir(path) or not paths.exists(paths.join(path, "model_config.json")):
            _fail(f"--checkpoint {path!r}: not a model directory (expected model_config.json, "
                  "params/ and tokenizer/ as written by gmm_jax.convert or save_pretrained)")
        from gmm_jax.pretrained import load_pretrained
        try:
            model, params, tok = load_pretrained(path)
        except (FileNotFoundError, ValueError) as e:
            _fail(f"--checkpoint {path!r}: {e}")
        if tok is None:
            _fail(f"--checkpoint {path!r} has no tokenizer/ directory: save one with the model")
        return model, params, tok, paths.join(path, "eval")
    workdir = _WORKDIR.value
    if not paths.isdir(workdir):
        _fail(f"--workdir {workdir!r} does not exist")
    from gmm_jax import checkpointing
    try:
        model, params, tok, step, _ = checkpointing.load_run(workdir, step=_STEP.value)
    except (FileNotFoundError, ValueError) as e:  # no checkpoint / no such step
        _fail(f"--workdir {workdir!r}: {e}")
    sub = "eval" if _STEP.value is None else f"eval_step_{step}"
    logging.info("loaded %s at step %s", workdir, step)
    return model, params, tok, paths.join(workdir, sub)


def main(argv):
    if _COMPARE.value:
        return _compare(argv[1:])
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]} (did you mean --compare?)")
    config = _CONFIG.value
    if config is None:
        _fail("--config is required (it names the data and the eval suites)")
    import jax
    from jax.sharding import AxisType

    from gmm_jax import eval_lib
    if "eval" not in config:
        config.eval = eval_lib.default_eval_config()
    model, params, tok, out = _load_model()
    out = _OUT.value or out
    mesh = None
    if not _NO_SHARD.value and jax.device_count() > 1:
        mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    try:
        values = eval_lib.evaluate(model, params, tok, config, out, mesh=mesh,
                                   strict=_STRICT.value)
    except (eval_lib.EvalError, FileNotFoundError) as e:
        if paths.exists(paths.join(out, "metrics.json")):
            print(f"{_prog()}: results of the suites that finished are in {out}", file=sys.stderr)
        _fail(str(e))
    print(paths.read_text(paths.join(out, "metrics.md")))
    info = paths.read_json(paths.join(out, "eval_info.json"))
    for key, n in info.items():
        if key.endswith("/duplicate_captions"):
            print(f"{key.split('/')[0]}: {n} duplicate captions (identical text counts as "
                  "the same caption)")
    for suite, datasets in info.get("skipped", {}).items():
        print(f"skipped suite {suite}: {', '.join(datasets)} not available locally")
    print(f"wrote {len(values)} metrics and figures to {out}")


def run() -> None:
    """Entry point of ``eval.py`` and the installed ``gmm-eval`` command."""
    from gmm_jax import cli
    sys.argv = cli.resolve_config_names(sys.argv)
    app.run(main)


if __name__ == "__main__":
    run()
