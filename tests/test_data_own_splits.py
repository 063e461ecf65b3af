"""Own data as a directory of split files (train/test/shifted), the defaults that train and
eval take from it, and the errors for bad files (each naming file:line and the field)."""
import csv
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from gmm_jax.data import captions_files, load_retrieval_split, make_train_iterator
from gmm_jax.data import image_text_files as itf
from gmm_jax.data.sources import get_source
from tests.test_data_files import _check_examples, _jsonl, _read_all, _write_images


def _fake_tok(texts, context_length):
    """Independent stand-in tokenizer: the caption's length and first bytes as ids."""
    out = np.zeros((len(texts), context_length), np.int32)
    for i, t in enumerate(texts):
        ids = [len(t)] + [ord(c) for c in t][:context_length - 1]
        out[i, :len(ids)] = ids
    return out


def _split_dir(root, images_sub="images"):
    """root/{train.jsonl, test.csv, shifted.jsonl}, images under root/images_sub."""
    _write_images(os.path.join(root, images_sub))
    rel = lambda n: f"{images_sub}/{n}.png" if n == "blue" else f"{images_sub}/{n}.jpg"  # noqa: E731
    _jsonl(os.path.join(root, "train.jsonl"),
           [{"image": rel("red"), "captions": ["a red square", "red"]},
            {"image": rel("green"), "caption": "a green square"},
            {"image": rel("yellow"), "caption": "a yellow square"}])
    with open(os.path.join(root, "test.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption", "label", "image"])           # any column order, extras ignored
        w.writerows([["blue test", "0", rel("blue")], ["red test", "1", rel("red")],
                     ["blue again", "0", rel("blue")]])
    _jsonl(os.path.join(root, "shifted.jsonl"),
           [{"image": rel("green"), "caption": "shifted green"}])
    return {"train": {rel("red"): ["a red square", "red"], rel("green"): ["a green square"],
                      rel("yellow"): ["a yellow square"]},
            "test": {rel("blue"): ["blue test", "blue again"], rel("red"): ["red test"]},
            "shifted": {rel("green"): ["shifted green"]}}


def _check(rows, expected):
    """_check_examples on paths relative to an images/ sub-folder."""
    for r in rows:
        r["image_path"] = r["image_path"].split(b"/")[-1]
    _check_examples(rows, {k.split("/")[-1]: v for k, v in expected.items()})


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    root = str(tmp_path_factory.mktemp("own"))
    expected = _split_dir(root)
    cfg = {"name": "image_text_files", "files_path": root,
           "data_dir": str(tmp_path_factory.mktemp("tfds"))}
    return root, cfg, expected, get_source(cfg)


def test_directory_gives_one_split_per_file(split_dir):
    root, cfg, expected, src = split_dir
    assert sorted(src.split_names()) == ["shifted", "test", "train"]
    assert src.default_splits == ("train", "test")
    for split, want in expected.items():
        _check(_read_all(src.builder, split), want)
        assert src.builder.info.metadata[split]["num_bad_images"] == 0


def test_train_and_eval_defaults_pick_train_and_test(split_dir):
    root, cfg, expected, src = split_dir
    it = make_train_iterator(cfg, _fake_tok, image_size=16, global_batch_size=3, seed=0,
                             source=src, context_length=8, process_index=0, process_count=1)
    assert it.split == "train" and it.num_examples == 3
    batch = next(iter(it))
    first = {c[0] for c in expected["train"].values()}        # caption_mode="first"
    assert sorted(batch["tokens"][:, 0].tolist()) == sorted(len(c) for c in first)
    rs = load_retrieval_split(cfg, None, _fake_tok, 16, context_length=8, source=src)
    assert rs.split == "test" and rs.num_images == 2
    groups = [[c for c, i in zip(rs.captions, rs.text_to_image) if i == k] for k in range(2)]
    assert sorted(groups) == sorted(expected["test"].values())  # TFDS orders by key hash
    np.testing.assert_array_equal(rs.tokens, _fake_tok(rs.captions, 8))
    imgs = np.concatenate(list(rs.iter_images(8)))
    assert imgs.shape == (2, 16, 16, 3)
    # a shifted file is just another split, by name or through config.data.eval_split
    assert load_retrieval_split(cfg, "shifted", _fake_tok, 16, source=src).captions == [
        "shifted green"]
    shifted_cfg = dict(cfg, eval_split="shifted", train_split="test")
    assert load_retrieval_split(shifted_cfg, None, _fake_tok, 16, source=src).num_images == 1
    it = make_train_iterator(shifted_cfg, _fake_tok, 16, 2, 0, source=src, process_index=0,
                             process_count=1)
    assert it.split == "test" and it.num_examples == 2


def test_unknown_split_names_the_known_ones(split_dir):
    root, cfg, expected, src = split_dir
    with pytest.raises(ValueError, match=r"unknown config.data.eval_split 'val'.*'shifted'"):
        load_retrieval_split(dict(cfg, eval_split="val"), None, _fake_tok, 16, source=src)
    with pytest.raises(ValueError, match=r"unknown config.data.train_split 'tran'.*<split>"):
        make_train_iterator(dict(cfg, train_split="tran"), _fake_tok, 16, 2, 0, source=src)


