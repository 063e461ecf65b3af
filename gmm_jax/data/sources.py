"""Image-caption sources: ``config.data`` -> a prepared TFDS builder with one raw format.

Every source's raw dataset yields ``{"image": tf.string (encoded bytes), "captions":
tf.string (K,), **extras}``; decoding is left to the pipeline so that only the rows a
host needs are decoded. Sources (``config.data.name``):

- ``coco``: TFDS ``coco_captions`` (Karpathy splits ``train``, ``restval``, ``val``,
  ``test``; train on ``train+restval``).
- ``flickr30k``: ``flickr30k_karpathy`` from ``config.data.manual_dir``.
- ``image_text_files``: ``config.data.files_path``, one JSONL/CSV file (split ``train``)
  or a directory of ``<split>.jsonl``/``<split>.csv`` files (default splits ``train`` /
  ``test``); images relative to ``config.data.images_dir``, else to the files' folder.
- ``class_captions``: a TFDS classification set, captions = class names in prompt
  templates (``data/class_captions.py``).
- ``demo``: the generated ``gmm_demo`` set (``config.data.demo_config``: "default" |
  "small" or a ``GmmDemoConfig``); extras are its attributes.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from gmm_jax import paths
from gmm_jax.config_access import config_get
from gmm_jax.data import demo, flickr30k, image_text_files

SOURCES = ("coco", "flickr30k", "image_text_files", "demo", "class_captions")
DEFAULT_SPLITS = {  # (train, eval)
    "coco": ("train+restval", "test"),
    "flickr30k": ("train", "test"),
    "image_text_files": ("train", "test"),   # a single file: ("train", "train")
    "demo": ("target_train", "target_test"),
    "class_captions": ("train", "validation"),  # data/class_captions.py
}
DEMO_EXTRAS = ("label", "shape", "colour", "size", "position", "background", "style", "count")


@dataclasses.dataclass
class Source:
    name: str
    builder: tfds.core.DatasetBuilder
    captions_fn: Callable[[dict], tf.Tensor]
    extras: tuple[str, ...] = ()
    # (train, eval) splits used when config.data.train_split / eval_split are unset.
    default_splits: tuple[str, str] | None = None

    def __post_init__(self):
        if self.default_splits is None:
            self.default_splits = DEFAULT_SPLITS.get(self.name, ("train", "test"))

    def split_names(self) -> list[str]:
        """The splits the builder declares (empty when it has no split metadata)."""
        return list(self.builder.info.splits.keys())

    def check_split(self, split: str, what: str = "split") -> str:
        """``split`` unchanged if each of its parts (``a+b``, ``a[:10%]``) is a known
        split; ValueError naming the known ones otherwise."""
        known = self.split_names()
        for part in split.split("+"):
            base = part.split("[")[0].strip()
            if known and base not in known:
                hint = ""
                if self.name == "image_text_files":
                    hint = (" (own data: one split per <split>.jsonl/.csv file in the "
                            "config.data.files_path directory; a single file is split 'train')")
                raise ValueError(f"{self.name}: unknown {what} {base!r}; known: {known}{hint}")
        return split

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
    name = config_get(data_cfg, "name")
    data_dir = config_get(data_cfg, "data_dir")
    download_config = None
    if name == "coco":
        b = tfds.builder("coco_captions", data_dir=data_dir)
        src = Source(name, b, _captions_coco)
    elif name == "flickr30k":
        manual_dir = config_get(data_cfg, "manual_dir")
        b = flickr30k.builder(data_dir, bool(config_get(data_cfg, "fail_on_bad_image", False)))
        if prepare and not b.is_prepared():  # clear error before TFDS's generic one
            flickr30k.check_manual_dir(manual_dir)
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        src = Source(name, b, _captions_sequence)
    elif name == "image_text_files":
        files_path = config_get(data_cfg, "files_path")
        if not files_path:
            raise ValueError("config.data.name='image_text_files' needs config.data.files_path "
                             "(a JSONL/CSV file, or a directory of <split>.jsonl/.csv files)")
        b = image_text_files.builder(files_path, config_get(data_cfg, "images_dir"), data_dir,
                                     bool(config_get(data_cfg, "fail_on_bad_image", False)))
        single = paths.isfile(files_path)  # one file: evaluate on it too, as before
        src = Source(name, b, _captions_sequence,
                     default_splits=("train", "train") if single else None)
    elif name == "demo":
        b = demo.builder(data_dir, config_get(data_cfg, "demo_config", "default"))
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
