"""Memory-lean "local" objective: each device scores its own rows of the global batch
against all-gathered columns (as OpenCLIP's ``local_loss``), inside ``shard_map``.

The value equals ``losses.build_objective(cfg)`` on the global batch: every term is a
mean over the N global rows, so each device sums the terms of its ``N/d`` rows and the
sums are ``psum``-ed. Per-device memory for the similarity blocks is O(N/d x N)
instead of O(N x N).

Differentiate the returned objective from OUTSIDE (``jax.grad`` of a function that
calls it): the transpose of ``all_gather`` is a reduce-scatter, so every device
receives the gradient for its rows from all the blocks that used them. Taking the
gradient inside ``shard_map`` and ``psum``-ing it would count each term d times.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from gmm_jax import losses as L

F32 = jnp.float32


def _g(cfg, key, default):
    return cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)


def _lse_rows(logits):
    return jax.nn.logsumexp(logits, axis=1)


def _soft_ce_rows(logits, targets):
    """Sum over the block's rows of ``-sum_j Y_ij log softmax(L)_ij``."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1))


def _global_log_mean_exp(values, mask, axes, count):
    """``log(sum of exp(values[mask]) over all devices / count)``, stably: the shift is a
    global max (gradient-free; the result does not depend on it)."""
    values = jnp.where(mask, values, -jnp.inf)
    m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(values)), axes)
    s = jax.lax.psum(jnp.sum(jnp.where(mask, jnp.exp(values - m), 0.0)), axes)
    return jnp.log(s) + m - jnp.log(jnp.asarray(count, F32))


