"""Test-wide set-up: JAX CPU mode with 8 fake devices, so sharded code can be tested, and
one persistent compilation cache for the session.

Many tests start ``train.py``/``eval.py`` in subprocesses that compile the same tiny
programs again (a resumed run, the run it is compared with, eval after training):
JAX's persistent cache, in a directory made fresh for this session and inherited by
the subprocesses through the environment, compiles each program once (about 10 s of a
23 s tiny training run). A cache the user set (``JAX_COMPILATION_CACHE_DIR``) is kept.

``small_demo_data``: the TFDS data of configs/tiny.py, generated once per session for
every module that trains on it (about a minute each time on 2 cores). ``demoflow_data``:
the same for tests/demo_tiny_config.py's few-dozen-example demo data. Under
pytest-xdist (``-n 2``) the workers share both and the compilation cache: one worker
generates, the other waits on a file lock.
"""
import atexit
import os
import shutil
import tempfile

import pytest
from filelock import FileLock

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="gmm_jax_test_jit_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


def _shared_dir(tmp_path_factory, name, make):
    """``make(path)`` once per test session, also when pytest-xdist workers share it:
    the first worker makes it under the session's common temp root, the others wait."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        path = tmp_path_factory.mktemp(name)
        make(str(path))
        return path
    root = tmp_path_factory.getbasetemp().parent  # the same for every worker
    path, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            make(str(path))
            done.touch()
    return path


def _make_small_demo_data(path):
    from gmm_jax.configs import tiny
    from gmm_jax.data import get_source
    cfg = tiny.get_config().data
    cfg.data_dir = path
    get_source(cfg)


def _make_demoflow_data(path):
    from gmm_jax.data import demo
    from tests import demo_tiny_config
    demo.builder(path, demo_tiny_config.get_config(path).data.demo_config).download_and_prepare()


@pytest.fixture(scope="session")
def small_demo_data(tmp_path_factory):
    """A TFDS data dir holding the demo's "small" config (configs/tiny.py's data),
    generated here once; tests only read it."""
    return _shared_dir(tmp_path_factory, "small_demo_tfds", _make_small_demo_data)


@pytest.fixture(scope="session")
def demoflow_data(tmp_path_factory):
    """A TFDS data dir holding tests/demo_tiny_config.py's demo data ("demoflow"),
    generated here once; tests only read it."""
    return str(_shared_dir(tmp_path_factory, "demoflow_tfds", _make_demoflow_data))
