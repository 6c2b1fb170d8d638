"""`minidl bench`: how fast minidl runs on this machine, against NumPy and PyTorch, with
the machine's own limits measured in the same run. The work is done by the `benchmarks`
package (installed with minidl); see benchmarks/suite.py."""
from __future__ import annotations

import os
import subprocess
import sys

# Read by OpenBLAS when NumPy loads it, and able to make it pick a slow kernel; the
# suite unsets them for its own process (benchmarks.common.clean_blas_env).
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def add_arguments(p) -> None:
    p.add_argument("--suite", choices=("kernels", "train", "all"), default="all",
                   help="kernels: machine limits and every kernel vs NumPy and PyTorch; "
                        "train: training steps vs PyTorch and start-up time; all: both")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for Numba, NumPy's BLAS and torch (default: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, few repeats: checks the harness in seconds")
    p.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: the CUDA kernels and training steps against PyTorch CUDA "
                        "(benchmarks/cuda.py; --suite and --threads do not apply)")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="write the report as Markdown (it is printed either way)")


def _argv(args) -> list[str]:
    argv = ["--suite", args.suite]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.quick:
        argv.append("--quick")
    for flag, value in (("--json", args.json), ("--markdown", args.markdown)):
        if value:
            argv += [flag, os.path.abspath(value)]
    return argv


def run(args) -> int:
    if getattr(args, "device", "cpu") == "cuda":
        from . import cuda
        if not cuda.is_available():
            print(f"minidl bench: --device cuda: CUDA is not available: "
                  f"{cuda.unavailable_reason()}", file=sys.stderr)
            return 2
        from benchmarks import cuda as cuda_bench
        return cuda_bench.main_with(args.quick, args.json, args.markdown)
    if any(v in os.environ for v in BLAS_VARS):
        # NumPy has already loaded OpenBLAS with them: run the suite in a fresh process,
        # which unsets them before importing NumPy (and reports that it did).
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds benchmarks/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        return subprocess.call([sys.executable, "-m", "benchmarks.suite", *_argv(args)],
                               env=env)
    from benchmarks import suite
    try:
        return suite.main_with(args.suite, args.threads, args.quick, args.json, args.markdown)
    except ValueError as e:  # a bad --threads
        print(f"minidl bench: {e}", file=sys.stderr)
        return 2