def local_objective(loss_cfg, mesh: Mesh, axes: Sequence[str] = ("data",)):
    """``objective(v, t, scale, key, epoch) -> (total, aux)`` with the semantics of
    ``losses.build_objective(loss_cfg)``, computed blockwise under ``shard_map``.

    Args:
      loss_cfg: the ``config.loss`` ConfigDict (same fields as ``build_objective``).
      mesh: the device mesh; ``v`` and ``t`` (N, D) are split along ``axes``.
      axes: mesh axes the batch dimension is sharded over (N divisible by their size).
    """
    axes = tuple(axes)
    method = L._check_choice(loss_cfg, "method", L.METHODS)
    schedule = L._check_choice(loss_cfg, "mix_schedule", L.MIX_SCHEDULES)
    form = L._check_choice(loss_cfg, "mix_form", L.MIX_FORMS)
    swap = L._check_choice(loss_cfg, "swap", L.SWAPS)
    swap_p = float(_g(loss_cfg, "swap_p", 0.0))
    c_m2, beta_m2 = float(_g(loss_cfg, "c_m2", 0.01)), float(_g(loss_cfg, "beta_m2", 0.5))
    m2_scale = _g(loss_cfg, "m2_scale", 1 / 0.07)
    c_u, beta_u = float(_g(loss_cfg, "c_u", 0.05)), float(_g(loss_cfg, "beta_u", 0.5))
    c_vl, beta_vl = float(_g(loss_cfg, "c_vl", 0.1)), float(_g(loss_cfg, "beta_vl", 0.5))
    w_u, w_a = float(_g(loss_cfg, "w_uniformity", 1.0)), float(_g(loss_cfg, "w_alignment", 1.0))
    w_xu = float(_g(loss_cfg, "w_cross_uniformity", 1.0))
    u_t = float(_g(loss_cfg, "uniformity_t", 2.0))
    a_alpha = float(_g(loss_cfg, "alignment_alpha", 2.0))

    def per_shard(v_loc, t_loc, scale, key, epoch):
        n_loc = v_loc.shape[0]
        # Columns: the whole batch, gathered in device order (= global row order).
        v = jax.lax.all_gather(v_loc, axes, tiled=True)
        t = jax.lax.all_gather(t_loc, axes, tiled=True)
        n = v.shape[0]
        start = jax.lax.axis_index(axes) * n_loc
        rows = start + jnp.arange(n_loc)
        cols = jnp.arange(n)
        diag = cols[None, :] == rows[:, None]              # (n_loc, n): the positives
        k_swap, k_m2, k_v, k_l, k_vl = jax.random.split(key, 5)
        if swap != "none":  # same key on every device: the same global swap
            fn = L.modality_swap_hard if swap == "hard" else L.modality_swap_soft
            v, t = fn(v, t, k_swap, swap_p)
            v_loc = jax.lax.dynamic_slice_in_dim(v, start, n_loc)
            t_loc = jax.lax.dynamic_slice_in_dim(t, start, n_loc)
        psum = lambda x: jax.lax.psum(x, axes)  # noqa: E731
        scale = jnp.asarray(scale, F32)

        s_vt = L._sims(v_loc, t)                            # rows of S
        s_tv = L._sims(t_loc, v)                            # rows of S^T
        cos = L._rowdot(v_loc, t_loc)
        contrastive = psum(jnp.sum(_lse_rows(scale * s_vt) - scale * cos)
                           + jnp.sum(_lse_rows(scale * s_tv) - scale * cos)) / (2 * n)
        aux = {"clip": contrastive}
        total = contrastive
        if method in ("m2mix", "m3mix"):
            w_e = L.mix_weight(schedule, epoch)
            lam_m2 = jax.random.beta(k_m2, beta_m2, beta_m2)
            theta = L._angle(v.astype(F32), t.astype(F32))  # (n, 1), every column's pair
            alpha, beta = L._slerp_weights(theta, L._per_row(lam_m2, 2))
            alpha, beta = alpha[:, 0][None, :], beta[:, 0][None, :]
            a = L._sims(v_loc, v) * alpha + s_vt * beta     # rows of v @ M.T
            b = s_tv * alpha + L._sims(t_loc, t) * beta     # rows of t @ M.T
            a = jnp.where(diag, cos[:, None], a)
            b = jnp.where(diag, cos[:, None], b)
            if form == "reference":
                s2 = jnp.asarray(scale if m2_scale is None else m2_scale, F32)
                m2 = psum(jnp.sum(_lse_rows(s2 * a) - s2 * cos)
                          + jnp.sum(_lse_rows(s2 * b) - s2 * cos)) / n
            else:
                m2 = psum(jnp.sum(_lse_rows(scale * a) - scale * cos)
                          + jnp.sum(_lse_rows(scale * b) - scale * cos)) / (2 * n)
            mix = c_m2 * m2
            aux.update(m2mix=m2, lam_m2=lam_m2, mix_weight=w_e)
            if method == "m3mix":
                flip = cols[None, :] == (n - 1 - rows)[:, None]

                def sym_soft_ce(x_loc, y, y_loc, x, targets):
                    # rows of logits (x @ y.T) and of its transpose (y @ x.T)
                    r = _soft_ce_rows(scale * L._sims(x_loc, y), targets)
                    c = _soft_ce_rows(scale * L._sims(y_loc, x), targets)
                    return psum(r + c) / (2 * n)

                def mixed(x, lam):  # slerp with the batch reversed; local rows too
                    xm = L.slerp(x, x[::-1], lam)
                    return xm, jax.lax.dynamic_slice_in_dim(xm, start, n_loc)

                lam_v = jax.random.beta(k_v, beta_u, beta_u)
                lam_l = jax.random.beta(k_l, beta_u, beta_u)
                lam_vl = jax.random.beta(k_vl, beta_vl, beta_vl)
                soft = lambda lam: lam * diag + (1.0 - lam) * flip  # noqa: E731
                vm_all, vm_loc = mixed(v, lam_v)
                vm = sym_soft_ce(vm_loc, t, t_loc, vm_all, soft(lam_v))
                tm_all, tm_loc = mixed(t, lam_l)
                lm = sym_soft_ce(v_loc, tm_all, tm_loc, v, soft(lam_l))
                vm2_all, vm2_loc = mixed(v, lam_vl)
                tm2_all, tm2_loc = mixed(t, lam_vl)
                both = diag.astype(F32) + flip.astype(F32)
                vlm = sym_soft_ce(vm2_loc, tm2_all, tm2_loc, vm2_all, both)
                mix = mix + c_u * vm + c_u * lm + c_vl * vlm
                aux.update(vmix=vm, lmix=lm, vlmix=vlm, lam_v=lam_v, lam_l=lam_l, lam_vl=lam_vl)
            total = total + w_e * mix
        elif method in ("cua", "cuaxu"):
            if n < 2:
                raise ValueError(f"loss.method={method!r} needs a global batch of >= 2 rows")
            off = ~diag
            # mean over i<j of a symmetric kernel == mean over i != j
            unif_v = _global_log_mean_exp(-u_t * L._sq_dists(v_loc, v), off, axes, n * (n - 1))
            unif_t = _global_log_mean_exp(-u_t * L._sq_dists(t_loc, t), off, axes, n * (n - 1))
            unif = (unif_v + unif_t) / 2
            align = psum(L.alignment(v_loc, t_loc, a_alpha) * n_loc) / n
            total = total + w_u * unif + w_a * align
            aux.update(uniformity=unif, alignment=align)
            if method == "cuaxu":
                xu = _global_log_mean_exp(-u_t * L._sq_dists(v_loc, t), off, axes, n * (n - 1))
                total = total + w_xu * xu
                aux.update(cross_uniformity=xu)
        aux = {k: jnp.asarray(x, F32) for k, x in aux.items()}
        aux["total"] = total
        return total, aux

    batch = P(axes)

    def objective(v, t, scale, key, epoch=0):
        fn = jax.shard_map(per_shard, mesh=mesh,
                           in_specs=(batch, batch, P(), P(), P()), out_specs=P())
        return fn(v, t, jnp.asarray(scale, F32), key, jnp.asarray(epoch, jnp.int32))

    return objective
