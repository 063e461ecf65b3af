"""The headline commands end to end: ``python train.py --config=configs/coco.py`` and
``configs/flickr30k.py``, each a few steps from a tiny converted checkpoint (a random
transformers CLIPModel through ``python -m gmm_jax.convert``) passed as ``config.init``,
with the evaluation at the end (suites that need no other dataset).

Data: COCO through a stand-in for the ``coco_captions`` builder's ``as_dataset`` only
(``tfds.testing.mock_data`` would also redirect file writes, which breaks Orbax's
checkpoint writes); Flickr30k through the project's own builder from a tiny manual
directory (no mocking at all). The runs happen in subprocesses: this file is also the
worker (``python tests/test_headline_configs.py {train.py|eval.py} ARGS...``).

Checks: the checkpoint of the last step exists and moved away from the initial weights;
the evaluation at the end ran on the fine-tuned weights (its saved text embeddings equal
an independent forward pass of the checkpoint) over the whole test split, and its gap
metrics equal a float64 NumPy recomputation from its saved embeddings. For COCO also
the rest of the flow the guides give (docs/tpu.md): ``eval.py`` on the run reproduces
the metrics of the evaluation at the end, and the export ``python -m gmm_jax.convert
--format run --to hf`` loads in transformers with the checkpoint's features.
"""
import io
import json
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # train.py/eval.py subprocesses
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = 3
COCO_SPLITS = {"train": 10, "restval": 6, "val": 3, "test": 6}
FLICKR_SPLITS = {"train": 12, "val": 2, "test": 6}
WORDS = ("red", "green", "blue", "small", "large", "dog", "cat", "bird", "car", "tree",
         "on", "grass", "a", "two", "the", "near", "road", "river", "sits", "runs")


def _captions(split: str, i: int, n: int = 5) -> list[str]:
    rng = np.random.default_rng([sum(map(ord, split)), i, 7])
    return [" ".join(rng.choice(WORDS, 6)) + f" {split} {i}" for _ in range(n)]


def _jpeg(split: str, i: int) -> bytes:
    from PIL import Image
    rng = np.random.default_rng([sum(map(ord, split)), i])
    img = rng.integers(0, 255, (36 + 3 * i, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# --------------------------------------------------------------------------- worker side

def _patch_coco_builder():
    """``coco_captions`` serves COCO_SPLITS from memory: ``as_dataset`` returns the raw
    structure the real builder yields with the image left encoded (what the project asks
    for); ``download_and_prepare`` does nothing and ``is_prepared`` says yes (the
    evaluation skips a suite whose TFDS data is not prepared). Nothing else of TFDS is
    touched."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    cls = type(tfds.builder("coco_captions"))

    def as_dataset(self, split, *, decoders=None, read_config=None, shuffle_files=False,
                   **kw):
        assert isinstance((decoders or {}).get("image"), tfds.decode.SkipDecoding)
        names = [s.strip() for s in str(split).split("+")]

        def gen():
            for name in names:
                for i in range(COCO_SPLITS[name]):
                    caps = _captions(name, i)
                    yield {"image": _jpeg(name, i), "image/filename": f"{name}_{i}.jpg",
                           "captions": {"text": caps, "id": np.arange(len(caps))}}

        return tf.data.Dataset.from_generator(gen, output_signature={
            "image": tf.TensorSpec([], tf.string),
            "image/filename": tf.TensorSpec([], tf.string),
            "captions": {"text": tf.TensorSpec([None], tf.string),
                         "id": tf.TensorSpec([None], tf.int64)}})

    cls.as_dataset = as_dataset
    cls.download_and_prepare = lambda self, *a, **k: None
    cls.is_prepared = lambda self: True


def _worker(script, argv):
    _patch_coco_builder()
    path = os.path.join(ROOT, script)
    sys.argv = [path] + list(argv)
    runpy.run_path(path, run_name="__main__")


# --------------------------------------------------------------------------- test side

def _flickr_manual_dir(root):
    """Karpathy's split file + JPEGs, as the flickr30k builder expects them."""
    os.makedirs(os.path.join(root, "flickr30k-images"))
    images = []
    for split, n in FLICKR_SPLITS.items():
        for i in range(n):
            name = f"{split}_{i}.jpg"
            with open(os.path.join(root, "flickr30k-images", name), "wb") as f:
                f.write(_jpeg(split, i))
            images.append({"filename": name, "split": split,
                           "sentences": [{"raw": c} for c in _captions(split, i)]})
    with open(os.path.join(root, "dataset_flickr30k.json"), "w") as f:
        json.dump({"images": images, "dataset": "flickr30k"}, f)
    return root


def _tiny_converted_model(root):
    """A random tiny transformers CLIPModel with a tokenizer learned on the captions,
    converted by the CLI into a gmm_jax model directory."""
    import torch
    import transformers

    from gmm_jax import convert
    from gmm_jax.tokenizer import Tokenizer
    texts = [c for splits in (COCO_SPLITS, FLICKR_SPLITS) for s, n in splits.items()
             for i in range(n) for c in _captions(s, i)]
    tok = Tokenizer.train(texts, vocab_size=600, context_length=16)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                         eos_token_id=2, bos_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    hf_dir = os.path.join(root, "hf")
    transformers.CLIPModel(cfg).save_pretrained(hf_dir)
    tok.save(hf_dir)
    out = os.path.join(root, "model")
    assert convert.main(["--src", hf_dir, "--format", "hf", "--out", out]) == 0
    return out


EVAL_FLAGS = ("--config.eval.suites=retrieval,geometry,calibration",
              "--config.eval.batch_size=8", "--config.eval.progress=False")


def _run(script, cwd, *flags):
    # One CPU device; XLA's LLVM optimisation off: compiling dominates these short runs.
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), script, *flags],
                          env=env, cwd=str(cwd), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return proc


