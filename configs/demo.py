"""Checkout shortcut for the packaged config `gmm_jax/configs/demo.py` (see its docstring)."""
from gmm_jax.configs.demo import get_config  # noqa: F401
