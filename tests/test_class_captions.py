"""Class-name captions (data/class_captions.py): every caption is a template filled with
the image's own class name (checked against the label, and on the demo data against the
scene's shape), a template is drawn per example and epoch reproducibly, and train.py
trains on it."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gmm_jax.data import class_captions, class_names, demo, make_train_iterator, preprocess
from gmm_jax.data.sources import get_source

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_SPLITS = {"source_train": 8, "source_test": 8, "target_train": 24, "target_test": 8,
               "shift_background": 8, "shift_combo": 8}


def _char_tok(texts, context_length=77):
    """A reversible stand-in tokenizer: one id per character (0 = padding)."""
    out = np.zeros((len(texts), context_length), np.int32)
    for i, t in enumerate(texts):
        ids = [ord(c) for c in t][:context_length]
        out[i, :len(ids)] = ids
    return out


def _untok(tokens):
    return ["".join(chr(i) for i in row if i) for row in np.asarray(tokens)]


def _data_cfg(dataset, data_dir, **cc):
    c = ml_collections.ConfigDict()
    c.name = "class_captions"
    c.data_dir = str(data_dir)
    c.train_split = "train" if dataset != "gmm_demo" else "target_train"
    c.caption_mode = "random"
    c.shuffle_buffer = 64
    c.class_captions = ml_collections.ConfigDict({"dataset": dataset, "class_names": (),
                                                  "templates": ()})
    c.class_captions.update(cc)
    if dataset == "gmm_demo":
        c.demo_config = demo.GmmDemoConfig(name="classcaps", split_sizes=dict(DEMO_SPLITS),
                                           num_workers=1)
    return c


def test_caption_table_and_bad_templates():
    names, templates = ("cat", "hot dog"), ("a photo of a {}.", "{} again")
    table = class_captions.caption_table(names, templates)
    assert table.shape == (2, 2)
    for c, n in enumerate(names):
        for t, tmpl in enumerate(templates):
            assert table[c, t] == tmpl.replace("{}", n)
    for bad in ("no slot", "{} and {}", "{0} named", "a {"):
        with pytest.raises(ValueError, match="needs exactly one '{}' slot"):
            class_captions.caption_table(names, (bad,))


def _encoded(builder, split):
    return builder.as_dataset(split=split, shuffle_files=False,
                              decoders={"image": tfds.decode.SkipDecoding()})


def _image_key(img):
    return np.round(np.asarray(img, np.float32), 4).tobytes()


def test_cifar10_mock_captions_follow_labels_and_redraw_each_epoch(tmp_path):
    with tfds.testing.mock_data(num_examples=24):
        cfg = _data_cfg("cifar10", tmp_path)
        source = get_source(cfg)
        names = class_names.tfds_label_names(source.builder.info.features["label"].names)
        table = class_captions.caption_table(names, class_names.openai_imagenet_templates())
        labels = {}  # preprocessed image (as the pipeline makes it) -> label
        for ex in _encoded(source.builder, "train"):
            img = preprocess.clip_transform(preprocess.decode_image(ex["image"]), 16)
            labels[_image_key(img)] = int(ex["label"])
        for ex in source.raw("train").as_numpy_iterator():
            assert len(ex["captions"]) == 80
        it = make_train_iterator(cfg, _char_tok, 16, 8, seed=3, context_length=77)
        again = make_train_iterator(cfg, _char_tok, 16, 8, seed=3, context_length=77)
        per_epoch = []
        for _ in range(2):
            seen = {}
            for _ in range(it.steps_per_epoch):
                b, b2 = next(it), next(again)
                np.testing.assert_array_equal(b["tokens"], b2["tokens"])  # seeded
                for img, cap in zip(b["image"], _untok(b["tokens"])):
                    label = labels[_image_key(img)]
                    assert cap in set(table[label]), (cap, names[label])
                    seen[_image_key(img)] = cap
            per_epoch.append(seen)
        common = per_epoch[0].keys() & per_epoch[1].keys()
        assert len(common) >= 8
        # 80 templates: an image keeping its template in the next epoch is rare.
        assert sum(per_epoch[0][k] != per_epoch[1][k] for k in common) >= len(common) // 2


def test_config_overrides_and_errors(tmp_path):
    with tfds.testing.mock_data(num_examples=8):
        names = tuple(f"class {i}" for i in range(10))
        cfg = _data_cfg("cifar10", tmp_path, class_names=names, templates=("itsa {}",))
        for ex in get_source(cfg).raw("train").as_numpy_iterator():
            (cap,) = [c.decode() for c in ex["captions"]]
            assert cap.startswith("itsa class ")
        with pytest.raises(ValueError, match=r"class_names: 2 names for the 10 classes"):
            get_source(_data_cfg("cifar10", tmp_path, class_names=("a", "b")))
    with pytest.raises(ValueError, match="needs config.data.class_captions.dataset"):
        get_source(_data_cfg("", tmp_path))


def test_demo_captions_name_the_scene_shape(tmp_path):
    cfg = _data_cfg("gmm_demo", tmp_path / "data")
    source = get_source(cfg)
    shape_of = {ex["image"]: demo.CLASS_NAMES[int(ex["shape"])] for ex in
                tfds.as_numpy(_encoded(source.builder, "target_train"))}
    n = 0
    for raw in source.raw("target_train").as_numpy_iterator():
        caps = [c.decode() for c in raw["captions"]]
        assert caps == [t.format(shape_of[raw["image"]]) for t in demo.TEMPLATES]
        n += 1
    assert n == DEMO_SPLITS["target_train"] == len(shape_of)


@pytest.mark.slow
def test_train_py_fine_tunes_on_class_captions(tmp_path):
    data_dir = tmp_path / "data"
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(
        "from tests import demo_tiny_config\n"
        "def get_config():\n"
        f"    c = demo_tiny_config.get_config({str(data_dir)!r})\n"
        "    del c.demo\n"
        "    c.data.name = 'class_captions'\n"
        "    c.data.class_captions.dataset = 'gmm_demo'\n"
        "    c.total_steps = 2\n"
        "    return c\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS="--xla_backend_optimization_level=0", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--config={cfg_file}",
                        f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "finished at step 2" in r.stdout
    with open(tmp_path / "run" / "train_metrics.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == 2 and np.isfinite(metrics["loss/total"])
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["data"]["class_captions"]["dataset"] == "gmm_demo"


def test_imagenet_config_is_valid_and_evaluates_the_shifts():
    from gmm_jax import train_lib
    from gmm_jax.configs import imagenet
    config = imagenet.get_config()
    with pytest.raises(ValueError, match="config.init"):  # no ViT-B/16 from scratch by accident
        train_lib.validate_config(config)
    assert config.data.name == "class_captions" and config.data.caption_mode == "random"
    assert config.model.preset == "ViT-B/16" and config.init is None  # given on the CLI
    assert config.eval.zeroshot.datasets.split(",") == [
        "imagenet2012", "imagenet_v2", "imagenet_r", "imagenet_a", "imagenet_sketch"]
    config.init = "/models/b16"
    train_lib.validate_config(config)
