"""PyTorch's type promotion (torch.result_type) for the binary ops, in one place.

NumPy and PyTorch disagree on mixed dtypes: NumPy turns float32 + int64 into float64,
PyTorch keeps float32. minidl follows PyTorch:

1. Categories: bool < integer < floating < complex. Between two tensor dtypes the
   higher category wins with its own size (float32 + int64 -> float32, float16 +
   int64 -> float16, bool + int8 -> int8); within a category the larger size wins
   (float32 + float64 -> float64, uint8 + int8 -> int16); a float next to a complex
   widens the complex (float64 + complex64 -> complex128).
2. Three priorities: tensors with dimensions, then 0-dim tensors, then Python (or
   NumPy) scalars. A lower-priority operand changes the result only if its category is
   higher, and then it brings its category, not its size:
       float32 tensor * 2.5          -> float32     (scalar: same category)
       int64 tensor * 2.5            -> float32     (the default float dtype)
       int32 tensor + 7              -> int32
       float16 tensor + float64 0-dim tensor -> float16
       int8 tensor + float64 0-dim tensor    -> float64
   A Python float counts as float32 (PyTorch's default dtype), an int as int64, a
   complex as complex64.

`result_type(a, b)` computes the dtype; `promote_pair(a, b)` returns both operands as
Tensors of that dtype (a tensor of another dtype goes through the differentiable
`cast`, so gradients reach it in its own dtype).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..tensor import Tensor

__all__ = ["result_type", "promote_types", "promote_pair"]

DEFAULT_FLOAT = np.dtype(np.float32)
DEFAULT_COMPLEX = np.dtype(np.complex64)
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


def _category(dtype: np.dtype) -> int:
    return _CATEGORY[dtype.kind]


def promote_types(a, b):
    """torch.promote_types for NumPy dtypes (None: no operand yet)."""
    if a is None or b is None:
        return b if a is None else a
    a, b = np.dtype(a), np.dtype(b)
    ca, cb = _category(a), _category(b)
    if ca == cb or {ca, cb} == {2, 3}:
        return np.promote_types(a, b)  # NumPy agrees with PyTorch here
    return a if ca > cb else b


def _combine(higher, lower):
    """torch's combine_categories: `lower` (a lower-priority group) counts only if its
    category is higher, and a float `higher` keeps its size next to a complex `lower`."""
    if higher is None:
        return lower
    if lower is None or _category(higher) == 3:
        return higher
    if _category(lower) == 3:  # a float keeps its size: float32 -> complex64
        if _category(higher) == 2:
            return np.dtype(np.complex128 if higher == np.float64 else np.complex64)
        return lower
    if _category(higher) == 2:
        return higher
    if _category(higher) == 0 or _category(lower) == 2:
        return promote_types(higher, lower)
    return higher


def _scalar_dtype(x):
    if isinstance(x, (bool, np.bool_)):
        return np.dtype(bool)
    if isinstance(x, (numbers.Integral, np.integer)):
        return np.dtype(np.int64)
    if isinstance(x, (numbers.Real, np.floating)):
        return DEFAULT_FLOAT
    if isinstance(x, (numbers.Complex, np.complexfloating)):
        return DEFAULT_COMPLEX
    return None


def _is_scalar(x) -> bool:
    return not isinstance(x, (Tensor, np.ndarray)) and _scalar_dtype(x) is not None


def result_type(*operands) -> np.dtype:
    """The dtype PyTorch gives an elementwise op on `operands` (Tensors, NumPy arrays,
    Python or NumPy scalars)."""
    dim = zero = wrapped = None
    for x in operands:
        if _is_scalar(x):
            wrapped = promote_types(wrapped, _scalar_dtype(x))
            continue
        arr = x.data if isinstance(x, Tensor) else np.asarray(x)
        if arr.ndim == 0:
            zero = promote_types(zero, arr.dtype)
        else:
            dim = promote_types(dim, arr.dtype)
    out = _combine(dim, _combine(zero, wrapped))
    return np.dtype(out)


def promote_pair(a, b, lift):
    """Both operands as Tensors of `result_type(a, b)`. `lift` turns a non-scalar,
    non-Tensor operand into a Tensor first (minidl's rule for arrays next to a tensor)."""
    if not isinstance(a, Tensor) and not _is_scalar(a):
        a = lift(a, b if isinstance(b, Tensor) else None)
    if not isinstance(b, Tensor) and not _is_scalar(b):
        b = lift(b, a if isinstance(a, Tensor) else None)
    dtype = result_type(a, b)
    if dtype.kind == "c":
        raise TypeError(f"minidl tensors do not support complex numbers (operands "
                        f"{_describe(a)} and {_describe(b)})")
    return _as(a, dtype), _as(b, dtype)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.data.dtype} tensor of shape {x.shape}"
    return repr(x)


def _as(x, dtype: np.dtype) -> Tensor:
    if isinstance(x, Tensor):
        if x.data.dtype == dtype:
            return x
        from .math import cast  # math imports this module's importer: import at call time
        return cast(x, dtype)
    return Tensor._wrap(np.asarray(x).astype(dtype))
