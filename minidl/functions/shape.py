"""Ops that move data without arithmetic: reshape, transpose/permute, indexing,
concatenation, stacking, padding. Their backward moves the gradient back."""
from __future__ import annotations

import numpy as np

from .. import layout as mf
from ..autograd import record
from ..tensor import Tensor
from ._util import ShapeError, asarray, lift, normalize_axis


def reshape(a, *shape) -> Tensor:
    a = lift(a)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    try:
        out = a.data.reshape(shape)
    except ValueError:
        raise ShapeError(f"reshape: cannot reshape a tensor of shape {a.shape} "
                         f"({a.data.size} elements) into {tuple(shape)}") from None
    return record(out, (a,), lambda g, needs: (g.reshape(a.shape),), "Reshape")


def flatten(a, start_dim=0, end_dim=-1) -> Tensor:
    a = lift(a)
    if a.ndim == 0:
        return reshape(a, (1,))
    start, end = start_dim % a.ndim, end_dim % a.ndim
    shape = a.shape[:start] + (int(np.prod(a.shape[start:end + 1])),) + a.shape[end + 1:]
    return reshape(a, shape)


def permute(a, *dims) -> Tensor:
    a = lift(a)
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if sorted(d % max(a.ndim, 1) for d in dims) != list(range(a.ndim)):
        raise ShapeError(f"permute: {dims} is not a permutation of the {a.ndim} dims of "
                         f"a tensor of shape {a.shape}")
    inverse = np.argsort([d % a.ndim for d in dims])
    return record(a.data.transpose(dims), (a,), lambda g, needs: (g.transpose(inverse),), "Permute")


def transpose(a, dim0=-2, dim1=-1) -> Tensor:
    """Swap two dimensions (PyTorch's transpose; default: the last two)."""
    a = lift(a)
    if a.ndim < 2:
        return a
    dims = list(range(a.ndim))
    dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
    return permute(a, dims)


def squeeze(a, axis=None) -> Tensor:
    a = lift(a)
    if axis is None:
        shape = tuple(n for n in a.shape if n != 1)
    else:
        axes = normalize_axis(axis, a.ndim, "squeeze")
        shape = tuple(n for i, n in enumerate(a.shape) if i not in axes or n != 1)
    return reshape(a, shape)


def unsqueeze(a, axis) -> Tensor:
    a = lift(a)
    shape = list(a.shape)
    shape.insert(axis % (a.ndim + 1), 1)
    return reshape(a, tuple(shape))


def _index_key(key):
    """Tensors used as indices become arrays."""
    if isinstance(key, tuple):
        return tuple(_index_key(k) for k in key)
    if isinstance(key, Tensor):
        return key.data
    if isinstance(key, list):
        return np.asarray(key)
    return key


def _is_advanced(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) and (k.ndim > 0 or k.dtype == bool) for k in keys)


def getitem(a, key) -> Tensor:
    """Slicing and integer-array indexing, with NumPy's rules."""
    a = lift(a)
    key = _index_key(key)
    try:
        out = a.data[key]
    except IndexError as e:
        raise IndexError(f"getitem: {e} (tensor of shape {a.shape})") from None
    advanced = _is_advanced(key)
    if not advanced:
        out = out.copy() if isinstance(out, np.ndarray) or out.device != "cpu" \
            else np.asarray(out)

    def backward(g, needs):
        ga = np.zeros_like(a.data, dtype=g.dtype)  # on a's device
        if advanced:
            np.add.at(ga, key, g)  # repeated indices must add up, not overwrite
        else:
            ga[key] = g
        return (ga,)
    return record(asarray(out), (a,), backward, "Getitem")


def concatenate(tensors, axis=0) -> Tensor:
    tensors = [lift(t) for t in tensors]
    if not tensors:
        raise ShapeError("concatenate: needs at least one tensor")
    try:
        out = _concatenate([t.data for t in tensors], axis)
    except ValueError:
        shapes = ", ".join(str(t.shape) for t in tensors)
        raise ShapeError(f"concatenate: shapes {shapes} do not fit along axis {axis}") from None
    ax = axis % out.ndim
    bounds = np.cumsum([t.shape[ax] for t in tensors])[:-1]

    def backward(g, needs):
        return tuple(np.split(g, bounds, axis=ax))
    return record(out, tuple(tensors), backward, "Concatenate")


cat = concatenate


def _concatenate(arrays, axis):
    """np.concatenate, keeping a channels_last layout when every input has it (NumPy
    would return C order): the NHWC arrays are joined along their last axis instead."""
    if arrays and arrays[0].ndim == 4 and all(mf.is_channels_last(a) for a in arrays):
        nhwc_axis = (0, 3, 1, 2)[axis % 4]
        return mf.from_nhwc(np.concatenate([mf.nhwc(a) for a in arrays], axis=nhwc_axis))
    return np.concatenate(arrays, axis=axis)


def to_memory_format(a, memory_format) -> Tensor:
    """`a` laid out in `memory_format` (minidl.channels_last or minidl.contiguous_format);
    `a` itself when it already is. The gradient goes back in `a`'s format."""
    a = lift(a)
    out = mf.convert(a.data, memory_format)
    if out is a.data:
        return a
    src = mf.format_of(a.data)
    return record(out, (a,), lambda g, needs: (mf.convert(g, src),), "ToMemoryFormat")


def stack(tensors, axis=0) -> Tensor:
    tensors = [lift(t) for t in tensors]
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ShapeError(f"stack: all tensors must have the same shape, got "
                         f"{', '.join(str(t.shape) for t in tensors)}")
    out = np.stack([t.data for t in tensors], axis=axis)
    ax = axis % out.ndim

    def backward(g, needs):
        return tuple(np.take(g, i, axis=ax) for i in range(len(tensors)))
    return record(out, tuple(tensors), backward, "Stack")


def pad(a, pad_width, value=0.0) -> Tensor:
    """Constant padding with NumPy's `pad_width` ((before, after) per dim, or one pair
    or one int for every dim)."""
    a = lift(a)
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2))
    if (widths < 0).any():
        raise ShapeError(f"pad: negative widths {pad_width} (tensor of shape {a.shape})")
    out = np.pad(a.data, widths, mode="constant", constant_values=value)
    inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(widths, a.shape))
    return record(out, (a,), lambda g, needs: (g[inner],), "Pad")
