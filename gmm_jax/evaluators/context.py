"""What a suite sees: ``EvalContext`` (encoder, tokenizer, data access, scale, output).

Data access never downloads: ``missing_*`` checks look for prepared data on disk only
(TFDS ``builder.is_prepared()``, ``try_gcs=False``); loaders are called only for data
that is present (or generated locally, like the demo set and own image-text files).
Embeddings of the retrieval split are computed once and shared by the retrieval,
geometry, calibration and demo-arithmetic suites.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator

import numpy as np

from gmm_jax import metrics, paths
from gmm_jax.config_access import config_get
from gmm_jax.evaluators.base import DataMissing, EvalError

log = logging.getLogger("gmm_jax.eval_lib")


@dataclasses.dataclass
class RetrievalData:
    """One retrieval split embedded: images (N, D), captions (M, D), ``t2i`` (M,),
    ``groups`` (M,) (identical caption texts share an id), the split object ``rs``
    (captions, attributes) and how many captions repeat an earlier caption's text."""
    rs: Any
    image: np.ndarray
    text: np.ndarray
    t2i: np.ndarray
    groups: np.ndarray
    duplicates: int


def take(batches, limit: int) -> Iterator[np.ndarray]:
    """The first ``limit`` rows of a batch stream (all when ``limit <= 0``)."""
    seen = 0
    for b in batches:
        if limit > 0 and seen + len(b) >= limit:
            yield b[:limit - seen]
            return
        seen += len(b)
        yield b


def load(what: str, fn, *args, **kwargs):
    """``fn(*args)``, with any loader error turned into an EvalError naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except EvalError:
        raise
    except Exception as e:  # TFDS raises many types for a missing dataset
        raise EvalError(f"could not load {what}: {type(e).__name__}: {e}") from e


def tfds_missing(name: str, data_dir: str | None, manual_dir: str | None = None,
                 what: str = "") -> DataMissing | None:
    """None when TFDS dataset ``name`` is prepared in ``data_dir`` (or can be prepared
    from ``manual_dir`` without network); else a DataMissing saying how to provide it."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir or None, try_gcs=False)
    except Exception as e:  # unknown name, broken install: a config error, not missing data
        raise EvalError(f"TFDS dataset {name!r}{what}: {type(e).__name__}: {e}") from e
    if builder.is_prepared():
        return None
    manual_only = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual_only and manual_dir and paths.isdir(manual_dir):
        return None  # prepared from the user's archives, no network
    where = data_dir or "~/tensorflow_datasets"
    how = ("put its archives in a manual dir and set config.eval.zeroshot.manual_dir"
           if manual_only else f"prepare it once with `tfds build {name} --data_dir={where}`")
    return DataMissing(f"TFDS dataset {name!r}{what} (data_dir={where})",
                       f"{how}, or leave it out of the suite's datasets")


