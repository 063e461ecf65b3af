"""Own image-caption files and Flickr30k builders, built for real on tiny fixtures."""
import csv
import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from gmm_jax.data import flickr30k
from gmm_jax.data import image_text_files as itf
from gmm_jax.data.sources import get_source

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "blue": (20, 40, 230),
           "yellow": (240, 230, 20)}


def _write_images(d, corrupt="broken.jpg"):
    """Solid-colour JPEG/PNG images named after their colour, plus one corrupt file."""
    os.makedirs(d, exist_ok=True)
    for i, (name, rgb) in enumerate(COLOURS.items()):
        img = np.zeros((24 + 4 * i, 30, 3), np.uint8) + np.array(rgb, np.uint8)
        Image.fromarray(img).save(os.path.join(d, _rel(name)),
                                  format="PNG" if name == "blue" else "JPEG")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(buf, format="JPEG")
    with open(os.path.join(d, corrupt), "wb") as f:
        f.write(buf.getvalue()[:60])  # truncated: header only


def _rel(name):
    return f"{name}.png" if name == "blue" else f"{name}.jpg"


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    d = str(tmp_path_factory.mktemp("imgs"))
    _write_images(d)
    return d


def _jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def _read_all(builder, split="train"):
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def _check_examples(rows, expected):
    got = {r["image_path"].decode(): [c.decode() for c in r["captions"]] for r in rows}
    assert got == expected
    for r in rows:
        colour = r["image_path"].decode().split(".")[0]
        assert r["image"].ndim == 3 and r["image"].shape[-1] == 3
        assert np.abs(r["image"].reshape(-1, 3).mean(0) - COLOURS[colour]).max() < 4


def test_jsonl_builder_skips_and_counts_corrupt_image(image_dir, tmp_path):
    rows = [{"image": "red.jpg", "captions": ["a red square", "something red"]},
            {"image": "green.jpg", "caption": "a green square"},
            {"image": "broken.jpg", "caption": "never seen"},
            {"image": "missing.jpg", "caption": "no such file"},
            {"image": "blue.png", "captions": ["blue!"]},
            {"image": "green.jpg", "caption": "green again"}]  # grouped with the first
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    b = itf.builder(str(path), image_dir, str(tmp_path / "tfds"))
    b.download_and_prepare()
    _check_examples(_read_all(b), {"red.jpg": ["a red square", "something red"],
                                   "green.jpg": ["a green square", "green again"],
                                   "blue.png": ["blue!"]})
    stats = b.info.metadata["train"]
    assert stats["num_bad_images"] == 2
    assert sorted(stats["bad_images"]) == ["broken.jpg", "missing.jpg"]
    # the counts survive a reload from disk
    again = itf.builder(str(path), image_dir, str(tmp_path / "tfds"))
    assert again.is_prepared() and again.info.metadata["train"]["num_bad_images"] == 2


def test_csv_builder_groups_rows(image_dir, tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([["yellow.jpg", "yellow, with a comma"], ["red.jpg", "red one"],
                     ["yellow.jpg", "yellow two"], ["broken.jpg", "bad"]])
    b = itf.builder(str(path), image_dir, str(tmp_path / "tfds"))
    b.download_and_prepare()
    _check_examples(_read_all(b), {"yellow.jpg": ["yellow, with a comma", "yellow two"],
                                   "red.jpg": ["red one"]})
    assert b.info.metadata["train"]["num_bad_images"] == 1


def test_fail_on_bad_image(image_dir, tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"image": "red.jpg", "caption": "r"},
                                         {"image": "broken.jpg", "caption": "b"}])
    b = itf.builder(str(path), image_dir, str(tmp_path / "tfds"), fail_on_bad_image=True)
    with pytest.raises(Exception, match="broken.jpg"):
        b.download_and_prepare()


@pytest.mark.parametrize("rows,match", [
    ([{"image": "red.jpg", "caption": "ok"}, {"image": "green.jpg", "caption": "  "}],
     r"p.jsonl:2: empty caption"),
    ([{"image": "red.jpg", "caption": "ok"}, "{not json", {"image": "x", "caption": "y"}],
     r"p.jsonl:2: invalid JSON"),
    ([{"image": "red.jpg", "captions": ["a", ""]}], r"p.jsonl:1: empty caption"),
    ([{"image": "red.jpg"}], r"p.jsonl:1: needs 'caption' or 'captions'"),
    ([{"caption": "no image"}], r"p.jsonl:1: missing or empty 'image'"),
])
def test_jsonl_errors_name_the_line(tmp_path, rows, match):
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        itf.parse_captions_file(str(path))


def test_csv_errors_name_the_line(tmp_path, image_dir):
    path = tmp_path / "p.csv"
    path.write_text("image,caption\nred.jpg,fine\ngreen.jpg,\n")
    with pytest.raises(ValueError, match=r"p.csv:3: empty caption"):
        itf.parse_captions_file(str(path))
    # the builder reports the same error (nothing written)
    with pytest.raises(ValueError, match=r"p.csv:3: empty caption"):
        itf.builder(str(path), image_dir, str(tmp_path / "tfds")).download_and_prepare()
    path.write_text("img,text\nred.jpg,x\n")
    with pytest.raises(ValueError, match=r"p.csv:1: expected header"):
        itf.parse_captions_file(str(path))


def test_missing_files_are_named(tmp_path, image_dir):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        get_source({"name": "image_text_files", "files_path": str(tmp_path / "nope.jsonl"),
                    "images_dir": image_dir})
    path = _jsonl(tmp_path / "p.jsonl", [{"image": "red.jpg", "caption": "r"}])
    with pytest.raises(FileNotFoundError, match="no_dir"):
        get_source({"name": "image_text_files", "files_path": str(path),
                    "images_dir": str(tmp_path / "no_dir")})


def _karpathy(manual, splits):
    images = []
    for split, names in splits.items():
        for n in names:
            images.append({"filename": _rel(n), "split": split, "imgid": len(images),
                           "sentences": [{"raw": f"{n} photo {k}", "tokens": []}
                                         for k in range(5)]})
    with open(os.path.join(manual, flickr30k.JSON_NAME), "w") as f:
        json.dump({"images": images, "dataset": "flickr30k"}, f)


def test_flickr30k_builder(tmp_path):
    manual = tmp_path / "manual"
    _write_images(str(manual / flickr30k.IMAGES_DIR))
    _karpathy(str(manual), {"train": ["red", "green", "yellow"], "val": ["blue"],
                            "test": ["green", "blue"]})
    src = get_source({"name": "flickr30k", "data_dir": str(tmp_path / "tfds"),
                      "manual_dir": str(manual)})
    b = src.builder
    assert {k: v.num_examples for k, v in b.info.splits.items()} == {
        "train": 3, "val": 1, "test": 2}
    _check_examples(_read_all(b, "test"), {
        "green.jpg": [f"green photo {k}" for k in range(5)],
        "blue.png": [f"blue photo {k}" for k in range(5)]})


def test_flickr30k_missing_manual_files(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        get_source({"name": "flickr30k", "data_dir": str(tmp_path / "tfds"),
                    "manual_dir": str(manual)})
    msg = str(e.value)
    assert os.path.join(str(manual), "dataset_flickr30k.json") in msg
    assert "flickr30k-images" in msg and "caption_datasets.zip" in msg
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        get_source({"name": "flickr30k", "data_dir": str(tmp_path / "tfds")})
