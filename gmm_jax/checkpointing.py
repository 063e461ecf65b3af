"""Training checkpoints: an Orbax ``CheckpointManager`` under ``WORKDIR/checkpoints``.

Each step directory holds three items:

    state/   train_state.TrainState: params, opt_state, step, rng (Orbax PyTree, by field
             name; restored with the target sharding)
    data/    the input iterator's position (JSON: {"epoch", "step_in_epoch"})
    config/  the run's config (JSON), so a checkpoint describes itself

Orbax writes a step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous steps intact; ``latest_step`` only sees
finalised steps and leftover temporaries are removed on the next start.

Loading a finished run (evaluation, export, the demo) is ``load_run``: it depends on
checkpoints only, not on the trainer, and reads just the parameters.
"""
from __future__ import annotations

import json
import logging
import warnings
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from gmm_jax import paths

CHECKPOINT_DIR = "checkpoints"


class TrainCheckpointer:
    """Save / restore the train state, data position and config of a run."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = paths.join(paths.absolute(workdir), CHECKPOINT_DIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep if max_to_keep > 0 else None,
            enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "config"))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, data_state: dict, config_json: str) -> bool:
        """Start saving ``step`` (asynchronously when enabled). ``state`` is a pytree of
        arrays (params, opt_state, step, rng)."""
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(dict(data_state)),
            config=ocp.args.JsonSave(json.loads(config_json))), force=True)

    def restore(self, step: int, abstract_state):
        """``(state, data_state)`` of ``step``; ``abstract_state`` is a pytree of
        ``jax.ShapeDtypeStruct`` with the target shardings."""
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore()))
        return out.state, out.data

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _directory(workdir: str) -> str:
    return paths.join(paths.absolute(workdir), CHECKPOINT_DIR)


class _quiet:
    """Orbax warns (through absl) about each saved item left out of a restore, for host
    NumPy arrays about the saved sharding, and about read-only managers: all expected."""

    def __enter__(self):
        self._log = logging.getLogger("absl")
        self._level = self._log.level
        self._log.setLevel(logging.ERROR)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Sharding info not provided")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self._log.setLevel(self._level)
        return False


def _reader(directory: str) -> ocp.CheckpointManager:
    """A manager that only reads: creates nothing, deletes nothing (a workdir that is
    only being inspected, or refused, is left exactly as it was)."""
    options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0,
                                           cleanup_tmp_directories=False)
    # Handlers named up front so that item_metadata can read the saved tree.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    with _quiet():  # read_only's own notices ("setting save_interval_steps=0", ...)
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def finished_steps(workdir: str) -> list[int]:
    """The finished (finalised) checkpoint steps of ``workdir``, ascending; ``[]`` when
    it has none (no ``checkpoints/``, or only temporaries of a killed save)."""
    directory = _directory(workdir)
    if not paths.isdir(directory):
        return []
    mngr = _reader(directory)
    try:
        return sorted(int(s) for s in mngr.all_steps())
    finally:
        mngr.close()


def saved_config(workdir: str, step: int) -> dict:
    """The run config saved with checkpoint ``step`` (``{}`` when it has none)."""
    mngr = _reader(_directory(workdir))
    try:
        with _quiet():
            out = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(out.config or {})
    finally:
        mngr.close()


def restore_params(workdir: str, step: Optional[int] = None) -> tuple[Any, int, dict]:
    """``(params as NumPy arrays, step, run config dict)`` from a run's checkpoints
    (latest by default), without the devices they were saved from. Only the ``params``
    subtree of the state is read (a partial restore: the optimiser moments, about twice
    the parameters again, stay on disk). The config is the one saved with that step
    (``{}`` if it has none)."""
    directory = _directory(workdir)
    if not paths.isdir(directory):
        raise FileNotFoundError(f"{workdir}: no {CHECKPOINT_DIR}/ directory (not a training "
                                "workdir, or no checkpoint was saved yet)")
    mngr = _reader(directory)
    try:
        steps = sorted(mngr.all_steps())
        if not steps:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{directory}: no checkpoint for step {step}; saved steps: {steps}")
        with _quiet():
            meta = mngr.item_metadata(step)["state"]
            tree = meta.tree if hasattr(meta, "tree") else meta
            if "params" not in tree:
                raise ValueError(f"{directory}/{step}: the saved state has no 'params'")
            item = {"params": tree["params"]}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        item)
            out = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                             partial_restore=True),
                config=ocp.args.JsonRestore()))
        return out.state["params"], int(step), dict(out.config or {})
    finally:
        mngr.close()


def openai_logit_scale(params, loss_cfg) -> Any:
    """``params`` with a ``softplus``/``exp`` run's ``nu`` in ``logit_scale`` replaced by
    OpenAI's ``log(scale)``; other runs' params are returned as they are. ``loss_cfg``:
    the run's saved ``loss`` section (a dict)."""
    from gmm_jax import losses
    mode = loss_cfg.get("temperature")
    if mode not in ("softplus", "exp") or "logit_scale" not in params:
        return params
    nu = np.asarray(params["logit_scale"])
    s = float(loss_cfg.get("temp_exp_s") or 1.0)
    log_scale = np.log(np.asarray(losses.scale_from_param(mode, nu, s), np.float64))
    return {**params, "logit_scale": log_scale.astype(nu.dtype)}


def load_run(workdir: str, step: Optional[int] = None):
    """``(model, params, tokenizer, step, run_config)`` of a training run: the latest
    finished checkpoint or ``step``, its saved config (a dict), the run's
    ``model_config.json`` and ``tokenizer/``.

    ``params["logit_scale"]`` is OpenAI's ``log(scale)`` whatever the run's
    ``loss.temperature`` (``softplus``/``exp`` runs train ``nu`` in that slot; converted
    here), so evaluation and exports need nothing else. Raises FileNotFoundError /
    ValueError naming what is missing."""
    from gmm_jax import pretrained
    from gmm_jax.models import CLIP
    from gmm_jax.tokenizer import Tokenizer
    params, step, run_config = restore_params(workdir, step)  # names a non-run first
    mcfg = pretrained.load_config(workdir)
    tok_dir = paths.join(workdir, pretrained.TOKENIZER_DIR)
    if not paths.isdir(tok_dir):
        raise FileNotFoundError(f"{workdir}: no {pretrained.TOKENIZER_DIR}/ directory")
    tok = Tokenizer.from_path(tok_dir, context_length=mcfg.context_length)
    params = openai_logit_scale(params, run_config.get("loss", {}))
    return CLIP(mcfg), jax.tree.map(jax.numpy.asarray, params), tok, step, run_config
