"""WiSE-FT (gmm_jax.wise_ft): interpolation against a float64 NumPy restatement, the
curve's endpoints equal to a plain evaluation of each model (what eval.py runs), a clear
error for incompatible models, and the saved interpolated model loading everywhere."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from gmm_jax import checkpointing, eval_lib, pretrained, train_lib, wise_ft
from gmm_jax.data import demo
from gmm_jax.models import CLIP, get_config, init_params
from gmm_jax.tokenizer import Tokenizer
from tests import demo_tiny_config
from tests.train_step_setup import flat_leaves

pytestmark = pytest.mark.slow  # real fine-tuning runs and evaluations
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = "calibration,zeroshot"  # ECE of retrieval and zero-shot; ID and OOD accuracy


def _arch(vocab_size=600, **kw):
    return get_config("tiny", **{"vision_layers": 1, "text_layers": 1,
                                 "vocab_size": vocab_size, **kw})


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demoflow_data):
    """A: a model directory (random tiny CLIP). B: a real 2-step fine-tuning run from A
    (learned temperature). C: a run workdir whose checkpoint stores a softplus
    temperature parameter and perturbed weights (the loader must convert it)."""
    root = tmp_path_factory.mktemp("wise")
    data_dir = demoflow_data  # conftest: generated once per session
    cfg = demo_tiny_config.get_config(data_dir)
    texts = [c.decode() for ex in demo.builder(data_dir, cfg.data.demo_config).as_dataset(
        split="target_train").as_numpy_iterator() for c in ex["captions"]]
    texts += [t.format(c) for t in demo.TEMPLATES for c in demo.CLASS_NAMES]
    tok = Tokenizer.train(texts, vocab_size=600, context_length=16)
    model = CLIP(_arch(tok.vocab_size))
    params_a = jax.tree.map(np.asarray, init_params(model, jax.random.key(0)))
    a_dir = pretrained.save_pretrained(str(root / "zeroshot_model"), model.config, params_a, tok)

    b_dir = str(root / "ft")
    cfg = demo_tiny_config.get_config(data_dir)
    del cfg.demo
    for f in train_lib.MODEL_FIELDS:
        cfg.model[f] = None
    cfg.model.preset = "tiny"
    cfg.init = a_dir
    cfg.total_steps = 2
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_frac = 0.0
    cfg.loss.temperature = "learned"
    train_lib.train_and_evaluate(cfg, b_dir)

    c_dir = root / "softplus_run"
    rng = np.random.default_rng(1)
    params_c = jax.tree.map(lambda x: (x + 0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                            params_a)
    params_c["logit_scale"] = np.float32(3.0)  # nu: scale = softplus(3.0)
    pretrained.save_config(str(c_dir), model.config)
    tok.save(str(c_dir / pretrained.TOKENIZER_DIR))
    ckpt = checkpointing.TrainCheckpointer(str(c_dir), async_save=False)
    ckpt.save(5, {"params": params_c, "step": np.int32(5)}, {"epoch": 0},
              json.dumps({"loss": {"temperature": "softplus", "temp_exp_s": 1.0}}))
    ckpt.close()
    return {"root": root, "data_dir": data_dir, "A": a_dir, "B": b_dir, "C": str(c_dir),
            "tok": tok}


def _np64(tree):
    return {k: np.asarray(v, np.float64) for k, v in flat_leaves(tree).items()}


def test_interpolation_is_the_weighted_sum_of_every_tensor(runs):
    _, pa, _ = wise_ft.load_model(runs["A"])
    _, pb, _ = wise_ft.load_model(runs["C"])
    a64, b64 = _np64(pa), _np64(pb)
    for alpha in (0.0, 0.3, 0.75, 1.0):
        got = flat_leaves(wise_ft.interpolate(pa, pb, alpha))
        assert got.keys() == a64.keys()
        for k in got:
            want = (1 - alpha) * a64[k] + alpha * b64[k]
            np.testing.assert_allclose(np.asarray(got[k], np.float64), want, rtol=1e-6,
                                       atol=1e-6, err_msg=f"{k} alpha={alpha}")
            assert np.asarray(got[k]).dtype == np.asarray(flat_leaves(pa)[k]).dtype
    # Endpoints are the models themselves, bit for bit.
    for alpha, ref in ((0.0, pa), (1.0, pb)):
        got, want = flat_leaves(wise_ft.interpolate(pa, pb, alpha)), flat_leaves(ref)
        for k in want:
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    # The temperature: C's softplus parameter was converted to log(scale) on loading, so
    # the interpolated scale is the geometric interpolation of the two scales.
    scale_a, scale_c = math.exp(float(pa["logit_scale"])), math.log1p(math.exp(3.0))
    mid = wise_ft.interpolate(pa, pb, 0.25)
    assert eval_lib.model_scale(mid) == pytest.approx(scale_a ** 0.75 * scale_c ** 0.25,
                                                      rel=1e-5)


def test_parse_alphas():
    assert wise_ft.parse_alphas("0,0.1,...,1") == pytest.approx(
        [i / 10 for i in range(11)], abs=1e-12)
    assert wise_ft.parse_alphas("0, 0.5,1,0.5") == [0.0, 0.5, 1.0]
    for bad, msg in (("", "empty"), ("0,x", "'x' is not a number"),
                     ("0,0.3,...,1", "not reached"), ("0,...,1", "first,second,...,last")):
        with pytest.raises(wise_ft.WiseFTError, match=msg):
            wise_ft.parse_alphas(bad)


def _abstract(cfg):
    """The parameter shapes of a model config, without computing anything."""
    model = CLIP(cfg)
    return jax.eval_shape(lambda: init_params(model, jax.random.key(0)))


def test_incompatible_models_name_the_first_mismatch():
    base, deeper = _arch(), _arch(vision_layers=2)
    pa = _abstract(base)
    with pytest.raises(wise_ft.WiseFTError, match="different architectures: model config "
                                                  "'vision_layers' is 1 in A and 2 in B"):
        wise_ft.check_compatible(pa, _abstract(deeper), "A", "B", base, deeper)
    # Without configs, the tensor trees alone: a missing tensor, then a shape.
    with pytest.raises(wise_ft.WiseFTError, match=r"tensor \['visual'\].*missing from B"):
        wise_ft.check_compatible(pa, {k: v for k, v in pa.items() if k != "visual"}, "A", "B")
    with pytest.raises(wise_ft.WiseFTError, match=r"tensor \['logit_scale'\] of B.*missing "
                                                  "from A"):
        wise_ft.check_compatible({k: v for k, v in pa.items() if k != "logit_scale"}, pa,
                                 "A", "B")
    wider = _abstract(_arch(embed_dim=48))
    a_flat, w_flat = flat_leaves(pa), flat_leaves(wider)
    first = next(k for k in a_flat if a_flat[k].shape != w_flat[k].shape)
    with pytest.raises(wise_ft.WiseFTError) as e:
        wise_ft.check_compatible(pa, wider, "A", "B")
    assert str(e.value) == (f"different shapes: tensor {first} is {a_flat[first].shape} "
                            f"in A and {w_flat[first].shape} in B")
    # Same shapes, other activation: only the config tells them apart.
    with pytest.raises(wise_ft.WiseFTError, match="model config 'act'"):
        wise_ft.check_compatible(pa, pa, "A", "B", base, base.replace(act="gelu"))
    wise_ft.check_compatible(pa, pa, "A", "B", base, base.replace(dtype="bfloat16"))


def _cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "gmm_jax.wise_ft", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _config_flag(runs):
    return f"--config={os.path.join(ROOT, 'tests', 'demo_tiny_config.py')}:{runs['data_dir']}"


def test_cli_curve_endpoints_reproduce_eval(runs):
    out = runs["root"] / "curve"
    r = _cli(f"--zeroshot={runs['A']}", f"--finetuned={runs['B']}", f"--finetuned={runs['C']}",
             "--alphas=0,1", _config_flag(runs), f"--out={out}",
             f"--config.eval.suites={SUITES}", "--config.eval.progress=False")
    assert r.returncode == 0, r.stderr[-4000:]
    data = json.load(open(out / "wise_ft.json"))
    assert data["alphas"] == [0.0, 1.0]
    assert list(data["metrics"]) == ["ft", "softplus_run"]
    assert data["id_metric"] == "zeroshot/gmm_demo_target_test/top1"
    assert data["ood_metrics"] == ["zeroshot/gmm_demo_shift_background/top1",
                                   "zeroshot/gmm_demo_shift_combo/top1"]
    for f in ("wise_ft.md", "wise_ft_id_ood.png", "wise_ft_ece.png"):
        assert os.path.getsize(out / f) > 0
    md = open(out / "wise_ft.md").read()
    assert "## ft" in md and "## softplus_run" in md

    # eval.py's path: load (model dir / run workdir), evaluate on a data mesh.
    config = demo_tiny_config.get_config(runs["data_dir"])
    config.eval.suites = SUITES
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    model, pa, tok = pretrained.load_pretrained(runs["A"])
    ref = {"A": eval_lib.evaluate(model, pa, tok, config, str(runs["root"] / "ref_a"),
                                  mesh=mesh)}
    for name, key in (("ft", "B"), ("softplus_run", "C")):
        model, pb, tok, _ = train_lib.load_checkpoint(runs[key])
        ref[key] = eval_lib.evaluate(model, pb, tok, config, str(runs["root"] / f"ref_{key}"),
                                     mesh=mesh)
        rows = data["metrics"][name]
        for alpha_index, want in ((0, ref["A"]), (1, ref[key])):
            got = rows[alpha_index]
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), (name, k)
    # The comparison can fail: the three models evaluate differently.
    assert len({round(r["calibration/scale"], 3) for r in ref.values()}) == 3


def test_cli_saves_the_interpolated_model_and_names_a_mismatch(runs, tmp_path):
    save_to = tmp_path / "wise_0.5"
    r = _cli(f"--zeroshot={runs['A']}", f"--finetuned={runs['B']}", "--save-alpha=0.5",
             f"--save-to={save_to}")
    assert r.returncode == 0, r.stderr[-4000:]
    model, params, tok = pretrained.load_pretrained(str(save_to))
    _, pa, _ = wise_ft.load_model(runs["A"])
    _, pb, _ = wise_ft.load_model(runs["B"])
    want = flat_leaves(wise_ft.interpolate(pa, pb, 0.5))
    got = flat_leaves(params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    assert tok.encoder == runs["tok"].encoder
    # train.py's config.init reads it ...
    cfg = train_lib.default_config()
    cfg.init = str(save_to)
    m2, p2, _ = train_lib.build_model_and_tokenizer(cfg, str(tmp_path / "next_run"))
    assert m2.config.embed_dim == model.config.embed_dim
    for k, v in flat_leaves(p2).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(want[k]), err_msg=k)
    # ... and so does the Hugging Face export.
    from transformers import CLIPModel

    from gmm_jax import convert
    convert.to_hf(model, params, str(tmp_path / "hf"))
    hf = CLIPModel.from_pretrained(str(tmp_path / "hf"))
    assert hf.logit_scale.item() == pytest.approx(float(params["logit_scale"]), rel=1e-6)

    # A model of another architecture: one clear line naming the first difference.
    other = tmp_path / "other"
    tok = runs["tok"]
    om = CLIP(_arch(tok.vocab_size, embed_dim=48))
    pretrained.save_pretrained(str(other), om.config, init_params(om, jax.random.key(1)), tok)
    r = _cli(f"--zeroshot={runs['A']}", f"--finetuned={other}", "--save-alpha=0.5",
             f"--save-to={tmp_path / 'never'}")
    assert r.returncode == 2
    assert "model config 'embed_dim' is 32" in r.stderr and "48" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "never").exists()


def test_report_chooses_id_and_ood_metrics_and_writes_files(tmp_path):
    from gmm_jax import wise_ft_report

    def row(a, shift):
        return {"zeroshot/target/top1": 50 + 10 * a, "zeroshot/target/ece": 0.1 - 0.05 * a,
                "zeroshot/shift1/top1": 40 + shift * a, "zeroshot/shift2/top1": 30 - shift * a,
                "zeroshot/shift1/ece": 0.2, "zeroshot/shift2/ece": 0.3,
                "zeroshot/mean_top1": 0.0, "calibration/ece": 0.05 + a / 10}

    alphas = [0.0, 0.5, 1.0]
    result = {"alphas": alphas, "metrics": {"ft": [row(a, 4) for a in alphas],
                                            "m2mix": [row(a, 2) for a in alphas]}}
    id_key, ood, ece = wise_ft_report.choose_metrics(result["metrics"]["ft"][0])
    assert id_key == "zeroshot/target/top1"
    assert ood == ["zeroshot/shift1/top1", "zeroshot/shift2/top1"]
    assert ece == ["calibration/ece", "zeroshot/target/ece", "zeroshot/shift1/ece",
                   "zeroshot/shift2/ece"]
    md = wise_ft_report.write(result, str(tmp_path), ood_metrics="zeroshot/shift1/top1")
    table = [line for line in md.splitlines() if line.startswith("| 0.5 ")]
    # ft at alpha 0.5: ID 55, OOD 40 + 4 * 0.5 = 42, calibration ECE 0.1
    assert table[0].startswith("| 0.5 | 55.00 | 42.00 | 0.1000 |")
    data = json.load(open(tmp_path / "wise_ft.json"))
    assert data["ood_metrics"] == ["zeroshot/shift1/top1"] and data["alphas"] == alphas
    assert [r["zeroshot/target/top1"] for r in data["metrics"]["m2mix"]] == [50, 55, 60]
    for f in ("wise_ft_id_ood.png", "wise_ft_ece.png"):
        assert os.path.getsize(tmp_path / f) > 0
    # A held-out run with only the ID set: no OOD metric, the figure shows ID vs alpha.
    only_id = {k: v for k, v in row(0, 0).items() if "shift" not in k}
    assert wise_ft_report.choose_metrics(only_id)[1] == []
    wise_ft_report.write({"alphas": [0.0], "metrics": {"ft": [only_id]}}, str(tmp_path / "heldout"))
    assert os.path.getsize(tmp_path / "heldout" / "wise_ft_id_ood.png") > 0
    with pytest.raises(wise_ft.WiseFTError, match="--ood-metrics: metric 'nope'"):
        wise_ft_report.choose_metrics(only_id, ood_metrics="nope")
