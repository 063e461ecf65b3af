"""The optimiser (AdamW, warm-up + cosine, weight-decay mask, temperature lr, clipping,
accumulation) and the temperature modes of the train step, against restatements."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmm_jax import optim, train_lib, train_state
from gmm_jax.models import CLIP, init_params, presets
from tests.train_step_setup import flat_leaves


def _config(**optim_overrides):
    cfg = train_lib.default_config()
    for k, v in optim_overrides.items():
        cfg.optim[k] = v
    return cfg


def test_decay_mask_on_the_clip_parameter_tree():
    params = jax.eval_shape(lambda: init_params(CLIP(presets.get_config("tiny")),
                                                jax.random.key(0)))
    mask = flat_leaves(optim.decay_mask(params))
    shapes = {k: v.shape for k, v in flat_leaves(params).items()}
    for k, decayed in mask.items():
        never = (len(shapes[k]) < 2 or "positional_embedding" in k or "class_embedding" in k
                 or "logit_scale" in k)
        assert decayed == (not never), k
    assert any(mask.values()) and not all(mask.values())
    assert not any(v for k, v in mask.items() if "bias" in k or "ln" in k.lower())


def test_warmup_cosine_schedule_matches_formula():
    cfg = _config(lr=3e-4, warmup_frac=0.1, end_lr_frac=0.1, schedule="cosine")
    _, lr = optim.make_optimizer(cfg, 200)
    for step in (0, 5, 19, 20, 21, 100, 199, 200):
        if step < 20:
            want = 3e-4 * step / 20
        else:
            frac = (step - 20) / 180
            want = 3e-5 + (3e-4 - 3e-5) * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(lr(step)) == pytest.approx(want, rel=1e-5, abs=1e-12), step


def _toy_params():
    return {"w": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
            "logit_scale": jnp.asarray(math.log(1 / 0.07))}


def _grads():
    return {"w": {"kernel": jnp.full((3, 4), 0.5), "bias": jnp.full((4,), -0.25)},
            "logit_scale": jnp.asarray(1.0)}


def _adamw_first_step(p, g, lr, wd, eps, decay):
    # Adam's first bias-corrected step is g / (|g| + eps); decoupled decay on masked leaves.
    return p - lr * (g / (np.abs(g) + eps) + (wd * p if decay else 0.0))


@pytest.mark.parametrize("temperature,temp_lr_mult", [("learned", 0.5), ("fixed", 1.0)])
def test_adamw_step_mask_and_temperature_lr(temperature, temp_lr_mult):
    cfg = _config(lr=0.1, warmup_frac=0.0, schedule="constant", weight_decay=0.2)
    cfg.loss.temperature, cfg.loss.temp_lr_mult = temperature, temp_lr_mult
    tx, _ = optim.make_optimizer(cfg, 10)
    p, g = _toy_params(), _grads()
    updates, _ = tx.update(g, tx.init(p), p)
    new = jax.tree.map(lambda a, b: a + b, p, updates)
    eps = cfg.optim.eps
    np.testing.assert_allclose(new["w"]["kernel"], _adamw_first_step(1.0, 0.5, 0.1, 0.2, eps,
                                                                     True), rtol=1e-6)
    np.testing.assert_allclose(new["w"]["bias"], _adamw_first_step(1.0, -0.25, 0.1, 0.2, eps,
                                                                   False), rtol=1e-6)
    ls = float(p["logit_scale"])
    want = ls if temperature == "fixed" else _adamw_first_step(ls, 1.0, 0.1 * temp_lr_mult,
                                                               0.2, eps, False)
    assert float(new["logit_scale"]) == pytest.approx(want, rel=1e-6)


def test_gradient_clipping_and_accumulation():
    cfg = _config(lr=1.0, warmup_frac=0.0, schedule="constant", weight_decay=0.0,
                  grad_clip=0.1, grad_accum_steps=2)
    tx, lr = optim.make_optimizer(cfg, 10)
    p = _toy_params()
    state = tx.init(p)
    u1, state = tx.update(_grads(), state, p)
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(u1))  # accumulating
    u2, state = tx.update(_grads(), state, p)
    assert float(jnp.max(jnp.abs(u2["w"]["kernel"]))) > 0.5  # the update happened
    assert float(lr(3)) == pytest.approx(1.0)
    # Clipping alone: the clipped gradient's global norm is grad_clip (SGD-like check
    # through optax.clip_by_global_norm inside the chain: Adam is scale-invariant, so
    # compare the clip transform on the same gradients directly).
    import optax
    clipped, _ = optax.clip_by_global_norm(0.1).update(_grads(), None)
    assert float(optax.global_norm(clipped)) == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("mode", ["learned", "softplus", "exp"])
def test_trained_temperature_is_clamped(mode):
    cfg = train_lib.default_config().loss
    cfg.temperature = mode
    scale_fn, fix_fn = train_state.temperature_fns(cfg, 100)
    params = train_state.init_temperature_param(
        {"logit_scale": jnp.asarray(math.log(1 / 0.07))}, cfg)
    assert float(scale_fn(params, 0)) == pytest.approx(1 / 0.07, rel=1e-5)
    big = {"logit_scale": params["logit_scale"] + 500.0}
    assert float(scale_fn(fix_fn(big, None), 0)) == pytest.approx(100.0, rel=1e-4)
    assert float(fix_fn(params, None)["logit_scale"]) == float(params["logit_scale"])


def test_fixed_and_scheduled_temperature():
    cfg = train_lib.default_config().loss
    cfg.temperature, cfg.tau = "fixed", 0.02
    scale_fn, fix_fn = train_state.temperature_fns(cfg, 100)
    assert float(scale_fn({}, 7)) == pytest.approx(50.0)
    fixed = fix_fn({"logit_scale": jnp.asarray(0.0)}, scale_fn({}, 7))
    assert float(fixed["logit_scale"]) == pytest.approx(math.log(50.0), rel=1e-6)
    cfg.temperature, cfg.tau_start, cfg.tau_end = "schedule", 0.01, 0.05
    scale_fn, _ = train_state.temperature_fns(cfg, 100)
    for step in (0, 25, 100, 150):
        tau = 0.01 + 0.04 * min(step, 100) / 100
        assert float(scale_fn({}, step)) == pytest.approx(1 / tau, rel=1e-5), step


def _first_moments(state) -> dict:
    """Adam's first moment of every parameter, merged over the label groups of the
    wired optimiser (each group's ``mu`` has empty nodes where another group applies)."""
    import optax
    out = {}
    for _, mu in optax.tree_utils.tree_get_all_with_path(state, "mu"):
        out.update(flat_leaves(mu))
    return out


def test_the_wired_optimiser_clips_before_adam():
    """Adam's first moment after one update is (1 - b1) * the clipped gradient: the
    clip inside make_optimizer's chain acts (the update itself is ~lr either way)."""
    cfg = _config(lr=1.0, warmup_frac=0.0, schedule="constant", weight_decay=0.0,
                  grad_clip=0.1)
    cfg.loss.temperature = "learned"  # logit_scale trained too: its moment is checked
    tx, _ = optim.make_optimizer(cfg, 10)
    p, g = _toy_params(), _grads()
    _, state = tx.update(g, tx.init(p), p)
    g64 = {k: np.asarray(v, np.float64) for k, v in flat_leaves(g).items()}
    norm = math.sqrt(sum(float(np.sum(v ** 2)) for v in g64.values()))
    factor = min(1.0, 0.1 / norm)
    assert factor < 0.2  # the clip matters for these gradients
    mu = _first_moments(state)
    assert mu.keys() == g64.keys()
    for k, v in g64.items():
        np.testing.assert_allclose(np.asarray(mu[k]), (1 - cfg.optim.b1) * factor * v,
                                   rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("grad_clip", [0.0, 0.1])
def test_accumulated_update_equals_the_averaged_gradient_update(grad_clip):
    """grad_accum_steps=2 on g1 then g2 makes the update one optimiser makes on
    (g1 + g2) / 2 (clipped after averaging), and nothing on the first micro-step."""
    kw = dict(lr=0.1, warmup_frac=0.0, schedule="constant", weight_decay=0.2,
              grad_clip=grad_clip)
    tx2, _ = optim.make_optimizer(_config(grad_accum_steps=2, **kw), 10)
    tx1, _ = optim.make_optimizer(_config(grad_accum_steps=1, **kw), 5)
    p = _toy_params()
    g1 = _grads()
    g2 = {"w": {"kernel": jnp.arange(12.0).reshape(3, 4) / 7 - 0.8,
                "bias": jnp.asarray([0.3, -2.0, 0.1, 1.0])}, "logit_scale": jnp.asarray(-3.0)}
    s2 = tx2.init(p)
    u_first, s2 = tx2.update(g1, s2, p)
    assert all(float(jnp.max(jnp.abs(x))) == 0 for x in jax.tree.leaves(u_first))
    u_acc, _ = tx2.update(g2, s2, p)
    avg = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
    u_ref, _ = tx1.update(avg, tx1.init(p), p)
    got, want = flat_leaves(u_acc), flat_leaves(u_ref)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-5,
                                   atol=1e-7, err_msg=k)
    # Not the update of g2 alone (the averaging is what is tested).
    u_last, _ = tx1.update(g2, tx1.init(p), p)
    assert any(not np.allclose(np.asarray(got[k]), np.asarray(v), rtol=1e-3)
               for k, v in flat_leaves(u_last).items())


def _three_adamw_steps(decay_mask: bool):
    """(ours, torch's) flat params after 3 steps on the same random gradients."""
    import torch
    cfg = _config(lr=0.05, warmup_frac=0.0, schedule="constant", weight_decay=0.2,
                  b2=0.999, eps=1e-8, decay_mask=decay_mask)
    cfg.loss.temperature = "learned"
    tx, _ = optim.make_optimizer(cfg, 10)
    p = _toy_params()
    tp = {k: torch.nn.Parameter(torch.tensor(np.asarray(v), dtype=torch.float64))
          for k, v in flat_leaves(p).items()}
    topt = torch.optim.AdamW(list(tp.values()), lr=0.05, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=0.2)
    state = tx.init(p)
    rng = np.random.default_rng(0)
    for _ in range(3):
        g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=np.shape(x)), jnp.float32), p)
        updates, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, updates)
        for k, v in flat_leaves(g).items():
            tp[k].grad = torch.tensor(np.asarray(v), dtype=torch.float64)
        topt.step()
    return ({k: np.asarray(v) for k, v in flat_leaves(p).items()},
            {k: v.detach().numpy() for k, v in tp.items()})


def test_the_authors_setting_is_torch_adamw():
    """optim.b2=0.999, eps=1e-8, decay_mask=False (docs/training.md: the authors' torch
    AdamW defaults, decay on every parameter) follows torch.optim.AdamW for 3 steps;
    with our decay mask the bias and logit_scale (not decayed) differ from it."""
    ours, ref = _three_adamw_steps(decay_mask=False)
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    masked, _ = _three_adamw_steps(decay_mask=True)
    for k in ref:
        assert np.allclose(masked[k], ref[k], rtol=1e-5, atol=1e-6) == ("kernel" in k), k
