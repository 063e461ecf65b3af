"""Embedding-cached (GradCache) gradients equal the plain full-batch ones.

``gmm_jax.gradcache.value_and_grad`` against ``jax.value_and_grad`` on a small
batch-coupled function (fast), then the project's train step with
``embed_chunks = K`` against the unchunked step: parameters after 3 SGD steps, every
recipe, on 1 and on 8 fake CPU devices (tests/conftest.py), random draws included.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmm_jax import gradcache, losses, run_config, train_state
from gmm_jax.models import CLIP, init_params, presets
from tests.train_step_setup import assert_grads_close, batch_arrays, flat_leaves, loss_config

STEPS = 3


# --------------------------------------------------------------------------- the primitive

def _encode(p, x, y):
    """Two row-wise "towers" (rows must not mix)."""
    return jnp.tanh(x @ p["a"]), jnp.sin(y @ p["b"]) * p["s"]


def _loss(p, emb):
    """Couples every row with every other one (like a contrastive loss) and uses a
    parameter directly (like the temperature)."""
    u, w = emb
    logits = jnp.exp(p["s"]) * u @ w.T
    value = jnp.mean(jax.nn.logsumexp(logits, axis=1) - jnp.diag(logits))
    value = value + jnp.sum(u[::-1] * w) / u.shape[0]  # row order matters
    return value, {"first_row": u[0]}


@pytest.mark.parametrize("devices,chunks", [(1, 3), (8, 2)])
def test_value_and_grad_equals_plain(devices, chunks):
    rng = np.random.default_rng(0)
    p = {"a": rng.normal(size=(5, 4)), "b": rng.normal(size=(3, 4)), "s": np.float32(0.3)}
    p = jax.tree.map(lambda z: jnp.asarray(z, jnp.float32), p)
    x = rng.normal(size=(48, 5)).astype(np.float32)
    y = rng.normal(size=(48, 3)).astype(np.float32)
    mesh = train_state.make_mesh(("data",), (devices,), jax.devices()[:devices])
    sh = train_state.batch_sharding(mesh)
    x, y = jax.device_put(x, sh), jax.device_put(y, sh)
    (want, want_aux), want_g = jax.jit(jax.value_and_grad(
        lambda q: _loss(q, _encode(q, x, y)), has_aux=True))(p)
    (got, got_aux), got_g = jax.jit(lambda q, a, b: gradcache.value_and_grad(
        _encode, _loss, q, (a, b), chunks, mesh, ("data",)))(p, x, y)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got_aux["first_row"], want_aux["first_row"], rtol=1e-6)
    for k in p:
        np.testing.assert_allclose(got_g[k], want_g[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(jnp.max(jnp.abs(want_g["a"]))) > 1e-3  # not trivially zero


def test_chunks_must_divide_the_per_device_batch():
    with pytest.raises(ValueError, match=r"config.embed_chunks=3 must divide the per-device"):
        gradcache.check_chunks(16, 3, shards=8)
    with pytest.raises(ValueError, match=r"config.embed_chunks=0 must be a positive int"):
        gradcache.check_chunks(16, 0)
    gradcache.check_chunks(16, 2, shards=8)
    cfg = run_config.default_config()
    cfg.embed_chunks = 0
    with pytest.raises(ValueError, match="config.embed_chunks=0"):
        run_config.validate_config(cfg)
    cfg.embed_chunks, cfg.batch_size = 3, 128
    with pytest.raises(ValueError, match="config.embed_chunks=3 must divide"):
        run_config.validate_config(cfg)


# --------------------------------------------------------------------------- the train step

# (method, swap, temperature, mix_form, loss_impl): every recipe, swap kind and
# temperature mode at least once.
CASES = {
    "clip-learned": ("clip", "none", "learned", "reference", "global"),
    "m2mix-hard-fixed": ("m2mix", "hard", "fixed", "reference", "global"),
    "m2mix-openclip-softplus": ("m2mix", "none", "softplus", "openclip", "global"),
    "m3mix-soft-schedule": ("m3mix", "soft", "schedule", "reference", "global"),
    "cua-exp": ("cua", "none", "exp", "reference", "global"),
    "cuaxu-soft-learned": ("cuaxu", "soft", "learned", "reference", "global"),
    "m2mix-hard-local": ("m2mix", "hard", "learned", "reference", "local"),
}


def _config(case):
    method, swap, temperature, form, _ = CASES[case]
    cfg = loss_config(method)
    cfg.swap, cfg.swap_p, cfg.temperature, cfg.mix_form = swap, 0.5, temperature, form
    cfg.tau = 0.05
    return cfg


@functools.lru_cache(maxsize=None)
def _run(case, chunks, n_devices, impl="global"):
    """Flat parameters and the last step's metrics after ``STEPS`` SGD steps."""
    cfg = _config(case)
    mesh = train_state.make_mesh(("data",), (n_devices,), jax.devices()[:n_devices])
    model = CLIP(presets.get_config("tiny", vision_layers=1, text_layers=1))
    params = train_state.init_temperature_param(init_params(model, jax.random.key(0)), cfg)
    tx = optax.sgd(0.5)
    state = train_state.new_state(params, tx, seed=3)
    shardings = train_state.state_shardings(jax.eval_shape(lambda: state), mesh)
    state = jax.device_put(state, shardings)
    if impl == "local":
        from gmm_jax.distributed_loss import local_objective
        objective = local_objective(cfg, mesh, train_state.batch_axes(mesh))
    else:
        objective = losses.build_objective(cfg)
    step = train_state.make_train_step(model, objective, tx, cfg, 10, lambda s: 1.0, mesh,
                                       shardings, embed_chunks=chunks)
    data = train_state.batch_sharding(mesh)
    images, tokens = batch_arrays()
    step = step.lower(state, {"image": jax.device_put(images, data),
                              "tokens": jax.device_put(tokens, data)}, np.int32(0)).compile(
        compiler_options={"xla_backend_optimization_level": 0})  # compile time dominates
    for i in range(STEPS):
        images, tokens = batch_arrays(seed=i)
        batch = {"image": jax.device_put(images, data), "tokens": jax.device_put(tokens, data)}
        before = jax.device_get(state.params)
        state, metrics = step(state, batch, np.int32(i))
    after = jax.device_get(state.params)
    _last_update[(case, chunks, n_devices, impl)] = jax.tree.map(np.subtract, after, before)
    return flat_leaves(after), jax.device_get(metrics)


