"""Train-step time, images/s and model-FLOPs utilisation (MFU) of the project's step
against a Hugging Face PyTorch ``CLIPModel`` training step, in one run.

The JAX step is what ``train.py`` runs: ``gmm_jax/configs/default.py``'s config (AdamW, cosine
schedule, fixed tau = 0.01, m2mix weights) with the model preset, dtype, loss method
and batch size overridden, ``gmm_jax.optim.make_optimizer``,
``gmm_jax.losses.build_objective`` and ``gmm_jax.train_state.make_train_step`` over a
mesh of all local devices (batch split over ``data``). Data are synthetic and already
on the device (the input pipeline is out of the measurement); weights random.

The PyTorch step: ``transformers.CLIPModel`` built from a ``CLIPConfig`` of the same
architecture (random init), ``torch.optim.AdamW`` with the same hyper-parameters, the
same batch, features L2-normalised, the same loss (plain CLIP at scale 100, or plus
the authors' m2mix restated in ``benchmarks/loss.py``); ``bfloat16`` rows run under
``torch.autocast`` (on CUDA, or on CPU when the benchmark runs there). One device.

FLOPs per step come from XLA's cost analysis of the compiled JAX step (per device)
and are used for both frameworks' MFU. Peak: bf16 dense TFLOP/s of the device kind
(H100/H200 989, A100 312, TPU v4 275, v5e 197, v5p 459) for both dtypes; on CPU the
"peak" is a plain fp32 matmul measured in the same run (so CPU "MFU" means "fraction of
what XLA's own matmul reaches here").

    python benchmarks/train_step.py                                      # CPU-sized default
    python benchmarks/train_step.py --models ViT-B/32 ViT-B/16 --batch 256 512 1024 \\
        --dtypes bfloat16 float32 --methods clip m2mix --steps 20         # GPU host
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

# Both frameworks share the accelerator: do not let XLA take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loss as loss_bench  # noqa: E402  (benchmarks/loss.py: torch m2mix restatement)

PEAK_TFLOPS = (  # bf16 dense, per device; matched against jax's device_kind
    ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
    ("TPU v4", 275.0), ("TPU v5 lite", 197.0), ("TPU v5e", 197.0), ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
)


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B/32"],
                   help="gmm_jax.models.presets names (ViT-B/32, ViT-B/16, tiny, ...)")
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="global batch sizes")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    p.add_argument("--methods", nargs="+", default=["clip", "m2mix"],
                   choices=["clip", "m2mix", "m3mix"])
    p.add_argument("--steps", type=int, default=2, help="timed steps (after 1 warm-up step)")
    p.add_argument("--remat", action="store_true", help="config.model.remat (memory for compute)")
    p.add_argument("--no-torch", action="store_true")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- peak

def peak_flops(device, n=2048, repeats=3):
    """``(FLOP/s, source)``: the table's bf16 peak for accelerators, else a measured
    fp32 ``n x n x n`` matmul (jax, this device)."""
    kind = device.device_kind
    for name, tflops in PEAK_TFLOPS:
        if name.lower() in kind.lower():
            return tflops * 1e12, f"{name} bf16 dense peak {tflops:.0f} TFLOP/s (table)"
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    jax.block_until_ready(mm(a))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(mm(a))
        best = min(best, time.perf_counter() - start)
    rate = 2.0 * n ** 3 / best
    return rate, f"measured fp32 {n}^3 matmul in this run: {rate / 1e9:.1f} GFLOP/s"


# ---------------------------------------------------------------------------- jax

def project_config(preset, dtype, method, batch, remat=False):
    """``gmm_jax/configs/default.py`` with the benchmark's overrides."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gmm_jax.configs.default import get_config
    config = get_config()
    config.model.preset = preset
    config.model.dtype = dtype
    config.model.remat = bool(remat)
    config.loss.method = method
    config.batch_size = int(batch)
    config.total_steps = 1000
    return config


