"""Checkout shortcut for the packaged config `gmm_jax/configs/tiny.py` (see its docstring)."""
from gmm_jax.configs.tiny import get_config  # noqa: F401
