"""Kernel timings on one harness: conv2d, batch norm, pooling and matmul, float32, for
the numba backend, the numpy reference and PyTorch (if installed).

    python -m benchmarks.kernels [--threads N] [--quick] [--only conv2d,batch_norm]
                                 [--json FILE] [--markdown FILE]

prints one table (the kernels suite of `minidl bench`): median time of each backend,
numba's achieved GFLOP/s (conv2d, matmul) or GB/s (batch norm, pooling) as a fraction of
the machine limit measured in the same run, and torch time / numba time (> 1: numba is
faster).

How each number is taken (`measure`): one first call, timed separately (Numba JIT
compile or cache load), one warm-up call, then `repeats` samples; a sample repeats the
call enough times to last `min_sample` seconds so microsecond kernels are not lost in
the timer's resolution. Median and spread (min, max, quartiles) are over the samples.

PyTorch at its best, not a straw man: torch is timed in NCHW and in channels_last
(4-D inputs), at 1 thread and at N threads, and its fastest configuration is kept per
row (the JSON records which won and all the others). It runs in a child process: with
torch imported, Numba's OpenMP layer binds to torch's runtime and numba slows 3-7x
(see bench_conv.py), and the child runs with torch's default OMP_WAIT_POLICY instead of
the PASSIVE that minidl sets for Numba, and with minidl's malloc settings (see
`child_env`).
"""
from __future__ import annotations

from benchmarks.common import clean_blas_env

clean_blas_env()  # before NumPy loads OpenBLAS

import argparse  # noqa: E402
import ctypes  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

# No numba, `kernels` or torch at module level: the torch child imports this module, and
# the numba parent must never import torch.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("conv2d", "batch_norm", "pooling", "matmul")
EPS = 1e-5

# The MLP's hidden layers at batch 60 and 256 join the conv feature maps of bench_batchnorm.
BN_EXTRA_SHAPES = [(256, 100)]
MATMUL_SHAPES = [(60, 784, 100), (256, 784, 100)]  # (N, in, out): x (N, in) @ w (in, out)

# --quick: tiny versions of every family, to check the harness, not the machine.
QUICK_CONV = [((2, 1, 8, 8), 4, 3, 1, 1), ((2, 4, 8, 8), 6, 3, 2, 1), ((2, 4, 6, 6), 4, 1, 1, 0)]
QUICK_BN = [(2, 3, 5, 5), (6, 5)]
QUICK_POOL = [("max", (2, 3, 9, 9), 3, 2, 1), ("avg", (2, 3, 8, 8), 2, 2, 0)]
QUICK_MATMUL = [(4, 32, 8)]

MODES = {  # (repeats, min_sample seconds, time budget per row and backend in seconds)
    "full": (7, 0.01, 2.0),
    "quick": (3, 0.0005, 0.05),
}


@dataclass
class Case:
    """One row of the table: a kernel pass on one problem."""
    kernel: str                  # family: conv2d, batch_norm, pooling, matmul
    case: str                    # the problem, for people
    pass_: str                   # forward, backward, backward_input, backward_weight
    bound: str                   # "compute" (judged against the FMA peak) or "memory" (copy)
    work: float                  # flops (compute) or bytes that must move (memory) per call
    layouts: tuple               # torch memory formats worth trying
    make: Callable               # make(backend, layout) -> zero-argument callable
    backends: tuple = ("numba", "numpy")
    minidl_impl: str = "numba"   # what minidl runs for this op

    @property
    def unit(self):
        return "GFLOP/s" if self.bound == "compute" else "GB/s"


# --- problems: plain NumPy data, identical in the parent and in the torch child ---------

def _rng(*key):
    """A generator seeded by the problem itself, so the torch child gets the same data
    (Python's str hash is salted per process: no hash())."""
    return np.random.default_rng([_num(k) for k in key])


def _num(v):
    """A seed component from a shape entry (ints, tuples of ints, op names)."""
    if isinstance(v, str):
        return sum(map(ord, v))
    if isinstance(v, tuple):
        return sum((i + 1) * _num(e) for i, e in enumerate(v))
    return int(v)


def _kernels(backend):
    if backend == "numba":
        import kernels.cpu as k
    else:
        import kernels.reference as k
    return k


