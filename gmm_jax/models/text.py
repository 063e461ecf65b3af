"""CLIP's text tower: a causal pre-norm transformer read at the end-of-text token.

Parameter tree (OpenAI names, at the top level of the CLIP tree):
``token_embedding/embedding (V, W)``, ``positional_embedding (C, W)``,
``transformer/resblocks_{i}``, ``ln_final``, ``text_projection (W, D)``.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .config import CLIPConfig
from .layers import LayerNorm, Transformer, compute_dtype


def eot_positions(tokens, eos_token_id):
    """Index of the token whose state is the text feature, per row: the first
    ``eos_token_id`` (Hugging Face's rule), or the argmax of the ids when
    ``eos_token_id`` is None (OpenAI's rule: EOT is the largest id). (N, L) -> (N,)."""
    if eos_token_id is None:
        return jnp.argmax(tokens, axis=-1)
    return jnp.argmax(tokens == eos_token_id, axis=-1)


class TextTransformer(nn.Module):
    config: CLIPConfig

    @nn.compact
    def __call__(self, tokens):
        """tokens (N, L) int, L <= context_length -> features (N, D) float32,
        projected, not normalised."""
        cfg = self.config
        if tokens.ndim != 2 or not 0 < tokens.shape[1] <= cfg.context_length:
            raise ValueError(f"encode_text expects tokens of shape (N, L) with L <= "
                             f"context_length={cfg.context_length}, got {tuple(tokens.shape)}")
        dtype = compute_dtype(cfg.dtype)
        width, length = cfg.text_width, tokens.shape[1]
        x = nn.Embed(cfg.vocab_size, width, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nn.initializers.normal(0.02), name="token_embedding")(tokens)
        pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                         (cfg.context_length, width))
        x = x + pos[:length].astype(dtype)
        x = Transformer(width, cfg.text_layers, cfg.text_heads, cfg.text_mlp_dim, cfg.act,
                        causal=True, dtype=dtype, eps=cfg.layer_norm_eps, remat=cfg.remat,
                        attention=cfg.attention, name="transformer")(x)
        x = LayerNorm(cfg.layer_norm_eps, name="ln_final")(x)
        x = x[jnp.arange(x.shape[0]), eot_positions(tokens, cfg.eos_token_id)]
        proj = self.param("text_projection", nn.initializers.normal(width ** -0.5),
                          (width, cfg.embed_dim))
        return jnp.dot(x, proj.astype(dtype)).astype(jnp.float32)
