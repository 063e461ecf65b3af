"""Geodesic multi-modal mixup and the contrastive losses around it (SPEC §1-§3).

Every function is pure ``jax.numpy``: jit-able, differentiable, no Python
control flow on traced values. Embeddings ``v`` (images) and ``t`` (texts) are
L2-normalised ``(N, D)`` arrays of any float dtype; similarities are formed
with fp32 accumulation and everything after them is computed in fp32.
``scale`` multiplies cosines (``1 / tau``).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

F32 = jnp.float32
# Below this angle slerp is replaced by its limit (normalised linear mix);
# within this distance of pi the geodesic is not unique and we pick one.
_SMALL_ANGLE = 1e-4
_ANTIPODAL_MARGIN = 1e-3
_TINY = 1e-12

METHODS = ("clip", "m2mix", "m3mix", "cua", "cuaxu")
MIX_SCHEDULES = ("inverse_epoch", "constant")
MIX_FORMS = ("reference", "openclip")
SWAPS = ("none", "hard", "soft")
TEMPERATURE_PARAMS = ("learned", "softplus", "exp")


# --------------------------------------------------------------------------
# small helpers

def _safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm with a finite gradient at zero (keepdims)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return jnp.sqrt(jnp.maximum(sq, _TINY))


def _normalize(x: jax.Array) -> jax.Array:
    return x / _safe_norm(x)


def _sims(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x @ y.T`` in the inputs' dtype with fp32 accumulation and output."""
    return jnp.einsum("nd,md->nm", x, y, preferred_element_type=F32)


def _rowdot(x: jax.Array, y: jax.Array) -> jax.Array:
    """``<x_i, y_i>`` per row in fp32: ``diag(x @ y.T)`` without an N x N pass."""
    return jnp.sum(x.astype(F32) * y.astype(F32), axis=-1)


def _ce(logits: jax.Array, positives: jax.Array, axis: int) -> jax.Array:
    """Mean softmax cross-entropy along ``axis`` with target logits ``positives``.

    Passing the positives (``scale * <v_i, t_i>``) instead of reading the
    diagonal keeps the backward pass free of N x N scatters.
    """
    return jnp.mean(jax.nn.logsumexp(logits, axis=axis) - positives)


def _soft_ce_symmetric(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """(CE(L, Y) + CE(L.T, Y.T)) / 2 with soft targets Y, mean over rows."""
    row = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
    col = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=0), axis=0)
    return (jnp.mean(row) + jnp.mean(col)) / 2


def _per_row(lam, ndim: int) -> jax.Array:
    """A scalar or per-row ``lam`` as an fp32 array that broadcasts over rows."""
    lam = jnp.asarray(lam, F32)
    if lam.ndim == ndim - 1:
        lam = lam[..., None]
    return lam


def _angle(a: jax.Array, b: jax.Array) -> jax.Array:
    """Angle between unit rows, ``(..., 1)``; accurate near 0 and near pi."""
    return 2.0 * jnp.arctan2(_safe_norm(a - b), _safe_norm(a + b))


def _slerp_weights(theta: jax.Array, lam: jax.Array):
    """Weights (w_a, w_b) of ``slerp = w_a a + w_b b`` away from the antipode.

    For theta below ``_SMALL_ANGLE`` they are the limit (lam, 1 - lam); the
    caller renormalises. The angle is clamped below pi - margin so the
    division by sin(theta) stays finite (antipodal rows are handled by
    ``slerp``; the fused m2mix uses these clamped weights for them).
    """
    small = theta < _SMALL_ANGLE
    theta_c = jnp.minimum(theta, math.pi - _ANTIPODAL_MARGIN)
    sin_t = jnp.where(small, 1.0, jnp.sin(theta_c))
    w_a = jnp.where(small, lam, jnp.sin(lam * theta_c) / sin_t)
    w_b = jnp.where(small, 1.0 - lam, jnp.sin((1.0 - lam) * theta_c) / sin_t)
    # The small-angle limit is a chord; renormalise it onto the sphere.
    chord = jnp.where(small, jnp.sqrt(jnp.maximum(
        lam ** 2 + (1 - lam) ** 2 + 2 * lam * (1 - lam) * jnp.cos(theta), _TINY)), 1.0)
    return w_a / chord, w_b / chord


