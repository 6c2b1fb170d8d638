"""Activations. Each backward is written in terms of the forward's output (relu' = [y > 0],
sigmoid' = y(1-y), tanh' = 1-y^2), so only the output is saved. The backwards of relu,
sigmoid and tanh run as the backend's fused `act_backward` kernel: one pass instead of
NumPy's two or three temporaries. So do the forwards of relu and sigmoid on float arrays
(the kernel `bias_act_forward` without a bias), which beat np.maximum and scipy's expit;
np.tanh is vectorized in NumPy itself and beats the kernel, so it stays (numbers:
benchmarks/DESIGN.md, activation.py)."""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..autograd import record
from ..backend import backend_for
from ..tensor import Tensor
from ._kernel_args import dense, dense_like
from ._util import lift


def _act_backward(a, out, act):
    def backward(g, needs):
        y, restore = dense(out)
        return (restore(backend_for(a).act_backward(dense_like(g, out), y, act)),)
    return backward


def _forward(a, act, numpy_fn):
    """act(a.data): the backend's kernel for the float dtypes it takes, else numpy_fn.
    The kernel runs over the array's memory in order, so the output keeps its format."""
    if a.data.dtype in (np.float32, np.float64):
        x, restore = dense(a.data)
        return restore(backend_for(a).bias_act_forward(x, None, act))
    return numpy_fn(a.data)


def relu(a) -> Tensor:
    a = lift(a)
    out = _forward(a, "relu", lambda x: np.maximum(x, 0))
    return record(out, (a,), _act_backward(a, out, "relu"), "Relu")


def sigmoid(a) -> Tensor:
    a = lift(a)
    out = _forward(a, "sigmoid", expit)  # no overflow for large |x|, unlike 1/(1+exp(-x))
    return record(out, (a,), _act_backward(a, out, "sigmoid"), "Sigmoid")


def tanh(a) -> Tensor:
    a = lift(a)
    out = np.tanh(a.data)
    return record(out, (a,), _act_backward(a, out, "tanh"), "Tanh")


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)  # exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(a, axis=-1, *, dim=None) -> Tensor:
    a = lift(a)
    axis = axis if dim is None else dim
    out = np.exp(_log_softmax(a.data, axis))

    def backward(g, needs):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
    return record(out, (a,), backward, "Softmax")


def log_softmax(a, axis=-1, *, dim=None) -> Tensor:
    a = lift(a)
    axis = axis if dim is None else dim
    out = _log_softmax(a.data, axis)

    def backward(g, needs):
        return (g - np.exp(out) * g.sum(axis=axis, keepdims=True),)
    return record(out, (a,), backward, "LogSoftmax")
