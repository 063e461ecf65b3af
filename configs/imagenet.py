"""Checkout shortcut for the packaged config `gmm_jax/configs/imagenet.py` (see its docstring)."""
from gmm_jax.configs.imagenet import get_config  # noqa: F401
