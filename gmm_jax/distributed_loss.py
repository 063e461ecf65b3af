"""Memory-lean "local" objective: each device scores its own rows of the global batch
against all-gathered columns (as OpenCLIP's ``local_loss``), inside ``shard_map``.

The value equals ``losses.build_objective(cfg)`` on the global batch: both evaluate
``losses.recipe`` (the same terms of ``gmm_jax.loss_kernels``, the same draws and
weights); here with ``LocalBlocks``, whose row sums are ``psum``-ed. Per-device memory
for the similarity blocks is O(N/d x N) instead of O(N x N).

Differentiate the returned objective from OUTSIDE (``jax.grad`` of a function that
calls it): the transpose of ``all_gather`` is a reduce-scatter, so every device
receives the gradient for its rows from all the blocks that used them. Taking the
gradient inside ``shard_map`` and ``psum``-ing it would count each term d times.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from gmm_jax import loss_kernels as kernels
from gmm_jax import losses
from gmm_jax.loss_spec import LossSpec

F32 = kernels.F32


class LocalBlocks:
    """This device's ``n_loc`` rows (global rows ``start .. start + n_loc``) against all
    ``n`` columns; partial sums and maxima are combined over the mesh ``axes``."""

    def __init__(self, n_loc: int, n: int, axes: tuple[str, ...]):
        self.n, self.n_loc, self.axes = n, n_loc, axes
        self.start = jax.lax.axis_index(axes) * n_loc
        rows = self.start + jnp.arange(n_loc)
        cols = jnp.arange(n)
        self.diag = cols[None, :] == rows[:, None]
        self.flip = cols[None, :] == (n - 1 - rows)[:, None]

    def rows(self, x):
        return jax.lax.dynamic_slice_in_dim(x, self.start, self.n_loc)

    def cross(self, x_rows, y, y_rows, x):
        return kernels.Block(kernels.sims(x_rows, y), 1), kernels.Block(kernels.sims(y_rows, x), 1)

    def gram(self, x_rows, x):
        return kernels.sims(x_rows, x)

    def total(self, partial):
        return jax.lax.psum(partial, self.axes)

    def top(self, partial):
        return jax.lax.pmax(partial, self.axes)


def local_objective(loss_cfg, mesh: Mesh, axes: Sequence[str] = ("data",)):
    """``objective(v, t, scale, key, epoch) -> (total, aux)`` with the semantics of
    ``losses.build_objective(loss_cfg)``, computed blockwise under ``shard_map``.

    Args:
      loss_cfg: ``config.loss`` (or a ``LossSpec``), validated by ``LossSpec.from_config``.
      mesh: the device mesh; ``v`` and ``t`` (N, D) are split along ``axes``.
      axes: mesh axes the batch dimension is sharded over (N divisible by their size).
    """
    axes = tuple(axes)
    spec = LossSpec.from_config(loss_cfg)

    def per_shard(v_loc, t_loc, scale, key, epoch):
        # Columns: the whole batch, gathered in device order (= global row order).
        v = jax.lax.all_gather(v_loc, axes, tiled=True)
        t = jax.lax.all_gather(t_loc, axes, tiled=True)
        blocks = LocalBlocks(v_loc.shape[0], v.shape[0], axes)
        return losses.recipe(spec, blocks, v, t, scale, key, epoch)

    batch = P(axes)

    def objective(v, t, scale, key, epoch=0):
        fn = jax.shard_map(per_shard, mesh=mesh,
                           in_specs=(batch, batch, P(), P(), P()), out_specs=P())
        return fn(v, t, jnp.asarray(scale, F32), key, jnp.asarray(epoch, jnp.int32))

    return objective
