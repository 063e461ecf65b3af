"""Smoke tests of benchmarks/loss.py, train_step.py and transpose.py on the smallest sizes,
so the scripts keep running; plus the agreement of the JAX losses with the PyTorch
restatement of the authors' code that the loss benchmark times."""
import math
import os
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import loss as loss_bench  # noqa: E402
import train_step as step_bench  # noqa: E402
import transpose as transpose_bench  # noqa: E402

from gmm_jax import losses  # noqa: E402

pytestmark = pytest.mark.slow  # compiles and times the benchmark programs


def _finite_positive(x):
    return x is not None and math.isfinite(x) and x > 0


@pytest.mark.parametrize("method", ["clip", "m2mix", "m3mix"])
def test_recipe_matches_torch_restatement(method):
    v, t = loss_bench.inputs(96, 48, seed=3)
    if method == "m3mix":  # one lam for every term, as the torch restatement uses
        want = loss_bench.torch_value(method, v, t)
        got = (losses.clip_loss(v, t, loss_bench.SCALE)
               + loss_bench.C_M2 * losses.m2mix_loss(v, t, loss_bench.LAM, loss_bench.M2_SCALE)
               + 0.05 * losses.vmix_loss(v, t, loss_bench.LAM, loss_bench.SCALE)
               + 0.05 * losses.lmix_loss(v, t, loss_bench.LAM, loss_bench.SCALE)
               + 0.1 * losses.vlmix_loss(v, t, loss_bench.LAM, loss_bench.SCALE))
        assert abs(float(got) - want) <= 1e-4 * abs(want)
        return
    # The recipe objective (lam drawn from the key), fed the same lam on the torch side.
    obj = losses.build_objective(loss_bench._loss_cfg(method))
    total, aux = obj(v, t, loss_bench.SCALE, jax.random.key(7), 0)
    lam = float(aux.get("lam_m2", loss_bench.LAM))
    import torch
    want = float(loss_bench.torch_losses(lam)(method)(torch.from_numpy(v), torch.from_numpy(t)))
    assert abs(float(total) - want) <= 1e-4 * abs(want), (float(total), want)
    # and the fixed-lam helpers
    assert abs(loss_bench.jax_value(method, v, t) - loss_bench.torch_value(method, v, t)) <= (
        1e-4 * abs(want))


def test_loss_benchmark_smoke(capsys):
    args = ["--n", "64", "--d", "32", "--repeats", "1", "--methods", "clip", "m2mix",
            "--mesh-devices", "8"]
    result = loss_bench.main(args)
    rows, mm_gflops = result["loss"][(64, 32)]
    names = [r["case"] for r in rows]
    assert names == ["jax clip_loss", "jax clip+m2mix (objective)", "jax clip_loss + m2mix_loss",
                     f"jax {loss_bench.MATMUL}", "jax floor: clip's 3 products",
                     "jax floor: m2mix's 7 products", "torch eager clip (authors')",
                     "torch eager clip+m2mix (authors')"]
    assert _finite_positive(mm_gflops)
    for r in rows:
        assert _finite_positive(r["ms"]) and _finite_positive(r["mm_eq"]), r
    assert all(_finite_positive(r["mem_mb"]) for r in rows if r["case"].startswith("jax clip"))
    # The floor programs do exactly the products they are named after (XLA's count).
    for r in rows[4:6]:
        assert r["xla_gflops"] == pytest.approx(r["gflops"], rel=0.01), r
    local = result["local"]
    assert [(r["method"], r["n"]) for r in local] == [("m2mix", 64)]
    assert all(r[k] and r[k] > 0 for r in local for k in ("global_1", "global_k", "local_k"))
    out = capsys.readouterr().out
    assert "| jax clip+m2mix (objective) |" in out and "local (shard_map) x8" in out
    assert out.count("\n| ") >= (len(rows) + 2) + (len(local) + 2)


def test_train_step_benchmark_smoke(capsys):
    # conftest gives 8 fake CPU devices: the batch is split over all of them.
    rows = step_bench.main(["--models", "tiny", "--batch", "8", "--steps", "1",
                            "--methods", "clip", "m2mix"])
    assert [(r["method"], r["framework"].split()[0]) for r in rows] == [
        ("clip", "jax"), ("clip", "torch"), ("m2mix", "jax"), ("m2mix", "torch")]
    for r in rows:
        assert _finite_positive(r["ms"]) and _finite_positive(r["img_s"]), r
        assert _finite_positive(r["mfu"]) and _finite_positive(r["tflops"]), r
    out = capsys.readouterr().out
    assert "peak reference: measured fp32" in out
    assert "m2mix step time / clip step time" in out


