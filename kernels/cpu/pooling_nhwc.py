"""Pooling with the channels in vector lanes: (B, H, W, L) arrays, L innermost.

Why: pooled planes are small (7x7 to 28x28), and a kernel that walks one plane at a time
spends its time on per-plane bookkeeping and on rows too short to vectorize. With the
channels innermost, every kernel tap is one contiguous vector operation over L lanes,
whatever the plane size. This is the layout of a channels_last (NHWC) tensor, B = N and
L = C: these are the pooling kernels of channels_last tensors. An NCHW tensor can be
brought here by one blocked transpose, (N*C, H*W) -> (H*W, N*C), i.e. B = 1 and
L = N*C (the *_lanes functions below), but the two transposes cost more than the lanes
save on all but the smallest NCHW planes (numbers: benchmarks/DESIGN.md,
pooling_nhwc.py), so `kernels/cpu/pooling.py` keeps its per-plane kernels for NCHW
input. Results are bitwise those of the reference (tests/kernels/test_pooling_nhwc.py).

Semantics are the reference's (kernels/reference/pooling.py): max pooling reads padding
as -inf, keeps the first maximum in row-major scan order, propagates NaN (the last NaN
wins), and reports the first real element of a window whose elements are all -inf;
argmax is the flat index h*W + w into the (H, W) plane. Average pooling sums the real
elements in scan order (padding adds exact zeros, so the sums are the reference's) and
divides by the reference's divisor; its backward adds each window's share in the
reference's order of kernel offsets.

Optimizations:
* one vector pass over a block of lanes per kernel tap: compare/select (max) or add (avg);
  LLVM vectorizes the lane loops (contiguous, no branches); the running max and its
  argmax go from one pair of small buffers to the other at each tap, never updated in
  place (LLVM would make `y = v if take else y` a conditional store, which does not
  vectorize); the argmax runs as int32 (float32's width: one comparison mask selects
  both) and is widened to int64 when stored;
* parallel tasks are (sample, output row, lane block) triples: balanced even when B = 1,
  and each task owns its outputs (no races, results independent of the thread count);
* the max backward scatters through argmax into the task's own lane block of dx.

Debugging: NUMBA_DISABLE_JIT=1 runs these as plain Python (slow, same results).
"""
import numpy as np
from numba import njit, prange

from minidl.kernels.cpu.pooling import _avg_divisor, _output_hw

_JIT = dict(parallel=True, cache=True, fastmath=False)
LANE_BLOCK = 512  # lanes per task: a (kh, W, 512) float32 slab of x stays in L1/L2


