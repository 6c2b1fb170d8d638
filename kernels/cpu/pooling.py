"""Pooling as parallel Numba kernels: the "numba" backend.

Same semantics as kernels/reference/pooling.py (read that first). Every kernel runs
`prange` over the N*C (h, w) planes: pooling never mixes planes, so each thread owns
whole planes of its outputs and the backward scatter-adds cannot race, even where
windows overlap (stride < kernel).

The forward kernels (and the average-pooling backward, run in reverse) follow the
reference's plan, one plane at a time: copy the plane into a padded scratch buffer,
then run one pass per kernel offset (i, j) over all of the plane's windows at once.
Why not loop window by window? Pooled planes are small (7-28 columns): a per-window scan
is a chain of dependent compare/selects (or unpredictable branches), and per-row loops
are too short to vectorize; one pass per kernel offset vectorizes instead (numbers:
benchmarks/DESIGN.md, pooling.py). The scratch layout makes each (i, j) pass ONE long
loop with a constant stride, which LLVM vectorizes (AVX: strided loads by permutes,
compare, blend):

* the padded plane has Wp = sw * Wq columns, Wq = Wo + (kw - 1) // sw, so output (oh, ow)
  at flat index o = oh * Wq + ow reads column ow * sw + j of its row: linear in o;
* its rows are stored split by phase (row a*sh + r goes to block r, row a), so kernel
  row i of output row oh is row oh + i // sh of block i % sh: linear in o too.

The extra (kw - 1) // sw columns per row are garbage windows, computed and dropped.

The Python wrappers allocate outputs and flatten arrays to C-contiguous (N*C, ...)
views, so each kernel compiles once per dtype (float32, float64).
"""
import numba
import numpy as np
from numba import njit, prange

from minidl.kernels.cpu.builds import float32_parallel
from minidl.kernels.reference.pooling import pool_output_size

_JIT = dict(cache=True, fastmath=False)  # parallel for float32 (builds.py)


def _output_hw(x_shape, kernel_size, stride, padding, ceil_mode):
    Ho = pool_output_size(x_shape[2], kernel_size[0], stride[0], padding[0], ceil_mode)
    Wo = pool_output_size(x_shape[3], kernel_size[1], stride[1], padding[1], ceil_mode)
    return Ho, Wo


