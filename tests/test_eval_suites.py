"""Evaluation suites on synthetic embeddings, checked against brute-force restatements."""
import numpy as np
import pytest

from gmm_jax import eval_suites
from gmm_jax.data.demo import ArithmeticTriple


def _unit64(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _rand(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_protocols():
    t2i = np.array([0, 0, 1, 2, 1, 2, 2])
    txt = _rand(7, 4, 0)
    assert eval_suites.first_caption_index(t2i, 3).tolist() == [0, 2, 3]
    t, o = eval_suites.apply_protocol(txt, t2i, 3, "first_caption")
    np.testing.assert_array_equal(t, txt[[0, 2, 3]])
    assert o.tolist() == [0, 1, 2]
    t, o = eval_suites.apply_protocol(txt, t2i, 3, "karpathy")
    assert t.shape == (7, 4) and o.tolist() == t2i.tolist()
    with pytest.raises(ValueError, match="images \\[3\\]"):
        eval_suites.first_caption_index(t2i, 4)
    with pytest.raises(ValueError, match="protocol"):
        eval_suites.apply_protocol(txt, t2i, 3, "coco")


def test_retrieval_suite_keys_and_brute_force():
    img, txt = _rand(12, 8, 1), _rand(36, 8, 2)
    t2i = np.repeat(np.arange(12), 3)
    out = eval_suites.retrieval_suite(img, txt, t2i)
    sims = _unit64(img) @ _unit64(txt).T
    # brute force R@1: top caption belongs to the image / top image owns the caption
    i2t1 = 100 * np.mean(t2i[sims.argmax(1)] == np.arange(12))
    t2i1 = 100 * np.mean(sims.argmax(0) == t2i)
    assert out["retrieval/i2t_r1"] == pytest.approx(i2t1)
    assert out["retrieval/t2i_r1"] == pytest.approx(t2i1)
    assert out["retrieval/rsum"] == pytest.approx(sum(v for k, v in out.items() if "_r" in k))
    assert out["retrieval/i2t_r1"] <= out["retrieval/i2t_r5"] <= out["retrieval/i2t_r10"]


def test_geometry_suite_brute_force():
    v, t = _rand(40, 6, 3), _rand(40, 6, 4)
    out = eval_suites.geometry_suite(v, t)
    v64, t64 = _unit64(v), _unit64(t)
    assert out["gap/centroid_distance"] == pytest.approx(
        np.linalg.norm(v64.mean(0) - t64.mean(0)), rel=1e-5)
    assert out["gap/mean_positive_cosine"] == pytest.approx(np.mean(np.sum(v64 * t64, 1)), rel=1e-5)
    x = np.concatenate([v64, t64])
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    iu = np.triu_indices(len(x), 1)
    assert out["gap/uniformity"] == pytest.approx(np.log(np.mean(np.exp(-2 * d2[iu]))), rel=1e-4)
    assert out["gap/alignment"] == pytest.approx(np.mean(np.sum((v64 - t64) ** 2, 1)), rel=1e-5)
    assert 0.0 <= out["gap/linear_separability"] <= 1.0


def test_calibration_suite_brute_force():
    rng = np.random.default_rng(5)
    img = _rand(30, 8, 6)
    txt = img + 0.8 * rng.normal(size=img.shape)
    t2i = np.arange(30)
    scale = 20.0
    out, bins = eval_suites.calibration_suite(img, txt, t2i, scale, n_bins=10)
    logits = scale * _unit64(img) @ _unit64(txt).T

    def ece(lg, correct_fn):
        p = np.exp(lg - lg.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        conf, pred = p.max(1), p.argmax(1)
        ok = correct_fn(pred)
        total = 0.0
        for lo in np.arange(10) / 10:
            m = (conf > lo) & (conf <= lo + 0.1) if lo > 0 else (conf <= 0.1)
            if m.any():
                total += m.mean() * abs(ok[m].mean() - conf[m].mean())
        return total

    e_i2t = ece(logits, lambda pred: pred == np.arange(30))
    e_t2i = ece(logits.T, lambda pred: pred == np.arange(30))
    assert out["calibration/ece_i2t"] == pytest.approx(e_i2t, abs=1e-6)
    assert out["calibration/ece_t2i"] == pytest.approx(e_t2i, abs=1e-6)
    assert out["calibration/ece"] == pytest.approx((e_i2t + e_t2i) / 2, abs=1e-6)
    assert bins["i2t"]["count"].sum() == 30


def test_class_weights_and_zeroshot_brute_force():
    C, T, D = 5, 3, 8
    emb = _rand(C * T, D, 7)
    w = eval_suites.class_weights(emb, C)
    ref = np.stack([_unit64(_unit64(emb[c * T:(c + 1) * T]).mean(0)) for c in range(C)])
    np.testing.assert_allclose(w, ref, atol=1e-6)
    img = _rand(50, D, 8)
    labels = np.random.default_rng(9).integers(0, C, 50)
    out, bins = eval_suites.zeroshot_suite(img, labels, w, 30.0, prefix="zeroshot/x")
    logits = _unit64(img) @ ref.T
    assert out["zeroshot/x/top1"] == pytest.approx(100 * np.mean(logits.argmax(1) == labels))
    top5 = np.argsort(-logits, 1)[:, :5]
    assert out["zeroshot/x/top5"] == pytest.approx(100 * np.mean((top5 == labels[:, None]).any(1)))
    assert 0 <= out["zeroshot/x/ece"] <= 1 and bins["count"].sum() == 50
    with pytest.raises(ValueError, match="classes"):
        eval_suites.class_weights(emb[:-1], C)


def test_kshot_indices():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = eval_suites.kshot_indices(labels, 4, seed=1)
    counts = np.bincount(labels[idx])
    assert counts.tolist() == [4, 3, 4]  # class 1 has only 3
    assert len(set(idx)) == len(idx)
    np.testing.assert_array_equal(idx, eval_suites.kshot_indices(labels, 4, seed=1))
    assert not np.array_equal(eval_suites.kshot_indices(labels, 4, 1),
                              eval_suites.kshot_indices(labels, 4, 2))


def test_fewshot_suite_separable_and_chance():
    rng = np.random.default_rng(10)
    centres = 5 * np.eye(4, 16)
    y = rng.integers(0, 4, 200)
    x = centres[y] + 0.3 * rng.normal(size=(200, 16))
    out = eval_suites.fewshot_suite(x[:100], y[:100], x[100:], y[100:], ks=(1, 4), seeds=(0, 1))
    assert out["fewshot/k1"] > 95 and out["fewshot/k4"] > 95
    assert set(out) == {"fewshot/k1", "fewshot/k1_std", "fewshot/k4", "fewshot/k4_std"}
    noise = rng.normal(size=(200, 16))  # labels unrelated to features: near chance
    out = eval_suites.fewshot_suite(noise[:100], y[:100], noise[100:], y[100:], ks=(8,), seeds=(0,))
    assert out["fewshot/k8"] < 60


def test_arithmetic_neighbours_brute_force():
    img = _rand(20, 6, 11)
    src = np.array([0, 3, 3, 19])
    delta = _rand(4, 6, 12) * 0.3
    lams = (0.5, 2.0)
    nb = eval_suites.arithmetic_neighbours(img, src, delta, lams, chunk=3)
    u = _unit64(img)
    for li, lam in enumerate(lams):
        for q in range(4):
            scores = [(u[src[q]] + lam * delta[q]) @ u[j] if j != src[q] else -np.inf
                      for j in range(20)]
            assert nb[li, q] == int(np.argmax(scores))
    assert not np.any(nb == src[None])


def test_demo_arithmetic_perfect_and_brute_force():
    """Images = sum of attribute word vectors: swapping words is exact arithmetic."""
    rng = np.random.default_rng(13)
    words = {w: v for w, v in zip(["red", "blue", "circle", "square"], rng.normal(size=(4, 32)))}
    scenes = [("red", "circle"), ("blue", "circle"), ("red", "square"), ("blue", "square")]
    img = np.stack([words[c] + words[s] for c, s in scenes])
    triples = [ArithmeticTriple(0, "colour", "red", "blue", (1,)),
               ArithmeticTriple(0, "shape", "circle", "square", (2,)),
               ArithmeticTriple(3, "colour", "blue", "red", (2,))]
    # word embeddings equal to the raw vectors: the suite normalises them
    out = eval_suites.demo_arithmetic_suite(img, triples, words, lams=(0.5, 1.0, 2.0))
    assert out["arithmetic/demo/num_queries"] == 3
    # brute-force the same score
    best = 0.0
    for lam in (0.5, 1.0, 2.0):
        ok = []
        for tr in triples:
            d = _unit64(words[tr.new_word]) - _unit64(words[tr.word])
            q = _unit64(img)[tr.source] + lam * d
            s = _unit64(img) @ q
            s[tr.source] = -np.inf
            ok.append(int(np.argmax(s)) in tr.answers)
        best = max(best, 100 * np.mean(ok))
    assert out["arithmetic/demo/score"] == pytest.approx(best)
    assert best > 60  # the construction is solvable
    assert eval_suites.demo_arithmetic_suite(img, [], words) == {"arithmetic/demo/num_queries": 0.0}


def test_simat_suite_weights_brute_force():
    rng = np.random.default_rng(14)
    img = _rand(10, 8, 15)
    words = {w: rng.normal(size=8) for w in "abcd"}
    src = np.array([1, 2, 5])
    vw, tw = ["a", "b", "c"], ["b", "c", "d"]
    tid = np.array([0, 1, 2])
    norm2 = np.array([1.0, 4.0, 9.0])
    sim = rng.uniform(size=(10, 3))
    lams = (1.0, 3.0)
    out = eval_suites.simat_suite(img, src, vw, tw, tid, norm2, sim, words, lams)
    w = 1 / np.sqrt(norm2)
    w /= w.sum()
    u = _unit64(img)
    per = []
    for lam in lams:
        hits = []
        for q in range(3):
            qv = u[src[q]] + lam * (_unit64(words[tw[q]]) - _unit64(words[vw[q]]))
            s = u @ qv
            s[src[q]] = -np.inf
            hits.append(sim[np.argmax(s), tid[q]] > 0.5)
        per.append(100 * np.sum(w * np.array(hits)))
    assert out["arithmetic/simat/score"] == pytest.approx(max(per))
    assert out["arithmetic/simat/best_lambda"] == lams[int(np.argmax(per))]


def test_zeroshot_collapsed_model_is_not_perfect():
    """A collapsed model (every class prompt embedded alike, so every class scores the
    same): ties count against the true class, top-1 and top-5 of 10 classes are 0."""
    labels = np.arange(40) % 10
    img = np.ones((40, 6))
    res, _ = eval_suites.zeroshot_suite(img, labels, np.ones((10, 6)), 20.0, prefix="z")
    assert res["z/top1"] == 0.0 and res["z/top5"] == 0.0
