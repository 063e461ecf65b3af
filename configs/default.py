"""Checkout shortcut for the packaged config `gmm_jax/configs/default.py` (see its docstring)."""
from gmm_jax.configs.default import get_config  # noqa: F401
