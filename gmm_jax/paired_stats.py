"""Paired differences with 95% intervals, for comparing a run with a baseline over seeds.

Seed s of both runs shares the pre-trained model and the data order, so the comparison
is on the per-seed differences ``d_s = run_s - baseline_s`` (a paired design): their mean
with a Student-t interval, or a percentile bootstrap interval when normality is doubtful.
Pure NumPy/SciPy functions, no I/O.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats


class Interval(NamedTuple):
    """Mean paired difference, its interval ``[lo, hi]``, and the number of pairs."""
    mean: float
    lo: float
    hi: float
    n: int

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def differences(run: Sequence[float], baseline: Sequence[float]) -> np.ndarray:
    """``run - baseline`` per seed, float64; the two must pair up (same length, >= 2)."""
    a, b = np.asarray(run, np.float64), np.asarray(baseline, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values must be two 1-D arrays of one length; got shapes "
                         f"{a.shape} and {b.shape}")
    if len(a) < 2:
        raise ValueError(f"an interval needs at least 2 pairs, got {len(a)}")
    return a - b


def t_interval(run, baseline, confidence: float = 0.95) -> Interval:
    """Mean difference with the Student-t interval ``mean ± t_{n-1} * sd / sqrt(n)``."""
    d = differences(run, baseline)
    n, mean = len(d), float(d.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_interval(run, baseline, confidence: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> Interval:
    """Mean difference with the percentile bootstrap interval (pairs resampled with
    replacement ``resamples`` times; deterministic for a ``seed``)."""
    d = differences(run, baseline)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(d.mean()), float(lo), float(hi), len(d))
