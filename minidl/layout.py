"""Memory formats: how the elements of a 4-D (N, C, H, W) tensor lie in memory.

A tensor's shape is always (N, C, H, W), as in PyTorch; its strides say the layout:

    contiguous_format  NCHW: each channel's (H, W) plane is one block (NumPy's C order)
    channels_last      NHWC: each pixel's C channels are one block

A channels_last tensor holds a transposed view of a C-contiguous (N, H, W, C) array, so
user code (indexing, reshape, `x + y`) sees the same values in the same positions;
NumPy's ufuncs keep the layout of their inputs. Convolution, batch norm and pooling run
channels-last kernels on it (the channels sit in vector lanes), and every op keeps its
input's format in its output and gradient, so a model converted once with
`model.to(memory_format=minidl.channels_last)` and fed `x.to(memory_format=...)` stays
channels-last end to end:

    >>> import minidl
    >>> x = minidl.randn(2, 3, 4, 5).to(memory_format=minidl.channels_last)
    >>> x.shape, x.is_contiguous(memory_format=minidl.channels_last)
    ((2, 3, 4, 5), True)

Which layout an op's output takes follows PyTorch: channels_last if its (4-D) input is,
and for a convolution also if its weight is (the first layer, whose single input channel
makes both layouts the same memory, takes its format from the weight).
"""
from __future__ import annotations

import numpy as np


class memory_format:  # noqa: N801 - PyTorch's name
    """One of `contiguous_format`, `channels_last`, `preserve_format`."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"minidl.{self.name}"

    def __reduce__(self):  # pickles as the module's singleton
        return self.name


contiguous_format = memory_format("contiguous_format")
channels_last = memory_format("channels_last")
preserve_format = memory_format("preserve_format")


def _check(fmt) -> memory_format:
    if fmt not in (contiguous_format, channels_last, preserve_format):
        raise ValueError(f"memory_format must be minidl.contiguous_format, "
                         f"minidl.channels_last or minidl.preserve_format, got {fmt!r}")
    return fmt


def _nhwc_strides(a: np.ndarray) -> tuple:
    n, c, h, w = a.shape
    s = a.itemsize
    return (h * w * c * s, s, w * c * s, c * s)


def _nchw_strides(a: np.ndarray) -> tuple:
    n, c, h, w = a.shape
    s = a.itemsize
    return (c * h * w * s, h * w * s, w * s, s)


def is_channels_last(a: np.ndarray) -> bool:
    """True if `a` (N, C, H, W) lies in memory as a C-contiguous (N, H, W, C) array and
    should be treated as channels_last. Where both layouts are the same memory (C == 1, or
    H == W == 1), the exact strides decide, as they do in PyTorch."""
    if a.ndim != 4 or not isinstance(a, np.ndarray):  # GPU arrays are always NCHW
        return False
    if not a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return False
    if not a.flags.c_contiguous:
        return True
    # Both layouts are the same memory: the strides say which one the tensor was made in.
    return a.strides == _nhwc_strides(a) and a.strides != _nchw_strides(a)


def is_contiguous(a: np.ndarray, fmt=contiguous_format) -> bool:
    """`Tensor.is_contiguous(memory_format=fmt)` for the array `a`."""
    if _check(fmt) is channels_last:
        if not isinstance(a, np.ndarray):  # a GPU array: NCHW, the same memory only if
            return a.ndim == 4 and (a.shape[1] == 1 or a.shape[2] * a.shape[3] == 1)
        return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous
    if fmt is preserve_format:
        raise ValueError("is_contiguous: preserve_format is not a memory layout")
    return a.flags.c_contiguous


def nhwc(a: np.ndarray) -> np.ndarray:
    """The (N, H, W, C) view of a channels_last (N, C, H, W) array: C-contiguous, ready for
    a channels-last kernel. (Any other array: a C-contiguous NHWC copy.)"""
    v = a.transpose(0, 2, 3, 1)
    return v if v.flags.c_contiguous else np.ascontiguousarray(v)


def from_nhwc(a: np.ndarray) -> np.ndarray:
    """An (N, H, W, C) kernel result as the (N, C, H, W) channels_last view."""
    return a.transpose(0, 3, 1, 2)


def _gpu_unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"channels_last is not supported on cuda tensors: minidl's CUDA kernels take NCHW "
        f"(contiguous_format) data; keep {what} in contiguous_format (channels_last is the "
        f"CPU kernels' fast layout)")


def convert(a: np.ndarray, fmt) -> np.ndarray:
    """`a` in memory format `fmt` (itself when it already is). A GPU array is always
    NCHW: channels_last raises for it, except where both layouts are the same memory."""
    if not isinstance(a, np.ndarray):
        if _check(fmt) is channels_last and not (a.ndim == 4 and is_contiguous(a, fmt)):
            raise _gpu_unsupported(f"the cuda tensor of shape {tuple(a.shape)}")
        return a
    if _check(fmt) is channels_last:
        if a.ndim != 4:
            raise ValueError(f"channels_last needs a 4-D (N, C, H, W) tensor, got shape "
                             f"{a.shape}")
        if is_channels_last(a):
            return a
        if a.flags.c_contiguous and a.transpose(0, 2, 3, 1).flags.c_contiguous:
            return _relabel(a, _nhwc_strides(a))  # same memory: C == 1 or H == W == 1
        return from_nhwc(np.ascontiguousarray(a.transpose(0, 2, 3, 1)))
    if fmt is contiguous_format:
        if not is_channels_last(a):
            return np.ascontiguousarray(a)
        if a.flags.c_contiguous:
            return _relabel(a, _nchw_strides(a))
        return np.ascontiguousarray(a)
    return a  # preserve_format


def _relabel(a: np.ndarray, strides: tuple) -> np.ndarray:
    """The same memory with the other layout's strides (only where both coincide)."""
    return np.lib.stride_tricks.as_strided(a, a.shape, strides, writeable=a.flags.writeable)


def format_of(a: np.ndarray) -> memory_format:
    return channels_last if is_channels_last(a) else contiguous_format
