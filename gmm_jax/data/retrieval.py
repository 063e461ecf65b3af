"""Evaluation split for image-text retrieval: every image once, all its captions."""
from __future__ import annotations

import logging

import numpy as np
import tensorflow as tf

from gmm_jax.config_access import config_get
from gmm_jax.data import preprocess
from gmm_jax.data.pipeline import tokenize_batch
from gmm_jax.data.sources import Source, get_source


class RetrievalSplit:
    """Images in a fixed order and all their captions.

    Attributes:
      num_images: N.
      captions: list of M caption strings, grouped by image in image order.
      text_to_image: int32 (M,), the image index of each caption.
      tokens: int32 (M, L).
      attributes: dict name -> (N,) int64 of the source's extras (the demo attributes,
        e.g. for ``demo_arithmetic_triples``); empty for other sources.
    """

    def __init__(self, source: Source, split: str, tokenizer, image_size: int,
                 context_length: int = 77):
        self.source, self.split, self.image_size = source, split, int(image_size)
        caps, t2i, extras = [], [], {k: [] for k in source.extras}
        meta = source.raw(split).map(lambda ex: {k: v for k, v in ex.items() if k != "image"})
        for i, ex in enumerate(meta.as_numpy_iterator()):
            texts = [c.decode("utf-8") for c in ex["captions"]]
            if not texts:
                raise ValueError(f"{source.name}:{split} image {i} has no captions")
            caps.extend(texts)
            t2i.extend([i] * len(texts))
            for k in extras:
                extras[k].append(ex[k])
        if not caps:
            raise ValueError(f"{source.name}:{split} is empty")
        self.num_images = int(t2i[-1]) + 1
        self.captions = caps
        self.text_to_image = np.asarray(t2i, np.int32)
        self.attributes = {k: np.asarray(v, np.int64) for k, v in extras.items()}
        self.tokens = np.concatenate([
            tokenize_batch(tokenizer, np.asarray(caps[i:i + 1024], dtype=object),
                           context_length) for i in range(0, len(caps), 1024)])

    def iter_images(self, batch_size: int):
        """Yields float32 (b, S, S, 3) CLIP-preprocessed images in order (last b <= batch)."""
        size = self.image_size
        ds = self.source.raw(self.split).map(
            lambda ex: preprocess.clip_transform(preprocess.decode_image(ex["image"]), size),
            num_parallel_calls=tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
        yield from ds.as_numpy_iterator()


def load_retrieval_split(data_cfg, split: str | None, tokenizer, image_size: int, *,
                         context_length: int | None = None,
                         source: Source | None = None) -> RetrievalSplit:
    """Retrieval split ``split`` (default ``config.data.eval_split``) of ``config.data``."""
    source = source or get_source(data_cfg)
    explicit = split or config_get(data_cfg, "eval_split")
    split = source.check_split(explicit or source.default_splits[1],
                               "split" if split else "config.data.eval_split")
    if not explicit and split == source.default_splits[0]:
        logging.warning("evaluating on the training split %r of %s: give config.data."
                        "files_path a directory with train.jsonl and test.jsonl (or set "
                        "config.data.eval_split) for held-out results", split, source.name)
    L = int(context_length or config_get(data_cfg, "context_length", 77))
    return RetrievalSplit(source, split, tokenizer, image_size, L)
