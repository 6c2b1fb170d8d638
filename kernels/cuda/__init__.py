"""CUDA kernels (numba-cuda), the "cuda" backend: the functions of kernels/README.md
that exist here take and return `CudaArray`s (kernels/cuda/array.py) and give the
results of kernels/reference. Importing this package imports numba.cuda: do it only
when numba-cuda is installed (minidl.cuda.is_available() says).

Every function of kernels/README.md's contract for conv2d.py, batchnorm.py,
pooling.py and elementwise.py, plus the fused cross_entropy_forward/backward,
sgd_step, adam_step and rmsprop_step used by minidl's loss and optimizers. Elementwise ops,
reductions and matmul go through CudaArray's NumPy protocols (array.py).
"""
from __future__ import annotations

import numpy as np

from minidl.kernels.reference.pooling import pool_output_size

from . import activation as _act
from . import conv2d as _conv
from . import pooling as _pool
from . import batchnorm as _bn
from . import loss as _loss
from . import optim as _opt
from ._launch import REDUCE_BLOCKS, THREADS, grid1d
from .array import ALLOCATOR, CudaArray, DeviceMismatchError, mismatch  # noqa: F401


def _dev(a, dtype=None) -> CudaArray:
    """`a` as a CudaArray of `dtype` (a converted copy if it differs). Keep the result in
    a variable for as long as a kernel uses its `._dev`: a temporary's buffer goes back
    to the caching allocator as soon as the CudaArray dies, and `_dev(g)._dev` would hand
    the kernel memory that the next allocation reuses."""
    if isinstance(a, CudaArray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return CudaArray.from_host(np.asarray(a, dtype=dtype))


def _ncl(x):
    n, c = x.shape[0], x.shape[1]
    return n, c, x.size // max(n * c, 1)


# ---- elementwise.py -----------------------------------------------------------------

def bias_act_forward(x, b, act):
    x = _dev(x)
    y = CudaArray(x.shape, x.dtype)
    if y.size:
        n, c, inner = _ncl(x) if x.ndim >= 2 else (1, 1, 1)
        bb = _dev(b, x.dtype) if b is not None else x
        _act.bias_act_forward[grid1d(y.size)](x._dev, bb._dev, max(inner, 1), max(c, 1),
                                              b is not None, _act.ACTS[act], y._dev)
    return y


def act_backward(dy, y, act):
    dx = CudaArray(y.shape, y.dtype)
    if dx.size:
        dy = _dev(dy, y.dtype)
        _act.act_backward[grid1d(dx.size)](dy._dev, y._dev, _act.ACTS[act],
                                           dx._dev)
    return dx


# ---- batchnorm.py ---------------------------------------------------------------------

def _bn_blocks(c):
    return max(1, min(c, REDUCE_BLOCKS)), THREADS


# A fused ReLU (relu=True, relu_out=...) runs here as the activation kernels' own pass
# after (forward) or before (backward) batch norm's: the contract's results, unfused.

def batch_norm_train_forward(x, gamma, beta, eps, relu=False):
    n, c, L = _ncl(x)
    y = CudaArray(x.shape, x.dtype)
    mean, var = CudaArray((c,), x.dtype), CudaArray((c,), x.dtype)
    gamma, beta = _dev(gamma, x.dtype), _dev(beta, x.dtype)
    _bn.bn_train_forward[_bn_blocks(c)](x._dev, gamma._dev, beta._dev, n, c, L, float(eps),
                                        y._dev, mean._dev, var._dev)
    return (bias_act_forward(y, None, "relu") if relu else y), mean, var


def _bn_backward(dy, x, gamma, mean, var, eps, training):
    n, c, L = _ncl(x)
    dx = CudaArray(x.shape, x.dtype)
    dgamma, dbeta = CudaArray((c,), x.dtype), CudaArray((c,), x.dtype)
    dy, gamma, mean, var = (_dev(a, x.dtype) for a in (dy, gamma, mean, var))
    _bn.bn_backward[_bn_blocks(c)](dy._dev, x._dev, gamma._dev, mean._dev, var._dev, n, c, L,
                                   float(eps), training, dx._dev, dgamma._dev, dbeta._dev)
    return dx, dgamma, dbeta


def batch_norm_train_backward(dy, x, gamma, mean, var, eps, relu_out=None):
    if relu_out is not None:
        dy = act_backward(dy, relu_out, "relu")
    return _bn_backward(dy, x, gamma, mean, var, eps, True)


def batch_norm_eval_forward(x, gamma, beta, running_mean, running_var, eps, relu=False):
    n, c, L = _ncl(x)
    y = CudaArray(x.shape, x.dtype)
    if y.size:
        gamma, beta, rmean, rvar = (_dev(a, x.dtype)
                                    for a in (gamma, beta, running_mean, running_var))
        _bn.bn_eval_forward[grid1d(y.size)](x._dev, gamma._dev, beta._dev, rmean._dev,
                                            rvar._dev, c, L, float(eps), y._dev)
    return bias_act_forward(y, None, "relu") if relu else y


def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, eps, relu_out=None):
    if relu_out is not None:
        dy = act_backward(dy, relu_out, "relu")
    return _bn_backward(dy, x, gamma, running_mean, running_var, eps, False)


