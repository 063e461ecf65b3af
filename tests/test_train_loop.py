"""train.py / train_lib end to end on the tiny config: resume after SIGKILL (also in the
middle of a save) and after SIGTERM ends with the same parameters as an uninterrupted
run; config errors name the key; the demo model learns."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmm_jax import checkpointing
from tests.train_step_setup import flat_leaves

pytestmark = pytest.mark.slow  # train.py subprocesses (resume after kills, 240 steps)
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS = ["total_steps=12", "checkpoint_every_steps=4"]


def _train(workdir, data_dir, *args, expect_rc=0):
    # One CPU device; XLA's LLVM optimisation off: compiling dominates these short runs.
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "train_worker.py"),
                           str(workdir), str(data_dir), *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def data_dir(small_demo_data):
    return small_demo_data


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("straight")
    _train(workdir, data_dir, *STEPS)
    return workdir


def _params(workdir, step=None):
    params, step, _ = checkpointing.restore_params(str(workdir), step)
    return flat_leaves(params), step


def test_killed_and_preempted_run_resumes_exactly(tmp_path, data_dir, uninterrupted):
    ref, ref_step = _params(uninterrupted)
    assert ref_step == 12
    workdir = tmp_path / "run"
    # 1. SIGKILL after the checkpoint of step 4 is complete.
    _train(workdir, data_dir, "--sigkill-after-save", "4", *STEPS, expect_rc=-9)
    assert _params(workdir)[1] == 4
    # 2. Resume; SIGKILL right after the async save of step 8 started (maybe mid-write).
    _train(workdir, data_dir, "--sigkill-during-save", "8", *STEPS, expect_rc=-9)
    steps = checkpointing.TrainCheckpointer(str(workdir)).all_steps()
    assert 4 in steps and set(steps) <= {4, 8}  # step 4 survived whatever happened to 8
    # 3. Resume; SIGTERM (preemption notice) after step 10: saves step 10, exits cleanly.
    proc = _train(workdir, data_dir, "--sigterm-at", "10", *STEPS)
    assert "finished at step 10" in proc.stdout
    assert _params(workdir)[1] == 10
    # 4. Resume to the end.
    _train(workdir, data_dir, *STEPS)
    got, step = _params(workdir)
    assert step == 12 and got.keys() == ref.keys()
    for k in ref:
        assert np.max(np.abs(got[k] - ref[k])) <= 1e-6, k
    # The comparison means something: the parameters moved after step 4.
    early, _ = _params(uninterrupted, 8)
    assert any(np.max(np.abs(early[k] - ref[k])) > 1e-4 for k in ref)


def test_unknown_and_mistyped_config_keys_are_named(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def run(*flags):
        return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                               "--config=" + os.path.join(ROOT, "configs", "tiny.py"),
                               f"--workdir={tmp_path}", *flags], env=env,
                              capture_output=True, text=True, timeout=300)

    bad_key = run("--config.loss.metod=clip")
    assert bad_key.returncode != 0 and "metod" in bad_key.stderr
    bad_type = run("--config.batch_size=lots")
    assert bad_type.returncode != 0 and "batch_size" in bad_type.stderr
    bad_choice = run("--config.loss.method=mixup")
    assert bad_choice.returncode != 0
    assert "loss.method" in bad_choice.stderr and "m2mix" in bad_choice.stderr
    assert "Traceback" not in bad_choice.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def _scalars(workdir, tag):
    import tensorflow as tf
    out = {}
    events = os.path.join(workdir, "tensorboard")
    for name in os.listdir(events):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(events, name)):
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tf.make_ndarray(value.tensor))
    return [out[s] for s in sorted(out)]


def test_a_few_hundred_steps_on_the_demo_data_reduce_the_loss(tmp_path, data_dir):
    """From scratch, CLIP loss on the demo's source split: the logged loss falls well
    below its starting value ln(batch) (and the TensorBoard events hold each term)."""
    _train(tmp_path, data_dir, "total_steps=240", "batch_size=32", 'loss.method="m2mix"',
           'data.train_split="source_train"', "log_every_steps=20",
           "checkpoint_every_steps=240", "optim.lr=0.002", "optim.warmup_frac=0.05",
           "eval_at_end=true", 'eval.suites="retrieval,geometry"',
           "eval.geometry.log_every=120")
    total, clip, m2 = (_scalars(tmp_path, t) for t in ("loss/total", "loss/clip",
                                                       "loss/m2mix"))
    assert len(total) == 12 and len(clip) == 12 and len(m2) == 12
    assert all(np.isfinite(total))
    assert np.mean(clip[-3:]) < 0.7 * clip[0], clip
    assert _scalars(tmp_path, "lr") and _scalars(tmp_path, "gap/centroid_distance")
    # The eval hook ran on the final parameters and wrote eval.py's metrics.
    with open(tmp_path / "eval_step_240" / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["retrieval/i2t_r10"] > 0 and np.isfinite(metrics["gap/centroid_distance"])
    # A suite with its own period ran alone at step 120 (eval_every_steps is 0).
    with open(tmp_path / "eval_step_120" / "metrics.json") as f:
        midway = json.load(f)
    assert np.isfinite(midway["gap/centroid_distance"])
    assert not any(k.startswith("retrieval/") for k in midway), sorted(midway)
    assert sorted(p.name for p in tmp_path.glob("eval_step_*")) == ["eval_step_120",
                                                                     "eval_step_240"]


def test_fine_tuning_starts_from_config_init_in_bf16(tmp_path, data_dir):
    """config.init: a converted model directory is the starting point (lr 0 keeps it
    exactly: AdamW's decay is scaled by lr); bf16 compute keeps fp32 parameters."""
    import jax

    from gmm_jax import pretrained
    from gmm_jax.data import demo
    from gmm_jax.models import CLIP, init_params, presets
    from gmm_jax.tokenizer import Tokenizer
    tok = Tokenizer.train([t.format(c) for t in demo.TEMPLATES for c in demo.CLASS_NAMES]
                          + ["a small red circle on the left"], vocab_size=600,
                          context_length=16)
    mcfg = presets.get_config("tiny", vocab_size=tok.vocab_size)
    params = init_params(CLIP(mcfg), jax.random.key(7))
    init_dir = tmp_path / "init"
    pretrained.save_pretrained(str(init_dir), mcfg, params, tok)
    workdir = tmp_path / "run"
    _train(workdir, data_dir, f'init="{init_dir}"', "total_steps=2", "optim.lr=0.0",
           'model.dtype="bfloat16"', 'loss.temperature="learned"')
    got, step = _params(workdir)
    want = flat_leaves(params)
    assert step == 2 and got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.float32, k
        np.testing.assert_array_equal(got[k], np.asarray(want[k]), err_msg=k)
    assert os.path.exists(workdir / "tokenizer")