def _orthogonal_unit(b: jax.Array) -> jax.Array:
    """A unit vector orthogonal to each unit row of ``b`` (deterministic)."""
    k = jnp.argmin(jnp.abs(b), axis=-1)
    e = jax.nn.one_hot(k, b.shape[-1], dtype=b.dtype)
    u = e - jnp.sum(e * b, axis=-1, keepdims=True) * b
    return _normalize(u)


# --------------------------------------------------------------------------
# §1 geodesic interpolation

def slerp(a: jax.Array, b: jax.Array, lam) -> jax.Array:
    """Spherical interpolation between unit rows ``a`` and ``b``, ``(N, D)``.

    ``slerp = sin(lam*theta)/sin(theta) * a + sin((1-lam)*theta)/sin(theta) * b``
    with ``theta`` the angle between the rows: ``lam = 1`` gives ``a``,
    ``lam = 0`` gives ``b``, and the angle from ``b`` is ``lam * theta``.
    ``lam`` is a scalar, ``(N,)`` or ``(N, 1)``.

    Finite, with finite gradients, for every pair: for ``theta -> 0`` the
    normalised linear mix (the limit); for ``theta`` within 1e-3 of pi, where
    the geodesic is not unique, the great circle from ``b`` through a fixed
    direction orthogonal to ``b``. Computed in fp32; returned in ``a.dtype``.
    """
    dtype = a.dtype
    a32, b32 = a.astype(F32), b.astype(F32)
    lam = _per_row(lam, a.ndim)
    theta = _angle(a32, b32)
    w_a, w_b = _slerp_weights(theta, lam)
    out = w_a * a32 + w_b * b32
    near_antipode = theta > math.pi - _ANTIPODAL_MARGIN
    u = _orthogonal_unit(b32)
    around = jnp.cos(lam * theta) * b32 + jnp.sin(lam * theta) * u
    return jnp.where(near_antipode, around, out).astype(dtype)


# --------------------------------------------------------------------------
# §2 losses

def clip_loss(v: jax.Array, t: jax.Array, scale) -> jax.Array:
    """Symmetric InfoNCE: ``(CE_row(scale*S) + CE_col(scale*S)) / 2``, ``S = v @ t.T``."""
    scale = jnp.asarray(scale, F32)
    logits, pos = scale * _sims(v, t), scale * _rowdot(v, t)
    return (_ce(logits, pos, 1) + _ce(logits, pos, 0)) / 2


def _m2mix_logits(v, t, lam, sims_vt=None):
    """The m2mix logit matrices ``A = v @ M.T`` and ``B^T = M @ t.T`` (unscaled).

    ``M_j = slerp(v_j, t_j, lam) = alpha_j v_j + beta_j t_j``, so
    ``A = (v v^T) alpha + S beta`` (columns scaled) and
    ``B^T = alpha S + beta (t t^T)`` (rows scaled): no new product with ``M``,
    and ``S = v @ t.T`` is shared with the contrastive term. ``B`` is returned
    transposed, so its row cross-entropy is a column cross-entropy of ``B^T``
    and nothing reads ``S`` transposed (an N x N transpose costs about as much
    as a matmul on CPU). The diagonals are replaced by ``diag(S)`` (the positives).
    Returns ``(A, B^T, positives)``.
    """
    s = _sims(v, t) if sims_vt is None else sims_vt
    lam = _per_row(lam, v.ndim)
    theta = _angle(v.astype(F32), t.astype(F32))
    alpha, beta = _slerp_weights(theta, lam)
    a = _gram(v) * alpha[:, 0][None, :] + s * beta[:, 0][None, :]
    b_t = s * alpha + _gram(t) * beta
    eye = jnp.eye(s.shape[0], dtype=bool)
    pos = _rowdot(v, t)
    a = jnp.where(eye, pos[None, :], a)
    b_t = jnp.where(eye, pos[:, None], b_t)
    return a, b_t, pos


@jax.custom_vjp
def _gram(x: jax.Array) -> jax.Array:
    """``x @ x.T`` (fp32 out) whose backward is one product: ``(G + G^T) @ x``."""
    return _sims(x, x)


def _gram_fwd(x):
    return _sims(x, x), x