def _torch_layout(layout):
    import torch
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def _to_torch(layout, *arrays):
    import torch
    fmt = _torch_layout(layout)
    return [torch.from_numpy(a).contiguous(memory_format=fmt) if a.ndim == 4
            else torch.from_numpy(a) for a in arrays]


# --- conv2d -----------------------------------------------------------------------------

def _conv_call(shape, pas, backend, layout):
    from benchmarks.bench_conv import _problem
    (_, _, _, _), _, _, s, p = shape
    x, w, b, dy, _ = _problem(shape)
    if backend == "torch":
        import torch
        import torch.nn.functional as F
        tx, tw, tb, tdy = _to_torch(layout, x, w, b, dy)
        aten = torch.ops.aten
        conv_bwd = functools.partial(aten.convolution_backward, tdy, tx, tw, None, [s, s],
                                     [p, p], [1, 1], False, [0, 0], 1)
        return {"forward": lambda: F.conv2d(tx, tw, tb, s, p),
                "backward_input": lambda: conv_bwd([True, False, False]),
                "backward_weight": lambda: conv_bwd([False, True, False])}[pas]
    if backend == "numba_nhwc":  # the channels-last entry points, on NHWC arrays
        from kernels.cpu import conv2d_nhwc as nh
        xh, dyh = (np.ascontiguousarray(a.transpose(0, 2, 3, 1)) for a in (x, dy))
        geo = ((s, s), (p, p), (1, 1))
        return {"forward": lambda: nh.conv2d_forward_nhwc(xh, w, b, *geo),
                "backward_input": lambda: nh.conv2d_backward_input_nhwc(dyh, w, xh.shape,
                                                                        *geo),
                "backward_weight": lambda: nh.conv2d_backward_weight_nhwc(dyh, xh, w.shape,
                                                                          *geo)}[pas]
    if backend == "numba_old":  # the routes before conv2d_nhwc.py
        return _old_route(_conv_call(shape, pas, "numba", layout))
    k = _kernels(backend)
    geo = ((s, s), (p, p), (1, 1), 1)
    return {"forward": lambda: k.conv2d_forward(x, w, b, *geo),
            "backward_input": lambda: k.conv2d_backward_input(dy, w, x.shape, *geo),
            "backward_weight": lambda: k.conv2d_backward_weight(dy, x, w.shape, *geo)}[pas]


def _old_route(fn):
    """fn run with kernels/cpu/conv2d.py's channels-last routes switched off."""
    from kernels.cpu import conv2d as cpu

    def call():
        saved, cpu._NHWC = cpu._NHWC, False
        try:
            return fn()
        finally:
            cpu._NHWC = saved
    return call


CONV_BACKENDS = ("numba", "numba_old", "numba_nhwc", "numpy")


def _conv_cases(quick):
    from benchmarks.bench_conv import PASSES, SHAPES
    for shape in QUICK_CONV if quick else SHAPES:
        (N, C, H, W), K, k, s, p = shape
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        flops = 2.0 * N * K * Ho * Wo * C * k * k
        for pas in PASSES:
            if pas == "backward_input" and C == 1:
                continue  # a first layer needs no input gradient, in either framework
            yield Case("conv2d", f"{(N, C, H, W)}->{K} k{k} s{s} p{p}", pas, "compute", flops,
                       ("nchw", "channels_last"), functools.partial(_conv_call, shape, pas),
                       backends=CONV_BACKENDS)


# --- batch norm (training mode: the pass a training step runs) --------------------------

def _bn_problem(shape):
    rng = _rng("bn", shape)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    C = shape[1]
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C, dtype=np.float32)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = x.mean(axis=axes, dtype=np.float64).astype(np.float32)
    var = x.var(axis=axes, dtype=np.float64).astype(np.float32)
    return x, dy, gamma, beta, mean, var


def _bn_call(shape, pas, backend, layout):
    x, dy, gamma, beta, mean, var = _bn_problem(shape)
    if backend == "torch":
        import torch
        aten = torch.ops.aten
        tx, tdy = _to_torch(layout, x, dy)
        w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
        _, smean, sinvstd = aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)
        if pas == "forward":
            return lambda: aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)
        return lambda: aten.native_batch_norm_backward(tdy, tx, w, None, None, smean, sinvstd,
                                                       True, EPS, [True, True, True])
    k = _kernels(backend)
    if pas == "forward":
        return lambda: k.batch_norm_train_forward(x, gamma, beta, EPS)
    return lambda: k.batch_norm_train_backward(dy, x, gamma, mean, var, EPS)


