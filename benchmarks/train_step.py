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

FLOPs per step are the model's: the matrix products of both towers counted from the
architecture (``model_flops``; forward + backward = 3x forward), used for both
frameworks' MFU. XLA's own count of the compiled step is printed beside it as a ratio:
on GPU it leaves out the products handed to cuBLAS (about 1/20 of a ViT-B/16 step on an
H200), so it cannot serve for MFU there. Peak: bf16 dense TFLOP/s of the device kind
(H100/H200 989, A100 312, TPU v4 275, v5e 197, v5p 459) for both dtypes; on CPU the
"peak" is a plain fp32 matmul measured in the same run (so CPU "MFU" means "fraction of
what XLA's own matmul reaches here").

    python benchmarks/train_step.py                                      # CPU-sized default
    python benchmarks/train_step.py --models ViT-B/32 ViT-B/16 --batch 256 512 1024 \\
        --dtypes bfloat16 float32 --methods clip m2mix --steps 20         # GPU host
    python benchmarks/train_step.py --models ViT-B/16 --batch 256 --dtypes bfloat16 \
        --methods clip --attention cudnn --steps 20     # fused attention (NVIDIA GPUs)
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

# The project step's attention kernel (config.model.attention), set by --attention.
RUN_OPTIONS = {"attention": "einsum"}

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
    p.add_argument("--remat", action="store_true",
                   help="config.model.remat (memory for compute); --memory: rows without "
                        "and with it")
    p.add_argument("--attention", default="einsum", choices=["einsum", "xla", "cudnn"],
                   help="config.model.attention of the project's step (cudnn: fused "
                        "attention, NVIDIA GPUs, bf16)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--chunks", type=int, nargs="+", default=None,
                   help="config.embed_chunks values (step table: one row each; --memory: "
                        "rows besides the unchunked one)")
    p.add_argument("--chunk-rows", type=int, nargs="+", default=[],
                   help="--memory: also embed_chunks = per-device batch / R for each R")
    p.add_argument("--memory", action="store_true",
                   help="compile only: XLA's peak memory per device (with --remat: rows "
                        "without and with model.remat)")
    p.add_argument("--breakdown", action="store_true",
                   help="time the step's parts: towers fwd+bwd, loss fwd+bwd, optimiser")
    p.add_argument("--mesh-devices", type=int, default=0,
                   help="K > 0: K fake CPU devices (set before jax is imported)")
    args = p.parse_args(argv)
    args.chunks = args.chunks or ([] if args.memory else [1])
    return args


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

def project_config(preset, dtype, method, batch, remat=False, chunks=1):
    """``gmm_jax/configs/default.py`` with the benchmark's overrides."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gmm_jax.configs.default import get_config
    config = get_config()
    config.model.preset = preset
    config.model.dtype = dtype
    config.model.remat = bool(remat)
    config.model.attention = RUN_OPTIONS["attention"]
    config.loss.method = method
    config.batch_size = int(batch)
    config.embed_chunks = int(chunks)
    config.total_steps = 1000
    return config


def build_step(preset, dtype, method, batch, remat=False, chunks=1, seed=0):
    """The project's jitted step and its parts, nothing allocated: ``dict(step, state,
    batch, mesh, model, tx, objective, fresh)`` with ``state`` / ``batch`` abstract
    (``jax.ShapeDtypeStruct`` with their shardings)."""
    import jax
    import jax.numpy as jnp

    from gmm_jax import gradcache, losses, optim, train_state
    from gmm_jax.models import CLIP, init_params, presets

    config = project_config(preset, dtype, method, batch, remat, chunks)
    mcfg = presets.get_config(preset, dtype=dtype, remat=bool(remat),
                              attention=RUN_OPTIONS["attention"])
    model = CLIP(mcfg)
    mesh = train_state.make_mesh(config.mesh.axes, config.mesh.shape)
    gradcache.check_chunks(int(batch), int(chunks), mesh.size)
    tx, lr_fn = optim.make_optimizer(config, config.total_steps)
    objective = losses.build_objective(config.loss)

    def fresh(p):
        return train_state.new_state(train_state.init_temperature_param(p, config.loss), tx, seed)

    params = jax.eval_shape(lambda: init_params(model, jax.random.key(seed)))
    abstract = jax.eval_shape(fresh, params)
    shardings = train_state.state_shardings(abstract, mesh)
    step = train_state.make_train_step(model, objective, tx, config.loss, config.total_steps, lr_fn,
                              mesh, shardings, embed_chunks=int(chunks))
    data = train_state.batch_sharding(mesh)
    size = mcfg.image_size
    abstract_batch = {
        "image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32, sharding=data),
        "tokens": jax.ShapeDtypeStruct((batch, mcfg.context_length), jnp.int32,
                                       sharding=data)}
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, shardings)
    return dict(step=step, state=state, batch=abstract_batch, mesh=mesh, model=model,
                mcfg=mcfg, tx=tx, objective=objective, fresh=fresh, shardings=shardings,
                config=config)


def materialise(parts, seed=0):
    """``(state, batch)``: random weights and a synthetic batch, on the mesh."""
    import jax

    from gmm_jax.models import init_params
    params = init_params(parts["model"], jax.random.key(seed))
    state = jax.jit(parts["fresh"], out_shardings=parts["shardings"])(params)
    del params
    data = parts["batch"]["image"].sharding
    batch = parts["batch"]["image"].shape[0]
    batch_arrays = jax.jit(lambda k: synthetic_batch(k, batch, parts["mcfg"]),
                           out_shardings={"image": data, "tokens": data})(jax.random.key(1))
    return state, batch_arrays


def jax_step(preset, dtype, method, batch, remat=False, seed=0, chunks=1):
    """``(run_one_step(), flops_per_step_per_device, n_devices)`` of the project's step."""
    import jax
    parts = build_step(preset, dtype, method, batch, remat, chunks, seed)
    state, batch_arrays = materialise(parts, seed)
    epoch = np.int32(0)
    compiled = parts["step"].lower(state, batch_arrays, epoch).compile()
    flops = loss_bench._flops(compiled)
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch_arrays, epoch)
        jax.block_until_ready(metrics["loss/total"])
    return run, flops, parts["mesh"].size