def _gram_bwd(x, g):
    g = (g + g.T).astype(x.dtype)
    return (jnp.einsum("nm,md->nd", g, x, preferred_element_type=F32).astype(x.dtype),)


_gram.defvjp(_gram_fwd, _gram_bwd)


def m2mix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Geodesic multi-modal mixup: ``CE_row(scale*A) + CE_row(scale*B)``.

    ``M = slerp(v, t, lam)``, ``A = v @ M.T``, ``B = t @ M.T`` with their
    diagonals replaced by ``diag(v @ t.T)``: the mixtures act as hard negatives
    (reference ``clip_loss2``; a sum, no column term).
    """
    a, b_t, pos = _m2mix_logits(v, t, lam)
    scale = jnp.asarray(scale, F32)
    return _ce(scale * a, scale * pos, 1) + _ce(scale * b_t, scale * pos, 0)


def _mix_targets(n: int, lam) -> jax.Array:
    eye = jnp.eye(n, dtype=F32)
    return lam * eye + (1.0 - lam) * eye[::-1]


def vmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Image-image mixup: ``v' = slerp(v, flip(v), lam)``, logits ``scale v' t^T``,
    soft targets ``lam I + (1-lam) flip(I)``, symmetric soft CE. ``lam`` scalar."""
    lam = jnp.asarray(lam, F32)
    v_mix = slerp(v, v[::-1], lam)
    logits = jnp.asarray(scale, F32) * _sims(v_mix, t)
    return _soft_ce_symmetric(logits, _mix_targets(v.shape[0], lam))


def lmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Text-text mixup: ``t' = slerp(t, flip(t), lam)``, logits ``scale v t'^T``."""
    lam = jnp.asarray(lam, F32)
    t_mix = slerp(t, t[::-1], lam)
    logits = jnp.asarray(scale, F32) * _sims(v, t_mix)
    return _soft_ce_symmetric(logits, _mix_targets(v.shape[0], lam))


def vlmix_loss(v: jax.Array, t: jax.Array, lam, scale) -> jax.Array:
    """Both modalities mixed with their flips; targets ``I + flip(I)`` (unnormalised,
    as in the reference)."""
    lam = jnp.asarray(lam, F32)
    v_mix = slerp(v, v[::-1], lam)
    t_mix = slerp(t, t[::-1], lam)
    logits = jnp.asarray(scale, F32) * _sims(v_mix, t_mix)
    eye = jnp.eye(v.shape[0], dtype=F32)
    return _soft_ce_symmetric(logits, eye + eye[::-1])


def _sq_dists(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pairwise squared distances ``||x_i - y_j||^2``, fp32, clipped at 0."""
    x32, y32 = x.astype(F32), y.astype(F32)
    xx = jnp.sum(x32 * x32, axis=1)[:, None]
    yy = jnp.sum(y32 * y32, axis=1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * _sims(x, y), 0.0)


def _log_mean_exp_masked(values: jax.Array, mask: jax.Array) -> jax.Array:
    values = jnp.where(mask, values, -jnp.inf)
    return jax.nn.logsumexp(values) - jnp.log(jnp.sum(mask).astype(F32))


def _need_two_rows(x: jax.Array, name: str) -> None:
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} needs an (N, D) array with N >= 2, got shape {x.shape}")


def uniformity(x: jax.Array, t: float = 2.0) -> jax.Array:
    """Wang & Isola uniformity: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``."""
    _need_two_rows(x, "uniformity")
    n = x.shape[0]
    upper = jnp.triu(jnp.ones((n, n), dtype=bool), k=1)
    return _log_mean_exp_masked(-t * _sq_dists(x, x), upper)


def alignment(x: jax.Array, y: jax.Array, alpha: float = 2.0) -> jax.Array:
    """``mean_i ||x_i - y_i||^alpha``."""
    sq = jnp.sum(jnp.square(x.astype(F32) - y.astype(F32)), axis=1)
    if alpha == 2.0:
        return jnp.mean(sq)
    positive = sq > 0
    safe = jnp.where(positive, sq, 1.0)
    return jnp.mean(jnp.where(positive, safe ** (alpha / 2.0), 0.0))


