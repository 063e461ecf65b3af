"""Array-level evaluation metrics (SPEC §4).

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


def _unit(x) -> np.ndarray:
    x = _as_f32(x)
    if x.ndim != 2:
        raise ValueError(f"expected an (N, D) embedding array, got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def _check_pairs(v, t, name: str):
    v, t = _unit(v), _unit(t)
    if v.shape != t.shape:
        raise ValueError(f"{name}: paired embeddings must have the same shape, got {v.shape} and {t.shape}")
    return v, t


def _chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --------------------------------------------------------------------------
# retrieval

def caption_groups(captions: Sequence[str]) -> np.ndarray:
    """Group id (M,) int64 per caption: captions with identical text share an id.

    Pass it as ``text_groups`` to ``retrieval_recall`` / ``retrieval_confidences`` so
    that a caption is as good as any other caption with the same text.
    """
    _, inverse = np.unique(np.asarray(list(captions), dtype=object).astype(str),
                           return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _check_retrieval(image_emb, text_emb, text_to_image, text_groups):
    img, txt = _unit(image_emb), _unit(text_emb)
    owner = np.asarray(text_to_image, dtype=np.int64)
    n_img, n_txt = img.shape[0], txt.shape[0]
    if owner.shape != (n_txt,):
        raise ValueError(f"text_to_image must have shape ({n_txt},) (one image index per caption), got {owner.shape}")
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
    caption's own image). ``text_groups`` (M,) int gives captions with identical
    text the same id (``caption_groups``); identical captions are then
    interchangeable: for an image query every caption whose text equals one of
    the image's captions is positive, and for a caption query every image that
    has a caption of the same text. With all ids distinct this is the
    three-argument meaning.

    Ties count against the query: a negative scoring exactly as high as the best
    positive ranks before it (the same rule as ``topk_accuracy``), so a
    collapsed, constant embedding scores at or below chance, never 100.

    Returns ``{"i2t": {k: pct}, "t2i": {k: pct}}``.

    Example:
      >>> e = np.eye(3)
      >>> retrieval_recall(e, e, [0, 1, 2], ks=(1,))["i2t"][1]
      100.0
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
    """Sum of all recalls returned by ``retrieval_recall`` (the usual 'rsum')."""
    return float(sum(v for direction in recalls.values() for v in direction.values()))


# --------------------------------------------------------------------------
# geometry of the embedding space

def modality_gap(v, t) -> float:
    """Centroid distance ``|| mean(v) - mean(t) ||_2`` (Liang et al. 2022)."""
    v, t = _unit(v), _unit(t)
    return float(np.linalg.norm(v.astype(np.float64).mean(0) - t.astype(np.float64).mean(0)))


def mean_positive_cosine(v, t) -> float:
    """``mean_i <v_i, t_i>`` of the normalised pairs."""
    v, t = _check_pairs(v, t, "mean_positive_cosine")
    return float(np.mean(np.sum(v.astype(np.float64) * t, axis=1)))


def relative_alignment(v, t) -> float:
    """``mean_i [ ||t_i - v_i||^2 - min_{j != i} ||t_i - v_j||^2 ]``.

    Negative when each caption is closer to its own image than to any other.
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
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over normalised rows, chunked.

    SPEC §4 applies it to ``concat(v, t)``; see ``losses.uniformity`` for the
    differentiable version used in training.
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
    """``mean_i ||v_i - t_i||^alpha`` over normalised pairs."""
    v, t = _check_pairs(v, t, "alignment")
    return float(np.mean(np.linalg.norm(v.astype(np.float64) - t, axis=1) ** alpha))


def linear_separability(v, t, seed: int = 0) -> float:
    """Test accuracy of a logistic regression telling images from texts.

    80/20 random split (``seed``) of ``concat(v, t)`` labelled by modality;
    0.5 means the modalities are indistinguishable, 1.0 a clean gap.
    """
    from sklearn.linear_model import LogisticRegression

    v, t = _unit(v), _unit(t)
    x = np.concatenate([v, t]).astype(np.float64)
    y = np.concatenate([np.zeros(len(v)), np.ones(len(t))])
    order = np.random.default_rng(seed).permutation(len(x))
    n_train = int(round(0.8 * len(x)))
    train, test = order[:n_train], order[n_train:]
    if len(test) == 0 or len(np.unique(y[train])) < 2:
        raise ValueError(f"linear_separability needs enough rows for an 80/20 split with both modalities, got {len(v)} + {len(t)}")
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
    """ECE: ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|`` over equal-width bins."""
    bins = reliability_bins(confidences, correct, n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


def expected_calibration_error(logits, labels, n_bins: int = 10) -> float:
    """ECE of row-wise softmax over ``logits (N, C)`` against ``labels (N,)``, in [0, 1]."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    probs = _softmax(logits)
    return calibration_error(probs.max(axis=1), probs.argmax(axis=1) == labels, n_bins)


def retrieval_confidences(image_emb, text_emb, text_to_image, scale: float,
                          text_groups=None) -> dict:
    """Top-1 confidence and correctness of retrieval, for calibration.

    Row-wise softmax of ``scale * S`` (``S`` the cosine matrix): for each image
    query the max probability over captions, correct when the top caption is a
    positive; for each caption query likewise over images. Positives as in
    ``retrieval_recall`` (``text_groups``: identical captions interchangeable).
    Returns ``{"i2t": (conf, correct), "t2i": (conf, correct)}``.
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
    """Top-K accuracy in percent; ``{k: pct}``. K larger than C counts as C.

    Ties count against the query, as in ``retrieval_recall``: a wrong class scoring
    exactly the true class's logit ranks before it, so constant logits (a
    collapsed model) score 0 for K < C, not 100.

    Example:
      >>> topk_accuracy(np.zeros((4, 3)), [0, 1, 2, 0], ks=(1, 3))
      {1: 0.0, 3: 100.0}
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    true_score = logits[np.arange(len(labels)), labels]
    rank = np.sum(logits >= true_score[:, None], axis=1) - 1  # minus the true class itself
    return {int(k): 100.0 * float(np.mean(rank < k)) for k in ks}


def linear_probe_accuracy(train_x, train_y, test_x, test_y, c: float = 1.0) -> float:
    """Top-1 accuracy (percent) of a logistic-regression probe on frozen features."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, C=c)
    clf.fit(_unit(train_x), np.asarray(train_y))
    return 100.0 * float(np.mean(clf.predict(_unit(test_x)) == np.asarray(test_y)))
