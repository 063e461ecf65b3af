"""eval_lib: embedding extraction (batched, padded, sharded) and evaluate() end to end
on the generated demo data, with a small stand-in CLIP (the real one is exercised in
test_eval_e2e.py)."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import AxisType

from gmm_jax import eval_lib
from gmm_jax.data import demo
from tests.eval_fakes import SPLITS, FakeCLIP, FakeTokenizer, demo_eval_config


@pytest.fixture(scope="module")
def fake():
    model = FakeCLIP()
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                        jnp.zeros((1, 12), jnp.int32))["params"]
    return model, params, FakeTokenizer()


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("demo_data"))
    cfg = demo.GmmDemoConfig(name="evaltest", split_sizes=dict(SPLITS), num_workers=1)
    demo.builder(data_dir, cfg).download_and_prepare()
    return data_dir, cfg


def _config(data_dir, demo_cfg, **eval_overrides):
    c = demo_eval_config(data_dir, **eval_overrides)
    c.data.demo_config = demo_cfg
    return c


def _direct(model, params, method, x):
    f = np.asarray(model.apply({"params": params}, x, method=method), np.float64)
    return f / np.linalg.norm(f, axis=1, keepdims=True)


@pytest.mark.parametrize("use_mesh", [False, True])
def test_encoder_matches_direct_apply(fake, use_mesh):
    model, params, tok = fake
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)) if use_mesh else None
    enc = eval_lib.Encoder(model, params, batch_size=6, mesh=mesh, progress=False)
    assert enc.batch_size == (8 if use_mesh else 6)  # rounded up to the data axis
    rng = np.random.default_rng(0)
    images = rng.normal(size=(19, 16, 16, 3)).astype(np.float32)
    batches = [images[:5], images[5:17], images[17:]]  # uneven, one larger than the batch
    got = enc.images(iter(batches), total=19)
    assert got.shape == (19, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, _direct(model, params, "encode_image", images), atol=1e-5)
    tokens = tok([f"a photo of thing {i}" for i in range(11)], context_length=12)
    np.testing.assert_allclose(enc.texts(tokens), _direct(model, params, "encode_text", tokens),
                               atol=1e-5)
    img, txt = eval_lib.extract_embeddings(model, params, images=[images], tokens=tokens,
                                           batch_size=4, mesh=mesh, progress=False)
    np.testing.assert_allclose(img, got, atol=1e-5)
    assert txt.shape == (11, 8)


def test_default_config_and_helpers():
    c = eval_lib.default_eval_config()
    assert eval_lib.as_list(c.suites) == list(eval_lib.SUITES)
    assert tuple(c.fewshot.ks) == (1, 2, 4, 8, 16)
    assert eval_lib.as_list(" a, b ,,c") == ["a", "b", "c"] and eval_lib.as_list(("x",)) == ["x"]
    assert list(eval_lib._take(iter([np.zeros(4), np.zeros(4), np.zeros(4)]), 6)) [-1].shape == (2,)
    assert eval_lib.model_scale({"logit_scale": np.log(50.0)}) == pytest.approx(50.0)
    with pytest.raises(eval_lib.EvalError, match="logit_scale"):
        eval_lib.model_scale({})


REQUIRED_KEYS = (
    [f"retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    + ["retrieval/rsum", "gap/centroid_distance", "gap/linear_separability",
       "gap/mean_positive_cosine", "gap/uniformity", "gap/alignment", "gap/relative_alignment",
       "calibration/ece", "calibration/ece_i2t", "calibration/ece_t2i",
       "zeroshot/gmm_demo_target_test/top1", "zeroshot/gmm_demo_shift_background/top1",
       "zeroshot/gmm_demo_shift_combo/top1", "zeroshot/gmm_demo_shift_combo/ece",
       "zeroshot/mean_top1", "fewshot/k1", "fewshot/k2", "arithmetic/demo/score",
       "arithmetic/demo/best_lambda"])


def test_evaluate_all_suites_on_demo(fake, demo_data, tmp_path):
    model, params, tok = fake
    config = _config(*demo_data, **{"retrieval.extra_splits": "shift_combo"})
    out = str(tmp_path / "eval")
    values = eval_lib.evaluate(model, params, tok, config, out)
    for k in REQUIRED_KEYS + ["retrieval_shift_combo/rsum"]:
        assert k in values, k
    assert all(math.isfinite(v) for v in values.values()), values
    assert json.load(open(os.path.join(out, "metrics.json"))) == pytest.approx(values)
    for f in ("metrics.md", "gap_projection.png", "reliability.png", "recall.png", "embeddings.npz",
              "eval_info.json"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    with np.load(os.path.join(out, "embeddings.npz")) as z:
        assert z["image"].shape == z["text"].shape == (48, 8)
    # the reliability bins behind reliability.png: one i2t query per image
    rel = json.load(open(os.path.join(out, eval_lib.RELIABILITY_FILE)))
    assert sum(rel["retrieval i2t"]["count"]) == 48
    assert any(k.startswith("zero-shot") for k in rel), sorted(rel)
    assert values["calibration/scale"] == pytest.approx(20.0, rel=1e-5)
    assert values["arithmetic/demo/num_queries"] > 0
    # first_caption protocol and a fixed scale change what they should, nothing else
    config2 = _config(*demo_data, suites="retrieval,calibration",
                      **{"retrieval.protocol": "first_caption", "calibration.scale": 5.0})
    v2 = eval_lib.evaluate(model, params, tok, config2, str(tmp_path / "eval2"))
    assert set(v2) == {k for k in values if k.startswith(("retrieval/", "calibration/"))}
    assert v2["calibration/scale"] == 5.0
    # compare_runs over the two outputs has every run
    md, data = eval_lib.compare_runs([out, str(tmp_path / "eval2")], str(tmp_path / "cmp"))
    assert list(data["runs"]) == ["eval", "eval2"] and "eval2" in md.splitlines()[2]


def test_max_examples_caps_images(fake, demo_data, tmp_path):
    model, params, tok = fake
    config = _config(*demo_data, suites="geometry", max_examples=20)
    eval_lib.evaluate(model, params, tok, config, str(tmp_path))
    with np.load(tmp_path / "embeddings.npz") as z:
        assert z["image"].shape == (20, 8)


def test_missing_dataset_and_bad_config_are_clear(fake, demo_data, tmp_path):
    model, params, tok = fake
    bad_split = _config(*demo_data, suites="retrieval", **{"retrieval.split": "no_such_split"})
    with pytest.raises(eval_lib.EvalError, match="retrieval split 'no_such_split'"):
        eval_lib.evaluate(model, params, tok, bad_split, str(tmp_path))
    no_zs = _config(*demo_data, suites="zeroshot", **{"zeroshot.datasets": "not_a_dataset"})
    with pytest.raises(eval_lib.EvalError, match="not_a_dataset"):
        eval_lib.evaluate(model, params, tok, no_zs, str(tmp_path))
    with pytest.raises(eval_lib.EvalError, match="unknown suite"):
        eval_lib.evaluate(model, params, tok, _config(*demo_data, suites="retrieval,speed"),
                          str(tmp_path))
    simat = _config(*demo_data, suites="arithmetic",
                    **{"arithmetic.source": "simat", "arithmetic.simat_dir": str(tmp_path / "x")})
    with pytest.raises(eval_lib.EvalError, match="SIMAT"):
        eval_lib.evaluate(model, params, tok, simat, str(tmp_path))


def test_a_new_suite_plugs_in_without_driver_changes(fake, demo_data, tmp_path, monkeypatch):
    """A suite registered from outside the package runs by name, gets its own config
    section (defaults + log_every/at_end) and shares the retrieval embeddings."""
    from gmm_jax import evaluators
    from gmm_jax.evaluators import base
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # undone after the test
    seen = {}

    @evaluators.register("mean_cosine_test")
    class MeanCosine(evaluators.Evaluator):
        @staticmethod
        def defaults():
            return {"power": 1.0}

        def run(self, ctx):
            data = ctx.retrieval()
            seen["same_embeddings"] = data is ctx.retrieval(ctx.ecfg.retrieval.split)
            cos = np.sum(data.image[data.t2i] * data.text, axis=1)
            return evaluators.Result(
                {"mean_cosine_test/value": float(np.mean(cos) ** self.cfg.power)})

    model, params, tok = fake
    config = _config(*demo_data, suites="geometry,mean_cosine_test")
    values = eval_lib.evaluate(model, params, tok, config, str(tmp_path))
    assert seen["same_embeddings"]
    v = values["gap/mean_positive_cosine"]  # first-caption pairs: a different average
    assert np.isfinite(values["mean_cosine_test/value"]) and np.isfinite(v)
    assert eval_lib._section(config.eval, "mean_cosine_test").to_dict() == {
        "power": 1.0, "log_every": 0, "at_end": True}


def test_suites_due_per_suite_period():
    import ml_collections
    config = ml_collections.ConfigDict({"eval_every_steps": 100})
    config.eval = eval_lib.default_eval_config()
    config.eval.suites = "retrieval,geometry,zeroshot"
    config.eval.geometry.log_every = 30
    config.eval.zeroshot.log_every = -1
    config.eval.zeroshot.at_end = True
    config.eval.retrieval.at_end = False
    config.eval.geometry.at_end = False
    assert eval_lib.suites_due(config, 100, 1000) == ["retrieval"]
    assert eval_lib.suites_due(config, 90, 1000) == ["geometry"]
    assert eval_lib.suites_due(config, 300, 1000) == ["retrieval", "geometry"]
    assert eval_lib.suites_due(config, 1000, 1000) == ["retrieval", "zeroshot"]  # 1000 % 100
    assert eval_lib.suites_due(config, 990, 995) == ["geometry"]
    assert eval_lib.suites_due(config, 995, 995) == ["zeroshot"]  # the end, off-period
    assert eval_lib.suites_due(config, 7, 1000) == []
