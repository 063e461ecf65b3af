"""Image-caption sources: ``config.data`` -> a prepared TFDS builder with one raw format.

Every source's raw dataset yields ``{"image": tf.string (encoded bytes), "captions":
tf.string (K,), **extras}``; decoding is left to the pipeline so that only the rows a
host needs are decoded. Sources (``config.data.name``):

- ``coco``: TFDS ``coco_captions`` (Karpathy splits ``train``, ``restval``, ``val``,
  ``test``; train on ``train+restval``).
- ``flickr30k``: ``flickr30k_karpathy`` from ``config.data.manual_dir``.
- ``image_text_files``: ``config.data.files_path`` (JSONL/CSV) + ``config.data.images_dir``.
- ``class_captions``: a TFDS classification set, captions = class names in prompt
  templates (``data/class_captions.py``).
- ``demo``: the generated ``gmm_demo`` set (``config.data.demo_config``: "default" |
  "small" or a ``GmmDemoConfig``); extras are its attributes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from gmm_jax.data import demo, flickr30k, image_text_files

SOURCES = ("coco", "flickr30k", "image_text_files", "demo", "class_captions")
DEFAULT_SPLITS = {  # (train, eval)
    "coco": ("train+restval", "test"),
    "flickr30k": ("train", "test"),
    "image_text_files": ("train", "train"),
    "demo": ("target_train", "target_test"),
    "class_captions": ("train", "validation"),  # data/class_captions.py
}
DEMO_EXTRAS = ("label", "shape", "colour", "size", "position", "background", "style", "count")


def cfg_get(cfg: Any, key: str, default=None):
    """``cfg.key`` for a ConfigDict/dict/namespace, ``default`` if absent or None."""
    if isinstance(cfg, dict):
        value = cfg.get(key, default)
    else:
        try:
            value = getattr(cfg, key)
        except (AttributeError, KeyError):
            value = default
    return default if value is None else value


@dataclasses.dataclass
class Source:
    name: str
    builder: tfds.core.DatasetBuilder
    captions_fn: Callable[[dict], tf.Tensor]
    extras: tuple[str, ...] = ()

    def num_examples(self, split: str) -> int:
        """Examples in ``split`` (TFDS split syntax, e.g. "train+restval")."""
        try:
            n = int(self.builder.info.splits[split].num_examples)
            if n > 0:
                return n
        except (KeyError, ValueError, TypeError) as e:
            known = list(self.builder.info.splits.keys())
            if known:
                raise ValueError(f"{self.name}: unknown split {split!r}; known: {known}") from e
        # No split metadata (e.g. under tfds.testing.mock_data): count.
        ds = self.raw(split).map(lambda ex: 0)
        return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1).numpy())

    def raw(self, split: str, shuffle_files: bool = False,
            shuffle_seed: int | None = None) -> tf.data.Dataset:
        """Deterministic raw dataset (encoded image bytes, all captions, extras).

        With ``shuffle_files`` the file order is a function of ``shuffle_seed``.
        """
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_cycle_length=16,
                                      interleave_block_length=1)
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_files,
                                     read_config=read_config,
                                     decoders={"image": tfds.decode.SkipDecoding()})
        extras, captions_fn = self.extras, self.captions_fn

        def to_raw(ex):
            out = {"image": ex["image"], "captions": captions_fn(ex)}
            out.update({k: ex[k] for k in extras})
            return out

        options = tf.data.Options()
        options.deterministic = True
        return ds.map(to_raw, num_parallel_calls=tf.data.AUTOTUNE).with_options(options)


def _captions_sequence(ex):
    return ex["captions"]


def _captions_coco(ex):
    return ex["captions"]["text"]


def get_source(data_cfg, prepare: bool = True) -> Source:
    """Build (and, with ``prepare``, download/generate) the source named by ``data_cfg``."""
    name = cfg_get(data_cfg, "name")
    data_dir = cfg_get(data_cfg, "data_dir")
    download_config = None
    if name == "coco":
        b = tfds.builder("coco_captions", data_dir=data_dir)
        src = Source(name, b, _captions_coco)
    elif name == "flickr30k":
        manual_dir = cfg_get(data_cfg, "manual_dir")
        b = flickr30k.builder(data_dir, bool(cfg_get(data_cfg, "fail_on_bad_image", False)))
        if prepare and not b.is_prepared():  # clear error before TFDS's generic one
            flickr30k.check_manual_dir(manual_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        src = Source(name, b, _captions_sequence)
    elif name == "image_text_files":
        files_path = cfg_get(data_cfg, "files_path")
        images_dir = cfg_get(data_cfg, "images_dir")
        if not files_path or not images_dir:
            raise ValueError("image_text_files needs config.data.files_path and "
                             "config.data.images_dir")
        b = image_text_files.builder(files_path, images_dir, data_dir,
                                     bool(cfg_get(data_cfg, "fail_on_bad_image", False)))
        src = Source(name, b, _captions_sequence)
    elif name == "demo":
        b = demo.builder(data_dir, cfg_get(data_cfg, "demo_config", "default"))
        src = Source(name, b, _captions_sequence, DEMO_EXTRAS)
    elif name == "class_captions":  # a classification set as templated class names
        from gmm_jax.data import class_captions
        src, download_config = class_captions.make_source(data_cfg)
        b = src.builder
    else:
        raise ValueError(f"config.data.name={name!r}; expected one of {SOURCES}")
    if prepare:
        b.download_and_prepare(download_config=download_config)
    return src
