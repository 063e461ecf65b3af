"""eval.py command line: user errors give one clear line (no traceback); --compare works."""
import json
import os
import subprocess
import sys

import pytest

from gmm_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"name": "demo", "data_dir": %r})
    return c
"""


def _run(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval.py"), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG % str(tmp_path / "data"))
    return str(path)


def test_missing_checkpoint_is_a_clear_error(config_file, tmp_path):
    r = _run(f"--config={config_file}", f"--checkpoint={tmp_path / 'no_model'}")
    assert r.returncode == 2
    assert "not a model directory" in r.stderr and "no_model" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run(f"--config={config_file}", f"--workdir={tmp_path / 'no_run'}")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_compare_cli(tmp_path):
    dirs = []
    for i, name in enumerate(["ft", "m2mix", "pretrained"]):
        d = tmp_path / name
        report.write_metrics({"retrieval/rsum": 10.0 * i, "gap/centroid_distance": 1.0 - 0.1 * i},
                             str(d))
        dirs.append(str(d))
    out = tmp_path / "cmp"
    r = _run("--compare", *dirs, f"--out={out}")
    assert r.returncode == 0, r.stderr
    data = json.load(open(out / "compare.json"))
    assert list(data["runs"]) == ["ft", "m2mix", "pretrained"]
    md = open(out / "compare.md").read()
    assert all(n in md for n in ("ft", "m2mix", "pretrained"))
    r = _run("--compare", str(tmp_path / "nothing_here"), f"--out={out}")
    assert r.returncode == 2 and "metrics.json" in r.stderr and "Traceback" not in r.stderr
