"""Conv2d timings: the numba backend vs the numpy reference vs PyTorch (if installed).

    python benchmarks/bench_conv.py [--threads N] [--repeats R] [--quick] [--only I,J]

Times forward (with bias), backward-input and backward-weight in float32 on the shapes
below, every library at the same thread count (Numba, NumPy's OpenBLAS, torch). Each row
reports the median wall time of `repeats` calls and GFLOP/s (2*N*K*Ho*Wo*Cg*R*S flops,
for every pass). Warm-up calls come first; the first numba call of each pass (JIT compile
or cache load) is reported separately.

torch is timed in a child process. Importing torch loads its OpenMP runtime globally, and
Numba's OpenMP layer then binds to it, with torch's settings: its worker threads spin
after each parallel region, which (with OpenBLAS's threads on the same cores) made every
hand-over between Numba and BLAS cost a scheduler time slice (measured 3-7x slower
numba convolutions). The numba backend wants OMP_WAIT_POLICY=PASSIVE; torch runs best
with its default (PASSIVE costs it 0.3-0.6 ms a call here), so each gets its own process.
"""
import os

# Some machines set these for other tools; they can make OpenBLAS pick a slow kernel.
# They are read when NumPy loads OpenBLAS, so this must precede `import numpy`.
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import ctypes  # noqa: E402
import glob  # noqa: E402
import importlib.metadata  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (N, C, H, W), K, kernel, stride, padding
SHAPES = [
    ((64, 1, 28, 28), 32, 3, 1, 1),
    ((64, 32, 28, 28), 64, 3, 1, 1),
    ((64, 64, 14, 14), 64, 1, 1, 0),
    ((64, 64, 14, 14), 96, 3, 1, 1),
    ((64, 96, 7, 7), 128, 3, 1, 1),
    ((64, 128, 14, 14), 128, 3, 2, 1),
]
PASSES = ("forward", "backward_input", "backward_weight")


# --- NumPy's BLAS ------------------------------------------------------------------------

def _openblas():
    """A ctypes handle on the OpenBLAS bundled with NumPy's wheels, or None."""
    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            return ctypes.CDLL(path)
        except OSError:
            pass
    return None


def _openblas_call(stem, *args, restype=ctypes.c_int):
    lib = _openblas()
    for name in (f"scipy_{stem}64_", f"{stem}64_", stem):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn.restype = restype
            return fn(*args)
    return None


def blas_info():
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        name = f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict form
        name = "unknown BLAS"
    core = _openblas_call("openblas_get_corename", restype=ctypes.c_char_p)
    threads = _openblas_call("openblas_get_num_threads")
    if core is None:
        return name
    return f"{name}, kernel {core.decode()}, {threads} threads"


# --- timing ----------------------------------------------------------------------------

