"""gmm_jax: Geodesic Multi-Modal Mixup and modality-gap tools for CLIP in JAX/Flax."""

__version__ = "0.1.0"
