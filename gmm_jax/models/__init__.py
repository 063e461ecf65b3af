"""Flax Linen CLIP (OpenAI parameter layout) and its configurations."""
from . import presets
from .clip import CLIP, init_params
from .config import CLIPConfig
from .presets import get_config

__all__ = ["CLIP", "CLIPConfig", "get_config", "init_params", "presets"]
