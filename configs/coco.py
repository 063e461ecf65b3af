"""Checkout shortcut for the packaged config `gmm_jax/configs/coco.py` (see its docstring)."""
from gmm_jax.configs.coco import get_config  # noqa: F401
