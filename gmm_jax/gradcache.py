"""Exact large-batch gradients by embedding caching (GradCache, Gao et al. 2021).

A contrastive loss couples every row of the batch, so its gradient cannot be split into
per-micro-batch gradients. It can be split at the embeddings: for
``L(p) = loss(p, encode(p, x))``,

    dL/dp = d loss/dp  +  sum over chunks c of  vjp(encode(., x_c))(d loss / d e_c).

``value_and_grad`` computes exactly that in three passes, holding the towers'
activations of one chunk at a time instead of the whole batch:

1. encode the batch chunk by chunk (``lax.map``, no autodiff: only the (N, D)
   embeddings are kept);
2. the loss and its gradient with respect to all embeddings at once (every row still
   sees the whole batch as negatives; random draws come from the caller's key, so they
   are the unchunked step's);
3. re-encode chunk by chunk inside a ``lax.scan`` and pull the embedding gradients back
   through the towers with ``jax.vjp``, summing the parameter gradients.

The price is a second forward pass of the towers (about +1/3 of a step's FLOPs).

Under a mesh the batch's rows are split over ``axes`` (device d holds the d-th block of
N/d rows); chunk c is the c-th slice of every device's block, so every chunk stays
spread over all devices and no rows move between them. See docs/large_batch.md.

References:
  Gao, Zhang, Han, Callan. "Scaling Deep Contrastive Learning Batch Size under Memory
  Limited Setup" (RepL4NLP 2021), arXiv:2101.06983.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _to_chunks(x, shards: int, chunks: int):
    """``(N, ...) -> (chunks, N / chunks, ...)``; chunk c = the c-th ``1/chunks`` of each
    of the ``shards`` contiguous row blocks (a device-local regrouping)."""
    n = x.shape[0]
    m = n // (shards * chunks)
    x = x.reshape((shards, chunks, m) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape((chunks, shards * m) + x.shape[3:])


def _from_chunks(x, shards: int):
    """Inverse of ``_to_chunks``: ``(chunks, N / chunks, ...) -> (N, ...)``."""
    chunks, rows = x.shape[:2]
    x = x.reshape((chunks, shards, rows // shards) + x.shape[2:])
    return jnp.swapaxes(x, 0, 1).reshape((chunks * rows,) + x.shape[3:])


def check_chunks(n_rows: int, chunks: int, shards: int = 1) -> None:
    """``ValueError`` naming ``config.embed_chunks`` unless it divides the rows each of
    the ``shards`` devices holds."""
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(f"config.embed_chunks={chunks!r} must be a positive int")
    if n_rows % shards or (n_rows // shards) % chunks:
        raise ValueError(f"config.embed_chunks={chunks} must divide the per-device batch "
                         f"{n_rows} rows / {shards} devices = {n_rows / shards:g}")


def value_and_grad(encode: Callable, loss: Callable, params: Any, inputs: Sequence[jax.Array],
                   chunks: int, mesh: Optional[Mesh] = None, axes: Sequence[str] = ()):
    """``((value, aux), grads)`` of ``loss(params, encode(params, *inputs))``, as
    ``jax.value_and_grad(..., has_aux=True)`` gives it, with the towers run ``chunks``
    rows-chunks at a time (see the module docstring).

    Args:
      encode: ``encode(params, *inputs) -> embeddings``, a pytree of arrays whose leading
        dimension is the rows (row i depends only on row i of every input).
      loss: ``loss(params, embeddings) -> (value, aux)``; may use ``params`` directly
        (the temperature) and must be a function of the whole batch of embeddings.
      params: the parameter pytree.
      inputs: arrays with the rows as the leading dimension (e.g. images, tokens).
      chunks: number of chunks (1: the plain ``jax.value_and_grad``).
      mesh, axes: the mesh and its axes the rows are split over (none: one device).
    """
    def full(p):
        return loss(p, encode(p, *inputs))

    if chunks == 1:
        return jax.value_and_grad(full, has_aux=True)(params)
    axes = tuple(axes)
    shards = math.prod(mesh.shape[a] for a in axes) if mesh is not None else 1
    check_chunks(inputs[0].shape[0], chunks, shards)

    def constrain(x, spec):
        return x if mesh is None else jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, spec))

    def split(x):  # rows -> (chunks, rows per chunk), each chunk over every device
        return constrain(_to_chunks(x, shards, chunks), P(None, axes or None))

    def join(x):
        return constrain(_from_chunks(x, shards), P(axes or None))

    xs = tuple(split(x) for x in inputs)
    # 1. embeddings only (nothing here is differentiated, so no activations are kept)
    emb = jax.lax.map(lambda x: encode(params, *x), xs)
    emb = jax.tree.map(join, emb)
    # 2. the loss on the whole batch; gradients w.r.t. every embedding (and params)
    (value, aux), (g_params, g_emb) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        params, emb)
    g_emb = jax.tree.map(split, g_emb)

    # 3. re-encode chunk by chunk and pull the embedding gradients back
    def body(acc, x):
        x_in, g = x
        _, vjp = jax.vjp(lambda p: encode(p, *x_in), params)
        (g_p,) = vjp(g)
        return jax.tree.map(jnp.add, acc, g_p), None

    grads, _ = jax.lax.scan(body, g_params, (xs, g_emb))
    return (value, aux), grads
