"""Training: ``train_and_evaluate(config, workdir)`` and ``load_checkpoint`` for eval.py.

One readable function (big_vision / Flax-examples style). The pieces: model, tokenizer
and config validation here; state, mesh and the jitted step in ``train_state``; the
optimiser in ``optim``; checkpoints in ``checkpointing``; the local loss in
``distributed_loss``. See docs/training.md.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmm_jax import checkpointing, losses, optim, train_state as ts
from gmm_jax.models import CLIP, init_params, presets

log = logging.getLogger(__name__)

MODEL_FIELDS = ("embed_dim", "act", "image_size", "patch_size", "vision_width",
                "vision_layers", "vision_heads", "vision_mlp_dim", "vocab_size",
                "context_length", "text_width", "text_layers", "text_heads", "text_mlp_dim",
                "logit_scale_init")
CHOICES = {
    "loss.method": losses.METHODS, "loss.mix_schedule": losses.MIX_SCHEDULES,
    "loss.mix_form": losses.MIX_FORMS, "loss.swap": losses.SWAPS,
    "loss.temperature": ts.TEMPERATURES, "loss_impl": ("global", "local"),
    "model.dtype": ("float32", "bfloat16"), "optim.name": ("adamw",),
    "optim.schedule": ("cosine", "constant"),
    "data.name": ("coco", "flickr30k", "image_text_files", "demo", "class_captions"),
    "data.caption_mode": ("first", "random"),
}


# --------------------------------------------------------------------------- config

def default_config() -> ml_collections.ConfigDict:
    """Every knob with its default: ``gmm_jax/configs/default.py``'s ``get_config()``."""
    from gmm_jax.configs import default
    return default.get_config()


def _flatten(cfg, prefix=""):
    out = {}
    for k, v in cfg.items():
        if isinstance(v, (ml_collections.ConfigDict, dict)) and not k.endswith("demo_config"):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate_config(config, reference=None) -> None:
    """Raise ``ValueError`` naming the key: unknown keys and wrong types (against
    ``reference``, default ``gmm_jax/configs/default.py``), bad enum values, bad sizes."""
    reference = default_config() if reference is None else reference
    flat = _flatten(config)
    ref = _flatten(reference)
    unknown = sorted(k for k in flat if k not in ref and not k.startswith("eval."))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} (not in gmm_jax/configs/default.py)")
    for k, v in flat.items():
        r = ref.get(k)
        if r is None or v is None or k.startswith("eval.") or k == "data.demo_config":
            continue
        ok = isinstance(v, type(r)) or (isinstance(r, float) and isinstance(v, int)
                                       and not isinstance(v, bool))
        if isinstance(r, (tuple, list)):
            ok = isinstance(v, (tuple, list))
        if not ok:
            raise ValueError(f"config.{k}={v!r}: expected {type(r).__name__}, "
                             f"got {type(v).__name__}")
    for k, choices in CHOICES.items():
        if k in flat and flat[k] not in choices:
            raise ValueError(f"config.{k}={flat[k]!r}; expected one of {list(choices)}")
    for k in ("batch_size", "log_every_steps", "checkpoint_every_steps"):
        if int(flat[k]) <= 0:
            raise ValueError(f"config.{k}={flat[k]} must be > 0")
    if config.loss.temperature == "fixed" and float(config.loss.tau) <= 0:
        raise ValueError(f"config.loss.tau={config.loss.tau} must be > 0")
    if config.init and any(config.model.get(f) is not None for f in MODEL_FIELDS):
        set_ = [f for f in MODEL_FIELDS if config.model.get(f) is not None]
        raise ValueError(f"config.model.{set_[0]} is set but config.init={config.init!r} fixes "
                         "the architecture (only model.dtype / model.remat apply)")


