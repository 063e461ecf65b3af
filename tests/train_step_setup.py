"""Shared set-up for the train-step tests: the tiny CLIP, a fixed global batch and the
project's jitted step with SGD(lr=1), so that ``params - new_params`` is the gradient."""
import jax
import numpy as np
import optax

from gmm_jax import losses, train_lib, train_state
from gmm_jax.models import CLIP, init_params, presets

GLOBAL_BATCH = 16


def flat_leaves(tree) -> dict:
    """``{"['a']['b']": leaf}``: a parameter tree keyed by path, for leaf-wise comparison."""
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_grads_close(want: dict, got: dict, what: str, tol: float = 1e-5) -> None:
    """Same keys; each leaf within ``tol`` of ``want`` relative to max(1, max |want|)."""
    assert want.keys() == got.keys(), what
    for k in want:
        scale = max(1.0, float(np.max(np.abs(want[k]))))
        err = float(np.max(np.abs(np.asarray(want[k]) - np.asarray(got[k]))))
        assert err <= tol * scale, f"{what}: {k} differs by {err}"


def batch_arrays(n: int = GLOBAL_BATCH, seed: int = 0):
    """Deterministic images (n, 32, 32, 3) f32 and tokens (n, 16) i32 (EOT = argmax)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    tokens = np.zeros((n, 16), np.int32)
    for i in range(n):
        length = int(rng.integers(3, 15))
        tokens[i, 0] = 998
        tokens[i, 1:length] = rng.integers(1, 997, size=length - 1)
        tokens[i, length] = 999  # EOT: the largest id
    return images, tokens


def loss_config(method: str):
    cfg = train_lib.default_config().loss
    cfg.method = method
    cfg.temperature = "learned"
    cfg.swap = {"m3mix": "soft", "m2mix": "hard"}.get(method, "none")
    cfg.swap_p = 0.5
    return cfg


def build_step(model, params, loss_cfg, mesh, loss_impl: str = "global", seed: int = 3):
    """``(step, state)``: the project's jitted train step of ``model`` with SGD(lr=1) and
    ``loss_cfg`` (``loss_impl``: "global" objective or the ``shard_map`` "local" one),
    and its train state from ``params``, placed on ``mesh``."""
    tx = optax.sgd(1.0)
    state = train_state.new_state(params, tx, seed=seed)
    shardings = train_state.state_shardings(jax.eval_shape(lambda: state), mesh)
    state = jax.device_put(state, shardings)
    if loss_impl == "local":
        from gmm_jax.distributed_loss import local_objective
        objective = local_objective(loss_cfg, mesh, train_state.batch_axes(mesh))
    else:
        objective = losses.build_objective(loss_cfg)
    step = train_state.make_train_step(model, objective, tx, loss_cfg, 10, lambda s: 1.0,
                                       mesh, shardings)
    return step, state


def sgd_step_grads(step, state, batch, dtype=np.float32):
    """``(grads as a parameter tree of NumPy ``dtype`` leaves, metrics)`` of one step of a
    ``build_step`` step (SGD, lr 1: the gradient is ``params - new_params``)."""
    before = jax.device_get(state.params)
    new, metrics = step(state, batch, np.int32(0))
    grads = jax.tree.map(lambda a, b: np.asarray(a, dtype) - np.asarray(b, dtype), before,
                         jax.device_get(new.params))
    return grads, metrics


def make_step(method: str = "m2mix", loss_impl: str = "global", devices=None,
              axes=("data",), shape=(-1,)):
    """``(step, state, mesh, data_sharding)`` of the tiny CLIP on a mesh ``axes`` x
    ``shape`` over ``devices`` (default: a ``data`` mesh over all of them)."""
    devices = list(jax.devices() if devices is None else devices)  # tuple: cacheable
    mesh = train_state.make_mesh(axes, shape, devices)
    model = CLIP(presets.get_config("tiny"))
    step, state = build_step(model, init_params(model, jax.random.key(0)),
                             loss_config(method), mesh, loss_impl)
    return step, state, mesh, train_state.batch_sharding(mesh)


def run_step(method: str, loss_impl: str, devices, **mesh):
    """``(loss, grads as a dict of NumPy leaves, metrics)`` of one step on the fixed
    batch; ``mesh``: ``axes``/``shape`` of ``make_step``."""
    step, state, _, data_sharding = make_step(method, loss_impl, devices, **mesh)
    images, tokens = batch_arrays()
    batch = {"image": jax.device_put(images, data_sharding),
             "tokens": jax.device_put(tokens, data_sharding)}
    grads, metrics = sgd_step_grads(step, state, batch)
    return float(metrics["loss/total"]), flat_leaves(grads), metrics
