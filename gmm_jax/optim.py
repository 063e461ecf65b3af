"""The optimiser of train.py: AdamW with linear warm-up + cosine, a weight-decay mask,
a separate learning rate for the temperature parameter, clipping and accumulation."""
from __future__ import annotations

import jax
import optax

from gmm_jax import loss_spec

TEMP_MODES_TRAINED = loss_spec.TRAINED_TEMPERATURES
# Parameters that are never decayed although they are matrices (OpenAI's practice; docs/method.md).
_NO_DECAY_NAMES = ("positional_embedding", "class_embedding", "logit_scale")


def _path_names(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params):
    """True where weight decay applies: matrices and kernels, except positional and
    class embeddings and ``logit_scale``. Biases, LayerNorm scales/biases (ndim < 2)
    are never decayed."""
    def rule(path, x):
        names = _path_names(path)
        return x.ndim >= 2 and not any(n in _NO_DECAY_NAMES for n in names)
    return jax.tree_util.tree_map_with_path(rule, params)


def lr_schedule(optim_cfg, total_updates: int) -> optax.Schedule:
    """Linear warm-up over ``warmup_frac`` of the updates, then cosine to
    ``lr * end_lr_frac`` (or constant)."""
    total_updates = max(int(total_updates), 1)
    warmup = int(round(float(optim_cfg.warmup_frac) * total_updates))
    lr = float(optim_cfg.lr)
    if optim_cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(total_updates, warmup + 1),
            end_value=lr * float(optim_cfg.end_lr_frac))
    if optim_cfg.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
            [warmup])
    raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}; expected 'cosine' "
                     "or 'constant'")


def param_labels(params, temperature: str):
    """``"default"`` for the model, ``"temp"`` for a trained ``logit_scale``,
    ``"frozen"`` for ``logit_scale`` when the temperature is fixed or scheduled."""
    temp = "temp" if temperature in TEMP_MODES_TRAINED else "frozen"

    def rule(path, _):
        return temp if _path_names(path)[-1] == "logit_scale" else "default"
    return jax.tree_util.tree_map_with_path(rule, params)


def make_optimizer(config, total_steps: int):
    """``(tx, schedule)`` for ``config.optim`` over ``total_steps`` train steps.

    With ``grad_accum_steps = k`` the optimiser updates every k steps (optax.MultiSteps)
    and the schedule counts updates (``total_steps // k``). ``schedule(step)`` gives the
    lr in train steps for logging.
    """
    o = config.optim
    if o.name != "adamw":
        raise ValueError(f"config.optim.name={o.name!r}; only 'adamw' is implemented")
    k = int(o.grad_accum_steps)
    if k < 1:
        raise ValueError(f"config.optim.grad_accum_steps={k} must be >= 1")
    updates = max(total_steps // k, 1)
    sched = lr_schedule(o, updates)
    mult = float(config.loss.temp_lr_mult)

    def adamw(lr, mask):
        return optax.adamw(lr, b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
                           weight_decay=float(o.weight_decay), mask=mask)

    masked = bool(o.get("decay_mask", True))  # False: torch AdamW (decay everything)
    tx = optax.multi_transform(
        {"default": adamw(sched, decay_mask if masked else None),
         "temp": adamw(lambda c: sched(c) * mult,
                       lambda p: jax.tree.map(lambda _: not masked, p)),
         "frozen": optax.set_to_zero()},
        lambda p: param_labels(p, config.loss.temperature))
    if float(o.grad_clip) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip)), tx)
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k)
    return tx, (lambda step: sched(step // k))
