"""The Numba loops benchmarks/harness.py measures the machine with (its private part:
`cache=True` needs them at module level). Nothing else should import this module."""
from numba import njit, prange

from kernels.cpu.microkernel import fma_chains


@njit(parallel=True, cache=True)
def triad(a, b, c, s):
    for i in prange(a.size):
        a[i] = b[i] + s * c[i]


@njit(parallel=True, cache=True)
def copy(dst, src):
    for i in prange(dst.size):
        dst[i] = src[i]


@njit(parallel=True, cache=True)
def fma_chains_all(n, outs):
    for t in prange(outs.shape[0]):
        fma_chains(n, outs[t])
