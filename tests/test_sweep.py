"""experiments/sweep.py without training: grid parsing, config overrides, resuming, and the
aggregation (paired intervals against an independent restatement), tables and figures."""
import importlib.util
import json
import os

import numpy as np
import pytest
from scipy import stats

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "sweep.py")
_spec = importlib.util.spec_from_file_location("gmm_sweep", _PATH)
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)

METRICS = ["retrieval/i2t_r1", "calibration/ece"]


def test_grid_cells_and_overrides():
    from gmm_jax.configs import demo
    grid = sweep.parse_grid("loss.c_m2=0.001,0.05; optim.lr=1e-4")
    assert grid == {"loss.c_m2": [0.001, 0.05], "optim.lr": [1e-4]}
    cells = sweep.cells(grid)
    assert cells == [{"loss.c_m2": 0.001, "optim.lr": 1e-4}, {"loss.c_m2": 0.05, "optim.lr": 1e-4}]
    cfg = sweep.apply(demo.get_config(), cells[1], seed=3)
    assert cfg.loss.c_m2 == 0.05 and cfg.optim.lr == 1e-4 and cfg.seed == 3 and "demo" in cfg
    with pytest.raises(KeyError, match="loss.nope"):
        sweep.apply(demo.get_config(), {"loss.nope": 1}, 0)
    with pytest.raises(ValueError, match="KEY=V1"):
        sweep.parse_grid("loss.c_m2")


def _fake_report(cell, seed):
    rng = np.random.default_rng([int(cell["loss.c_m2"] * 1000), seed])
    return {"runs": {r: {"retrieval/i2t_r1": float(30 + i + rng.normal()),
                         "calibration/ece": float(0.1 + rng.uniform(0, 0.01))}
                     for i, r in enumerate(("pretrained", "ft", "m2mix"))}}


def test_runs_each_cell_once_resumes_and_reports(tmp_path):
    calls = []

    def run_one(cfg, d):
        calls.append((cfg.loss.c_m2, cfg.seed))
        rep = _fake_report({"loss.c_m2": cfg.loss.c_m2}, cfg.seed)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "demo_report.json"), "w") as f:
            json.dump(rep, f)
        return rep

    from gmm_jax.configs import demo
    grid = {"loss.c_m2": [0.001, 0.05]}
    res = sweep.run_grid(demo.get_config(), str(tmp_path), grid, [0, 1, 2], run_one)
    assert len(calls) == 6
    again = sweep.run_grid(demo.get_config(), str(tmp_path), grid, [0, 1, 2], run_one)
    assert len(calls) == 6 and again == res  # finished cells are read back, not rerun
    other = demo.get_config()
    other.demo.runs = "ft,m2mix,m3mix"  # another base config: nothing is reused
    sweep.run_grid(other, str(tmp_path), {"loss.c_m2": [0.05]}, [0], run_one)
    assert len(calls) == 7
    other.progress_bar = not other.progress_bar  # display only: reused
    sweep.run_grid(other, str(tmp_path), {"loss.c_m2": [0.05]}, [0], run_one)
    assert len(calls) == 7
    from gmm_jax.data import demo as demo_data
    version = demo_data.GmmDemo.VERSION
    try:  # another version of the demo world: every cell runs again
        demo_data.GmmDemo.VERSION = "99.0.0"
        sweep.run_grid(other, str(tmp_path), {"loss.c_m2": [0.05]}, [0], run_one)
        assert len(calls) == 8
    finally:
        demo_data.GmmDemo.VERSION = version
    out = sweep.write_reports(str(tmp_path), res, METRICS, "cmd")
    cell = out["agg"]["c_m2=0.05"]
    ft = [_fake_report({"loss.c_m2": 0.05}, s)["runs"]["ft"]["retrieval/i2t_r1"] for s in range(3)]
    m2 = [_fake_report({"loss.c_m2": 0.05}, s)["runs"]["m2mix"]["retrieval/i2t_r1"]
          for s in range(3)]
    ref = stats.ttest_rel(m2, ft).confidence_interval(0.95)
    got = cell["vs_ft"]["m2mix"]["retrieval/i2t_r1"]
    assert (got["lo"], got["hi"]) == pytest.approx((ref.low, ref.high))
    assert cell["runs"]["ft"]["retrieval/i2t_r1"]["std"] == pytest.approx(np.std(ft, ddof=1))
    md = open(tmp_path / "sweep_report.md").read()
    assert "### `retrieval/i2t_r1`" in md and "c_m2=0.001" in md and "m2mix − ft" in md
    # the per-cell table: one row per metric with the same interval
    row = [ln for ln in sweep.cell_table(cell, METRICS).splitlines()
           if ln.startswith("| `retrieval/i2t_r1`")][0]
    assert f"[{ref.low:+.3g}, {ref.high:+.3g}]" in row and "## Cell `c_m2=0.05`" in md
    for m in METRICS:
        assert os.path.getsize(out["figures"][m]) > 1000
    # the grid at a glance: m2mix − ft per cell, the same interval as the cell's table
    assert "## `m2mix` − `ft` in every cell" in md
    grid_row = [ln for ln in sweep.differences_table(out["agg"], METRICS, "m2mix").splitlines()
                if ln.startswith("| c_m2=0.05 |")][0]
    assert f"[{ref.low:+.3g}, {ref.high:+.3g}]" in grid_row
    diff_fig = out["figures"]["vs_ft/c_m2=0.05"]  # the paired differences of a cell
    assert os.path.getsize(diff_fig) > 1000 and os.path.basename(diff_fig) in md


