"""The demo flow end to end at toy size through ``python train.py`` (pre-train, fine-tune
ft and m2mix, evaluate, report); then a second invocation that must reuse every finished
stage.

The first invocation runs in a subprocess on one CPU device with XLA's backend
optimisation off: compiling the three train steps dominates this test, and that halves it
(the demo's own command also runs on one device). Sharded training and evaluation are
tested elsewhere."""
import json
import math
import os
import subprocess
import sys

import pytest

from gmm_jax import demo_flow, train_lib
from gmm_jax.configs.default import get_config as default_config
from gmm_jax.loss_spec import LossSpec
from tests.demo_tiny_config import demo_config as _demo_config
from tests.demo_tiny_config import get_config as tiny_demo_config

pytestmark = pytest.mark.slow  # the whole demo through train.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = (["retrieval/i2t_r1", "retrieval/t2i_r1", "retrieval/i2t_r5", "retrieval/t2i_r10",
             "retrieval/rsum", "retrieval_shift_background/rsum", "retrieval_shift_combo/rsum",
             "gap/centroid_distance", "gap/linear_separability", "gap/uniformity",
             "gap/alignment", "gap/relative_alignment", "gap/mean_positive_cosine",
             "calibration/ece", "calibration/scale", "zeroshot/gmm_demo_target_test/top1",
             "zeroshot/gmm_demo_shift_background/top1", "zeroshot/gmm_demo_shift_combo/ece",
             "zeroshot/mean_top1", "fewshot/k1", "arithmetic/demo/score"])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_flow")
    data_dir, workdir = str(root / "data"), str(root / "run")
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 "
                         "--xla_backend_optimization_level=0")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'tests', 'demo_tiny_config.py')}:{data_dir}",
         f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for banner in ("[1/7] pre-training", "[2/7] fine-tuning 'ft'", "[3/7] fine-tuning 'm2mix'",
                   "[4/7] evaluating", "[5/7] WiSE-FT", "[6/7] captioning", "[7/7] report"):
        assert banner in proc.stdout, banner
    assert f"Report: {os.path.join(workdir, 'demo_report.md')}" in proc.stdout
    with open(os.path.join(workdir, "demo_report.json")) as f:
        report = json.load(f)
    return tiny_demo_config(data_dir), workdir, {k: report[k] for k in
                                                  ("runs", "wise_ft", "captioning")}


def test_report_has_every_run_with_finite_metrics(demo_run):
    config, workdir, out = demo_run
    with open(os.path.join(workdir, "demo_report.json")) as f:
        report = json.load(f)
    assert list(report["runs"]) == ["pretrained", "ft", "m2mix"]
    for name, metrics in report["runs"].items():
        for k in REQUIRED:
            assert k in metrics, (name, k)
        for k, v in metrics.items():
            assert isinstance(v, (int, float)) and math.isfinite(v), (name, k, v)
        # the same numbers as the run's own eval output (what eval.py writes)
        stage = "pretrain" if name == "pretrained" else name
        with open(os.path.join(workdir, stage, "eval", "metrics.json")) as f:
            assert json.load(f) == metrics
    for f in ("demo_report.md", "gap_side_by_side.png", "gap_ft_vs_m2mix.png"):
        assert os.path.getsize(os.path.join(workdir, f)) > 1000, f
    md = open(os.path.join(workdir, "demo_report.md")).read()
    assert "| `retrieval/rsum` |" in md and "m2mix" in md
    # each stage is an ordinary finished run: checkpoint at its last step
    steps = {name: s["step"] for name, s in report["meta"]["stages"].items()}
    assert steps == {"pretrained": 6, "ft": 3, "m2mix": 3}
    for name in ("ft", "m2mix"):
        _, _, _, step = train_lib.load_checkpoint(os.path.join(workdir, name))
        assert step == 3


