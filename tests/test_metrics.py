"""gmm_jax.metrics against brute-force float64 restatements of SPEC §4."""
import tracemalloc

import numpy as np
import pytest

from gmm_jax import metrics
from tests import reference as ref


def _brute_recall(img, txt, owner, ks):
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sims = img.astype(np.float64) @ txt.T.astype(np.float64)
    i2t = {k: 0 for k in ks}
    for i in range(len(img)):
        order = np.argsort(-sims[i], kind="stable")
        first = next(r for r, j in enumerate(order) if owner[j] == i)
        for k in ks:
            i2t[k] += first < k
    t2i = {k: 0 for k in ks}
    for j in range(len(txt)):
        order = list(np.argsort(-sims[:, j], kind="stable"))
        for k in ks:
            t2i[k] += order.index(owner[j]) < k
    return {"i2t": {k: 100 * i2t[k] / len(img) for k in ks}, "t2i": {k: 100 * t2i[k] / len(txt) for k in ks}}


@pytest.mark.parametrize("n_img,caps,d", [(2, 1, 4), (13, 5, 8), (150, 5, 32), (40, 3, 512)])
def test_retrieval_recall_matches_brute_force(n_img, caps, d):
    rng = np.random.default_rng(n_img)
    img = rng.standard_normal((n_img, d))
    owner = rng.permutation(np.repeat(np.arange(n_img), caps))
    # Captions near their image so that recall is neither 0 nor 100.
    txt = img[owner] + 1.5 * rng.standard_normal((len(owner), d))
    ks = (1, 5, 10)
    got = metrics.retrieval_recall(img.astype(np.float32), txt.astype(np.float32), owner, ks)
    want = _brute_recall(img, txt, owner, ks)
    for direction in ("i2t", "t2i"):
        for k in ks:
            assert got[direction][k] == pytest.approx(want[direction][k], abs=1e-9), (direction, k)
    assert metrics.rsum(got) == pytest.approx(sum(sum(d.values()) for d in want.values()))


def test_retrieval_recall_chunks_and_uneven_captions(monkeypatch):
    rng = np.random.default_rng(0)
    img = rng.standard_normal((23, 6))
    owner = np.concatenate([np.arange(23), rng.integers(0, 23, 40)])
    txt = img[owner] + rng.standard_normal((len(owner), 6))
    want = metrics.retrieval_recall(img, txt, owner)
    monkeypatch.setattr(metrics, "CHUNK", 4)
    assert metrics.retrieval_recall(img, txt, owner) == want
    brute = _brute_recall(img, txt, owner, (1, 5, 10))
    for direction in ("i2t", "t2i"):
        assert want[direction] == pytest.approx(brute[direction])


def test_retrieval_recall_rejects_bad_mapping():
    with pytest.raises(ValueError, match="text_to_image"):
        metrics.retrieval_recall(np.ones((3, 4)), np.ones((5, 4)), [0, 1, 2])
    with pytest.raises(ValueError, match="outside"):
        metrics.retrieval_recall(np.ones((3, 4)), np.ones((2, 4)), [0, 7])


def test_retrieval_memory_is_chunked():
    """5k x 25k must not build the full matrix; here 4000 x 20000 (320 MB as fp32)."""
    rng = np.random.default_rng(0)
    img = rng.standard_normal((4000, 16)).astype(np.float32)
    owner = np.repeat(np.arange(4000), 5)
    txt = img[owner] + rng.standard_normal((20000, 16)).astype(np.float32)
    tracemalloc.start()
    metrics.retrieval_recall(img, txt, owner)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.parametrize("n,d", [(2, 4), (17, 8), (200, 512)])
