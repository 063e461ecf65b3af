"""Own data (image_text_files) end to end, offline, with an ORACLE encoder.

The set: generated demo scenes saved as PNG with class-level captions ("a photo of a
circle."), so identical captions repeat across images, as in the issue's digits set.
The oracle maps an image to the one-hot of its true shape (found by matching the
pixels against the generator's images, preprocessed by the same function) and a
caption to the one-hot of the shape it names. A perfect model then must read
R@1 = 100 both ways (identical captions are interchangeable) and a zero gap; with
the pre-fix rule it read 0. No network is touched: CIFAR is not in data_dir, and the
zero-shot suite is skipped with one warning (or stops evaluation under strict).
"""
import json
import logging
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gmm_jax import eval_lib, evaluators
from gmm_jax.data import demo_render, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 24
SIZE = 64  # demo images are 64x64


class WordTokenizer:
    """One id per distinct word (ids never collide)."""

    def __init__(self):
        self.vocab = {s: i + 1 for i, s in enumerate(demo_render.SHAPES)}

    def __call__(self, texts, context_length=77):
        out = np.zeros((len(texts), context_length), np.int32)
        for i, t in enumerate(texts):
            ids = [self.vocab.setdefault(w, len(self.vocab) + 1)
                   for w in t.lower().replace(".", "").split()][:context_length]
            out[i, :len(ids)] = ids
        return out


