"""`minidl info`: what this installation runs on (versions, threads, BLAS, CUDA)."""
from __future__ import annotations

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
    try:
        from numba import cuda
        return "available" if cuda.is_available() else "not available"
    except Exception as e:  # no numba-cuda, no driver
        return f"not available ({type(e).__name__})"


def _malloc_status() -> str:
    from . import _malloc
    return _malloc.status


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
        "cuda": cuda_status(),
        "malloc tuning": _malloc_status(),
    }
    try:  # the version only: importing torch would load its OpenMP runtime into minidl's
        from importlib.metadata import version
        info["torch (tests/benchmarks only)"] = version("torch")
    except Exception:
        info["torch (tests/benchmarks only)"] = "not installed"
    return info


def main(args=None) -> int:
    for key, value in collect().items():
        print(f"{key:>30}: {value}")
    return 0
