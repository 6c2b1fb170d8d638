"""Batch-norm kernels: numba vs the NumPy reference vs PyTorch CPU, float32.

    python -m benchmarks.bench_batchnorm [--threads T] [--repeats R] [--quick] [--sweep]

Times the training forward, the training backward and the eval forward on the shapes of
the paper's experiments (conv feature maps and the MLP's (60, 100) hidden layer). GB/s
counts only the bytes the operation must move: forward reads x and writes y (2 arrays),
backward reads x and dy and writes dx (3 arrays); "%bw" relates that to the copy
bandwidth measured in the same run with `threads` threads of np.copyto, so 100% means
"as fast as copying the arrays it has to touch". Times are the best of `repeats` runs:
other processes share the cores, and the minimum is the least disturbed. torch runs in
a child process (importing it here would slow numba: see bench_conv.py).
"""
import os

# OpenBLAS tuning variables some environments set; they change nothing here but the
# benchmark should see the machine as a user would (only possible before numpy loads)
for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from kernels.cpu import batchnorm as nb_bn  # noqa: E402
from kernels.reference import batchnorm as np_bn  # noqa: E402

SHAPES = [(64, 64, 28, 28), (64, 128, 14, 14), (256, 96, 7, 7), (60, 100)]
EPS = 1e-5


def _best(fn, repeats, min_time=0.02):
    """Best time of `repeats` runs; each run repeats fn enough to last about min_time
    seconds, so that microsecond calls are not lost in the timer's resolution."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def copy_bandwidth(threads, nbytes=1 << 27, repeats=5):
    """GB/s (read + write) of np.copyto over nbytes, split across `threads` threads
    (np.copyto releases the GIL)."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts if p.size]

    def copy():
        workers = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    return 2 * src.nbytes / _best(copy, repeats, min_time=0) / 1e9


def _torch_cases(x, dy, gamma, beta, mean, var):
    """{layout: (train fwd, train bwd, eval fwd)} closures over torch's ATen kernels: the
    same work as ours, without autograd's bookkeeping."""
    import torch
    layouts = {"nchw": torch.contiguous_format}
    if x.ndim == 4:
        layouts["channels_last"] = torch.channels_last
    w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
    rm, rv = torch.from_numpy(mean.copy()), torch.from_numpy(var.copy())
    cases = {}
    for name, fmt in layouts.items():
        tx = torch.from_numpy(x).contiguous(memory_format=fmt)
        tdy = torch.from_numpy(dy).contiguous(memory_format=fmt)
        _, smean, sinvstd = torch.ops.aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)

        def fwd(tx=tx):
            return torch.ops.aten.native_batch_norm(tx, w, b, None, None, True, 0.1, EPS)

        def bwd(tx=tx, tdy=tdy, smean=smean, sinvstd=sinvstd):
            return torch.ops.aten.native_batch_norm_backward(
                tdy, tx, w, None, None, smean, sinvstd, True, EPS, [True, True, True])

        def evalf(tx=tx):
            return torch.ops.aten.native_batch_norm(tx, w, b, rm, rv, False, 0.1, EPS)

        cases[name] = (fwd, bwd, evalf)
    return cases


def _problems(quick):
    """(shape, x, dy, gamma, beta, mean, var) per shape, the same in the torch child."""
    rng = np.random.default_rng(0)
    for shape in SHAPES[1:] if quick else SHAPES:
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        C = shape[1]
        gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
        beta = rng.standard_normal(C, dtype=np.float32)
        _, mean, var = np_bn.batch_norm_train_forward(x, gamma, beta, EPS)
        yield shape, x, dy, gamma, beta, mean, var


def _row(shape, impl, threads, nbytes, fwd, bwd, evalf, repeats):
    t_fwd, t_bwd, t_eval = (_best(f, repeats) for f in (fwd, bwd, evalf))
    return dict(shape=tuple(shape), impl=impl, threads=threads, fwd_s=t_fwd, bwd_s=t_bwd,
                train_s=t_fwd + t_bwd, eval_s=t_eval,
                train_gbs=5 * nbytes / (t_fwd + t_bwd) / 1e9, eval_gbs=2 * nbytes / t_eval / 1e9)


def torch_worker(request):
    """torch's rows, in a child process (benchmarks.kernels.run_child)."""
    import torch
    torch.set_num_threads(request["threads"])
    rows = []
    for shape, x, dy, gamma, beta, mean, var in _problems(request["quick"]):
        for name, fns in _torch_cases(x, dy, gamma, beta, mean, var).items():
            rows.append(_row(shape, "torch_" + name, request["threads"], x.nbytes, *fns,
                             request["repeats"]))
    return rows


