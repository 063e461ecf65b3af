"""Array-level evaluation metrics (their definitions: docs/method.md).

Inputs are float arrays (NumPy or JAX); outputs are Python floats or dicts of
them. Everything runs on the host in NumPy: similarity matrices are formed in
row chunks, so 5k images x 25k captions needs a few hundred MB at most and
nothing of size N x N x D is ever built. Embeddings are L2-normalised here
before any cosine is taken.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

CHUNK = 1024  # rows of a similarity matrix formed at once


def _as_f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def unit_rows(x, dtype=np.float32) -> np.ndarray:
    """Rows (the last axis) of ``x`` scaled to unit L2 norm: the one NumPy row
    normalisation of the project (``losses.l2_normalize`` is the JAX one).

    Args:
      x: array-like of shape (..., D); a single vector (D,) is one row.
      dtype: dtype of the result (and of the computation); float32 unless asked.

    Returns:
      A new array of ``x``'s shape and ``dtype``: ``x / max(||x||, 1e-12)`` row by row,
      so an all-zero row stays zero instead of becoming NaN.

    References:
      CLIP compares L2-normalised embeddings by their dot product (cosine similarity):
      Radford et al. 2021, https://arxiv.org/abs/2103.00020

    Examples:
      >>> unit_rows([[3.0, 4.0], [0.0, 0.0]])
      array([[0.6, 0.8],
             [0. , 0. ]], dtype=float32)
    """
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _unit(x) -> np.ndarray:
    """``unit_rows`` of an (N, D) embedding array (any other shape is an error)."""
    x = _as_f32(x)
    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) embedding array, got shape {x.shape}")
    return unit_rows(x)


def _check_pairs(v, t, name: str):
    v, t = _unit(v), _unit(t)
    if v.shape != t.shape:
        raise ValueError(f"{name}: paired embeddings must have the same shape, "
                         f"got {v.shape} and {t.shape}")
    return v, t


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------
# retrieval

def caption_groups(captions: Sequence[str]) -> np.ndarray:
    """Group id per caption: captions with identical text share an id.

    Pass it as ``text_groups`` to ``retrieval_recall`` / ``retrieval_confidences`` so
    that a caption is as good as any other caption with the same text.

    Args:
      captions: the ``M`` caption strings.

    Returns:
      ``(M,)`` int64 ids, in ``[0, number of distinct texts)``.

    References:
      Chen et al., *Microsoft COCO Captions: Data Collection and Evaluation Server*,
      2015 (COCO repeats captions across and within images).

    Examples:
      >>> from gmm_jax import metrics
      >>> metrics.caption_groups(["a dog", "a cat", "a dog"]).tolist()
      [1, 0, 1]
    """
    _, inverse = np.unique(np.asarray(list(captions), dtype=object).astype(str),
                           return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _check_retrieval(image_emb, text_emb, text_to_image, text_groups):
    img, txt = _unit(image_emb), _unit(text_emb)
    owner = np.asarray(text_to_image, dtype=np.int64)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},) (one image index per "
                         f"caption), got {owner.shape}")
    if n_txt and (owner.min() < 0 or owner.max() >= n_img):
        raise ValueError(f"text_to_image holds image indices outside [0, {n_img})")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image_emb {img.shape} and text_emb {txt.shape} differ in embedding size")
    if text_groups is None:
        groups = np.arange(n_txt, dtype=np.int64)  # every caption its own text
    else:
        groups = np.asarray(text_groups)
        if groups.shape != (n_txt,) or not np.issubdtype(groups.dtype, np.integer):
            raise ValueError(f"text_groups must be an integer array of shape ({n_txt},) (one "
                             f"group id per caption), got {groups.dtype} {groups.shape}")
        groups = np.unique(groups, return_inverse=True)[1].reshape(-1).astype(np.int64)
        if groups.max(initial=-1) + 1 == n_txt:  # all distinct: the plain rule, fast path
            groups = np.arange(n_txt, dtype=np.int64)
    return img, txt, owner, groups


class _GroupImages:
    """For each text group, the sorted distinct images holding a caption of that text
    (a CSR table, so no (groups x images) matrix is ever built)."""

    def __init__(self, owner: np.ndarray, groups: np.ndarray, n_img: int):
        pairs = np.unique(groups * n_img + owner)
        self.images = pairs % n_img
        n_groups = int(groups.max()) + 1 if len(groups) else 0
        self.start = np.searchsorted(pairs // n_img, np.arange(n_groups))
        self.count = np.bincount(pairs // n_img, minlength=n_groups)
        self.n_img = n_img

    def mask(self, query_groups: np.ndarray) -> np.ndarray:
        """bool (Q, n_img): image i holds a caption of query q's text."""
        counts = self.count[query_groups]
        rows = np.repeat(np.arange(len(query_groups)), counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        cols = self.images[np.repeat(self.start[query_groups], counts) + offset]
        out = np.zeros((len(query_groups), self.n_img), dtype=bool)
        out[rows, cols] = True
        return out


def _image_positives(rows: slice, owner: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """bool (len(rows), M): caption j's text is one of image i's caption texts."""
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    mine = (owner >= rows.start) & (owner < rows.stop)
    has = np.zeros((rows.stop - rows.start, n_groups), dtype=bool)
    has[owner[mine] - rows.start, groups[mine]] = True
    if n_groups == len(groups):  # every caption its own text (groups == arange)
        return has
    return has[:, groups]


def retrieval_recall(image_emb, text_emb, text_to_image, ks: Sequence[int] = (1, 5, 10),
                     text_groups=None) -> dict:
    """Recall@K in percent, image->text and text->image.

    ``text_to_image[j]`` is the index of caption ``j``'s image; an image may
    have several captions. An image query is right when one of its positive
    captions ranks within the top K; a caption query when a positive image does.

    Positives: without ``text_groups`` the image's own captions (resp. the
    caption's own image). With ``text_groups`` (``caption_groups``) captions with
    identical text are interchangeable: for an image query every caption whose text
    equals one of the image's captions is positive, and for a caption query every
    image that has a caption of the same text. With all ids distinct this is the
    three-argument meaning.

    Ties count against the query: a negative scoring exactly as high as the best
    positive ranks before it (the same rule as ``topk_accuracy``), so a
    collapsed, constant embedding scores at or below chance, never 100.

    Args:
      image_emb: ``(N, D)`` image embeddings (normalised here).
      text_emb: ``(M, D)`` caption embeddings (normalised here).
      text_to_image: ``(M,)`` int, the image of each caption.
      ks: the K of Recall@K.
      text_groups: optional ``(M,)`` int text ids (``caption_groups``).

    Returns:
      ``{"i2t": {k: pct}, "t2i": {k: pct}}``.

    References:
      Karpathy & Fei-Fei, *Deep Visual-Semantic Alignments for Generating Image
      Descriptions*, CVPR 2015 (the retrieval protocol and splits).

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> e = np.eye(3)
      >>> metrics.retrieval_recall(e, e, [0, 1, 2], ks=(1,))
      {'i2t': {1: 100.0}, 't2i': {1: 100.0}}
    """
    img, txt, owner, groups = _check_retrieval(image_emb, text_emb, text_to_image, text_groups)
    n_img, n_txt = img.shape[0], txt.shape[0]
    ks = tuple(int(k) for k in ks)

    # image -> text: negatives scoring at or above the best positive caption.
    i2t_rank = np.empty(n_img, dtype=np.int64)
    for rows in _chunks(n_img):
        sims = img[rows] @ txt.T  # (chunk, n_txt)
        is_pos = _image_positives(rows, owner, groups)
        best_pos = np.max(sims, axis=1, where=is_pos, initial=-np.inf)
        ahead = sims >= best_pos[:, None]
        del sims  # in-place from here: 5k x 25k stays within a few (chunk, M) buffers
        np.logical_and(ahead, np.logical_not(is_pos, out=is_pos), out=ahead)
        i2t_rank[rows] = ahead.sum(axis=1)

    # text -> image: images without the caption's text scoring at or above the best one with it.
    table = _GroupImages(owner, groups, n_img)
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    for rows in _chunks(n_txt):
        sims = txt[rows] @ img.T  # (chunk, n_img)
        is_pos = table.mask(groups[rows])
        best_pos = np.max(sims, axis=1, where=is_pos, initial=-np.inf)
        t2i_rank[rows] = np.sum((sims >= best_pos[:, None]) & ~is_pos, axis=1)

    return {
        "i2t": {k: 100.0 * float(np.mean(i2t_rank < k)) for k in ks},
        "t2i": {k: 100.0 * float(np.mean(t2i_rank < k)) for k in ks},
    }


def rsum(recalls: dict) -> float:
    """Sum of all recalls returned by ``retrieval_recall`` (the usual "rsum").

    Args:
      recalls: ``{"i2t": {k: pct}, "t2i": {k: pct}}``.

    Returns:
      The sum over both directions and every K.

    References:
      Faghri et al., *VSE++: Improving Visual-Semantic Embeddings with Hard
      Negatives*, BMVC 2018.

    Examples:
      >>> from gmm_jax import metrics
      >>> metrics.rsum({"i2t": {1: 50.0, 5: 90.0}, "t2i": {1: 40.0, 5: 80.0}})
      260.0
    """
    return float(sum(v for direction in recalls.values() for v in direction.values()))


# --------------------------------------------------------------------------
# geometry of the embedding space

def modality_gap(v, t) -> float:
    """Centroid distance ``|| mean(v) - mean(t) ||_2`` of the normalised embeddings.

    Args:
      v: ``(N, D)`` image embeddings.
      t: ``(M, D)`` text embeddings.

    Returns:
      The distance between the two modalities' centroids (0 to 2).

    References:
      Liang et al., *Mind the Gap: Understanding the Modality Gap in Multi-modal
      Contrastive Representation Learning*, NeurIPS 2022.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> metrics.modality_gap(np.array([[1.0, 0.0]]), np.array([[0.0, 3.0]]))
      1.4142135623730951
    """
    v, t = _unit(v), _unit(t)
    return float(np.linalg.norm(v.astype(np.float64).mean(0) - t.astype(np.float64).mean(0)))


def mean_positive_cosine(v, t) -> float:
    """Mean cosine of the matched pairs, ``mean_i <v_i, t_i>``.

    Args:
      v: ``(N, D)`` image embeddings (normalised here).
      t: ``(N, D)`` text embeddings paired with ``v``.

    Returns:
      A float in ``[-1, 1]``.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023
      (reported beside uniformity and alignment).

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> v, t = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
      >>> metrics.mean_positive_cosine(v, t)
      0.5
    """
    v, t = _check_pairs(v, t, "mean_positive_cosine")
    return float(np.mean(np.sum(v.astype(np.float64) * t, axis=1)))


def relative_alignment(v, t) -> float:
    """How much closer each caption is to its image than to the nearest other image.

    ``mean_i [ ||t_i - v_i||^2 - min_{j != i} ||t_i - v_j||^2 ]``; negative when each
    caption is closer to its own image than to any other.

    Args:
      v: ``(N, D)`` image embeddings (normalised here), ``N >= 2``.
      t: ``(N, D)`` text embeddings paired with ``v``.

    Returns:
      The mean difference of squared distances.

    References:
      Oh et al., *Geodesic Multi-Modal Mixup for Robust Fine-Tuning*, NeurIPS 2023.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> e = np.eye(2)
      >>> metrics.relative_alignment(e, e)  # 0 to its own image, 2 to the other
      -2.0
    """
    v, t = _check_pairs(v, t, "relative_alignment")
    n = v.shape[0]
    if n < 2:
        raise ValueError(f"relative_alignment needs N >= 2 pairs, got {n}")
    total = 0.0
    for rows in _chunks(n):
        sims = t[rows] @ v.T  # unit rows: ||t - v||^2 = 2 - 2 <t, v>
        idx = np.arange(rows.start, rows.stop)
        pos = sims[np.arange(len(idx)), idx].astype(np.float64)
        sims[np.arange(len(idx)), idx] = -np.inf
        nearest_other = sims.max(axis=1).astype(np.float64)
        total += float(np.sum((2 - 2 * pos) - (2 - 2 * nearest_other)))
    return total / n


def uniformity(x, t: float = 2.0) -> float:
    """Uniformity of the normalised rows, chunked: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)``.

    docs/method.md applies it to ``concat(v, t)``; ``losses.uniformity`` is the
    differentiable version used in training.

    Args:
      x: ``(N, D)`` rows (normalised here), ``N >= 2``.
      t: the kernel's inverse width.

    Returns:
      The uniformity (lower is more uniform).

    References:
      Wang & Isola, *Understanding Contrastive Representation Learning through
      Alignment and Uniformity on the Hypersphere*, ICML 2020.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> metrics.uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]]))  # log exp(-2 * 4)
      -8.0
    """
    x = _unit(x)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"uniformity needs N >= 2 rows, got {n}")
    # log-sum-exp accumulated chunk by chunk; exponents are in [-4t, 0].
    total = 0.0
    for rows in _chunks(n):
        sq = np.maximum(2.0 - 2.0 * (x[rows] @ x.T), 0.0).astype(np.float64)
        upper = np.arange(n)[None, :] > np.arange(rows.start, rows.stop)[:, None]
        total += float(np.sum(np.exp(-t * sq[upper])))
    return float(np.log(total / (n * (n - 1) / 2)))


def alignment(v, t, alpha: float = 2.0) -> float:
    """Alignment of the normalised pairs: ``mean_i ||v_i - t_i||^alpha``.

    Args:
      v: ``(N, D)`` image embeddings (normalised here).
      t: ``(N, D)`` text embeddings paired with ``v``.
      alpha: the exponent.

    Returns:
      The alignment (lower is closer).

    References:
      Wang & Isola, *Understanding Contrastive Representation Learning through
      Alignment and Uniformity on the Hypersphere*, ICML 2020.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> round(metrics.alignment(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])), 6)
      2.0
    """
    v, t = _check_pairs(v, t, "alignment")
    return float(np.mean(np.linalg.norm(v.astype(np.float64) - t, axis=1) ** alpha))


def linear_separability(v, t, seed: int = 0) -> float:
    """Test accuracy of a logistic regression telling images from texts.

    80/20 random split (``seed``) of ``concat(v, t)`` labelled by modality.

    Args:
      v: ``(N, D)`` image embeddings (normalised here).
      t: ``(M, D)`` text embeddings (normalised here).
      seed: the split's seed.

    Returns:
      Accuracy in ``[0, 1]``: 0.5 means the modalities are indistinguishable, 1.0 a
      clean gap.

    References:
      Liang et al., *Mind the Gap: Understanding the Modality Gap in Multi-modal
      Contrastive Representation Learning*, NeurIPS 2022.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> rng = np.random.default_rng(0)
      >>> v = rng.normal(size=(50, 4)) + [3, 0, 0, 0]
      >>> t = rng.normal(size=(50, 4)) - [3, 0, 0, 0]
      >>> metrics.linear_separability(v, t)
      1.0
    """
    from sklearn.linear_model import LogisticRegression

    v, t = _unit(v), _unit(t)
    x = np.concatenate([v, t]).astype(np.float64)
    y = np.concatenate([np.zeros(len(v)), np.ones(len(t))])
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = int(round(0.8 * len(x)))
    train, test = order[:n_train], order[n_train:]
    if len(test) == 0 or len(np.unique(y[train])) < 2:
        raise ValueError("linear_separability needs enough rows for an 80/20 split with both "
                         f"modalities, got {len(v)} + {len(t)}")
    clf = LogisticRegression(max_iter=2000)
    clf.fit(x[train], y[train])
    return float(np.mean(clf.predict(x[test]) == y[test]))


# --------------------------------------------------------------------------
# calibration

def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(confidences, correct, n_bins: int = 10) -> dict:
    """Equal-width confidence bins on [0, 1]: count, mean confidence, accuracy.

    A confidence ``c`` falls in bin ``ceil(c * n_bins) - 1`` (bins are
    ``(lo, hi]``, the first one closed at 0). Empty bins report NaN means.

    Args:
      confidences: ``(N,)`` top-1 confidences in ``[0, 1]``.
      correct: ``(N,)`` bool, whether each top-1 prediction is right.
      n_bins: the number of bins.

    Returns:
      ``{"edges": (n_bins + 1,), "count", "confidence", "accuracy": (n_bins,)}``.

    References:
      Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017.

    Examples:
      >>> from gmm_jax import metrics
      >>> bins = metrics.reliability_bins([0.1, 0.9, 0.95], [False, True, False], n_bins=2)
      >>> bins["count"].tolist(), bins["accuracy"].tolist()
      ([1.0, 2.0], [0.0, 0.5])
    """
    conf = np.asarray(confidences, np.float64).reshape(-1)
    ok = np.asarray(correct, np.float64).reshape(-1)
    if conf.shape != ok.shape:
        raise ValueError(f"confidences {conf.shape} and correct {ok.shape} differ in length")
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, weights=ok, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count,
            "confidence": mean_conf, "accuracy": accuracy}