def cross_uniformity(x: jax.Array, y: jax.Array, t: float = 2.0) -> jax.Array:
    """``log mean_{i != j} exp(-t ||x_i - y_j||^2)`` (contrastive-gap paper)."""
    _need_two_rows(x, "cross_uniformity")
    n = x.shape[0]
    off_diag = ~jnp.eye(n, y.shape[0], dtype=bool)
    return _log_mean_exp_masked(-t * _sq_dists(x, y), off_diag)


# --------------------------------------------------------------------------
# §3 modality-gap mitigations

def _chosen_pairs(key, n: int, p) -> jax.Array:
    return jax.random.bernoulli(key, p, (n, 1))


def _renormalize_chosen(x: jax.Array, original: jax.Array, chosen: jax.Array) -> jax.Array:
    """Put changed rows back on the sphere (the losses expect unit vectors);
    rows that were not chosen are returned bit for bit."""
    return jnp.where(chosen, _normalize(x.astype(F32)).astype(original.dtype), original)


def modality_swap_hard(v: jax.Array, t: jax.Array, key: jax.Array, p: float):
    """Hard modality swapping (Yaras et al. 2024).

    Each pair ``i`` is chosen with probability ``p``; in a chosen pair every
    coordinate ``j`` of ``v_i`` and ``t_i`` is exchanged with probability 1/2,
    and the two rows are renormalised. Returns ``(v', t')``.
    """
    k_row, k_el = jax.random.split(key)
    chosen = _chosen_pairs(k_row, v.shape[0], p)
    swap = chosen & jax.random.bernoulli(k_el, 0.5, v.shape)
    v2, t2 = jnp.where(swap, t, v), jnp.where(swap, v, t)
    return _renormalize_chosen(v2, v, chosen), _renormalize_chosen(t2, t, chosen)


def modality_swap_soft(v: jax.Array, t: jax.Array, key: jax.Array, p: float):
    """Soft modality swapping: in a chosen pair (probability ``p``),
    ``v' = l*v + (1-l)*t`` and ``t' = l*t + (1-l)*v`` with ``l_ij ~ U[0, 1]``
    per coordinate, rows renormalised. Returns ``(v', t')``."""
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
    raise ValueError(f"loss.temperature={mode!r} has no parameter; expected one of {TEMPERATURE_PARAMS}")


def param_from_scale(mode: str, scale, s: float = 1.0) -> jax.Array:
    """Inverse of ``scale_from_param``: the parameter giving ``scale``."""
    scale = jnp.asarray(scale, F32)
    if mode == "learned":
        return jnp.log(scale)
    if mode == "softplus":  # log(expm1(x)), written stably for large x
        return scale + jnp.log(-jnp.expm1(-scale))
    if mode == "exp":
        return s * jnp.log(scale)
    raise ValueError(f"loss.temperature={mode!r} has no parameter; expected one of {TEMPERATURE_PARAMS}")


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
    raise ValueError(f"loss.mix_schedule={schedule!r}; expected one of {MIX_SCHEDULES}")


def _check_choice(cfg, key: str, choices) -> str:
    value = cfg.get(key, choices[0]) if hasattr(cfg, "get") else getattr(cfg, key)
    if value not in choices:
        raise ValueError(f"loss.{key}={value!r}; expected one of {choices}")
    return value


Objective = Callable[..., tuple]


