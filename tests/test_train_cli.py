"""train.py's user errors: one line on stderr naming the culprit, a non-zero exit, no
half-made workdir; the traceback only on request (GMM_TRACEBACK=1)."""
import os
import subprocess
import sys

import pytest

from gmm_jax import cli, train_lib
from gmm_jax.configs import coco, flickr30k

pytestmark = pytest.mark.slow  # train.py subprocesses

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny.py")


def _run(*flags, config=TINY_CONFIG, cwd=None, env=None):
    extra, env = env or {}, dict(os.environ)
    env.pop("GMM_TRACEBACK", None)
    env.update(extra, PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--config={config}",
                           "--config.progress_bar=false", *flags],
                          capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def _error_line(proc):
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("train.py: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines


def test_a_missing_init_directory_is_named_and_nothing_is_made(tmp_path):
    missing, workdir = tmp_path / "no_such_model", tmp_path / "run"
    lines = _error_line(_run(f"--workdir={workdir}", f"--config.init={missing}"))
    assert f"config.init='{missing}' does not exist" in lines[-1]
    assert len(lines) < 5, lines
    assert not workdir.exists()


def test_a_misspelled_key_is_refused_outside_the_checkout(tmp_path):
    """Validation reads the packaged defaults, not a path in a checkout: run from an
    unrelated directory with a config file there that misspells a key."""
    (tmp_path / "mine.py").write_text(
        "from gmm_jax.configs import tiny\n\n\ndef get_config():\n"
        "    config = tiny.get_config()\n    config.loss.metod = 'clip'\n    return config\n")
    lines = _error_line(_run("--workdir=run", config="mine.py", cwd=tmp_path))
    assert "loss.metod" in lines[-1] and "unknown config key" in lines[-1]
    assert len(lines) < 5, lines
    assert not (tmp_path / "run").exists()


def test_fine_tuning_configs_refuse_to_start_from_scratch(tmp_path):
    workdir = tmp_path / "run"
    lines = _error_line(_run(f"--workdir={workdir}",
                             config=os.path.join(ROOT, "configs", "coco.py")))
    assert "config.init is not set" in lines[-1] and "gmm_jax.convert" in lines[-1]
    assert "allow_from_scratch" in lines[-1] and len(lines) < 5, lines
    assert not workdir.exists()
    for module in (coco, flickr30k):
        config = module.get_config()
        with pytest.raises(ValueError, match="config.init is not set"):
            train_lib.validate_config(config)
        config.allow_from_scratch = True  # on purpose: accepted
        train_lib.validate_config(config)
        config.allow_from_scratch, config.init = False, "/models/b32"
        train_lib.validate_config(config)


def test_a_data_error_is_one_line_and_the_traceback_is_on_request(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "a.png", "caption": "a red square"}\n{"image": "b.png", \n')
    flags = (f"--workdir={tmp_path / 'run'}", "--config.data.name=image_text_files",
             f"--config.data.files_path={bad}", f"--config.data.images_dir={tmp_path}")
    lines = _error_line(_run(*flags))
    assert f"{bad}:2" in lines[-1] and "invalid JSON" in lines[-1]
    assert not (tmp_path / "run").exists()  # a failed first start leaves no workdir
    verbose = _run(*flags, env={"GMM_TRACEBACK": "1"})
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert f"{bad}:2" in verbose.stderr


def test_run_cli_turns_user_errors_into_one_line(capsys, monkeypatch):
    monkeypatch.delenv("GMM_TRACEBACK", raising=False)

    def main(argv):
        raise FileNotFoundError("config.tokenizer='/x' does not exist\n(second line)")
    with pytest.raises(SystemExit) as exit_:
        cli.run_cli(main, "prog")([])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == ("prog: error: config.tokenizer='/x' does not exist | "
                                       "(second line)\n")

    def bug(argv):
        raise KeyError("not a user error")
    with pytest.raises(KeyError):  # programming errors keep their traceback
        cli.run_cli(bug, "prog")([])
    monkeypatch.setenv("GMM_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.run_cli(main, "prog")([])