# ---- loss and optimizers (minidl-level fused kernels) -----------------------------------

def cross_entropy_forward(logits, target):
    """(logp (N, C), losses (N,)) for integer targets (N,) on the device."""
    n, c = logits.shape
    logp = CudaArray((n, c), logits.dtype)
    losses = CudaArray((n,), logits.dtype)
    bad = CudaArray.full((1,), 0, np.int32)
    if n:
        _loss.ce_forward[grid1d(n)](logits._dev, target._dev, c, logp._dev, losses._dev,
                                    bad._dev)
        if bad.item():
            raise ValueError(f"cross_entropy: target values must be in [0, {c})")
    return logp, losses


def cross_entropy_backward(logp, target, g, per_row: bool, mult: float):
    dx = CudaArray(logp.shape, logp.dtype)
    if dx.size:
        g = _dev(g, logp.dtype)
        _loss.ce_backward[grid1d(dx.size)](logp._dev, target._dev, logp.shape[1],
                                           g._dev, 1 if per_row else 0,
                                           float(mult), dx._dev)
    return dx


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    if p.size:
        g = _dev(g, p.dtype)
        _opt.sgd_step[grid1d(p.size)](p._dev, g._dev,
                                      (buf if buf is not None else p)._dev, lr, momentum,
                                      dampening, weight_decay, bool(nesterov), bool(first))


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
              bias_correction1, bias_correction2_sqrt):
    if p.size:
        g = _dev(g, p.dtype)
        _opt.adam_step[grid1d(p.size)](p._dev, g._dev, m._dev, v._dev,
                                       (vmax if vmax is not None else v)._dev, lr, beta1,
                                       beta2, eps, weight_decay, bool(decoupled),
                                       bool(amsgrad), bias_correction1, bias_correction2_sqrt)


def rmsprop_step(p, g, s, a, buf, lr, alpha, eps, weight_decay, momentum, centered):
    if p.size:
        g = _dev(g, p.dtype)
        _opt.rmsprop_step[grid1d(p.size)](p._dev, g._dev, s._dev,
                                          (a if a is not None else s)._dev,
                                          (buf if buf is not None else s)._dev, lr, alpha, eps,
                                          weight_decay, momentum, bool(centered))


# ---- conv2d.py ------------------------------------------------------------------------

