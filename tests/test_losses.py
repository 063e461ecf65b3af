"""gmm_jax.losses against float64 NumPy restatements of SPEC §1-§3."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmm_jax import losses
from tests import reference as ref

SIZES = [(2, 8), (7, 16), (33, 512), (128, 32)]
LAMS = [0.0, 1.0, "beta"]


def _inputs(n, d, seed):
    rng = np.random.default_rng(seed)
    return ref.unit(rng, n, d), ref.unit(rng, n, d), rng


def _lam(spec, rng):
    return float(rng.beta(0.5, 0.5)) if spec == "beta" else spec


def _close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lam", LAMS)
def test_slerp_matches_reference(n, d, lam):
    a, b, rng = _inputs(n, d, n * 31 + d)
    lam = _lam(lam, rng)
    got = losses.slerp(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), lam)
    _close(got, ref.slerp(a, b, lam), rtol=1e-5, atol=1e-6)


def test_slerp_per_row_lam():
    a, b, rng = _inputs(9, 16, 3)
    lam = rng.uniform(size=9)
    got = losses.slerp(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.asarray(lam))
    _close(got, ref.slerp(a, b, lam))


@pytest.mark.parametrize("n,d", SIZES)
def test_clip_loss(n, d):
    v, t, _ = _inputs(n, d, n + d)
    for scale in (1.0, 1 / 0.07, 100.0):
        _close(losses.clip_loss(jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), scale),
               ref.clip_loss(v, t, scale))


@pytest.mark.parametrize("name", ["m2mix_loss", "vmix_loss", "lmix_loss", "vlmix_loss"])
@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("lam", LAMS)
def test_mix_losses(name, n, d, lam):
    v, t, rng = _inputs(n, d, 7 * n + d)
    lam = _lam(lam, rng)
    scale = 1 / 0.07
    got = getattr(losses, name)(jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), lam,
                                scale)
    _close(got, getattr(ref, name)(v, t, lam, scale))


@pytest.mark.parametrize("n,d", SIZES)
def test_uniformity_alignment(n, d):
    x, y, _ = _inputs(n, d, 3 * n + d)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    for temp in (2.0, 0.5):
        _close(losses.uniformity(x32, temp), ref.uniformity(x, temp))
        _close(losses.cross_uniformity(x32, y32, temp), ref.cross_uniformity(x, y, temp))
    for alpha in (2.0, 1.0, 3.0):
        _close(losses.alignment(x32, y32, alpha), ref.alignment(x, y, alpha))


def test_uniformity_rejects_one_row():
    with pytest.raises(ValueError, match="N >= 2"):
        losses.uniformity(jnp.ones((1, 4)))


ALL_LOSSES = {
    "clip_loss": lambda v, t: losses.clip_loss(v, t, 10.0),
    "m2mix_loss": lambda v, t: losses.m2mix_loss(v, t, 0.3, 10.0),
    "vmix_loss": lambda v, t: losses.vmix_loss(v, t, 0.3, 10.0),
    "lmix_loss": lambda v, t: losses.lmix_loss(v, t, 0.3, 10.0),
    "vlmix_loss": lambda v, t: losses.vlmix_loss(v, t, 0.3, 10.0),
    "uniformity": lambda v, t: losses.uniformity(v),
    "alignment": lambda v, t: losses.alignment(v, t),
    "cross_uniformity": lambda v, t: losses.cross_uniformity(v, t),
}


REFERENCE_LOSSES = {
    "clip_loss": lambda v, t: ref.clip_loss(v, t, 10.0),
    "m2mix_loss": lambda v, t: ref.m2mix_loss(v, t, 0.3, 10.0),
    "vmix_loss": lambda v, t: ref.vmix_loss(v, t, 0.3, 10.0),
    "lmix_loss": lambda v, t: ref.lmix_loss(v, t, 0.3, 10.0),
    "vlmix_loss": lambda v, t: ref.vlmix_loss(v, t, 0.3, 10.0),
    "uniformity": lambda v, t: ref.uniformity(v),
    "alignment": lambda v, t: ref.alignment(v, t),
    "cross_uniformity": lambda v, t: ref.cross_uniformity(v, t),
}


def _on_sphere(fn, xp):
    def wrapped(v, t):
        norm = lambda x: x / xp.linalg.norm(x, axis=1, keepdims=True)
        return fn(norm(v), norm(t))
    return wrapped


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_jit_and_grad(name):
    """jit works, and the gradient matches float64 central differences of the NumPy reference."""
    v, t, rng = _inputs(6, 5, 11)
    fn = _on_sphere(ALL_LOSSES[name], jnp)
    g = jax.jit(jax.grad(fn, argnums=(0, 1)))(jnp.asarray(v, jnp.float32),
                                              jnp.asarray(t, jnp.float32))
    assert all(np.all(np.isfinite(x)) for x in g)
    ref_fn = _on_sphere(REFERENCE_LOSSES[name], np)
    dv, dt = rng.standard_normal(v.shape), rng.standard_normal(t.shape)
    eps = 1e-6
    numeric = (ref_fn(v + eps * dv, t + eps * dt) - ref_fn(v - eps * dv, t - eps * dt)) / (2 * eps)
    analytic = float(np.sum(np.asarray(g[0], np.float64) * dv)
                     + np.sum(np.asarray(g[1], np.float64) * dt))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_bf16_inputs(name):
    v, t, _ = _inputs(16, 32, 5)
    fn = ALL_LOSSES[name]
    want = fn(jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32))
    got = fn(jnp.asarray(v, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), float(want), rtol=3e-2, atol=3e-2)
    grads = jax.grad(fn, argnums=(0, 1))(jnp.asarray(v, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in grads)


# --- swaps and temperature -------------------------------------------------

def test_hard_swap():
    rng = np.random.default_rng(1)
    # Images all-positive, texts all-negative: the sign of each output coordinate
    # tells which modality it came from.
    v = np.abs(ref.unit(rng, 400, 16))
    t = -np.abs(ref.unit(rng, 400, 16))
    v32, t32 = jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32)
    v0, t0 = losses.modality_swap_hard(v32, t32, jax.random.key(0), 0.0)
    np.testing.assert_array_equal(v0, v32)
    np.testing.assert_array_equal(t0, t32)
    v1, t1 = (np.asarray(x, np.float64)
              for x in losses.modality_swap_hard(v32, t32, jax.random.key(0), 0.5))
    from_t = v1 < 0
    chosen = np.any(from_t, axis=1)
    assert 0.4 < chosen.mean() < 0.6  # pairs chosen with probability p
    assert 0.4 < from_t[chosen].mean() < 0.6  # coordinates swapped with probability 1/2
    raw_v, raw_t = np.where(from_t, t, v), np.where(from_t, v, t)
    np.testing.assert_allclose(v1, raw_v / np.linalg.norm(raw_v, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(t1, raw_t / np.linalg.norm(raw_t, axis=1, keepdims=True), atol=1e-6)


def test_soft_swap_probability_and_convexity():
    v, t, _ = _inputs(2000, 4, 2)
    v32, t32 = jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32)
    v1, _ = losses.modality_swap_soft(v32, t32, jax.random.key(1), 0.25)
    changed = ~np.all(np.isclose(np.asarray(v1), v, atol=1e-6), axis=1)
    assert 0.2 < changed.mean() < 0.3
    np.testing.assert_allclose(np.linalg.norm(np.asarray(v1), axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("mode", ["learned", "softplus", "exp"])
def test_temperature_parameterisations(mode):
    for scale in (1.0, 14.28, 100.0):
        param = losses.param_from_scale(mode, scale, s=4.0)
        np.testing.assert_allclose(float(losses.scale_from_param(mode, param, s=4.0)), scale,
                                   rtol=1e-5)
    want = {"learned": math.exp(0.7), "softplus": math.log1p(math.exp(0.7)),
            "exp": math.exp(0.7 / 4)}[mode]
    np.testing.assert_allclose(float(losses.scale_from_param(mode, 0.7, s=4.0)), want, rtol=1e-6)


def test_tau_schedule():
    sched = losses.tau_schedule(0.01, 0.05, 100)
    np.testing.assert_allclose([float(sched(s)) for s in (0, 50, 100, 200)],
                               [0.01, 0.03, 0.05, 0.05], rtol=1e-6)


# --- the recipe builder ----------------------------------------------------

def _cfg(**kw):
    base = dict(method="clip", mix_schedule="inverse_epoch", mix_form="reference", c_m2=0.01,
                beta_m2=0.5, m2_scale=1 / 0.07, c_u=0.05, beta_u=0.5, c_vl=0.1, beta_vl=0.5,
                w_uniformity=1.0, w_alignment=1.0, w_cross_uniformity=1.0, uniformity_t=2.0,
                alignment_alpha=2.0, swap="none", swap_p=0.0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _beta_draw(key, index, b):
    return float(jax.random.beta(jax.random.split(key, 5)[index], b, b))


@pytest.mark.parametrize("method", losses.METHODS)
@pytest.mark.parametrize("epoch", [0, 3])
def test_recipe_is_the_documented_sum(method, epoch):
    v, t, _ = _inputs(12, 16, 4)
    key = jax.random.key(42)
    scale = 1 / 0.01
    obj = jax.jit(losses.build_objective(_cfg(method=method, c_vl=0.2, beta_m2=0.2)))
    total, aux = obj(jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), scale, key, epoch)
    want = ref.clip_loss(v, t, scale)
    w_e = 1 / (epoch + 1)
    if method in ("m2mix", "m3mix"):
        lam = _beta_draw(key, 1, 0.2)
        want += w_e * 0.01 * ref.m2mix_loss(v, t, lam, 1 / 0.07)
        np.testing.assert_allclose(float(aux["lam_m2"]), lam, rtol=1e-6)
    if method == "m3mix":
        want += w_e * (0.05 * ref.vmix_loss(v, t, _beta_draw(key, 2, 0.5), scale)
                       + 0.05 * ref.lmix_loss(v, t, _beta_draw(key, 3, 0.5), scale)
                       + 0.2 * ref.vlmix_loss(v, t, _beta_draw(key, 4, 0.5), scale))
    if method in ("cua", "cuaxu"):
        want += (ref.uniformity(v) + ref.uniformity(t)) / 2 + ref.alignment(v, t)
    if method == "cuaxu":
        want += ref.cross_uniformity(v, t)
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    assert float(aux["total"]) == float(total)


def test_recipe_constant_schedule_and_openclip_form():
    v, t, _ = _inputs(10, 8, 9)
    key = jax.random.key(3)
    lam = _beta_draw(key, 1, 0.5)
    for m2_scale, neg_scale in ((None, 20.0), (1 / 0.07, 1 / 0.07)):
        obj = losses.build_objective(_cfg(method="m2mix", mix_schedule="constant",
                                          mix_form="openclip", m2_scale=m2_scale))
        total, aux = obj(jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), 20.0, key, 5)
        want = ref.m2mix_loss_openclip(v, t, lam, 20.0, neg_scale)
        np.testing.assert_allclose(float(aux["m2mix"]), want, rtol=1e-5)
        np.testing.assert_allclose(float(total), ref.clip_loss(v, t, 20.0) + 0.01 * want,
                                   rtol=1e-5)
    # with one scale the form is half the reference term
    np.testing.assert_allclose(ref.m2mix_loss_openclip(v, t, lam, 20.0, 20.0),
                               ref.m2mix_loss(v, t, lam, 20.0) / 2, rtol=1e-12)


def test_recipe_rejects_unknown_method():
    with pytest.raises(ValueError, match="loss.method='mixup'"):
        losses.build_objective(_cfg(method="mixup"))


def test_recipe_swap_changes_embeddings_only_when_enabled():
    v, t, _ = _inputs(16, 8, 9)
    args = (jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), 10.0, jax.random.key(0), 0)
    base, _ = losses.build_objective(_cfg())(*args)
    off, _ = losses.build_objective(_cfg(swap="hard", swap_p=0.0))(*args)
    on, _ = losses.build_objective(_cfg(swap="soft", swap_p=1.0))(*args)
    assert float(off) == pytest.approx(float(base), rel=1e-6)
    assert abs(float(on) - float(base)) > 1e-3


# --- the loss specification -------------------------------------------------

def test_loss_spec_defaults_are_the_packaged_config():
    """LossSpec's defaults (used for keys a partial config leaves out) are those of
    gmm_jax/configs/default.py, field for field."""
    from gmm_jax import run_config
    from gmm_jax.loss_spec import LossSpec
    config_loss = run_config.default_config().loss.to_dict()
    assert LossSpec.from_config(config_loss) == LossSpec()
    assert LossSpec.from_config({}) == LossSpec()
    assert sorted(config_loss) == sorted(f.name for f in dataclasses.fields(LossSpec))


@pytest.mark.parametrize("method,given,want", [("m2mix", None, 0.5), ("m3mix", None, 0.2),
                                              ("clip", None, 0.5), ("m3mix", 0.7, 0.7),
                                              ("m2mix", 0.2, 0.2)])
def test_beta_m2_default_is_per_method_and_explicit_wins(method, given, want):
    from gmm_jax.loss_spec import LossSpec
    spec = LossSpec.from_config({"method": method, "beta_m2": given})
    assert spec.beta_m2 == want
    # the draw the objective makes is Beta(want, want) with the recipe's key
    v, t, _ = _inputs(6, 8, 4)
    key = jax.random.key(11)
    _, aux = losses.build_objective(_cfg(method=method, beta_m2=given))(
        jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), 10.0, key, 0)
    if method != "clip":
        assert float(aux["lam_m2"]) == pytest.approx(_beta_draw(key, 1, want), rel=1e-6)


@pytest.mark.parametrize("key,value,match", [
    ("method", "mixup", "config.loss.method='mixup': expected one of"),
    ("swap", "both", "config.loss.swap='both'"),
    ("temperature", "warm", "config.loss.temperature='warm'"),
    ("swap_p", 1.5, "config.loss.swap_p=1.5"),
    ("beta_m2", 0.0, "config.loss.beta_m2=0.0"),
    ("c_m2", "lots", "config.loss.c_m2='lots': expected a number"),
    ("metod", "clip", r"unknown key\(s\) \['metod'\]"),
])
def test_loss_spec_errors_name_the_key(key, value, match):
    from gmm_jax.loss_spec import LossSpec
    with pytest.raises(ValueError, match=match):
        LossSpec.from_config({key: value})


def test_loss_spec_is_frozen_and_accepted_by_build_objective():
    from gmm_jax.loss_spec import LossSpec
    spec = LossSpec.from_config(_cfg(method="m2mix", c_m2=0.2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "clip"
    v, t, _ = _inputs(8, 16, 5)
    args = (jnp.asarray(v, jnp.float32), jnp.asarray(t, jnp.float32), 10.0,
            jax.random.key(1), 2)
    from_spec = losses.build_objective(spec)(*args)[0]
    from_cfg = losses.build_objective(_cfg(method="m2mix", c_m2=0.2))(*args)[0]
    assert float(from_spec) == float(from_cfg)


@pytest.mark.parametrize("method", ["clip", "m2mix", "m3mix", "cua", "cuaxu"])
def test_unused_fields_really_are_unused(method):
    """Changing a knob LossSpec.unused_fields names leaves the objective bit for bit the
    same (demo stages are shared on that promise); changing each other objective knob
    of the recipe changes it."""
    from gmm_jax.loss_spec import LossSpec
    rng = np.random.default_rng(0)
    v, t = (rng.standard_normal((6, 5)).astype(np.float32) for _ in range(2))
    v, t = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (v, t))

    def total(spec):  # epoch 1: the inverse-epoch mix weight is 1/2, not 1
        return float(losses.build_objective(spec)(v, t, 20.0, jax.random.key(0), epoch=1)[0])

    base = LossSpec(method=method)
    changed = {"mix_schedule": "constant", "mix_form": "openclip", "c_m2": 0.7,
               "beta_m2": 0.9, "m2_scale": 3.0, "c_u": 0.6, "beta_u": 0.8, "c_vl": 0.5,
               "beta_vl": 0.8, "w_uniformity": 2.5, "w_alignment": 3.5,
               "uniformity_t": 3.0, "alignment_alpha": 1.0, "w_cross_uniformity": 2.0,
               "swap_p": 0.5}
    unused = set(base.unused_fields())
    for field, value in changed.items():
        same = total(dataclasses.replace(base, **{field: value})) == total(base)
        assert same == (field in unused), (method, field)
