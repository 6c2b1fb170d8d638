"""Shared benchmark plumbing: a clean BLAS environment, timing, machine description."""
from __future__ import annotations

import os
import statistics
import time


def clean_blas_env() -> dict:
    """Drop OpenBLAS tuning variables that slow NumPy's BLAS on some machines, for this
    benchmark process only (must run before NumPy is imported). Returns what was unset."""
    removed = {}
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            removed[var] = os.environ.pop(var)
    return removed


def timeit(fn, repeats: int = 5, warmup: int = 1, min_time: float = 0.0) -> dict:
    """Median and spread of `fn()` wall time over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < repeats or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "repeats": len(times)}


def machine() -> dict:
    import platform

    from minidl.info import blas_info
    import numba
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "numba_threads": numba.get_num_threads(), "blas": blas_info()}
