"""ClipCap-style captioner: image embedding -> k prefix token embeddings -> causal decoder.

Sequence the decoder reads, for a caption tokenised as ``SOT w1 .. wn EOT pad..``:

    [p_1 .. p_k, SOT, w1, .., wn, EOT, pad ..]      (k + T positions, causal attention)

The state at the position of token j predicts token j + 1 (the prefix only conditions,
it predicts nothing). Padding sits after EOT and causal attention never lets an
earlier position see it, so padding needs no attention mask, only a loss mask
(``target_mask``). Output logits are tied to the token-embedding table (GPT-2 style).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmm_jax.loss_kernels import l2_normalize
from gmm_jax.models.layers import LayerNorm, Transformer


class Captioner(nn.Module):
    """``apply({"params": p}, emb (N, D), tokens (N, T)) -> logits (N, T, V)``.

    ``emb`` is L2-normalised inside (the CLIP embedding's direction is what the
    contrastive training shapes); ``T <= max_length``. Methods ``prefix`` and
    ``logits`` split the two halves so decoding maps each image once.
    """
    vocab_size: int
    prefix_length: int
    max_length: int
    width: int
    layers: int
    heads: int
    mlp_dim: int = 0
    mapping_hidden: int = 0

    def setup(self):
        k, w = self.prefix_length, self.width
        # ClipCap's MLP mapper: D -> k*W/2 -> k*W with a tanh between.
        self.map_hidden = nn.Dense(self.mapping_hidden or max(k * w // 2, 1), name="map_hidden")
        self.map_out = nn.Dense(k * w, name="map_out")
        self.token_embedding = nn.Embed(self.vocab_size, w,
                                        embedding_init=nn.initializers.normal(0.02))
        self.positional_embedding = self.param(
            "positional_embedding", nn.initializers.normal(0.01), (k + self.max_length, w))
        self.transformer = Transformer(w, self.layers, self.heads, self.mlp_dim or 4 * w,
                                       "gelu", causal=True, dtype=jnp.float32, eps=1e-5)
        self.ln_final = LayerNorm(1e-5)

    def prefix(self, emb):
        """(N, D) image embeddings -> (N, k, W) prefix token embeddings."""
        if emb.ndim != 2:
            raise ValueError(f"Captioner.prefix expects embeddings (N, D), got {emb.shape}")
        emb = l2_normalize(emb)
        h = jnp.tanh(self.map_hidden(emb))
        return self.map_out(h).reshape(emb.shape[0], self.prefix_length, self.width)

    def hidden(self, prefix, tokens):
        """prefix (N, k, W), tokens (N, T) int -> (N, T, W) final states of the token
        positions (after the last layer norm)."""
        n, length = tokens.shape
        if not 0 < length <= self.max_length or prefix.shape[0] != n:
            raise ValueError(f"Captioner: tokens {tokens.shape} (T <= max_length="
                             f"{self.max_length}) and prefix {prefix.shape} must share N")
        x = jnp.concatenate([prefix, self.token_embedding(tokens)], axis=1)
        x = x + self.positional_embedding[:self.prefix_length + length]
        x = self.transformer(x)
        return self.ln_final(x[:, self.prefix_length:])

    def project(self, h):
        """States (..., W) -> vocabulary logits (..., V) float32 (tied embedding)."""
        return self.token_embedding.attend(h).astype(jnp.float32)

    def logits(self, prefix, tokens):
        """prefix (N, k, W), tokens (N, T) int -> (N, T, V) float32; row j of the
        output is the distribution of token j + 1."""
        return self.project(self.hidden(prefix, tokens))

    def __call__(self, emb, tokens):
        return self.logits(self.prefix(emb), tokens)


def build_captioner(cfg, vocab_size: int) -> Captioner:
    """The captioner described by a ``captioning_config()`` section."""
    return Captioner(vocab_size=int(vocab_size), prefix_length=int(cfg.prefix_length),
                     max_length=int(cfg.max_length), width=int(cfg.width),
                     layers=int(cfg.layers), heads=int(cfg.heads), mlp_dim=int(cfg.mlp_dim),
                     mapping_hidden=int(cfg.mapping_hidden))


@functools.lru_cache(maxsize=8)
def _init_fn(model: Captioner, embed_dim: int):
    emb = jnp.zeros((1, embed_dim), jnp.float32)
    tokens = jnp.zeros((1, model.max_length), jnp.int32)
    return jax.jit(lambda key: model.init(key, emb, tokens)["params"])


def init_captioner(model: Captioner, embed_dim: int, key: jax.Array):
    """Random float32 parameters for image embeddings of size ``embed_dim``."""
    return _init_fn(model, int(embed_dim))(key)


def target_mask(tokens, eot_id: int):
    """Teacher-forcing targets of tokens (N, T): ``(targets (N, T-1), mask (N, T-1))``.

    ``targets = tokens[:, 1:]``; the mask is True up to and including the first EOT
    and False after it. The mask is built from EOT, not from the pad id, because the
    pad id 0 is also a real token of the CLIP vocabulary ("!").
    """
    targets = tokens[:, 1:]
    is_eot = (targets == eot_id).astype(jnp.int32)
    eot_before = jnp.cumsum(is_eot, axis=1) - is_eot
    return targets, eot_before == 0


def caption_loss(logits, tokens, eot_id: int):
    """Mean cross-entropy over the masked target tokens (token-level average over the
    batch). logits (N, T, V) from ``Captioner``, tokens (N, T)."""
    targets, mask = target_mask(tokens, eot_id)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = mask.astype(jnp.float32)
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sequence_log_prob(logits, tokens, eot_id: int):
    """Sum of log p(token) over each row's generated tokens (after SOT, up to and
    including EOT), and their count. (N, T, V), (N, T) -> ((N,), (N,))."""
    targets, mask = target_mask(tokens, eot_id)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(mask, tok, 0.0), axis=1), jnp.sum(mask, axis=1)
