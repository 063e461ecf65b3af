"""Forward+backward time and peak memory of the contrastive and mixup losses.

Compares, in one run on one device (the default JAX device; torch on CUDA when
it has one, else CPU):
  - jax   clip_loss alone,
  - jax   clip + m2mix recipe (``build_objective``: S shared) and the plain sum of the
          public ``clip_loss + c * m2mix_loss``,
  - jax   m3mix recipe,
  - torch eager restatement of the authors' code (``changdaeoh/multimodal-mixup``:
          slerp without guards, ``v @ slerp(v, t).T`` and ``t @ slerp(v, t).T``, dense
          ``I`` / ``1 - I`` masks, soft-target cross-entropy against ``torch.eye``), and
          ``torch.compile`` of it with ``--compile``,
  - one plain N x N x D matmul: the unit of work. "mm-eq" = time / matmul time,
  - the bare N x N x D products clip and clip + m2mix need forward + backward (3 and 7),
    without the loss arithmetic: the floor the recipes are measured against.

Timing: every case is compiled/warmed up, then the cases are run round-robin
``--repeats`` times and the best time is kept (the machine may be shared).
Memory: jax = XLA's compiled temp buffers (``memory_analysis()``, per device);
torch = ``max_memory_allocated`` on CUDA, peak RSS growth on CPU (sampled, rough).

``--mesh-devices K`` adds the per-device memory of the local (shard_map) objective
(``gmm_jax.distributed_loss.local_objective``) on a K-device mesh against the global
objective with the same sharded inputs; on a host with fewer than K devices it forces
K fake CPU devices (``--xla_force_host_platform_device_count``), which must happen
before jax is imported: run it as its own process.

    python benchmarks/loss.py                           # N=4096, D=512 (the CPU target)
    python benchmarks/loss.py --n 128 1024 4096 --d 512 768 --compile
    python benchmarks/loss.py --n 32768 --d 512 --methods clip m2mix   # GPU
    python benchmarks/loss.py --mesh-devices 8 --n 4096 16384 --no-time
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time

import numpy as np

# torch shares the accelerator: do not let XLA take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

SCALE = 100.0       # contrastive multiplier (fixed tau = 0.01, the reference's)
M2_SCALE = 1 / 0.07  # m2mix multiplier (reference default)
C_M2 = 0.01
LAM = 0.3           # fixed mixing coefficient for the timed sums and the torch code
MATMUL = "one N x N x D matmul"
# matmul-equivalents (N x N x D products) each formulation needs, forward + backward
MATMUL_COUNT = {"clip": 3, "m2mix": 7, "m2mix-authors": 9}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[4096], help="batch sizes (128..32768)")
    p.add_argument("--d", type=int, nargs="+", default=[512], help="embedding widths")
    p.add_argument("--methods", nargs="+", default=["clip", "m2mix", "m3mix"],
                   choices=["clip", "m2mix", "m3mix"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-time", action="store_true", help="skip the timing tables")
    p.add_argument("--mesh-devices", type=int, default=0,
                   help="K > 0: per-device memory of the local objective on a K-device mesh")
    p.add_argument("--max-gb", type=float, default=0.0,
                   help="skip sizes whose N x N fp32 buffers (x12) exceed this; 0 = device "
                        "memory on accelerators, 60%% of RAM on CPU")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- utils

def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident-set growth while the block runs (sampled every 1 ms)."""

    def __enter__(self):
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        self.growth = self.peak - self.base