def config_to_json(config) -> str:
    return config.to_json_best_effort(indent=2, sort_keys=True)


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
    """``(model, params or None, tokenizer)``. Resumed runs reuse the workdir's
    ``model_config.json`` and ``tokenizer/``; otherwise ``config.init`` (a converted
    model directory, or another run's workdir: its latest checkpoint) or
    ``config.model.preset`` + overrides, from scratch."""
    from gmm_jax import pretrained
    from gmm_jax.tokenizer import Tokenizer
    run_cfg = {"dtype": config.model.dtype, "remat": bool(config.model.remat)}
    tok_dir = os.path.join(workdir, pretrained.TOKENIZER_DIR)
    if os.path.exists(os.path.join(workdir, pretrained.CONFIG_FILE)):  # resuming
        mcfg = pretrained.load_config(workdir).replace(**run_cfg)
        tok = Tokenizer.from_path(tok_dir, context_length=mcfg.context_length)
        return CLIP(mcfg), None, tok
    if config.init:
        from gmm_jax import hub  # a hub name -> its converted directory; paths unchanged
        init = hub.resolve_model_dir(config.init)
        if os.path.isdir(os.path.join(init, checkpointing.CHECKPOINT_DIR)):
            model, params, tok, _ = load_checkpoint(init)  # a training run's workdir
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
    """``(model, params, tokenizer, step)`` of a training run (latest step by default).

    ``params["logit_scale"]`` is OpenAI's ``log(scale)`` whatever the run's
    ``loss.temperature`` (``softplus``/``exp`` runs train ``nu`` in that slot; it is
    converted here), so eval, ``save_pretrained`` and ``to_hf`` need nothing else.
    Raises FileNotFoundError / ValueError naming what is missing."""
    from gmm_jax import pretrained
    from gmm_jax.tokenizer import Tokenizer
    params, step, run_config = checkpointing.restore_params(workdir, step)  # names a non-run
    mcfg = pretrained.load_config(workdir)
    tok_dir = os.path.join(workdir, pretrained.TOKENIZER_DIR)
    if not os.path.isdir(tok_dir):
        raise FileNotFoundError(f"{workdir}: no {pretrained.TOKENIZER_DIR}/ directory")
    tok = Tokenizer.from_path(tok_dir, context_length=mcfg.context_length)
    params = _openai_logit_scale(params, run_config.get("loss", {}))
    return CLIP(mcfg), jax.tree.map(jnp.asarray, params), tok, step


def _openai_logit_scale(params, loss_cfg) -> Any:
    """``params`` with a ``softplus``/``exp`` run's ``nu`` in ``logit_scale`` replaced by
    ``log(scale_from_param(nu))``; other runs' params are returned as they are."""
    mode = loss_cfg.get("temperature")
    if mode not in ("softplus", "exp") or "logit_scale" not in params:
        return params
    nu = np.asarray(params["logit_scale"])
    s = float(loss_cfg.get("temp_exp_s") or 1.0)
    log_scale = np.log(np.asarray(losses.scale_from_param(mode, nu, s), np.float64))
    return {**params, "logit_scale": log_scale.astype(nu.dtype)}


# --------------------------------------------------------------------------- logging