def _jaxpr_matmul_flops(jaxpr) -> int:
    """FLOPs of every dot_general and convolution in ``jaxpr`` (sub-jaxprs included):
    2 x (output elements) x (contracted size)."""
    from jax.extend import core as jcore
    total = 0
    for eqn in jaxpr.eqns:
        out = int(np.prod(eqn.outvars[0].aval.shape)) if eqn.outvars else 0
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * out * int(np.prod([lhs[i] for i in contract]))
        elif eqn.primitive.name == "conv_general_dilated":
            kernel = eqn.invars[1].aval.shape  # HWIO: each output sums over H x W x I
            total += 2 * out * int(np.prod(kernel[:-1]))
        for p in eqn.params.values():
            if isinstance(p, jcore.ClosedJaxpr):
                total += _jaxpr_matmul_flops(p.jaxpr)
            elif isinstance(p, jcore.Jaxpr):
                total += _jaxpr_matmul_flops(p)
    return total


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_model_flops_count_every_matrix_product(preset):
    """The analytic FLOPs behind MFU equal a brute-force count of the products in the
    towers' traced programs (XLA's GPU count leaves cuBLAS calls out, so MFU uses these)."""
    import jax
    import jax.numpy as jnp

    from gmm_jax.models import CLIP, init_params, presets
    mcfg = presets.get_config(preset)
    model = CLIP(mcfg)
    params = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    n = 3
    images = jnp.zeros((n, mcfg.image_size, mcfg.image_size, 3))
    tokens = jnp.ones((n, mcfg.context_length), jnp.int32)
    counted = [_jaxpr_matmul_flops(jax.make_jaxpr(
        lambda p, x, m=m: model.apply({"params": p}, x, method=m))(params, x).jaxpr) // n
        for m, x in ((model.encode_image, images), (model.encode_text, tokens))]
    assert tuple(counted) == step_bench.forward_flops(mcfg)
    assert step_bench.model_flops(mcfg, 10) == 3 * 10 * sum(counted)


def test_hf_config_mirrors_the_preset():
    from gmm_jax.models import presets
    mcfg = presets.get_config("ViT-B/16")
    hf = step_bench.hf_config(mcfg)
    assert (hf.vision_config.patch_size, hf.vision_config.hidden_size,
            hf.vision_config.num_hidden_layers) == (16, 768, 12)
    assert (hf.text_config.hidden_size, hf.text_config.num_attention_heads,
            hf.projection_dim, hf.text_config.hidden_act) == (512, 8, 512, "quick_gelu")


def test_transpose_benchmark_smoke(capsys):
    best = transpose_bench.main(["--n", "64", "--d", "8", "--repeats", "1"])
    cases = transpose_bench.cases(64, 8)
    assert set(best) == set(cases) and all(_finite_positive(s) for s in best.values())
    assert capsys.readouterr().out.count("\n| ") == len(best) + 2
    # The timed variants compute what they are named after (float64 NumPy).
    g, x = (np.asarray(a, np.float64) for a in cases["(G + G^T) @ x"][1])
    for name, want in [("G + G^T", g + g.T), ("(G + G^T) @ x", (g + g.T) @ x),
                       ("G @ x + G^T @ x", (g + g.T) @ x),
                       ("G^T @ x (transposed operand)", g.T @ x)]:
        fn, args = cases[name]
        np.testing.assert_allclose(np.asarray(fn(*args), np.float64), want, rtol=1e-4, atol=1e-3,
                                   err_msg=name)


def test_train_step_benchmark_memory(capsys):
    """--memory on the tiny model (conftest: 8 fake CPU devices, batch 16): compile
    only, at LLVM optimisation level 0."""
    rows = step_bench.main(["--models", "tiny", "--batch", "16", "--methods", "clip",
                            "--memory", "--chunks", "2"])
    assert [(r["chunks"], r["remat"]) for r in rows] == [(1, False), (2, False)]
    for r in rows:
        assert r["devices"] == 8 and r["peak"] == r["args"] + r["out"] - r["alias"] + r["temp"]
        assert r["temp"] > 0 and r["alias"] > 0, r  # the state is donated
    out = capsys.readouterr().out
    assert out.count("| tiny | float32 | clip | 16 | 2 |") == 2


@pytest.mark.slow
def test_train_step_benchmark_breakdown_and_chunk_rows(capsys):
    """Compiles and times seven tiny programs (minutes on a loaded 2-core machine)."""
    parts = step_bench.main(["--models", "tiny", "--batch", "16", "--methods", "clip",
                             "--breakdown", "--steps", "1"])
    ms = parts[("tiny", "float32", 16, "clip")]
    assert list(ms) == ["whole step", "image tower fwd+bwd", "text tower fwd+bwd",
                        "loss fwd+bwd (clip, on embeddings)", "optimiser update"]
    assert all(_finite_positive(x) for x in ms.values()), ms
    assert "Where the step's time goes" in capsys.readouterr().out
    rows = step_bench.main(["--models", "tiny", "--batch", "16", "--methods", "clip",
                            "--chunks", "1", "2", "--steps", "1", "--no-torch"])
    assert [r["chunks"] for r in rows] == [1, 2]
    assert all(_finite_positive(r["ms"]) for r in rows)
    assert "step time with 2 chunks / unchunked" in capsys.readouterr().out
