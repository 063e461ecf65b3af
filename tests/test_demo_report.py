"""The demo report's plain-language summary and its side-by-side reliability figure."""
import json
import os

import numpy as np
import pytest

from gmm_jax import demo_flow, eval_lib, metrics

RUNS = {
    "pretrained": {"retrieval/i2t_r1": 20.0, "zeroshot/gmm_demo_target_test/top1": 55.0,
                   "calibration/ece": 0.25, "gap/centroid_distance": 0.6},
    "ft": {"retrieval/i2t_r1": 41.5, "zeroshot/gmm_demo_target_test/top1": 60.0,
           "calibration/ece": 0.05, "gap/centroid_distance": 0.5},
    "m2mix": {"retrieval/i2t_r1": 40.0, "zeroshot/gmm_demo_target_test/top1": 62.5,
              "calibration/ece": 0.04, "gap/centroid_distance": 0.45},
}


def test_summary_states_the_changes_and_the_seed_caveat():
    lines = demo_flow.summary_lines(RUNS)
    assert len(lines) == 3, lines
    assert "image-to-text R@1 20 → 41.5" in lines[0]
    assert "retrieval ECE in % (lower is better) 25 → 5" in lines[0]
    assert lines[1].startswith("m2mix minus ft:")
    # the differences, recomputed here
    assert f"image-to-text R@1 {40.0 - 41.5:+.3g}" in lines[1]
    assert f"zero-shot shape accuracy {62.5 - 60.0:+.3g}" in lines[1]
    assert f"the centroid gap {0.45 - 0.5:+.3g}" in lines[1]
    assert "one fine-tuning seed" in lines[2]
    # no ft: nothing to compare with
    assert demo_flow.summary_lines({"pretrained": RUNS["pretrained"]}) == []


def test_reliability_figure_draws_every_model_with_bins(tmp_path):
    rng = np.random.default_rng(0)
    dirs = {}
    for name in ("pretrained", "ft"):
        d = tmp_path / name
        d.mkdir()
        conf = rng.uniform(0, 1, 50)
        bins = metrics.reliability_bins(conf, rng.uniform(0, 1, 50) < conf)
        with open(d / eval_lib.RELIABILITY_FILE, "w") as f:
            json.dump({"retrieval i2t": {k: np.asarray(v).tolist() for k, v in bins.items()}},
                      f)
        dirs[name] = str(d)
    (tmp_path / "no_bins").mkdir()
    out = demo_flow.reliability_figure({**dirs, "no_bins": str(tmp_path / "no_bins")},
                                       str(tmp_path / "rel.png"))
    assert out and os.path.getsize(out) > 0
    assert demo_flow.reliability_figure({"x": str(tmp_path / "no_bins")},
                                        str(tmp_path / "none.png")) is None


@pytest.mark.parametrize("bad", [{}, {"ft": {}}])
def test_summary_without_metrics_is_empty(bad):
    assert demo_flow.summary_lines(bad) == []
