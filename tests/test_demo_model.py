"""The shipped pre-trained demo CLIP: loads, is small, and scores what it recorded."""
import json
import math
import os

import numpy as np
import pytest

from gmm_jax import demo_model, pretrained


@pytest.fixture(scope="module")
def shipped():
    model_dir = demo_model.shipped_dir()
    with open(os.path.join(model_dir, demo_model.METRICS_FILE)) as f:
        info = json.load(f)
    return model_dir, info, pretrained.load_pretrained(model_dir)


def test_model_directory_is_small_and_complete(shipped):
    model_dir, info, (model, params, tok) = shipped
    size = sum(os.path.getsize(os.path.join(d, f))
               for d, _, files in os.walk(model_dir) for f in files)
    assert size <= 20 * 2**20, size
    assert tok is not None
    # The recorded tau is the model's own learned temperature.
    assert math.isclose(info["tau"], math.exp(-float(np.asarray(params["logit_scale"]))),
                        rel_tol=1e-5)
    assert model.config.image_size == 48


def test_recomputed_quick_metrics_match_the_recorded_ones(shipped):
    """Retrieval and zero-shot on the first scenes of source_test and target_test,
    recomputed from the shipped files, agree with what make_demo_model.py recorded."""
    _, info, (model, params, tok) = shipped
    assert info["quick_examples"] == demo_model.QUICK_EXAMPLES
    got = {s: demo_model.quick_metrics(model, params, tok, s) for s in demo_model.QUICK_SPLITS}
    for split in demo_model.QUICK_SPLITS:
        for k, want in info["quick"][split].items():
            # float32 on another machine may flip a near tie: one example of 200 = 0.5 %
            assert got[split][k] == pytest.approx(want, abs=1.0), (split, k)
    # and the model is capable on its source domain (chance: R@1 0.5 %, zero-shot 12.5 %;
    # docs/demo.md has the full evaluation), weaker but far above chance on the target
    src, tgt = got["source_test"], got["target_test"]
    assert src["i2t_r1"] > 90 and src["t2i_r1"] > 90 and src["zeroshot_top1"] > 75, src
    assert tgt["i2t_r1"] > 25 and tgt["zeroshot_top1"] > 35, tgt


def test_the_demo_loads_the_shipped_model_unless_rebuild(shipped, tmp_path):
    from gmm_jax import demo_flow
    from gmm_jax.configs import demo as demo_cfg
    model_dir, info, _ = shipped
    config = demo_cfg.get_config()
    assert not config.demo.pretrain.rebuild
    got_dir, tau, stage = demo_flow.shipped_pretrained(str(tmp_path / "eval"))
    assert got_dir == model_dir and tau == info["tau"] and stage["shipped"]
    ft = demo_flow.finetune_config(config, "ft", got_dir, tau)
    assert ft.init == model_dir and ft.loss.tau == pytest.approx(tau)
