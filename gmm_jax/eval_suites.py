"""Evaluation suites on precomputed embeddings (docs/method.md#metrics): pure NumPy, no model.

Each ``*_suite`` takes host arrays and returns a flat ``{key: float}`` dict with the
keys of ``metrics.json`` (see docs/evaluation.md), plus, where a figure needs them,
extra arrays in a separate return value. The array-level maths lives in
``gmm_jax.metrics``; this module only arranges inputs (protocols, pairing, prompt
ensembles, k-shot draws, arithmetic queries) and names the results.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from gmm_jax import metrics
from gmm_jax.metrics import unit_rows

LAMBDAS = tuple(np.arange(1, 15) * 0.5)  # SIMAT's lambda sweep {0.5, 1, ..., 7}


# --------------------------------------------------------------------------
# retrieval: protocols

def first_caption_index(text_to_image: np.ndarray, num_images: int) -> np.ndarray:
    """Index (N,) of each image's first caption; error if an image has none."""
    t2i = np.asarray(text_to_image, np.int64)
    first = np.full(num_images, -1, np.int64)
    # Reverse order so the earliest caption of each image is written last.
    first[t2i[::-1]] = np.arange(len(t2i) - 1, -1, -1)
    missing = np.flatnonzero(first < 0)
    if missing.size:
        raise ValueError(f"images {missing[:5].tolist()} have no caption (text_to_image covers "
                         f"{len(np.unique(t2i))} of {num_images} images)")
    return first


def protocol_indices(text_to_image, num_images: int, protocol: str) -> np.ndarray:
    """Indices of the captions a retrieval protocol keeps.

    ``karpathy``: every caption (e.g. 5 per image). ``first_caption``: the first
    caption of each image only, so captions and images pair 1:1 (the reference code).
    """
    if protocol == "karpathy":
        return np.arange(len(text_to_image), dtype=np.int64)
    if protocol == "first_caption":
        return first_caption_index(text_to_image, num_images)
    raise ValueError(f"retrieval protocol {protocol!r}; expected 'karpathy' or 'first_caption'")


def apply_protocol(text_emb, text_to_image, num_images: int, protocol: str):
    """Caption set of a retrieval protocol: ``(text_emb, text_to_image)`` of the captions
    ``protocol_indices`` keeps."""
    idx = protocol_indices(text_to_image, num_images, protocol)
    return np.asarray(text_emb)[idx], np.asarray(text_to_image, np.int64)[idx]


def retrieval_suite(image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10),
                    prefix: str = "retrieval", text_groups=None) -> dict:
    """R@K in percent both ways plus rsum: ``{prefix}/i2t_r{k}``, ``t2i_r{k}``, ``rsum``.

    ``text_groups``: identical captions share an id and are interchangeable
    (``metrics.retrieval_recall``).
    """
    rec = metrics.retrieval_recall(image_emb, text_emb, text_to_image, ks,
                                   text_groups=text_groups)
    out = {f"{prefix}/{d}_r{k}": float(v) for d in ("i2t", "t2i") for k, v in rec[d].items()}
    out[f"{prefix}/rsum"] = metrics.rsum(rec)
    return out


# --------------------------------------------------------------------------
# geometry of the joint embedding space

def geometry_suite(v, t, seed: int = 0, uniformity_t: float = 2.0,
                   alignment_alpha: float = 2.0, prefix: str = "gap") -> dict:
    """Modality-gap metrics of paired embeddings ``v, t`` (N, D) (row i describes row i).

    Uniformity is taken over ``concat(v, t)`` (docs/method.md#metrics; not the reference's
    ``concat(v, v)``).
    """
    v, t = unit_rows(v), unit_rows(t)
    return {
        f"{prefix}/centroid_distance": metrics.modality_gap(v, t),
        f"{prefix}/linear_separability": metrics.linear_separability(v, t, seed=seed),
        f"{prefix}/mean_positive_cosine": metrics.mean_positive_cosine(v, t),
        f"{prefix}/uniformity": metrics.uniformity(np.concatenate([v, t]), t=uniformity_t),
        f"{prefix}/alignment": metrics.alignment(v, t, alpha=alignment_alpha),
        f"{prefix}/relative_alignment": metrics.relative_alignment(v, t),
    }


# --------------------------------------------------------------------------
# calibration