def build_objective(cfg) -> Objective:
    """The total loss of a recipe, from the ``config.loss`` ConfigDict.

    Returns ``objective(v, t, scale, key, epoch) -> (total, aux)``, where
    ``aux`` is a flat dict of fp32 scalars (each term, ``mix_weight``, the lam
    draws). ``v``, ``t`` are the L2-normalised embeddings of the global batch;
    ``key`` the step's PRNG key; ``epoch`` an int (may be traced).

    - ``clip``:  clip_loss
    - ``m2mix``: clip_loss + w_e * c_m2 * m2mix_loss(lam ~ Beta(beta_m2, beta_m2), m2_scale)
    - ``m3mix``: clip_loss + w_e * (c_m2 m2mix + c_u vmix + c_u lmix + c_vl vlmix),
      one lam draw per term (Beta(beta_u) for vmix/lmix, Beta(beta_vl) for vlmix)
    - ``cua``:   clip_loss + w_uniformity (U(v) + U(t))/2 + w_alignment A(v, t)
    - ``cuaxu``: cua + w_cross_uniformity XU(v, t)
    ``w_e = 1/(epoch+1)`` with ``mix_schedule="inverse_epoch"``. With
    ``mix_form="openclip"`` the m2mix term is ``(CE_A + CE_B)/2`` at the
    contrastive scale (the authors' OpenCLIP variant). ``swap`` (``hard`` /
    ``soft``, probability ``swap_p``) is applied to the embeddings first.
    """
    g = (lambda k, d: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d: getattr(cfg, k, d))
    method = _check_choice(cfg, "method", METHODS)
    schedule = _check_choice(cfg, "mix_schedule", MIX_SCHEDULES)
    form = _check_choice(cfg, "mix_form", MIX_FORMS)
    swap = _check_choice(cfg, "swap", SWAPS)
    swap_p = float(g("swap_p", 0.0))
    c_m2, beta_m2 = float(g("c_m2", 0.01)), float(g("beta_m2", 0.5))
    m2_scale = g("m2_scale", 1 / 0.07)
    c_u, beta_u = float(g("c_u", 0.05)), float(g("beta_u", 0.5))
    c_vl, beta_vl = float(g("c_vl", 0.1)), float(g("beta_vl", 0.5))
    w_u, w_a = float(g("w_uniformity", 1.0)), float(g("w_alignment", 1.0))
    w_xu = float(g("w_cross_uniformity", 1.0))
    u_t, a_alpha = float(g("uniformity_t", 2.0)), float(g("alignment_alpha", 2.0))

    def objective(v, t, scale, key, epoch=0):
        k_swap, k_m2, k_v, k_l, k_vl = jax.random.split(key, 5)
        if swap == "hard":
            v, t = modality_swap_hard(v, t, k_swap, swap_p)
        elif swap == "soft":
            v, t = modality_swap_soft(v, t, k_swap, swap_p)
        scale = jnp.asarray(scale, F32)
        sims = _sims(v, t)  # shared by the contrastive and m2mix terms
        pos = scale * _rowdot(v, t)
        contrastive = (_ce(scale * sims, pos, 1) + _ce(scale * sims, pos, 0)) / 2
        aux = {"clip": contrastive}
        total = contrastive
        if method in ("m2mix", "m3mix"):
            w_e = mix_weight(schedule, epoch)
            lam_m2 = jax.random.beta(k_m2, beta_m2, beta_m2)
            a, b_t, cos = _m2mix_logits(v, t, lam_m2, sims)
            if form == "reference":
                s2 = jnp.asarray(scale if m2_scale is None else m2_scale, F32)
                m2 = _ce(s2 * a, s2 * cos, 1) + _ce(s2 * b_t, s2 * cos, 0)
            else:
                m2 = (_ce(scale * a, scale * cos, 1) + _ce(scale * b_t, scale * cos, 0)) / 2
            mix = c_m2 * m2
            aux.update(m2mix=m2, lam_m2=lam_m2, mix_weight=w_e)
            if method == "m3mix":
                lam_v = jax.random.beta(k_v, beta_u, beta_u)
                lam_l = jax.random.beta(k_l, beta_u, beta_u)
                lam_vl = jax.random.beta(k_vl, beta_vl, beta_vl)
                vm, lm = vmix_loss(v, t, lam_v, scale), lmix_loss(v, t, lam_l, scale)
                vlm = vlmix_loss(v, t, lam_vl, scale)
                mix = mix + c_u * vm + c_u * lm + c_vl * vlm
                aux.update(vmix=vm, lmix=lm, vlmix=vlm, lam_v=lam_v, lam_l=lam_l, lam_vl=lam_vl)
            total = total + w_e * mix
        elif method in ("cua", "cuaxu"):
            unif = (uniformity(v, u_t) + uniformity(t, u_t)) / 2
            align = alignment(v, t, a_alpha)
            total = total + w_u * unif + w_a * align
            aux.update(uniformity=unif, alignment=align)
            if method == "cuaxu":
                xu = cross_uniformity(v, t, u_t)
                total = total + w_xu * xu
                aux.update(cross_uniformity=xu)
        aux = {k: jnp.asarray(x, F32) for k, x in aux.items()}
        aux["total"] = total
        return total, aux

    return objective
