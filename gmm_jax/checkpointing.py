"""Training checkpoints: an Orbax ``CheckpointManager`` under ``WORKDIR/checkpoints``.

Each step directory holds three items:

    state/   params, opt_state, step, rng (Orbax PyTree; restored with the target sharding)
    data/    the input iterator's position (JSON: {"epoch", "step_in_epoch"})
    config/  the run's config (JSON), so a checkpoint describes itself

Orbax writes a step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous steps intact; ``latest_step`` only sees
finalised steps and leftover temporaries are removed on the next start.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


class TrainCheckpointer:
    """Save / restore the train state, data position and config of a run."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
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


def restore_params(workdir: str, step: Optional[int] = None) -> tuple[Any, int, dict]:
    """``(params as NumPy arrays, step, run config dict)`` from a run's checkpoints
    (latest by default), without the optimiser state's structure or the devices it was
    saved from. The config is the one saved with that step (``{}`` if it has none)."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir}: no {CHECKPOINT_DIR}/ directory (not a training "
                                "workdir, or no checkpoint was saved yet)")
    mngr = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
    try:
        steps = sorted(mngr.all_steps())
        if not steps:
            raise FileNotFoundError(f"{directory}: no finished checkpoint")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ValueError(f"{directory}: no checkpoint for step {step}; saved steps: {steps}")
        # Orbax warns (through absl) about each saved item left out ("data" here) and,
        # for host NumPy arrays, about the saved sharding: both expected.
        absl_log = logging.getLogger("absl")
        level = absl_log.level
        absl_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sharding info not provided")
                meta = mngr.item_metadata(step)["state"]
                tree = meta.tree if hasattr(meta, "tree") else meta
                restore_args = jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
                out = mngr.restore(step, args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args),
                    config=ocp.args.JsonRestore()))
        finally:
            absl_log.setLevel(level)
        return out.state["params"], int(step), dict(out.config or {})
    finally:
        mngr.close()
