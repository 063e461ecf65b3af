"""Block kernels: every loss term as a function of a block of rows x all columns.

The global objective (``losses``) and the ``shard_map`` local objective
(``distributed_loss``) evaluate the same term functions below; they differ only in the
``Blocks`` they pass, which says which rows of the global batch are held here and how
partial sums are combined:

- ``GlobalBlocks(n)``: all ``n`` rows; sums are plain sums. The column cross-entropy of
  ``S = v @ t.T`` is read from ``S`` itself (``axis=0``), so no transpose and no second
  product is formed.
- ``distributed_loss.LocalBlocks``: ``n / d`` rows against all-gathered columns; sums are
  ``psum``-ed over the mesh axes, and the rows of ``S^T`` are a product of their own.

Every term is a mean over the ``n`` global rows, so a term is ``total(sum over the rows
held here) / n``. A logit block is a ``Block(values, axis)``: rows of the logical matrix
whose softmax runs along ``axis`` of ``values``. Similarities are formed with fp32
accumulation; everything after them is fp32.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp

F32 = jnp.float32
# Below this angle slerp is replaced by its limit (normalised linear mix);
# within this distance of pi the geodesic is not unique and we pick one.
SMALL_ANGLE = 1e-4
ANTIPODAL_MARGIN = 1e-3
_TINY = 1e-12


# --------------------------------------------------------------------------
# geometry of unit rows

def safe_norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm with a finite gradient at zero (keepdims)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return jnp.sqrt(jnp.maximum(sq, _TINY))


def l2_normalize(x: jax.Array) -> jax.Array:
    """Rows scaled to unit norm, in fp32 (norms below 1e-12 are taken as 1e-12)."""
    x = x.astype(F32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def per_row(lam, ndim: int) -> jax.Array:
    """A scalar or per-row ``lam`` as an fp32 array that broadcasts over rows."""
    lam = jnp.asarray(lam, F32)
    if lam.ndim == ndim - 1:
        lam = lam[..., None]
    return lam


def angle(a: jax.Array, b: jax.Array) -> jax.Array:
    """Angle between unit rows, ``(..., 1)``; accurate near 0 and near pi."""
    return 2.0 * jnp.arctan2(safe_norm(a - b), safe_norm(a + b))


def slerp_weights(theta: jax.Array, lam: jax.Array):
    """Weights (w_a, w_b) of ``slerp = w_a a + w_b b`` away from the antipode.

    For theta below ``SMALL_ANGLE`` they are the limit (lam, 1 - lam) renormalised
    onto the sphere. The angle is clamped below pi - margin so the division by
    sin(theta) stays finite (``losses.slerp`` handles antipodal rows itself; the
    m2-Mix blocks use these clamped weights for them).
    """
    small = theta < SMALL_ANGLE
    theta_c = jnp.minimum(theta, math.pi - ANTIPODAL_MARGIN)
    sin_t = jnp.where(small, 1.0, jnp.sin(theta_c))
    w_a = jnp.where(small, lam, jnp.sin(lam * theta_c) / sin_t)
    w_b = jnp.where(small, 1.0 - lam, jnp.sin((1.0 - lam) * theta_c) / sin_t)
    chord = jnp.where(small, jnp.sqrt(jnp.maximum(
        lam ** 2 + (1 - lam) ** 2 + 2 * lam * (1 - lam) * jnp.cos(theta), _TINY)), 1.0)
    return w_a / chord, w_b / chord


def orthogonal_unit(b: jax.Array) -> jax.Array:
    """A unit vector orthogonal to each unit row of ``b`` (deterministic)."""
    k = jnp.argmin(jnp.abs(b), axis=-1)
    e = jax.nn.one_hot(k, b.shape[-1], dtype=b.dtype)
    return l2_normalize(e - jnp.sum(e * b, axis=-1, keepdims=True) * b)


def m2mix_weights(v: jax.Array, t: jax.Array, lam):
    """``(alpha, beta)``, each ``(n,)``: ``slerp(v_j, t_j, lam) = alpha_j v_j + beta_j t_j``
    for every pair ``j`` (the columns of the m2-Mix blocks)."""
    theta = angle(v.astype(F32), t.astype(F32))
    alpha, beta = slerp_weights(theta, per_row(lam, v.ndim))
    return alpha[:, 0], beta[:, 0]


# --------------------------------------------------------------------------
# products and row pieces

def sims(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x @ y.T`` in the inputs' dtype with fp32 accumulation and output."""
    return jnp.einsum("nd,md->nm", x, y, preferred_element_type=F32)


def rowdot(x: jax.Array, y: jax.Array) -> jax.Array:
    """``<x_i, y_i>`` per row in fp32: ``diag(x @ y.T)`` without an n x n pass."""
    return jnp.sum(x.astype(F32) * y.astype(F32), axis=-1)


