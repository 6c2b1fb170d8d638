"""Per-op overhead of the tape on tiny tensors: N iterations of `a*b + c` and its
backward on (60, 100) arrays, minidl vs PyTorch CPU (if installed) vs raw NumPy.

    python -m benchmarks.overhead [--iters 10000]
"""
from __future__ import annotations

import argparse

from benchmarks.harness import clean_blas_env

clean_blas_env()

try:  # before minidl, so torch's OpenMP runtime keeps its own wait policy
    import torch  # noqa: F401
except ImportError:
    pass
import time  # noqa: E402

import numpy as np  # noqa: E402

import minidl as md  # noqa: E402


def run_minidl(iters, shape=(60, 100)):
    rng = np.random.default_rng(0)
    a, b, c = (md.tensor(rng.standard_normal(shape, dtype=np.float32), requires_grad=True)
               for _ in range(3))
    t0 = time.perf_counter()
    for _ in range(iters):
        (a * b + c).sum().backward()
    return time.perf_counter() - t0


def run_torch(iters, shape=(60, 100)):
    import torch
    torch.manual_seed(0)
    a, b, c = (torch.randn(shape, requires_grad=True) for _ in range(3))
    t0 = time.perf_counter()
    for _ in range(iters):
        (a * b + c).sum().backward()
    return time.perf_counter() - t0


def run_numpy(iters, shape=(60, 100)):
    """The same arithmetic by hand: the floor no framework can beat."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    ga, gb, gc = np.zeros_like(a), np.zeros_like(b), np.zeros_like(c)
    t0 = time.perf_counter()
    for _ in range(iters):
        (a * b + c).sum()
        g = np.ones_like(a)
        ga += g * b
        gb += g * a
        gc += g
    return time.perf_counter() - t0


def run(iters: int = 10000) -> list[dict]:
    rows = []
    for name, fn in (("numpy (by hand)", run_numpy), ("minidl", run_minidl),
                     ("torch", run_torch)):
        try:
            fn(min(iters, 200))  # warm-up
            seconds = fn(iters)
        except ImportError:
            continue
        rows.append({"impl": name, "iters": iters, "seconds": seconds,
                     "us_per_iter": 1e6 * seconds / iters})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=10000)
    args = parser.parse_args(argv)
    rows = run(args.iters)
    ref = {r["impl"]: r["us_per_iter"] for r in rows}
    print(f"{args.iters} x ((a*b + c).sum().backward()) on (60, 100) float32")
    print(f"{'impl':<18}{'us/iter':>10}{'vs torch':>10}")
    for r in rows:
        ratio = r["us_per_iter"] / ref["torch"] if "torch" in ref else float("nan")
        print(f"{r['impl']:<18}{r['us_per_iter']:>10.1f}{ratio:>10.2f}")


if __name__ == "__main__":
    main()