def test_captioning_scores_are_run_metrics():
    """With the demo's captioning stage on, each run's captioner mean joins its metrics
    (and is aggregated over fine-tuning seeds like any other key)."""
    def report(seed):
        rep = _fake_report({"loss.c_m2": 0.01}, seed)
        rep["captioning"] = {"runs": {r: {"mean": {"captioning/cider": 0.1 if r == "pretrained"
                                                   else 1.0 + i + 0.1 * seed},
                                          "per_seed": []}
                                      for i, r in enumerate(("pretrained", "ft", "m2mix"))}}
        return rep
    results = {"c": {s: report(s) for s in range(3)}}
    assert sweep.run_metrics(results["c"][1], "ft") == {
        **results["c"][1]["runs"]["ft"], "captioning/cider": pytest.approx(2.1)}
    assert sweep.run_metrics(_fake_report({"loss.c_m2": 0.01}, 0), "ft") == \
        _fake_report({"loss.c_m2": 0.01}, 0)["runs"]["ft"]  # no captioning stage
    cell = sweep.aggregate(results, METRICS + ["captioning/cider"])["c"]
    assert cell["runs"]["m2mix"]["captioning/cider"]["values"] == pytest.approx([3.0, 3.1, 3.2])
    # the pre-trained model scores the same under every seed: its spread is exactly 0
    # (np.std of [0.1] * 3 is 1.7e-17)
    assert cell["runs"]["pretrained"]["captioning/cider"]["std"] == 0.0
    diff = cell["vs_ft"]["m2mix"]["captioning/cider"]
    assert (diff["mean"], diff["lo"], diff["hi"]) == pytest.approx((1.0, 1.0, 1.0))


def test_report_runs_keeps_the_named_runs_and_the_baseline():
    results = {"c": {s: _fake_report({"loss.c_m2": 0.01}, s) for s in range(2)}}
    kept = sweep.keep_runs(results, ["pretrained", "m2mix"])
    assert all(list(rep["runs"]) == ["pretrained", "ft", "m2mix"]
               for rep in kept["c"].values())
    kept = sweep.keep_runs(results, ["m2mix"])
    assert list(kept["c"][1]["runs"]) == ["ft", "m2mix"]
    assert kept["c"][1]["runs"]["m2mix"] == results["c"][1]["runs"]["m2mix"]
    assert sweep.keep_runs(results, []) is results
    with pytest.raises(ValueError, match=r"\['cua'\] not in the sweep's runs"):
        sweep.keep_runs(results, ["cua", "ft"])


def test_a_difference_is_shown_without_rounding_residue():
    """Per-seed differences of percentages (+0.1, -0.1, ...) can average to 1e-15: shown
    as 0, while a small real effect keeps its value."""
    d = {"mean": -2.84e-15, "lo": -0.0878, "hi": 0.0878, "excludes_zero": False}
    assert sweep._difference(d) == "+0 [-0.0878, +0.0878]"
    d = {"mean": -0.00252, "lo": -0.517, "hi": -0.00252 / 2, "excludes_zero": True}
    assert sweep._difference(d) == "-0.00252 [-0.517, -0.00126] *"


def test_a_two_key_grid_gets_a_heatmap_of_each_runs_differences(tmp_path):
    """With two grid keys, the run's paired differences are laid out as a matrix (rows:
    first key, columns: second key) equal to each cell's own, and drawn."""
    grid = {"loss.c_m2": [0.001, 0.05], "optim.lr": [1e-4, 3e-4, 1e-3]}
    results = {}
    for n, cell in enumerate(sweep.cells(grid)):  # a distinct fake world per cell
        results[sweep.cell_name(cell)] = {
            s: _fake_report({"loss.c_m2": (n + 1) / 1000}, s) for s in range(3)}
    out = sweep.write_reports(str(tmp_path), results, METRICS, "cmd", grid)
    means, excl = sweep.grid_matrix(out["agg"], grid, METRICS[0], "m2mix")
    assert means.shape == (2, 3)
    for i, c in enumerate(grid["loss.c_m2"]):
        for j, lr in enumerate(grid["optim.lr"]):
            d = out["agg"][f"c_m2={c}_lr={lr}"]["vs_ft"]["m2mix"][METRICS[0]]
            assert (means[i, j], excl[i, j]) == (d["mean"], d["excludes_zero"])
    assert len(set(means.ravel().tolist())) > 1  # the cells really differ
    fig = out["figures"]["grid/m2mix"]
    md = open(tmp_path / "sweep_report.md").read()
    assert os.path.getsize(fig) > 1000 and os.path.basename(fig) in md
    os.makedirs(tmp_path / "one")  # one key: no heatmap
    one_key = sweep.write_reports(str(tmp_path / "one"), {"c": results["c_m2=0.05_lr=0.001"]},
                                  METRICS, "cmd", {"loss.c_m2": [0.05]})
    assert not any(k.startswith("grid/") for k in one_key["figures"])