def _bn_cases(quick):
    from benchmarks.bench_batchnorm import SHAPES
    for shape in QUICK_BN if quick else list(SHAPES) + BN_EXTRA_SHAPES:
        nbytes = 4 * int(np.prod(shape))
        layouts = ("nchw", "channels_last") if len(shape) == 4 else ("nchw",)
        kind = "2d" if len(shape) == 4 else "1d"
        # forward reads x, writes y; backward reads x and dy, writes dx
        for pas, arrays in (("forward", 2), ("backward", 3)):
            yield Case("batch_norm", f"{kind} {shape}", pas, "memory", arrays * nbytes, layouts,
                       functools.partial(_bn_call, shape, pas))


# --- pooling ----------------------------------------------------------------------------

def _pool_call(op, shape, k, s, p, pas, backend, layout):
    x = _rng("pool", op, shape).standard_normal(shape, dtype=np.float32)
    k2, s2, p2 = (k, k), (s, s), (p, p)
    if backend == "torch":
        import torch
        aten = torch.ops.aten
        (tx,) = _to_torch(layout, x)
        if op == "max":
            y, idx = aten.max_pool2d_with_indices(tx, k2, s2, p2, [1, 1], False)
            dy = torch.ones_like(y)
            fwd = lambda: aten.max_pool2d_with_indices(tx, k2, s2, p2, [1, 1], False)  # noqa: E731
            bwd = lambda: aten.max_pool2d_with_indices_backward(  # noqa: E731
                dy, tx, k2, s2, p2, [1, 1], False, idx)
        else:
            dy = torch.ones_like(aten.avg_pool2d(tx, k2, s2, p2, False, True))
            fwd = lambda: aten.avg_pool2d(tx, k2, s2, p2, False, True)  # noqa: E731
            bwd = lambda: aten.avg_pool2d_backward(dy, tx, k2, s2, p2, False, True,  # noqa: E731
                                                   None)
        return fwd if pas == "forward" else bwd
    m = _kernels(backend)
    if op == "max":
        y, argmax = m.max_pool2d_forward(x, k2, s2, p2, False)
        dy = np.ones_like(y)
        fwd = lambda: m.max_pool2d_forward(x, k2, s2, p2, False)  # noqa: E731
        bwd = lambda: m.max_pool2d_backward(dy, argmax, x.shape)  # noqa: E731
    else:
        args = (k2, s2, p2, False, True)
        dy = np.ones_like(m.avg_pool2d_forward(x, *args))
        fwd = lambda: m.avg_pool2d_forward(x, *args)  # noqa: E731
        bwd = lambda: m.avg_pool2d_backward(dy, x.shape, *args)  # noqa: E731
    return fwd if pas == "forward" else bwd


def _pool_cases(quick):
    from benchmarks.bench_pooling import CASES
    for op, shape, k, s, p in QUICK_POOL if quick else CASES:
        N, C, H, W = shape
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        nx, ny = N * C * H * W, N * C * Ho * Wo
        # x and y (forward), dy and dx (backward), plus the int64 argmax of max pooling
        nbytes = 4 * (nx + ny) + (8 * ny if op == "max" else 0)
        for pas in ("forward", "backward"):
            yield Case("pooling", f"{op} {shape} k{k} s{s} p{p}", pas, "memory", nbytes,
                       ("nchw", "channels_last"),
                       functools.partial(_pool_call, op, shape, k, s, p, pas))


# --- matmul (minidl's is NumPy's: one backend column) -------------------------------------

def _matmul_call(shape, pas, backend, layout):
    N, n_in, n_out = shape
    rng = _rng("mm", shape)
    x = rng.standard_normal((N, n_in), dtype=np.float32)
    w = rng.standard_normal((n_in, n_out), dtype=np.float32)
    dy = rng.standard_normal((N, n_out), dtype=np.float32)
    if backend == "torch":
        import torch
        x, w, dy = map(torch.from_numpy, (x, w, dy))
        mm = torch.mm
    else:
        mm = np.matmul
    # the three GEMMs of a linear layer; transposes are views in both libraries
    return {"forward": lambda: mm(x, w),
            "backward_input": lambda: mm(dy, w.T),
            "backward_weight": lambda: mm(x.T, dy)}[pas]


