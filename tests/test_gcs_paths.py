"""gs:// workdirs, model directories, eval outputs and own data, served offline by a mocked
file system (etils.epath.testing.mock_epath, gs://bucket -> a temp dir): the demo's
stages and their reuse, a fine-tune from a gs:// model that resumes, eval.py on it,
--compare, convert --format run --to hf and loading that back. The flow runs in
tests/gcs_paths_worker.py (its own process: the mocks are global); its docstring lists
the test-only mappings for the libraries that reach Cloud Storage without epath.

Any plain open()/os.path.exists/isdir/isfile on a gs:// string raises there and is
recorded, and the process's working directory holds a file named ``gs:`` so that a local
write to ``gs://...`` fails: a bypass of the path layer fails this test."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _own_data(root):
    """A captions file and two images under ``root`` (= gs://bucket/own)."""
    os.makedirs(os.path.join(root, "images"))
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), np.uint8)).save(buf, format="PNG")
        with open(os.path.join(root, "images", name), "wb") as f:
            f.write(buf.getvalue())
    with open(os.path.join(root, "captions.jsonl"), "w") as f:
        f.write('{"image": "a.png", "captions": ["a red square"]}\n'
                '{"image": "b.png", "captions": ["a blue square", "blue"]}\n')


@pytest.mark.slow
def test_whole_flow_on_gs_paths(tmp_path, demoflow_data):
    mirror, cwd = tmp_path / "gcs", tmp_path / "cwd"
    _own_data(str(mirror / "bucket" / "own"))
    cwd.mkdir()
    (cwd / "gs:").write_text("blocks local writes to gs://...\n")
    out_json = tmp_path / "out.json"
    # One CPU device; XLA's LLVM optimisation off: compiling dominates these short runs.
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS="--xla_backend_optimization_level=0",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "gcs_paths_worker.py"), str(mirror),
         demoflow_data, str(out_json)],  # the demo data: conftest, once per session
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    report = json.loads(out_json.read_text()) if out_json.exists() else {}
    assert not report.get("bypasses"), report.get("bypasses")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    r = report["result"]

    assert r["stage_reused"] and r["eval_reused"]
    assert r["resumed_to"] == 4 and r["steps"] == [2, 4]
    assert "| eval | ft |" in r["compare_md"]  # gs://bucket/demo/pretrain/eval, .../evals/ft
    assert r["hf_same_keys"] and r["hf_max_abs_diff"] < 1e-6 and r["hf_tokenizer_same"]
    assert r["report"] and all(r["report"].values()), r["report"]
    assert (r["own_pairs"], r["own_bad"]) == (2, 0)
    assert r["own_files_path"] == "gs://bucket/own/captions.jsonl"

    # everything landed in the mirror of gs://bucket, nothing beside it
    b = mirror / "bucket"
    for rel in ("demo/pretrain/checkpoints", "demo/pretrain/model/params",
                "demo/pretrain/model/model_config.json", "demo/pretrain/eval/metrics.json",
                "demo/pretrain/eval/embeddings.npz", "demo/pretrain/eval/reliability.png",
                "runs/ft/checkpoints/4", "runs/ft/config.json", "runs/ft/model_config.json",
                "runs/ft/tokenizer/vocab.json", "runs/ft/train_metrics.json",
                "runs/ft/tensorboard", "evals/ft/metrics.md", "evals/ft/eval_info.json",
                "evals/cmp/compare.json", "evals/cmp/gap_side_by_side.png",
                "export/hf/model.safetensors", "export/hf/config.json",
                "demo/demo_report.md", "demo/demo_report.json", "demo/gap_side_by_side.png"):
        assert (b / rel).exists(), rel
    assert sorted(p.name for p in cwd.iterdir()) == ["gs:"] and (cwd / "gs:").is_file()
    assert sorted(p.name for p in mirror.iterdir()) == ["bucket"]
