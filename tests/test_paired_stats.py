"""Paired intervals against independent references: SciPy's paired t-test and the exact
bootstrap distribution enumerated by brute force."""
import itertools

import numpy as np
import pytest
from scipy import stats

from gmm_jax import paired_stats

RUN = [31.2, 29.8, 33.1, 30.4, 32.0]
BASE = [30.1, 29.9, 31.0, 29.2, 30.5]


def test_t_interval_matches_scipy_paired_t_test():
    got = paired_stats.t_interval(RUN, BASE)
    ref = stats.ttest_rel(RUN, BASE).confidence_interval(0.95)
    assert got.mean == pytest.approx(np.mean(np.subtract(RUN, BASE)))
    assert (got.lo, got.hi) == pytest.approx((ref.low, ref.high))
    assert got.n == 5 and got.excludes_zero() == (ref.low > 0 or ref.high < 0)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    d = np.subtract(RUN, BASE)
    # every one of the 5^5 equally likely resamples
    means = np.array([d[list(i)].mean() for i in itertools.product(range(5), repeat=5)])
    lo, hi = np.quantile(means, [0.025, 0.975])
    got = paired_stats.bootstrap_interval(RUN, BASE, resamples=200_000, seed=1)
    assert (got.lo, got.hi) == pytest.approx((lo, hi), abs=0.03)
    assert got == paired_stats.bootstrap_interval(RUN, BASE, resamples=200_000, seed=1)


def test_excludes_zero_and_bad_input():
    assert paired_stats.Interval(1.0, 0.1, 2.0, 5).excludes_zero()
    assert not paired_stats.Interval(1.0, -0.1, 2.0, 5).excludes_zero()
    assert paired_stats.Interval(-1.0, -2.0, -0.5, 5).excludes_zero()
    with pytest.raises(ValueError, match="shapes"):
        paired_stats.t_interval([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        paired_stats.bootstrap_interval([1.0], [0.0])
