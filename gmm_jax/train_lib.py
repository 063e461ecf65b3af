"""Training: ``train_and_evaluate(config, workdir)``.

One readable function (big_vision / Flax-examples style). The pieces: model and
tokenizer here; config validation and resume checks in ``run_config``; state, mesh and
the jitted step in ``train_state``; the optimiser in ``optim``; checkpoints and run
loading (``checkpointing.load_run``) in ``checkpointing``; the local loss in
``distributed_loss``. See docs/training.md.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gmm_jax import checkpointing, cli, gradcache, losses, optim, paths, train_state
from gmm_jax.models import CLIP, init_params, presets
from gmm_jax.run_config import (  # noqa: F401 - re-exported: train_lib's public names
    CHOICES,
    MODEL_FIELDS,
    RESUME_MAY_CHANGE,
    check_paths,
    check_resumable,
    config_to_json,
    default_config,
    validate_config,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model + tokenizer

def _train_tokenizer(config, vocab_size: int, context_length: int):
    """A BPE vocabulary learned from the training captions (the demo; no CLIP vocab)."""
    from gmm_jax.data import get_source
    from gmm_jax.data.sources import DEFAULT_SPLITS
    from gmm_jax.tokenizer import Tokenizer
    source = get_source(config.data)
    split = config.data.train_split or DEFAULT_SPLITS[source.name][0]
    texts = [c.decode("utf-8") for ex in source.raw(split).as_numpy_iterator()
             for c in ex["captions"]]
    if source.name == "demo":  # the zero-shot prompts use the class names
        from gmm_jax.data import demo
        texts += [t.format(c) for t in demo.TEMPLATES for c in demo.CLASS_NAMES]
    log.info("training a %d-entry BPE vocabulary on %d captions", vocab_size, len(texts))
    return Tokenizer.train(texts, vocab_size=vocab_size, context_length=context_length)


def build_model_and_tokenizer(config, workdir: str, load_params: bool = True):
    """``(model, params or None, tokenizer)``. A run with a finished checkpoint in
    ``workdir`` reuses the workdir's ``model_config.json`` and ``tokenizer/`` (params
    None: they come from the checkpoint); otherwise, whatever half-written files the
    workdir holds, ``config.init`` (a converted model directory, or another run's
    workdir: its latest checkpoint) or ``config.model.preset`` + overrides, from
    scratch."""
    from gmm_jax import pretrained
    from gmm_jax.tokenizer import Tokenizer
    run_cfg = {"dtype": config.model.dtype, "remat": bool(config.model.remat),
               "attention": config.model.get("attention", "einsum")}
    if checkpointing.finished_steps(workdir):  # resuming
        mcfg = pretrained.load_config(workdir).replace(**run_cfg)
        tok_dir = paths.join(workdir, pretrained.TOKENIZER_DIR)
        if not paths.isdir(tok_dir):
            raise FileNotFoundError(f"{workdir}: has checkpoints but no "
                                    f"{pretrained.TOKENIZER_DIR}/ directory")
        tok = Tokenizer.from_path(tok_dir, context_length=mcfg.context_length)
        return CLIP(mcfg), None, tok
    if config.init:
        from gmm_jax import hub  # a hub name -> its converted directory; paths unchanged
        init = hub.resolve_model_dir(config.init)
        if paths.isdir(paths.join(init, checkpointing.CHECKPOINT_DIR)):
            model, params, tok, _, _ = checkpointing.load_run(init)  # a run's workdir
            model = CLIP(model.config.replace(**run_cfg))
        else:
            model, params, tok = pretrained.load_pretrained(init, **run_cfg)
        mcfg = model.config
        if config.tokenizer:
            tok = Tokenizer.from_path(config.tokenizer, context_length=mcfg.context_length)
        if tok is None:
            raise ValueError(f"config.init={config.init!r} has no tokenizer/; set config.tokenizer")
    else:
        overrides = {f: config.model[f] for f in MODEL_FIELDS if config.model.get(f) is not None}
        mcfg = presets.get_config(config.model.preset, **overrides, **run_cfg)
        if config.tokenizer:
            tok = Tokenizer.from_path(config.tokenizer, context_length=mcfg.context_length)
        else:
            size = int(config.tokenizer_vocab_size) or mcfg.vocab_size
            tok = _train_tokenizer(config, size, mcfg.context_length)
        if "vocab_size" not in overrides and tok.vocab_size != mcfg.vocab_size:
            mcfg = mcfg.replace(vocab_size=tok.vocab_size)  # no unused embedding rows
        model = CLIP(mcfg)
        params = init_params(model, jax.random.key(int(config.seed))) if load_params else None
    if tok.vocab_size > mcfg.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} ids but the model's vocab_size is "
                         f"{mcfg.vocab_size}")
    return model, params, tok


def load_checkpoint(workdir: str, step: Optional[int] = None):
    """``(model, params, tokenizer, step)``: ``checkpointing.load_run`` without the run
    config (kept for callers of the old name; new code calls ``load_run``)."""
    return checkpointing.load_run(workdir, step)[:4]


# --------------------------------------------------------------------------- logging

def _write_scalars(writer, step: int, scalars: dict) -> None:
    """TensorBoard scalar events through ``tf.summary.scalar`` (the tensorboard wheel
    provides its implementation)."""
    import tensorflow as tf
    with writer.as_default(step=step):
        for k, v in scalars.items():
            tf.summary.scalar(k, v)
    writer.flush()


class _Logger:
    """TensorBoard scalars + a tqdm bar with images/s and ETA (process 0 only: the
    others are built with ``enabled=False``)."""

    def __init__(self, workdir, total, start, batch_size, enabled, bar):
        self.writer, self.bar = None, None
        if enabled:
            import tensorflow as tf
            self.writer = tf.summary.create_file_writer(paths.join(workdir, "tensorboard"))
            if bar:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.batch_size, self.t0, self.step0 = batch_size, time.perf_counter(), start

    def step(self, step: int, metrics: Optional[dict]):
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
        if metrics is None:
            return
        now = time.perf_counter()
        dt = max(now - self.t0, 1e-9) / max(step - self.step0, 1)
        ips = self.batch_size / dt
        self.t0, self.step0 = now, step
        metrics = {k: float(v) for k, v in metrics.items()} | {"images_per_sec": ips,
                                                                "step_time_s": dt}
        if self.writer is not None:
            _write_scalars(self.writer, step, metrics)
        line = f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        if self.bar is not None:  # printed above the bar, not through it
            self.bar.set_postfix(loss=f"{metrics['loss/total']:.4f}", img_s=f"{ips:.0f}")
            self.bar.write(line, file=sys.stderr)
        else:
            log.info(line)
        return metrics

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _eval_end(config, total: int) -> int:
    """The step whose ``at_end`` suites run: ``total`` when ``config.eval_at_end``,
    else -1 (no step)."""
    return total if config.eval_at_end else -1


def _eval_due_fn(config, total: int) -> Callable[[int], bool]:
    """``due(step)``: True when a suite of ``config.eval`` is due at ``step``: its own
    ``log_every`` (0 = ``config.eval_every_steps``) or, with ``config.eval_at_end``, its
    ``at_end``. The schedule is read once (reading the eval config costs milliseconds)."""
    from gmm_jax import eval_lib
    schedule, end = eval_lib.suite_schedule(config), _eval_end(config, total)
    return lambda step: bool(eval_lib.due_in(schedule, step, end))


def _run_eval(config, model, params, tok, out_dir, scale, mesh, step, total):
    """The in-training eval hook: only the suites due at ``step`` run."""
    from gmm_jax import eval_lib
    return eval_lib.evaluate(model, params, tok, config, out_dir, scale=scale, mesh=mesh,
                             step=step, total_steps=_eval_end(config, total))


# --------------------------------------------------------------------------- training

class NonFiniteError(cli.UserError, FloatingPointError):
    """The loss (or a gradient or parameter) became NaN/inf; nothing from that step on
    was saved."""


@jax.jit
def _track_finite(ok, first_bad, metrics, step):
    """Device-side "every step so far was finite" flag and the first bad step (no host
    sync per step; read at log steps and before saves)."""
    now = jnp.isfinite(metrics["loss/total"]) & jnp.isfinite(metrics["grad_norm"])
    first_bad = jnp.where(ok & ~now, step, first_bad)
    return ok & now, first_bad


_global_norm = jax.jit(optax.global_norm)


@jax.jit
def _tree_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class _SigtermFlag:
    """SIGTERM (preemption notice) sets a flag: the loop finishes the step, saves it and
    stops. Installed before anything else, so an early notice is not fatal."""

    def __init__(self):
        self.flag, self.old = False, None
        try:
            self.old = signal.signal(signal.SIGTERM, self._set)
        except ValueError:  # not the main thread
            pass

    def _set(self, *_):
        self.flag = True

    def should_stop(self) -> bool:
        if jax.process_count() == 1:
            return self.flag
        from jax.experimental import multihost_utils  # every host must agree
        flags = multihost_utils.process_allgather(np.asarray(self.flag, np.int32))
        return bool(np.max(flags))

    def restore(self):
        if self.old is not None:
            signal.signal(signal.SIGTERM, self.old)


def _close_all(*closers) -> None:
    """Run every closer even if one raises (a failing close must not leave the others'
    threads running and the process hanging); the first error is logged."""
    for close in closers:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing on an error path; the cause is raised
            log.exception("while closing after training")


def _write_run_files(workdir: str, mcfg, tok, config, fresh: bool) -> None:
    """``model_config.json``, ``tokenizer/`` (fresh runs: replacing any leftovers of a
    start that never saved) and ``config.json``."""
    from gmm_jax import pretrained
    if fresh:
        pretrained.save_config(workdir, mcfg.replace(dtype="float32", remat=False,
                                                     attention="einsum"))
        tok_dir = paths.path(workdir) / pretrained.TOKENIZER_DIR
        if tok_dir.is_dir():
            tok_dir.rmtree()
        tok.save(tok_dir)
    paths.write_text(paths.join(workdir, "config.json"), config_to_json(config))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from ``workdir``'s latest finished checkpoint if any); returns
    ``{"step", "metrics", "state", "stopped"}`` (``stopped``: SIGTERM ended the run
    early after saving ``step``; running again resumes).

    A workdir without a finished checkpoint is a fresh start whatever else it holds; one
    whose saved config differs from ``config`` (outside ``RESUME_MAY_CHANGE``) is
    refused before anything is written. Raises ``NonFiniteError`` at the first
    non-finite loss (checked at log steps and before each save, which it never makes)."""
    validate_config(config)
    check_paths(config)
    workdir = paths.absolute(workdir)
    steps = checkpointing.finished_steps(workdir)
    latest = steps[-1] if steps else None
    if latest is not None:
        changed = check_resumable(checkpointing.saved_config(workdir, latest), config,
                                  workdir, latest)
        if changed:
            log.warning("resuming with changed %s", ", ".join(f"config.{k}" for k in changed))
    lead = jax.process_index() == 0
    mesh = train_state.make_mesh(config.mesh.axes, config.mesh.shape)
    n_batch = int(np.prod([mesh.shape[a] for a in train_state.batch_axes(mesh)]))
    if config.batch_size % n_batch:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                         f"{n_batch} data-parallel devices of the mesh {dict(mesh.shape)}")
    gradcache.check_chunks(int(config.batch_size), int(config.embed_chunks), n_batch)
    created = not paths.exists(workdir)
    paths.makedirs(workdir)
    sigterm = _SigtermFlag()
    ckpt, failed = None, True
    try:  # every exit closes the checkpointer (its async threads) and the handler
        ckpt = checkpointing.TrainCheckpointer(workdir, int(config.max_to_keep),
                                               bool(config.async_checkpointing))
        out = _train(config, workdir, latest, mesh, ckpt, sigterm, lead)
        failed = False
        return out
    finally:
        _close_all(*(f for f in (ckpt and ckpt.close, sigterm.restore) if f))
        if failed and created and lead and not checkpointing.finished_steps(workdir):
            # a start that failed before any checkpoint leaves nothing behind
            paths.path(workdir).rmtree(missing_ok=True)


