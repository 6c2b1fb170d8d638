"""`minidl info`: what this installation runs on (versions, threads, BLAS, CUDA)."""
from __future__ import annotations

import math
import platform


def blas_info() -> str:
    """Which BLAS NumPy is linked against, from NumPy's build configuration."""
    import numpy as np
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        return "unknown"


def threading_layer() -> str:
    """Numba's threading layer; it is only chosen once a parallel kernel has run."""
    import numba
    import numpy as np

    @numba.njit(parallel=True, cache=False)
    def _touch(a):
        for i in numba.prange(a.size):
            a[i] += 1.0
    _touch(np.zeros(4))
    try:
        return numba.threading_layer()
    except ValueError:
        return "none"


def cuda_status() -> str:
    """Whether `--device cuda` can run, and why not (minidl/cuda.py)."""
    from . import cuda
    return cuda.status()


def mpi_status() -> str:
    """Whether `mpirun -n K minidl ...` can train data-parallel here, and if not, why."""
    from .distributed import group
    if not group.is_available():
        return f"not available: {group.unavailable_reason()}"
    from importlib.metadata import version
    text = f"available (mpi4py {version('mpi4py')}, {group.mpi_library_version()})"
    n = group.launched_by_mpirun()
    if n:
        from . import _threads
        text += f"; this process is one of {n} ranks"
        if _threads.applied:
            text += f", {next(iter(_threads.applied.values()))} threads each"
    return text


def _malloc_status() -> str:
    from . import _malloc
    return _malloc.status


def blas_thread_policy() -> str:
    """Whether OpenBLAS's idle workers sleep at once (see kernels/__init__.py)."""
    import os

    from . import kernels
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if kernels.BLAS_THREAD_TIMEOUT_APPLIED:
        late = (", applied after NumPy had loaded OpenBLAS (its workers restarted)"
                if kernels.BLAS_THREAD_TIMEOUT_LATE else "")
        return (f"workers spin 2^{value} cycles after a call (OPENBLAS_THREAD_TIMEOUT={value}"
                f"{late})")
    return ("OpenBLAS default (workers spin ~0.1 s and slow Numba kernels): NumPy was "
            "imported before minidl and its OpenBLAS could not be told later; set "
            "OPENBLAS_THREAD_TIMEOUT=18 or import minidl first")


def openmp_wait_policy() -> str:
    """Whether the OpenMP runtime of Numba's kernels sleeps when idle (kernels/__init__.py)."""
    import os

    from . import kernels
    value = os.environ.get("OMP_WAIT_POLICY")
    if kernels.OMP_WAIT_POLICY_LATE:
        return (f"{value} too late: torch was imported before minidl and its OpenMP runtime "
                "spins idle threads; import minidl first or set OMP_WAIT_POLICY=PASSIVE "
                "GOMP_SPINCOUNT=10000")
    spin = os.environ.get("GOMP_SPINCOUNT")
    return f"OMP_WAIT_POLICY={value}" + (f", GOMP_SPINCOUNT={spin}" if spin else "")


def collect() -> dict:
    import numba
    import numpy as np
    import scipy

    from . import __version__
    from .backend import get_backend
    info = {
        "minidl": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "numba threading layer": threading_layer(),
        "numba threads": numba.get_num_threads(),
        "backend": get_backend(),
        "numpy BLAS": blas_info(),
        "BLAS thread policy": blas_thread_policy(),
        "OpenMP wait policy": openmp_wait_policy(),
        "cuda": cuda_status(),
        "malloc tuning": _malloc_status(),
        "mpi (distributed training)": mpi_status(),
    }
    try:  # the version only: importing torch would load its OpenMP runtime into minidl's
        from importlib.metadata import version
        info["torch (tests/benchmarks only)"] = version("torch")
    except Exception:
        info["torch (tests/benchmarks only)"] = "not installed"
    return info


MODELS = {  # name -> (builder, input shape without the batch)
    "mlp": ("mlp", (1, 28, 28)),
    "mlp-bn": ("mlp", (1, 28, 28)),
    "bn_inception_lite": ("bn_inception_lite", (1, 28, 28)),
    "inception_lite": ("bn_inception_lite", (1, 28, 28)),
}


def add_arguments(p) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default=None,
                   help="print the model's parameters, multiply-adds and activation memory "
                        "per example (inception_lite: the same network without BN)")
    p.add_argument("--input", default=None,
                   help="input shape without the batch, e.g. 3,32,32 (default 1,28,28)")


def model_report(name: str, input_shape=None) -> str:
    from . import models
    from .models.summary import format_summary, model_summary
    builder, default_shape = MODELS[name]
    shape = tuple(input_shape or default_shape)
    kwargs = {}
    if builder == "bn_inception_lite":
        kwargs = {"in_channels": shape[0], "bn": name == "bn_inception_lite"}
    elif builder == "mlp":
        kwargs = {"in_features": int(math.prod(shape)), "bn": name == "mlp-bn"}
    model = getattr(models, builder)(**kwargs)
    return format_summary(name, model_summary(model, shape), shape)


def main(args=None) -> int:
    if getattr(args, "model", None):
        shape = None
        if args.input:
            try:
                shape = tuple(int(v) for v in args.input.split(","))
            except ValueError:
                shape = ()
            if len(shape) != 3 or min(shape) < 1:
                from .errors import UsageError
                raise UsageError(f"minidl info: --input must be C,H,W (three positive ints), "
                                 f"got {args.input!r}")
        print(model_report(args.model, shape))
        return 0
    for key, value in collect().items():
        print(f"{key:>30}: {value}")
    return 0
