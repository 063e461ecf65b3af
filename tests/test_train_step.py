"""The jitted train step over a mesh: sharding must not change the loss or gradients.

The tests run on 8 fake CPU devices (tests/conftest.py). SGD(lr=1) makes the parameter
change equal to minus the gradient, so gradients are compared leaf by leaf.
"""
import functools
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmm_jax import losses, train_state
from gmm_jax.distributed_loss import local_objective
from tests.train_step_setup import assert_grads_close, loss_config, make_step, run_step

pytestmark = pytest.mark.slow  # sharded steps: compile-bound

HERE = os.path.dirname(os.path.abspath(__file__))


def _assert_same(ref, other, what):
    loss_a, grads_a, _ = ref
    loss_b, grads_b, _ = other
    assert abs(loss_a - loss_b) <= 1e-5 * max(1.0, abs(loss_a)), (what, loss_a, loss_b)
    assert_grads_close(grads_a, grads_b, what)


@functools.lru_cache(maxsize=None)
def _one_device(method):
    return run_step(method, "global", tuple(jax.devices()[:1]))


def test_eight_devices_equal_one_device():
    """The whole step (towers, m2mix with hard swapping, backward) on an 8-device mesh
    (every recipe's objective is compared across meshes below, at lower cost)."""
    assert jax.device_count() == 8
    one = _one_device("m2mix")
    _assert_same(one, run_step("m2mix", "global", jax.devices()), "8 devices vs 1")
    # The gradient is not trivially zero (the comparison means something).
    assert max(float(np.max(np.abs(g))) for g in one[1].values()) > 1e-4


def test_fsdp_mesh_equals_one_device(monkeypatch):
    """A ("data", "fsdp") = (2, 4) mesh: the parameters are split over ``fsdp`` (every
    array with a dimension divisible by 4, not only the large ones), the batch over all
    8 devices, and one step gives the one-device loss and gradients."""
    monkeypatch.setattr(train_state, "_FSDP_MIN_SIZE", 1)
    mesh_kw = {"axes": ("data", "fsdp"), "shape": (2, 4)}
    _, state, _, data_sharding = make_step("m2mix", "global", jax.devices(), **mesh_kw)
    specs = [leaf.sharding.spec for leaf in jax.tree.leaves(state.params)]
    split = [s for s in specs if "fsdp" in tuple(s)]
    assert len(split) >= len(specs) // 2, specs
    assert tuple(data_sharding.spec) == (("data", "fsdp"),)
    _assert_same(_one_device("m2mix"), run_step("m2mix", "global", jax.devices(), **mesh_kw),
                 "fsdp (2, 4) vs 1 device")


def test_local_loss_step_equals_global():
    ref = _one_device("m2mix")
    local = run_step("m2mix", "local", jax.devices())
    _assert_same(ref, local, "local loss on 8 devices vs global on 1")
    for k, x in ref[2].items():  # every logged term, lam draws included
        assert np.allclose(np.asarray(x), np.asarray(local[2][k]), rtol=1e-5, atol=1e-6), k


@pytest.mark.parametrize("method,swap,form", [
    ("clip", "none", "reference"), ("m2mix", "none", "reference"),
    ("m2mix", "hard", "openclip"), ("m3mix", "soft", "reference"),
    ("cua", "none", "reference"), ("cuaxu", "soft", "reference")])
def test_local_objective_values_and_gradients(method, swap, form):
    """``local_objective`` (shard_map, 8 devices) against ``build_objective`` on the
    global batch: value, every aux term and the gradient taken from outside."""
    cfg = loss_config(method)
    cfg.swap, cfg.swap_p, cfg.mix_form = swap, 0.7, form
    mesh = train_state.make_mesh(("data",), (8,))
    rng = np.random.default_rng(1)
    v = rng.normal(size=(24, 16)).astype(np.float32)
    t = (v + rng.normal(size=(24, 16))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    key, epoch, scale = jax.random.key(5), np.int32(1), np.float32(20.0)
    glob = losses.build_objective(cfg)
    local = local_objective(cfg, mesh, ("data",))

    def grad_of(objective):
        return jax.jit(jax.value_and_grad(lambda a, b: objective(a, b, scale, key, epoch)[0],
                                          argnums=(0, 1)))

    sh = train_state.batch_sharding(mesh)
    (val_g, grads_g) = grad_of(glob)(v, t)
    (val_l, grads_l) = grad_of(local)(jax.device_put(v, sh), jax.device_put(t, sh))
    np.testing.assert_allclose(val_l, val_g, rtol=1e-5)
    for a, b in zip(grads_g, grads_l):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    aux_g = glob(v, t, scale, key, epoch)[1]
    aux_l = jax.jit(local)(jax.device_put(v, sh), jax.device_put(t, sh), scale, key, epoch)[1]
    assert aux_g.keys() == aux_l.keys()
    for k in aux_g:
        np.testing.assert_allclose(np.asarray(aux_l[k]), np.asarray(aux_g[k]), rtol=1e-5,
                                   atol=1e-6, err_msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_processes_equal_one_process(tmp_path):
    """jax.distributed on localhost: 2 processes x 2 devices == 1 process x 4 devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = os.path.join(HERE, "step_worker.py")
    single = tmp_path / "single.npz"
    subprocess.run([sys.executable, worker, str(single), "--devices", "4"], env=env,
                   check=True, timeout=300, capture_output=True)
    port = _free_port()
    multi = tmp_path / "multi.npz"
    procs = [subprocess.Popen([sys.executable, worker, str(multi), "--devices", "2",
                               "--process-id", str(i), "--num-processes", "2",
                               "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1/2: 4 devices" in outs[1]
    a, b = dict(np.load(single)), dict(np.load(multi))
    assert len(a) > 10
    assert_grads_close(a, b, "2 processes x 2 devices vs 1 x 4")  # loss included