def _train(config_name, workdir, model_dir, *flags):
    proc = _run("train.py", workdir.parent,
                f"--config={os.path.join(ROOT, 'configs', config_name)}",
                f"--workdir={workdir}", f"--config.init={model_dir}",
                f"--config.total_steps={STEPS}", "--config.batch_size=4",
                "--config.checkpoint_every_steps=2", "--config.log_every_steps=1",
                "--config.progress_bar=False", "--config.eval_at_end=True", *EVAL_FLAGS, *flags)
    assert f"finished at step {STEPS}" in proc.stdout, proc.stdout[-2000:]
    return proc


def _check_run(workdir, model_dir, test_captions, n_test_images):
    import jax

    from gmm_jax import checkpointing
    from gmm_jax.pretrained import load_pretrained
    from gmm_jax.tokenizer import Tokenizer
    params, step, _ = checkpointing.restore_params(str(workdir))
    assert step == STEPS
    model, init_params, _ = load_pretrained(model_dir)
    moved = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
             zip(jax.tree.leaves(params), jax.tree.leaves(init_params))]
    assert len(moved) == len(jax.tree.leaves(init_params)) and max(moved) > 1e-6
    # the evaluation at the end: whole test split, on the fine-tuned weights
    out = os.path.join(workdir, f"eval_step_{STEPS}")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    emb = np.load(os.path.join(out, "embeddings.npz"))  # image + first caption per image
    v, t = emb["image"].astype(np.float64), emb["text"].astype(np.float64)
    assert v.shape[0] == t.shape[0] == n_test_images
    # every caption of the split through the checkpoint's text tower, independently
    tok = Tokenizer.from_path(os.path.join(workdir, "tokenizer"),
                              context_length=model.config.context_length)
    caps = [c for per_image in test_captions for c in per_image]
    txt = np.asarray(model.apply({"params": params}, tok(caps), method=model.encode_text),
                     np.float64)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    # the evaluation's image order is the dataset's (TFDS shuffles a built split): match
    # its rows to ours through the first captions, which must be a permutation
    own_t2i = np.repeat(np.arange(n_test_images), [len(c) for c in test_captions])
    firsts = txt[np.searchsorted(own_t2i, np.arange(n_test_images))]
    order = np.argmax(t @ firsts.T, axis=1)          # eval row -> our image
    assert sorted(order) == list(range(n_test_images))
    np.testing.assert_allclose(t, firsts[order], atol=2e-5)
    t2i = np.argsort(order)[own_t2i]                 # our caption -> eval image row
    # gap metrics and R@1 (Karpathy protocol) restated in float64 NumPy
    want = {"gap/centroid_distance": np.linalg.norm(v.mean(0) - t.mean(0)),
            "gap/mean_positive_cosine": np.mean(np.sum(v * t, 1)),
            "gap/alignment": np.mean(np.sum((v - t) ** 2, 1)),
            "retrieval/t2i_r1": 100 * np.mean(np.argmax(txt @ v.T, 1) == t2i),
            "retrieval/i2t_r1": 100 * np.mean(t2i[np.argmax(v @ txt.T, 1)] ==
                                              np.arange(n_test_images))}
    for key, value in want.items():
        np.testing.assert_allclose(metrics[key], value, rtol=1e-4, atol=1e-6, err_msg=key)
    assert "calibration/ece" in metrics and 0 <= metrics["calibration/ece"] <= 1
    return metrics


