"""Test-wide set-up: JAX CPU mode with 8 fake devices, so sharded code can be tested, and
one persistent compilation cache for the session.

Many tests start ``train.py``/``eval.py`` in subprocesses that compile the same tiny
programs again (a resumed run, the run it is compared with, eval after training):
JAX's persistent cache, in a directory made fresh for this session and inherited by
the subprocesses through the environment, compiles each program once (about 10 s of a
23 s tiny training run). A cache the user set (``JAX_COMPILATION_CACHE_DIR``) is kept.
"""
import atexit
import os
import shutil
import tempfile

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
