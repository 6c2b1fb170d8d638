"""Helpers shared by the ops: lifting Python values to tensors, undoing broadcasting in
gradients, and shape errors that name the op and the shapes at fault."""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor


class ShapeError(ValueError):
    """An op got operands whose shapes do not fit; the message names the op and shapes."""


def lift(x, like: Tensor | None = None) -> Tensor:
    """`x` as a Tensor. A Python number or array next to a float tensor takes that
    tensor's dtype, so `x * 0.5` stays float32 (as in PyTorch)."""
    if isinstance(x, Tensor):
        return x
    arr = np.asarray(x)
    if like is not None and like.data.dtype.kind == "f" and arr.dtype.kind in "fiub":
        arr = arr.astype(like.data.dtype, copy=False)
    elif arr.dtype.kind == "f" and arr.dtype != np.float64 and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.float64 and not isinstance(x, np.ndarray):
        arr = arr.astype(np.float32)
    return Tensor._wrap(arr)


def asarray(x, dtype=None):
    """np.asarray for op results (a NumPy scalar becomes a 0-d array); device arrays
    (kernels/cuda) stay where they are."""
    if x.device == "cpu":
        return np.asarray(x, dtype=dtype)
    return x if dtype is None or x.dtype == dtype else x.astype(dtype)


def lift_pair(a, b):
    """Both operands as Tensors of one dtype, chosen by PyTorch's promotion rules
    (see _promotion.py: float32 with int64 stays float32)."""
    from ._promotion import promote_pair
    return promote_pair(a, b, lift)


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `g` over the axes that broadcasting stretched, giving an array of `shape`."""
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def broadcast_error(op: str, a: Tensor, b: Tensor) -> ShapeError:
    return ShapeError(f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together")


def normalize_axis(axis, ndim: int, op: str) -> tuple:
    """`axis` (None, int or sequence) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ShapeError(f"{op}: axis {ax} is out of range for a tensor with {ndim} dims")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ShapeError(f"{op}: axis {axis} repeats a dimension")
    return tuple(sorted(out))


def pick_axis(axis, dim, keepdims, keepdim):
    """Accept NumPy's (axis, keepdims) and PyTorch's (dim, keepdim) spellings."""
    if dim is not None:
        axis = dim
    if keepdim is not None:
        keepdims = keepdim
    return axis, bool(keepdims)