def forward_flops(mcfg) -> tuple[int, int]:
    """``(image tower, text tower)`` forward FLOPs per example: every matrix product
    (2 FLOPs per multiply-add): per layer ``2 L (4 W^2 + 2 W M)`` for the projections
    and MLP plus ``4 L^2 W`` for the attention scores and mix (the causal text attention
    in full, as computed), the patch embedding and the output projections."""
    def tower(length, width, mlp, layers):
        return layers * (2 * length * (4 * width * width + 2 * width * mlp)
                         + 4 * length * length * width)
    patches = (mcfg.image_size // mcfg.patch_size) ** 2
    image = (tower(patches + 1, mcfg.vision_width, mcfg.vision_mlp_dim, mcfg.vision_layers)
             + 2 * patches * mcfg.patch_size ** 2 * 3 * mcfg.vision_width
             + 2 * mcfg.vision_width * mcfg.embed_dim)
    text = (tower(mcfg.context_length, mcfg.text_width, mcfg.text_mlp_dim, mcfg.text_layers)
            + 2 * mcfg.text_width * mcfg.embed_dim)
    return image, text


def model_flops(mcfg, batch: int) -> int:
    """Model FLOPs of one training step on a global batch (forward + backward = 3x the
    forward; the loss's N x N products are left out: under 0.1% at ViT-B sizes)."""
    return 3 * int(batch) * sum(forward_flops(mcfg))


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


def step_table(models, batches, dtypes, methods, steps=2, use_torch=True, remat=False,
               chunks=(1,)):
    """Rows ``dict(model, dtype, batch, method, chunks, framework, ms, img_s, tflops, mfu)``;
    the torch row once per configuration."""
    import jax
    peak, peak_src = peak_flops(jax.devices()[0])
    rows = []
    for preset in models:
        for dtype in dtypes:
            for batch in batches:
                for method in methods:
                    rows += _step_rows(preset, dtype, batch, method, chunks, steps, use_torch,
                                       remat, peak)
    return rows, peak, peak_src


def _step_rows(preset, dtype, batch, method, chunks, steps, use_torch, remat, peak):
    """The jax step with each ``embed_chunks`` in ``chunks`` (and torch's): on CPU all
    alternate step by step (shared, noisy machine); on accelerators one after the other
    (each may need the whole memory)."""
    import jax

    from gmm_jax.models import presets
    together = jax.devices()[0].platform == "cpu"
    runs, names, xla, ndev = [], [], {}, 1
    for k in chunks:
        run, xla[k], ndev = jax_step(preset, dtype, method, batch, remat, chunks=k)
        runs.append(run)
        names.append(k)
        if not together:
            runs[-1] = time_steps(run, steps)
            del run
    if use_torch:
        runs.append(torch_step(preset, dtype, method, batch) if together else
                    time_steps(torch_step(preset, dtype, method, batch), steps))
        names.append("torch")
    seconds = time_interleaved(runs, steps) if together else runs
    # Model FLOPs for every row: the chunked step's second forward pass is recomputation,
    # not model work (and XLA counts a loop body once).
    flops = model_flops(presets.get_config(preset), batch)
    rows = []
    for name, s in zip(names, seconds):
        if name == "torch":
            rows.append(_row(preset, dtype, batch, method, "torch (HF CLIPModel)", s,
                             flops, 1, peak, 1))
        else:
            rows.append(_row(preset, dtype, batch, method, "jax (gmm_jax step)", s,
                             flops / ndev, ndev, peak, name,
                             xla_ratio=None if not xla.get(name) else
                             xla[name] * ndev / flops))
        _progress(rows[-1])
    return rows


def _progress(r):
    print(f"measured: {r['model']} {r['dtype']} batch {r['batch']} {r['method']} "
          f"chunks {r['chunks']} {r['framework']}: {r['ms']:.0f} ms/step", flush=True)


def _row(preset, dtype, batch, method, framework, seconds, flops, ndev, peak, chunks=1,
         xla_ratio=None):
    achieved = None if flops is None else flops / seconds
    return dict(model=preset, dtype=dtype, batch=batch, method=method, chunks=chunks,
                framework=framework, xla_ratio=xla_ratio,
                ms=1e3 * seconds, img_s=batch / seconds, devices=ndev,
                tflops=None if achieved is None else achieved / 1e12,
                mfu=None if achieved is None else achieved / peak)


def print_step_table(rows, peak_src):
    print(f"\npeak reference: {peak_src}")
    print("| model | dtype | global batch | loss | embed_chunks | framework | ms/step "
          "| images/s | model TFLOP/s per device | MFU | XLA / model FLOPs |")
    print("| --- | --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        tf = "-" if r["tflops"] is None else f"{r['tflops']:.3f}"
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        xr = "-" if r.get("xla_ratio") is None else f"{r['xla_ratio']:.2f}"
        print(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['method']} | {r['chunks']} "
              f"| {r['framework']} | {r['ms']:.0f} | {r['img_s']:.2f} | {tf} | {mfu} | {xr} |")
    # ratios the targets are stated in
    by = {(r["model"], r["dtype"], r["batch"], r["method"], r["chunks"], r["framework"]): r
          for r in rows}
    lines = []
    for (m, dt, b, meth, k, fw), r in by.items():
        if not fw.startswith("jax"):
            continue
        t = by.get((m, dt, b, meth, 1, "torch (HF CLIPModel)"))
        if t and k == 1:
            lines.append(f"{m} {dt} batch {b} {meth}: jax / torch images/s = "
                         f"{r['img_s'] / t['img_s']:.2f}x")
        c = by.get((m, dt, b, "clip", k, fw))
        if meth != "clip" and c:
            lines.append(f"{m} {dt} batch {b} chunks {k}: {meth} step time / clip step time = "
                         f"{r['ms'] / c['ms']:.3f}")
        one = by.get((m, dt, b, meth, 1, fw))
        if k != 1 and one:
            lines.append(f"{m} {dt} batch {b} {meth}: step time with {k} chunks / unchunked = "
                         f"{r['ms'] / one['ms']:.3f}")
    for line in lines:
        print(f"- {line}")


# --------------------------------------------------------------------------- memory

def memory_row(preset, dtype, method, batch, remat, chunks):
    """XLA's compiled memory per device of the step (compile only, nothing allocated):
    ``dict(..., args, temp, out, alias, peak)`` in bytes; ``peak = args + out - alias +
    temp`` (the state is donated, so its outputs alias its inputs)."""
    import jax
    parts = build_step(preset, dtype, method, batch, remat, chunks)
    start = time.perf_counter()
    # CPU: LLVM's optimisation level does not change XLA's buffer assignment (the memory
    # measured); level 0 compiles several times faster
    opts = ({"xla_backend_optimization_level": 0} if jax.devices()[0].platform == "cpu"
            else None)
    lowered = parts["step"].lower(parts["state"], parts["batch"], np.int32(0))
    compiled = lowered.compile(compiler_options=opts)
    seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    if isinstance(mem, (list, tuple)):
        mem = mem[0]
    args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    return dict(model=preset, dtype=dtype, method=method, batch=batch, remat=bool(remat),
                chunks=chunks, devices=parts["mesh"].size, args=args, out=out, alias=alias,
                temp=temp, peak=args + out - alias + temp, compile_s=seconds)


def chunk_values(batch, n_devices, chunks, chunk_rows):
    """The ``embed_chunks`` of the rows to measure: 1, each ``--chunks`` K and each
    ``--chunk-rows`` R (K = per-device batch / R) that divides the per-device batch."""
    per_device = batch // n_devices
    ks = [1] + list(chunks) + [per_device // r for r in chunk_rows if r and per_device % r == 0]
    return sorted({k for k in ks if k >= 1 and per_device % k == 0})


def memory_table(models, batches, methods, dtypes, chunks, chunk_rows, with_remat):
    import jax
    n = jax.device_count()
    rows = []
    for preset in models:
        for dtype in dtypes:
            for method in methods:
                for batch in batches:
                    if batch % n:
                        print(f"skipped: batch {batch} on {n} devices", flush=True)
                        continue
                    for remat in (False, True) if with_remat else (False,):
                        for k in chunk_values(batch, n, chunks, chunk_rows):
                            r = memory_row(preset, dtype, method, batch, remat, k)
                            print(f"compiled: {preset} {dtype} {method} batch {batch} "
                                  f"remat {remat} chunks {k}: peak {r['peak'] / 2**30:.2f} GiB "
                                  f"per device ({r['compile_s']:.0f} s)", flush=True)
                            rows.append(r)
    return rows


def print_memory_table(rows, limit_gib=16.0):
    import jax
    dev = jax.devices()[0]
    print(f"\nXLA compiled memory per device ({len(jax.devices())} x {dev.platform} "
          f"{dev.device_kind}), GiB; peak = arguments + outputs - donated + temporaries")
    print("| model | dtype | loss | global batch | per device | remat | embed_chunks "
          "| rows per chunk | state+batch | temporaries | peak | fits 16 GiB |")
    print("| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    g = 2 ** 30
    for r in rows:
        per = r["batch"] // r["devices"]
        print(f"| {r['model']} | {r['dtype']} | {r['method']} | {r['batch']} | {per} "
              f"| {'yes' if r['remat'] else 'no'} | {r['chunks']} | {per // r['chunks']} "
              f"| {r['args'] / g:.2f} | {r['temp'] / g:.2f} | {r['peak'] / g:.2f} "
              f"| {'yes' if r['peak'] <= limit_gib * g else 'no'} |")


# --------------------------------------------------------------------------- breakdown

def breakdown(preset, dtype, method, batch, steps):
    """Milliseconds of the step's parts at the same batch and mesh, timed interleaved:
    the whole step, image tower fwd+bwd, text tower fwd+bwd (parameter gradients from a
    random cotangent), the loss fwd+bwd on (N, D) embeddings, the optimiser update."""
    import jax
    import jax.numpy as jnp

    from gmm_jax import train_state
    from gmm_jax.models import CLIP

    parts = build_step(preset, dtype, method, batch)
    state, data = materialise(parts)
    model, mesh, tx, objective = parts["model"], parts["mesh"], parts["tx"], parts["objective"]
    rows_sh = train_state.batch_sharding(mesh)
    epoch = np.int32(0)
    step = parts["step"].lower(state, data, epoch).compile()
    holder = {"state": state}

    def run_step():
        holder["state"], m = step(holder["state"], data, epoch)
        jax.block_until_ready(m["loss/total"])

    def tower(method_fn, x):
        def fwd_bwd(p, x, g):
            _, vjp = jax.vjp(lambda q: model.apply({"params": q}, x, method=method_fn), p)
            return vjp(g)[0]
        d = parts["mcfg"].embed_dim
        g = jax.device_put(jnp.ones((batch, d), jnp.float32) / batch, rows_sh)
        fn = jax.jit(fwd_bwd).lower(holder["state"].params, x, g).compile()
        return lambda: jax.block_until_ready(fn(holder["state"].params, x, g))

    d = parts["mcfg"].embed_dim
    key = jax.random.key(0)
    emb = [jax.device_put(jax.random.normal(k, (batch, d), jnp.float32), rows_sh)
           for k in jax.random.split(key, 2)]

    def loss_fn(img, txt):
        v, t = train_state.l2_normalize(img), train_state.l2_normalize(txt)
        return objective(v, t, 100.0, key, epoch)[0]
    loss = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1))).lower(*emb).compile()

    def update(params, opt_state):
        import optax
        updates, opt_state = tx.update(params, opt_state, params)  # params as "gradients"
        return optax.apply_updates(params, updates), opt_state
    upd = jax.jit(update).lower(holder["state"].params, holder["state"].opt_state).compile()
    runs = {
        "whole step": run_step,
        "image tower fwd+bwd": tower(CLIP.encode_image, data["image"]),
        "text tower fwd+bwd": tower(CLIP.encode_text, data["tokens"]),
        f"loss fwd+bwd ({method}, on embeddings)": lambda: jax.block_until_ready(loss(*emb)),
        "optimiser update": lambda: jax.block_until_ready(
            upd(holder["state"].params, holder["state"].opt_state)),
    }
    seconds = time_interleaved(list(runs.values()), steps)
    return {name: 1e3 * s for name, s in zip(runs, seconds)}