@jax.custom_vjp
def gram(x: jax.Array) -> jax.Array:
    """``x @ x.T`` (fp32 out) whose backward is one product: ``(G + G^T) @ x``."""
    return sims(x, x)


def _gram_fwd(x):
    return sims(x, x), x


def _gram_bwd(x, g):
    g = (g + g.T).astype(x.dtype)
    return (jnp.einsum("nm,md->nd", g, x, preferred_element_type=F32).astype(x.dtype),)


gram.defvjp(_gram_fwd, _gram_bwd)


def sq_dists(x: jax.Array, y: jax.Array) -> jax.Array:
    """Pairwise squared distances ``||x_i - y_j||^2``, fp32, clipped at 0."""
    x32, y32 = x.astype(F32), y.astype(F32)
    xx = jnp.sum(x32 * x32, axis=1)[:, None]
    yy = jnp.sum(y32 * y32, axis=1)[None, :]
    return jnp.maximum(xx + yy - 2.0 * sims(x, y), 0.0)


class Block(NamedTuple):
    """Rows of a logical logit matrix; the softmax of a row runs along ``axis``."""
    values: jax.Array
    axis: int


def _along(x: jax.Array, axis: int) -> jax.Array:
    """A vector indexed along ``axis`` of a 2-D block, broadcastable to it."""
    return x[None, :] if axis == 1 else x[:, None]


def ce_sum(logits: jax.Array, positives: jax.Array, axis: int) -> jax.Array:
    """Sum over rows of ``logsumexp(row) - positive``: softmax cross-entropy with the
    target logits given (``scale * <v_i, t_i>``), which keeps the backward free of
    n x n scatters."""
    return jnp.sum(jax.nn.logsumexp(logits, axis=axis) - positives)


