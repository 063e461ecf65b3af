"""Greedy and beam-search decoding with fixed shapes (one ``lax.while_loop``, no Python
loop over tokens), for any causal model given as ``next_logits``.

``next_logits(tokens (N, M, T) int32, t) -> (N, M, V)``: the logits of the token in
slot ``t`` given ``tokens[..., :t]`` (slots ``>= t`` hold padding and must not matter).
Slot 0 holds SOT; a hypothesis is complete once it emits EOT; the last slot
``T - 1`` can only be EOT (a caption too long for the buffer is ended there, as the
tokenizer cuts overlong texts). SOT is never generated.

Scores. A token's score is its log-probability under the full softmax (masking SOT,
or everything but EOT in the last slot, does not renormalise). A hypothesis' raw
score is the sum over its generated tokens, EOT included; its length n counts them
too. Beam search ranks complete hypotheses by the GNMT length-normalised score

    score / lp(n),   lp(n) = ((5 + n) / 6) ** alpha,

so ``alpha = 0`` is the raw log-probability and larger alpha favours longer captions.

Beam search (the Hugging Face / fairseq scheme): each step takes the 2B best
one-token extensions of the B alive hypotheses by raw score. An extension ending in
EOT that ranks among the first B joins the pool of the B best complete hypotheses
(by normalised score); the B best extensions not ending in EOT stay alive. A batch
row stops when its pool is full and no alive hypothesis can still beat the pool's
worst: raw scores only fall as tokens are added and lp grows with n, so
``alive_score / lp(T - 1)`` bounds every completion (for alpha >= 0). The stop is
therefore exact, not a heuristic. With beam 1 and alpha 0 this is greedy decoding.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


def length_penalty(length, alpha: float):
    """GNMT's ``((5 + n) / 6) ** alpha`` for n generated tokens (EOT included)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _allowed_log_probs(logits, t, max_length: int, sot_id: int, eot_id: int):
    """Log-softmax over the vocabulary with SOT banned, and only EOT allowed in the
    last slot. (..., V) -> (..., V) float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ids = jnp.arange(logp.shape[-1])
    banned = (ids == sot_id) | ((t == max_length - 1) & (ids != eot_id))
    return jnp.where(banned, NEG_INF, logp)


def _check(max_length: int, sot_id: int, eot_id: int):
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: needs room for SOT and EOT")
    if sot_id == eot_id:
        raise ValueError(f"sot_id and eot_id are both {sot_id}")


def greedy_search(next_logits: Callable, batch: int, max_length: int, sot_id: int,
                  eot_id: int, pad_id: int = 0):
    """Most likely token at each step. Returns ``(tokens (N, T) int32, score (N,))``:
    SOT, the caption, EOT, then ``pad_id``; score = raw sum of log-probabilities."""
    _check(max_length, sot_id, eot_id)
    T = max_length
    tokens = jnp.full((batch, 1, T), pad_id, jnp.int32).at[:, :, 0].set(sot_id)

    def cond(state):
        t, _, done, _ = state
        return (t < T) & ~jnp.all(done)

    def body(state):
        t, tokens, done, score = state
        logp = _allowed_log_probs(next_logits(tokens, t)[:, 0], t, T, sot_id, eot_id)
        nxt = jnp.argmax(logp, axis=-1).astype(jnp.int32)
        step = jnp.take_along_axis(logp, nxt[:, None], axis=-1)[:, 0]
        nxt = jnp.where(done, pad_id, nxt)
        score = score + jnp.where(done, 0.0, step)
        tokens = tokens.at[:, 0, t].set(nxt)
        return t + 1, tokens, done | (nxt == eot_id), score

    state = (jnp.int32(1), tokens, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32))
    _, tokens, _, score = jax.lax.while_loop(cond, body, state)
    return tokens[:, 0], score


def beam_search(next_logits: Callable, batch: int, beam_size: int, max_length: int,
                sot_id: int, eot_id: int, alpha: float = 0.0, pad_id: int = 0):
    """Beam search (see the module docstring for the rules). Returns ``(tokens (N, T)
    int32, normalised score (N,))`` of the best complete hypothesis of each row."""
    _check(max_length, sot_id, eot_id)
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size}: must be >= 1")
    if isinstance(alpha, (int, float)) and alpha < 0:  # may also be a traced scalar
        raise ValueError(f"length alpha={alpha}: must be >= 0 (the early stop relies on it)")
    B, T = int(beam_size), int(max_length)
    start = jnp.full((batch, B, T), pad_id, jnp.int32).at[:, :, 0].set(sot_id)
    # One live hypothesis per row at first; the other beams start dead.
    alive_score = jnp.full((batch, B), NEG_INF).at[:, 0].set(0.0)
    fin_norm = jnp.full((batch, B), NEG_INF)
    lp_max = length_penalty(T - 1, alpha)

    def row_done(alive_score, fin_norm):
        bound = jnp.max(alive_score, axis=1) / lp_max
        return (jnp.min(fin_norm, axis=1) >= bound) | jnp.all(alive_score == NEG_INF, axis=1)

    def cond(state):
        t, _, alive_score, _, fin_norm = state
        return (t < T) & ~jnp.all(row_done(alive_score, fin_norm))

    def body(state):
        t, alive_tok, alive_score, fin_tok, fin_norm = state
        logp = _allowed_log_probs(next_logits(alive_tok, t), t, T, sot_id, eot_id)
        V = logp.shape[-1]
        cand = (alive_score[:, :, None] + logp).reshape(batch, B * V)
        top_score, top_idx = jax.lax.top_k(cand, 2 * B)              # sorted, best first
        tok = (top_idx % V).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_tok, (top_idx // V)[:, :, None], axis=1)
        seqs = seqs.at[:, :, t].set(tok)                             # (N, 2B, T)
        is_eot = tok == eot_id
        joins = is_eot & (jnp.arange(2 * B) < B) & jnp.isfinite(top_score)
        new_norm = jnp.where(joins, top_score / length_penalty(t, alpha), NEG_INF)
        pool_norm = jnp.concatenate([fin_norm, new_norm], axis=1)
        pool_tok = jnp.concatenate([fin_tok, seqs], axis=1)
        fin_norm, keep = jax.lax.top_k(pool_norm, B)
        fin_tok = jnp.take_along_axis(pool_tok, keep[:, :, None], axis=1)
        alive_score, keep = jax.lax.top_k(jnp.where(is_eot, NEG_INF, top_score), B)
        alive_tok = jnp.take_along_axis(seqs, keep[:, :, None], axis=1)
        return t + 1, alive_tok, alive_score, fin_tok, fin_norm

    state = (jnp.int32(1), start, alive_score, start, fin_norm)
    _, _, _, fin_tok, fin_norm = jax.lax.while_loop(cond, body, state)
    return fin_tok[:, 0], fin_norm[:, 0]
