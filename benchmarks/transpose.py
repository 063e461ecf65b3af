"""What an N x N transpose costs next to the products and elementwise passes around it.

The m2mix backward symmetrises the gradients of the Gram matrices, ``(G + G^T) @ x``;
on XLA:CPU that transpose is the largest cost after the products (BENCHMARKS.md §1).
This prints, for one N and D, each variant's best time and its ratio to one N x N x D
product, cases interleaved round-robin (the machine may be shared):

    python benchmarks/transpose.py                 # N = 4096, D = 512
    XLA_FLAGS=--xla_cpu_use_fusion_emitters=false python benchmarks/transpose.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def cases(n: int, d: int):
    """name -> (jitted fn, args)."""
    import jax
    import jax.numpy as jnp
    g = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    x = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
    return {
        "elementwise pass: 2 G + 1": (jax.jit(lambda g: 2 * g + 1), (g,)),
        "G + G^T": (jax.jit(lambda g: g + g.T), (g,)),
        "G @ x (one product)": (jax.jit(lambda g, x: g @ x), (g, x)),
        "G^T @ x (transposed operand)": (jax.jit(lambda g, x: jnp.einsum("mn,md->nd", g, x)),
                                         (g, x)),
        "(G + G^T) @ x": (jax.jit(lambda g, x: (g + g.T) @ x), (g, x)),
        "G @ x + G^T @ x": (jax.jit(lambda g, x: g @ x + jnp.einsum("mn,md->nd", g, x)), (g, x)),
    }


def measure(n: int, d: int, repeats: int) -> dict:
    import jax
    todo = cases(n, d)
    for fn, args in todo.values():
        jax.block_until_ready(fn(*args))  # compile
    best = {k: float("inf") for k in todo}
    for _ in range(repeats):
        for k, (fn, args) in todo.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    import jax
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cores; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("command: python benchmarks/transpose.py "
          f"{' '.join(sys.argv[1:] if argv is None else argv)}")
    best = measure(args.n, args.d, args.repeats)
    unit = best["G @ x (one product)"]
    print(f"\nN={args.n} D={args.d}, best of {args.repeats}")
    print("| case | ms | x one product |")
    print("| --- | ---: | ---: |")
    for k, s in best.items():
        print(f"| {k} | {1e3 * s:.1f} | {s / unit:.2f} |")
    return best


if __name__ == "__main__":
    main()
