"""The CLIP model: image tower under ``visual``, text tower and ``logit_scale`` at the
top level, exactly OpenAI's state-dict layout."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .config import CLIPConfig
from .text import TextTransformer
from .vit import VisionTransformer


class CLIP(nn.Module):
    """``apply({"params": p}, images, tokens) -> (image_features, text_features,
    logit_scale)``: features (N, D) float32 projected, not normalised; ``logit_scale``
    the raw scalar parameter (log of the contrastive multiplier)."""
    config: CLIPConfig

    def setup(self):
        self.visual = VisionTransformer(self.config)
        self.text = TextTransformer(self.config)
        nn.share_scope(self, self.text)          # text params at the top level (OpenAI layout)
        self.logit_scale = self.param(
            "logit_scale", nn.initializers.constant(self.config.logit_scale_init), ())

    def encode_image(self, images):
        """(N, H, W, 3) float32 -> (N, D) float32."""
        return self.visual(images)

    def encode_text(self, tokens):
        """(N, L) int32 -> (N, D) float32."""
        return self.text(tokens)

    def __call__(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens), self.logit_scale


def init_params(model: CLIP, key: jax.Array):
    """Random parameters (OpenAI's initialisation) for ``model``, float32."""
    cfg = model.config
    images = jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, cfg.context_length), jnp.int32)
    return jax.jit(model.init)(key, images, tokens)["params"]
