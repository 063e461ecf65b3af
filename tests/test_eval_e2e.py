"""Every suite end to end with the real tiny CLIP (random init), a trained BPE tokenizer
and the generated demo data; the model directory path through eval.py as well."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import AxisType

from gmm_jax import eval_lib, pretrained
from gmm_jax.data import demo, demo_render
from gmm_jax.models import CLIP, get_config, init_params
from gmm_jax.tokenizer import Tokenizer

pytestmark = pytest.mark.slow  # every suite on a tiny CLIP, sharded
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = {"target_train": 40, "target_test": 48, "shift_background": 16, "shift_combo": 16}
KEYS = ([f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
        + ["retrieval/rsum", "gap/centroid_distance", "gap/linear_separability",
           "gap/mean_positive_cosine", "gap/uniformity", "gap/alignment",
           "gap/relative_alignment", "calibration/ece", "calibration/ece_i2t",
           "calibration/ece_t2i", "zeroshot/gmm_demo_target_test/top1",
           "zeroshot/gmm_demo_shift_background/top1", "zeroshot/gmm_demo_shift_combo/top5",
           "zeroshot/mean_top1", "fewshot/k1", "fewshot/k2", "arithmetic/demo/score"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tfds.disable_progress_bar()
    root = tmp_path_factory.mktemp("e2e")
    data_dir = str(root / "data")
    demo_cfg = demo.GmmDemoConfig(name="evale2e", split_sizes=dict(SPLITS), num_workers=1)
    demo.builder(data_dir, demo_cfg).download_and_prepare()
    texts = [c for i in range(60) for c in demo_render.make_example("target_train", i)["captions"]]
    texts += [t.format(s) for t in demo.TEMPLATES for s in demo.CLASS_NAMES]
    tok = Tokenizer.train(texts, vocab_size=600)
    model = CLIP(get_config("tiny"))
    params = init_params(model, jax.random.key(0))
    return root, data_dir, demo_cfg, model, params, tok


def _config(data_dir, demo_cfg):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"name": "demo", "data_dir": data_dir,
                                        "eval_split": "target_test"})
    c.data.demo_config = demo_cfg
    c.eval = eval_lib.default_eval_config()
    c.eval.progress = False
    c.eval.batch_size = 16
    c.eval.fewshot.ks = (1, 2)
    c.eval.fewshot.seeds = (0, 1)
    return c


def test_all_suites_tiny_clip_sharded(setup):
    root, data_dir, demo_cfg, model, params, tok = setup
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    out = str(root / "eval_sharded")
    values = eval_lib.evaluate(model, params, tok, _config(data_dir, demo_cfg), out, mesh=mesh)
    for k in KEYS:
        assert k in values, k
    assert all(math.isfinite(v) for v in values.values())
    assert values["calibration/scale"] == pytest.approx(float(np.exp(params["logit_scale"])),
                                                        rel=1e-5)
    for f in ("metrics.json", "metrics.md", "gap_projection.png", "reliability.png", "recall.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0
    # the same numbers on one device: sharding changes nothing but speed
    single = eval_lib.evaluate(model, params, tok, _config(data_dir, demo_cfg),
                               str(root / "eval_single"))
    for k in ("retrieval/rsum", "gap/centroid_distance", "calibration/ece", "zeroshot/mean_top1"):
        assert single[k] == pytest.approx(values[k], rel=1e-4, abs=1e-4), k


def test_eval_cli_on_a_model_directory(setup):
    root, data_dir, demo_cfg, model, params, tok = setup
    model_dir = str(root / "model")
    pretrained.save_pretrained(model_dir, model.config, params, tok)
    cfg_file = root / "cfg.py"
    cfg_file.write_text(
        "import ml_collections\nfrom gmm_jax import eval_lib\nfrom gmm_jax.data import demo\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.data = ml_collections.ConfigDict({{'name': 'demo', 'data_dir': {data_dir!r}}})\n"
        "    c.data.demo_config = demo.GmmDemoConfig("
        f"name='evale2e', split_sizes={SPLITS!r}, num_workers=1)\n"
        "    c.eval = eval_lib.default_eval_config()\n"
        "    return c\n")
    out = root / "cli_eval"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), f"--config={cfg_file}",
                        f"--checkpoint={model_dir}", f"--out={out}", "--config.eval.progress=False",
                        "--config.eval.suites=retrieval,geometry,calibration",
                        "--config.eval.max_examples=32"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    values = json.load(open(out / "metrics.json"))
    assert all(k in values for k in KEYS if k.startswith(("retrieval/", "gap/", "calibration/")))
    assert all(math.isfinite(v) for v in values.values())


def test_captioning_suite_equals_the_library_on_the_same_embeddings(setup):
    """The registered ``captioning`` suite (opt-in) scores what the captioning library
    computes from embeddings made here with the model directly."""
    from gmm_jax import captioning
    from gmm_jax.captioning.suite import captions_by_image
    from gmm_jax.data import load_retrieval_split
    root, data_dir, demo_cfg, model, params, tok = setup
    cfg = _config(data_dir, demo_cfg)
    assert "captioning" not in eval_lib.as_list(cfg.eval.suites)  # expensive: not a default
    cfg.eval.suites = "captioning"
    cfg.eval.captioning.update(dict(prefix_length=2, width=32, layers=1, heads=2, max_length=16,
                                    steps=20, batch_size=8, beam_size=2, decode_batch_size=16,
                                    java_metrics="", train_split="target_train"))
    out = str(root / "eval_captioning")
    values = eval_lib.evaluate(model, params, tok, cfg, out)

    def embed(split):
        rs = load_retrieval_split(cfg.data, split, tok, model.config.image_size)
        x = np.concatenate(list(rs.iter_images(16)))
        e = np.asarray(model.apply({"params": params}, x, method=model.encode_image), np.float64)
        return (e / np.linalg.norm(e, axis=-1, keepdims=True)).astype(np.float32), rs

    (tr, tr_rs), (te, te_rs) = embed("target_train"), embed("target_test")
    want, _, _ = captioning.captioning_from_embeddings(
        tr, captions_by_image(tr_rs), te, captions_by_image(te_rs), tok, cfg.eval.captioning)
    for k in ("captioning/bleu4", "captioning/cider", "captioning/rouge_l"):
        assert values[k] == pytest.approx(want[k], abs=1e-6), k
    assert values["captioning/num_train_images"] == SPLITS["target_train"]
    assert os.path.getsize(os.path.join(out, "captioning_samples.md")) > 0
