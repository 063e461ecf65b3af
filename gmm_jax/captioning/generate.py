"""Captions for image embeddings from a trained ``Captioner``: batched, jitted once."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gmm_jax.captioning import decode
from gmm_jax.captioning.model import Captioner


def decoder_step_fn(model: Captioner, params, emb):
    """``next_logits(tokens (N, M, T), t) -> (N, M, V)`` for ``decode``'s searches:
    the images' prefixes are computed once and shared by their M hypotheses."""
    n, T = emb.shape[0], model.max_length
    prefix = model.apply({"params": params}, emb, method=Captioner.prefix)

    def next_logits(tokens, t):
        m = tokens.shape[1]
        rep = jnp.repeat(prefix, m, axis=0)              # row i*m + j: image i, hypothesis j
        h = model.apply({"params": params}, rep, tokens.reshape(n * m, T),
                        method=Captioner.hidden)
        # Project only the one position read: (N*M, V), not (N*M, T, V) logits.
        h = jax.lax.dynamic_index_in_dim(h, t - 1, axis=1, keepdims=False)
        return model.apply({"params": params}, h, method=Captioner.project).reshape(n, m, -1)
    return next_logits


@functools.lru_cache(maxsize=16)
def make_generate_fn(model: Captioner, beam_size: int, sot_id: int, eot_id: int,
                     pad_id: int = 0):
    """``fn(params, emb (N, D), alpha) -> (tokens (N, max_length), score (N,))``, jitted
    and cached per (model, beam, ids): ``alpha``, the length-penalty exponent >= 0, is
    traced, so neither a new alpha nor new parameters recompile.

    Every decoding step re-runs the decoder over the whole fixed-size buffer (no
    key/value cache: shapes stay fixed and captions are short, so the quadratic cost
    is small next to the image tower). ``beam_size == 1`` is greedy search (raw
    log-probability; alpha unused).
    """
    T = model.max_length

    def fn(params, emb, alpha):
        step = decoder_step_fn(model, params, emb)
        if beam_size == 1:
            return decode.greedy_search(step, emb.shape[0], T, sot_id, eot_id, pad_id)
        return decode.beam_search(step, emb.shape[0], beam_size, T, sot_id, eot_id,
                                  jnp.asarray(alpha, jnp.float32), pad_id)

    return jax.jit(fn)


def generate_tokens(model: Captioner, params, emb: np.ndarray, *, beam_size: int,
                    alpha: float, sot_id: int, eot_id: int, batch_size: int = 64,
                    pad_id: int = 0) -> np.ndarray:
    """Token rows (N, max_length) for embeddings (N, D), in batches of ``batch_size``
    (the last one zero-padded, so one compiled shape)."""
    emb = np.asarray(emb, np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"generate_tokens expects embeddings (N>0, D), got {emb.shape}")
    if not alpha >= 0:
        raise ValueError(f"length alpha={alpha}: must be >= 0")
    fn = make_generate_fn(model, int(beam_size), sot_id, eot_id, pad_id)
    bs = min(int(batch_size), len(emb))
    out = []
    for start in range(0, len(emb), bs):
        chunk = emb[start:start + bs]
        n = len(chunk)
        if n < bs:
            chunk = np.concatenate([chunk, np.zeros((bs - n, emb.shape[1]), np.float32)])
        tokens, _ = fn(params, chunk, float(alpha))
        out.append(np.asarray(tokens)[:n])
    return np.concatenate(out)


def generate_captions(model: Captioner, params, emb: np.ndarray, tokenizer, cfg) -> list[str]:
    """Caption strings for embeddings (N, D) with ``cfg.beam_size`` / ``length_alpha``."""
    tokens = generate_tokens(model, params, emb, beam_size=cfg.beam_size,
                             alpha=cfg.length_alpha, sot_id=tokenizer.sot_token_id,
                             eot_id=tokenizer.eot_token_id,
                             batch_size=cfg.decode_batch_size)
    return tokenizer.decode_batch(tokens)
