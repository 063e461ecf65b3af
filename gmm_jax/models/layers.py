"""Pre-norm transformer blocks shared by both CLIP towers (OpenAI layout).

Parameter names follow OpenAI's state dict: ``resblocks_{i}/{ln_1, attn/{in_proj,
out_proj}, ln_2, mlp/{c_fc, c_proj}}``. Mixed precision: parameters stay float32,
matmuls run in ``dtype``; layer norms and the attention softmax always run in
float32 (bf16 statistics lose too many bits).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def quick_gelu(x):
    """OpenAI's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * jax.nn.sigmoid(1.702 * x)


def activation(name: str):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":  # the exact (erf) GELU, as torch's nn.GELU() and HF's "gelu"
        return lambda x: nn.gelu(x, approximate=False)
    raise ValueError(f"unknown activation {name!r}")


class LayerNorm(nn.Module):
    """LayerNorm computed in float32 whatever the input dtype; returns the input dtype."""
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x):
        w = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (w,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (w,), jnp.float32)
        y = x.astype(jnp.float32)
        mean = y.mean(-1, keepdims=True)
        var = jnp.square(y - mean).mean(-1, keepdims=True)
        y = (y - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


class MultiHeadAttention(nn.Module):
    """Self-attention with a fused q|k|v projection (OpenAI's ``in_proj``).

    x: (N, L, W) -> (N, L, W). ``causal`` masks future positions (text tower).
    ``attention``: "einsum" writes the product out (runs anywhere); "xla" / "cudnn" call
    ``jax.nn.dot_product_attention`` with that implementation ("cudnn": the fused kernel,
    NVIDIA GPUs, bf16). All compute the same function.
    """
    width: int
    heads: int
    causal: bool
    dtype: Any
    out_std: float
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x):
        n, length, _ = x.shape
        hd = self.width // self.heads
        qkv = nn.Dense(3 * self.width, dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=_normal(self.width ** -0.5), name="in_proj")(x)
        q, k, v = jnp.split(qkv.reshape(n, length, 3, self.heads, hd), 3, axis=2)
        q, k, v = (a[:, :, 0] for a in (q, k, v))            # (N, L, H, hd)
        if self.attention != "einsum":
            out = jax.nn.dot_product_attention(q, k, v, is_causal=self.causal,
                                               implementation=self.attention)
            return self._out_proj(out.reshape(n, length, self.width))
        logits = jnp.einsum("nqhd,nkhd->nhqk", q * jnp.asarray(hd ** -0.5, q.dtype), k)
        logits = logits.astype(jnp.float32)
        if self.causal:
            mask = jnp.tril(jnp.ones((length, length), bool))
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", probs, v).reshape(n, length, self.width)
        return self._out_proj(out)

    def _out_proj(self, out):
        return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_normal(self.out_std), name="out_proj")(out)


class MLP(nn.Module):
    width: int
    mlp_dim: int
    act: str
    dtype: Any
    out_std: float

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_normal((2 * self.width) ** -0.5), name="c_fc")(x)
        h = activation(self.act)(h)
        return nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_normal(self.out_std), name="c_proj")(h)


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``; (N, L, W) -> (N, L, W)."""
    width: int
    heads: int
    mlp_dim: int
    act: str
    causal: bool
    dtype: Any
    eps: float
    out_std: float
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x):
        attn = MultiHeadAttention(self.width, self.heads, self.causal, self.dtype,
                                  self.out_std, self.attention, name="attn")
        x = x + attn(LayerNorm(self.eps, name="ln_1")(x))
        x = x + MLP(self.width, self.mlp_dim, self.act, self.dtype, self.out_std,
                    name="mlp")(LayerNorm(self.eps, name="ln_2")(x))
        return x


class Transformer(nn.Module):
    """A stack of ``layers`` residual blocks named ``resblocks_{i}``; ``remat``
    recomputes each block's activations in the backward pass to save memory."""
    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str
    causal: bool
    dtype: Any
    eps: float
    remat: bool = False
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x):
        block = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
        # OpenAI's init: residual-branch outputs scaled down with depth.
        out_std = self.width ** -0.5 * (2 * self.layers) ** -0.5
        for i in range(self.layers):
            x = block(self.width, self.heads, self.mlp_dim, self.act, self.causal, self.dtype,
                      self.eps, out_std, self.attention, name=f"resblocks_{i}")(x)
        return x


def compute_dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]
