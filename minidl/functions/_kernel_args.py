"""Argument normalization shared by the kernel-backed ops."""
from __future__ import annotations

import numpy as np

from .. import layout as mf
from ._util import ShapeError


def pair(v, name: str, op: str) -> tuple:
    """An int or a pair of ints as an (int, int) tuple."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return t


def contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _same(a: np.ndarray) -> np.ndarray:
    return a


def dense(a: np.ndarray):
    """(array, restore): `a` as a C-contiguous array in its own memory order (the NHWC
    view of a channels_last tensor, else `a` in C order), and the function that lays a
    kernel result of that shape out like `a` again. Elementwise kernels run through it on
    either format without a conversion."""
    if mf.is_channels_last(a):
        return mf.nhwc(a), mf.from_nhwc
    return contiguous(a), _same


def channel_columns(a: np.ndarray):
    """(to_kernel, from_kernel) for per-channel kernels (batch norm) on `a` (N, C[, H, W]):
    a channels_last tensor's NHWC memory is an (N*H*W, C) matrix, normalized per column by
    the kernels' (N, C) path with the channels in vector lanes; any other array goes as
    C-contiguous (N, C[, H, W])."""
    if a.ndim == 4 and mf.is_channels_last(a):
        n, c, h, w = a.shape

        def to_kernel(t):
            return mf.nhwc(t).reshape(n * h * w, c)

        def from_kernel(t):
            return mf.from_nhwc(t.reshape(n, h, w, c))
        return to_kernel, from_kernel
    return contiguous, _same


def dense_like(g: np.ndarray, template: np.ndarray) -> np.ndarray:
    """`g` (shaped like `template`) as the C-contiguous array dense(template) would give:
    a gradient in another format than its forward's output is converted here, once."""
    return mf.nhwc(g) if mf.is_channels_last(template) else contiguous(g)


def check_float(op: str, **arrays) -> np.dtype:
    """All arrays share one float dtype; name them if not."""
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    kinds = set(dtypes.values())
    if len(kinds) != 1 or next(iter(kinds)).kind != "f":
        listed = ", ".join(f"{n} {d}" for n, d in dtypes.items())
        raise TypeError(f"{op}: expected one floating dtype for all inputs, got {listed}")
    return next(iter(kinds))


def check_ndim(op: str, name: str, t, ndims: tuple, layout: str) -> None:
    if t.ndim not in ndims:
        raise ShapeError(f"{op}: expected {name} of shape {layout}, got {t.shape}")