_last_update = {}


def _assert_same(want, got, what):
    params_w, metrics_w = want
    params_g, metrics_g = got
    assert_grads_close(params_w, params_g, what)  # parameters within 1e-5 (SGD steps)
    for k, x in metrics_w.items():  # loss terms, lam draws, norms
        np.testing.assert_allclose(metrics_g[k], x, rtol=1e-5, atol=1e-6, err_msg=f"{what}: {k}")
    # the steps moved the parameters (the comparison means something)
    init = flat_leaves(init_params(CLIP(presets.get_config("tiny", vision_layers=1,
                                                           text_layers=1)),
                                   jax.random.key(0)))
    moved = max(float(np.max(np.abs(params_w[k] - init[k]))) for k in init
                if "logit_scale" not in k)
    assert moved > 1e-3, what


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_chunked_step_equals_plain_step_8_devices(case):
    """8 devices, 2 chunks of 1 row per device, against the plain step on 1 device."""
    impl = CASES[case][-1]
    _assert_same(_run(case, 1, 1), _run(case, 2, 8, impl), f"{case}: 8 devices, 2 chunks")


@pytest.mark.slow
def test_l2_grads_and_updates_metrics():
    """The step's ``l2_updates`` / ``l2_grads`` against ``optax.global_norm`` of the last
    step's parameter change (SGD, lr 0.5: update = -0.5 grads; learned temperature,
    far from its clamp, so the change is the update)."""
    _, metrics = _run("clip-learned", 1, 1)
    update = _last_update[("clip-learned", 1, 1, "global")]
    np.testing.assert_allclose(metrics["l2_updates"], optax.global_norm(update), rtol=1e-4)
    np.testing.assert_allclose(metrics["l2_grads"], optax.global_norm(update) / 0.5,
                               rtol=1e-4)
    np.testing.assert_allclose(metrics["l2_grads"], metrics["grad_norm"], rtol=1e-6)
    assert float(metrics["l2_updates"]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("case", ["m2mix-hard-fixed", "m3mix-soft-schedule", "cuaxu-soft-learned"])
def test_chunked_step_equals_plain_step_1_device(case):
    _assert_same(_run(case, 1, 1), _run(case, 4, 1), f"{case}: 1 device, 4 chunks")
