"""Pooling ops as tape nodes over the backend's kernels."""
from __future__ import annotations

import numpy as np

from .. import layout as mf
from ..autograd import record
from ..backend import backend_for
from ..tensor import Tensor
from ._kernel_args import check_ndim, contiguous, pair
from ._util import ShapeError


def _pool_args(op, x, kernel_size, stride, padding):
    check_ndim(op, "input", x, (4,), "(N, C, H, W)")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: expected a floating input, got {x.dtype}")
    k = pair(kernel_size, "kernel_size", op)
    s = k if stride is None or stride == () else pair(stride, "stride", op)
    p = pair(padding, "padding", op)
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(f"{op}: need kernel_size >= 1, stride >= 1, padding >= 0; got "
                         f"{k}, {s}, {p}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"{op}: padding {p} must be at most half of kernel_size {k}")
    for size, kk, pp in zip(x.shape[2:], k, p):
        if size + 2 * pp < kk:
            raise ShapeError(f"{op}: kernel_size {k} is larger than the padded input "
                             f"{x.shape[2:]} (padding {p})")
    return k, s, p


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode=False) -> Tensor:
    k, s, p = _pool_args("max_pool2d", x, kernel_size, stride, padding)
    K = backend_for(x)
    shape = x.shape
    if mf.is_channels_last(x.data):  # channels in vector lanes, output channels_last too
        n, c, h, w = shape
        y, argmax = K.max_pool2d_forward_nhwc(mf.nhwc(x.data), k, s, p, bool(ceil_mode))

        def backward(g, needs):
            return (mf.from_nhwc(K.max_pool2d_backward_nhwc(mf.nhwc(g), argmax,
                                                            (n, h, w, c), k, s, p)),)
        return record(mf.from_nhwc(y), (x,), backward, "MaxPool2d")

    out, argmax = K.max_pool2d_forward(contiguous(x.data), k, s, p, bool(ceil_mode))

    def backward(g, needs):
        return (K.max_pool2d_backward(contiguous(g), argmax, shape),)
    return record(out, (x,), backward, "MaxPool2d")


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True) -> Tensor:
    k, s, p = _pool_args("avg_pool2d", x, kernel_size, stride, padding)
    K = backend_for(x)
    args = (k, s, p, bool(ceil_mode), bool(count_include_pad))
    shape = x.shape
    if mf.is_channels_last(x.data):
        n, c, h, w = shape
        out = mf.from_nhwc(K.avg_pool2d_forward_nhwc(mf.nhwc(x.data), *args))

        def backward(g, needs):
            return (mf.from_nhwc(K.avg_pool2d_backward_nhwc(mf.nhwc(g), (n, h, w, c), *args)),)
        return record(out, (x,), backward, "AvgPool2d")

    out = K.avg_pool2d_forward(contiguous(x.data), *args)

    def backward(g, needs):
        return (K.avg_pool2d_backward(contiguous(g), shape, *args),)
    return record(out, (x,), backward, "AvgPool2d")


def adaptive_avg_pool2d(x: Tensor, output_size=1) -> Tensor:
    """Only output_size 1 (global average pooling): (N, C, H, W) -> (N, C, 1, 1)."""
    check_ndim("adaptive_avg_pool2d", "input", x, (4,), "(N, C, H, W)")
    if pair(output_size, "output_size", "adaptive_avg_pool2d") != (1, 1):
        raise NotImplementedError("adaptive_avg_pool2d: only output_size=1 is supported")
    K = backend_for(x)
    n, c, h, w = x.shape
    if mf.is_channels_last(x.data):
        y = K.global_avg_pool2d_forward_nhwc(mf.nhwc(x.data))
        # (N, C, 1, 1) with channels_last strides, as PyTorch gives
        out = mf.from_nhwc(y.reshape(n, 1, 1, c))

        def backward(g, needs):
            return (mf.from_nhwc(K.global_avg_pool2d_backward_nhwc(
                np.ascontiguousarray(g.reshape(n, c)), (n, h, w, c))),)
        return record(out, (x,), backward, "AdaptiveAvgPool2d")

    out = K.global_avg_pool2d_forward(contiguous(x.data)).reshape(n, c, 1, 1)
    shape = x.shape

    def backward(g, needs):
        return (K.global_avg_pool2d_backward(contiguous(g.reshape(n, c)), shape),)
    return record(out, (x,), backward, "AdaptiveAvgPool2d")
