"""The machine's practical limits, measured in the same run as the kernels they judge:
the chip's float32 FMA peak (independent vector FMA chains on every Numba thread, the
ceiling for compute-bound convs, as roofline tools measure it), float32 GEMM throughput
through NumPy's BLAS (kept beside it: what a library call reaches), and memory bandwidth
as a large copy and a STREAM-style triad (the ceiling for memory-bound batch norm and
pooling)."""
from __future__ import annotations

import time

import numba
import numpy as np
from numba import njit, prange

from benchmarks.common import timeit
from kernels.cpu.microkernel import blocking, fma_chains


@njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


@njit(parallel=True, cache=True)
def _copy(dst, src):
    for i in prange(dst.size):
        dst[i] = src[i]


@njit(parallel=True, cache=True)
def _fma_chains(n, outs):
    for t in prange(outs.shape[0]):
        fma_chains(n, outs[t])


def fma_peak_gflops(threads: int | None = None, seconds: float = 0.2,
                    repeats: int = 5) -> float:
    """float32 FMA throughput: on each of `threads` Numba threads (default: all), the
    micro-kernel's MR*NV independent vector FMA chains with no loads in the loop
    (kernels/cpu/microkernel.fma_chains). Best of `repeats` runs of ~`seconds` each."""
    threads = threads or numba.get_num_threads()
    mr, nr = blocking(np.float32)
    outs = np.full((threads, 4096), 0.5, np.float32)  # x = 0.5, y = 0.5: no overflow
    _fma_chains(10, outs)
    n = 1000
    while True:  # calibrate n to last about `seconds`
        t0 = time.perf_counter()
        _fma_chains(n, outs)
        dt = time.perf_counter() - t0
        if dt > seconds / 4:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = min(_timed(lambda: _fma_chains(n, outs)) for _ in range(repeats))
    return threads * n * mr * nr * 2 / best / 1e9


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def gemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    t = timeit(lambda: a @ b, repeats=repeats)["median"]
    return 2 * n**3 / t / 1e9


def bandwidth_gbs(mib: int = 256, repeats: int = 5) -> dict:
    """Copy and triad bandwidth with Numba's threads, counting bytes read plus written."""
    n = mib * 2**20 // 4
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    a = np.empty(n, np.float32)
    _copy(a, b)
    _triad(a, b, c, np.float32(2.0))
    t_copy = timeit(lambda: _copy(a, b), repeats=repeats)["median"]
    t_triad = timeit(lambda: _triad(a, b, c, np.float32(2.0)), repeats=repeats)["median"]
    return {"copy": 2 * a.nbytes / t_copy / 1e9, "triad": 3 * a.nbytes / t_triad / 1e9}


def limits(quick: bool = False) -> dict:
    from minidl.info import blas_info, threading_layer
    mib, n = (32, 512) if quick else (256, 2048)
    bw = bandwidth_gbs(mib=mib, repeats=3 if quick else 5)
    return {
        "fma_peak_gflops": fma_peak_gflops(seconds=0.05 if quick else 0.2),
        "gemm_gflops": gemm_gflops(n, repeats=3 if quick else 5),
        "copy_gbs": bw["copy"], "triad_gbs": bw["triad"],
        "gemm_n": n, "bandwidth_mib": mib,
        "blas": blas_info(), "threading_layer": threading_layer(),
        "numba_threads": numba.get_num_threads(),
    }


if __name__ == "__main__":
    for k, v in limits().items():
        print(f"{k:>16}: {v:.1f}" if isinstance(v, float) else f"{k:>16}: {v}")
