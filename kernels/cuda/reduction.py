"""Reductions (sum, max, min) over any set of axes: one block per output element, the
block's threads stride over the reduced elements and combine in shared memory (a tree
of THREADS/2, THREADS/4, ... partial results).

The input is a contiguous buffer. Output element o starts at offset(o; kept shape,
kept strides) and adds offset(j; reduced shape, reduced strides) for reduced index j.
"""
from __future__ import annotations

from numba import cuda, float64

from ._launch import REDUCE_BLOCKS, THREADS
from .elementwise import _offset_dev

SUM, MAX, MIN = 0, 1, 2


@cuda.jit
def reduce_axes(x, kshape, kstr, rshape, rstr, out, mode, scale):
    """out[o] = scale * reduce_j x[base(o) + off(j)]  (scale only for SUM)."""
    part = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    count = 1
    for d in range(len(rshape)):
        count *= rshape[d]
    o = cuda.blockIdx.x
    while o < out.size:
        base = _offset_dev(o, kshape, kstr)
        acc = 0.0 if mode == SUM else float64(x[base])
        j = t
        while j < count:
            v = float64(x[base + _offset_dev(j, rshape, rstr)])
            if mode == SUM:
                acc += v
            elif mode == MAX:
                if v > acc or v != v:
                    acc = v
            else:
                if v < acc or v != v:
                    acc = v
            j += nt
        part[t] = acc
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if t < s:
                a, b = part[t], part[t + s]
                if mode == SUM:
                    part[t] = a + b
                elif mode == MAX:
                    part[t] = b if (b > a or b != b) else a
                else:
                    part[t] = b if (b < a or b != b) else a
            cuda.syncthreads()
            s //= 2
        if t == 0:
            out[o] = part[0] * scale if mode == SUM else part[0]
        cuda.syncthreads()
        o += cuda.gridDim.x


def launch_reduce(x, kshape, kstr, rshape, rstr, out, mode, scale=1.0):
    blocks = max(1, min(REDUCE_BLOCKS, out.size))
    reduce_axes[blocks, THREADS](x, kshape, kstr, rshape, rstr, out, mode, scale)
