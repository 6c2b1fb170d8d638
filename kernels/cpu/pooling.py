"""Pooling as parallel Numba kernels: the "numba" backend.

Same semantics as kernels/reference/pooling.py (read that first). Every kernel runs
`prange` over the N*C (h, w) planes: pooling never mixes planes, so each thread owns
whole planes of its outputs and the backward scatter-adds cannot race, even where
windows overlap (stride < kernel).

The Python wrappers allocate outputs and flatten arrays to (N*C, H, W) C-contiguous
views, so each kernel compiles once per dtype (float32, float64).
"""
import numpy as np
from numba import njit, prange

from kernels.reference.pooling import pool_output_size

_JIT = dict(parallel=True, cache=True, fastmath=False)


def _output_hw(x_shape, kernel_size, stride, padding, ceil_mode):
    Ho = pool_output_size(x_shape[2], kernel_size[0], stride[0], padding[0], ceil_mode)
    Wo = pool_output_size(x_shape[3], kernel_size[1], stride[1], padding[1], ceil_mode)
    return Ho, Wo


def _planes(a):
    """(N, C, H, W) -> C-contiguous (N*C, H, W), a view when `a` is already contiguous."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


# ----------------------------------------------------------------------------- max pool

@njit(**_JIT)
def _max_pool_fwd(x, kh, kw, sh, sw, ph, pw, y, argmax):
    P, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            # Clip the window to the real input: padding is -inf and never wins.
            h0 = oh * sh - ph
            h1 = min(h0 + kh, H)
            h0 = max(h0, 0)
            for ow in range(Wo):
                w0 = ow * sw - pw
                w1 = min(w0 + kw, W)
                w0 = max(w0, 0)
                best = -np.inf
                best_i = h0 * W + w0  # kept if every element is -inf (PyTorch does the same)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[p, ih, iw]
                        # Strict '>' keeps the first max on ties; NaN always takes over,
                        # so a NaN propagates and the last NaN wins, as in PyTorch.
                        if v > best or v != v:
                            best = v
                            best_i = ih * W + iw
                y[p, oh, ow] = best
                argmax[p, oh, ow] = best_i


@njit(**_JIT)
def _max_pool_bwd(dy, argmax, dx):
    # Flat (P, Ho*Wo) / (P, H*W) planes: argmax indexes dx directly, with no per-element
    # // and % by W (integer division made this kernel 3-4x slower).
    P, n_out = dy.shape
    for p in prange(P):
        dx[p, :] = 0
        for o in range(n_out):
            dx[p, argmax[p, o]] += dy[p, o]  # overlapping windows accumulate


def max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode):
    N, C = x.shape[:2]
    Ho, Wo = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((N * C, Ho, Wo), dtype=x.dtype)
    argmax = np.empty((N * C, Ho, Wo), dtype=np.int64)
    _max_pool_fwd(_planes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], y, argmax)
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


@njit(**_JIT)
def _avg_pool_fwd(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    P, H, W = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            hs = oh * sh - ph
            dh = _avg_divisor(hs, kh, H, ph, count_include_pad)
            h0, h1 = max(hs, 0), min(hs + kh, H)
            for ow in range(Wo):
                ws = ow * sw - pw
                dw = _avg_divisor(ws, kw, W, pw, count_include_pad)
                w0, w1 = max(ws, 0), min(ws + kw, W)
                acc = 0.0  # float64 accumulator: tiny windows, free accuracy
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        acc += x[p, ih, iw]
                y[p, oh, ow] = acc / (dh * dw)


@njit(**_JIT)
def _avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, count_include_pad, dx):
    P, Ho, Wo = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    for p in prange(P):
        dx[p, :, :] = 0
        for oh in range(Ho):
            hs = oh * sh - ph
            dh = _avg_divisor(hs, kh, H, ph, count_include_pad)
            h0, h1 = max(hs, 0), min(hs + kh, H)
            for ow in range(Wo):
                ws = ow * sw - pw
                dw = _avg_divisor(ws, kw, W, pw, count_include_pad)
                w0, w1 = max(ws, 0), min(ws + kw, W)
                # Divide in dx's dtype so g is rounded exactly as the reference's is.
                g = dy[p, oh, ow] / dx.dtype.type(dh * dw)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        dx[p, ih, iw] += g


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C = x.shape[:2]
    Ho, Wo = _output_hw(x.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((N * C, Ho, Wo), dtype=x.dtype)
    _avg_pool_fwd(_planes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], bool(count_include_pad), y)
    return y.reshape(N, C, Ho, Wo)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, C, H, W = x_shape
    dx = np.empty((N * C, H, W), dtype=dy.dtype)
    _avg_pool_bwd(_planes(dy), kernel_size[0], kernel_size[1], stride[0], stride[1],
                  padding[0], padding[1], bool(count_include_pad), dx)
    return dx.reshape(x_shape)


# ----------------------------------------------------------------------- global avg pool

@njit(**_JIT)
def _global_avg_fwd(x, y):
    P, HW = x.shape
    for p in prange(P):
        acc = 0.0  # float64 accumulator: planes can hold thousands of elements
        for i in range(HW):
            acc += x[p, i]
        y[p] = acc / HW


@njit(**_JIT)
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