def _write_scalars(writer, step: int, scalars: dict) -> None:
    """TensorBoard scalar events through ``tf.summary.write`` with the scalars plugin's
    metadata (what ``tf.summary.scalar`` writes, without needing the tensorboard wheel)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    meta = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)
    with writer.as_default(step=step):
        for k, v in scalars.items():
            tf.summary.write(k, tf.constant(v, tf.float32), metadata=meta)
    writer.flush()


class _Logger:
    """TensorBoard scalars (process 0) + a tqdm bar with images/s and ETA."""

    def __init__(self, workdir, total, start, batch_size, enabled, bar):
        self.writer, self.bar = None, None
        if enabled:
            import tensorflow as tf
            self.writer = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
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
        ips = self.batch_size * (step - self.step0) / max(now - self.t0, 1e-9)
        self.t0, self.step0 = now, step
        metrics = {k: float(v) for k, v in metrics.items()} | {"images_per_sec": ips}
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


def _run_eval(config, model, params, tok, out_dir, scale, mesh):
    try:
        from gmm_jax import eval_lib
    except ImportError as e:
        log.warning("eval hook skipped: gmm_jax.eval_lib is not importable (%s)", e)
        return None
    return eval_lib.evaluate(model, params, tok, config, out_dir, scale=scale, mesh=mesh)


# --------------------------------------------------------------------------- training

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train (resuming from ``workdir``'s latest checkpoint if any); returns
    ``{"step", "metrics"}`` of the last logged step."""
    validate_config(config)
    from gmm_jax import pretrained
    from gmm_jax.data import make_train_iterator
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = ts.make_mesh(config.mesh.axes, config.mesh.shape)
    n_batch = int(np.prod([mesh.shape[a] for a in ts.batch_axes(mesh)]))
    if config.batch_size % n_batch:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the "
                         f"{n_batch} data-parallel devices of the mesh {dict(mesh.shape)}")

    ckpt = checkpointing.TrainCheckpointer(workdir, int(config.max_to_keep),
                                           bool(config.async_checkpointing))
    latest = ckpt.latest_step()
    model, params, tok = build_model_and_tokenizer(config, workdir, load_params=latest is None)
    mcfg = model.config
    if lead:
        pretrained.save_config(workdir, mcfg.replace(dtype="float32", remat=False))
        if not os.path.isdir(os.path.join(workdir, pretrained.TOKENIZER_DIR)):
            tok.save(os.path.join(workdir, pretrained.TOKENIZER_DIR))
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_to_json(config))

    data_sharding = ts.batch_sharding(mesh)
    it = make_train_iterator(config.data, tok, mcfg.image_size, int(config.batch_size),
                             int(config.seed), sharding=data_sharding,
                             context_length=mcfg.context_length)
    total = int(config.total_steps) or int(config.num_epochs) * it.steps_per_epoch
    tx, lr_fn = optim.make_optimizer(config, total)

    def fresh_state(p):
        return ts.new_state(ts.init_temperature_param(p, config.loss), tx, int(config.seed))

    if latest is None:
        abstract = jax.eval_shape(fresh_state, params)
    else:
        abstract = jax.eval_shape(lambda: fresh_state(init_params(model, jax.random.key(0))))
    shardings = ts.state_shardings(abstract, mesh)
    data_state = None
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
        objective = local_objective(config.loss, mesh, ts.batch_axes(mesh))
    else:
        objective = losses.build_objective(config.loss)
    step_fn = ts.make_train_step(model, objective, tx, config.loss, total, lr_fn, mesh, shardings)
    scale_fn, _ = ts.temperature_fns(config.loss, total)

    # SIGTERM (preemption notice): finish the step, save, exit cleanly.
    stop = {"flag": False}
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    except ValueError:  # not the main thread
        pass

    def should_stop() -> bool:
        if jax.process_count() == 1:
            return stop["flag"]
        from jax.experimental import multihost_utils  # every host must agree
        flags = multihost_utils.process_allgather(np.asarray(stop["flag"], np.int32))
        return bool(np.max(flags))

    start = int(jax.device_get(state["step"]))
    logger = _Logger(workdir, total, start, int(config.batch_size), lead,
                     bool(config.progress_bar))
    last_metrics, step = {}, start
    try:
        for step in range(start + 1, total + 1):
            batch = next(it)
            epoch = np.int32(batch.pop("epoch"))
            state, metrics = step_fn(state, batch, epoch)
            log_now = step % int(config.log_every_steps) == 0 or step == total
            logged = logger.step(step, jax.device_get(metrics) if log_now else None)
            last_metrics = logged or last_metrics
            stopping = should_stop()
            if step % int(config.checkpoint_every_steps) == 0 or step == total or stopping:
                ckpt.save(step, state, it.get_state(), config_to_json(config))
            every = int(config.eval_every_steps)
            if (every > 0 and step % every == 0) or (step == total and config.eval_at_end):
                scale = float(scale_fn(state["params"], state["step"]))
                _run_eval(config, model, state["params"], tok,
                          os.path.join(workdir, f"eval_step_{step}"), scale, mesh)
            if stopping:
                log.warning("SIGTERM: saved step %d, exiting", step)
                break
    finally:
        ckpt.close()
        logger.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if lead and last_metrics:
        with open(os.path.join(workdir, "train_metrics.json"), "w") as f:
            json.dump({"step": step, **last_metrics}, f, indent=1, sort_keys=True)
    return {"step": step, "metrics": last_metrics, "state": state}
