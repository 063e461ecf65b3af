"""The in-training eval hook across processes: ``jax.distributed`` on localhost,
2 processes x 2 devices against 1 process x 4 devices (the launch pattern and
free-port helper of test_train_step.py's 2-process test, reused)."""
import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from gmm_jax.data import demo
from tests.eval_fakes import demo_config
from tests.test_train_step import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # jax.distributed
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER_EVAL = {"suites": "retrieval,geometry,calibration,zeroshot",
               "zeroshot.datasets": "gmm_demo:target_test"}  # as in eval_worker.py


def _one_process(data_dir, out):
    """The worker's evaluation in this process (one process, a mesh of 8 devices)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType

    from gmm_jax import eval_lib
    from tests.eval_fakes import FakeCLIP, FakeTokenizer, demo_eval_config
    model = FakeCLIP()
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)),
                        jnp.zeros((1, 12), jnp.int32))["params"]
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))
    config = demo_eval_config(data_dir, **WORKER_EVAL)
    return eval_lib.evaluate(model, params, FakeTokenizer(), config, out, mesh=mesh)


def test_two_process_eval_equals_one_process(tmp_path):
    tfds.disable_progress_bar()
    data_dir = str(tmp_path / "data")
    demo.builder(data_dir, demo_config()).download_and_prepare()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    worker = os.path.join(HERE, "eval_worker.py")
    multi = tmp_path / "multi"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(multi), data_dir, "--devices", "2",
                               "--process-id", str(i), "--num-processes", "2",
                               "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1/2: 4 devices" in outs[1]
    want = _one_process(data_dir, str(tmp_path / "single"))
    got0 = json.load(open(multi / "values_0.json"))
    got1 = json.load(open(multi / "values_1.json"))
    assert len(want) > 10 and "zeroshot/gmm_demo_target_test/top1" in want
    assert got0 == got1  # every process returns the same, gathered, numbers
    assert got0 == pytest.approx(want, rel=1e-4, abs=1e-4)
    # process 0 writes the files, process 1 nothing
    assert json.load(open(multi / "proc0" / "metrics.json")) == pytest.approx(got0)
    assert (multi / "proc0" / "gap_projection.png").exists()
    assert not (multi / "proc1").exists()