def _planes(a):
    """(N, C, H, W) -> C-contiguous (N*C, H, W), a view when `a` is already contiguous."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def _n_chunks(P):
    """Planes are handed out in chunks so each thread allocates its scratch once per
    chunk, not once per plane; a few chunks per thread balance the load."""
    return max(1, min(P, 4 * numba.get_num_threads()))


# ------------------------------------------------------------------------ scratch layout

@njit(cache=True)
def _scratch_shape(Ho, Wo, kh, kw, sh, sw):
    """(Hq, Wq, Wp): rows per phase block, windows per scratch row, scratch row width."""
    Hq = Ho + (kh - 1) // sh
    Wq = Wo + (kw - 1) // sw
    return Hq, Wq, sw * Wq


@njit(cache=True)
def _fill_scratch(x, p, sh, ph, pw, Hq, Wp, pad, rows):
    """rows[r * Hq + a, b] = x[p, a*sh + r - ph, b - pw], or `pad` outside the input."""
    H, W = x.shape[1], x.shape[2]
    ncopy = max(min(W, Wp - pw), 0)  # columns past Wp are in no window
    for r in range(sh):
        for a in range(Hq):
            h = a * sh + r - ph
            dst = rows[r * Hq + a]
            if h < 0 or h >= H:
                for b in range(Wp):
                    dst[b] = pad
            else:
                src = x[p, h]
                for b in range(pw):
                    dst[b] = pad
                # Index from 0 through views: LLVM sees non-negative indices, no
                # negative-index wraparound selects, and vectorizes the copy.
                mid = dst[pw:]
                for b in range(ncopy):
                    mid[b] = src[b]
                for b in range(pw + ncopy, Wp):
                    dst[b] = pad


@njit(cache=True)
def _offset_start(i, j, sh, Hq, Wp):
    """Flat scratch index that kernel offset (i, j) of output o = 0 reads."""
    return ((i % sh) * Hq + i // sh) * Wp + j


# ----------------------------------------------------------------------------- max pool

@njit(cache=True, inline="always")
def _max_offset_pass(xs, s, offset, best, best_at, new_best, new_at, n):
    # Strict '>' keeps the first max on ties (offsets run in scan order); NaN always takes
    # over, so a NaN propagates and the last NaN wins, as in PyTorch. Written as selects,
    # not an `if`, so the loop vectorizes; and from (best, best_at) into the other pair of
    # buffers, not in place: LLVM turns an in-place `b = v if take else b` into a
    # conditional store, which does not vectorize. `s` is a literal at the call sites
    # that matter: a constant stride lets LLVM turn the strided loads into vector permutes.
    for o in range(n):
        v = xs[o * s]
        b = best[o]
        take = (v > b) | (v != v)
        new_best[o] = v if take else b
        new_at[o] = offset if take else best_at[o]


@float32_parallel(**_JIT)
def _max_pool_fwd(x, kh, kw, sh, sw, ph, pw, Ho, Wo, y, argmax, n_chunks):
    P, H, W = x.shape
    Hq, Wq, Wp = _scratch_shape(Ho, Wo, kh, kw, sh, sw)
    n = Ho * Wq
    # The winner is tracked as its int32 offset (i*W + j) from the window's top-left
    # corner (in x coordinates, may be padding): half the width of an int64 index, so
    # it blends in the same vector lanes as float32. Padding (-inf) never wins, so the
    # start value is the offset of the window's first real element: what is reported
    # if all real elements are -inf (as in PyTorch).
    first_real = np.empty(n, dtype=np.int32)
    corner = np.empty(n, dtype=np.int64)  # flat index of each window's top-left corner
    for oh in range(Ho):
        h0 = oh * sh - ph
        for ow in range(Wq):
            w0 = ow * sw - pw
            first_real[oh * Wq + ow] = (max(h0, 0) - h0) * W + max(w0, 0) - w0
            corner[oh * Wq + ow] = h0 * W + w0
    for chunk in prange(n_chunks):
        scratch = np.empty(sh * Hq * Wp + Wp, dtype=x.dtype)  # + Wp: garbage windows run past
        rows = scratch[:sh * Hq * Wp].reshape(sh * Hq, Wp)
        best0, best1 = np.empty(n, dtype=x.dtype), np.empty(n, dtype=x.dtype)
        at0, at1 = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        for p in range(chunk * P // n_chunks, (chunk + 1) * P // n_chunks):
            _fill_scratch(x, p, sh, ph, pw, Hq, Wp, -np.inf, rows)
            for o in range(n):
                best0[o] = -np.inf
                at0[o] = first_real[o]
            best, best_at, other, other_at = best0, at0, best1, at1
            for i in range(kh):
                for j in range(kw):
                    xs = scratch[_offset_start(i, j, sh, Hq, Wp):]
                    offset = np.int32(i * W + j)
                    if sw == 1:
                        _max_offset_pass(xs, 1, offset, best, best_at, other, other_at, n)
                    elif sw == 2:
                        _max_offset_pass(xs, 2, offset, best, best_at, other, other_at, n)
                    else:
                        _max_offset_pass(xs, sw, offset, best, best_at, other, other_at, n)
                    best, best_at, other, other_at = other, other_at, best, best_at
            yp, ap = y[p], argmax[p]  # flat (Ho*Wo,) planes
            if Wq == Wo:  # no garbage windows (kw <= sw): one long loop
                for o in range(n):
                    yp[o] = best[o]
                    ap[o] = corner[o] + best_at[o]
            else:  # drop each row's garbage windows
                for oh in range(Ho):
                    row_best, row_at = best[oh * Wq:], best_at[oh * Wq:]
                    row_corner = corner[oh * Wq:]
                    row_y, row_a = yp[oh * Wo:], ap[oh * Wo:]
                    for ow in range(Wo):
                        row_y[ow] = row_best[ow]
                        row_a[ow] = row_corner[ow] + row_at[ow]


@float32_parallel(**_JIT)
def _max_pool_bwd(dy, argmax, dx):
    # Flat (P, Ho*Wo) / (P, H*W) planes: argmax indexes dx directly, with no per-element
    # // and % by W (a per-element integer division dominated this loop; numbers:
    # benchmarks/DESIGN.md, pooling.py).
    P, n_out = dy.shape
    for p in prange(P):
        dx[p, :] = 0
        for o in range(n_out):
            dx[p, argmax[p, o]] += dy[p, o]  # overlapping windows accumulate


def max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode):
    N, C = x.shape[:2]
    Ho, Wo = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((N * C, Ho * Wo), dtype=x.dtype)
    argmax = np.empty((N * C, Ho * Wo), dtype=np.int64)
    _max_pool_fwd(_planes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], Ho, Wo, y, argmax, _n_chunks(N * C))
    return y.reshape(N, C, Ho, Wo), argmax.reshape(N, C, Ho, Wo)


def max_pool2d_backward(dy, argmax, x_shape):
    N, C, H, W = x_shape
    dx = np.empty((N * C, H * W), dtype=dy.dtype)
    dy = np.ascontiguousarray(dy).reshape(N * C, -1)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64).reshape(N * C, -1)
    _max_pool_bwd(dy, argmax, dx)
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------------- avg pool

@njit(cache=True)
def _avg_divisor(start, kernel, size, pad, count_include_pad):
    """Length of one axis of a window's averaging area (see the reference)."""
    end = start + kernel
    if count_include_pad:
        return min(end, size + pad) - start
    return min(end, size) - max(start, 0)