def test_geometry_metrics(n, d):
    rng = np.random.default_rng(n + d)
    v = rng.standard_normal((n, d)) + 0.5
    t = rng.standard_normal((n, d)) - 0.5
    vu = v / np.linalg.norm(v, axis=1, keepdims=True)
    tu = t / np.linalg.norm(t, axis=1, keepdims=True)
    assert metrics.modality_gap(v, t) == pytest.approx(np.linalg.norm(vu.mean(0) - tu.mean(0)), rel=1e-5)
    assert metrics.mean_positive_cosine(v, t) == pytest.approx(np.mean([vu[i] @ tu[i] for i in range(n)]), rel=1e-5, abs=1e-7)
    rel = np.mean([np.sum((tu[i] - vu[i]) ** 2) - min(np.sum((tu[i] - vu[j]) ** 2) for j in range(n) if j != i)
                   for i in range(n)])
    assert metrics.relative_alignment(v, t) == pytest.approx(rel, rel=1e-5, abs=1e-6)
    both = np.concatenate([vu, tu])
    assert metrics.uniformity(both) == pytest.approx(ref.uniformity(both), rel=1e-5, abs=1e-6)
    assert metrics.alignment(v, t) == pytest.approx(ref.alignment(vu, tu), rel=1e-5)


def test_relative_alignment_chunked(monkeypatch):
    rng = np.random.default_rng(1)
    v, t = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    want = metrics.relative_alignment(v, t)
    monkeypatch.setattr(metrics, "CHUNK", 7)
    assert metrics.relative_alignment(v, t) == pytest.approx(want, rel=1e-6)
    assert metrics.uniformity(v) == pytest.approx(ref.uniformity(v / np.linalg.norm(v, axis=1, keepdims=True)), rel=1e-5)


def test_linear_separability():
    rng = np.random.default_rng(0)
    same = [rng.standard_normal((300, 16)) for _ in range(2)]
    assert 0.35 < metrics.linear_separability(*same) < 0.65
    shifted = rng.standard_normal((300, 16)) * 0.1 + np.eye(16)[0]
    assert metrics.linear_separability(shifted, rng.standard_normal((300, 16)) * 0.1 - np.eye(16)[0]) == 1.0
    assert metrics.linear_separability(*same, seed=0) == metrics.linear_separability(*same, seed=0)


def _brute_ece(logits, labels, n_bins):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
    return ece


@pytest.mark.parametrize("n,c,bins", [(1, 3, 10), (50, 10, 10), (999, 7, 15)])
def test_expected_calibration_error(n, c, bins):
    rng = np.random.default_rng(n)
    logits = 3 * rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    got = metrics.expected_calibration_error(logits, labels, bins)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(_brute_ece(logits, labels, bins), abs=1e-12)


def test_ece_perfectly_calibrated_and_overconfident():
    # Confident and always right: ECE = 1 - conf; confident and always wrong: ECE = conf.
    logits = np.array([[10.0, 0.0]] * 20)
    conf = 1 / (1 + np.exp(-10))
    assert metrics.expected_calibration_error(logits, np.zeros(20, int)) == pytest.approx(1 - conf)
    assert metrics.expected_calibration_error(logits, np.ones(20, int)) == pytest.approx(conf)


def test_retrieval_confidences():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((12, 8))
    owner = np.repeat(np.arange(12), 2)
    txt = img[owner] + 0.8 * rng.standard_normal((24, 8))
    out = metrics.retrieval_confidences(img, txt, owner, scale=20.0)
    iu = img / np.linalg.norm(img, axis=1, keepdims=True)
    tu = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = 20.0 * iu @ tu.T
    p = np.exp(s - s.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(out["i2t"][0], p.max(1), rtol=1e-5)
    np.testing.assert_array_equal(out["i2t"][1], owner[p.argmax(1)] == np.arange(12))
    q = np.exp(s.T - s.T.max(1, keepdims=True)); q /= q.sum(1, keepdims=True)
    np.testing.assert_array_equal(out["t2i"][1], q.argmax(1) == owner)


def test_topk_accuracy_and_probe():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((100, 10))
    labels = rng.integers(0, 10, 100)
    order = np.argsort(-logits, axis=1)
    for k in (1, 5):
        want = 100 * np.mean([labels[i] in order[i, :k] for i in range(100)])
        assert metrics.topk_accuracy(logits, labels, (k,))[k] == pytest.approx(want)
    centers = rng.standard_normal((4, 16)) * 3
    y = rng.integers(0, 4, 200)
    x = centers[y] + rng.standard_normal((200, 16))
    assert metrics.linear_probe_accuracy(x[:100], y[:100], x[100:], y[100:]) > 90