def test_fine_tuning_used_the_pretrained_model_and_the_recipe(demo_run):
    config, workdir, out = demo_run
    pre = os.path.join(workdir, "pretrain")
    scale_p = out["runs"]["pretrained"]["calibration/scale"]  # exp(learned logit_scale)
    for name, method in (("ft", "clip"), ("m2mix", "m2mix")):
        with open(os.path.join(workdir, name, "config.json")) as f:
            cfg = json.load(f)
        assert cfg["loss"]["method"] == method
        assert cfg["init"] == os.path.join(pre, "model")
        assert cfg["data"]["train_split"] == "target_train"
        # fixed tau = the pre-trained model's learned one (tau_from_pretrained)
        assert cfg["loss"]["temperature"] == "fixed"
        assert 1.0 / cfg["loss"]["tau"] == pytest.approx(scale_p, rel=1e-4)
        assert out["runs"][name]["calibration/scale"] == pytest.approx(scale_p, rel=1e-4)
    with open(os.path.join(pre, "config.json")) as f:
        pcfg = json.load(f)
    assert pcfg["data"]["train_split"] == "source_train" and pcfg["init"] is None
    assert pcfg["loss"]["temperature"] == "learned"
    # fine-tuning changed the weights, differently per recipe
    ft, m2 = out["runs"]["ft"], out["runs"]["m2mix"]
    assert ft != out["runs"]["pretrained"] and ft != m2


def _mtimes(path):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
            for d, _, files in os.walk(path) for f in files}


def test_second_invocation_reuses_finished_stages(demo_run, capsys):
    config, workdir, out = demo_run
    ckpts = {n: _mtimes(os.path.join(workdir, d, "checkpoints"))
             for n, d in (("pretrain", "pretrain"), ("ft", "ft"))}
    before = os.path.getmtime(os.path.join(workdir, "pretrain", "eval", "metrics.json"))
    extras = {f: os.path.getmtime(os.path.join(workdir, f))
              for f in ("wise_ft/wise_ft.json", "captioning/captioning.json")}
    out2 = demo_flow.run(config, workdir)
    text = capsys.readouterr().out
    assert text.count("reusing the finished run") == 3
    for n, d in (("pretrain", "pretrain"), ("ft", "ft")):
        assert _mtimes(os.path.join(workdir, d, "checkpoints")) == ckpts[n]
    assert os.path.getmtime(os.path.join(workdir, "pretrain", "eval", "metrics.json")) == before
    assert out2["runs"] == out["runs"]
    for f, t in extras.items():  # the WiSE-FT and captioning stages were reused too
        assert os.path.getmtime(os.path.join(workdir, f)) == t, f
    with open(out2["report"]["json"]) as f:
        report2 = json.load(f)
    assert report2["wise_ft"] == out["wise_ft"] and report2["captioning"] == out["captioning"]
    assert f"Report: {os.path.join(workdir, 'demo_report.md')}" in text


def test_data_moved_elsewhere_reuses_every_stage(demo_run, tmp_path, capsys):
    """The same data at another path (a copy in a bucket, say) is the same data: training
    stages, evaluations, WiSE-FT and captioning are all reused; the demo world's version
    and every other data key still count."""
    import copy
    import shutil
    config, workdir, out = demo_run
    moved = copy.deepcopy(config)
    moved.data.data_dir = str(tmp_path / "moved")
    shutil.copytree(config.data.data_dir, moved.data.data_dir)
    files = ["pretrain/eval/metrics.json", "ft/eval/metrics.json", "m2mix/eval/metrics.json",
             "wise_ft/wise_ft.json", "captioning/captioning.json"]
    before = {f: os.path.getmtime(os.path.join(workdir, f)) for f in files}
    out2 = demo_flow.run(moved, workdir)
    assert capsys.readouterr().out.count("reusing the finished run") == 3
    assert {f: os.path.getmtime(os.path.join(workdir, f)) for f in files} == before
    assert out2["runs"] == out["runs"]

    ident = demo_flow.data_identity(config.data, "train_split")
    assert ident == demo_flow.data_identity(moved.data, "train_split")
    assert "data_dir" not in ident and "train_split" not in ident
    from gmm_jax.data import demo as demo_data
    assert ident["demo_version"] == str(demo_data.GmmDemo.VERSION)
    other = copy.deepcopy(config.data)
    other.eval_split = "shift_combo"
    assert demo_flow.data_identity(other, "train_split") != ident


