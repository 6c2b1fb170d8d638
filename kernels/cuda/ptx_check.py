"""Compile every CUDA kernel the tests launch to PTX, without a GPU.

The simulator runs kernels as Python, so it never type-checks them; a kernel can pass
every simulator test and still fail to compile for a real GPU. This tool closes most
of that gap on a machine without one:

    python -m minidl.kernels.cuda.ptx_check [pytest args...]   # default: tests/test_cuda.py

Phase 1 runs the tests on the simulator and records the argument types of every kernel
launch. Phase 2 (a fresh process, simulator off) compiles each (kernel, signature) with
numba.cuda.compile_ptx for compute capability 9.0 (H100/H200). It needs NVVM and NVRTC
(pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12), not a GPU or a driver.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

MODULES = ("activation", "batchnorm", "conv2d", "elementwise", "loss", "matmul", "optim",
           "pooling", "reduction")


def registry() -> dict:
    """{key: dispatcher} for every kernel of kernels/cuda, in either mode."""
    import importlib
    out = {}
    for name in MODULES:
        mod = importlib.import_module(f"minidl.kernels.cuda.{name}")
        for attr, value in vars(mod).items():
            if hasattr(value, "py_func") and not attr.startswith("_"):
                out[f"{name}.{attr}"] = value
    from . import conv2d, elementwise, matmul
    for op, kernels in elementwise.BINARY.items():
        for i, k in enumerate(kernels):
            out[f"elementwise.BINARY.{op}.{i}"] = k
    for op, k in elementwise.UNARY.items():
        out[f"elementwise.UNARY.{op}"] = k
    for dt, k in matmul.GEMM.items():
        out[f"matmul.GEMM.{dt}"] = k
    for table in ("FORWARD", "BACKWARD_INPUT", "BACKWARD_WEIGHT"):
        for dt, k in getattr(conv2d, table).items():
            out[f"conv2d.{table}.{dt}"] = k
    return out


def _describe(arg):
    import numpy as np
    inner = getattr(arg, "_ary", None)  # the simulator's FakeCUDAArray
    if inner is not None:
        arg = inner
    if isinstance(arg, np.ndarray):
        layout = "C" if arg.flags.c_contiguous else "A"
        return ["array", arg.dtype.str, arg.ndim, layout]
    if isinstance(arg, tuple):
        return ["tuple", [_describe(a) for a in arg]]
    if isinstance(arg, (bool, np.bool_)):
        return ["scalar", "bool"]
    if isinstance(arg, int):
        return ["scalar", "int64"]
    if isinstance(arg, float):
        return ["scalar", "float64"]
    if isinstance(arg, np.generic):
        return ["scalar", arg.dtype.name]
    raise TypeError(f"ptx_check: cannot describe a kernel argument of type {type(arg)}")


def _numba_type(d):
    import numpy as np
    from numba import types
    from numba.np.numpy_support import from_dtype
    kind = d[0]
    if kind == "array":
        return types.Array(from_dtype(np.dtype(d[1])), d[2], d[3])
    if kind == "tuple":
        items = [_numba_type(x) for x in d[1]]
        if len(set(items)) == 1:
            return types.UniTuple(items[0], len(items))
        return types.Tuple(items)
    if d[1] == "bool":
        return types.boolean
    return from_dtype(np.dtype(d[1]))


def record(path, pytest_args) -> int:
    from numba.cuda.simulator import kernel as sim
    import pytest
    keys = {id(v): k for k, v in registry().items()}
    seen = set()
    original = sim.FakeCUDAKernel.__call__

    def call(self, *args):
        key = keys.get(id(self))
        if key is not None:
            seen.add(json.dumps([key, [_describe(a) for a in args]]))
        return original(self, *args)
    sim.FakeCUDAKernel.__call__ = call
    rc = pytest.main(["-q", "-p", "no:cacheprovider", *pytest_args])
    with open(path, "w") as f:
        json.dump(sorted(seen), f)
    return int(rc)


class _FakeDevice:
    compute_capability = (9, 0)


def compile_all(path) -> int:
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    # Device functions ask the current GPU for its compute capability when a kernel
    # that calls them is typed; there is none here, so answer for it (cc 9.0).
    dispatcher.get_current_device = _FakeDevice
    kernels = registry()
    with open(path) as f:
        entries = [json.loads(e) for e in json.load(f)]
    failures = 0
    for key, desc in entries:
        sig = tuple(_numba_type(d) for d in desc)
        try:
            cuda.compile_ptx(kernels[key].py_func, sig, cc=(9, 0))
        except Exception as e:  # report every failure, not just the first
            failures += 1
            print(f"FAIL {key}{sig}: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
    print(f"compiled {len(entries) - failures} of {len(entries)} kernel signatures to PTX "
          f"(cc 9.0); {failures} failed")
    return 1 if failures else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--compile"]:
        return compile_all(argv[1])
    if argv[:1] == ["--record"]:
        return record(argv[1], argv[2:])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "launches.json")
        me = [sys.executable, "-m", "minidl.kernels.cuda.ptx_check"]
        rc = subprocess.call(me + ["--record", path] +
                             (argv or ["tests/test_cuda.py", "-m", "not slow"]),
                             env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1"))
        if rc:
            print(f"ptx_check: the simulator tests failed (pytest exit {rc})")
        if not os.path.exists(path):
            return rc or 1
        return subprocess.call(me + ["--compile", path],
                               env=dict(os.environ, NUMBA_ENABLE_CUDASIM="0")) or rc


if __name__ == "__main__":
    sys.exit(main())