def run(threads=None, repeats=5, quick=False):
    """Rows of timings, one per (shape, implementation); see the module docstring."""
    threads = threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    copy_gbs = copy_bandwidth(threads, nbytes=(1 << 25) if quick else (1 << 27))
    rows = []
    for shape, x, dy, gamma, beta, mean, var in _problems(quick):
        for name, mod in (("numba", nb_bn), ("numpy", np_bn)):
            rows.append(_row(
                shape, name, threads, x.nbytes,
                lambda mod=mod: mod.batch_norm_train_forward(x, gamma, beta, EPS),
                lambda mod=mod: mod.batch_norm_train_backward(dy, x, gamma, mean, var, EPS),
                lambda mod=mod: mod.batch_norm_eval_forward(x, gamma, beta, mean, var, EPS),
                repeats))
    if importlib.util.find_spec("torch") is not None:
        from benchmarks.kernels import run_child
        torch_rows = run_child("benchmarks.bench_batchnorm",
                               dict(threads=threads, repeats=repeats, quick=quick))
        order = [shape for shape, *_ in _problems(quick)]
        rows = sorted(rows + [dict(r, shape=tuple(r["shape"])) for r in torch_rows],
                      key=lambda r: order.index(r["shape"]))  # stable: numba, numpy, torch
    for r in rows:
        torch_rows = [t for t in rows if t["shape"] == r["shape"] and t["impl"].startswith("torch")]
        best_torch = min(torch_rows, key=lambda t: t["train_s"]) if torch_rows else None
        r["copy_gbs"] = copy_gbs
        r["pct_bw"] = 100 * r["train_gbs"] / copy_gbs
        r["vs_torch"] = best_torch["train_s"] / r["train_s"] if best_torch else None
    return rows


SWEEP_SHAPES = [(60, 100), (250, 100), (1000, 100), (4000, 100),
                (8, 32, 16, 16), (16, 32, 16, 16), (32, 32, 16, 16), (64, 32, 16, 16)]


def threshold_sweep(threads=None, repeats=50):
    """Training forward + backward with the serial and the parallel kernels forced, on
    growing inputs: where parallel starts to win is nb_bn._SERIAL_BELOW."""
    threads = threads or numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    saved = nb_bn._SERIAL_BELOW
    lines = [f"{'shape':<18}{'elements':>10}{'serial us':>11}{'parallel us':>13}"]
    try:
        for shape in SWEEP_SHAPES:
            x = rng.standard_normal(shape, dtype=np.float32)
            dy = rng.standard_normal(shape, dtype=np.float32)
            g = np.ones(shape[1], np.float32)

            def step():
                _, mean, var = nb_bn.batch_norm_train_forward(x, g, g, EPS)
                nb_bn.batch_norm_train_backward(dy, x, g, mean, var, EPS)

            times = []
            for below in (1 << 62, 0):
                nb_bn._SERIAL_BELOW = below
                times.append(_best(step, repeats, min_time=0.002))
            lines.append(f"{str(shape):<18}{x.size:>10}"
                         f"{1e6 * times[0]:>11.1f}{1e6 * times[1]:>13.1f}")
    finally:
        nb_bn._SERIAL_BELOW = saved
    return "\n".join(lines)


def format_table(rows):
    head = (f"{'shape':<18}{'impl':<20}{'fwd ms':>9}{'bwd ms':>9}{'train ms':>10}{'GB/s':>7}"
            f"{'%bw':>6}{'eval ms':>9}{'GB/s':>7}{'torch/x':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        vs = f"{r['vs_torch']:.2f}" if r["vs_torch"] else "-"
        lines.append(
            f"{str(r['shape']):<18}{r['impl']:<20}{1e3 * r['fwd_s']:>9.3f}{1e3 * r['bwd_s']:>9.3f}"
            f"{1e3 * r['train_s']:>10.3f}{r['train_gbs']:>7.1f}{r['pct_bw']:>6.0f}"
            f"{1e3 * r['eval_s']:>9.3f}{r['eval_gbs']:>7.1f}{vs:>9}")
    lines.append(f"copy bandwidth ({rows[0]['threads']} threads of np.copyto): "
                 f"{rows[0]['copy_gbs']:.1f} GB/s; train = forward + backward; "
                 "torch/x = best torch train time / this train time")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sweep", action="store_true",
                    help="time serial vs parallel kernels on growing inputs instead")
    args = ap.parse_args()
    if args.sweep:
        print(threshold_sweep(args.threads))
    else:
        print(format_table(run(args.threads, args.repeats, args.quick)))