def inputs(n, d, seed=0):
    """Unit-norm float32 ``(v, t)`` as NumPy arrays (the same for both frameworks)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((n, d)).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True),
            t / np.linalg.norm(t, axis=1, keepdims=True))


def _loss_cfg(method):
    import ml_collections
    return ml_collections.ConfigDict(dict(
        method=method, mix_schedule="constant", mix_form="reference", swap="none",
        c_m2=C_M2, m2_scale=M2_SCALE))


# ----------------------------------------------------------------------------- jax

def jax_fns(methods):
    """name -> (f(v, t) -> scalar, matmul count or None)."""
    import jax

    from gmm_jax import losses

    key = jax.random.key(0)

    def objective(method):
        obj = losses.build_objective(_loss_cfg(method))
        return lambda v, t: obj(v, t, SCALE, key, 0)[0]

    fns = {}
    if "clip" in methods:
        fns["jax clip_loss"] = (lambda v, t: losses.clip_loss(v, t, SCALE), MATMUL_COUNT["clip"])
    if "m2mix" in methods:
        fns["jax clip+m2mix (objective)"] = (objective("m2mix"), MATMUL_COUNT["m2mix"])
        fns["jax clip_loss + m2mix_loss"] = (
            lambda v, t: (losses.clip_loss(v, t, SCALE)
                          + C_M2 * losses.m2mix_loss(v, t, LAM, M2_SCALE)),
            MATMUL_COUNT["m2mix"])
    if "m3mix" in methods:
        fns["jax m3mix (objective)"] = (objective("m3mix"), None)
    return fns


def jax_cases(n, d, methods, seed=0):
    """name -> (run(), memory bytes or None, XLA flops or None, matmul count)."""
    import jax
    import jax.numpy as jnp

    vn, tn = inputs(n, d, seed)
    v, t = jnp.asarray(vn), jnp.asarray(tn)
    cases = {}
    for name, (fn, count) in jax_fns(methods).items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        compiled = step.lower(v, t).compile()
        cases[name] = (lambda c=compiled: jax.block_until_ready(c(v, t)),
                       _temp_bytes(compiled), _flops(compiled), count)
    mm = jax.jit(lambda a, b: a @ b.T).lower(v, t).compile()
    cases[f"jax {MATMUL}"] = (lambda: jax.block_until_ready(mm(v, t)), None, 2.0 * n * n * d, 1)
    for method, fn in products_only(methods).items():
        prog = jax.jit(fn).lower(v, t).compile()
        count = MATMUL_COUNT[method]
        cases[f"jax floor: {method}'s {count} products"] = (
            lambda c=prog: jax.block_until_ready(c(v, t)), None, _flops(prog), count)
    return cases


def products_only(methods):
    """The bare N x N x D products a formulation needs forward + backward, no loss
    arithmetic: what the recipe would cost if everything else were free (the floor)."""
    import jax.numpy as jnp

    def clip(v, t):  # S; dS @ t, dS^T @ v
        s = v @ t.T
        return s @ t, jnp.einsum("nm,nd->md", s, v)

    def m2mix(v, t):  # S, v v^T, t t^T; dS @ t + dGv @ v, dS^T @ v + dGt @ t
        s, gv, gt = v @ t.T, v @ v.T, t @ t.T
        return s @ t + gv @ v, jnp.einsum("nm,nd->md", s, v) + gt @ t

    out = {"clip": clip}
    if "m2mix" in methods:
        out["m2mix"] = m2mix
    return out


def _temp_bytes(compiled):
    mem = compiled.memory_analysis()
    return None if mem is None else getattr(mem, "temp_size_in_bytes", None)


def _flops(compiled):
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return None if not cost else cost.get("flops")


def jax_value(method, v, t, lam=LAM):
    """The jax ``clip`` / ``m2mix`` recipe value with a fixed ``lam`` (agreement check)."""
    import jax.numpy as jnp

    from gmm_jax import losses
    v, t = jnp.asarray(v), jnp.asarray(t)
    total = losses.clip_loss(v, t, SCALE)
    if method == "m2mix":
        total = total + C_M2 * losses.m2mix_loss(v, t, lam, M2_SCALE)
    return float(total)


# --------------------------------------------------------------------------- torch

def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_losses(lam=LAM):
    """``total(method) -> f(v, t)``: the authors' formulation restated (their ``loss.py``
    / ``main.py``), every mix term with the fixed coefficient ``lam``."""
    import torch
    from torch import nn

    def sph_inter(a, b, lam):  # no guard at theta = 0 or pi, as in the reference
        theta = torch.acos((a * b).sum(-1, keepdim=True))
        return (torch.sin(lam * theta) * a + torch.sin((1 - lam) * theta) * b) / torch.sin(theta)

    def cross_entropy(preds, targets):
        return (-targets * nn.functional.log_softmax(preds, dim=-1)).sum(1)

    def clip_loss(logits, targets):
        return ((cross_entropy(logits, targets) + cross_entropy(logits.T, targets.T)) / 2).mean()

    def clip_loss2(logits1, targets, logits2):
        return cross_entropy(logits1, targets).mean() + cross_entropy(logits2, targets).mean()

    def contrastive(v, t):
        eye = torch.eye(v.shape[0], device=v.device)
        return clip_loss(SCALE * (v @ t.T), eye)

    def m2mix(v, t):
        eye = torch.eye(v.shape[0], device=v.device)
        off = 1 - eye
        lpi = v @ t.T
        lpt = lpi.T
        neg = sph_inter(v, t, lam)
        lpi2 = lpi * eye + (v @ neg.T) * off
        lpt2 = lpt * eye + (t @ neg.T) * off
        return clip_loss2(M2_SCALE * lpi2, eye, M2_SCALE * lpt2)

    def mix(v, t, lam, which):
        eye = torch.eye(v.shape[0], device=v.device)
        flip = torch.flip(eye, dims=[0])
        if which == "v":
            return clip_loss(SCALE * (sph_inter(v, torch.flip(v, [0]), lam) @ t.T),
                             lam * eye + (1 - lam) * flip)
        if which == "l":
            return clip_loss(SCALE * (v @ sph_inter(t, torch.flip(t, [0]), lam).T),
                             lam * eye + (1 - lam) * flip)
        vm, tm = sph_inter(v, torch.flip(v, [0]), lam), sph_inter(t, torch.flip(t, [0]), lam)
        return clip_loss(SCALE * (vm @ tm.T), eye + flip)

    def total(method):
        if method == "clip":
            return contrastive
        if method == "m2mix":
            return lambda v, t: contrastive(v, t) + C_M2 * m2mix(v, t)
        return lambda v, t: (contrastive(v, t) + C_M2 * m2mix(v, t) + 0.05 * mix(v, t, lam, "v")
                             + 0.05 * mix(v, t, lam, "l") + 0.1 * mix(v, t, lam, "vl"))
    return total


def torch_value(method, v, t, lam=LAM):
    import torch
    dev = torch_device()
    return float(torch_losses(lam)(method)(torch.from_numpy(np.array(v)).to(dev),
                                        torch.from_numpy(np.array(t)).to(dev)))


def torch_cases(n, d, methods, compile_too, seed=0):
    import torch
    dev = torch_device()
    vn, tn = inputs(n, d, seed)
    v0, t0 = torch.from_numpy(vn).to(dev), torch.from_numpy(tn).to(dev)
    total = torch_losses()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def make(fn):
        def run():
            v = v0.clone().requires_grad_(True)
            t = t0.clone().requires_grad_(True)
            fn(v, t).backward()
            sync()
        return run

    names = {"clip": "torch eager clip (authors')", "m2mix": "torch eager clip+m2mix (authors')",
             "m3mix": "torch eager m3mix (authors')"}
    counts = {"clip": MATMUL_COUNT["clip"], "m2mix": MATMUL_COUNT["m2mix-authors"], "m3mix": None}
    cases = {}
    for m in methods:
        cases[names[m]] = (make(total(m)), None, None, counts[m])
    if compile_too:
        for m in methods:
            if m == "m3mix":
                continue
            try:
                run = make(torch.compile(total(m)))
                run()
                cases[names[m].replace("eager", "compile")] = (run, None, None, counts[m])
            except Exception as err:  # noqa: BLE001 - report and go on
                print(f"torch.compile({m}) failed: {type(err).__name__}: {str(err)[:200]}")
    return cases


# --------------------------------------------------------------------------- timing

def time_cases(cases, repeats):
    """Best-of-``repeats`` seconds per case, run round-robin after one warm-up each;
    torch peak memory measured during its warm-up."""
    peak = {}
    for name, (run, *_rest) in cases.items():
        peak[name] = _torch_peak(run) if name.startswith("torch") else None
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (run, *_rest) in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}, peak


def _torch_peak(run):
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        return torch.cuda.max_memory_allocated() - base
    with PeakRSS() as mem:
        run()
    return mem.growth


def _size_ok(n, max_gb):
    """Rough guard: the m3mix backward holds about a dozen N x N fp32 buffers."""
    return 12 * 4 * n * n <= max_gb * 2**30


def _default_max_gb():
    import jax
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return stats["bytes_limit"] / 2**30
    return 0.6 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def loss_table(n, d, methods, repeats=3, use_torch=True, compile_too=False):
    """One size: rows ``dict(case, ms, mm_eq, x_clip, x_ours, gflops, mem_mb)`` and
    the plain matmul's GFLOP/s."""
    cases = jax_cases(n, d, methods)
    if use_torch:
        cases.update(torch_cases(n, d, methods, compile_too))
    best, peak = time_cases(cases, repeats)
    unit = best[f"jax {MATMUL}"]
    clip = best.get("jax clip_loss")
    ours = best.get("jax clip+m2mix (objective)")
    rows = []
    for name, (_run, temp, flops, count) in cases.items():
        s = best[name]
        mem = temp if temp is not None else peak.get(name)
        nominal = None if count is None else count * 2.0 * n * n * d
        rows.append(dict(case=name, ms=1e3 * s, mm_eq=s / unit,
                         x_clip=None if clip is None else s / clip,
                         x_ours=None if ours is None else s / ours,
                         gflops=None if nominal is None else nominal / s / 1e9,
                         xla_gflops=None if flops is None else flops / s / 1e9,
                         mem_mb=None if mem is None else mem / 2**20))
    return rows, 2.0 * n * n * d / unit / 1e9


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_loss_table(n, d, rows, mm_gflops):
    print(f"\nN={n} D={d}: one N x N x D matmul = {2 * n * n * d / 1e9:.2f} GFLOP, "
          f"{mm_gflops:.1f} GFLOP/s here")
    print("| case | ms | mm-eq | x jax clip_loss | x jax clip+m2mix | nominal GFLOP/s "
          "| XLA-counted GFLOP/s | peak MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['case']} | {r['ms']:.1f} | {r['mm_eq']:.2f} | {_fmt(r['x_clip'], '.2f')} | "
              f"{_fmt(r['x_ours'], '.2f')} | {_fmt(r['gflops'], '.1f')} | "
              f"{_fmt(r['xla_gflops'], '.1f')} | {_fmt(r['mem_mb'], '.0f')} |")
    by = {r["case"]: r["ms"] for r in rows}
    floor = [by.get(f"jax floor: {m}'s {MATMUL_COUNT[m]} products") for m in ("clip", "m2mix")]
    if None not in floor and "jax clip+m2mix (objective)" in by and "jax clip_loss" in by:
        print("\nclip+m2mix / clip_loss: "
              f"{by['jax clip+m2mix (objective)'] / by['jax clip_loss']:.2f}x"
              f" (their bare products alone: {floor[1] / floor[0]:.2f}x)")
    eager = by.get("torch eager clip+m2mix (authors')")
    if eager and "jax clip+m2mix (objective)" in by:
        print("torch eager (authors') / jax clip+m2mix: "
              f"{eager / by['jax clip+m2mix (objective)']:.2f}x")