def test_eval_record_keeps_every_eval_setting_but_the_progress_bar(demo_run):
    """An evaluation is reused only for the same eval settings and data: the record is the
    eval config (without ``progress``) and ``data_identity`` (without the training split)."""
    import copy
    config, _, _ = demo_run
    ecfg = demo_flow.eval_config(config)
    rec = demo_flow.eval_record(ecfg)
    want = json.loads(ecfg.eval.to_json_best_effort(sort_keys=True))
    want.pop("progress")
    assert rec == {"eval": want, "data": demo_flow.data_identity(ecfg.data, "train_split")}
    quiet = copy.deepcopy(ecfg)
    quiet.eval.progress = not ecfg.eval.progress
    quiet.data.train_split = "source_train"
    assert demo_flow.eval_record(quiet) == rec
    scalars = [k for k, v in want.items() if isinstance(v, (bool, int, float, str))]
    assert len(scalars) >= 3, scalars
    for key in scalars:  # any other eval setting changes the record
        other = copy.deepcopy(ecfg)
        v = other.eval[key]
        other.eval[key] = (not v if isinstance(v, bool) else v + "x" if isinstance(v, str)
                           else v + 1)
        assert demo_flow.eval_record(other) != rec, key


def test_changed_training_config_is_refused_not_resumed(demo_run):
    config, workdir, _ = demo_run
    import copy
    changed = copy.deepcopy(config)
    changed.demo.pretrain.lr = 5e-3
    with pytest.raises(demo_flow.DemoError, match="different training config"):
        demo_flow.run(changed, workdir)


def test_demo_section_validation():
    config = _demo_config()
    assert demo_flow.run_names(config) == ["ft", "m2mix"]
    with config.unlocked():
        config.demo.bogus = 1
    with pytest.raises(demo_flow.DemoError, match="demo.bogus"):
        demo_flow.validate_demo(config)
    config = _demo_config()
    config.demo.runs = "ft,nope"
    with pytest.raises(demo_flow.DemoError, match="nope"):
        demo_flow.validate_demo(config)
    config = _demo_config()
    with config.ignore_type():
        config.demo.pretrain.lr = "fast"
    with pytest.raises(demo_flow.DemoError, match="pretrain.lr"):
        demo_flow.validate_demo(config)
    # the WiSE-FT and captioning knobs: a bad value names its key
    for key, value, match in (("wise_ft.alphas", "0,x", "demo.wise_ft.alphas"),
                              ("captioning.seeds", "0,0", "demo.captioning.seeds"),
                              ("captioning.heads", 3, "demo.captioning.width=64 is not "
                                                      "divisible by heads=3")):
        config = _demo_config()
        section, k = key.split(".")
        config.demo[section][k] = value
        with pytest.raises(demo_flow.DemoError, match=match):
            demo_flow.validate_demo(config)
    config.demo.captioning.enabled = False  # a disabled stage is not checked
    demo_flow.validate_demo(config)
    # the stage configs are ordinary configs: validated against gmm_jax/configs/default.py
    config = _demo_config()
    for cfg in (demo_flow.pretrain_config(config),
                demo_flow.finetune_config(config, "m2mix", "/tmp/model", 0.05)):
        assert "demo" not in cfg
        train_lib.validate_config(cfg)
    for name, recipe in demo_flow.RECIPES.items():  # every recipe is a valid config
        cfg = demo_flow.finetune_config(config, name, "/tmp/model", None)
        assert {k: cfg.loss[k] for k in recipe} == recipe, name
        LossSpec.from_config(cfg.loss)
    with pytest.raises(ValueError, match="unknown config key"):
        train_lib.validate_config(config)  # the demo section itself is not a train config
    config.log_every_steps = 0  # a stage config error names the stage and the key
    with pytest.raises(demo_flow.DemoError, match="pre-training config: config.log_every_steps"):
        demo_flow.pretrain_config(config)


# Metrics of the WiSE-FT rows: what config.demo.wise_ft.suites evaluates.
WISE_KEYS = ("retrieval/rsum", "retrieval_shift_combo/rsum", "calibration/ece",
             "zeroshot/gmm_demo_target_test/top1", "zeroshot/gmm_demo_shift_background/ece")


