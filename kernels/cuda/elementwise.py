"""Elementwise CUDA kernels with NumPy broadcasting.

Every array is a contiguous 1-D device buffer plus a shape. A broadcast operand is
read through a stride table: `strides[d]` is the step (in elements) of that operand
along output dim d, 0 where it is stretched. Output element i, with multi-index
(i_0, ..., i_{D-1}) of the output shape, reads a[sum_d i_d * sa[d]].

    binary(op)(a, sa, b, sb, out, shape)    out[i] = op(a[..], b[..])
    binary_scalar_right(op)(a, sa, s, ...)  out[i] = op(a[..], s)
    unary(op)(a, out)                       out[i] = op(a[i])        (same shape)
    strided_copy(a, sa, out, shape)         broadcast_to, transpose, astype
"""
from __future__ import annotations

import math

from numba import cuda


def _offset(i, shape, s):
    off = 0
    r = i
    for d in range(len(shape) - 1, -1, -1):
        n = shape[d]
        off += (r % n) * s[d]
        r //= n
    return off


_offset_dev = cuda.jit(device=True)(_offset)


def _make_binary(op):
    @cuda.jit
    def kernel(a, sa, b, sb, out, shape):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = op(a[_offset_dev(i, shape, sa)], b[_offset_dev(i, shape, sb)])
            i += step

    @cuda.jit
    def kernel_same(a, b, out):  # all three of one shape: no index arithmetic
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = op(a[i], b[i])
            i += step

    @cuda.jit
    def kernel_right(a, sa, s, out, shape):  # op(array, scalar)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = op(a[_offset_dev(i, shape, sa)], s)
            i += step

    @cuda.jit
    def kernel_left(s, b, sb, out, shape):  # op(scalar, array)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = op(s, b[_offset_dev(i, shape, sb)])
            i += step
    return kernel, kernel_same, kernel_right, kernel_left


def _make_unary(op):
    @cuda.jit
    def kernel(a, out):
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < out.size:
            out[i] = op(a[i])
            i += step
    return kernel


@cuda.jit(device=True)
def _add(x, y):
    return x + y


@cuda.jit(device=True)
def _sub(x, y):
    return x - y


@cuda.jit(device=True)
def _mul(x, y):
    return x * y


@cuda.jit(device=True)
def _div(x, y):
    return x / y


@cuda.jit(device=True)
def _pow(x, y):
    return x ** y


@cuda.jit(device=True)
def _maximum(x, y):
    if x != x:  # NaN propagates, as in np.maximum
        return x
    return x if x >= y else y


@cuda.jit(device=True)
def _minimum(x, y):
    if x != x:
        return x
    return x if x <= y else y


@cuda.jit(device=True)
def _eq(x, y):
    return x == y


@cuda.jit(device=True)
def _ne(x, y):
    return x != y


@cuda.jit(device=True)
def _lt(x, y):
    return x < y


@cuda.jit(device=True)
def _le(x, y):
    return x <= y


@cuda.jit(device=True)
def _gt(x, y):
    return x > y


@cuda.jit(device=True)
def _ge(x, y):
    return x >= y


@cuda.jit(device=True)
def _and(x, y):
    return x and y


@cuda.jit(device=True)
def _or(x, y):
    return x or y


@cuda.jit(device=True)
def _neg(x):
    return -x


@cuda.jit(device=True)
def _exp(x):
    return math.exp(x)


@cuda.jit(device=True)
def _log(x):
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


@cuda.jit(device=True)
def _sqrt(x):
    return math.sqrt(x) if x >= 0 else math.nan


@cuda.jit(device=True)
def _abs(x):
    return abs(x)


@cuda.jit(device=True)
def _sign(x):
    if x > 0:
        return x * 0 + 1
    if x < 0:
        return x * 0 - 1
    return x * 0  # 0 stays 0, NaN stays NaN


@cuda.jit(device=True)
def _tanh(x):
    return math.tanh(x)


@cuda.jit(device=True)
def _identity(x):
    return x


@cuda.jit(device=True)
def _not(x):
    return not x


BINARY = {name: _make_binary(op) for name, op in {
    "add": _add, "subtract": _sub, "multiply": _mul, "true_divide": _div, "divide": _div,
    "power": _pow, "maximum": _maximum, "minimum": _minimum, "equal": _eq,
    "not_equal": _ne, "less": _lt, "less_equal": _le, "greater": _gt, "greater_equal": _ge,
    "logical_and": _and, "bitwise_and": _and, "logical_or": _or, "bitwise_or": _or,
}.items()}

UNARY = {name: _make_unary(op) for name, op in {
    "negative": _neg, "exp": _exp, "log": _log, "sqrt": _sqrt, "absolute": _abs,
    "sign": _sign, "tanh": _tanh, "positive": _identity, "logical_not": _not,
}.items()}

copy = _make_unary(_identity)  # also casts: out's dtype decides


@cuda.jit
def strided_copy(a, sa, out, shape):
    """out[i] = a[offset of i under strides sa]: broadcast_to, transpose, expand."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[_offset_dev(i, shape, sa)]
        i += step


@cuda.jit
def fill(out, value):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = value
        i += step


@cuda.jit
def strided_copy2(a, a_off, sa, out, o_off, so, shape):
    """out[o_off + off(i; so)] = a[a_off + off(i; sa)] for every i of `shape`: slicing,
    concatenation and splitting as one copy between two strided views."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    n = 1
    for d in range(len(shape)):
        n *= shape[d]
    while i < n:
        out[o_off + _offset_dev(i, shape, so)] = a[a_off + _offset_dev(i, shape, sa)]
        i += step


@cuda.jit
def where(cond, a, b, out):
    """out[i] = a[i] if cond[i] else b[i] (operands already broadcast to out's shape)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i] if cond[i] else b[i]
        i += step