def test_images_dir_override_and_single_file_default(tmp_path, caplog):
    expected = _split_dir(str(tmp_path / "caps"), images_sub="x")
    os.rename(tmp_path / "caps" / "x", tmp_path / "pictures")
    os.makedirs(tmp_path / "pictures" / "x")
    for name in os.listdir(tmp_path / "pictures"):
        if name != "x":
            os.rename(tmp_path / "pictures" / name, tmp_path / "pictures" / "x" / name)
    src = get_source({"name": "image_text_files", "files_path": str(tmp_path / "caps"),
                      "images_dir": str(tmp_path / "pictures"), "data_dir": str(tmp_path / "t")})
    _check(_read_all(src.builder, "test"), expected["test"])
    # one file: its only split is train, images are relative to its folder, and eval
    # defaults to that split with a warning
    single = {"name": "image_text_files", "files_path": str(tmp_path / "caps" / "train.jsonl"),
              "data_dir": str(tmp_path / "t2")}
    os.symlink(tmp_path / "pictures" / "x", tmp_path / "caps" / "x")
    src = get_source(single)
    assert src.split_names() == ["train"] and src.default_splits == ("train", "train")
    _check(_read_all(src.builder), expected["train"])
    with caplog.at_level("WARNING"):
        rs = load_retrieval_split(single, None, _fake_tok, 16, source=src)
    assert rs.split == "train" and "training split" in caplog.text


def test_no_readable_image_names_images_dir(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"image": "a.jpg", "caption": "x"}])
    os.makedirs(tmp_path / "empty")
    b = itf.builder(str(tmp_path), str(tmp_path / "empty"), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=r"train.jsonl: none of its 1 images.*"
                                                r"empty \(config.data.images_dir\)"):
        b.download_and_prepare()


def test_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere \(config.data.files_path\)"):
        captions_files.split_files(str(tmp_path / "nothere"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"holds no split files.*train.jsonl"):
        captions_files.split_files(str(tmp_path))
    _jsonl(tmp_path / "train.jsonl", [{"image": "a.jpg", "caption": "x"}])
    (tmp_path / "train.csv").write_text("image,caption\na.jpg,y\n")
    with pytest.raises(ValueError, match=r"split 'train' is given twice.*train.csv"):
        captions_files.split_files(str(tmp_path))
    os.remove(tmp_path / "train.csv")
    (tmp_path / "test-2.csv").write_text("image,caption\na.jpg,y\n")
    with pytest.raises(ValueError, match=r"test-2.csv: split file names"):
        captions_files.split_files(str(tmp_path))
    os.remove(tmp_path / "test-2.csv")
    # a bad line in one split file stops the whole build, naming that file's line
    _jsonl(tmp_path / "test.jsonl", [{"image": "a.jpg", "caption": "ok"},
                                     {"image": "b.jpg", "captions": ["fine", " "]}])
    os.makedirs(tmp_path / "imgs")
    with pytest.raises(ValueError, match=r"test.jsonl:2: empty caption \(field 'captions\[1\]'\)"):
        get_source({"name": "image_text_files", "files_path": str(tmp_path),
                    "images_dir": str(tmp_path / "imgs"), "data_dir": str(tmp_path / "tfds")})
    with pytest.raises(FileNotFoundError, match=r"no_dir \(config.data.images_dir\)"):
        get_source({"name": "image_text_files", "files_path": str(tmp_path),
                    "images_dir": str(tmp_path / "no_dir")})
    with pytest.raises(ValueError, match=r"needs config.data.files_path"):
        get_source({"name": "image_text_files"})


@pytest.mark.parametrize("text,match", [
    ("image,caption\nred.jpg\n", r"p.csv:2: missing field 'caption' \(row has 1 column"),
    ("caption,image\nfine\n", r"p.csv:2: missing field 'image'"),
    ("image,text\nred.jpg,x\n", r"p.csv:1: expected header .*missing column 'caption'"),
    ("image,caption\nred.jpg,a,b\n", r"p.csv:2: 3 columns but the header has 2"),
    ("image,caption\nred.jpg,ok\n,nothing\n", r"p.csv:3: missing or empty 'image' path "
                                              r"\(field 'image'\)"),
    ("image,caption\nred.jpg,ok\n\ngreen.jpg,\n", r"p.csv:4: empty caption \(field 'caption'\)"),
])
def test_csv_errors_name_line_and_field(tmp_path, text, match):
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        captions_files.parse_captions_file(str(tmp_path / "p.csv"))


@pytest.mark.parametrize("rows,match", [
    (['{"image": "a.jpg", "caption": "x"}', '{"image": "b.jpg", "caption": }'],
     r"p.jsonl:2: invalid JSON \(Expecting value at column %d\)"
     % ('{"image": "b.jpg", "caption": }'.rindex("}") + 1)),   # 1-based, as editors count
    (['["a.jpg", "x"]'], r"p.jsonl:1: expected a JSON object, got list"),
    ([{"image": "a.jpg", "caption": 3}], r"p.jsonl:1: caption must be a string, got int "
                                         r"\(field 'caption'\)"),
    ([{"image": "a.jpg", "captions": "one"}], r"p.jsonl:1: 'captions' must be a list"),
    ([{"image": "a.jpg", "captions": []}], r"p.jsonl:1: no captions"),
    ([{"image": "a.jpg", "text": "x"}], r"p.jsonl:1: needs 'caption' or 'captions' "
                                        r"\(keys: \['image', 'text'\]\)"),
])
def test_jsonl_errors_name_line_and_field(tmp_path, rows, match):
    path = _jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ValueError, match=match):
        captions_files.parse_captions_file(str(path))