@njit(cache=True)
def _n_lane_blocks(L):
    return max(1, -(-L // LANE_BLOCK))


@njit(cache=True, inline="always")
def _row_task(task, rows, L):
    """(b, row, l0, l1): the sample, output row and lane block [l0, l1) of a task, the
    tasks being numbered (b * rows + row) * n_lane_blocks + block."""
    nlb = _n_lane_blocks(L)
    b, rest = task // (rows * nlb), task % (rows * nlb)
    l0 = (rest % nlb) * LANE_BLOCK
    return b, rest // nlb, l0, min(l0 + LANE_BLOCK, L)


@njit(**_JIT)
def transpose(a, out):
    """out[q, p] = a[p, q] in 32x32 tiles: (P, Q) planes <-> (Q, P) lanes."""
    P, Q = a.shape
    nq = (Q + 31) // 32
    for t in prange(((P + 31) // 32) * nq):
        p0, q0 = (t // nq) * 32, (t % nq) * 32
        for p in range(p0, min(p0 + 32, P)):
            for q in range(q0, min(q0 + 32, Q)):
                out[q, p] = a[p, q]


@njit(cache=True, inline="always")
def _max_step(xr, idx, ys, as_, yd, ad):
    """One kernel tap over a lane block: (yd, ad) = the better of (xr, idx) and (ys, as_).
    Written from one pair of buffers into the other, never in place: LLVM turns an
    in-place `y = v if take else y` into a conditional store, which does not vectorize."""
    for lane in range(xr.size):
        v = xr[lane]
        best = ys[lane]
        take = (v > best) | (v != v)  # strict: the first max stays; NaN wins
        yd[lane] = v if take else best
        ad[lane] = idx if take else as_[lane]


@njit(**_JIT)
def max_pool_fwd(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """x (B, H, W, L) -> y, argmax (B, Ho, Wo, L)."""
    B, H, W, L = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for task in prange(B * Ho * _n_lane_blocks(L)):
        b, oh, l0, l1 = _row_task(task, Ho, L)
        n = l1 - l0
        # ping-pong buffers for the running max and where it was (see _max_step)
        y0, y1 = np.empty(n, dtype=x.dtype), np.empty(n, dtype=x.dtype)
        # int32 positions: as wide as float32 values, so a comparison's mask selects
        # both in the same lanes (int64 needs a mask conversion per step)
        a0, a1 = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        for ow in range(Wo):
            w0 = ow * sw - pw
            ws, we = max(w0, 0), min(w0 + kw, W)
            first = np.int32(hs * W + ws)
            for lane in range(n):
                y0[lane] = -np.inf
                a0[lane] = first
            ys, as_, yd, ad = y0, a0, y1, a1
            for h in range(hs, he):
                for w in range(ws, we):
                    _max_step(x[b, h, w, l0:l1], np.int32(h * W + w), ys, as_, yd, ad)
                    ys, as_, yd, ad = yd, ad, ys, as_
            # Lane loops index views from 0: LLVM then knows the indices are not
            # negative (no wraparound selects) and vectorizes them.
            yr, ar = y[b, oh, ow, l0:l1], argmax[b, oh, ow, l0:l1]
            for lane in range(n):
                yr[lane] = ys[lane]
                ar[lane] = as_[lane]


@njit(**_JIT)
def max_pool_bwd(dy, argmax, dx):
    """dy, argmax (B, Ho, Wo, L) -> dx (B, H*W, L) (zeroed here)."""
    B, Ho, Wo, L = dy.shape
    nlb = _n_lane_blocks(L)
    for task in prange(B * nlb):
        b, l0 = task // nlb, (task % nlb) * LANE_BLOCK
        l1 = min(l0 + LANE_BLOCK, L)
        d = dx[b, :, l0:l1]
        for q in range(d.shape[0]):
            dq = d[q]
            for lane in range(l1 - l0):
                dq[lane] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                g, a = dy[b, oh, ow, l0:l1], argmax[b, oh, ow, l0:l1]
                for lane in range(l1 - l0):
                    d[a[lane], lane] += g[lane]  # overlapping windows accumulate


@njit(**_JIT)
def avg_pool_fwd(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    B, H, W, L = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for task in prange(B * Ho * _n_lane_blocks(L)):
        b, oh, l0, l1 = _row_task(task, Ho, L)
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        dh = _avg_divisor(h0, kh, H, ph, count_include_pad)
        for ow in range(Wo):
            w0 = ow * sw - pw
            ws, we = max(w0, 0), min(w0 + kw, W)
            div = x.dtype.type(dh * _avg_divisor(w0, kw, W, pw, count_include_pad))
            yr = y[b, oh, ow, l0:l1]
            for lane in range(l1 - l0):
                yr[lane] = 0
            for h in range(hs, he):
                for w in range(ws, we):
                    xr = x[b, h, w, l0:l1]
                    for lane in range(l1 - l0):
                        yr[lane] += xr[lane]
            for lane in range(l1 - l0):
                yr[lane] = yr[lane] / div


@njit(cache=True)
def _covering(size, k, s, p, n_out):
    """For each input index x < size along one axis, the outputs o whose window covers
    it (o*s - p + i == x for a kernel offset i < k), listed in increasing i: cnt[x] of
    them, in who[x, :cnt[x]]. Built once per call, so the backward's inner loops do no
    integer division (a `%` and a `//` per kernel offset and pixel were most of its
    time)."""
    cnt = np.zeros(size, np.int64)
    who = np.empty((size, k), np.int64)
    for x in range(size):
        for i in range(k):
            a = x + p - i
            if a >= 0 and a % s == 0 and a // s < n_out:
                who[x, cnt[x]] = a // s
                cnt[x] += 1
    return cnt, who


@njit(**_JIT)
def avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, count_include_pad, dx):
    """dx[b, h, w] = sum of the shares dy/divisor of the windows covering (h, w), added
    in the reference's order (kernel offset (i, j) row-major). The shares are divided
    once per window, in a first pass, not once per covered pixel (kh*kw divisions per
    window with a 3x3 kernel); the same divisions, so the same bits."""
    B, Ho, Wo, L = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    share = np.empty_like(dy)
    for t in prange(B * Ho):
        b, oh = t // Ho, t % Ho
        dh = _avg_divisor(oh * sh - ph, kh, H, ph, count_include_pad)
        for ow in range(Wo):
            div = dx.dtype.type(dh * _avg_divisor(ow * sw - pw, kw, W, pw,
                                                  count_include_pad))
            g, q = dy[b, oh, ow], share[b, oh, ow]
            for lane in range(L):
                q[lane] = g[lane] / div
    hcnt, hwho = _covering(H, kh, sh, ph, Ho)  # windows covering row h, by offset i
    wcnt, wwho = _covering(W, kw, sw, pw, Wo)  # ... column w, by offset j
    for task in prange(B * H * _n_lane_blocks(L)):
        b, h, l0, l1 = _row_task(task, H, L)
        for w in range(W):
            dr = dx[b, h, w, l0:l1]
            for lane in range(l1 - l0):
                dr[lane] = 0
            for qi in range(hcnt[h]):
                oh = hwho[h, qi]
                for qj in range(wcnt[w]):
                    g = share[b, oh, wwho[w, qj], l0:l1]
                    for lane in range(l1 - l0):
                        dr[lane] += g[lane]


# ------------------------------------------------------------- NCHW through the lanes

def nchw_to_lanes(x):
    """(N, C, H, W) -> (1, H, W, N*C) C-contiguous."""
    N, C, H, W = x.shape
    out = np.empty((H * W, N * C), dtype=x.dtype)
    transpose(np.ascontiguousarray(x).reshape(N * C, H * W), out)
    return out.reshape(1, H, W, N * C)


def lanes_to_nchw(a, N, C):
    """(1, H, W, N*C) -> (N, C, H, W) C-contiguous."""
    H, W = a.shape[1], a.shape[2]
    out = np.empty((N * C, H * W), dtype=a.dtype)
    transpose(a.reshape(H * W, N * C), out)
    return out.reshape(N, C, H, W)


def max_pool2d_forward_lanes(x, kernel_size, stride, padding, Ho, Wo):
    """NCHW in and out; argmax is returned as an (N, C, Ho, Wo) view of its lanes array
    (the backward below takes it back without a copy)."""
    N, C = x.shape[:2]
    xl = nchw_to_lanes(x)
    y = np.empty((1, Ho, Wo, N * C), dtype=x.dtype)
    argmax = np.empty((1, Ho, Wo, N * C), dtype=np.int64)
    max_pool_fwd(xl, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], y, argmax)
    return lanes_to_nchw(y, N, C), argmax.reshape(Ho, Wo, N, C).transpose(2, 3, 0, 1)


def is_lanes_view(argmax) -> bool:
    """True for the argmax view that max_pool2d_forward_lanes returns."""
    return argmax.ndim == 4 and argmax.transpose(2, 3, 0, 1).flags.c_contiguous \
        and not argmax.flags.c_contiguous


def max_pool2d_backward_lanes(dy, argmax, x_shape):
    N, C, H, W = x_shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    am = argmax.transpose(2, 3, 0, 1).reshape(1, Ho, Wo, N * C)
    dx = np.empty((1, H * W, N * C), dtype=dy.dtype)
    max_pool_bwd(nchw_to_lanes(dy), am, dx)
    return lanes_to_nchw(dx.reshape(1, H, W, N * C), N, C)


def avg_pool2d_forward_lanes(x, kernel_size, stride, padding, count_include_pad, Ho, Wo):
    N, C = x.shape[:2]
    y = np.empty((1, Ho, Wo, N * C), dtype=x.dtype)
    avg_pool_fwd(nchw_to_lanes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                 padding[0], padding[1], bool(count_include_pad), y)
    return lanes_to_nchw(y, N, C)


def avg_pool2d_backward_lanes(dy, x_shape, kernel_size, stride, padding, count_include_pad):
    N, C, H, W = x_shape
    dx = np.empty((1, H, W, N * C), dtype=dy.dtype)
    avg_pool_bwd(nchw_to_lanes(dy), kernel_size[0], kernel_size[1], stride[0], stride[1],
                 padding[0], padding[1], bool(count_include_pad), dx)
    return lanes_to_nchw(dx, N, C)


# ------------------------------------------------ channels_last entry points (N, H, W, C)

def max_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode):
    """x (N, H, W, C) -> y, argmax (N, Ho, Wo, C); argmax holds flat h*W + w."""
    N, H, W, C = x.shape
    Ho, Wo = _output_hw((N, C, H, W), kernel_size, stride, padding, ceil_mode)
    y = np.empty((N, Ho, Wo, C), dtype=x.dtype)
    argmax = np.empty((N, Ho, Wo, C), dtype=np.int64)
    max_pool_fwd(x, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], y, argmax)
    return y, argmax


def max_pool2d_backward_nhwc(dy, argmax, x_shape):
    N, H, W, C = x_shape
    dx = np.empty((N, H * W, C), dtype=dy.dtype)
    max_pool_bwd(dy, argmax, dx)
    return dx.reshape(x_shape)


def avg_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, H, W, C = x.shape
    Ho, Wo = _output_hw((N, C, H, W), kernel_size, stride, padding, ceil_mode)
    y = np.empty((N, Ho, Wo, C), dtype=x.dtype)
    avg_pool_fwd(x, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], bool(count_include_pad), y)
    return y


def avg_pool2d_backward_nhwc(dy, x_shape, kernel_size, stride, padding, ceil_mode,
                             count_include_pad):
    dx = np.empty(x_shape, dtype=dy.dtype)
    avg_pool_bwd(dy, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], bool(count_include_pad), dx)
    return dx


def global_avg_pool2d_forward_nhwc(x):
    """x (N, H, W, C) -> (N, C), summed in float64 like the NCHW kernel."""
    N, H, W, C = x.shape
    s = x.reshape(N, H * W, C).sum(axis=1, dtype=np.float64)
    return (s / (H * W)).astype(x.dtype)


def global_avg_pool2d_backward_nhwc(dy, x_shape):
    N, H, W, C = x_shape
    g = dy / dy.dtype.type(H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, None, None, :], x_shape))