@njit(cache=True)
def _window_divisors(H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, Wq, count_include_pad, dtype):
    """Divisor of each window at its scratch index oh * Wq + ow, in x's dtype as in the
    reference; 1 for garbage windows."""
    div = np.ones(Ho * Wq, dtype=dtype)
    for oh in range(Ho):
        dh = _avg_divisor(oh * sh - ph, kh, H, ph, count_include_pad)
        for ow in range(Wo):
            dw = _avg_divisor(ow * sw - pw, kw, W, pw, count_include_pad)
            div[oh * Wq + ow] = dh * dw
    return div


@njit(cache=True, inline="always")
def _sum_offset_pass(xs, s, acc, n):
    for o in range(n):
        acc[o] += xs[o * s]


@float32_parallel(**_JIT)
def _avg_pool_fwd(x, kh, kw, sh, sw, ph, pw, count_include_pad, Ho, Wo, y, n_chunks):
    P, H, W = x.shape
    Hq, Wq, Wp = _scratch_shape(Ho, Wo, kh, kw, sh, sw)
    n = Ho * Wq
    div = _window_divisors(H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, Wq, count_include_pad,
                           x.dtype)
    for chunk in prange(n_chunks):
        scratch = np.empty(sh * Hq * Wp + Wp, dtype=x.dtype)  # + Wp: garbage windows run past
        rows = scratch[:sh * Hq * Wp].reshape(sh * Hq, Wp)
        acc = np.empty(n, dtype=x.dtype)
        for p in range(chunk * P // n_chunks, (chunk + 1) * P // n_chunks):
            _fill_scratch(x, p, sh, ph, pw, Hq, Wp, 0.0, rows)  # zeros add nothing
            for o in range(n):
                acc[o] = 0
            # Sum in x's dtype in scan order, padding included: the reference's sums.
            for i in range(kh):
                for j in range(kw):
                    xs = scratch[_offset_start(i, j, sh, Hq, Wp):]
                    if sw == 1:
                        _sum_offset_pass(xs, 1, acc, n)
                    elif sw == 2:
                        _sum_offset_pass(xs, 2, acc, n)
                    else:
                        _sum_offset_pass(xs, sw, acc, n)
            yp = y[p]  # flat (Ho*Wo,) plane
            if Wq == Wo:  # no garbage windows (kw <= sw): one long loop
                for o in range(n):
                    yp[o] = acc[o] / div[o]
            else:  # drop each row's garbage windows
                for oh in range(Ho):
                    row_acc, row_div, row_y = acc[oh * Wq:], div[oh * Wq:], yp[oh * Wo:]
                    for ow in range(Wo):
                        row_y[ow] = row_acc[ow] / row_div[ow]


@njit(cache=True, inline="always")
def _spread_offset_pass(g, s, dxs, n):
    for o in range(n):
        dxs[o * s] += g[o]


@float32_parallel(**_JIT)
def _avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, count_include_pad, dx, n_chunks):
    # The forward's plan run backwards (as in the reference): every window's share g is
    # added, one kernel offset at a time, into a zeroed padded scratch laid out as in the
    # forward; the scratch is then cropped into dx. Garbage windows get g = 0.
    P, Ho, Wo = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    Hq, Wq, Wp = _scratch_shape(Ho, Wo, kh, kw, sh, sw)
    n = Ho * Wq
    div = _window_divisors(H, W, kh, kw, sh, sw, ph, pw, Ho, Wo, Wq, count_include_pad,
                           dx.dtype)
    ncopy = max(min(W, Wp - pw), 0)  # columns past Wp are in no window: zero gradient
    for chunk in prange(n_chunks):
        n_rows = sh * Hq
        scratch = np.empty(n_rows * Wp + Wp, dtype=dx.dtype)  # + Wp: garbage windows run past
        rows = scratch[:n_rows * Wp].reshape(n_rows, Wp)
        g = np.zeros(n, dtype=dx.dtype)  # garbage windows stay 0
        for p in range(chunk * P // n_chunks, (chunk + 1) * P // n_chunks):
            for oh in range(Ho):
                row_g, row_div, row_dy = g[oh * Wq:], div[oh * Wq:], dy[p, oh]
                for ow in range(Wo):
                    # Divide in dx's dtype so g is rounded exactly as the reference's is.
                    row_g[ow] = row_dy[ow] / row_div[ow]
            for k in range(scratch.size):
                scratch[k] = 0
            for i in range(kh):
                for j in range(kw):
                    dxs = scratch[_offset_start(i, j, sh, Hq, Wp):]
                    if sw == 1:
                        _spread_offset_pass(g, 1, dxs, n)
                    elif sw == 2:
                        _spread_offset_pass(g, 2, dxs, n)
                    else:
                        _spread_offset_pass(g, sw, dxs, n)
            for h in range(H):
                a, r = (h + ph) // sh, (h + ph) % sh
                dst = dx[p, h]
                if a >= Hq:  # below every window
                    for w in range(W):
                        dst[w] = 0
                    continue
                src = rows[r * Hq + a][pw:]
                for w in range(ncopy):
                    dst[w] = src[w]
                for w in range(ncopy, W):
                    dst[w] = 0


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C = x.shape[:2]
    Ho, Wo = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((N * C, Ho * Wo), dtype=x.dtype)
    _avg_pool_fwd(_planes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], bool(count_include_pad), Ho, Wo, y, _n_chunks(N * C))
    return y.reshape(N, C, Ho, Wo)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C, H, W = x_shape
    dx = np.empty((N * C, H, W), dtype=dy.dtype)
    _avg_pool_bwd(_planes(dy), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], bool(count_include_pad), dx, _n_chunks(N * C))
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------- global avg pool

@float32_parallel(**_JIT)
def _global_avg_fwd(x, y):
    P, HW = x.shape
    for p in prange(P):
        acc = 0.0  # float64 accumulator: planes can hold thousands of elements
        for i in range(HW):
            acc += x[p, i]
        y[p] = acc / HW


@float32_parallel(**_JIT)
def _global_avg_bwd(dy, dx):
    P, HW = dx.shape
    for p in prange(P):
        g = dy[p] / dx.dtype.type(HW)
        for i in range(HW):
            dx[p, i] = g


def global_avg_pool2d_forward(x):
    N, C, H, W = x.shape
    y = np.empty(N * C, dtype=x.dtype)
    _global_avg_fwd(np.ascontiguousarray(x).reshape(N * C, H * W), y)
    return y.reshape(N, C)


def global_avg_pool2d_backward(dy, x_shape):
    N, C, H, W = x_shape
    dx = np.empty((N * C, H * W), dtype=dy.dtype)
    _global_avg_bwd(np.ascontiguousarray(dy).reshape(N * C), dx)
    return dx.reshape(x_shape)
