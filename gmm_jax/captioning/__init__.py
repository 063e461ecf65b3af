"""Image captioning on frozen CLIP image embeddings (ClipCap-style), and its metrics.

Public API: ``captioning_config``, ``captioning_metrics`` (the evaluation suite),
``captioning_from_embeddings``, ``train_captioner``, ``generate_captions``,
``caption_scores``, ``params_fingerprint``, ``clip_image_encoder``.
"""
from gmm_jax.captioning.cache import (
    cached_image_embeddings,
    clip_image_encoder,
    embed_images,
    params_fingerprint,
)
from gmm_jax.captioning.config import captioning_config, check_config
from gmm_jax.captioning.generate import generate_captions, generate_tokens
from gmm_jax.captioning.scores import caption_scores, samples_markdown, simple_tokenize
from gmm_jax.captioning.suite import captioning_from_embeddings, captioning_metrics
from gmm_jax.captioning.train import train_captioner

__all__ = ["caption_scores", "cached_image_embeddings", "captioning_config",
           "captioning_from_embeddings", "captioning_metrics", "check_config",
           "clip_image_encoder", "embed_images", "generate_captions", "generate_tokens",
           "params_fingerprint", "samples_markdown", "simple_tokenize", "train_captioner"]