class OracleEncoder:
    """Ground-truth shapes as one-hot embeddings; counts the calls it gets."""
    batch_size = 8

    def __init__(self, reference_images, shapes, tokenizer):
        self.reference = reference_images.reshape(len(reference_images), -1)
        self.shapes = np.asarray(shapes)
        self.tokenizer = tokenizer
        self.calls = 0

    def images(self, batches, total=None, desc=""):
        self.calls += 1
        x = np.concatenate([np.asarray(b) for b in batches]).reshape(-1, self.reference.shape[1])
        d = ((x[:, None, :] - self.reference[None]) ** 2).sum(-1)
        assert np.all(d.min(1) < 1e-6), "an image that is not in the generated set"
        return np.eye(8, dtype=np.float32)[self.shapes[d.argmin(1)]]

    def texts(self, tokens, desc=""):
        self.calls += 1
        word_ids = [self.tokenizer.vocab[s] for s in demo_render.SHAPES]
        tokens = np.asarray(tokens)
        hits = np.stack([(tokens == w).any(1) for w in word_ids], 1)
        assert (hits.sum(1) == 1).all(), "each caption names exactly one shape"
        return hits.astype(np.float32)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rows, refs, shapes = [], [], []
    for i in range(N_IMAGES):
        ex = demo_render.make_example("target_test", i)
        name = f"img_{i:03d}.png"
        Image.fromarray(ex["image"]).save(root / name)
        shape = int(ex["scene"]["shape"])
        rows.append({"image": name, "caption": f"a photo of a {demo_render.SHAPES[shape]}."})
        png = tf.io.read_file(str(root / name))
        refs.append(preprocess.clip_transform(preprocess.decode_image(png), SIZE).numpy())
        shapes.append(shape)
    assert max(np.bincount(shapes)) >= 2, "the test needs repeated class captions"
    with open(root / "pairs.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return root, np.stack(refs), np.array(shapes)


def _eval_warnings(caplog):
    """Warnings of the evaluation (TFDS's own 'custom data configuration' note aside)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and r.name.startswith("gmm_jax")]


def _config(root, **eval_overrides):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({
        "name": "image_text_files", "files_path": str(root / "pairs.jsonl"),
        "images_dir": str(root), "data_dir": str(root / "tfds"), "eval_split": "train"})
    c.eval = eval_lib.default_eval_config()
    c.eval.progress = False
    for k, v in eval_overrides.items():
        node = c.eval
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def _run(own_data, out, **overrides):
    root, refs, shapes = own_data
    tok = WordTokenizer()
    enc = OracleEncoder(refs, shapes, tok)
    values = eval_lib.run_suites(enc, tok, _config(root, **overrides), str(out), image_size=SIZE,
                                 context_length=16, scale=50.0, **overrides.pop("_kw", {}))
    return values, enc


def test_oracle_encoder_is_perfect_on_own_data(own_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        values, _ = _run(own_data, tmp_path / "eval")
    # Own data with the default suite list: only the suites needing no other data set.
    assert {k.split("/")[0] for k in values} == {"retrieval", "gap", "calibration"}
    assert not _eval_warnings(caplog)
    for d in ("i2t", "t2i"):
        assert values[f"retrieval/{d}_r1"] == 100.0
    assert values["gap/centroid_distance"] == pytest.approx(0.0, abs=1e-6)
    assert values["gap/mean_positive_cosine"] == pytest.approx(1.0, abs=1e-6)
    # Always right (identical captions count), but the softmax mass splits evenly over
    # the n_c tied captions / images of the true class: confidence 1/n_c, ECE mean(1 - 1/n_c).
    n_c = np.bincount(own_data[2])[own_data[2]]
    for d in ("i2t", "t2i"):
        assert values[f"calibration/ece_{d}"] == pytest.approx(np.mean(1 - 1 / n_c), abs=1e-6)
    info = json.load(open(tmp_path / "eval" / "eval_info.json"))
    shapes = own_data[2]
    assert info["retrieval/duplicate_captions"] == N_IMAGES - len(np.unique(shapes))
    assert json.load(open(tmp_path / "eval" / "metrics.json")) == pytest.approx(values)


def test_missing_zeroshot_set_is_skipped_with_one_warning(own_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        values, _ = _run(own_data, tmp_path / "eval",
                         suites="retrieval,geometry,calibration,zeroshot",
                         **{"zeroshot.datasets": "cifar10"})
    warnings = _eval_warnings(caplog)
    assert len(warnings) == 1 and "cifar10" in warnings[0] and "tfds build" in warnings[0]
    assert values["retrieval/i2t_r1"] == 100.0 and "gap/uniformity" in values
    assert "calibration/ece" in values and not any(k.startswith("zeroshot") for k in values)
    written = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert written == pytest.approx(values)
    assert json.load(open(tmp_path / "eval" / "eval_info.json"))["skipped"] == {
        "zeroshot": [f"TFDS dataset 'cifar10' (data_dir={own_data[0] / 'tfds'})"]}


def test_strict_fails_fast_naming_the_dataset(own_data, tmp_path):
    root, refs, shapes = own_data
    tok = WordTokenizer()
    enc = OracleEncoder(refs, shapes, tok)
    cfg = _config(root, suites="retrieval,zeroshot")
    with pytest.raises(evaluators.DataMissing, match="cifar10.*tfds build cifar10"):
        eval_lib.run_suites(enc, tok, cfg, str(tmp_path / "e"), image_size=SIZE,
                            context_length=16, scale=50.0, strict=True)
    assert enc.calls == 0 and not os.path.exists(tmp_path / "e" / "metrics.json")


def test_results_are_written_when_a_later_suite_fails(own_data, tmp_path):
    out = tmp_path / "eval"
    with pytest.raises(eval_lib.EvalError, match="SIMAT"):
        _run(own_data, out, suites="retrieval,arithmetic",
             **{"arithmetic.source": "simat", "arithmetic.simat_dir": str(tmp_path / "nope")})
    written = json.load(open(out / "metrics.json"))
    assert written["retrieval/i2t_r1"] == 100.0 and written["retrieval/t2i_r1"] == 100.0


@pytest.mark.slow
def test_eval_cli_strict_offline(own_data, tmp_path):
    """eval.py --strict on own data with a missing zero-shot set: exit 2 at once, one
    line naming the dataset, nothing downloaded, no traceback."""
    from gmm_jax import pretrained
    from gmm_jax.models import CLIP, get_config, init_params
    from gmm_jax.tokenizer import Tokenizer
    root = own_data[0]
    model = CLIP(get_config("tiny"))
    params = init_params(model, jax.random.key(0))
    tok = Tokenizer.train([f"a photo of a {s}." for s in demo_render.SHAPES], vocab_size=600)
    pretrained.save_pretrained(str(tmp_path / "model"), model.config, params, tok)
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "import ml_collections\nfrom gmm_jax import eval_lib\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.data = ml_collections.ConfigDict({dict(_config(root).data)!r})\n"
        "    c.eval = eval_lib.default_eval_config()\n"
        "    return c\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg}",
                        f"--checkpoint={tmp_path / 'model'}", f"--out={tmp_path / 'out'}",
                        "--strict", "--config.eval.suites=retrieval,zeroshot",
                        "--config.eval.zeroshot.datasets=cifar10"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "cifar10" in r.stderr and "not available locally" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
