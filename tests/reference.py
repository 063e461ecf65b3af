"""Float64 NumPy restatements of docs/method.md (geodesic interpolation, losses, metrics), written straight from the formulas.

Deliberately naive (explicit arccos, explicit loops where clearer): these are
the independent references the library is tested against.
"""  # noqa: E501 (the docstring summary is kept on one line)
import numpy as np


def unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def slerp(a, b, lam):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lam = np.asarray(lam, np.float64)
    if lam.ndim == 1:
        lam = lam[:, None]
    cos = np.clip(np.sum(a * b, axis=1, keepdims=True), -1.0, 1.0)
    theta = np.arccos(cos)
    same = theta < 1e-12  # identical rows (the middle row of an odd batch vs its flip): the limit
    sin_t = np.where(same, 1.0, np.sin(theta))
    out = (np.sin(lam * theta) * a + np.sin((1 - lam) * theta) * b) / sin_t
    lin = lam * a + (1 - lam) * b
    lin = lin / np.linalg.norm(lin, axis=1, keepdims=True)
    return np.where(same, lin, out)


def log_softmax(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def ce_row(logits):
    n = logits.shape[0]
    return -np.mean(log_softmax(logits, 1)[np.arange(n), np.arange(n)])


def clip_loss(v, t, scale):
    logits = scale * (v @ t.T)
    return (ce_row(logits) + ce_row(logits.T)) / 2


def m2mix_loss(v, t, lam, scale):
    m = slerp(v, t, lam)
    a, b = v @ m.T, t @ m.T
    pos = np.sum(v * t, axis=1)
    np.fill_diagonal(a, pos)
    np.fill_diagonal(b, pos)
    return ce_row(scale * a) + ce_row(scale * b)


def m2mix_loss_openclip(v, t, lam, scale, m2_scale):
    """The authors' README (OpenCLIP) form: mixed negatives at ``m2_scale``, the
    positives at the contrastive ``scale``, the mean of the two cross-entropies."""
    m = slerp(v, t, lam)
    pos = scale * np.sum(v * t, axis=1)
    a, b = m2_scale * (v @ m.T), m2_scale * (t @ m.T)
    np.fill_diagonal(a, pos)
    np.fill_diagonal(b, pos)
    return (ce_row(a) + ce_row(b)) / 2


def soft_ce(logits, targets):
    return -np.mean(np.sum(targets * log_softmax(logits, 1), axis=1))


def _flip_eye(n):
    return np.eye(n)[::-1]


def vmix_loss(v, t, lam, scale):
    n = v.shape[0]
    logits = scale * slerp(v, v[::-1], lam) @ t.T
    y = lam * np.eye(n) + (1 - lam) * _flip_eye(n)
    return (soft_ce(logits, y) + soft_ce(logits.T, y.T)) / 2


def lmix_loss(v, t, lam, scale):
    n = v.shape[0]
    logits = scale * v @ slerp(t, t[::-1], lam).T
    y = lam * np.eye(n) + (1 - lam) * _flip_eye(n)
    return (soft_ce(logits, y) + soft_ce(logits.T, y.T)) / 2


def vlmix_loss(v, t, lam, scale):
    n = v.shape[0]
    logits = scale * slerp(v, v[::-1], lam) @ slerp(t, t[::-1], lam).T
    y = np.eye(n) + _flip_eye(n)
    return (soft_ce(logits, y) + soft_ce(logits.T, y.T)) / 2


def uniformity(x, t=2.0):
    n = x.shape[0]
    vals = [np.exp(-t * np.sum((x[i] - x[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    return np.log(np.mean(vals))


def alignment(x, y, alpha=2.0):
    return np.mean(np.linalg.norm(x - y, axis=1) ** alpha)


def cross_uniformity(x, y, t=2.0):
    d = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    mask = ~np.eye(len(x), dtype=bool)
    return np.log(np.mean(np.exp(-t * d[mask])))
