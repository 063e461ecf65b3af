"""Zero-shot classification sets: TFDS ImageNet variants, CIFAR, and the demo set.

ImageNet variants in TFDS label with ImageNet-1k indices (their ClassLabel is the wnid
list TFDS ships, ``imagenet2012/labels.txt``). ImageNet-R and ImageNet-A cover 200 of
the 1000 classes: for them (``SUBSET_DATASETS``) the classes are those that occur in the
split (read once, labels only), ``class_indices`` holds their ImageNet-1k indices and
labels are re-indexed to 0..199, so a 200-way classifier is built from ``class_names``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gmm_jax.data import class_names as cn
from gmm_jax.data import demo, preprocess

IMAGENET_DATASETS = ("imagenet2012", "imagenet_v2", "imagenet_sketch", "imagenet_r",
                     "imagenet_a")
SUBSET_DATASETS = ("imagenet_r", "imagenet_a")
DATASETS = IMAGENET_DATASETS + ("cifar10", "cifar100", "gmm_demo")
DEFAULT_SPLIT = {"imagenet2012": "validation", "imagenet_v2": "test",
                 "imagenet_sketch": "test", "imagenet_r": "test", "imagenet_a": "test",
                 "cifar10": "test", "cifar100": "test", "gmm_demo": "target_test"}


class ClassificationSplit:
    """Attributes: ``class_names`` (K,), ``templates`` (format strings with ``{}``),
    ``class_indices`` int64 (K,) (indices in the dataset's own label space),
    ``num_examples``; ``iter_batches(batch_size)`` yields (float32 (b, S, S, 3), int32 (b,))
    in a fixed order, labels in 0..K-1."""

    def __init__(self, builder, split: str, image_size: int, class_names: Sequence[str],
                 templates: Sequence[str], class_indices: np.ndarray | None = None):
        self.builder, self.split, self.image_size = builder, split, int(image_size)
        self.templates = tuple(templates)
        all_names = tuple(class_names)
        if class_indices is None:
            class_indices = np.arange(len(all_names))
        self.class_indices = np.asarray(class_indices, np.int64)
        self.class_names = tuple(all_names[i] for i in self.class_indices)
        self.num_examples = int(builder.info.splits[split].num_examples) if (
            split in builder.info.splits) else None
        # original label -> position in the subset (-1: not a class of this evaluation)
        remap = np.full(len(all_names), -1, np.int32)
        remap[self.class_indices] = np.arange(len(self.class_indices), dtype=np.int32)
        self._remap = remap

    def _dataset(self) -> tf.data.Dataset:
        return self.builder.as_dataset(split=self.split, shuffle_files=False,
                                       decoders={"image": tfds.decode.SkipDecoding()})

    def iter_batches(self, batch_size: int):
        size, remap = self.image_size, tf.constant(self._remap)

        def prep(ex):
            img = preprocess.clip_transform(preprocess.decode_image(ex["image"]), size)
            return img, tf.gather(remap, tf.cast(ex["label"], tf.int32))

        options = tf.data.Options()
        options.deterministic = True
        ds = (self._dataset().map(prep, num_parallel_calls=tf.data.AUTOTUNE)
              .filter(lambda img, y: y >= 0).batch(batch_size)
              .prefetch(tf.data.AUTOTUNE).with_options(options))
        yield from ds.as_numpy_iterator()


def labels_present(builder, split: str) -> np.ndarray:
    """Sorted distinct labels of ``split`` (reads labels only, no image decoding)."""
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    labels = ds.map(lambda ex: ex["label"]).batch(4096)
    return np.unique(np.concatenate([b for b in labels.as_numpy_iterator()] or [[]])
                     ).astype(np.int64)


def load_classification_split(name: str, split: str | None, image_size: int,
                              data_dir: str | None = None, *, manual_dir: str | None = None,
                              demo_config="default",
                              class_subset: Sequence[int] | None = None,
                              templates: Sequence[str] | None = None) -> ClassificationSplit:
    """Zero-shot set ``name`` (one of ``DATASETS``), ``split`` (None: ``DEFAULT_SPLIT``).

    Class names: OpenAI's cleaned ImageNet names (from open_clip's metadata) for the
    ImageNet variants, TFDS label names for CIFAR, shape names for ``gmm_demo``.
    Templates: the CLIP paper's 80 for ImageNet variants and CIFAR, ``demo.TEMPLATES``
    for the demo. ``class_subset`` overrides the classes (indices in the label space).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown zero-shot dataset {name!r}; expected one of {DATASETS}")
    split = split or DEFAULT_SPLIT[name]
    if name == "gmm_demo":
        builder = demo.builder(data_dir, demo_config)
    else:
        builder = tfds.builder(name, data_dir=data_dir)
    dl_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=dl_config)
    if name in IMAGENET_DATASETS:
        names = cn.imagenet_class_names()
        tmpl = cn.openai_imagenet_templates()
        n_tfds = builder.info.features["label"].num_classes
        if n_tfds != len(names):
            raise ValueError(f"{name}: TFDS labels have {n_tfds} classes, expected 1000")
        if class_subset is None and name in SUBSET_DATASETS:
            class_subset = labels_present(builder, split)
    elif name in ("cifar10", "cifar100"):
        names = cn.tfds_label_names(builder.info.features["label"].names)
        tmpl = cn.openai_imagenet_templates()
    else:
        names, tmpl = demo.CLASS_NAMES, demo.TEMPLATES
    return ClassificationSplit(builder, split, image_size, names, templates or tmpl,
                               class_subset)