def jax_step(preset, dtype, method, batch, remat=False, seed=0):
    """``(run_one_step(), flops_per_step_per_device, n_devices)`` of the project's step."""
    import jax
    import jax.numpy as jnp
    from gmm_jax import losses, optim
    from gmm_jax import train_state as ts
    from gmm_jax.models import CLIP, init_params, presets

    config = project_config(preset, dtype, method, batch, remat)
    mcfg = presets.get_config(preset, dtype=dtype, remat=bool(remat))
    model = CLIP(mcfg)
    mesh = ts.make_mesh(config.mesh.axes, config.mesh.shape)
    tx, lr_fn = optim.make_optimizer(config, config.total_steps)
    objective = losses.build_objective(config.loss)

    def fresh(p):
        return ts.new_state(ts.init_temperature_param(p, config.loss), tx, seed)

    params = init_params(model, jax.random.key(seed))
    shardings = ts.state_shardings(jax.eval_shape(fresh, params), mesh)
    state = jax.jit(fresh, out_shardings=shardings)(params)
    del params
    step = ts.make_train_step(model, objective, tx, config.loss, config.total_steps, lr_fn,
                              mesh, shardings)
    data = ts.batch_sharding(mesh)
    batch_arrays = jax.jit(lambda k: synthetic_batch(k, batch, mcfg),
                           out_shardings={"image": data, "tokens": data})(jax.random.key(1))
    epoch = np.int32(0)
    compiled = step.lower(state, batch_arrays, epoch).compile()
    flops = loss_bench._flops(compiled)
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch_arrays, epoch)
        jax.block_until_ready(metrics["loss/total"])
    return run, flops, mesh.size


def synthetic_batch(key, batch, mcfg):
    """Random CLIP-normalised-like images and token ids with EOT at the last position."""
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(key)
    images = jax.random.normal(k1, (batch, mcfg.image_size, mcfg.image_size, 3), jnp.float32)
    eos = mcfg.eos_token_id if mcfg.eos_token_id is not None else mcfg.vocab_size - 1
    tokens = jax.random.randint(k2, (batch, mcfg.context_length), 1, eos, jnp.int32)
    tokens = tokens.at[:, -1].set(eos)
    return {"image": images, "tokens": tokens}


# --------------------------------------------------------------------------- torch

def hf_config(mcfg):
    """A ``transformers.CLIPConfig`` with the architecture of a ``gmm_jax`` CLIPConfig."""
    from transformers import CLIPConfig
    text = dict(vocab_size=mcfg.vocab_size, hidden_size=mcfg.text_width,
                intermediate_size=mcfg.text_mlp_dim, num_hidden_layers=mcfg.text_layers,
                num_attention_heads=mcfg.text_heads, max_position_embeddings=mcfg.context_length,
                hidden_act=mcfg.act, layer_norm_eps=mcfg.layer_norm_eps,
                eos_token_id=mcfg.eos_token_id if mcfg.eos_token_id is not None else 2,
                bos_token_id=min(49406, mcfg.vocab_size - 2), pad_token_id=1)
    vision = dict(hidden_size=mcfg.vision_width, intermediate_size=mcfg.vision_mlp_dim,
                  num_hidden_layers=mcfg.vision_layers, num_attention_heads=mcfg.vision_heads,
                  image_size=mcfg.image_size, patch_size=mcfg.patch_size, hidden_act=mcfg.act,
                  layer_norm_eps=mcfg.layer_norm_eps)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=mcfg.embed_dim)


def torch_step(preset, dtype, method, batch, seed=0):
    """``run_one_step()`` of HF ``CLIPModel`` + AdamW with the same loss, one device."""
    import torch
    from transformers import CLIPModel
    from gmm_jax.models import presets

    mcfg = presets.get_config(preset)
    dev = loss_bench.torch_device()
    torch.manual_seed(seed)
    model = CLIPModel(hf_config(mcfg)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    g = torch.Generator(device="cpu").manual_seed(seed)
    pixels = torch.randn(batch, 3, mcfg.image_size, mcfg.image_size, generator=g).to(dev)
    eos = mcfg.eos_token_id if mcfg.eos_token_id is not None else mcfg.vocab_size - 1
    ids = torch.randint(1, eos, (batch, mcfg.context_length), generator=g)
    ids[:, -1] = eos
    ids = ids.to(dev)
    loss_fn = loss_bench.torch_losses()(method)
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else torch.autocast(dev.type, enabled=False))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast:
            out = model(input_ids=ids, pixel_values=pixels)
        v = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        t = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        loss_fn(v, t).backward()
        opt.step()
        sync()
    return run


# --------------------------------------------------------------------------- timing

