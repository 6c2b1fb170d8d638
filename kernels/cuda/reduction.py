"""Reductions (sum, max, min) over any set of axes.

The input is a contiguous buffer. Output element o starts at offset(o; kept shape,
kept strides) and adds offset(j; reduced shape, reduced strides) for reduced index j.

One kernel, `reduce_axes`, in which `parts` blocks work on each output element:
block (o, p) of the grid (grid-strided over out.size = outputs * parts) has its THREADS
threads take the reduced indices j = p THREADS + t, p THREADS + t + parts THREADS, ...
(neighbouring threads, neighbouring j), and combines their partial results in shared
memory (a tree of THREADS/2, THREADS/4, ... partial results) into out[o parts + p].

    many outputs (a row-wise sum, batch-norm statistics): parts = 1, one block per
        output, writing out[o] directly;
    many outputs of at most SMALL elements each (a sum over a short axis, conv2d's
        split-K partial weight gradients): a block per output would leave most of its
        threads idle, so `reduce_axes_thread` gives each output one thread instead;
    few outputs over many elements (x.sum() of a loss, a column sum of a tall matrix):
        one block per output would leave the GPU nearly idle, so two passes: pass 1
        with parts = `partial_blocks(outputs, count)` writes (outputs, parts) float64
        partial results, pass 2 reduces each row of those with parts = 1.

The mean's scale is applied once, by the pass that writes the result.
"""
from __future__ import annotations

from numba import cuda, float64

from ._launch import REDUCE_BLOCKS, SIMULATOR, THREADS, grid1d
from .elementwise import _offset_dev

SUM, MAX, MIN = 0, 1, 2
SMALL = 4 if SIMULATOR else 32          # at most this many elements: a thread per output
FILL_BLOCKS = 8 if SIMULATOR else 1024  # the two-pass path aims at about this many blocks
MIN_ITEMS = 2 if SIMULATOR else 16      # and gives each thread at least this many items


@cuda.jit(device=True)
def _combine(acc, v, mode):
    """acc combined with v: their sum, or the larger / smaller (a NaN wins, as in NumPy)."""
    if mode == SUM:
        return acc + v
    if mode == MAX:
        return v if (v > acc or v != v) else acc
    return v if (v < acc or v != v) else acc


@cuda.jit
def reduce_axes(x, kshape, kstr, rshape, rstr, out, mode, scale, parts):
    """out[o parts + p] = scale * reduce_{j = p T + t + k parts T} x[base(o) + off(j)]
    (T = THREADS; scale only for SUM)."""
    part = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    count = 1
    for d in range(len(rshape)):
        count *= rshape[d]
    vb = cuda.blockIdx.x
    while vb < out.size:
        o = vb // parts
        base = _offset_dev(o, kshape, kstr)
        acc = 0.0 if mode == SUM else float64(x[base])  # x[base]: one of o's elements
        j = (vb - o * parts) * nt + t
        while j < count:
            acc = _combine(acc, float64(x[base + _offset_dev(j, rshape, rstr)]), mode)
            j += parts * nt
        part[t] = acc
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if t < s:
                part[t] = _combine(part[t], part[t + s], mode)
            cuda.syncthreads()
            s //= 2
        if t == 0:
            out[vb] = part[0] * scale if mode == SUM else part[0]
        cuda.syncthreads()
        vb += cuda.gridDim.x


@cuda.jit
def reduce_axes_thread(x, kshape, kstr, rshape, rstr, out, mode, scale):
    """out[o] = scale * reduce_j x[base(o) + off(j)], one thread per output."""
    count = 1
    for d in range(len(rshape)):
        count *= rshape[d]
    o = cuda.grid(1)
    while o < out.size:
        base = _offset_dev(o, kshape, kstr)
        acc = 0.0 if mode == SUM else float64(x[base])
        for j in range(count):
            acc = _combine(acc, float64(x[base + _offset_dev(j, rshape, rstr)]), mode)
        out[o] = acc * scale if mode == SUM else acc
        o += cuda.gridsize(1)


def partial_blocks(outputs: int, count: int) -> int:
    """Blocks per output for the first pass: 1 (a single pass) when there are outputs
    enough to fill the GPU or too few elements per output to share."""
    by_size = count // (THREADS * MIN_ITEMS)
    return max(1, min(by_size, FILL_BLOCKS // max(outputs, 1)))


def launch_reduce(x, kshape, kstr, rshape, rstr, out, mode, scale=1.0, parts=1):
    """One pass; with parts > 1, `out` holds (outputs, parts) partial results."""
    count = 1
    for n in rshape:
        count *= n
    if parts == 1 and count <= SMALL:
        reduce_axes_thread[grid1d(out.size)](x, kshape, kstr, rshape, rstr, out, mode, scale)
        return
    blocks = max(1, min(REDUCE_BLOCKS, out.size))
    reduce_axes[blocks, THREADS](x, kshape, kstr, rshape, rstr, out, mode, scale, parts)
