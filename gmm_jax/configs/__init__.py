"""The shipped configs (``ml_collections``), importable from an installed package.

``configs/<name>.py`` in a checkout re-exports ``gmm_jax.configs.<name>.get_config``;
``default`` holds every knob with its default and is what configs are validated against.
"""
