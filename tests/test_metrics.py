"""gmm_jax.metrics against brute-force float64 restatements of docs/method.md#metrics."""
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
    return {"i2t": {k: 100 * i2t[k] / len(img) for k in ks},
            "t2i": {k: 100 * t2i[k] / len(txt) for k in ks}}


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
    assert metrics.modality_gap(v, t) == pytest.approx(np.linalg.norm(vu.mean(0) - tu.mean(0)),
                                                       rel=1e-5)
    assert metrics.mean_positive_cosine(v, t) == pytest.approx(
        np.mean([vu[i] @ tu[i] for i in range(n)]), rel=1e-5, abs=1e-7)
    rel = np.mean([np.sum((tu[i] - vu[i]) ** 2)
                   - min(np.sum((tu[i] - vu[j]) ** 2) for j in range(n) if j != i)
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
    assert metrics.uniformity(v) == pytest.approx(
        ref.uniformity(v / np.linalg.norm(v, axis=1, keepdims=True)), rel=1e-5)


def test_linear_separability():
    rng = np.random.default_rng(0)
    same = [rng.standard_normal((300, 16)) for _ in range(2)]
    assert 0.35 < metrics.linear_separability(*same) < 0.65
    shifted = rng.standard_normal((300, 16)) * 0.1 + np.eye(16)[0]
    assert metrics.linear_separability(
        shifted, rng.standard_normal((300, 16)) * 0.1 - np.eye(16)[0]) == 1.0
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
            ece += in_bin.mean() * abs((pred[in_bin] == labels[in_bin]).mean()
                                       - conf[in_bin].mean())
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
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(out["i2t"][0], p.max(1), rtol=1e-5)
    np.testing.assert_array_equal(out["i2t"][1], owner[p.argmax(1)] == np.arange(12))
    q = np.exp(s.T - s.T.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
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


# --------------------------------------------------------------------------
# identical captions are interchangeable; ties count against the query

def _brute_recall_groups(img, txt, owner, groups, ks):
    """Loops straight from the rule: a caption is a hit for image i when its text equals
    one of image i's caption texts; an image is a hit for caption j when it has a caption
    with j's text. Pessimistic ties: every non-hit scoring >= the best hit ranks first."""
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sims = img.astype(np.float64) @ txt.T.astype(np.float64)
    texts_of = [set() for _ in range(len(img))]
    for j, i in enumerate(owner):
        texts_of[i].add(groups[j])
    i2t = {k: 0 for k in ks}
    for i in range(len(img)):
        hits = [j for j in range(len(txt)) if groups[j] in texts_of[i]]
        best = max(sims[i, j] for j in hits)
        ahead = sum(1 for j in range(len(txt)) if j not in hits and sims[i, j] >= best)
        for k in ks:
            i2t[k] += ahead < k
    t2i = {k: 0 for k in ks}
    for j in range(len(txt)):
        hits = [i for i in range(len(img)) if groups[j] in texts_of[i]]
        best = max(sims[i, j] for i in hits)
        ahead = sum(1 for i in range(len(img)) if i not in hits and sims[i, j] >= best)
        for k in ks:
            t2i[k] += ahead < k
    return {"i2t": {k: 100 * i2t[k] / len(img) for k in ks},
            "t2i": {k: 100 * t2i[k] / len(txt) for k in ks}}


@pytest.mark.parametrize("n_img,caps,n_texts,quantise", [(6, 2, 4, False), (30, 3, 12, True),
                                                         (25, 1, 5, True)])
def test_retrieval_recall_text_groups_brute_force(n_img, caps, n_texts, quantise, monkeypatch):
    rng = np.random.default_rng(n_img)
    img = rng.standard_normal((n_img, 6))
    owner = np.repeat(np.arange(n_img), caps)
    groups = rng.integers(0, n_texts, len(owner))  # many repeated texts
    txt = img[owner] + rng.standard_normal((len(owner), 6))
    if quantise:  # one-hot rows: cosines exactly 0 or 1 in any precision, many exact ties
        img = np.eye(6)[rng.integers(0, 6, n_img)]
        txt = np.where(rng.random((len(owner), 1)) < 0.7, img[owner],
                       np.eye(6)[rng.integers(0, 6, len(owner))])
    ks = (1, 2, 5)
    want = _brute_recall_groups(img, txt, owner, groups, ks)
    got = metrics.retrieval_recall(img, txt, owner, ks, text_groups=groups)
    for d in ("i2t", "t2i"):
        assert got[d] == pytest.approx(want[d], abs=1e-9), d
    monkeypatch.setattr(metrics, "CHUNK", 4)  # chunk boundaries change nothing
    assert metrics.retrieval_recall(img, txt, owner, ks, text_groups=groups) == got
    # all-distinct groups (any labels) mean the three-argument call
    distinct = rng.permutation(len(owner)) * 7 + 3
    assert (metrics.retrieval_recall(img, txt, owner, ks, text_groups=distinct)
            == metrics.retrieval_recall(img, txt, owner, ks))
    plain = metrics.retrieval_recall(img, txt, owner, ks)
    brute = _brute_recall_groups(img, txt, owner, np.arange(len(owner)), ks)
    for d in ("i2t", "t2i"):
        assert plain[d] == pytest.approx(brute[d]), d


def test_class_level_captions_perfect_model():
    """The issue's case: every image of a class captioned with the class text and a model
    mapping each class to one point. Without groups i2t reads ~0, with them 100."""
    labels = np.repeat(np.arange(4), 5)
    emb = np.eye(4)[labels]
    captions = [f"a photo of digit {y}" for y in labels]
    groups = metrics.caption_groups(captions)
    assert len(np.unique(groups)) == 4 and (groups[labels == 2] == groups[10]).all()
    owner = np.arange(len(labels))
    plain = metrics.retrieval_recall(emb, emb, owner, (1,))
    assert plain["i2t"][1] == 0.0 and plain["t2i"][1] == 0.0  # ties against: 4 others tie
    grouped = metrics.retrieval_recall(emb, emb, owner, (1,), text_groups=groups)
    assert grouped == {"i2t": {1: 100.0}, "t2i": {1: 100.0}}
    conf = metrics.retrieval_confidences(emb, emb, owner, 10.0, text_groups=groups)
    assert conf["i2t"][1].all() and conf["t2i"][1].all()
    assert not metrics.retrieval_confidences(emb, emb, owner, 10.0)["i2t"][1].all()


def test_retrieval_rejects_bad_groups():
    with pytest.raises(ValueError, match="text_groups"):
        metrics.retrieval_recall(np.ones((2, 3)), np.ones((2, 3)), [0, 1], text_groups=[0])
    with pytest.raises(ValueError, match="text_groups"):
        metrics.retrieval_recall(np.ones((2, 3)), np.ones((2, 3)), [0, 1], text_groups=[0.5, 1.0])


def test_collapsed_model_scores_at_or_below_chance():
    """One tie rule: constant scores give 0 for K < C in both top-k and retrieval."""
    labels = np.arange(50) % 10
    acc = metrics.topk_accuracy(np.zeros((50, 10)), labels, ks=(1, 5, 10))
    assert acc[1] <= 10.0 and acc[5] <= 50.0 and acc[10] == 100.0
    const = np.ones((12, 4))
    rec = metrics.retrieval_recall(const, const[:12], np.arange(12), ks=(1, 5))
    assert rec["i2t"][1] <= 100 / 12 and rec["t2i"][5] <= 5 * 100 / 12
    # a tie between the true class and one other class is a miss at K=1, a hit at K=2
    logits = np.array([[1.0, 1.0, 0.0]])
    assert metrics.topk_accuracy(logits, [0], ks=(1, 2)) == {1: 0.0, 2: 100.0}


def test_retrieval_confidences_groups_brute_force():
    rng = np.random.default_rng(3)
    img = rng.standard_normal((9, 5))
    owner = np.repeat(np.arange(9), 2)
    groups = rng.integers(0, 6, 18)
    txt = img[owner] + 0.8 * rng.standard_normal((18, 5))
    out = metrics.retrieval_confidences(img, txt, owner, 7.0, text_groups=groups)
    v = img / np.linalg.norm(img, axis=1, keepdims=True)
    t = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    s = v @ t.T
    for i in range(9):
        top = int(np.argmax(s[i]))
        mine = {groups[j] for j in range(18) if owner[j] == i}
        assert out["i2t"][1][i] == (groups[top] in mine)
    for j in range(18):
        top = int(np.argmax(s[:, j]))
        assert out["t2i"][1][j] == any(groups[q] == groups[j] for q in range(18) if owner[q] == top)