def test_wise_ft_ends_are_the_report_rows(demo_run):
    """alpha = 0 is the pre-trained model and alpha = 1 each run: their interpolated,
    re-evaluated rows equal the report's own evaluation of those models."""
    config, workdir, out = demo_run
    wise = out["wise_ft"]
    assert wise["alphas"] == [0.0, 1.0] and list(wise["metrics"]) == ["ft", "m2mix"]
    assert wise["id_metric"] == "zeroshot/gmm_demo_target_test/top1"
    assert sorted(wise["ood_metrics"]) == ["zeroshot/gmm_demo_shift_background/top1",
                                           "zeroshot/gmm_demo_shift_combo/top1"]
    for name, rows in wise["metrics"].items():
        for alpha, row in zip(wise["alphas"], rows):
            ref = out["runs"]["pretrained" if alpha == 0 else name]
            assert set(WISE_KEYS) <= set(row) and not any(k.startswith("gap/") for k in row)
            for k, v in row.items():  # ECEs differ in the 8th digit (summation order)
                assert v == pytest.approx(ref[k], rel=1e-5, abs=1e-7), (name, alpha, k)
    assert wise["metrics"]["ft"][1] != wise["metrics"]["m2mix"][1]
    for f in ("wise_ft_id_ood.png", "wise_ft_ece.png", "wise_ft.md"):
        assert os.path.getsize(os.path.join(workdir, "wise_ft", f)) > 500, f
    md = open(os.path.join(workdir, "demo_report.md")).read()
    assert "(wise_ft/wise_ft_id_ood.png)" in md and "(wise_ft/wise_ft_ece.png)" in md
    assert "## Robustness: WiSE-FT" in md


def test_captioning_equals_the_library_on_the_same_embeddings(demo_run):
    """The report's captioning numbers are gmm_jax.captioning's, called here directly on
    the stage's cached embeddings with the tiny config's captioner settings."""
    import numpy as np

    from gmm_jax.captioning import captioning_config, captioning_from_embeddings
    from gmm_jax.captioning.suite import captions_by_image
    from gmm_jax.data import load_retrieval_split
    from gmm_jax.pretrained import load_pretrained
    config, workdir, out = demo_run
    cap = out["captioning"]
    assert cap["seeds"] == [0, 1] and list(cap["runs"]) == ["pretrained", "ft", "m2mix"]
    model, _, tok = load_pretrained(os.path.join(workdir, "pretrain", "model"))
    caps = {s: captions_by_image(load_retrieval_split(config.data, s, tok,
                                                      model.config.image_size))
            for s in ("target_train", "target_test")}
    cfg = captioning_config()
    cfg.update(dict(steps=4, batch_size=16, prefix_length=4, width=32, layers=1, heads=2,
                    beam_size=2, max_length=24, java_metrics=""))
    embs = {}
    for name, r in cap["runs"].items():
        emb = {role: np.load(os.path.join(workdir, "captioning", f))["embeddings"]
               for role, f in r["embeddings"].items()}
        assert emb["train"].shape[0] == 48 and emb["test"].shape[0] == 8  # max_test_images
        embs[name] = emb["test"]
        for seed, got in zip(cap["seeds"], r["per_seed"]):
            cfg.seed = seed
            want, _, hyps = captioning_from_embeddings(
                emb["train"], caps["target_train"], emb["test"], caps["target_test"][:8],
                tok, cfg, java=None)
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-9), (name, seed, k)
            if seed == cap["samples"]["seed"]:
                assert cap["samples"]["captions"][name] == hyps[:3]
        vals = [row["captioning/cider"] for row in r["per_seed"]]
        assert r["mean"]["captioning/cider"] == pytest.approx(np.mean(vals))
        assert r["std"]["captioning/cider"] == pytest.approx(np.std(vals, ddof=1))
    assert not np.allclose(embs["pretrained"], embs["ft"])  # each model's own embeddings
    md = open(os.path.join(workdir, "demo_report.md")).read()
    assert "## Captioning on frozen image embeddings" in md and "`captioning/cider`" in md


