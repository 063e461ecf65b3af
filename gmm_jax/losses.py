"""Geodesic multi-modal mixup and the contrastive losses around it.

The formulas are stated in docs/method.md; docs/losses.md says how the code is laid
out. Every function is pure ``jax.numpy``: jit-able, differentiable, no Python control
flow on traced values. Embeddings ``v`` (images) and ``t`` (texts) are L2-normalised
``(N, D)`` arrays of any float dtype; similarities are formed with fp32 accumulation
and everything after them is computed in fp32. ``scale`` multiplies cosines
(``1 / tau``).

Each term's formula lives once, in ``gmm_jax.loss_kernels``, as a function of a block
of rows; the public losses below and ``build_objective`` evaluate those terms on the
whole batch (``GlobalBlocks``), and ``distributed_loss.local_objective`` evaluates the
same terms on each device's rows (``LocalBlocks``) through ``recipe`` below.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gmm_jax import loss_kernels as kernels
from gmm_jax.loss_kernels import F32, Blocks, GlobalBlocks, l2_normalize  # noqa: F401
from gmm_jax.loss_spec import (  # noqa: F401  (re-exported: the choices of config.loss)
    METHODS,
    MIX_FORMS,
    MIX_SCHEDULES,
    SWAPS,
    TEMPERATURES,
    TRAINED_TEMPERATURES,
    LossSpec,
)

TEMPERATURE_PARAMS = TRAINED_TEMPERATURES  # modes with a trained parameter


# --------------------------------------------------------------------------
# geodesic interpolation

def slerp(a: jax.Array, b: jax.Array, lam) -> jax.Array:
    """Spherical linear interpolation between unit rows ``a`` and ``b``.

    ``slerp = sin(lam*theta)/sin(theta) * a + sin((1-lam)*theta)/sin(theta) * b``
    with ``theta`` the angle between the rows: ``lam = 1`` gives ``a``, ``lam = 0``
    gives ``b``, and the angle from ``b`` is ``lam * theta``.

    Finite, with finite gradients, for every pair: for ``theta -> 0`` the normalised
    linear mix (the limit); for ``theta`` within 1e-3 of pi, where the geodesic is not
    unique, the great circle from ``b`` through a fixed direction orthogonal to ``b``.

    Args:
      a: ``(N, D)`` unit rows (returned at ``lam = 1``).
      b: ``(N, D)`` unit rows (returned at ``lam = 0``).
      lam: the interpolation weight: a scalar, ``(N,)`` or ``(N, 1)``.

    Returns:
      ``(N, D)`` unit rows in ``a.dtype`` (computed in fp32).

    References:
      Shoemake, *Animating rotation with quaternion curves*, SIGGRAPH 1985;
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> a, b = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
      >>> m = losses.slerp(a, b, 0.5)  # halfway along the quarter circle
      >>> [round(float(c), 4) for c in m[0]]
      [0.7071, 0.7071]
    """
    dtype = a.dtype
    a32, b32 = a.astype(F32), b.astype(F32)
    lam = kernels.per_row(lam, a.ndim)
    theta = kernels.angle(a32, b32)
    w_a, w_b = kernels.slerp_weights(theta, lam)
    out = w_a * a32 + w_b * b32
    near_antipode = theta > math.pi - kernels.ANTIPODAL_MARGIN
    u = kernels.orthogonal_unit(b32)
    around = jnp.cos(lam * theta) * b32 + jnp.sin(lam * theta) * u
    return jnp.where(near_antipode, around, out).astype(dtype)


# --------------------------------------------------------------------------
# the terms on any Blocks (shared with distributed_loss)

def _pairs(blocks: Blocks, v_rows, t_rows, v, t):
    """``(vt, tv, pos)``: held rows of ``S = v @ t.T`` and ``S^T``, and the positives;
    formed once, shared by the contrastive and m2-Mix terms."""
    vt, tv = blocks.cross(v_rows, t, t_rows, v)
    return vt, tv, kernels.rowdot(v_rows, t_rows)


def _m2mix(blocks: Blocks, v_rows, t_rows, v, t, pairs, lam, scale, pos_scale=None,
           halve=False):
    vt, tv, pos = pairs
    alpha, beta = kernels.m2mix_weights(v, t, lam)
    return kernels.m2mix_term(blocks, vt, tv, blocks.gram(v_rows, v), blocks.gram(t_rows, t),
                              pos, alpha, beta, scale, pos_scale, halve)


def _flip_mix(blocks: Blocks, x, lam):
    """``slerp(x, flip(x), lam)`` and its held rows."""
    mixed = slerp(x, x[::-1], lam)
    return mixed, blocks.rows(mixed)


def _vmix(blocks: Blocks, t_rows, v, t, lam, scale):
    vm, vm_rows = _flip_mix(blocks, v, lam)
    targets = kernels.pair_targets(blocks.diag, blocks.flip, lam, 1.0 - lam)
    return kernels.soft_mix_term(blocks, *blocks.cross(vm_rows, t, t_rows, vm), targets, scale)


def _lmix(blocks: Blocks, v_rows, v, t, lam, scale):
    tm, tm_rows = _flip_mix(blocks, t, lam)
    targets = kernels.pair_targets(blocks.diag, blocks.flip, lam, 1.0 - lam)
    return kernels.soft_mix_term(blocks, *blocks.cross(v_rows, tm, tm_rows, v), targets, scale)


def _vlmix(blocks: Blocks, v, t, lam, scale):
    vm, vm_rows = _flip_mix(blocks, v, lam)
    tm, tm_rows = _flip_mix(blocks, t, lam)
    targets = kernels.pair_targets(blocks.diag, blocks.flip, 1.0, 1.0)
    return kernels.soft_mix_term(blocks, *blocks.cross(vm_rows, tm, tm_rows, vm), targets,
                                 scale)


def _need_two_rows(x: jax.Array, name: str) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} needs an (N, D) array with N >= 2, got shape {x.shape}")


# --------------------------------------------------------------------------
# losses

def clip_loss(v: jax.Array, t: jax.Array, scale) -> jax.Array:
    """Symmetric InfoNCE (the CLIP loss) of matched image and text rows.

    ``(CE_row(scale*S) + CE_col(scale*S)) / 2`` with ``S = v @ t.T``: each image
    must pick its own text among the batch's, and each text its own image.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings; row ``i`` pairs with ``v[i]``.
      scale: the logit scale ``1 / tau`` (scalar).

    Returns:
      The fp32 scalar loss.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language
      Supervision*, ICML 2021; van den Oord et al., *Representation Learning with
      Contrastive Predictive Coding*, 2018.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[0.8, 0.6], [0.6, 0.8]])
      >>> round(float(losses.clip_loss(v, t, scale=10.0)), 4)
      0.1269
    """
    blocks = GlobalBlocks(v.shape[0])
    return kernels.clip_term(blocks, *_pairs(blocks, v, t, v, t), jnp.asarray(scale, F32))


def m2mix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Geodesic multi-modal mixup: the slerp mixtures of other pairs as hard negatives.

    ``M = slerp(v, t, lam)``, ``A = v @ M.T``, ``B = t @ M.T`` with their diagonals
    replaced by ``diag(v @ t.T)``; the loss is ``CE_row(scale*A) + CE_row(scale*B)``
    (a sum and no column term, as the authors' ``clip_loss2``). Formed from
    ``v @ t.T`` and the two Gram matrices, never from ``M``.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      lam: the mixing weight (scalar; ``lam = 1`` mixes to ``v``).
      scale: the logit scale of this term (the authors use ``1 / 0.07``).

    Returns:
      The fp32 scalar loss.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[0.8, 0.6], [0.6, 0.8]])
      >>> round(float(losses.m2mix_loss(v, t, lam=0.5, scale=10.0)), 4)
      0.8181
    """
    blocks = GlobalBlocks(v.shape[0])
    return _m2mix(blocks, v, t, v, t, _pairs(blocks, v, t, v, t), lam, jnp.asarray(scale, F32))


def vmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Image-image mixup of m3-Mix: each image mixed with the batch's reversed image.

    ``v' = slerp(v, flip(v), lam)``, logits ``scale * v' @ t.T``, soft targets
    ``lam I + (1-lam) flip(I)``, soft cross-entropy averaged over rows and columns.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      lam: the mixing weight (scalar).
      scale: the logit scale.

    Returns:
      The fp32 scalar loss.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[0.8, 0.6], [0.6, 0.8]])
      >>> round(float(losses.vmix_loss(v, t, lam=0.7, scale=10.0)), 4)
      0.6109
    """
    lam, scale = jnp.asarray(lam, F32), jnp.asarray(scale, F32)
    return _vmix(GlobalBlocks(v.shape[0]), t, v, t, lam, scale)


def lmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Text-text mixup of m3-Mix: ``t' = slerp(t, flip(t), lam)``, logits ``scale v t'^T``.

    Targets and averaging as ``vmix_loss``.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      lam: the mixing weight (scalar).
      scale: the logit scale.

    Returns:
      The fp32 scalar loss.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[0.8, 0.6], [0.6, 0.8]])
      >>> round(float(losses.lmix_loss(v, t, lam=0.7, scale=10.0)), 4)
      0.6111
    """
    lam, scale = jnp.asarray(lam, F32), jnp.asarray(scale, F32)
    return _lmix(GlobalBlocks(v.shape[0]), v, v, t, lam, scale)


def vlmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Both-modality mixup of m3-Mix: images and texts each mixed with their flips.

    Logits ``scale v' t'^T`` with ``v' = slerp(v, flip(v), lam)`` and
    ``t' = slerp(t, flip(t), lam)``; targets ``I + flip(I)``, not renormalised (as the
    authors' code).

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      lam: the mixing weight (scalar).
      scale: the logit scale.

    Returns:
      The fp32 scalar loss.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> t = jnp.array([[0.8, 0.6], [0.6, 0.8]])
      >>> round(float(losses.vlmix_loss(v, t, lam=0.7, scale=10.0)), 4)
      1.4169
    """
    lam, scale = jnp.asarray(lam, F32), jnp.asarray(scale, F32)
    return _vlmix(GlobalBlocks(v.shape[0]), v, t, lam, scale)


def uniformity(x: jax.Array, t: float = 2.0) -> jax.Array:
    """Uniformity of unit rows on the sphere (lower is more uniform).

    ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``.

    Args:
      x: ``(N, D)`` unit rows, ``N >= 2``.
      t: the kernel's inverse width.

    Returns:
      The fp32 scalar.

    References:
      Wang & Isola, *Understanding Contrastive Representation Learning through
      Alignment and Uniformity on the Hypersphere*, ICML 2020.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> x = jnp.array([[1.0, 0.0], [-1.0, 0.0]])  # antipodal: distance^2 = 4
      >>> round(float(losses.uniformity(x)), 4)  # log exp(-2 * 4)
      -8.0
    """
    _need_two_rows(x, "uniformity")
    return kernels.uniformity_term(GlobalBlocks(x.shape[0]), x, x, t)


def alignment(x: jax.Array, y: jax.Array, alpha: float = 2.0) -> jax.Array:
    """Alignment of paired rows: ``mean_i ||x_i - y_i||^alpha`` (lower is closer).

    Args:
      x: ``(N, D)`` rows.
      y: ``(N, D)`` rows paired with ``x``.
      alpha: the exponent (finite gradient at 0 for any ``alpha``).

    Returns:
      The fp32 scalar.

    References:
      Wang & Isola, *Understanding Contrastive Representation Learning through
      Alignment and Uniformity on the Hypersphere*, ICML 2020.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> y = jnp.array([[0.0, 1.0], [0.0, 1.0]])
      >>> round(float(losses.alignment(x, y)), 4)  # (2 + 0) / 2
      1.0
    """
    return kernels.alignment_term(GlobalBlocks(x.shape[0]), x, y, alpha)


def cross_uniformity(x: jax.Array, y: jax.Array, t: float = 2.0) -> jax.Array:
    """Cross-modal uniformity: ``log mean_{i != j} exp(-t ||x_i - y_j||^2)``.

    Low when each row is far from the other modality's unpaired rows.

    Args:
      x: ``(N, D)`` unit rows, ``N >= 2``.
      y: ``(N, D)`` unit rows of the other modality.
      t: the kernel's inverse width.

    Returns:
      The fp32 scalar.

    References:
      Fahim et al., *It's Not a Modality Gap: Characterizing and Addressing the
      Contrastive Gap*, 2024.

    Examples:
      >>> import jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> round(float(losses.cross_uniformity(x, x)), 4)  # off-diagonal distance^2 = 2
      -4.0
    """
    _need_two_rows(x, "cross_uniformity")
    return kernels.cross_uniformity_term(GlobalBlocks(x.shape[0]), x, y, t)


# --------------------------------------------------------------------------
# modality-gap mitigations

def _chosen_pairs(key, n: int, p) -> jax.Array:
    return jax.random.bernoulli(key, p, (n, 1))


def _renormalize_chosen(x: jax.Array, original: jax.Array, chosen: jax.Array) -> jax.Array:
    """Put changed rows back on the sphere (the losses expect unit vectors);
    rows that were not chosen are returned bit for bit."""
    return jnp.where(chosen, l2_normalize(x).astype(original.dtype), original)


def modality_swap_hard(v: jax.Array, t: jax.Array, key: jax.Array, p: float):
    """Hard modality swapping: exchange coordinates between paired rows.

    Each pair ``i`` is chosen with probability ``p``; in a chosen pair every
    coordinate ``j`` of ``v_i`` and ``t_i`` is exchanged with probability 1/2,
    and the two rows are renormalised. Rows not chosen are returned unchanged.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      key: a PRNG key.
      p: the probability that a pair is swapped.

    Returns:
      ``(v', t')``, unit rows in the inputs' dtype.

    References:
      Yaras et al., *Explaining and Mitigating the Modality Gap in Contrastive
      Multimodal Learning*, 2024.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v, t = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
      >>> v2, t2 = losses.modality_swap_hard(v, t, jax.random.key(0), p=0.0)
      >>> bool((v2 == v).all() and (t2 == t).all())  # p = 0: nothing is swapped
      True
    """
    k_row, k_el = jax.random.split(key)
    chosen = _chosen_pairs(k_row, v.shape[0], p)
    swap = chosen & jax.random.bernoulli(k_el, 0.5, v.shape)
    v2, t2 = jnp.where(swap, t, v), jnp.where(swap, v, t)
    return _renormalize_chosen(v2, v, chosen), _renormalize_chosen(t2, t, chosen)


def modality_swap_soft(v: jax.Array, t: jax.Array, key: jax.Array, p: float):
    """Soft modality swapping: mix coordinates of paired rows.

    In a chosen pair (probability ``p``), ``v' = l*v + (1-l)*t`` and
    ``t' = l*t + (1-l)*v`` with ``l_ij ~ U[0, 1]`` per coordinate, rows renormalised.

    Args:
      v: ``(N, D)`` unit image embeddings.
      t: ``(N, D)`` unit text embeddings.
      key: a PRNG key.
      p: the probability that a pair is mixed.

    Returns:
      ``(v', t')``, unit rows in the inputs' dtype.

    References:
      Yaras et al., *Explaining and Mitigating the Modality Gap in Contrastive
      Multimodal Learning*, 2024.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from gmm_jax import losses
      >>> v, t = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
      >>> v2, t2 = losses.modality_swap_soft(v, t, jax.random.key(0), p=1.0)
      >>> [round(float(jnp.linalg.norm(x)), 4) for x in (v2[0], t2[0])]  # still unit
      [1.0, 1.0]
    """
    k_row, k_el = jax.random.split(key)
    chosen = _chosen_pairs(k_row, v.shape[0], p)
    lam = jax.random.uniform(k_el, v.shape, F32)
    v32, t32 = v.astype(F32), t.astype(F32)
    v2 = lam * v32 + (1 - lam) * t32
    t2 = lam * t32 + (1 - lam) * v32
    return _renormalize_chosen(v2, v, chosen), _renormalize_chosen(t2, t, chosen)


def scale_from_param(mode: str, param, s: float = 1.0) -> jax.Array:
    """Contrastive scale ``1/tau`` from a trained parameter ``nu``.

    ``learned``: ``exp(nu)`` (OpenAI's ``logit_scale``); ``softplus``:
    ``softplus(nu)``; ``exp``: ``exp(nu / s)`` with ``s > 1`` (slower to move).
    """
    param = jnp.asarray(param, F32)
    if mode == "learned":
        return jnp.exp(param)
    if mode == "softplus":
        return jax.nn.softplus(param)
    if mode == "exp":
        return jnp.exp(param / s)
    raise ValueError(f"config.loss.temperature={mode!r} has no parameter: "
                     f"expected one of {TEMPERATURE_PARAMS}")


def param_from_scale(mode: str, scale, s: float = 1.0) -> jax.Array:
    """Inverse of ``scale_from_param``: the parameter giving ``scale``."""
    scale = jnp.asarray(scale, F32)
    if mode == "learned":
        return jnp.log(scale)
    if mode == "softplus":  # log(expm1(x)), written stably for large x
        return scale + jnp.log(-jnp.expm1(-scale))
    if mode == "exp":
        return s * jnp.log(scale)
    raise ValueError(f"config.loss.temperature={mode!r} has no parameter: "
                     f"expected one of {TEMPERATURE_PARAMS}")


def tau_schedule(tau_start: float, tau_end: float, total_steps: int) -> optax.Schedule:
    """Temperature raised linearly from ``tau_start`` to ``tau_end`` (Yaras et al.)."""
    return optax.linear_schedule(tau_start, tau_end, max(int(total_steps), 1))


# --------------------------------------------------------------------------
# recipes

def mix_weight(schedule: str, epoch) -> jax.Array:
    """``w_e = 1/(epoch+1)`` for ``inverse_epoch`` (epoch from 0), else 1."""
    if schedule == "inverse_epoch":
        return 1.0 / (jnp.asarray(epoch, F32) + 1.0)
    if schedule == "constant":
        return jnp.asarray(1.0, F32)
    raise ValueError(f"config.loss.mix_schedule={schedule!r}: expected one of {MIX_SCHEDULES}")


def recipe(spec: LossSpec, blocks: Blocks, v, t, scale, key, epoch):
    """``(total, aux)`` of the recipe ``spec`` for the rows ``blocks`` holds.

    ``v``, ``t``: the whole (global) batch; ``blocks`` says which rows are scored here
    and how partial sums combine (``GlobalBlocks`` for one place; the ``shard_map``
    objective passes its ``LocalBlocks``). Used by ``build_objective`` and
    ``distributed_loss.local_objective``, so both compute the same terms, draws and
    weights. The lam draws use ``key`` identically on every holder.
    """
    k_swap, k_m2, k_v, k_l, k_vl = jax.random.split(key, 5)
    if spec.swap == "hard":  # the same key everywhere: the same global swap
        v, t = modality_swap_hard(v, t, k_swap, spec.swap_p)
    elif spec.swap == "soft":
        v, t = modality_swap_soft(v, t, k_swap, spec.swap_p)
    v_rows, t_rows = blocks.rows(v), blocks.rows(t)
    scale = jnp.asarray(scale, F32)
    pairs = _pairs(blocks, v_rows, t_rows, v, t)
    contrastive = kernels.clip_term(blocks, *pairs, scale)
    aux = {"clip": contrastive}
    total = contrastive
    if spec.mixes:
        w_e = mix_weight(spec.mix_schedule, epoch)
        lam_m2 = jax.random.beta(k_m2, spec.beta_m2, spec.beta_m2)
        s2 = scale if spec.m2_scale is None else jnp.asarray(spec.m2_scale, F32)
        if spec.mix_form == "reference":
            m2 = _m2mix(blocks, v_rows, t_rows, v, t, pairs, lam_m2, s2)
        else:  # the authors' OpenCLIP variant: a mean; positives at the contrastive scale
            m2 = _m2mix(blocks, v_rows, t_rows, v, t, pairs, lam_m2, s2, pos_scale=scale,
                        halve=True)
        mix = spec.c_m2 * m2
        aux.update(m2mix=m2, lam_m2=lam_m2, mix_weight=w_e)
        if spec.method == "m3mix":
            lam_v = jax.random.beta(k_v, spec.beta_u, spec.beta_u)
            lam_l = jax.random.beta(k_l, spec.beta_u, spec.beta_u)
            lam_vl = jax.random.beta(k_vl, spec.beta_vl, spec.beta_vl)
            vm = _vmix(blocks, t_rows, v, t, lam_v, scale)
            lm = _lmix(blocks, v_rows, v, t, lam_l, scale)
            vlm = _vlmix(blocks, v, t, lam_vl, scale)
            mix = mix + spec.c_u * vm + spec.c_u * lm + spec.c_vl * vlm
            aux.update(vmix=vm, lmix=lm, vlmix=vlm, lam_v=lam_v, lam_l=lam_l, lam_vl=lam_vl)
        total = total + w_e * mix
    elif spec.spreads:
        u_t = spec.uniformity_t
        unif = (kernels.uniformity_term(blocks, v_rows, v, u_t)
                + kernels.uniformity_term(blocks, t_rows, t, u_t)) / 2
        align = kernels.alignment_term(blocks, v_rows, t_rows, spec.alignment_alpha)
        total = total + spec.w_uniformity * unif + spec.w_alignment * align
        aux.update(uniformity=unif, alignment=align)
        if spec.method == "cuaxu":
            xu = kernels.cross_uniformity_term(blocks, v_rows, t, u_t)
            total = total + spec.w_cross_uniformity * xu
            aux.update(cross_uniformity=xu)
    aux = {k: jnp.asarray(x, F32) for k, x in aux.items()}
    aux["total"] = total
    return total, aux


Objective = Callable[..., tuple]


def build_objective(cfg) -> Objective:
    """The total loss of a recipe, from ``config.loss`` (or a ``LossSpec``).

    Returns ``objective(v, t, scale, key, epoch=0) -> (total, aux)``, where
    ``aux`` is a flat dict of fp32 scalars (each term, ``mix_weight``, the lam
    draws, ``total``). ``v``, ``t`` are the L2-normalised embeddings of the global
    batch; ``key`` the step's PRNG key; ``epoch`` an int (may be traced).

    - ``clip``:  clip_loss
    - ``m2mix``: clip_loss + w_e * c_m2 * m2mix_loss(lam ~ Beta(beta_m2, beta_m2), m2_scale)
    - ``m3mix``: clip_loss + w_e * (c_m2 m2mix + c_u vmix + c_u lmix + c_vl vlmix),
      one lam draw per term (Beta(beta_u) for vmix/lmix, Beta(beta_vl) for vlmix)
    - ``cua``:   clip_loss + w_uniformity (U(v) + U(t))/2 + w_alignment A(v, t)
    - ``cuaxu``: cua + w_cross_uniformity XU(v, t)
    ``w_e = 1/(epoch+1)`` with ``mix_schedule="inverse_epoch"``. With
    ``mix_form="openclip"`` the m2mix term is ``(CE_A + CE_B)/2`` with the mixed
    negatives at ``m2_scale`` and the positives at the contrastive scale (the authors'
    OpenCLIP variant). ``swap`` (``hard`` /
    ``soft``, probability ``swap_p``) is applied to the embeddings first.
    The config is validated once, by ``LossSpec.from_config``.
    """
    spec = LossSpec.from_config(cfg)

    def objective(v, t, scale, key, epoch=0):
        return recipe(spec, GlobalBlocks(v.shape[0]), v, t, scale, key, epoch)

    return objective
