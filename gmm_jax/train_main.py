r"""Train / fine-tune CLIP with m2-Mix and friends (``train.py`` and ``gmm-train``).

    python train.py --config=configs/coco.py --workdir=/ckpt/run1 [--config.loss.method=clip ...]

A run resumes from the latest checkpoint in --workdir. Without --workdir the run goes to
runs/<config file name>. Mistakes (config keys, paths, data) print one line naming the
culprit; --verbosity=1 or GMM_TRACEBACK=1 shows the traceback. See docs/training.md.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from gmm_jax import cli, paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs).")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected arguments {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise cli.UserError("--config is required, e.g. --config=configs/demo.py")
    workdir = _WORKDIR.value
    if not workdir:
        name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
        workdir = os.path.join("runs", name)
    from absl import logging as absl_logging
    if not cli.traceback_wanted():
        absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax is chatty at INFO
    logging.getLogger("gmm_jax").setLevel(logging.INFO)
    import jax
    if config.get("distributed"):
        jax.distributed.initialize()
    if "demo" in config:  # pre-train, fine-tune each recipe, evaluate, report (docs/demo.md)
        from gmm_jax import demo_flow
        try:
            demo_flow.run(config, workdir, command=" ".join(["python train.py"] + sys.argv[1:]))
        except demo_flow.DemoError as e:
            raise cli.UserError(str(e)) from e
        return
    from gmm_jax import train_lib
    train_lib.validate_config(config)
    logging.info("workdir %s, %d processes, %d devices", workdir, jax.process_count(),
                 jax.device_count())
    out = train_lib.train_and_evaluate(config, workdir)
    where = paths.absolute(workdir)
    if out.get("stopped"):
        print(f"{_prog()}: stopped at step {out['step']} (SIGTERM), resumable: run the same "
              f"command again to continue; workdir {where}")
    else:
        print(f"{_prog()}: finished at step {out['step']}; workdir {where}")


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "gmm-train"


def run() -> None:
    """Entry point of ``train.py`` and the installed ``gmm-train`` command."""
    sys.argv = cli.resolve_config_names(sys.argv)
    app.run(cli.run_cli(main, _prog()))


if __name__ == "__main__":
    run()