def _check_export(workdir, out):
    """``convert --format run --to hf``: transformers loads it and computes the
    checkpoint's text features (an independent implementation of the text tower)."""
    import torch
    import transformers

    from gmm_jax import checkpointing, convert
    from gmm_jax.models import CLIP
    from gmm_jax.pretrained import load_config
    assert convert.main(["--src", str(workdir), "--format", "run", "--out", str(out),
                         "--to", "hf"]) == 0
    params, _, _ = checkpointing.restore_params(str(workdir))
    model = CLIP(load_config(str(workdir)))
    tok = transformers.CLIPTokenizer.from_pretrained(str(out))
    texts = _captions("test", 0)
    ids = tok(texts, padding="max_length", max_length=model.config.context_length,
              truncation=True, return_tensors="np")["input_ids"]
    ids = np.where(ids == tok.pad_token_id, 0, ids)  # OpenAI pads with 0 after EOT
    want = np.asarray(model.apply({"params": params}, ids.astype(np.int32),
                                  method=model.encode_text))
    hf = transformers.CLIPModel.from_pretrained(str(out)).eval()
    with torch.no_grad():
        got = hf.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
    got = getattr(got, "pooler_output", got).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _tiny_converted_model(str(tmp_path_factory.mktemp("converted")))


def test_coco_config_end_to_end(tmp_path, model_dir):
    workdir = tmp_path / "coco_run"
    _train("coco.py", workdir, model_dir, f"--config.data.data_dir={tmp_path / 'tfds'}")
    metrics = _check_run(workdir, model_dir,
                         [_captions("test", i) for i in range(COCO_SPLITS["test"])],
                         COCO_SPLITS["test"])
    # eval.py on the run: the same numbers as the evaluation at the end
    out = tmp_path / "eval_cli"
    _run("eval.py", tmp_path, f"--config={os.path.join(ROOT, 'configs', 'coco.py')}",
         f"--workdir={workdir}", f"--out={out}", f"--config.data.data_dir={tmp_path / 'tfds'}",
         *EVAL_FLAGS)
    with open(out / "metrics.json") as f:
        again = json.load(f)
    assert again.keys() == metrics.keys()
    for key in metrics:
        np.testing.assert_allclose(again[key], metrics[key], rtol=1e-4, atol=1e-6, err_msg=key)
    _check_export(workdir, tmp_path / "exported")


def test_flickr30k_config_end_to_end(tmp_path, model_dir):
    manual = _flickr_manual_dir(str(tmp_path / "manual"))
    workdir = tmp_path / "f30k_run"
    _train("flickr30k.py", workdir, model_dir, f"--config.data.manual_dir={manual}",
           f"--config.data.data_dir={tmp_path / 'tfds'}")
    _check_run(workdir, model_dir,
               [_captions("test", i) for i in range(FLICKR_SPLITS["test"])],
               FLICKR_SPLITS["test"])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