def _train(config, workdir, latest, mesh, ckpt, sigterm, lead):
    """The body of ``train_and_evaluate`` once the workdir is accepted."""
    from gmm_jax.data import make_train_iterator
    model, params, tok = build_model_and_tokenizer(config, workdir, load_params=latest is None)
    mcfg = model.config
    if lead:
        _write_run_files(workdir, mcfg, tok, config, fresh=latest is None)

    data_sharding = train_state.batch_sharding(mesh)
    it = make_train_iterator(config.data, tok, mcfg.image_size, int(config.batch_size),
                             int(config.seed), sharding=data_sharding,
                             context_length=mcfg.context_length)
    total = int(config.total_steps) or int(config.num_epochs) * it.steps_per_epoch
    tx, lr_fn = optim.make_optimizer(config, total)

    def fresh_state(p):
        return train_state.new_state(train_state.init_temperature_param(p, config.loss), tx,
                                     int(config.seed))

    if latest is None:
        abstract = jax.eval_shape(fresh_state, params)
    else:
        abstract = jax.eval_shape(lambda: fresh_state(init_params(model, jax.random.key(0))))
    shardings = train_state.state_shardings(abstract, mesh)
    if latest is None:
        state = jax.jit(fresh_state, out_shardings=shardings)(params)
        del params
        log.info("fresh run: %d steps (%d per epoch), workdir %s", total, it.steps_per_epoch,
                 workdir)
    else:
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract, shardings)
        state, data_state = ckpt.restore(latest, target)
        log.info("resumed from step %d (data position %s)", latest, data_state)
        it = make_train_iterator(config.data, tok, mcfg.image_size, int(config.batch_size),
                                 int(config.seed), sharding=data_sharding, state=data_state,
                                 context_length=mcfg.context_length)

    if config.loss_impl == "local":
        from gmm_jax.distributed_loss import local_objective
        objective = local_objective(config.loss, mesh, train_state.batch_axes(mesh))
    else:
        objective = losses.build_objective(config.loss)
    step_fn = train_state.make_train_step(model, objective, tx, config.loss, total, lr_fn, mesh,
                                          shardings, embed_chunks=int(config.embed_chunks))
    scale_fn, _ = train_state.temperature_fns(config.loss, total)

    start = int(jax.device_get(state.step))
    logger = _Logger(workdir, total, start, int(config.batch_size), lead,
                     bool(config.progress_bar))
    last_metrics, step, stopping, last_saved = {}, start, False, latest
    ok, first_bad = jnp.asarray(True), jnp.asarray(-1, jnp.int32)

    def check_finite(state, step):
        if not bool(ok) or not bool(_tree_finite(state.params)):
            bad = int(first_bad) if int(first_bad) >= 0 else step
            kept = (f"the last good checkpoint is step {last_saved} "
                    f"({ckpt.directory}/{last_saved})" if last_saved is not None
                    else "no checkpoint was saved")
            raise NonFiniteError(
                f"non-finite loss or gradient (NaN/inf) at step {bad}; stopped without saving "
                f"it ({kept}). Lower config.optim.lr or set config.optim.grad_clip, and start "
                f"a new --workdir (with --config.init={workdir} to go on from that checkpoint)")

    eval_due = _eval_due_fn(config, total)
    try:
        for step in range(start + 1, total + 1):
            batch = next(it)
            epoch = np.int32(batch.pop("epoch"))
            state, metrics = step_fn(state, batch, epoch)
            ok, first_bad = _track_finite(ok, first_bad, metrics, step)
            log_now = step % int(config.log_every_steps) == 0 or step == total
            stopping = sigterm.should_stop()
            save_now = step % int(config.checkpoint_every_steps) == 0 or step == total or stopping
            if log_now or save_now:
                check_finite(state, step)
            if log_now:  # grad_norm is the gradients' l2 norm; the params' at log steps
                metrics = {**metrics, "l2_params": _global_norm(state.params)}
            logged = logger.step(step, jax.device_get(metrics) if log_now else None)
            last_metrics = logged or last_metrics
            if save_now:
                ckpt.save(step, state, it.get_state(), config_to_json(config))
                last_saved = step
            if eval_due(step):
                scale = float(scale_fn(state.params, state.step))
                _run_eval(config, model, state.params, tok,
                          paths.join(workdir, f"eval_step_{step}"), scale, mesh,
                          step, total)
            if stopping:
                log.warning("SIGTERM: saved step %d, stopping (resumable)", step)
                break
    finally:
        logger.close()
        del it  # drops the input pipeline (tf.data iterator, prefetched batches)
    if lead and last_metrics:
        paths.write_json(paths.join(workdir, "train_metrics.json"), {"step": step, **last_metrics},
                         indent=1, sort_keys=True)
    return {"step": step, "metrics": last_metrics, "state": state,
            "stopped": bool(stopping and step < total)}