def soft_ce_sum(logits: jax.Array, targets: jax.Array, axis: int) -> jax.Array:
    """Sum over rows of ``-sum_j Y_ij log softmax(L)_ij`` (softmax along ``axis``)."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=axis))


def mixed_logits(dots_v: jax.Array, dots_t: jax.Array, alpha, beta, axis: int):
    """Similarities of rows with the mixtures ``M_j = alpha_j v_j + beta_j t_j``:
    ``<x_i, M_j> = alpha_j <x_i, v_j> + beta_j <x_i, t_j>``, from the products the
    contrastive term already has (no product with ``M``); ``j`` runs along ``axis``."""
    return dots_v * _along(alpha, axis) + dots_t * _along(beta, axis)


def with_positives(block: Block, positives: jax.Array, diag: jax.Array) -> Block:
    """``block`` with its diagonal (``diag``: the mask of ``i == j``) set to the
    positives ``<v_i, t_i>`` (the mixture of a pair is not its own negative)."""
    pos = _along(positives, 1 - block.axis)
    return Block(jnp.where(diag, pos, block.values), block.axis)


def pair_targets(diag: jax.Array, flip: jax.Array, w_diag, w_flip) -> jax.Array:
    """Soft targets ``w_diag I + w_flip flip(I)`` of the mixup terms, restricted to the
    block (``flip``: the mask of ``j == n - 1 - i``, the pair mixed with row ``i``)."""
    return w_diag * diag.astype(F32) + w_flip * flip.astype(F32)


def alignment_sum(x: jax.Array, y: jax.Array, alpha: float) -> jax.Array:
    """Sum over rows of ``||x_i - y_i||^alpha`` (finite gradient at 0 for any alpha)."""
    sq = jnp.sum(jnp.square(x.astype(F32) - y.astype(F32)), axis=1)
    if alpha == 2.0:
        return jnp.sum(sq)
    positive = sq > 0
    safe = jnp.where(positive, sq, 1.0)
    return jnp.sum(jnp.where(positive, safe ** (alpha / 2.0), 0.0))


# --------------------------------------------------------------------------
# which rows are held, and how their sums combine

class Blocks(Protocol):
    """The rows of the global batch one evaluation holds (see the module docstring)."""
    n: int             # rows of the global batch
    diag: jax.Array    # (rows held, n) bool: j == i
    flip: jax.Array    # (rows held, n) bool: j == n - 1 - i

    def rows(self, x: jax.Array) -> jax.Array:
        """The rows held of a global ``(n, D)`` array."""

    def cross(self, x_rows, y, y_rows, x) -> tuple[Block, Block]:
        """Rows held of ``x @ y.T`` and of ``y @ x.T``."""

    def gram(self, x_rows, x) -> jax.Array:
        """Rows held of ``x @ x.T``."""

    def total(self, partial: jax.Array) -> jax.Array:
        """Sum of a partial sum over all holders."""

    def top(self, partial: jax.Array) -> jax.Array:
        """Max of a partial max over all holders."""


class GlobalBlocks:
    """All ``n`` rows in one place. The masks are symmetric, so they serve blocks read
    along either axis."""

    def __init__(self, n: int):
        self.n = n
        self.diag = jnp.eye(n, dtype=bool)
        self.flip = self.diag[::-1]

    def rows(self, x):
        return x

    def cross(self, x_rows, y, y_rows, x):
        s = sims(x_rows, y)  # the rows of y @ x.T are its columns: read along axis 0
        return Block(s, 1), Block(s, 0)

    def gram(self, x_rows, x):
        return gram(x)

    def total(self, partial):
        return partial

    def top(self, partial):
        return partial


# --------------------------------------------------------------------------
# the terms

def clip_term(blocks: Blocks, vt: Block, tv: Block, pos, scale) -> jax.Array:
    """Symmetric InfoNCE ``(CE(scale S) + CE(scale S^T)) / 2``; ``vt``/``tv`` the rows of
    ``S = v @ t.T`` and ``S^T``, ``pos`` the held ``<v_i, t_i>``."""
    sums = ce_sum(scale * vt.values, scale * pos, vt.axis) + ce_sum(
        scale * tv.values, scale * pos, tv.axis)
    return blocks.total(sums) / (2 * blocks.n)


def m2mix_term(blocks: Blocks, vt: Block, tv: Block, gram_v, gram_t, pos, alpha, beta,
               scale, pos_scale=None, halve: bool = False) -> jax.Array:
    """m2-Mix: ``CE(A) + CE(B)`` (``/2`` with ``halve``), ``A = v @ M.T``, ``B = t @ M.T``
    with the positives on the diagonal. The mixed negatives are multiplied by ``scale``,
    the positives by ``pos_scale`` (``None``: ``scale`` too; the OpenCLIP form keeps the
    contrastive scale there). ``gram_v``/``gram_t``: held rows of ``v @ v.T`` /
    ``t @ t.T``; ``alpha``/``beta`` from ``m2mix_weights``."""
    pos_scale = scale if pos_scale is None else pos_scale
    pos = pos_scale * pos
    a = with_positives(Block(scale * mixed_logits(gram_v, vt.values, alpha, beta, vt.axis),
                             vt.axis), pos, blocks.diag)
    b = with_positives(Block(scale * mixed_logits(tv.values, gram_t, alpha, beta, tv.axis),
                             tv.axis), pos, blocks.diag)
    sums = ce_sum(a.values, pos, a.axis) + ce_sum(b.values, pos, b.axis)
    return blocks.total(sums) / (2 * blocks.n if halve else blocks.n)


def soft_mix_term(blocks: Blocks, xy: Block, yx: Block, targets, scale) -> jax.Array:
    """Symmetric soft cross-entropy ``(CE(scale L, Y) + CE(scale L^T, Y^T)) / 2`` with
    ``L = x @ y.T`` (rows ``xy``, ``yx``) and symmetric targets ``Y`` (held rows)."""
    sums = soft_ce_sum(scale * xy.values, targets, xy.axis) + soft_ce_sum(
        scale * yx.values, targets, yx.axis)
    return blocks.total(sums) / (2 * blocks.n)


def log_mean_exp(blocks: Blocks, values, mask, count: int) -> jax.Array:
    """``log(sum of exp(values[mask]) over all holders / count)``, shifted by the global
    max (gradient-free; the result does not depend on it)."""
    values = jnp.where(mask, values, -jnp.inf)
    m = blocks.top(jax.lax.stop_gradient(jnp.max(values)))
    s = blocks.total(jnp.sum(jnp.where(mask, jnp.exp(values - m), 0.0)))
    return jnp.log(s) + m - jnp.log(jnp.asarray(count, F32))


def _check_pairs(blocks: Blocks, name: str) -> None:
    if blocks.n < 2:
        raise ValueError(f"{name} needs a batch of >= 2 rows, got {blocks.n}")


def uniformity_term(blocks: Blocks, x_rows, x, t: float) -> jax.Array:
    """``log mean_{i != j} exp(-t ||x_i - x_j||^2)`` (equal to the mean over i < j: the
    kernel is symmetric)."""
    _check_pairs(blocks, "uniformity")
    n = blocks.n
    return log_mean_exp(blocks, -t * sq_dists(x_rows, x), ~blocks.diag, n * (n - 1))


def cross_uniformity_term(blocks: Blocks, x_rows, y, t: float) -> jax.Array:
    """``log mean_{i != j} exp(-t ||x_i - y_j||^2)``."""
    _check_pairs(blocks, "cross_uniformity")
    n = blocks.n
    return log_mean_exp(blocks, -t * sq_dists(x_rows, y), ~blocks.diag, n * (n - 1))


def alignment_term(blocks: Blocks, x_rows, y_rows, alpha: float) -> jax.Array:
    """``mean_i ||x_i - y_i||^alpha``."""
    return blocks.total(alignment_sum(x_rows, y_rows, alpha)) / blocks.n