def calibration_error(confidences, correct, n_bins: int = 10) -> float:
    """Expected calibration error ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    Args:
      confidences: ``(N,)`` top-1 confidences in ``[0, 1]``.
      correct: ``(N,)`` bool, whether each top-1 prediction is right.
      n_bins: the number of equal-width bins (``reliability_bins``).

    Returns:
      The ECE in ``[0, 1]``.

    References:
      Naeini et al., *Obtaining Well Calibrated Probabilities Using Bayesian
      Binning*, AAAI 2015; Guo et al., *On Calibration of Modern Neural Networks*,
      ICML 2017.

    Examples:
      >>> from gmm_jax import metrics
      >>> round(metrics.calibration_error([0.9, 0.9], [True, False]), 4)  # |0.5 - 0.9|
      0.4
    """
    bins = reliability_bins(confidences, correct, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def expected_calibration_error(logits, labels, n_bins: int = 10) -> float:
    """ECE of the row-wise softmax of ``logits`` against ``labels``.

    Args:
      logits: ``(N, C)`` class scores.
      labels: ``(N,)`` int true classes.
      n_bins: the number of equal-width bins.

    Returns:
      The ECE in ``[0, 1]``.

    References:
      Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> logits = np.log([[0.8, 0.2], [0.8, 0.2]])  # confidence 0.8, one right
      >>> round(metrics.expected_calibration_error(logits, [0, 1]), 4)
      0.3
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and "
                         f"{labels.shape}")
    probs = _softmax(logits)
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)


def retrieval_confidences(image_emb, text_emb, text_to_image, scale: float,
                          text_groups=None) -> dict:
    """Top-1 confidence and correctness of retrieval, for calibration.

    Row-wise softmax of ``scale * S`` (``S`` the cosine matrix): for each image
    query the max probability over captions, correct when the top caption is a
    positive; for each caption query likewise over images. Positives as in
    ``retrieval_recall`` (``text_groups``: identical captions interchangeable).

    Args:
      image_emb: ``(N, D)`` image embeddings (normalised here).
      text_emb: ``(M, D)`` caption embeddings (normalised here).
      text_to_image: ``(M,)`` int, the image of each caption.
      scale: the logit scale ``1 / tau``.
      text_groups: optional ``(M,)`` int text ids (``caption_groups``).

    Returns:
      ``{"i2t": (conf, correct), "t2i": (conf, correct)}``, arrays per query.

    References:
      Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017.

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> conf, correct = metrics.retrieval_confidences(np.eye(2), np.eye(2), [0, 1], 1.0)["i2t"]
      >>> conf.round(4).tolist(), correct.tolist()
      ([0.7311, 0.7311], [True, True])
    """
    img, txt, owner, groups = _check_retrieval(image_emb, text_emb, text_to_image, text_groups)
    table = _GroupImages(owner, groups, img.shape[0])
    out = {}
    for name, queries, keys in (("i2t", img, txt), ("t2i", txt, img)):
        conf = np.empty(len(queries))
        correct = np.empty(len(queries), dtype=bool)
        for rows in _chunks(len(queries)):
            logits = scale * (queries[rows] @ keys.T).astype(np.float64)
            probs = _softmax(logits)
            top = probs.argmax(axis=1)
            conf[rows] = probs.max(axis=1)
            if name == "i2t":  # the top caption's text is one of the image's caption texts
                pos = _image_positives(rows, owner, groups)
            else:  # the top image holds a caption with the query's text
                pos = table.mask(groups[rows])
            correct[rows] = pos[np.arange(len(top)), top]
        out[name] = (conf, correct)
    return out


# --------------------------------------------------------------------------
# classification on frozen features

def topk_accuracy(logits, labels, ks: Sequence[int] = (1, 5)) -> dict:
    """Top-K accuracy in percent; K larger than C counts as C.

    Ties count against the query, as in ``retrieval_recall``: a wrong class scoring
    exactly the true class's logit ranks before it, so constant logits (a
    collapsed model) score 0 for K < C, not 100.

    Args:
      logits: ``(N, C)`` class scores.
      labels: ``(N,)`` int true classes.
      ks: the K of top-K.

    Returns:
      ``{k: pct}``.

    References:
      Russakovsky et al., *ImageNet Large Scale Visual Recognition Challenge*, IJCV
      2015 (top-1 / top-5 accuracy).

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> metrics.topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 0], ks=(1, 3))
      {1: 0.0, 3: 100.0}
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and "
                         f"{labels.shape}")
    true_score = logits[np.arange(len(labels)), labels]
    rank = np.sum(logits >= true_score[:, None], axis=1) - 1  # minus the true class itself
    return {int(k): 100.0 * float(np.mean(rank < k)) for k in ks}


def linear_probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0) -> float:
    """Top-1 accuracy (percent) of a logistic-regression probe on frozen features.

    Args:
      train_x: ``(N, D)`` training features (normalised here).
      train_y: ``(N,)`` training labels.
      test_x: ``(M, D)`` test features (normalised here).
      test_y: ``(M,)`` test labels.
      c: the inverse L2 regularisation strength.

    Returns:
      Test accuracy in percent.

    References:
      Radford et al., *Learning Transferable Visual Models From Natural Language
      Supervision*, ICML 2021 (the linear-probe protocol).

    Examples:
      >>> import numpy as np
      >>> from gmm_jax import metrics
      >>> x, y = np.array([[1.0, 0.1], [0.9, 0.0], [0.1, 1.0], [0.0, 0.9]]), [0, 0, 1, 1]
      >>> metrics.linear_probe_accuracy(x, y, x, y)
      100.0
    """
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, C=c)
    clf.fit(_unit(train_x), np.asarray(train_y))
    return 100.0 * float(np.mean(clf.predict(_unit(test_x)) == np.asarray(test_y)))
