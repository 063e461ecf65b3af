"""Train state, mesh/shardings and the jitted train step (pure pieces of train_lib)."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gmm_jax import gradcache, losses
from gmm_jax.models import CLIP

TEMPERATURES = losses.TEMPERATURES  # defined once, in loss_spec
BATCH_AXES = ("data", "fsdp")  # mesh axes the batch is split over
_FSDP_MIN_SIZE = 2 ** 14  # smaller arrays (biases, step, rng) stay replicated


def make_mesh(axes, shape, devices=None) -> Mesh:
    """A mesh of ``devices`` (default all) with ``AxisType.Auto`` axes; one ``-1`` in
    ``shape`` takes the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    axes, shape = tuple(axes), [int(s) for s in shape]
    if len(axes) != len(shape):
        raise ValueError(f"config.mesh.axes={axes} and config.mesh.shape={tuple(shape)} "
                         "differ in length")
    if shape.count(-1) > 1:
        raise ValueError(f"config.mesh.shape={tuple(shape)}: at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"config.mesh.shape={tuple(shape)} does not divide "
                             f"{len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if math.prod(shape) != len(devices):
        raise ValueError(f"config.mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, "
                         f"have {len(devices)}")
    return jax.make_mesh(tuple(shape), axes, axis_types=(AxisType.Auto,) * len(axes),
                         devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def param_sharding(x, mesh: Mesh) -> NamedSharding:
    """Replicated, or with an ``fsdp`` axis the largest dimension it divides is split
    (ZeRO-3 style; XLA inserts the gathers)."""
    n = mesh.shape.get("fsdp", 1)
    if n > 1 and np.size(x) >= _FSDP_MIN_SIZE:
        dims = sorted(range(np.ndim(x)), key=lambda d: -np.shape(x)[d])
        for d in dims:
            if np.shape(x)[d] % n == 0:
                spec = [None] * np.ndim(x)
                spec[d] = "fsdp"
                return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())


l2_normalize = losses.l2_normalize  # the one row normalisation (loss_kernels)


def temperature_fns(loss_cfg, total_steps: int):
    """``(scale_fn(params, step), fix_fn(params, scale))``: the contrastive multiplier, and
    the post-update rule for ``params["logit_scale"]`` (clamped to
    ``exp(max_logit_scale)`` for trained modes; set to ``log(scale)`` for fixed /
    scheduled ones so the checkpoint carries the scale it was trained with)."""
    spec = losses.LossSpec.from_config(loss_cfg)  # validates, naming the config key
    mode, s = spec.temperature, spec.temp_exp_s
    if mode in losses.TRAINED_TEMPERATURES:
        cap = float(losses.param_from_scale(mode, math.exp(spec.max_logit_scale), s))

        def scale_fn(params, step):
            return losses.scale_from_param(mode, params["logit_scale"], s)

        def fix_fn(params, scale):
            return {**params, "logit_scale": jnp.minimum(params["logit_scale"], cap)}
        return scale_fn, fix_fn
    if mode == "fixed":
        def scale_fn(params, step):
            return jnp.asarray(1.0 / spec.tau, jnp.float32)
    else:
        tau = losses.tau_schedule(spec.tau_start, spec.tau_end, total_steps)

        def scale_fn(params, step):
            return 1.0 / jnp.asarray(tau(step), jnp.float32)

    def fix_fn(params, scale):
        return {**params, "logit_scale": jnp.log(scale).astype(params["logit_scale"].dtype)}
    return scale_fn, fix_fn


def init_temperature_param(params, loss_cfg):
    """Fresh runs: re-express the checkpoint's OpenAI ``logit_scale`` (log scale) in the
    parameterisation of ``loss.temperature`` (identity for ``learned``)."""
    spec = losses.LossSpec.from_config(loss_cfg)
    if spec.temperature in ("softplus", "exp"):
        scale = jnp.exp(jnp.asarray(params["logit_scale"], jnp.float32))
        params = {**params, "logit_scale": losses.param_from_scale(
            spec.temperature, scale, spec.temp_exp_s)}
    return params


class TrainState(struct.PyTreeNode):
    """What a step reads and writes, and what a checkpoint's ``state`` item holds.

    ``rng`` is the raw data of the run's base key (``jax.random.key_data``); the key of
    step ``n`` is ``fold_in(base, n)``, so a resumed run draws what it would have drawn.
    A pytree with the named fields ``step``, ``params``, ``opt_state``, ``rng``: Orbax
    saves it under those names, as the plain dict of earlier versions was saved, and
    checkpoints of either restore into it."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def new_state(params, tx, seed: int) -> TrainState:
    """Step 0 of a run: ``tx.init(params)`` and the base key of ``seed``."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(seed)))


def state_shardings(abstract_state, mesh: Mesh):
    return jax.tree.map(lambda x: param_sharding(x, mesh), abstract_state)


def _batch_geometry(v, t, max_rows: int = 512):
    """Cheap gap statistics of the batch (first ``max_rows`` pairs for uniformity)."""
    vs, ts = v[:max_rows], t[:max_rows]
    return {"gap/centroid_distance": jnp.linalg.norm(jnp.mean(v, 0) - jnp.mean(t, 0)),
            "gap/mean_positive_cosine": jnp.mean(jnp.sum(v * t, axis=1)),
            "gap/alignment": losses.alignment(v, t),
            "gap/uniformity": losses.uniformity(jnp.concatenate([vs, ts], 0))}


def make_train_step(model: CLIP, objective: Callable, tx: optax.GradientTransformation,
                    loss_cfg, total_steps: int, lr_fn: Callable, mesh: Mesh, shardings,
                    embed_chunks: int = 1):
    """``step(state, batch, epoch) -> (state, metrics)``, jitted over ``mesh`` with the
    state donated. ``batch``: ``{"image": (B,H,W,3) f32, "tokens": (B,L) i32}`` sharded
    on the batch axes; the loss sees the whole global batch.

    ``embed_chunks = K > 1``: the same gradient with the towers run on ``1/K`` of each
    device's rows at a time (``gmm_jax.gradcache``: exact, one extra forward pass)."""
    scale_fn, fix_fn = temperature_fns(loss_cfg, total_steps)
    axes = batch_axes(mesh)

    def step_fn(state, batch, epoch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def towers(params, images, tokens):
            img, txt, _ = model.apply({"params": params}, images, tokens)
            return img, txt

        def embedding_loss(params, emb):
            v, t = l2_normalize(emb[0]), l2_normalize(emb[1])
            scale = scale_fn(params, state.step)
            total, aux = objective(v, t, scale, key, epoch)
            return total, (aux, v, t, scale)

        (_, (aux, v, t, scale)), grads = gradcache.value_and_grad(
            towers, embedding_loss, state.params, (batch["image"], batch["tokens"]),
            embed_chunks, mesh, axes)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = fix_fn(optax.apply_updates(state.params, updates), scale)
        v, t = jax.lax.stop_gradient(v), jax.lax.stop_gradient(t)
        metrics = {f"loss/{k}": x for k, x in aux.items() if not k.startswith(("lam", "mix_w"))}
        metrics.update({k: x for k, x in aux.items() if k.startswith(("lam", "mix_w"))})
        metrics.update(_batch_geometry(v, t))
        grad_norm = optax.global_norm(grads)
        metrics.update({"lr": lr_fn(state.step), "scale": scale,
                        "logit_scale": state.params["logit_scale"],
                        "grad_norm": grad_norm, "l2_grads": grad_norm,
                        "l2_updates": optax.global_norm(updates)})
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    replicated = NamedSharding(mesh, P())
    data = batch_sharding(mesh)
    return jax.jit(step_fn, in_shardings=(shardings, {"image": data, "tokens": data}, replicated),
                   out_shardings=(shardings, replicated), donate_argnums=0)
