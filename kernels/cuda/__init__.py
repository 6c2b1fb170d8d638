"""CUDA kernels (numba-cuda), the "cuda" backend: the functions of kernels/README.md
that exist here take and return `CudaArray`s (kernels/cuda/array.py) and give the
results of kernels/reference. Importing this package imports numba.cuda: do it only
when numba-cuda is installed (minidl.cuda.is_available() says).

Implemented: bias_act_forward, act_backward, batch_norm_train_forward/backward,
batch_norm_eval_forward/backward, plus the fused cross_entropy_forward/backward,
sgd_step and adam_step used by minidl's loss and optimizers. Everything elementwise,
reductions and matmul go through CudaArray's NumPy protocols (array.py).
Not yet: conv2d_*, max/avg/global pooling (they raise NotImplementedError).
"""
from __future__ import annotations

import numpy as np

from . import activation as _act
from . import batchnorm as _bn
from . import loss as _loss
from . import optim as _opt
from ._launch import REDUCE_BLOCKS, THREADS, grid1d
from .array import ALLOCATOR, CudaArray, DeviceMismatchError, mismatch  # noqa: F401


def _dev(a, dtype=None) -> CudaArray:
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
        bb = _dev(b, x.dtype)._dev if b is not None else x._dev
        _act.bias_act_forward[grid1d(y.size)](x._dev, bb, max(inner, 1), max(c, 1),
                                              b is not None, _act.ACTS[act], y._dev)
    return y


def act_backward(dy, y, act):
    dx = CudaArray(y.shape, y.dtype)
    if dx.size:
        _act.act_backward[grid1d(dx.size)](_dev(dy, y.dtype)._dev, y._dev, _act.ACTS[act],
                                           dx._dev)
    return dx


# ---- batchnorm.py ---------------------------------------------------------------------

def _bn_blocks(c):
    return max(1, min(c, REDUCE_BLOCKS)), THREADS


def batch_norm_train_forward(x, gamma, beta, eps):
    n, c, L = _ncl(x)
    y = CudaArray(x.shape, x.dtype)
    mean, var = CudaArray((c,), x.dtype), CudaArray((c,), x.dtype)
    _bn.bn_train_forward[_bn_blocks(c)](x._dev, _dev(gamma, x.dtype)._dev,
                                        _dev(beta, x.dtype)._dev, n, c, L, float(eps),
                                        y._dev, mean._dev, var._dev)
    return y, mean, var


def _bn_backward(dy, x, gamma, mean, var, eps, training):
    n, c, L = _ncl(x)
    dx = CudaArray(x.shape, x.dtype)
    dgamma, dbeta = CudaArray((c,), x.dtype), CudaArray((c,), x.dtype)
    _bn.bn_backward[_bn_blocks(c)](_dev(dy, x.dtype)._dev, x._dev, _dev(gamma, x.dtype)._dev,
                                   _dev(mean, x.dtype)._dev, _dev(var, x.dtype)._dev, n, c, L,
                                   float(eps), training, dx._dev, dgamma._dev, dbeta._dev)
    return dx, dgamma, dbeta


def batch_norm_train_backward(dy, x, gamma, mean, var, eps):
    return _bn_backward(dy, x, gamma, mean, var, eps, True)


def batch_norm_eval_forward(x, gamma, beta, running_mean, running_var, eps):
    n, c, L = _ncl(x)
    y = CudaArray(x.shape, x.dtype)
    if y.size:
        _bn.bn_eval_forward[grid1d(y.size)](x._dev, _dev(gamma, x.dtype)._dev,
                                            _dev(beta, x.dtype)._dev,
                                            _dev(running_mean, x.dtype)._dev,
                                            _dev(running_var, x.dtype)._dev, c, L, float(eps),
                                            y._dev)
    return y


def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, eps):
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
        _loss.ce_backward[grid1d(dx.size)](logp._dev, target._dev, logp.shape[1],
                                           _dev(g, logp.dtype)._dev, 1 if per_row else 0,
                                           float(mult), dx._dev)
    return dx


def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    if p.size:
        _opt.sgd_step[grid1d(p.size)](p._dev, _dev(g, p.dtype)._dev,
                                      (buf if buf is not None else p)._dev, lr, momentum,
                                      dampening, weight_decay, bool(nesterov), bool(first))


def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
              bias_correction1, bias_correction2_sqrt):
    if p.size:
        _opt.adam_step[grid1d(p.size)](p._dev, _dev(g, p.dtype)._dev, m._dev, v._dev,
                                       (vmax if vmax is not None else v)._dev, lr, beta1,
                                       beta2, eps, weight_decay, bool(decoupled),
                                       bool(amsgrad), bias_correction1, bias_correction2_sqrt)


def __getattr__(name):
    if name.startswith(("conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d")):
        def missing(*args, **kwargs):
            raise NotImplementedError(f"{name} has no CUDA kernel yet (kernels/cuda); run "
                                      f"this model on the CPU")
        return missing
    raise AttributeError(f"module 'kernels.cuda' has no attribute {name!r}")
