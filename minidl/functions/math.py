"""Elementwise arithmetic with NumPy broadcasting. Each op: forward, then its local
backward right beside it. Gradients are reduced back to each input's shape."""
from __future__ import annotations

import numpy as np

from ..autograd import record
from ..tensor import Tensor
from ._util import broadcast_error, lift, lift_pair, unbroadcast


def _binary(op_name, ufunc, a, b):
    a, b = lift_pair(a, b)
    try:
        return a, b, ufunc(a.data, b.data)
    except ValueError:
        raise broadcast_error(op_name, a, b) from None


def add(a, b) -> Tensor:
    a, b, out = _binary("add", np.add, a, b)
    sa, sb = a.shape, b.shape

    def backward(g, needs):
        return unbroadcast(g, sa), unbroadcast(g, sb)
    return record(out, (a, b), backward, "Add")


def sub(a, b) -> Tensor:
    a, b, out = _binary("sub", np.subtract, a, b)
    sa, sb = a.shape, b.shape

    def backward(g, needs):
        return unbroadcast(g, sa), unbroadcast(-g, sb)
    return record(out, (a, b), backward, "Sub")


def mul(a, b) -> Tensor:
    a, b, out = _binary("mul", np.multiply, a, b)

    def backward(g, needs):
        return (unbroadcast(g * b.data, a.shape) if needs[0] else None,
                unbroadcast(g * a.data, b.shape) if needs[1] else None)
    return record(out, (a, b), backward, "Mul")


def div(a, b) -> Tensor:
    """True division; integer or bool operands give float32 (PyTorch's default dtype)."""
    a, b = lift_pair(a, b)
    if a.dtype.kind in "biu":
        a, b = cast(a, np.float32), cast(b, np.float32)
    a, b, out = _binary("div", np.divide, a, b)

    def backward(g, needs):
        ga = g / b.data
        gb = -ga * out if needs[1] else None  # d(a/b)/db = -(a/b)/b
        return (unbroadcast(ga, a.shape) if needs[0] else None,
                None if gb is None else unbroadcast(gb, b.shape))
    return record(out, (a, b), backward, "Div")


def neg(a) -> Tensor:
    a = lift(a)
    return record(-a.data, (a,), lambda g, needs: (-g,), "Neg")


def pow(a, b) -> Tensor:  # noqa: A001 - the op's name
    a, b, out = _binary("pow", np.power, a, b)

    def backward(g, needs):
        ga = gb = None
        if needs[0]:
            ga = unbroadcast(g * b.data * np.power(a.data, b.data - 1), a.shape)
        if needs[1]:
            # d(a^b)/db = a^b log a; defined as 0 where a^b is 0 (0^b, b > 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.where(out != 0, np.log(np.where(a.data > 0, a.data, 1)), 0)
            gb = unbroadcast(g * out * logs, b.shape)
        return ga, gb
    return record(out, (a, b), backward, "Pow")


def exp(a) -> Tensor:
    a = lift(a)
    out = np.exp(a.data)
    return record(out, (a,), lambda g, needs: (g * out,), "Exp")


def log(a) -> Tensor:
    a = lift(a)
    return record(np.log(a.data), (a,), lambda g, needs: (g / a.data,), "Log")


def sqrt(a) -> Tensor:
    a = lift(a)
    out = np.sqrt(a.data)
    return record(out, (a,), lambda g, needs: (g / (2 * out),), "Sqrt")


def abs(a) -> Tensor:  # noqa: A001
    a = lift(a)
    return record(np.abs(a.data), (a,), lambda g, needs: (g * np.sign(a.data),), "Abs")


def maximum(a, b) -> Tensor:
    """Elementwise max; on ties the gradient is split evenly, as in PyTorch."""
    a, b, out = _binary("maximum", np.maximum, a, b)

    def backward(g, needs):
        wa = (a.data > b.data) + 0.5 * (a.data == b.data)
        return (unbroadcast(g * wa, a.shape).astype(a.dtype, copy=False) if needs[0] else None,
                unbroadcast(g * (1 - wa), b.shape).astype(b.dtype, copy=False) if needs[1]
                else None)
    return record(out, (a, b), backward, "Maximum")


def minimum(a, b) -> Tensor:
    return neg(maximum(neg(a), neg(b)))


def where(cond, a, b) -> Tensor:
    """`a` where `cond` is true, else `b`; `cond` is a boolean array or tensor."""
    cond = getattr(cond, "data", cond)
    if getattr(cond, "device", "cpu") == "cpu":
        cond = np.asarray(cond, dtype=bool)
    elif cond.dtype != bool:  # a GPU condition stays on the GPU
        cond = cond.astype(bool)
    a, b = lift_pair(a, b)
    try:
        out = np.where(cond, a.data, b.data)
    except ValueError:
        raise broadcast_error("where", a, b) from None

    def backward(g, needs):
        zero = np.zeros((), g.dtype)
        return (unbroadcast(np.where(cond, g, zero), a.shape) if needs[0] else None,
                unbroadcast(np.where(cond, zero, g), b.shape) if needs[1] else None)
    return record(out, (a, b), backward, "Where")


def clip(a, lo=None, hi=None) -> Tensor:
    a = lift(a)
    out = np.clip(a.data, lo, hi)

    def backward(g, needs):
        inside = np.ones_like(a.data, dtype=bool)  # on a's device
        if lo is not None:
            inside &= a.data >= lo
        if hi is not None:
            inside &= a.data <= hi
        return (g * inside,)
    return record(out, (a,), backward, "Clip")


def cast(a, dtype) -> Tensor:
    a = lift(a)
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    src = a.dtype
    return record(a.data.astype(dtype), (a,), lambda g, needs: (g.astype(src),), "Cast")


# Comparisons return plain (non-differentiable) boolean tensors.
def _compare(ufunc):
    def compare(a, b):
        a, b = lift_pair(a, b)
        return Tensor._wrap(ufunc(a.data, b.data))
    return compare


eq, ne, lt, le, gt, ge = (_compare(u) for u in
                          (np.equal, np.not_equal, np.less, np.less_equal, np.greater,
                           np.greater_equal))
