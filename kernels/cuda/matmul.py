"""Tiled shared-memory GEMM: C (M, N) = A (M, K) @ B (K, N), all contiguous.

Each TILE x TILE block computes one TILE x TILE tile of C. It walks K in steps of
TILE: the block loads a tile of A and a tile of B into shared memory (one element per
thread, zero outside the matrices), synchronizes, and each thread adds the TILE
products of its row of the A tile and column of the B tile. Every element of A and
B is read from global memory N/TILE and M/TILE times instead of N and M times."""
from __future__ import annotations

from numba import cuda, float32, float64

from ._launch import TILE


def _make_gemm(nbtype):
    @cuda.jit
    def gemm(a, b, c, M, N, K):
        sa = cuda.shared.array((TILE, TILE), nbtype)
        sb = cuda.shared.array((TILE, TILE), nbtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        row = cuda.blockIdx.y * TILE + ty
        col = cuda.blockIdx.x * TILE + tx
        acc = nbtype(0)
        for k0 in range(0, K, TILE):
            ka = k0 + tx
            kb = k0 + ty
            sa[ty, tx] = a[row * K + ka] if (row < M and ka < K) else nbtype(0)
            sb[ty, tx] = b[kb * N + col] if (kb < K and col < N) else nbtype(0)
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sa[ty, kk] * sb[kk, tx]
            cuda.syncthreads()
        if row < M and col < N:
            c[row * N + col] = acc
    return gemm


GEMM = {"float32": _make_gemm(float32), "float64": _make_gemm(float64)}


def launch_gemm(a, b, c, M, N, K):
    grid = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE)
    GEMM[str(c.dtype)][grid, (TILE, TILE)](a, b, c, M, N, K)
