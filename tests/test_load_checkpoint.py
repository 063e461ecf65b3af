"""train_lib.load_checkpoint hands out OpenAI's ``logit_scale = log(scale)`` for every
temperature mode, so eval, save_pretrained and to_hf need not know how a run was trained."""
import json
import math

import jax
import numpy as np
import pytest

from gmm_jax import checkpointing, eval_lib, pretrained, train_lib
from gmm_jax.models import CLIP, get_config, init_params
from gmm_jax.tokenizer import Tokenizer
from tests.train_step_setup import flat_leaves


def _softplus64(x):
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def tiny():
    model = CLIP(get_config("tiny"))
    params = jax.tree.map(np.asarray, init_params(model, jax.random.key(0)))
    tok = Tokenizer.train(["a red square", "a blue circle on stripes"] * 4, vocab_size=520)
    return model, params, tok


def _fake_run(workdir, tiny, nu, loss_cfg):
    """A workdir as train.py leaves it: model_config.json, tokenizer/, a checkpoint
    whose state holds ``nu`` in ``logit_scale`` and whose config names the mode."""
    model, params, tok = tiny
    pretrained.save_config(str(workdir), model.config)
    tok.save(str(workdir / pretrained.TOKENIZER_DIR))
    state = {"params": {**params, "logit_scale": np.float32(nu)}, "step": np.int32(7)}
    ckpt = checkpointing.TrainCheckpointer(str(workdir), async_save=False)
    ckpt.save(7, state, {"epoch": 0}, json.dumps({"loss": loss_cfg}))
    ckpt.close()


def _assert_same_weights(saved, got):
    """Everything but ``logit_scale`` comes back exactly as saved."""
    saved = flat_leaves({k: v for k, v in saved.items() if k != "logit_scale"})
    got = flat_leaves({k: v for k, v in got.items() if k != "logit_scale"})
    assert saved.keys() == got.keys()
    for k in saved:
        np.testing.assert_array_equal(np.asarray(saved[k]), np.asarray(got[k]), err_msg=k)


@pytest.mark.parametrize("loss_cfg,nu,expected_scale", [
    ({"temperature": "softplus", "temp_exp_s": 1.0}, 2.0, _softplus64(2.0)),
    ({"temperature": "softplus", "temp_exp_s": 1.0}, -1.0, _softplus64(-1.0)),
    ({"temperature": "exp", "temp_exp_s": 4.0}, 14.0, math.exp(14.0 / 4.0)),
    ({"temperature": "learned"}, 4.2, math.exp(4.2)),
    ({"temperature": "fixed", "tau": 0.01}, math.log(100.0), 100.0),
])
def test_logit_scale_is_log_scale_whatever_the_mode(tmp_path, tiny, loss_cfg, nu,
                                                    expected_scale):
    _fake_run(tmp_path, tiny, nu, loss_cfg)
    _, params, _, step = train_lib.load_checkpoint(str(tmp_path))
    assert step == 7
    assert float(params["logit_scale"]) == pytest.approx(math.log(expected_scale), rel=1e-6)
    assert eval_lib.model_scale(params) == pytest.approx(expected_scale, rel=1e-5)
    _assert_same_weights(tiny[1], params)


def test_a_runs_workdir_can_start_another_run(tmp_path, tiny):
    """config.init = a training workdir: its latest checkpoint, in OpenAI layout, with
    this run's compute dtype."""
    run = tmp_path / "first"
    _fake_run(run, tiny, 2.0, {"temperature": "softplus", "temp_exp_s": 1.0})
    config = train_lib.default_config()
    config.init = str(run)
    config.model.dtype = "bfloat16"
    model, params, tok = train_lib.build_model_and_tokenizer(config, str(tmp_path / "second"))
    assert model.config.dtype == "bfloat16" and model.config.embed_dim == tiny[0].config.embed_dim
    assert tok.vocab_size == tiny[2].vocab_size
    assert float(params["logit_scale"]) == pytest.approx(math.log(_softplus64(2.0)), rel=1e-6)
    _assert_same_weights(tiny[1], params)