def test_a_model_directory_as_the_pretrained_model(demo_run, tmp_path):
    """The default demo loads a shipped model *directory*, not a run: WiSE-FT and
    captioning take it as the pre-trained end and give what they gave with the run whose
    export it is (the default demo once crashed here: no stage marker for it)."""
    import shutil

    from gmm_jax import demo_extras, demo_model
    config, workdir, out = demo_run
    shipped = str(tmp_path / "shipped")
    shutil.copytree(os.path.join(workdir, "pretrain", demo_flow.MODEL_DIR), shipped)
    with open(os.path.join(workdir, "pretrain", demo_flow.STAGE_MARKER)) as f:
        step = json.load(f)["step"]
    with open(os.path.join(shipped, demo_model.METRICS_FILE), "w") as f:
        json.dump({"tau": out["runs"]["pretrained"]["calibration/scale"] ** -1,
                   "step": step}, f)
    marker = demo_flow.shipped_marker(shipped)
    assert marker["step"] == step and demo_flow.shipped_marker(shipped) == marker
    with open(os.path.join(workdir, "ft", demo_flow.STAGE_MARKER)) as f:
        markers = {"pretrained": marker, "ft": json.load(f)}
    stages = {"pretrained": {"dir": shipped, "shipped": True},
              "ft": {"dir": os.path.join(workdir, "ft")}}
    eval_dirs = {"pretrained": os.path.join(workdir, "pretrain", "eval"),
                 "ft": os.path.join(workdir, "ft", "eval")}
    wise = demo_extras.wise_ft_stage(config, str(tmp_path), stages, markers, ["ft"],
                                     demo_flow._mesh(), eval_dirs)
    for got, want in zip(wise["metrics"]["ft"], out["wise_ft"]["metrics"]["ft"]):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    cap = demo_extras.captioning_stage(config, str(tmp_path), stages, markers,
                                       ["pretrained", "ft"])
    for name in ("pretrained", "ft"):
        for got, want in zip(cap["runs"][name]["per_seed"],
                             out["captioning"]["runs"][name]["per_seed"]):
            scores = [k for k in want if k.startswith("captioning/") and "seconds" not in k]
            assert scores and {k: got[k] for k in scores} == pytest.approx(
                {k: want[k] for k in scores}, rel=1e-5, abs=1e-6), name


def test_wise_ft_ends_default_to_the_models_own_evaluations(tmp_path):
    """Without reevaluate_ends the alpha = 0 / 1 rows are the pre-trained model's and the
    run's eval/metrics.json, on the keys of the interpolated rows."""
    from gmm_jax import demo_extras, report
    dirs = {}
    for name, v in (("pretrained", 1.0), ("ft", 3.0)):
        dirs[name] = str(tmp_path / name)
        report.write_metrics({"zeroshot/x/top1": v, "gap/uniformity": -v}, dirs[name])
    curve = {"alphas": [0.5], "metrics": {"ft": [{"zeroshot/x/top1": 2.0}]}}
    out = demo_extras._with_ends(curve, [0.0, 0.5, 1.0], [0.5], dirs)
    assert out["alphas"] == [0.0, 0.5, 1.0]
    assert out["metrics"]["ft"] == [{"zeroshot/x/top1": 1.0}, {"zeroshot/x/top1": 2.0},
                                    {"zeroshot/x/top1": 3.0}]


def test_stages_survive_a_new_config_key_at_its_default(tmp_path):
    """A stage recorded before a key was added to configs/default.py is reused while that
    key keeps its default, and refused when it does not (or when a recorded key changed)."""
    config = tiny_demo_config(str(tmp_path / "data"))
    cfg = demo_flow.finetune_config(config, "ft", str(tmp_path / "init"), 0.02)
    stage = tmp_path / "ft"
    os.makedirs(stage / "checkpoints" / "7")

    def record(fp_dict):
        with open(stage / demo_flow.STAGE_MARKER, "w") as f:
            json.dump({"fingerprint": json.dumps(fp_dict, sort_keys=True), "done": True,
                       "step": 7}, f)

    now = json.loads(demo_flow.fingerprint(cfg))
    assert now["optim"]["grad_clip"] == default_config().optim.grad_clip
    old = json.loads(demo_flow.fingerprint(cfg))
    del old["optim"]["grad_clip"]  # as if recorded before the key existed
    record(old)
    assert demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))
    cfg.optim.grad_clip = 1.0          # the new knob used: not what was trained
    with pytest.raises(demo_flow.DemoError, match="different training config"):
        demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))
    record(json.loads(demo_flow.fingerprint(cfg)))
    cfg.optim.lr = 0.5                  # a recorded key changed
    with pytest.raises(demo_flow.DemoError, match="different training config"):
        demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))
    old = json.loads(demo_flow.fingerprint(cfg))
    del old["data"]["name"]             # missing key whose value is not the default
    record(old)
    with pytest.raises(demo_flow.DemoError, match="different training config"):
        demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))