@dataclasses.dataclass
class EvalContext:
    """Everything a suite's ``run`` needs.

    encoder: ``images(batches, total, desc) -> (N, D)``, ``texts(tokens, desc) -> (M, D)``
      (L2-normalised float32, identical on every process) and ``batch_size``.
    tokenizer: ``tok(texts, context_length=L) -> int32 (N, L)``.
    config / ecfg: the whole config and ``config.eval``.
    image_size / context_length: the model's input sizes.
    scale: contrastive multiplier (1/tau) for calibration and zero-shot.
    out_dir: where figures go; ``is_writer`` is False on processes other than 0.
    """
    encoder: Any
    tokenizer: Any
    config: Any
    ecfg: Any
    image_size: int
    context_length: int
    scale: float
    out_dir: str
    is_writer: bool = True
    _cache: dict = dataclasses.field(default_factory=dict)

    # -- config.data ---------------------------------------------------------
    def data_field(self, key: str, default=None):
        return config_get(config_get(self.config, "data"), key, default)

    @property
    def is_demo(self) -> bool:
        return self.data_field("name") == "demo"

    def path(self, name: str) -> str | None:
        """``out_dir/name`` on the writing process, None elsewhere (figures: process 0)."""
        return paths.join(self.out_dir, name) if self.is_writer else None

    # -- the retrieval split of config.data ------------------------------------
    def missing_retrieval(self) -> list[DataMissing]:
        """The only sources that could need the network are TFDS's (coco)."""
        name = self.data_field("name")
        if name == "coco":
            m = tfds_missing("coco_captions", self.data_field("data_dir"),
                             what=" (config.data.name=coco)")
            return [m] if m else []
        if name == "flickr30k":
            from gmm_jax.data import flickr30k
            manual = self.data_field("manual_dir")
            if not flickr30k.builder(self.data_field("data_dir")).is_prepared() and not (
                    manual and paths.isdir(manual)):
                return [DataMissing("flickr30k_karpathy (config.data.name=flickr30k)",
                                    "set config.data.manual_dir to the Flickr30k archives")]
        return []

    def retrieval(self, split: str = "", prefix: str = "retrieval") -> RetrievalData:
        """The embedded retrieval split ``split`` ("" = config.data.eval_split), cached."""
        key = ("retrieval", split)
        if key not in self._cache:
            self._cache[key] = self._embed_retrieval(split, prefix)
        return self._cache[key]

    def _embed_retrieval(self, split: str, prefix: str) -> RetrievalData:
        from gmm_jax.data import load_retrieval_split
        enc = self.encoder
        rs = load(f"retrieval split {split or '(config.data.eval_split)'!r} of "
                  f"config.data.name={self.data_field('name')!r}", load_retrieval_split,
                  self.config.data, split or None, self.tokenizer, self.image_size,
                  context_length=self.context_length)
        limit = self.ecfg.max_examples
        n = rs.num_images if limit <= 0 else min(rs.num_images, limit)
        img = enc.images(take(rs.iter_images(enc.batch_size), n), n, f"{prefix} images")
        keep = rs.text_to_image < n
        txt = enc.texts(rs.tokens[keep], f"{prefix} captions")
        captions = [c for c, k in zip(rs.captions, keep) if k]
        groups = metrics.caption_groups(captions)
        dups = len(groups) - len(np.unique(groups))
        log.info("eval %s: %d images, %d captions, %d duplicate captions (identical text "
                 "counted as interchangeable)", prefix, n, len(groups), dups)
        return RetrievalData(rs, img, txt, rs.text_to_image[keep].astype(np.int64), groups, dups)

    # -- classification sets -----------------------------------------------------
    def classification_missing(self, name: str, data_dir: str | None,
                               manual_dir: str | None) -> DataMissing | None:
        from gmm_jax.data.zeroshot import DATASETS
        if name not in DATASETS:
            raise EvalError(f"unknown classification dataset {name!r}; expected one of "
                            f"{DATASETS}")
        if name == "gmm_demo":
            return None  # generated locally
        return tfds_missing(name, data_dir, manual_dir)

    def classification(self, name: str, split: str | None, data_dir: str | None,
                       manual_dir: str | None):
        from gmm_jax.data import load_classification_split
        missing = self.classification_missing(name, data_dir, manual_dir)
        if missing is not None:  # never let the loader reach for a download
            raise missing
        return load(f"classification dataset {name!r} split {split or '(default)'!r} "
                    f"(data_dir={data_dir!r})", load_classification_split, name, split or None,
                    self.image_size, data_dir, manual_dir=manual_dir or None,
                    demo_config=self.data_field("demo_config", "default"))

    def embed_labelled(self, ds, limit: int, desc: str):
        """(embeddings (N, D), labels int64 (N,)) of a ClassificationSplit, first ``limit``."""
        enc, labels = self.encoder, []

        def images():
            seen = 0
            for x, y in ds.iter_batches(enc.batch_size):
                if limit > 0 and seen + len(x) > limit:
                    x, y = x[:limit - seen], y[:limit - seen]
                seen += len(x)
                labels.append(np.asarray(y))
                yield x
                if limit > 0 and seen >= limit:
                    return

        total = ds.num_examples if limit <= 0 else min(limit, ds.num_examples or limit)
        emb = enc.images(images(), total, desc)
        return emb, np.concatenate(labels).astype(np.int64)

    def text_embeddings(self, texts, desc: str = "texts") -> np.ndarray:
        tokens = np.asarray(self.tokenizer(list(texts), context_length=self.context_length),
                            np.int32)
        return self.encoder.texts(tokens, desc)
