"""Reductions over axes: sum, mean, var, max. Backward spreads the output gradient back
over the reduced axes."""
from __future__ import annotations

import builtins

import numpy as np

from ..autograd import record
from ..tensor import Tensor
from ._util import asarray, lift, normalize_axis, pick_axis


def _expand(g, shape, axes, keepdims):
    """Give `g` back the reduced axes (as size 1) so it broadcasts against the input."""
    if not keepdims:
        g = np.expand_dims(g, axes)
    return g


def sum(a, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001
    a = lift(a)
    axis, keepdims = pick_axis(axis, dim, keepdims, keepdim)
    axes = normalize_axis(axis, a.ndim, "sum")
    out = asarray(a.data.sum(axis=axes, keepdims=keepdims))
    if len(axes) == a.ndim:  # a full reduction (the usual loss.sum()): g broadcasts as is
        return record(out, (a,), lambda g, needs: (np.broadcast_to(g, a.shape),), "Sum")

    def backward(g, needs):
        return (np.broadcast_to(_expand(g, a.shape, axes, keepdims), a.shape),)
    return record(out, (a,), backward, "Sum")


def mean(a, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:
    a = lift(a)
    axis, keepdims = pick_axis(axis, dim, keepdims, keepdim)
    axes = normalize_axis(axis, a.ndim, "mean")
    out = asarray(a.data.mean(axis=axes, keepdims=keepdims))
    n = int(np.prod([a.shape[i] for i in axes])) if axes else 1

    def backward(g, needs):
        g = _expand(g, a.shape, axes, keepdims) / a.dtype.type(n)
        return (np.broadcast_to(g, a.shape),)
    return record(out, (a,), backward, "Mean")


def var(a, axis=None, keepdims=False, correction=1, *, dim=None, keepdim=None,
        unbiased=None) -> Tensor:
    """Variance over `axis` with `correction` (1: unbiased, PyTorch's default; 0: the
    biased batch variance that batch norm normalizes with)."""
    a = lift(a)
    axis, keepdims = pick_axis(axis, dim, keepdims, keepdim)
    if unbiased is not None:
        correction = int(bool(unbiased))
    axes = normalize_axis(axis, a.ndim, "var")
    n = int(np.prod([a.shape[i] for i in axes])) if axes else 1
    centered = a.data - a.data.mean(axis=axes, keepdims=True)
    denom = a.dtype.type(builtins.max(n - correction, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = asarray((centered * centered).sum(axis=axes, keepdims=keepdims) / denom)

    def backward(g, needs):
        g = _expand(g, a.shape, axes, keepdims)
        return ((2 / denom) * g * centered,)
    return record(out, (a,), backward, "Var")


def max(a, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001
    """Maximum over `axis` (values only). Ties share the gradient evenly, like
    PyTorch's amax."""
    a = lift(a)
    axis, keepdims = pick_axis(axis, dim, keepdims, keepdim)
    axes = normalize_axis(axis, a.ndim, "max")
    out_k = a.data.max(axis=axes, keepdims=True)
    out = out_k if keepdims else asarray(out_k.squeeze(axis=axes))

    def backward(g, needs):
        mask = a.data == out_k
        g = _expand(g, a.shape, axes, keepdims)
        return (mask * (g / mask.sum(axis=axes, keepdims=True).astype(g.dtype)),)
    return record(out, (a,), backward, "Max")


def min(a, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:  # noqa: A001
    from .math import neg
    return neg(max(neg(a), axis, keepdims, dim=dim, keepdim=keepdim))


def argmax(a, axis=None, keepdims=False, *, dim=None, keepdim=None) -> Tensor:
    a = lift(a)
    axis, keepdims = pick_axis(axis, dim, keepdims, keepdim)
    return Tensor._wrap(asarray(np.argmax(a.data, axis=axis, keepdims=keepdims)))
