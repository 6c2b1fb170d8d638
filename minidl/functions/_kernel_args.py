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
