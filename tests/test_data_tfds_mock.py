"""COCO captions and the zero-shot sets through tfds.testing.mock_data (nothing downloads)."""
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from gmm_jax.data import (
    class_names,
    load_classification_split,
    load_retrieval_split,
    make_train_iterator,
    preprocess,
)
from gmm_jax.data.sources import get_source

# Karpathy split sizes of the fake COCO; captions per image vary (COCO has 5-7).
COCO_SPLITS = {"train": 10, "restval": 6, "val": 3, "test": 5}


def _tok(texts, context_length=77):
    out = np.zeros((len(texts), context_length), np.int32)
    for i, t in enumerate(texts):
        ids = [1] + [ord(c) for c in t][:context_length - 2] + [2]
        out[i, :len(ids)] = ids
    return out


def _coco_example(split, i):
    rng = np.random.default_rng([sum(map(ord, split)), i])
    img = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    n = 5 + i % 3
    return buf.getvalue(), [f"{split} image {i} caption {k}" for k in range(n)]


def _fake_coco_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """``_as_dataset`` of coco_captions with its real caption structure (the automatic
    mock cannot fill coco's nested 'objects' sequence)."""
    assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
    names = str(split).split("+")

    def gen():
        for name in names:
            for i in range(COCO_SPLITS[name]):
                data, caps = _coco_example(name, i)
                yield {"image": data, "image/filename": f"{name}_{i}.jpg",
                       "captions": {"text": caps, "id": np.arange(len(caps))}}

    return tf.data.Dataset.from_generator(gen, output_signature={
        "image": tf.TensorSpec([], tf.string), "image/filename": tf.TensorSpec([], tf.string),
        "captions": {"text": tf.TensorSpec([None], tf.string),
                     "id": tf.TensorSpec([None], tf.int64)}})


@pytest.fixture
def mock_coco():
    with tfds.testing.mock_data(as_dataset_fn=_fake_coco_as_dataset):
        yield


def test_coco_retrieval_split(mock_coco):
    split = load_retrieval_split({"name": "coco"}, "test", _tok, 32)
    want_caps, t2i = [], []
    for i in range(COCO_SPLITS["test"]):
        caps = _coco_example("test", i)[1]
        want_caps += caps
        t2i += [i] * len(caps)
    assert split.num_images == COCO_SPLITS["test"]
    assert split.captions == want_caps
    np.testing.assert_array_equal(split.text_to_image, t2i)
    np.testing.assert_array_equal(split.tokens, _tok(want_caps))
    images = np.concatenate(list(split.iter_images(2)))
    assert images.shape == (COCO_SPLITS["test"], 32, 32, 3)
    for i in range(COCO_SPLITS["test"]):  # in order, CLIP-preprocessed
        data = _coco_example("test", i)[0]
        ref = preprocess.clip_transform(preprocess.decode_image(tf.constant(data)), 32)
        np.testing.assert_array_equal(images[i], ref.numpy())


def test_coco_train_uses_train_plus_restval(mock_coco):
    it = make_train_iterator({"name": "coco", "shuffle_buffer": 100}, _tok, 32, 4, seed=0)
    n = COCO_SPLITS["train"] + COCO_SPLITS["restval"]
    assert it.num_examples == n and it.steps_per_epoch == n // 4
    firsts = {_coco_example(s, i)[1][0] for s in ("train", "restval")
              for i in range(COCO_SPLITS[s])}
    got = set()
    for _ in range(it.steps_per_epoch):
        b = next(it)
        assert b["image"].shape == (4, 32, 32, 3)
        got |= {"".join(chr(c) for c in row[1:list(row).index(2)]) for row in b["tokens"]}
    assert got <= firsts and len(got) == n // 4 * 4
    assert any(c.startswith("restval") for c in got) and any(c.startswith("train") for c in got)


def _open_clip_reference():
    """Execute open_clip's metadata file in isolation (it has no imports)."""
    path = class_names._metadata_path()
    ns = {}
    exec(compile(open(path).read(), path, "exec"), ns)
    return ns


def test_imagenet_names_and_templates_from_open_clip():
    ref = _open_clip_reference()
    assert class_names.imagenet_class_names() == tuple(ref["IMAGENET_CLASSNAMES"])
    tmpl = class_names.openai_imagenet_templates()
    assert len(tmpl) == 80
    assert [t.format("dog") for t in tmpl] == [f("dog") for f in ref["OPENAI_IMAGENET_TEMPLATES"]]


@pytest.mark.parametrize("name", ["imagenet2012", "imagenet_v2", "imagenet_sketch"])
def test_imagenet_variants(name):
    with tfds.testing.mock_data(num_examples=10):
        split = load_classification_split(name, None, 32)
        builder = tfds.builder(name)
        want = [int(ex["label"]) for ex in tfds.as_numpy(
            builder.as_dataset(split=split.split, shuffle_files=False))]
        got_imgs, got = zip(*split.iter_batches(4))
    assert len(split.class_names) == 1000 and len(split.templates) == 80
    assert split.class_names == class_names.imagenet_class_names()
    labels = np.concatenate(got)
    np.testing.assert_array_equal(labels, want)
    assert np.concatenate(got_imgs).shape == (10, 32, 32, 3)


@pytest.mark.parametrize("name", ["imagenet_r", "imagenet_a"])
def test_imagenet_subsets_reindex_labels(name):
    with tfds.testing.mock_data(num_examples=12):
        split = load_classification_split(name, None, 32)
        builder = tfds.builder(name)
        orig = [int(ex["label"]) for ex in tfds.as_numpy(
            builder.as_dataset(split="test", shuffle_files=False))]
        labels = np.concatenate([y for _, y in split.iter_batches(5)])
    names1k = class_names.imagenet_class_names()
    np.testing.assert_array_equal(split.class_indices, sorted(set(orig)))
    assert len(split.class_names) == len(set(orig))
    # a label in the subset names the same class as the original ImageNet-1k label
    assert [split.class_names[y] for y in labels] == [names1k[o] for o in orig]


@pytest.mark.parametrize("name,k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar(name, k):
    with tfds.testing.mock_data(num_examples=6):
        split = load_classification_split(name, "test", 32)
        tfds_names = tfds.builder(name).info.features["label"].names
        batches = list(split.iter_batches(4))
    assert split.class_names == tuple(n.replace("_", " ") for n in tfds_names)
    assert len(split.class_names) == k
    assert np.concatenate([x for x, _ in batches]).shape == (6, 32, 32, 3)
    assert all(0 <= y < k for _, b in batches for y in b)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown zero-shot dataset 'mnist'"):
        load_classification_split("mnist", None, 32)


def test_coco_source_reads_captions_text(mock_coco):
    src = get_source({"name": "coco"})
    ex = next(iter(src.raw("val").as_numpy_iterator()))
    assert [c.decode() for c in ex["captions"]] == _coco_example("val", 0)[1]
