"""`minidl bench`: how fast minidl runs on this machine, against NumPy and PyTorch, with
the machine's own limits measured in the same run.

    minidl bench [--suite kernels|train|all] [--only conv2d,...] [--backend numpy,torch]
    minidl bench conv2d --input N,C,H,W --out-channels K [--kernel 3 --stride 1 --padding 1
                        --groups G --dilation D --dtype float32|float64
                        --format nchw|channels_last --pass fwd,bwd-in,bwd-w|all]
    minidl bench batch_norm --input N,C[,H,W] [--pass fwd,bwd|all]
    minidl bench max_pool2d|avg_pool2d --input N,C,H,W --kernel K --stride S --padding P
    minidl bench matmul --shapes AxB,BxC
    minidl bench compare OLD.json NEW.json [--fail-on-slower PCT]

The work is done by the `benchmarks` package (installed with minidl), imported only
here, when the command runs; see benchmarks/README.md for the method and the JSON schema.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

# Read by OpenBLAS when NumPy loads it, and able to make it pick a slow kernel; the
# benchmarks unset them for their own process (minidl.benchmarks.harness.clean_blas_env).
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
OPS = ("conv2d", "batch_norm", "max_pool2d", "avg_pool2d", "matmul")
# (flag, dest, help) of a single-shape command's options; values stay strings so that
# minidl.benchmarks.cases.single_specs can say in one line what is wrong with them
SHAPE_OPTIONS = {
    "conv2d": [("--input", "input", "N,C,H,W"), ("--out-channels", "out_channels", "K"),
               ("--kernel", "kernel", "kernel size (default 3)"),
               ("--stride", "stride", "default 1"), ("--padding", "padding", "default 0"),
               ("--groups", "groups", "default 1"), ("--dilation", "dilation", "default 1"),
               ("--format", "format", "nchw (default) or channels_last: minidl's NHWC entry "
                "points on NHWC arrays (torch tries both layouts either way)")],
    "batch_norm": [("--input", "input", "N,C,H,W or N,C")],
    "max_pool2d": [("--input", "input", "N,C,H,W"), ("--kernel", "kernel", "default 3"),
                   ("--stride", "stride", "default 1"), ("--padding", "padding", "default 0")],
    "matmul": [("--shapes", "shapes", "AxB,BxC: x (A, B) @ w (B, C)")],
}
SHAPE_OPTIONS["avg_pool2d"] = SHAPE_OPTIONS["max_pool2d"]
COMMON = [("--threads", "threads"), ("--json", "json"), ("--markdown", "markdown"),
          ("--backend", "backend")]


def _common(p, sub=False) -> None:
    """Options every timing command takes. On a subcommand they default to SUPPRESS so
    that `minidl bench --quick conv2d ...` keeps the value given before the subcommand."""
    extra = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("--threads", type=int, help="threads for Numba, NumPy's BLAS and torch "
                   "(default: all cores)", **({"default": None} | extra))
    p.add_argument("--quick", action="store_true", help="the harness's smallest calibration "
                   "(and tiny shapes for the suite): checks the harness in seconds",
                   **({"default": False} | extra))
    p.add_argument("--backend", metavar="LIST", help="backends to time among numba, "
                   "numba_old, numba_nhwc, numpy, torch (numba always runs; default: all)",
                   **({"default": None} | extra))
    p.add_argument("--json", metavar="FILE", help="write the results as JSON",
                   **({"default": None} | extra))
    p.add_argument("--markdown", metavar="FILE", help="write the report as Markdown (it is "
                   "printed either way)", **({"default": None} | extra))


def add_arguments(p) -> None:
    p.add_argument("--suite", choices=("kernels", "train", "all"), default="all",
                   help="kernels: machine limits and every kernel vs NumPy and PyTorch; "
                        "train: training steps vs PyTorch and start-up time; all: both")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: the CUDA kernels and training steps against PyTorch CUDA "
                        "(benchmarks/cuda.py; the other options but --quick, --json and "
                        "--markdown do not apply)")
    p.add_argument("--only", metavar="LIST", default=None,
                   help="kernel families of the suite among conv2d, batch_norm, pooling, "
                        "matmul (default: all)")
    _common(p)
    sub = p.add_subparsers(dest="bench_command", metavar="{" + ",".join(OPS) + ",compare}")
    for op in OPS:
        q = sub.add_parser(op, help=f"time {op} on one shape of yours",
                           description=f"Time {op} on one shape: minidl's backends and "
                           "PyTorch at its best, with rate, fraction of the machine's limits "
                           "and the ratio.")
        for flag, dest, help_ in SHAPE_OPTIONS[op]:
            q.add_argument(flag, dest=dest, default=None, help=help_)
        q.add_argument("--dtype", default="float32", help="float32 (default) or float64")
        q.add_argument("--pass", dest="passes", default="all",
                       help="comma-separated passes, e.g. fwd,bwd-in,bwd-w (or forward, "
                       "backward_input, backward_weight; backward for batch norm and "
                       "pooling); default all")
        _common(q, sub=True)
    q = sub.add_parser("compare", help="compare two --json results row by row",
                       description="Compare two `minidl bench --json` results: per row the "
                       "ratio of medians NEW / OLD and a verdict (faster / slower only when "
                       "the two runs' interquartile ranges do not overlap).")
    q.add_argument("old", metavar="OLD.json")
    q.add_argument("new", metavar="NEW.json")
    q.add_argument("--fail-on-slower", type=float, default=None, metavar="PCT",
                   help="exit 1 if a row is judged slower by PCT percent or more")
    q.add_argument("--markdown", metavar="FILE", default=None, help="also write the table here")


def build_parser(prog="minidl bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def _argv(args) -> list[str]:
    """The command line that reproduces `args` in a fresh process."""
    cmd = getattr(args, "bench_command", None)
    if cmd:
        argv = [cmd]
        for flag, dest, _ in SHAPE_OPTIONS[cmd]:
            if getattr(args, dest, None) is not None:
                argv += [flag, str(getattr(args, dest))]
        argv += ["--dtype", args.dtype, "--pass", args.passes]
    else:
        argv = ["--suite", args.suite]
        if getattr(args, "only", None):
            argv += ["--only", args.only]
    if getattr(args, "threads", None):
        argv += ["--threads", str(args.threads)]
    if getattr(args, "quick", False):
        argv.append("--quick")
    if getattr(args, "backend", None):
        argv += ["--backend", args.backend]
    for flag, value in (("--json", getattr(args, "json", None)),
                        ("--markdown", getattr(args, "markdown", None))):
        if value:
            argv += [flag, os.path.abspath(value)]
    return argv


def _fail(msg) -> int:
    print(f"minidl bench: {msg}", file=sys.stderr)
    return 2


def run(args) -> int:
    if getattr(args, "device", "cpu") == "cuda":
        from . import cuda
        if not cuda.is_available():
            from .errors import UsageError
            raise UsageError(f"minidl bench: --device cuda: CUDA is not available: "
                             f"{cuda.unavailable_reason()}")
        from minidl.benchmarks import cuda as cuda_bench
        return cuda_bench.main_with(args.quick, args.json, args.markdown)
    if args.threads is not None and args.threads < 1:
        from .errors import UsageError
        raise UsageError(f"minidl bench: --threads must be >= 1, got {args.threads}")
    cmd = getattr(args, "bench_command", None)
    stale_blas = any(v in os.environ for v in BLAS_VARS)  # before benchmarks unsets them
    from minidl.benchmarks import cases
    try:
        if cmd == "compare":
            from minidl.benchmarks import suite
            return suite.main_compare(args.old, args.new, args.fail_on_slower, args.markdown)
        backends = cases.parse_backends(getattr(args, "backend", None))
        if cmd:
            opts = {dest: getattr(args, dest) for _, dest, _ in SHAPE_OPTIONS[cmd]}
            specs = cases.single_specs(cmd, dict(opts, dtype=args.dtype, **{"pass": args.passes}))
        else:
            families = cases.parse_families(args.only)
        if stale_blas:
            # NumPy has already loaded OpenBLAS with them: run in a fresh process without
            # them, told what was unset (the result reports it).
            import json
            env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
            env["MINIDL_BENCH_UNSET"] = json.dumps(
                {v: os.environ[v] for v in BLAS_VARS if v in os.environ})
            return subprocess.call([sys.executable, "-m", "minidl.benchmarks.suite",
                                    *_argv(args)], env=env)
        from minidl.benchmarks import suite
        if cmd:
            return suite.main_single(specs, args.threads, args.quick, args.json,
                                     args.markdown, backends)
        return suite.main_with(args.suite, args.threads, args.quick, args.json, args.markdown,
                               families, backends)
    except ValueError as e:  # a bad shape, option, thread count or result file
        return _fail(f"{cmd + ': ' if cmd else ''}{e}")
