"""Forward+backward time and peak memory of the contrastive and mixup losses.

Compares, in one run on one device:
  - jax  clip_loss alone,
  - jax  clip_loss + m2mix_loss (the recipe objective, S shared; and the plain sum
         of the two public functions, to show what sharing buys),
  - jax  m3mix recipe,
  - torch eager restatement of the authors' formulation (slerp then products
         with the mixture matrix), and torch.compile of it where it compiles,
  - one plain N x N x D matmul (the unit of work: GFLOP/s are reported against it).

    python benchmarks/loss.py                      # N=4096, D=512 (the CPU target)
    python benchmarks/loss.py --n 128 1024 4096 --d 512 768 --compile
"""
from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np


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


def _time(fn, repeats: int) -> float:
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


# ----------------------------------------------------------------------------- jax

def jax_cases(n, d, seed=0):
    import jax
    import jax.numpy as jnp
    import ml_collections

    from gmm_jax import losses

    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.standard_normal((n, d)).astype(np.float32)
    v = jnp.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))
    t = jnp.asarray(t / np.linalg.norm(t, axis=1, keepdims=True))
    key = jax.random.key(0)

    def objective(method):
        cfg = ml_collections.ConfigDict(dict(method=method, mix_schedule="constant", mix_form="reference",
                                             swap="none"))
        obj = losses.build_objective(cfg)
        return lambda v, t: obj(v, t, 100.0, key, 0)[0]

    fns = {
        "jax clip_loss": lambda v, t: losses.clip_loss(v, t, 100.0),
        "jax clip+m2mix (objective)": objective("m2mix"),
        "jax clip_loss + m2mix_loss (sum)": lambda v, t: losses.clip_loss(v, t, 100.0)
        + 0.01 * losses.m2mix_loss(v, t, 0.3, 1 / 0.07),
        "jax m3mix (objective)": objective("m3mix"),
    }
    cases = {}
    for name, fn in fns.items():
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
        compiled = step.lower(v, t).compile()
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
        cases[name] = (lambda step=step: jax.block_until_ready(step(v, t)), temp)
    matmul = jax.jit(lambda a, b: a @ b.T)
    cases["jax one N x N x D matmul"] = (lambda: jax.block_until_ready(matmul(v, t)), None)
    return cases


# --------------------------------------------------------------------------- torch

def torch_cases(n, d, compile_too: bool, seed=0):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    v0 = F.normalize(torch.randn(n, d), dim=1)
    t0 = F.normalize(torch.randn(n, d), dim=1)

    def slerp(a, b, lam):
        # The authors' form: no guard at theta = 0 or pi.
        theta = torch.acos((a * b).sum(-1, keepdim=True))
        return (torch.sin(lam * theta) * a + torch.sin((1 - lam) * theta) * b) / torch.sin(theta)

    def clip_loss(v, t, scale):
        logits = scale * v @ t.T
        labels = torch.arange(v.shape[0])
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    def m2mix_loss(v, t, lam, scale):
        m = slerp(v, t, lam)
        a, b = v @ m.T, t @ m.T
        pos = (v * t).sum(-1)
        eye = torch.eye(v.shape[0], dtype=torch.bool)
        a = torch.where(eye, pos[None, :], a)
        b = torch.where(eye, pos[None, :], b)
        labels = torch.arange(v.shape[0])
        return F.cross_entropy(scale * a, labels) + F.cross_entropy(scale * b, labels)

    def total(v, t):
        return clip_loss(v, t, 100.0) + 0.01 * m2mix_loss(v, t, 0.3, 1 / 0.07)

    def make(fn):
        def run():
            v = v0.clone().requires_grad_(True)
            t = t0.clone().requires_grad_(True)
            fn(v, t).backward()
        return run

    cases = {"torch eager clip_loss": (make(lambda v, t: clip_loss(v, t, 100.0)), None),
             "torch eager clip+m2mix (authors')": (make(total), None)}
    if compile_too:
        try:
            compiled = torch.compile(total)
            make(compiled)()
            cases["torch.compile clip+m2mix"] = (make(compiled), None)
        except Exception as err:  # noqa: BLE001 - report and go on
            print(f"torch.compile failed: {type(err).__name__}: {str(err)[:200]}")
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096])
    parser.add_argument("--d", type=int, nargs="+", default=[512])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    import jax
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")
    versions = f"jax {jax.__version__}"
    if not args.no_torch:
        import torch
        torch.set_num_threads(os.cpu_count())
        versions += f", torch {torch.__version__}"
    print(versions)
    for n in args.n:
        for d in args.d:
            cases = jax_cases(n, d)
            if not args.no_torch:
                cases.update(torch_cases(n, d, args.compile))
            rows = []
            for name, (fn, temp) in cases.items():
                with PeakRSS() as mem:
                    seconds = _time(fn, args.repeats)
                rows.append((name, seconds, temp, mem.growth))
            unit = dict((r[0], r[1]) for r in rows)["jax one N x N x D matmul"]
            clip = dict((r[0], r[1]) for r in rows)["jax clip_loss"]
            ours = dict((r[0], r[1]) for r in rows)["jax clip+m2mix (objective)"]
            gflop = 2 * n * n * d / 1e9
            print(f"\nN={n} D={d}  (one N x N x D matmul = {gflop:.1f} GFLOP, {gflop / unit:.1f} GFLOP/s here)")
            print(f"| case | ms | matmul-equivalents | x clip_loss | jax clip+m2mix speed-up | XLA temp MB | RSS growth MB |")
            print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
            for name, seconds, temp, growth in rows:
                temp_mb = f"{temp / 2**20:.0f}" if temp is not None else "-"
                print(f"| {name} | {1e3 * seconds:.1f} | {seconds / unit:.1f} | {seconds / clip:.2f} | "
                      f"{seconds / ours:.2f} | {temp_mb} | {growth / 2**20:.0f} |")


if __name__ == "__main__":
    main()
