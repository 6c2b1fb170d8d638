"""The benchmark suite behind `minidl bench`: one run measures the machine's limits, the
kernels and/or the training steps, and reports them as JSON and Markdown.

    python -m benchmarks.suite [--suite kernels|train|all] [--threads N] [--quick]
                               [--json FILE] [--markdown FILE]

Suites:
  kernels  machine limits (FMA peak and GEMM GFLOP/s, copy/triad GB/s), every kernel against NumPy and
           PyTorch (benchmarks/kernels.py), and the cold/warm JIT time of all kernels
           (benchmarks/compile_time.py; not with --quick)
  train    full training steps against PyTorch (benchmarks/train_step.py) and the cold
           (empty Numba cache) and warm start of `minidl train` (not with --quick)
  all      both

--quick runs tiny shapes with few repeats: it checks that the harness works, in seconds;
its numbers say little about the machine.
"""
from __future__ import annotations

from benchmarks.common import clean_blas_env

REMOVED_ENV = clean_blas_env()  # before NumPy loads OpenBLAS (if it has not yet)

import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchmarks import kernels as kbench  # noqa: E402

SUITES = ("kernels", "train", "all")
STARTUP_ARGS = ["train", "--bn", "--dataset", "fashion-mnist", "--steps", "1", "--eval-every",
                "1", "--no-progress"]


def log(msg):
    """Progress on stderr: stdout carries the report."""
    print(msg, file=sys.stderr, flush=True)


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(threads):
    """Who ran this: hardware, libraries, threads and the settings that change timings.
    torch's version comes from its metadata: this process must never import torch."""
    import numba
    import numpy as np

    import minidl
    from benchmarks.bench_conv import blas_info
    from minidl import _malloc
    from minidl.info import threading_layer
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
        "platform": platform.platform(),
        "blas": blas_info(), "numba_threading_layer": threading_layer(),
        "threads": threads,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "numba": numba.__version__, "scipy": _version("scipy"),
                     "minidl": minidl.__version__, "torch": _version("torch")},
        "env": {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"),
                "removed_for_this_run": REMOVED_ENV,
                "torch_children": {k: v for k, v in kbench.child_env().items()
                                   if k.startswith(("OMP_", "MALLOC_"))}},
        "malloc_tuning": _malloc.status,
    }


def startup_times(threads, warm_runs=3, command=None):
    """Wall time of a whole `minidl train` process: cold (an empty NUMBA_CACHE_DIR, so
    every kernel it needs is JIT-compiled) and warm (the same cache, now on disk)."""
    root = kbench.ROOT
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(tmp, "numba_cache"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        walls = []
        for i in range(1 + warm_runs):
            cmd = command or [sys.executable, "-m", "minidl.cli", *STARTUP_ARGS, "--threads",
                              str(threads), "--out", os.path.join(tmp, f"run{i}")]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - t0)
            if res.returncode != 0:
                return {"error": (res.stderr or res.stdout)[-1000:], "command": cmd}
    warm = sorted(walls[1:])
    shown = (f"minidl {' '.join(STARTUP_ARGS)} --threads {threads} --out TMP" if command is None
             else " ".join(command))
    return {"cold_s": walls[0], "warm_s": warm[len(warm) // 2], "warm_runs_s": walls[1:],
            "command": shown}


def compile_times():
    """Cold and warm first calls of every kernel in float32 and float64."""
    from benchmarks import compile_time
    try:
        return compile_time.measure()
    except subprocess.CalledProcessError as e:
        return {"error": (e.stderr or "")[-1000:]}


def run(suite="all", threads=None, quick=False, families=kbench.FAMILIES, torch=True):
    """Everything the report needs, as one JSON-able dict."""
    import numba

    from benchmarks import machine, train_step
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, not {suite!r}")
    threads = threads or numba.config.NUMBA_NUM_THREADS
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"--threads {threads}: Numba allows 1 to "
                         f"{numba.config.NUMBA_NUM_THREADS} (set NUMBA_NUM_THREADS for more)")
    t_start = time.perf_counter()
    wall = {}
    result = {"schema": "minidl-bench/1", "suite": suite, "quick": quick, "threads": threads,
              "torch_installed": torch and kbench.torch_available()}

    def timed(name, fn, *args, **kwargs):
        log(f"minidl bench: {name}...")
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        wall[name] = time.perf_counter() - t0
        return out

    kbench.set_threads(threads)  # the limits are measured at the kernels' thread count
    result["machine"] = describe_machine(threads)
    result["limits"] = timed("limits", machine.limits, quick)
    if suite in ("kernels", "all"):
        rows = timed("kernels", kbench.run, threads, quick, families, torch, progress=log)
        result["kernels"] = kbench.annotate(rows, result["limits"])
        if not quick:
            result["compile"] = timed("compile", compile_times)
    if suite in ("train", "all"):
        result["train"] = timed("train", train_step.run, threads, quick=quick, use_torch=torch)
        if not quick:
            result["startup"] = timed("startup", startup_times, threads)
    wall["total"] = time.perf_counter() - t_start
    result["wall_seconds"] = wall
    return result


def main_with(suite="all", threads=None, quick=False, json_path=None, markdown_path=None,
              families=kbench.FAMILIES) -> int:
    from benchmarks import report
    result = run(suite, threads, quick, families)
    text = report.markdown(result)
    if json_path:
        report.write_json(result, json_path)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    import argparse

    from minidl.bench import add_arguments
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    return main_with(args.suite, args.threads, args.quick, args.json, args.markdown)


if __name__ == "__main__":
    sys.exit(main())