def _matmul_cases(quick):
    for shape in QUICK_MATMUL if quick else MATMUL_SHAPES:
        N, n_in, n_out = shape
        for pas in ("forward", "backward_input", "backward_weight"):
            yield Case("matmul", f"({N}, {n_in}) @ ({n_in}, {n_out})", pas, "compute",
                       2.0 * N * n_in * n_out, ("nchw",),
                       functools.partial(_matmul_call, shape, pas),
                       backends=("numba",), minidl_impl="NumPy BLAS")


def cases(quick=False, families=FAMILIES) -> list[Case]:
    """Every row, in table order; the same list in the parent and the torch child."""
    makers = {"conv2d": _conv_cases, "batch_norm": _bn_cases, "pooling": _pool_cases,
              "matmul": _matmul_cases}
    return [c for f in FAMILIES if f in families for c in makers[f](quick)]


# --- timing -----------------------------------------------------------------------------

def measure(fn, repeats=7, min_sample=0.01, budget=2.0) -> dict:
    """Seconds per call of fn(): first call apart, then median and spread of `repeats`
    samples (at least 3; fewer than `repeats` if they exceed `budget` seconds)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()  # warm-up, and a guess at the cost of one call
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_sample / once))
    samples = []
    deadline = time.perf_counter() + budget
    while len(samples) < repeats and (len(samples) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return {"median_s": float(median), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(min(samples)), "max_s": float(max(samples)),
            "samples": len(samples), "calls_per_sample": inner, "first_call_s": first}


def set_threads(threads):
    """Numba's and NumPy's BLAS threads (the torch child sets its own)."""
    import numba

    from benchmarks.bench_conv import _openblas_call
    numba.set_num_threads(threads)
    _openblas_call("openblas_set_num_threads", ctypes.c_int(threads))


# OpenBLAS's worker threads spin for 2^28 cycles (~70 ms at 3.7 GHz) after each
# multithreaded call before they sleep, and while they spin a parallel Numba kernel on
# the same cores runs up to 2x slower (measured). Whatever ran before (the numpy
# reference's matrix products) must not tax the kernel timed next: wait that out.
BLAS_SPIN_S = 0.12


def time_local(case_list, mode="full", progress=None) -> list[dict]:
    """numba and numpy timings of every case, in this process."""
    repeats, min_sample, budget = MODES[mode]
    out = []
    for i, case in enumerate(case_list):
        if progress:
            progress(f"[{i + 1}/{len(case_list)}] {case.kernel} {case.case} {case.pass_}")
        res = {}
        for backend in case.backends:
            if mode == "full":
                time.sleep(BLAS_SPIN_S)
            # the reference is slow and only a yardstick: half the budget
            b = budget / 2 if backend == "numpy" else budget
            res[backend] = measure(case.make(backend, "nchw"), repeats, min_sample, b)
        out.append(res)
    return out


def torch_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def child_env() -> dict:
    """The environment of a torch child: the repo importable, torch's own default OpenMP
    wait policy (minidl sets PASSIVE for Numba, which costs torch per call), and the
    malloc thresholds minidl sets for itself (minidl/_malloc.py). Without them glibc
    hands large freed blocks back to the OS and every call page-faults its output back
    in: measured 3.4 ms instead of 0.46 ms for torch's first conv layer (a 6 MB output),
    switching between the two from run to run. The variables are glibc's equivalent of
    minidl's mallopt calls, read when the child starts."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if os.environ.get("MINIDL_MALLOC_TUNING", "1") != "0":
        from minidl import _malloc
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(_malloc.MMAP_THRESHOLD))
        env.setdefault("MALLOC_TRIM_THRESHOLD_", str(_malloc.TRIM_THRESHOLD))
    return env


# torch first: its OpenMP runtime must load before the module could import `kernels`
# (which sets OMP_WAIT_POLICY for Numba).
_CHILD = ("import json, sys; import torch; import {module} as m; "
          "print(json.dumps(m.torch_worker(json.loads(sys.stdin.read()))))")


