"""Pooling kernels: numba (kernels.cpu) vs numpy (kernels.reference) vs torch, float32.

    python -m benchmarks.bench_pooling [--threads N] [--repeats R] [--quick]

Times forward and backward separately (median of `repeats` calls, after a warm-up call
that also absorbs JIT compilation/cache loading, reported as `first_call_s`). Torch is
timed at the kernel level (aten max_pool2d_with_indices / avg_pool2d and their
backward ops, no autograd overhead) with the same thread count. GB/s counts the bytes
the pass must move: forward reads x and writes y (and the int64 argmax for max);
backward reads dy (and argmax) and writes dx. torch runs in a child process (importing it
here would slow numba: see bench_conv.py).
"""
import argparse
import importlib.metadata
import importlib.util
import statistics
import time

import numba
import numpy as np

from kernels.cpu import pooling as cpu
from kernels.reference import pooling as ref

CASES = [  # (op, shape, kernel, stride, padding)
    ("max", (64, 64, 28, 28), 3, 2, 1),
    ("avg", (64, 64, 28, 28), 3, 2, 1),
    ("max", (64, 128, 14, 14), 2, 2, 0),
    ("avg", (64, 128, 14, 14), 2, 2, 0),
]
CEIL_MODE, COUNT_INCLUDE_PAD = False, True


def _time(fn, repeats):
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def _numpy_like_passes(mod, op, x, k, s, p):
    """(forward, backward) closures for a kernels.* module."""
    if op == "max":
        y, argmax = mod.max_pool2d_forward(x, k, s, p, CEIL_MODE)
        dy = np.ones_like(y)
        return (lambda: mod.max_pool2d_forward(x, k, s, p, CEIL_MODE),
                lambda: mod.max_pool2d_backward(dy, argmax, x.shape))
    args = (k, s, p, CEIL_MODE, COUNT_INCLUDE_PAD)
    dy = np.ones_like(mod.avg_pool2d_forward(x, *args))
    return (lambda: mod.avg_pool2d_forward(x, *args),
            lambda: mod.avg_pool2d_backward(dy, x.shape, *args))


def _torch_passes(op, x, k, s, p):
    import torch
    aten = torch.ops.aten
    xt = torch.from_numpy(x)
    if op == "max":
        y, idx = aten.max_pool2d_with_indices(xt, k, s, p, [1, 1], CEIL_MODE)
        dy = torch.ones_like(y)
        return (lambda: aten.max_pool2d_with_indices(xt, k, s, p, [1, 1], CEIL_MODE),
                lambda: aten.max_pool2d_with_indices_backward(dy, xt, k, s, p, [1, 1],
                                                              CEIL_MODE, idx))
    y = aten.avg_pool2d(xt, k, s, p, CEIL_MODE, COUNT_INCLUDE_PAD)
    dy = torch.ones_like(y)
    return (lambda: aten.avg_pool2d(xt, k, s, p, CEIL_MODE, COUNT_INCLUDE_PAD),
            lambda: aten.avg_pool2d_backward(dy, xt, k, s, p, CEIL_MODE, COUNT_INCLUDE_PAD,
                                             None))


def _bytes(op, x_shape, y_shape, itemsize):
    nx, ny = np.prod(x_shape), np.prod(y_shape)
    extra = ny * 8 if op == "max" else 0  # the int64 argmax: written forward, read backward
    return {"forward": (nx + ny) * itemsize + extra, "backward": (nx + ny) * itemsize + extra}


def _problems():
    """(op, shape, k, s, p, x, bytes per pass) per case, the same in the torch child."""
    rng = np.random.default_rng(0)
    for op, shape, k, s, p in CASES:
        x = rng.standard_normal(shape).astype(np.float32)
        Ho = ref.pool_output_size(shape[2], k, s, p, CEIL_MODE)
        Wo = ref.pool_output_size(shape[3], k, s, p, CEIL_MODE)
        yield op, shape, k, s, p, x, _bytes(op, shape, (*shape[:2], Ho, Wo), x.itemsize)


def _rows(impl, make, threads, repeats):
    rows = []
    for op, shape, k, s, p, x, nbytes in _problems():
        t0 = time.perf_counter()
        passes = make(op, x, (k, k), (s, s), (p, p))  # runs one forward: JIT/cache load here
        setup = time.perf_counter() - t0
        for name, fn in zip(("forward", "backward"), passes):
            # The reference is slow; fewer repeats keep the run short.
            reps = max(1, repeats // 3) if impl == "numpy" else repeats
            sec, first = _time(fn, reps)
            rows.append({"op": op, "shape": shape, "kernel": k, "stride": s,
                         "padding": p, "dtype": "float32", "pass": name, "impl": impl,
                         "threads": threads, "seconds": sec,
                         "gbps": float(nbytes[name]) / sec / 1e9,
                         "first_call_s": setup if name == "forward" else first})
    return rows


def torch_worker(request):
    """torch's rows, in a child process (benchmarks.kernels.run_child)."""
    import torch
    torch.set_num_threads(request["threads"])
    return _rows("torch", _torch_passes, request["threads"], request["repeats"])


def run(threads=None, repeats=10, quick=False):
    """One dict per (case, pass, impl): median seconds, GB/s, first-call seconds."""
    threads = threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    if quick:
        repeats = min(repeats, 3)
    rows = (_rows("numba", lambda *a: _numpy_like_passes(cpu, *a), threads, repeats)
            + _rows("numpy", lambda *a: _numpy_like_passes(ref, *a), threads, repeats))
    if importlib.util.find_spec("torch") is not None:
        from benchmarks.kernels import run_child
        rows += [dict(r, shape=tuple(r["shape"])) for r in
                 run_child("benchmarks.bench_pooling", dict(threads=threads, repeats=repeats))]
    case_index = {case: i for i, case in enumerate(CASES)}
    return sorted(rows, key=lambda r: case_index[(r["op"], r["shape"], r["kernel"], r["stride"],
                                                  r["padding"])])


def _print_table(rows):
    torch_s = {(r["op"], r["shape"], r["pass"]): r["seconds"] for r in rows if r["impl"] == "torch"}
    print(f"{'case':<30} {'pass':<9} {'impl':<6} {'ms':>8} {'GB/s':>6} {'vs torch':>9} {'1st call s':>10}")
    for r in rows:
        case = f"{r['op']} {r['shape']} k{r['kernel']} s{r['stride']} p{r['padding']}"
        t = torch_s.get((r["op"], r["shape"], r["pass"]))
        ratio = f"{t / r['seconds']:.2f}x" if t else "-"
        print(f"{case:<30} {r['pass']:<9} {r['impl']:<6} {r['seconds'] * 1e3:8.2f} "
              f"{r['gbps']:6.1f} {ratio:>9} {r['first_call_s']:10.3f}")
    print("vs torch: torch time / this time (> 1 means faster than torch)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch_version = (importlib.metadata.version("torch") if importlib.util.find_spec("torch")
                     else "not installed")
    print(f"numba {numba.__version__}, numpy {np.__version__}, torch {torch_version}, "
          f"threads {a.threads or numba.config.NUMBA_NUM_THREADS}")
    _print_table(run(a.threads, a.repeats, a.quick))
