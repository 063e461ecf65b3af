"""Checkout shortcut for the packaged config `gmm_jax/configs/flickr30k.py` (see its docstring)."""
from gmm_jax.configs.flickr30k import get_config  # noqa: F401