def test_a_run_exports_to_transformers(tmp_path, tiny, capsys):
    """python -m gmm_jax.convert --format run --to hf: transformers loads the run's
    weights with its temperature as log(scale), and its tokenizer."""
    from transformers import CLIPModel, CLIPTokenizer

    from gmm_jax import convert
    run, out = tmp_path / "run", tmp_path / "hf"
    _fake_run(run, tiny, -1.0, {"temperature": "softplus", "temp_exp_s": 1.0})
    assert convert.main(["--src", str(run), "--format", "run", "--out", str(out),
                         "--to", "hf"]) == 0
    hf = CLIPModel.from_pretrained(str(out))
    assert hf.logit_scale.item() == pytest.approx(math.log(_softplus64(-1.0)), rel=1e-6)
    caption = "a blue circle on stripes"
    hf_ids = CLIPTokenizer.from_pretrained(str(out))(caption)["input_ids"]
    assert list(np.asarray(tiny[2]([caption], context_length=77))[0, :len(hf_ids)]) == hf_ids
    # Mistakes are named: a directory that is not a run, --step without --format run.
    with pytest.raises(SystemExit):
        convert.main(["--src", str(out), "--format", "run", "--out", str(tmp_path / "x")])
    assert "no checkpoints/ directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        convert.main(["--src", str(out), "--format", "hf", "--step", "3", "--out", str(out)])
    assert "--step applies to --format run only" in capsys.readouterr().err


def test_load_run_picks_the_step_and_returns_its_config(tmp_path, tiny):
    """checkpointing.load_run: latest or the given step, with the config saved with that
    step; the params come back without the saved optimiser state."""
    model, params, tok = tiny
    pretrained.save_config(str(tmp_path), model.config)
    tok.save(str(tmp_path / pretrained.TOKENIZER_DIR))
    ckpt = checkpointing.TrainCheckpointer(str(tmp_path), async_save=False)
    for step, nu in ((3, 1.0), (5, 2.0)):
        state = {"params": {**params, "logit_scale": np.float32(nu)}, "step": np.int32(step),
                 "opt_state": {"mu": jax.tree.map(np.zeros_like, params)}}
        ckpt.save(step, state, {"epoch": 0}, json.dumps({"loss": {"temperature": "learned"},
                                                         "seed": step}))
    ckpt.close()
    for want_step, nu in ((None, 2.0), (3, 1.0)):
        got_model, got, got_tok, step, run_config = checkpointing.load_run(str(tmp_path),
                                                                           want_step)
        assert step == (want_step or 5) and run_config["seed"] == step
        assert set(got) == set(params)
        assert float(got["logit_scale"]) == nu
        assert got_model.config == model.config and got_tok.vocab_size == tok.vocab_size
        _assert_same_weights(params, got)
    with pytest.raises(ValueError, match=r"no checkpoint for step 4; saved steps: \[3, 5\]"):
        checkpointing.load_run(str(tmp_path), 4)


@pytest.mark.parametrize("saved_as", ["TrainState", "dict"])
def test_train_state_round_trip_and_dict_checkpoints_restore(tmp_path, tiny, saved_as):
    """The typed ``TrainState`` is saved under the field names the plain dict of earlier
    versions used: a checkpoint of either kind restores into a ``TrainState`` target
    (a resume) leaf for leaf, and ``restore_params`` reads its params."""
    import optax

    from gmm_jax import train_state
    _, params, _ = tiny
    tx = optax.adamw(1e-3)
    state = train_state.new_state(params, tx, seed=5).replace(step=np.int32(9))
    state = jax.tree.map(lambda x: np.asarray(x) + 0.5 if np.asarray(x).dtype.kind == "f"
                         else np.asarray(x), state)  # moments not all zeros
    saved = state if saved_as == "TrainState" else {
        "step": state.step, "params": state.params, "opt_state": state.opt_state,
        "rng": state.rng}
    ckpt = checkpointing.TrainCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(9, saved, {"epoch": 1, "step_in_epoch": 2}, json.dumps({"seed": 5}))
    target = jax.eval_shape(lambda: train_state.new_state(params, tx, seed=0))
    got, data_state = ckpt.restore(9, target)
    ckpt.close()
    assert isinstance(got, train_state.TrainState)
    assert data_state == {"epoch": 1, "step_in_epoch": 2}
    want, have = jax.tree.leaves_with_path(state), jax.tree.leaves_with_path(got)
    assert [p for p, _ in want] == [p for p, _ in have]
    for (path, a), (_, b) in zip(want, have):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    only_params, step, _ = checkpointing.restore_params(str(tmp_path))
    assert step == 9
    _assert_same_weights(state.params, only_params)
