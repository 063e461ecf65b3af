"""Named CLIP sizes: OpenAI's released ViTs plus small ones for tests and the demo."""
from __future__ import annotations

from .config import CLIPConfig

_B = dict(embed_dim=512, vision_width=768, vision_layers=12, vision_heads=12,
          vision_mlp_dim=3072, text_width=512, text_layers=12, text_heads=8,
          text_mlp_dim=2048)
_L = dict(embed_dim=768, vision_width=1024, vision_layers=24, vision_heads=16,
          vision_mlp_dim=4096, text_width=768, text_layers=12, text_heads=12,
          text_mlp_dim=3072)

PRESETS: dict[str, dict] = {
    # OpenAI's released models (quick_gelu, context 77, vocab 49408, EOT 49407).
    "ViT-B/32": dict(_B, image_size=224, patch_size=32),
    "ViT-B/16": dict(_B, image_size=224, patch_size=16),
    "ViT-L/14": dict(_L, image_size=224, patch_size=14),
    "ViT-L/14@336": dict(_L, image_size=336, patch_size=14),
    # Unit tests: milliseconds per forward pass on CPU.
    "tiny": dict(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                 vision_heads=4, vision_mlp_dim=128, vocab_size=1000, context_length=16,
                 text_width=64, text_layers=2, text_heads=4, text_mlp_dim=128,
                 eos_token_id=None),
    # The demo: 32x32 images, a small trained vocabulary (EOT is its largest id, so
    # argmax pooling works whatever vocab_size the tokenizer ends up with).
    "demo": dict(embed_dim=128, image_size=32, patch_size=4, vision_width=128,
                 vision_layers=4, vision_heads=4, vision_mlp_dim=512, vocab_size=2048,
                 context_length=32, text_width=128, text_layers=4, text_heads=4,
                 text_mlp_dim=512, eos_token_id=None),
}


def get_config(name: str, **overrides) -> CLIPConfig:
    """The preset ``name`` (see ``PRESETS``) with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {sorted(PRESETS)}")
    return CLIPConfig(**{**PRESETS[name], **overrides})
