"""Property tests for slerp: endpoints, norm, linear angle, and degenerate pairs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gmm_jax.losses import slerp

jit_slerp = jax.jit(slerp)
FLOATS = st.floats(-1.0, 1.0, allow_nan=False, width=32)


def _unit_rows(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / n


pairs = st.integers(2, 24).flatmap(lambda d: st.tuples(
    hnp.arrays(np.float32, (3, d), elements=FLOATS),
    hnp.arrays(np.float32, (3, d), elements=FLOATS)))


def _valid(a, b):
    return np.all(np.linalg.norm(a, axis=1) > 1e-2) and np.all(np.linalg.norm(b, axis=1) > 1e-2)


def _angle(x, y):
    """Angle between rows in float64, accurate at both ends."""
    return 2 * np.arctan2(np.linalg.norm(x - y, axis=1), np.linalg.norm(x + y, axis=1))


@settings(max_examples=60, deadline=None)
@given(pairs, st.floats(0.0, 1.0))
def test_endpoints_norm_and_linear_angle(ab, lam):
    a, b = ab
    if not _valid(a, b):
        return
    a, b = _unit_rows(a), _unit_rows(b)
    theta = _angle(a, b)
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    np.testing.assert_allclose(jit_slerp(a32, b32, 1.0), a, atol=2e-3)
    np.testing.assert_allclose(jit_slerp(a32, b32, 0.0), b, atol=2e-6)
    out = np.asarray(jit_slerp(a32, b32, lam), np.float64)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # The angle from b grows linearly with lam (up to the antipodal fallback's 1e-3).
    np.testing.assert_allclose(_angle(out, b), lam * theta, atol=2e-3)


def _degenerate_pairs(d, rng):
    a = _unit_rows(rng.standard_normal((4, d)))
    tiny = _unit_rows(a + 1e-7 * rng.standard_normal((4, d)))
    near_anti = _unit_rows(-a + 1e-6 * rng.standard_normal((4, d)))
    return a, {"identical": a.copy(), "antipodal": -a, "nearly_identical": tiny,
               "nearly_antipodal": near_anti}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["identical", "antipodal", "nearly_identical", "nearly_antipodal"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_degenerate_pairs_finite_with_finite_gradients(dtype, kind, lam):
    a, others = _degenerate_pairs(16, np.random.default_rng(0))
    a, b = jnp.asarray(a, dtype), jnp.asarray(others[kind], dtype)
    out = slerp(a, b, lam)
    assert out.dtype == dtype
    out32 = np.asarray(out, np.float32)
    assert np.all(np.isfinite(out32))
    np.testing.assert_allclose(np.linalg.norm(out32, axis=1), 1.0,
                               atol=2e-2 if dtype == jnp.bfloat16 else 1e-5)
    # Gradients with respect to both endpoints and lam.
    loss = lambda a, b, lam: jnp.sum(slerp(a, b, lam).astype(jnp.float32) * jnp.arange(16.0))
    grads = jax.grad(loss, argnums=(0, 1, 2))(a, b, jnp.asarray(lam, jnp.float32))
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    if kind in ("identical", "nearly_identical"):
        np.testing.assert_allclose(out32, np.asarray(a, np.float32),
                                   atol=2e-2 if dtype == jnp.bfloat16 else 1e-5)
