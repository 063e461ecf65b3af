"""Reports (metrics.json / .md, compare table), figures, and the SIMAT file reader."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from gmm_jax import eval_simat, eval_suites, figures, metrics, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC and os.path.getsize(path) > 1000


def test_write_metrics_roundtrip(tmp_path):
    values = {"retrieval/i2t_r1": 12.5, "gap/centroid_distance": 0.8123, "calibration/ece": 0.05}
    jp, mp = report.write_metrics(values, str(tmp_path))
    assert json.load(open(jp)) == values
    md = open(mp).read()
    for k in values:
        assert f"`{k}`" in md
    assert "| `calibration/ece` | 0.0500 | ↓ |" in md
    assert report.load_metrics(str(tmp_path)) == values
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        report.load_metrics(str(tmp_path / "nope"))


def test_compare_runs_dirs_and_dicts(tmp_path):
    runs = {"ft": {"retrieval/rsum": 100.0, "gap/centroid_distance": 0.9},
            "m2mix": {"retrieval/rsum": 120.0, "gap/centroid_distance": 0.5, "extra/x": 1.0}}
    dirs = []
    for name, vals in runs.items():
        d = tmp_path / "runs" / name / "eval"
        report.write_metrics(vals, str(d))
        dirs.append(str(d))
    md, data = report.compare_runs(dirs, str(tmp_path))
    assert list(data["runs"]) == ["ft/eval", "m2mix/eval"]  # unique shortest tails
    assert data["runs"]["m2mix/eval"] == runs["m2mix"]
    assert os.path.exists(tmp_path / "compare.md") and os.path.exists(tmp_path / "compare.json")
    assert json.load(open(tmp_path / "compare.json")) == data
    # best run bold in the right direction; a metric one run lacks shows a dash
    assert "| `retrieval/rsum` | ↑ | 100.00 | **120.00** |" in md
    assert "| `gap/centroid_distance` | ↓ | 0.9000 | **0.5000** |" in md
    assert "| `extra/x` | ↑ | – | 1.0000 |" in md
    md2, data2 = report.compare_runs(runs, str(tmp_path / "demo_report.md"))
    assert set(data2["runs"]) == {"ft", "m2mix"}
    assert json.load(open(tmp_path / "demo_report.json")) == data2
    assert open(tmp_path / "demo_report.md").read() == md2
    with pytest.raises(FileNotFoundError):
        report.compare_runs([str(tmp_path / "missing")])


def test_figures_written(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(60, 16)) + 2.0
    t = rng.normal(size=(60, 16)) - 2.0
    p = figures.gap_projection(v, t, str(tmp_path / "gap.png"))
    assert _is_png(p)
    conf = rng.uniform(size=200)
    ok = rng.uniform(size=200) < conf
    bins = {"i2t": metrics.reliability_bins(conf, ok),
            "t2i": metrics.reliability_bins(conf[:5], ok[:5])}
    assert _is_png(figures.reliability_diagram(bins, str(tmp_path / "rel.png")))
    vals = eval_suites.retrieval_suite(v, t, np.arange(60))
    assert _is_png(figures.recall_chart(vals, str(tmp_path / "rk.png")))
    d1, d2 = tmp_path / "a", tmp_path / "b"
    for d in (d1, d2):
        d.mkdir()
        np.savez(d / "embeddings.npz", image=v, text=t)
    out = figures.gap_figure_side_by_side({"ft": str(d1), "m2mix": str(d2), "raw": (v, t)},
                                          str(tmp_path / "side.png"))
    assert _is_png(out)
    with pytest.raises(FileNotFoundError, match="embeddings.npz"):
        figures.gap_figure_side_by_side({"x": str(tmp_path)}, str(tmp_path / "x.png"))


def test_pca_2d_matches_covariance_eigenvectors():
    x = np.random.default_rng(1).normal(size=(50, 5)) * np.array([5, 3, 1, 0.5, 0.1])
    p = figures.pca_2d(x)
    xc = x - x.mean(0)
    w, vecs = np.linalg.eigh(xc.T @ xc)
    ref = xc @ vecs[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(p), np.abs(ref), atol=1e-8)  # up to sign


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_simat_reader(tmp_path):
    d = tmp_path / "simat_db"
    (d / "images" / "all").mkdir(parents=True)
    region_ids = [507, 12, 90]  # dataset ids 0, 1, 2
    for i, rid in enumerate(region_ids):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(
            d / "images" / "all" / f"{rid}.png")
    _write_csv(d / "triplets.csv", ["", "dataset_id"],
               [[rid, i] for i, rid in enumerate(region_ids)])
    _write_csv(d / "transfos.csv",
               ["", "region_id", "value", "target", "is_test", "norm2", "target_ids"],
               [[0, 12, "dog", "cat", "True", 2.0, 1], [1, 90, "red", "blue", "False", 1.0, 0],
                [2, 507, "man", "woman", "True", 4.0, 0]])
    np.save(d / "oscar_similarity_matrix.npy", np.eye(3, 2))
    db = eval_simat.load_simat(str(d), "test", image_size=16)
    assert db.num_images == 3 and db.image_paths[0].endswith("507.png")
    assert db.source.tolist() == [1, 0] and db.value_words == ["dog", "man"]
    assert db.target_ids.tolist() == [1, 0] and db.norm2.tolist() == [2.0, 4.0]
    batches = list(db.iter_images(2))
    assert [b.shape for b in batches] == [(2, 16, 16, 3), (1, 16, 16, 3)]
    assert batches[0][0].mean() < batches[1][0].mean()  # dataset-id order kept
    os.remove(d / "images" / "all" / "90.png")
    with pytest.raises(FileNotFoundError, match="missing"):
        eval_simat.load_simat(str(d))
    with pytest.raises(FileNotFoundError, match="simat_dir"):
        eval_simat.load_simat(str(tmp_path / "none"))