def test_an_ft_stage_is_shared_across_loss_knobs_it_never_reads(tmp_path):
    """ft (CLIP loss) does not read loss.c_m2: a finished ft stage serves every c_m2 of a
    sweep; an m2mix stage does not, nor does ft once swapping (which it reads) changes."""
    config = tiny_demo_config(str(tmp_path / "data"))
    for name, shared in (("ft", True), ("m2mix", False)):
        stage = tmp_path / name
        os.makedirs(stage / "checkpoints" / "7")
        cfg = demo_flow.finetune_config(config, name, str(tmp_path / "init"), 0.02)
        with open(stage / demo_flow.STAGE_MARKER, "w") as f:
            json.dump({"fingerprint": demo_flow.fingerprint(cfg), "done": True, "step": 7}, f)
        cfg.loss.c_m2 = cfg.loss.c_m2 * 5
        if shared:
            assert demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))
            cfg.loss.swap, cfg.loss.swap_p = "hard", 0.5
        with pytest.raises(demo_flow.DemoError, match="different training config"):
            demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg))


def test_a_stage_knows_its_start_model_by_content_and_its_world_by_version(tmp_path):
    """The same pre-trained model at another path (another install of the package) is the
    same start; a changed model at the same path is not, nor is another version of the
    demo world; the refusal names the keys that differ."""
    import shutil

    from gmm_jax import demo_model
    from gmm_jax.data import demo as demo_data
    config = tiny_demo_config(str(tmp_path / "data"))
    a, b = tmp_path / "install_a" / "demo_clip", tmp_path / "install_b" / "demo_clip"
    shutil.copytree(demo_model.shipped_dir(), a)
    shutil.copytree(demo_model.shipped_dir(), b)
    stage = tmp_path / "ft"
    os.makedirs(stage / "checkpoints" / "7")

    def record(fp):
        with open(stage / demo_flow.STAGE_MARKER, "w") as f:
            json.dump({"fingerprint": fp, "done": True, "step": 7}, f)

    fp_a = demo_flow.fingerprint(demo_flow.finetune_config(config, "ft", str(a), 0.02))
    assert json.loads(fp_a)["data"]["demo_version"] == str(demo_data.GmmDemo.VERSION)
    record(fp_a)
    cfg_b = demo_flow.finetune_config(config, "ft", str(b), 0.02)
    assert demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg_b))
    with open(b / "metrics.json", "a") as f:  # the model at b is now another model
        f.write(" ")
    with pytest.raises(demo_flow.DemoError, match=r"differs in init\)"):
        demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg_b))
    older_world = json.loads(fp_a)
    older_world["data"]["demo_version"] = "3.0.0"
    record(json.dumps(older_world, sort_keys=True))
    with pytest.raises(demo_flow.DemoError, match=r"differs in data\.demo_version\)"):
        demo_flow.stage_done(str(stage), fp_a)
    record(fp_a)  # ft never reads c_m2: only the learning rate is named
    cfg_a = demo_flow.finetune_config(config, "ft", str(a), 0.02)
    cfg_a.loss.c_m2, cfg_a.optim.lr = cfg_a.loss.c_m2 * 5, cfg_a.optim.lr * 2
    with pytest.raises(demo_flow.DemoError, match=r"differs in optim\.lr\)"):
        demo_flow.stage_done(str(stage), demo_flow.fingerprint(cfg_a))


def test_the_shipped_models_evaluation_is_redone_for_a_new_world(tmp_path, monkeypatch):
    """The pre-trained model's cached evaluation is reused for the same model, settings and
    demo world, and redone when the world's version changes."""
    from gmm_jax import eval_lib, pretrained
    from gmm_jax.data import demo as demo_data
    model_dir = tmp_path / "model"
    os.makedirs(model_dir)
    for f in (pretrained.CONFIG_FILE, "metrics.json"):
        (model_dir / f).write_text("{}")
    calls = []

    def fake_evaluate(model, params, tok, ecfg, out, **kw):
        calls.append(out)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump({}, f)

    monkeypatch.setattr(eval_lib, "evaluate", fake_evaluate)
    monkeypatch.setattr(pretrained, "load_pretrained", lambda d: (None, None, None))
    ecfg = demo_flow.eval_config(tiny_demo_config(str(tmp_path / "data")))
    out = str(tmp_path / "eval")
    for _ in range(2):
        demo_flow.evaluate_model_dir(ecfg, str(model_dir), out, None, "t")
    assert len(calls) == 1
    monkeypatch.setattr(demo_data.GmmDemo, "VERSION", "99.0.0")
    demo_flow.evaluate_model_dir(ecfg, str(model_dir), out, None, "t")
    assert len(calls) == 2
