"""The captioning evaluation: cached embeddings -> trained captioner -> scored captions.

``captioning_metrics`` is the entry point an evaluation driver calls; it returns flat
``captioning/<metric>`` keys and a Markdown table of sample captions.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable, Sequence

import numpy as np

from gmm_jax.captioning.cache import cached_image_embeddings
from gmm_jax.captioning.config import check_config, java_metric_names
from gmm_jax.captioning.generate import generate_captions
from gmm_jax.captioning.scores import caption_scores, samples_markdown
from gmm_jax.captioning.train import train_captioner

log = logging.getLogger(__name__)
PREFIX = "captioning/"


def _cap(n: int, limit: int) -> int:
    return n if not limit else min(n, int(limit))


def _take_images(images, limit: int):
    """The first ``limit`` rows of a batch stream (or of a callable returning one)."""
    def stream():
        it = images() if callable(images) else images
        left = limit
        for batch in it:
            if left <= 0:
                return
            batch = np.asarray(batch)[:left]
            left -= len(batch)
            yield batch
    return stream


def captions_by_image(split) -> list[list[str]]:
    """A split's captions as one list per image, in image order (anything with
    ``num_images``, ``captions`` and ``text_to_image``, e.g. a ``RetrievalSplit``)."""
    out: list[list[str]] = [[] for _ in range(split.num_images)]
    for text, i in zip(split.captions, np.asarray(split.text_to_image)):
        out[int(i)].append(text)
    return out


def captioning_from_embeddings(train_emb: np.ndarray, train_captions: Sequence[Sequence[str]],
                               test_emb: np.ndarray, test_captions: Sequence[Sequence[str]],
                               tokenizer, cfg, java: str | None = "auto"):
    """Train on (train_emb, train_captions), caption test_emb, score against
    test_captions. Returns ``(metrics, samples_md, hypotheses)``."""
    check_config(cfg)
    if len(test_emb) != len(test_captions):
        raise ValueError(f"captioning: {len(test_emb)} test embeddings for "
                         f"{len(test_captions)} test caption lists")
    if np.ndim(test_emb) != 2 or np.shape(test_emb)[1] != np.shape(train_emb)[1]:
        raise ValueError(f"captioning: test embeddings {np.shape(test_emb)} do not match the "
                         f"training embeddings {np.shape(train_emb)} (N, D)")
    t0 = time.time()
    model, params, losses = train_captioner(train_emb, train_captions, tokenizer, cfg,
                                            log_every=max(int(cfg.steps) // 10, 1))
    t1 = time.time()
    hyps = generate_captions(model, params, test_emb, tokenizer, cfg)
    t2 = time.time()
    scores = caption_scores(test_captions, hyps, java_metric_names(cfg), java=java)
    metrics = {PREFIX + k: v for k, v in scores.items()}
    tail = losses[-max(len(losses) // 10, 1):]
    metrics.update({PREFIX + "train_loss": float(np.mean(tail)),
                    PREFIX + "num_train_images": int(len(train_emb)),
                    PREFIX + "num_test_images": int(len(test_emb))})
    log.info("captioning: trained %d steps in %.1fs, decoded %d images in %.1fs",
             int(cfg.steps), t1 - t0, len(test_emb), t2 - t1)
    return metrics, samples_markdown(test_captions, hyps, int(cfg.num_samples)), hyps


def captioning_metrics(encode_image_fn: Callable, train_images, train_captions,
                       test_images, test_captions, tokenizer, cfg, *,
                       fingerprint: str | None = None, train_split: str = "train",
                       test_split: str = "test", java: str | None = "auto"):
    """The ``captioning`` suite on one model.

    Args:
      encode_image_fn: ``images (b, H, W, 3) -> (b, D)`` image features (e.g.
        ``cache.clip_image_encoder(model, params)``); normalised here.
      train_images, test_images: iterables of preprocessed image batches in caption
        order, or zero-argument callables returning one (not called when cached).
      train_captions, test_captions: one list of reference captions per image.
      tokenizer: ``gmm_jax.tokenizer.Tokenizer``; cfg: a ``captioning_config()``.
      fingerprint: ``cache.params_fingerprint(params)``; with ``cfg.cache_dir`` it
        keys the embedding cache together with the split names.
    Returns:
      ``(metrics, samples_md)``: ``captioning/bleu1..bleu4``, ``captioning/rouge_l``,
      ``captioning/cider`` (+ ``meteor``/``spice`` with Java), ``train_loss``,
      ``num_train_images``, ``num_test_images``; and a Markdown table of samples.
    """
    check_config(cfg)
    n_train = _cap(len(train_captions), cfg.max_train_images)
    n_test = _cap(len(test_captions), cfg.max_test_images)
    embs = []
    for images, n, total, split in ((train_images, n_train, len(train_captions), train_split),
                                    (test_images, n_test, len(test_captions), test_split)):
        key = split if n == total else f"{split}[:{n}]"
        emb = cached_image_embeddings(encode_image_fn, _take_images(images, n),
                                      cache_dir=cfg.cache_dir, fingerprint=fingerprint,
                                      split=key)
        if len(emb) != n:
            raise ValueError(f"captioning: split {split!r} gave {len(emb)} images for "
                             f"{n} caption lists")
        embs.append(emb)
    metrics, md, _ = captioning_from_embeddings(
        embs[0], list(itertools.islice(train_captions, n_train)), embs[1],
        list(itertools.islice(test_captions, n_test)), tokenizer, cfg, java=java)
    return metrics, md