def run_child(module, request, timeout=None):
    """`module.torch_worker(request)` in a fresh process; request and answer as JSON."""
    out = subprocess.run([sys.executable, "-c", _CHILD.format(module=module)],
                         input=json.dumps(request), capture_output=True, text=True,
                         env=child_env(), cwd=ROOT, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{module} torch worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_worker(request) -> list[dict]:
    """In the torch child: every case in every (layout, threads) configuration."""
    import torch
    repeats, min_sample, budget = MODES[request["mode"]]
    case_list = cases(request["quick"], request["families"])
    results = [{} for _ in case_list]
    for threads in request["torch_threads"]:
        torch.set_num_threads(threads)
        for res, case in zip(results, case_list):
            for layout in case.layouts:
                config = f"{threads} thread{'s' if threads > 1 else ''}"
                if len(case.layouts) > 1:
                    config = f"{layout}, {config}"
                res[config] = measure(case.make("torch", layout), repeats, min_sample, budget)
    return results


def run(threads=None, quick=False, families=FAMILIES, use_torch=True, progress=None):
    """Rows (dicts) of the kernels table, without rates: see `annotate`."""
    import numba
    threads = threads or numba.config.NUMBA_NUM_THREADS
    set_threads(threads)
    mode = "quick" if quick else "full"
    case_list = cases(quick, families)
    local = time_local(case_list, mode, progress)
    torch_res = [None] * len(case_list)
    torch_error = None
    if use_torch and torch_available():
        if progress:
            progress("torch (child process)")
        try:
            torch_res = run_child("benchmarks.kernels", {
                "mode": mode, "quick": quick, "families": list(families),
                "torch_threads": sorted({1, threads})})
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            torch_error = str(e)
    rows = []
    for case, loc, tor in zip(case_list, local, torch_res):
        row = {"kernel": case.kernel, "case": case.case, "pass": case.pass_, "dtype": "float32",
               "bound": case.bound, "unit": case.unit, "work": case.work,
               "minidl_impl": case.minidl_impl, "threads": threads,
               "numba": loc["numba"], "numpy": loc.get("numpy"), "torch": None,
               "torch_configs": None}
        for extra in ("numba_old", "numba_nhwc"):  # conv2d: old routes, NHWC entry points
            if extra in loc:
                row[extra] = loc[extra]
        if tor:
            best = min(tor, key=lambda c: tor[c]["median_s"])
            row["torch"] = dict(tor[best], config=best)
            row["torch_configs"] = {c: t["median_s"] for c, t in tor.items()}
        elif torch_error:
            row["torch_error"] = torch_error[-500:]
        rows.append(row)
    return rows


def annotate(rows, limits):
    """Add numba's achieved rate, its fraction of the machine limit and the ratios."""
    for r in rows:
        t = r["numba"]["median_s"]
        r["rate"] = r["work"] / t / 1e9
        compute = limits.get("fma_peak_gflops") or limits["gemm_gflops"]
        r["limit"] = compute if r["bound"] == "compute" else limits["copy_gbs"]
        r["fraction_of_limit"] = r["rate"] / r["limit"]
        r["torch_over_numba"] = r["torch"]["median_s"] / t if r["torch"] else None
        for extra in ("numba_old", "numba_nhwc"):
            if r.get(extra) and r["torch"]:
                r[f"torch_over_{extra}"] = r["torch"]["median_s"] / r[extra]["median_s"]
        r["numpy_over_numba"] = r["numpy"]["median_s"] / t if r["numpy"] else None
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="tiny shapes: checks the harness")
    ap.add_argument("--only", default=",".join(FAMILIES),
                    help=f"comma-separated families among {', '.join(FAMILIES)}")
    ap.add_argument("--json", default=None, metavar="FILE")
    ap.add_argument("--markdown", default=None, metavar="FILE")
    args = ap.parse_args(argv)
    from benchmarks import suite
    families = tuple(f.strip() for f in args.only.split(",") if f.strip())
    unknown = set(families) - set(FAMILIES)
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; choose among {', '.join(FAMILIES)}")
    return suite.main_with(suite="kernels", threads=args.threads, quick=args.quick,
                           json_path=args.json, markdown_path=args.markdown, families=families)


if __name__ == "__main__":
    sys.exit(main())
