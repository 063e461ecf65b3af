"""CLIP's image tower: a pre-norm Vision Transformer (OpenAI ``VisionTransformer``).

Parameter tree (OpenAI names): ``conv1/kernel (p, p, 3, W)``, ``class_embedding (W,)``,
``positional_embedding (g*g + 1, W)``, ``ln_pre``, ``transformer/resblocks_{i}``,
``ln_post``, ``proj (W, D)``.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .config import CLIPConfig
from .layers import LayerNorm, Transformer, compute_dtype


class VisionTransformer(nn.Module):
    config: CLIPConfig

    @nn.compact
    def __call__(self, images):
        """images (N, H, W, 3) float32, CLIP-normalised -> features (N, D) float32,
        projected, not normalised (the class token after ``ln_post``, times ``proj``)."""
        cfg = self.config
        if images.ndim != 4 or images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"encode_image expects images of shape (N, {cfg.image_size}, "
                             f"{cfg.image_size}, 3), got {tuple(images.shape)}")
        dtype = compute_dtype(cfg.dtype)
        width = cfg.vision_width
        scale = width ** -0.5
        x = nn.Conv(width, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size,
                    padding="VALID", use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                    name="conv1")(images)
        n = x.shape[0]
        x = x.reshape(n, -1, width)                      # row-major patches, as torch's flatten
        cls = self.param("class_embedding", nn.initializers.normal(scale), (width,))
        pos = self.param("positional_embedding", nn.initializers.normal(scale),
                         (cfg.grid_size ** 2 + 1, width))
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (n, 1, width)), x], axis=1)
        x = x + pos.astype(dtype)
        x = LayerNorm(cfg.layer_norm_eps, name="ln_pre")(x)
        x = Transformer(width, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp_dim,
                        cfg.act, causal=False, dtype=dtype, eps=cfg.layer_norm_eps,
                        remat=cfg.remat, attention=cfg.attention, name="transformer")(x)
        x = LayerNorm(cfg.layer_norm_eps, name="ln_post")(x[:, 0])
        proj = self.param("proj", nn.initializers.normal(scale), (width, cfg.embed_dim))
        return jnp.dot(x, proj.astype(dtype)).astype(jnp.float32)
