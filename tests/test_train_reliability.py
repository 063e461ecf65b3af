"""A run that fails, is killed or raises before (or after) its first checkpoint never
poisons its workdir or hangs; a workdir holding another config's run is refused with
the difference named; a non-finite loss stops the run and keeps the last good
checkpoint. Each run is a subprocess with a timeout (a hang fails the test)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from gmm_jax import checkpointing
from tests.train_step_setup import flat_leaves

pytestmark = pytest.mark.slow  # train.py subprocesses
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHORT = ["total_steps=4", "checkpoint_every_steps=2", "log_every_steps=2"]


def _env():
    # One CPU device; XLA's LLVM optimisation off: compiling dominates these short runs.
    return dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _worker(workdir, data_dir, *args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(HERE, "train_worker.py"),
                           str(workdir), str(data_dir), *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _train_py(workdir, data_dir, *flags, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                           "--config=" + os.path.join(ROOT, "configs", "tiny.py"),
                           f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                           "--config.progress_bar=false", *flags], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _ok(proc, rc=0):
    assert proc.returncode == rc, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


@pytest.fixture(scope="module")
def data_dir(small_demo_data):
    """The small demo set (conftest: generated once per session, not inside a timed
    subprocess)."""
    return small_demo_data


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A workdir poisoned as issue reports had it (a failed start with another model,
    then SIGKILL before the first step), then a good run to step 4 in the same place."""
    workdir = tmp_path_factory.mktemp("run")
    # 1. Fails: the batch is larger than the data (after the run files were written),
    #    and with another model size, so leftovers would show.
    failed = _worker(workdir, data_dir, "batch_size=5000", "model.embed_dim=48", *SHORT)
    assert failed.returncode == 1 and "fewer than one global batch" in failed.stderr
    assert checkpointing.finished_steps(str(workdir)) == []
    # 2. Killed before the first step (nothing saved yet).
    _ok(_worker(workdir, data_dir, "--sigkill-before-step", "1", *SHORT), rc=-9)
    assert checkpointing.finished_steps(str(workdir)) == []
    # 3. A good start in the same workdir is a fresh run with its own model.
    proc = _ok(_worker(workdir, data_dir, *SHORT))
    assert "finished at step 4" in proc.stdout
    return workdir


def test_failed_and_killed_starts_leave_a_fresh_start(finished_run):
    from gmm_jax.models import presets
    model, params, _, step, run_config = checkpointing.load_run(str(finished_run))
    assert step == 4 and run_config["batch_size"] == 16
    assert model.config.embed_dim == presets.get_config("tiny").embed_dim != 48
    assert all(np.all(np.isfinite(np.asarray(x))) for x in flat_leaves(params).values())


def test_a_different_config_is_refused_naming_the_difference(finished_run, data_dir):
    before = sorted(os.listdir(finished_run))
    with open(finished_run / "config.json") as f:
        saved = f.read()
    proc = _train_py(finished_run, data_dir, "--config.optim.lr=0.5",
                     '--config.loss.method=clip')
    assert proc.returncode == 1
    last = _last_line(proc.stderr)
    assert last.startswith("train.py: error:") and str(finished_run) in last
    assert "config.optim.lr: saved 0.001, now 0.5" in last
    assert "config.loss.method: saved 'm2mix', now 'clip'" in last
    assert len(proc.stderr.strip().splitlines()) < 5, proc.stderr
    # Nothing was written or deleted.
    assert sorted(os.listdir(finished_run)) == before
    with open(finished_run / "config.json") as f:
        assert f.read() == saved
    assert checkpointing.finished_steps(str(finished_run)) == [2, 4]


def test_a_raising_run_exits_with_its_checkpoints_complete(tmp_path, data_dir):
    # Async saves in flight when the error comes: the process must still exit.
    proc = _worker(tmp_path, data_dir, "--raise-at", "4", "async_checkpointing=true",
                   "total_steps=6", "checkpoint_every_steps=3", "log_every_steps=3")
    assert proc.returncode == 1 and "raising before step 4" in proc.stderr
    assert checkpointing.finished_steps(str(tmp_path)) == [3]


def _scalars(workdir, tag):
    import tensorflow as tf
    got = {}
    events = workdir / "tensorboard"
    for name in os.listdir(events):
        for event in tf.compat.v1.train.summary_iterator(str(events / name)):
            for value in event.summary.value:
                if value.tag == tag:
                    got[event.step] = float(tf.make_ndarray(value.tensor))
    return got


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir):
    """NaN images at step 9 (logs every 4 steps, saves every 2): the error names step 9;
    step 10 (due for saving) is not saved; with max_to_keep=1 the kept checkpoint is
    step 8 and restores finite. The same run checks that the epoch reaches the step:
    the logged w_e = 1/(epoch+1) is 1 at step 4 and 1/2 at step 8 (batches of 64 from
    the small demo's target_train split: fewer than 8 steps per epoch)."""
    from gmm_jax.configs import tiny
    from gmm_jax.data import get_source
    cfg = tiny.get_config().data
    cfg.data_dir = str(data_dir)
    per_epoch = get_source(cfg).num_examples("target_train") // 64
    assert 4 <= per_epoch < 8, per_epoch
    proc = _worker(tmp_path, data_dir, "--nan-at", "9", "batch_size=64", "total_steps=12",
                   "checkpoint_every_steps=2", "log_every_steps=4", "max_to_keep=1",
                   'loss.mix_schedule="inverse_epoch"')
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "NonFiniteError" in proc.stderr and "at step 9" in proc.stderr
    assert "the last good checkpoint is step 8" in proc.stderr
    assert checkpointing.finished_steps(str(tmp_path)) == [8]
    params, step, _ = checkpointing.restore_params(str(tmp_path))
    assert step == 8
    assert all(np.all(np.isfinite(v)) for v in flat_leaves(params).values())
    assert _scalars(tmp_path, "mix_weight") == pytest.approx({4: 1.0, 8: 0.5})
    assert all(v > 0 for v in _scalars(tmp_path, "step_time_s").values())
    assert all(np.isfinite(v) and v > 0 for v in _scalars(tmp_path, "l2_params").values())


def test_sigterm_before_the_first_checkpoint_says_stopped_resumable(tmp_path, data_dir):
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"),
         "--config=" + os.path.join(ROOT, "configs", "tiny.py"), f"--workdir={tmp_path}",
         f"--config.data.data_dir={data_dir}", "--config.progress_bar=false",
         "--config.total_steps=50", "--config.checkpoint_every_steps=50"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:  # the loop is about to start (compiling step 1)
            if "fresh run" in line:
                proc.send_signal(15)
                break
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped at step 1" in out and "resumable" in out and "finished" not in out
    assert checkpointing.finished_steps(str(tmp_path)) == [1]