def _conv_dims(x_shape, w_shape, stride, padding, dilation, groups):
    N, C, H, W = x_shape
    K, Cg, R, S = w_shape
    Ho = (H + 2 * padding[0] - dilation[0] * (R - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (S - 1) - 1) // stride[1] + 1
    return (N, C, H, W, K, Cg, R, S, Ho, Wo, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], K // groups)


_CONV_TABLES = {}  # conv2d.py's offset tables on the device, by geometry (a few per model)
_CONV_TABLES_MAX = 256  # past this many geometries (inputs of ever-changing sizes), start over


def _conv_table(key_build) -> CudaArray:
    key, build = key_build
    t = _CONV_TABLES.get(key)
    if t is None:
        if len(_CONV_TABLES) >= _CONV_TABLES_MAX:
            _CONV_TABLES.clear()  # (buffers go back to the allocator, in stream order)
        t = _CONV_TABLES[key] = CudaArray.from_host(build())
    return t


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    d = _conv_dims(x.shape, w.shape, stride, padding, dilation, groups)
    y = CudaArray((d[0], d[4], d[8], d[9]), x.dtype)
    if y.size:
        w = _dev(w, x.dtype)
        bb = _dev(b, x.dtype) if b is not None else w
        tab = _conv_table(_conv.x_offsets(d))
        _conv.launch_forward(x._dev, w._dev, bb._dev, b is not None, tab._dev, d, groups,
                             y._dev)
    return y


def conv2d_backward_input(dy, w, x_shape, stride, padding, dilation, groups):
    d = _conv_dims(x_shape, w.shape, stride, padding, dilation, groups)
    dx = CudaArray(x_shape, dy.dtype)
    if dx.size:
        w = _dev(w, dy.dtype)
        tab = _conv_table(_conv.dy_offsets(d))
        _conv.launch_backward_input(dy._dev, w._dev, tab._dev, d, groups, dx._dev)
    return dx


def conv2d_backward_weight(dy, x, w_shape, stride, padding, dilation, groups):
    """Split-K (conv2d.py): the splits' partial gradients, then their sum."""
    d = _conv_dims(x.shape, w_shape, stride, padding, dilation, groups)
    if 0 in tuple(w_shape):
        return CudaArray(w_shape, dy.dtype)
    x = _dev(x, dy.dtype)
    splits, chunk = _conv.weight_splits(d, groups)
    part = CudaArray((splits,) + tuple(w_shape), dy.dtype)
    tab = _conv_table(_conv.x_offsets(d))
    _conv.launch_backward_weight(dy._dev, x._dev, tab._dev, d, groups, splits, chunk,
                                 part._dev)
    return part.reshape(w_shape) if splits == 1 else part.sum(axis=0)


def conv2d_backward_bias(dy):
    return dy.sum(axis=(0, 2, 3))


# ---- pooling.py -------------------------------------------------------------------------

def _pool_dims(x_shape, kernel_size, stride, padding, ceil_mode):
    H, W = x_shape[2], x_shape[3]
    Ho = pool_output_size(H, kernel_size[0], stride[0], padding[0], ceil_mode)
    Wo = pool_output_size(W, kernel_size[1], stride[1], padding[1], ceil_mode)
    return (H, W, Ho, Wo, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
            padding[1])


def max_pool2d_forward(x, kernel_size, stride, padding, ceil_mode):
    d = _pool_dims(x.shape, kernel_size, stride, padding, ceil_mode)
    y = CudaArray(x.shape[:2] + (d[2], d[3]), x.dtype)
    arg = CudaArray(y.shape, np.int64)
    if y.size:
        _pool.max_forward[grid1d(y.size)](x._dev, *d, y._dev, arg._dev)
    return y, arg


def max_pool2d_backward(dy, argmax, x_shape):
    N, C, H, W = x_shape
    dx = CudaArray.full(x_shape, 0, dy.dtype)
    if dy.size:
        _pool.max_backward[grid1d(dy.size)](dy._dev, argmax._dev, H * W,
                                            dy.shape[2] * dy.shape[3], dx._dev)
    return dx


def avg_pool2d_forward(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    d = _pool_dims(x.shape, kernel_size, stride, padding, ceil_mode)
    y = CudaArray(x.shape[:2] + (d[2], d[3]), x.dtype)
    if y.size:
        _pool.avg_forward[grid1d(y.size)](x._dev, *d, bool(count_include_pad), y._dev)
    return y


def avg_pool2d_backward(dy, x_shape, kernel_size, stride, padding, ceil_mode,
                        count_include_pad):
    H, W = x_shape[2], x_shape[3]
    Ho, Wo = dy.shape[2:]
    dx = CudaArray(x_shape, dy.dtype)
    if dx.size:
        _pool.avg_backward[grid1d(dx.size)](dy._dev, H, W, Ho, Wo, kernel_size[0],
                                            kernel_size[1], stride[0], stride[1], padding[0],
                                            padding[1], bool(count_include_pad), dx._dev)
    return dx


def global_avg_pool2d_forward(x):
    n, c = x.shape[:2]
    return x.reshape(n, c, -1).mean(axis=2)


def global_avg_pool2d_backward(dy, x_shape):
    n, c, h, w = x_shape
    g = dy * (1.0 / (h * w))
    return g.reshape(n, c, 1, 1).broadcast_to(x_shape)
