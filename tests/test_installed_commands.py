"""The installed commands, as a user gets them from ``pip install .``: a wheel built from
this checkout, installed (without its dependencies, which this environment has) into a
fresh virtual environment outside the checkout, then ``gmm-train`` / ``gmm-eval`` with a
shipped config given by name, run from a directory that holds no configs/."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

from gmm_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def test_config_names_resolve_to_the_packaged_files(tmp_path):
    coco = cli.packaged_config("coco")
    assert coco and os.path.samefile(os.path.dirname(coco),
                                     os.path.join(ROOT, "gmm_jax", "configs"))
    argv = ["gmm-train", "--config=coco", "--config", "demo:x", "--workdir=w"]
    assert cli.resolve_config_names(argv) == [
        "gmm-train", f"--config={coco}", "--config", f"{cli.packaged_config('demo')}:x",
        "--workdir=w"]
    own = tmp_path / "coco"
    own.write_text("")  # an existing path always wins over a shipped name
    os.chdir(tmp_path)
    assert cli.resolve_config_names(["x", "--config=coco"]) == ["x", "--config=coco"]
    assert cli.resolve_config_names(["x", "--config=no_such"]) == ["x", "--config=no_such"]
    assert cli.packaged_config("../default") is None


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(wheels)], check=True, timeout=300)
    (wheel,) = wheels.glob("gmm_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gmm_jax/configs/coco.py" in names and "gmm_jax/evaluators/retrieval.py" in names
    env_dir = root / "venv"
    # --system-site-packages: the dependencies come from this environment, gmm_jax from
    # the wheel (the venv's own site-packages come first on sys.path).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)],
                   check=True, timeout=300)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=300)
    return root, env_dir / "bin"


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
    return env


def test_gmm_train_and_gmm_eval_from_the_installed_wheel(venv, small_demo_data):
    root, bin_dir = venv
    work = root / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(bin_dir / "python"), "-c",
                            "import gmm_jax; print(gmm_jax.__file__)"],
                           cwd=work, env=_env(), capture_output=True, text=True, timeout=120)
    assert str(root / "venv") in where.stdout, where.stdout + where.stderr  # not the checkout
    # the demo data of --config=tiny, generated once per session (conftest)
    data_dir, run = str(small_demo_data), str(root / "run")
    r = subprocess.run([str(bin_dir / "gmm-train"), "--config=tiny", f"--workdir={run}",
                        f"--config.data.data_dir={data_dir}", "--config.total_steps=4",
                        "--config.checkpoint_every_steps=4", "--config.progress_bar=False"],
                       cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished at step 4" in r.stdout
    out = str(root / "eval")
    r = subprocess.run([str(bin_dir / "gmm-eval"), "--config=tiny", f"--workdir={run}",
                        f"--out={out}", f"--config.data.data_dir={data_dir}",
                        "--config.eval.suites=retrieval,geometry", "--config.eval.progress=False",
                        "--config.eval.max_examples=32"],
                       cwd=work, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    values = json.load(open(os.path.join(out, "metrics.json")))
    assert 0 <= values["retrieval/i2t_r1"] <= 100 and values["gap/centroid_distance"] >= 0
    # a misspelled key is caught by the packaged defaults, on one line
    r = subprocess.run([str(bin_dir / "gmm-train"), "--config=tiny", f"--workdir={run}2",
                        "--config.optim.lrr=1"], cwd=work, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "lrr" in r.stderr.strip().splitlines()[-1]
    r = subprocess.run([str(bin_dir / "gmm-convert"), "--help"], cwd=work, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "--src" in r.stdout