def print_breakdown(preset, dtype, method, batch, ms):
    whole = ms["whole step"]
    print(f"\nWhere the step's time goes: {preset} {dtype} {method}, global batch {batch}")
    print("| part | ms | % of the step |")
    print("| --- | ---: | ---: |")
    for name, x in ms.items():
        print(f"| {name} | {x:.1f} | {100 * x / whole:.0f}% |")
    rest = whole - sum(x for k, x in ms.items() if k != "whole step")
    print(f"| rest (step - parts: l2-normalisation, metrics, overlap) | {rest:.1f} "
          f"| {100 * rest / whole:.0f}% |")


def main(argv=None):
    args = _args(argv)
    if args.mesh_devices:
        loss_bench._force_devices(args.mesh_devices)  # before jax is imported
    import jax
    if args.mesh_devices and jax.device_count() != args.mesh_devices:
        raise SystemExit(f"--mesh-devices {args.mesh_devices}: jax sees {jax.device_count()} "
                         "devices (jax was imported before the flag could be set)")
    RUN_OPTIONS["attention"] = args.attention
    use_torch = not args.no_torch and not (args.memory or args.breakdown)
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
    print(f"attention kernel of the project's step: {args.attention}")
    print(f"command: python benchmarks/train_step.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}")
    if args.memory:
        rows = memory_table(args.models, args.batch, args.methods, args.dtypes, args.chunks,
                            args.chunk_rows, args.remat)
        print_memory_table(rows)
        return rows
    if args.breakdown:
        out = {}
        for preset in args.models:
            for dtype in args.dtypes:
                for batch in args.batch:
                    for method in args.methods:
                        ms = breakdown(preset, dtype, method, batch, args.steps)
                        print_breakdown(preset, dtype, method, batch, ms)
                        out[(preset, dtype, batch, method)] = ms
        return out
    rows, peak, src = step_table(args.models, args.batch, args.dtypes, args.methods,
                                 args.steps, use_torch, args.remat, tuple(args.chunks or [1]))
    print_step_table(rows, src)
    return rows


if __name__ == "__main__":
    main()
