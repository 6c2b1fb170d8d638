"""Activations. Each backward is written in terms of the forward's output where that is
cheaper (sigmoid' = y(1-y), tanh' = 1-y^2), so only the output is saved."""
from __future__ import annotations

import numpy as np
from scipy.special import expit

from ..autograd import record
from ..tensor import Tensor
from ._util import lift


def relu(a) -> Tensor:
    a = lift(a)
    out = np.maximum(a.data, 0)
    return record(out, (a,), lambda g: (g * (out > 0),), "Relu")


def sigmoid(a) -> Tensor:
    a = lift(a)
    out = expit(a.data)  # no overflow for large |x|, unlike 1/(1+exp(-x))
    return record(out, (a,), lambda g: (g * out * (1 - out),), "Sigmoid")


def tanh(a) -> Tensor:
    a = lift(a)
    out = np.tanh(a.data)
    return record(out, (a,), lambda g: (g * (1 - out * out),), "Tanh")


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)  # exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(a, axis=-1, *, dim=None) -> Tensor:
    a = lift(a)
    axis = axis if dim is None else dim
    out = np.exp(_log_softmax(a.data, axis))

    def backward(g):
        return (out * (g - (g * out).sum(axis=axis, keepdims=True)),)
    return record(out, (a,), backward, "Softmax")


def log_softmax(a, axis=-1, *, dim=None) -> Tensor:
    a = lift(a)
    axis = axis if dim is None else dim
    out = _log_softmax(a.data, axis)

    def backward(g):
        return (g - np.exp(out) * g.sum(axis=axis, keepdims=True),)
    return record(out, (a,), backward, "LogSoftmax")