def time_steps(run, steps):
    return time_interleaved([run], steps)[0]


def time_interleaved(runs, steps):
    """Median seconds per step of each run; one warm-up each, then the runs alternate
    step by step, so a change in machine load hits them alike."""
    for run in runs:
        run()  # warm-up (and compile)
    times = [[] for _ in runs]
    for _ in range(steps):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - start)
    return [float(np.median(ts)) for ts in times]


def step_table(models, batches, dtypes, methods, steps=2, use_torch=True, remat=False):
    """Rows ``dict(model, dtype, batch, method, framework, ms, img_s, tflops, mfu)``."""
    import jax
    peak, peak_src = peak_flops(jax.devices()[0])
    rows = []
    for preset in models:
        for dtype in dtypes:
            for batch in batches:
                for method in methods:
                    run, flops, ndev = jax_step(preset, dtype, method, batch, remat)
                    # CPU: alternate the two frameworks' steps (shared, noisy machine);
                    # accelerators: one after the other (each may need the whole memory).
                    together = use_torch and jax.devices()[0].platform == "cpu"
                    if together:
                        s, s_t = time_interleaved(
                            [run, torch_step(preset, dtype, method, batch)], steps)
                    else:
                        s = time_steps(run, steps)
                    del run
                    rows.append(_row(preset, dtype, batch, method, "jax (gmm_jax step)", s,
                                     flops, ndev, peak))
                    _progress(rows[-1])
                    if use_torch:
                        if not together:
                            s_t = time_steps(torch_step(preset, dtype, method, batch), steps)
                        rows.append(_row(preset, dtype, batch, method, "torch (HF CLIPModel)",
                                         s_t, flops * ndev if flops else None, 1, peak))
                        _progress(rows[-1])
    return rows, peak, peak_src


def _progress(r):
    print(f"measured: {r['model']} {r['dtype']} batch {r['batch']} {r['method']} "
          f"{r['framework']}: {r['ms']:.0f} ms/step", flush=True)


def _row(preset, dtype, batch, method, framework, seconds, flops, ndev, peak):
    achieved = None if flops is None else flops / seconds
    return dict(model=preset, dtype=dtype, batch=batch, method=method, framework=framework,
                ms=1e3 * seconds, img_s=batch / seconds, devices=ndev,
                tflops=None if achieved is None else achieved / 1e12,
                mfu=None if achieved is None else achieved / peak)


def print_step_table(rows, peak_src):
    print(f"\npeak reference: {peak_src}")
    print("| model | dtype | global batch | loss | framework | ms/step | images/s "
          "| TFLOP/s per device | MFU |")
    print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        tf = "-" if r["tflops"] is None else f"{r['tflops']:.3f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['method']} | {r['framework']} "
              f"| {r['ms']:.0f} | {r['img_s']:.2f} | {tf} | {mfu} |")
    # ratios the targets are stated in
    by = {(r["model"], r["dtype"], r["batch"], r["method"], r["framework"]): r for r in rows}
    lines = []
    for (m, dt, b, meth, fw), r in by.items():
        if fw.startswith("jax"):
            t = by.get((m, dt, b, meth, "torch (HF CLIPModel)"))
            if t:
                lines.append(f"{m} {dt} batch {b} {meth}: jax / torch images/s = "
                             f"{r['img_s'] / t['img_s']:.2f}x")
            c = by.get((m, dt, b, "clip", fw))
            if meth != "clip" and c:
                lines.append(f"{m} {dt} batch {b}: {meth} step time / clip step time = "
                             f"{r['ms'] / c['ms']:.3f}")
    for line in lines:
        print(f"- {line}")


def main(argv=None):
    args = _args(argv)
    import jax
    use_torch = not args.no_torch
    if use_torch:
        import torch
        if loss_bench.torch_device().type == "cpu":
            torch.set_num_threads(os.cpu_count())
    print(f"device: {loss_bench.describe_device()}")
    versions = loss_bench.versions(use_torch)
    if use_torch:
        import transformers
        versions += f", transformers {transformers.__version__}"
    print(versions)
    print(f"command: python benchmarks/train_step.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}")
    rows, peak, src = step_table(args.models, args.batch, args.dtypes, args.methods,
                                 args.steps, use_torch, args.remat)
    print_step_table(rows, src)
    return rows


if __name__ == "__main__":
    main()
