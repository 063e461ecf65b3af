"""Class-name captions (FLYP style): a TFDS image-classification dataset as image-caption
pairs, for contrastive fine-tuning with the same loss as pre-training.

Example ``i`` of class ``c`` gets every prompt ``templates[t].format(class_names[c])`` as
its caption list; the training pipeline's ``caption_mode="random"`` then draws one of them
per example and epoch from ``(seed, epoch, i)``, so the template an image is paired with
changes from step to step and is reproducible from the seed (Goyal et al., "Finetune like
you pretrain", CVPR 2023, pair each image with templated class names; their ImageNet
recipe lists all 80 OpenAI templates per image and samples pairs).

Config (``config.data``, ``name = "class_captions"``):

- ``class_captions.dataset``: the TFDS name (``imagenet2012``, ``cifar10``, ``gmm_demo``,
  or any builder with ``image`` and ``label`` features); ``manual_dir`` and ``data_dir``
  as for the other sources; ``demo_config`` for ``gmm_demo``.
- ``class_captions.class_names`` / ``class_captions.templates``: overrides; empty = the
  zero-shot tables (OpenAI's ImageNet names and 80 templates for the ImageNet variants,
  TFDS label names with the 80 templates otherwise, the demo's shape names and templates
  for ``gmm_demo``).
"""
from __future__ import annotations

import string
from typing import Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gmm_jax.config_access import config_get
from gmm_jax.data import class_names as cn
from gmm_jax.data import demo
from gmm_jax.data.sources import Source

NAME = "class_captions"
DEFAULT_SPLITS = ("train", "validation")


def _builder(dataset: str, data_cfg):
    if dataset == "gmm_demo":
        return demo.builder(config_get(data_cfg, "data_dir"), config_get(data_cfg, "demo_config",
                                                                   "default"))
    try:
        return tfds.builder(dataset, data_dir=config_get(data_cfg, "data_dir"))
    except Exception as e:  # TFDS raises DatasetNotFoundError and friends
        raise ValueError(f"config.data.class_captions.dataset={dataset!r}: not a TFDS "
                         f"dataset ({type(e).__name__}: {e})") from e


def default_names_and_templates(dataset: str, builder) -> tuple[tuple[str, ...],
                                                                tuple[str, ...]]:
    """The zero-shot tables' class names and templates for ``dataset``."""
    from gmm_jax.data.zeroshot import IMAGENET_DATASETS
    if dataset == "gmm_demo":
        return tuple(demo.CLASS_NAMES), tuple(demo.TEMPLATES)
    if dataset in IMAGENET_DATASETS:
        return cn.imagenet_class_names(), cn.openai_imagenet_templates()
    label = builder.info.features["label"]
    return cn.tfds_label_names(label.names), cn.openai_imagenet_templates()


def caption_table(class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``table[c, t] = templates[t].format(class_names[c])``: object array (C, T).
    Raises ValueError naming a template without exactly one ``{}`` slot."""
    if not class_names:
        raise ValueError("class_captions: no class names")
    if not templates:
        raise ValueError("class_captions: no templates")
    for t in templates:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError:
            fields = None
        if fields != [""]:
            raise ValueError(f"config.data.class_captions.templates: {t!r} needs exactly one "
                             "'{}' slot for the class name")
    return np.asarray([[t.format(c) for t in templates] for c in class_names], dtype=object)


def make_source(data_cfg) -> tuple[Source, tfds.download.DownloadConfig | None]:
    """The source for ``config.data`` (not prepared) and the download config that
    ``download_and_prepare`` needs (``manual_dir`` for ImageNet)."""
    cc = config_get(data_cfg, NAME)
    dataset = config_get(cc, "dataset") if cc is not None else None
    if not dataset:
        raise ValueError("config.data.name='class_captions' needs "
                         "config.data.class_captions.dataset (a TFDS classification set)")
    builder = _builder(dataset, data_cfg)
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise ValueError(f"config.data.class_captions.dataset={dataset!r} has no {key!r} "
                             f"feature (features: {list(features.keys())})")
    names, templates = default_names_and_templates(dataset, builder)
    names = tuple(config_get(cc, "class_names", ()) or names)
    templates = tuple(config_get(cc, "templates", ()) or templates)
    num_classes = int(features["label"].num_classes)
    if len(names) != num_classes:
        raise ValueError(f"config.data.class_captions.class_names: {len(names)} names for the "
                         f"{num_classes} classes of {dataset!r}")
    table = tf.constant(caption_table(names, templates).astype(str))

    def captions(ex):
        return tf.gather(table, tf.cast(ex["label"], tf.int32))

    manual_dir = config_get(data_cfg, "manual_dir")
    dl = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    return Source(NAME, builder, captions), dl