def _cpu_idle_fraction(dt=0.3):
    """Fraction of all cores' time spent idle over dt seconds (Linux; 1.0 elsewhere)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = sample()
        time.sleep(dt)
        i1, t1 = sample()
    except OSError:
        return 1.0
    return (i1 - i0) / max(1, t1 - t0)


def wait_until_idle(max_wait, threshold=0.9):
    """On a shared machine, wait (up to max_wait s) until other processes leave the cores
    alone: 2-thread timings are very sensitive to a third busy thread."""
    deadline = time.time() + max_wait
    while time.time() < deadline and _cpu_idle_fraction() < threshold:
        pass

def _problem(shape, seed=0):
    (N, C, H, W), K, k, s, p = shape
    rng = np.random.default_rng(seed)
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    w = rng.standard_normal((K, C, k, k), dtype=np.float32) * np.float32((C * k * k) ** -0.5)
    b = rng.standard_normal(K, dtype=np.float32)
    dy = rng.standard_normal((N, K, Ho, Wo), dtype=np.float32)
    return x, w, b, dy, 2.0 * N * K * Ho * Wo * C * k * k


def _calls(backend, x, w, b, dy, s, p):
    """{pass: zero-argument callable} for one backend on one problem."""
    if backend == "torch":
        import torch
        import torch.nn.functional as F
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        return {
            "forward": lambda: F.conv2d(tx, tw, tb, s, p),
            "backward_input": lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tdy, s, p),
            "backward_weight": lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tdy, s, p),
        }
    if backend == "numba":
        from kernels.cpu import conv2d as k
    else:
        from kernels.reference import conv2d as k
    geo = ((s, s), (p, p), (1, 1), 1)
    return {
        "forward": lambda: k.conv2d_forward(x, w, b, *geo),
        "backward_input": lambda: k.conv2d_backward_input(dy, w, x.shape, *geo),
        "backward_weight": lambda: k.conv2d_backward_weight(dy, x, w.shape, *geo),
    }


def _set_threads(backend, threads):
    if backend == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before Numba starts its pool
        import numba
        numba.set_num_threads(threads)
    _openblas_call("openblas_set_num_threads", ctypes.c_int(threads))


def time_backend(backend, shape_indices, threads, repeats, wait_idle=0.0):
    """Results for one backend, in this process."""
    _set_threads(backend, threads)
    results = []
    for si in shape_indices:
        wait_until_idle(wait_idle)
        (xs, K, k, s, p) = SHAPES[si]
        x, w, b, dy, flops = _problem(SHAPES[si])
        calls = _calls(backend, x, w, b, dy, s, p)
        for pas in PASSES:
            t0 = time.perf_counter()
            calls[pas]()  # JIT compile / cache load / allocator warm-up
            first = time.perf_counter() - t0
            calls[pas]()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                calls[pas]()
                times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            results.append(dict(
                shape=f"{xs}->{K} k{k} s{s} p{p}", shape_index=si, pass_=pas,
                backend=backend, threads=threads, seconds=med,
                min_seconds=float(np.min(times)), gflops=flops / med / 1e9,
                first_call_seconds=first))
    return results


def _time_in_child(backend, shape_indices, threads, repeats, wait_idle):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend,
           "--threads", str(threads), "--repeats", str(repeats), "--wait-idle", str(wait_idle),
           "--only", ",".join(map(str, shape_indices))]
    # torch's default OpenMP wait policy, and minidl's malloc settings: see child_env
    from benchmarks.kernels import child_env
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                         env=child_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(threads=None, repeats=7, quick=False, shapes=None, wait_idle=0.0):
    """Time every (shape, pass, backend): a list of dicts with keys shape, pass_, backend,
    threads, seconds (median), min_seconds, gflops, first_call_seconds.

    shapes: indices into SHAPES (default all). quick: at most 3 repeats and no numpy
    reference (a smoke test). wait_idle: before each shape, wait up to this many seconds
    for the machine to be idle.
    """
    threads = threads or os.cpu_count()
    shape_indices = list(range(len(SHAPES))) if shapes is None else list(shapes)
    if quick:
        repeats = min(repeats, 3)
    results = time_backend("numba", shape_indices, threads, repeats, wait_idle)
    if not quick:
        results += time_backend("numpy", shape_indices, threads, repeats, wait_idle)
    if importlib.util.find_spec("torch") is not None:
        results += _time_in_child("torch", shape_indices, threads, repeats, wait_idle)
    return results


def print_table(results):
    by = {(r["shape"], r["pass_"], r["backend"]): r for r in results}
    shapes = list(dict.fromkeys(r["shape"] for r in results))
    backends = list(dict.fromkeys(r["backend"] for r in results))
    has_torch = "torch" in backends
    head = f"{'shape':32s} {'pass':15s}" + "".join(f"{b + ' ms (GF/s)':>19s}" for b in backends)
    print(head + (f"{'torch/numba':>12s}" if has_torch else ""))
    for sh in shapes:
        for pas in PASSES:
            row = f"{sh:32s} {pas:15s}"
            for be in backends:
                r = by[(sh, pas, be)]
                row += f"{r['seconds'] * 1e3:11.2f} ({r['gflops']:4.0f})"
            if has_torch:
                ratio = by[(sh, pas, "torch")]["seconds"] / by[(sh, pas, "numba")]["seconds"]
                row += f"{ratio:12.2f}"
            print(row)
    first = [r["first_call_seconds"] for r in results if r["backend"] == "numba"]
    print(f"numba first calls (JIT compile or cache load; not in the table): "
          f"{first[0]:.2f}s for the first, {sum(first):.2f}s in all")
    if has_torch:
        print("torch/numba > 1: numba is faster.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated indices into SHAPES")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each shape, wait up to SECONDS for idle cores")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = None if args.only is None else [int(i) for i in args.only.split(",")]
    if args.worker:  # child process: print one JSON line
        print(json.dumps(time_backend(args.worker, shapes, args.threads, args.repeats,
                                      args.wait_idle)))
        return
    results = run(args.threads, args.repeats, args.quick, shapes, args.wait_idle)
    print(f"numpy {np.__version__} with {blas_info()}; {results[0]['threads']} threads "
          f"for every library")
    if importlib.util.find_spec("torch") is None:
        print("torch not installed: no comparison")
    else:
        print(f"torch {importlib.metadata.version('torch')} (timed in a child process)")
    print_table(results)


if __name__ == "__main__":
    main()