def calibration_suite(image_emb, text_emb, text_to_image, scale: float, n_bins: int = 10,
                      prefix: str = "calibration", text_groups=None):
    """Retrieval ECE at ``scale`` (the contrastive multiplier ``1/tau``).

    ``{prefix}/ece_i2t``, ``ece_t2i`` and ``ece`` (their mean), plus ``scale``.
    Returns ``(metrics, bins)`` with ``bins[direction]`` from ``metrics.reliability_bins``.
    """
    conf = metrics.retrieval_confidences(image_emb, text_emb, text_to_image, float(scale),
                                         text_groups=text_groups)
    out, bins = {}, {}
    for d, (c, ok) in conf.items():
        out[f"{prefix}/ece_{d}"] = metrics.calibration_error(c, ok, n_bins)
        bins[d] = metrics.reliability_bins(c, ok, n_bins)
    out[f"{prefix}/ece"] = 0.5 * (out[f"{prefix}/ece_i2t"] + out[f"{prefix}/ece_t2i"])
    out[f"{prefix}/scale"] = float(scale)
    return out, bins


# --------------------------------------------------------------------------
# zero-shot classification

def class_weights(template_emb, num_classes: int) -> np.ndarray:
    """Prompt-ensemble classifier (C, D) from text embeddings (C*T, D), class-major.

    Each prompt embedding is normalised, the T prompts of a class averaged and the
    mean renormalised (CLIP's zero-shot recipe).
    """
    e = unit_rows(template_emb)
    if e.shape[0] % num_classes:
        raise ValueError(f"{e.shape[0]} prompt embeddings do not split into {num_classes} classes")
    return unit_rows(e.reshape(num_classes, -1, e.shape[-1]).mean(axis=1))


def zeroshot_suite(image_emb, labels, weights, scale: float, n_bins: int = 10,
                   prefix: str = "zeroshot/dataset"):
    """Top-1/top-5 accuracy (percent) and ECE of ``scale * image_emb @ weights.T``.

    Returns ``(metrics, bins)``; ``bins`` is the reliability histogram of the
    max-softmax confidences.
    """
    logits = float(scale) * (unit_rows(image_emb).astype(np.float64) @ unit_rows(weights).T)
    labels = np.asarray(labels, np.int64)
    acc = metrics.topk_accuracy(logits, labels, ks=(1, 5))
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    bins = metrics.reliability_bins(probs.max(1), probs.argmax(1) == labels, n_bins)
    out = {f"{prefix}/top1": acc[1], f"{prefix}/top5": acc[5],
           f"{prefix}/ece": metrics.expected_calibration_error(logits, labels, n_bins)}
    return out, bins


# --------------------------------------------------------------------------
# few-shot linear probe

