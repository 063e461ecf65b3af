"""CLIP architecture description (``CLIPConfig``) and the named presets.

The fields are the ones every converter can recover from a checkpoint: sizes come
from tensor shapes, the head counts and activation from the source's config (or the
OpenAI convention ``heads = width // 64``, ``quick_gelu``).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

_ACTS = ("quick_gelu", "gelu")
_DTYPES = ("float32", "bfloat16")
# Self-attention kernels (models/layers.py): "einsum" (portable, the default), "xla" / "cudnn"
# (jax.nn.dot_product_attention; "cudnn" is the fused flash kernel on NVIDIA GPUs).
ATTENTIONS = ("einsum", "xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Sizes and options of a ViT-image / causal-text CLIP.

    ``eos_token_id``: text features are read at the first position holding this id;
    ``None`` reads them at the argmax of the ids (OpenAI's rule: EOT is the largest id).
    ``logit_scale_init`` is the initial *log* of the contrastive scale.
    """
    embed_dim: int = 512
    act: str = "quick_gelu"
    dtype: str = "float32"
    remat: bool = False
    attention: str = "einsum"
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vision_mlp_dim: int = 3072
    vocab_size: int = 49408
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    text_mlp_dim: int = 2048
    eos_token_id: Optional[int] = 49407
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = math.log(1 / 0.07)

    def __post_init__(self):
        if self.act not in _ACTS:
            raise ValueError(f"CLIPConfig.act={self.act!r}: expected one of {_ACTS}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"CLIPConfig.dtype={self.dtype!r}: expected one of {_DTYPES}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"CLIPConfig.attention={self.attention!r}: expected one of "
                             f"{ATTENTIONS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"CLIPConfig.image_size={self.image_size} is not a multiple of "
                             f"patch_size={self.patch_size}")
        for width, heads, name in ((self.vision_width, self.vision_heads, "vision"),
                                   (self.text_width, self.text_heads, "text")):
            if heads <= 0 or width % heads:
                raise ValueError(f"CLIPConfig.{name}_width={width} is not divisible by "
                                 f"{name}_heads={heads}")
        for f in ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
                  "vision_mlp_dim", "vocab_size", "context_length", "text_width",
                  "text_layers", "text_mlp_dim"):
            if int(getattr(self, f)) <= 0:
                raise ValueError(f"CLIPConfig.{f}={getattr(self, f)} must be positive")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def replace(self, **overrides) -> "CLIPConfig":
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"CLIPConfig.from_dict: unknown keys {unknown}")
        return cls(**d)