# ---------------------------------------------------------------------- local loss

def _force_devices(k):
    """Ask for k fake CPU devices if jax is not imported yet (no effect on GPU/TPU)."""
    if "jax" in sys.modules:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={k}".strip()


def local_memory_table(ns, d, k, methods):
    """Per-device XLA temp memory (fwd+bwd) of the global objective on one device, the
    global objective with inputs sharded over a k-device mesh, and the local objective."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from gmm_jax import losses
    from gmm_jax.distributed_loss import local_objective
    from gmm_jax.train_state import make_mesh

    devices = jax.devices()
    if len(devices) < k:
        devices = jax.devices("cpu")
    if len(devices) < k:
        raise SystemExit(f"--mesh-devices {k}: only {len(devices)} devices; run this "
                         "benchmark in a fresh process (the flag is set before jax imports)")
    mesh = make_mesh(("data",), (k,), devices[:k])
    sharded = NamedSharding(mesh, P("data"))
    key = jax.random.key(0)
    rows = []
    for method in [m for m in methods if m != "clip"] or ["clip"]:
        cfg = _loss_cfg(method)
        glob, loc = losses.build_objective(cfg), local_objective(cfg, mesh, ("data",))
        for n in ns:
            x = jax.ShapeDtypeStruct((n, d), jnp.float32)
            xs = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharded)

            def grad_of(obj):
                return jax.jit(jax.value_and_grad(lambda v, t: obj(v, t, SCALE, key, 0)[0],
                                                  argnums=(0, 1)))
            one = _temp_bytes(grad_of(glob).lower(x, x).compile())
            g_sh = _temp_bytes(grad_of(glob).lower(xs, xs).compile())
            l_sh = _temp_bytes(grad_of(loc).lower(xs, xs).compile())
            rows.append(dict(method=method, n=n, d=d, global_1=one, global_k=g_sh, local_k=l_sh))
    return rows


def print_local_table(rows, k, platform_name):
    print(f"\nPer-device XLA temp memory, fwd+bwd, {k}-device mesh ({platform_name}); "
          "MB (ratio to the global loss on one device)")
    print(f"| method | N | D | global, 1 device | global, inputs sharded x{k} "
          f"| local (shard_map) x{k} |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        base = r["global_1"]
        cell = lambda b, base=base: (  # noqa: E731
            "-" if b is None else f"{b / 2**20:.0f} ({b / base:.2f})")
        print(f"| {r['method']} | {r['n']} | {r['d']} | {base / 2**20:.0f} | "
              f"{cell(r['global_k'])} | {cell(r['local_k'])} |")


# --------------------------------------------------------------------------- main

def versions(use_torch=True):
    import jax
    out = f"jax {jax.__version__}"
    try:
        import flax
        out += f", flax {flax.__version__}"
    except ImportError:
        pass
    if use_torch:
        import torch
        out += f", torch {torch.__version__}"
    return out


def describe_device():
    import jax
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return (f"{dev.device_kind} ({jax.default_backend()}, {len(jax.devices())} devices); "
            f"host {cpu}, {os.cpu_count()} cores")


def main(argv=None):
    args = _args(argv)
    if args.mesh_devices:
        _force_devices(args.mesh_devices)
    import jax
    use_torch = not args.no_torch and not args.no_time
    if use_torch:
        import torch
        if torch_device().type == "cpu":
            torch.set_num_threads(os.cpu_count())
    print(f"device: {describe_device()}")
    print(versions(use_torch))
    print(f"command: python benchmarks/loss.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    max_gb = args.max_gb or _default_max_gb()
    result = {"loss": {}, "local": []}
    if not args.no_time:
        for n in args.n:
            if not _size_ok(n, max_gb):
                print(f"\nN={n}: skipped (N x N buffers exceed --max-gb {max_gb:.0f})")
                continue
            for d in args.d:
                rows, mm = loss_table(n, d, args.methods, args.repeats, use_torch, args.compile)
                print_loss_table(n, d, rows, mm)
                result["loss"][(n, d)] = (rows, mm)
    if args.mesh_devices:
        ns = [n for n in args.n if n % args.mesh_devices == 0]  # compile only: no buffers
        rows = local_memory_table(ns, args.d[0], args.mesh_devices, args.methods)
        print_local_table(rows, args.mesh_devices, jax.devices()[0].platform)
        result["local"] = rows
    return result


if __name__ == "__main__":
    main()