def kshot_indices(labels, k: int, seed: int) -> np.ndarray:
    """Indices of ``k`` examples per class drawn without replacement (seeded).

    Classes with fewer than ``k`` examples contribute all they have.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def fewshot_suite(train_x, train_y, test_x, test_y, ks: Iterable[int] = (1, 2, 4, 8, 16),
                  seeds: Iterable[int] = (0, 1, 2), c: float = 1.0,
                  prefix: str = "fewshot") -> dict:
    """k-shot logistic-regression probe on frozen features: mean and std over seeds.

    ``{prefix}/k{k}`` (top-1 percent, mean over seeds) and ``{prefix}/k{k}_std``.
    """
    train_y = np.asarray(train_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("few-shot probe needs at least 2 classes in the training pool")
    out = {}
    for k in ks:
        accs = []
        for s in seeds:
            idx = kshot_indices(train_y, int(k), int(s))
            accs.append(metrics.linear_probe_accuracy(train_x[idx], train_y[idx],
                                                      test_x, test_y, c=c))
        out[f"{prefix}/k{int(k)}"] = float(np.mean(accs))
        out[f"{prefix}/k{int(k)}_std"] = float(np.std(accs))
    return out


# --------------------------------------------------------------------------
# embedding arithmetic (SIMAT protocol)

def arithmetic_neighbours(image_emb, source, delta, lams: Sequence[float] = LAMBDAS,
                          chunk: int = 1024) -> np.ndarray:
    """Nearest image to ``q = v_src + lam * delta`` other than the source, per lam.

    Args:
      image_emb: (N, D) image embeddings (normalised here).
      source: (Q,) index of each query's source image.
      delta: (Q, D) ``w_target - w_value`` of normalised word embeddings.
      lams: the lambda sweep.
    Returns:
      int64 (len(lams), Q) index of the retrieved image.
    """
    img = unit_rows(image_emb)
    source = np.asarray(source, np.int64)
    delta = np.asarray(delta, np.float32)
    if delta.shape != (len(source), img.shape[1]):
        raise ValueError(f"delta must have shape ({len(source)}, {img.shape[1]}), "
                         f"got {delta.shape}")
    out = np.empty((len(lams), len(source)), np.int64)
    for li, lam in enumerate(lams):
        for start in range(0, len(source), chunk):
            rows = slice(start, start + chunk)
            q = img[source[rows]] + float(lam) * delta[rows]
            sims = q @ img.T
            sims[np.arange(sims.shape[0]), source[rows]] = -np.inf  # never the source itself
            out[li, rows] = sims.argmax(axis=1)
    return out


def arithmetic_scores(neighbours, is_correct, weights=None,
                      lams: Sequence[float] = LAMBDAS) -> dict:
    """Weighted success rate (percent) per lambda and the max over lambdas.

    ``is_correct(neighbours_row) -> bool (Q,)`` judges one lambda's retrievals;
    ``weights`` (Q,) default uniform (SIMAT uses ``1/sqrt(norm2)``).
    """
    nb = np.asarray(neighbours)
    w = np.ones(nb.shape[1]) if weights is None else np.asarray(weights, np.float64)
    per_lam = {float(lam): 100.0 * float(np.average(is_correct(nb[i]), weights=w))
               for i, lam in enumerate(lams)}
    best = max(per_lam, key=per_lam.get)
    return {"score": per_lam[best], "best_lambda": best, "per_lambda": per_lam}


def demo_arithmetic_suite(image_emb, triples, word_emb: Mapping[str, np.ndarray],
                          lams: Sequence[float] = LAMBDAS, prefix: str = "arithmetic/demo") -> dict:
    """SIMAT-style arithmetic on the demo's attribute-swap triples.

    A query swaps ``word`` for ``new_word`` in image ``source``; it succeeds when the
    retrieved image is one of the triple's ``answers``. Uniform weights. Without
    triples only ``num_queries = 0`` is reported.
    """
    if not triples:  # tiny splits may hold no swap pairs: report that, not a crash
        return {f"{prefix}/num_queries": 0.0}
    src = np.array([tr.source for tr in triples], np.int64)
    delta = np.stack([unit_rows(word_emb[tr.new_word]) - unit_rows(word_emb[tr.word])
                      for tr in triples])
    nb = arithmetic_neighbours(image_emb, src, delta, lams)
    answers = [frozenset(tr.answers) for tr in triples]
    res = arithmetic_scores(nb, lambda row: np.array([r in a for r, a in zip(row, answers)]),
                            lams=lams)
    return {f"{prefix}/score": res["score"], f"{prefix}/best_lambda": res["best_lambda"],
            f"{prefix}/num_queries": float(len(triples))}


def simat_suite(image_emb, source, value_words, target_words, target_ids, norm2,
                similarity, word_emb: Mapping[str, np.ndarray], lams: Sequence[float] = LAMBDAS,
                threshold: float = 0.5, prefix: str = "arithmetic/simat") -> dict:
    """SIMAT score: a retrieval succeeds when ``similarity[retrieved, target_id] > 0.5``.

    Args:
      image_emb: (N, D) embeddings of the SIMAT images in dataset-id order.
      source: (Q,) dataset id of each transformation's image.
      value_words / target_words: (Q,) the word replaced and its replacement.
      target_ids: (Q,) column of ``similarity`` holding the transformed caption.
      norm2: (Q,) SIMAT's ``norm2``; weights are ``1/sqrt(norm2)`` (normalised).
      similarity: (N, C) OSCAR image-caption scores shipped with SIMAT.
    """
    delta = np.stack([unit_rows(word_emb[t]) - unit_rows(word_emb[v])
                      for v, t in zip(value_words, target_words)])
    nb = arithmetic_neighbours(image_emb, source, delta, lams)
    sim = np.asarray(similarity)
    tid = np.asarray(target_ids, np.int64)
    w = 1.0 / np.sqrt(np.asarray(norm2, np.float64))
    res = arithmetic_scores(nb, lambda row: sim[row, tid] > threshold, w / w.sum(), lams)
    return {f"{prefix}/score": res["score"], f"{prefix}/best_lambda": res["best_lambda"],
            f"{prefix}/num_queries": float(len(tid))}
