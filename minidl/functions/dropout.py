"""Inverted dropout: zero each element with probability p during training and scale the
survivors by 1/(1-p), so evaluation needs no rescaling."""
from __future__ import annotations

from ..autograd import record
from ..random import default_generator
from ..tensor import Tensor
from ._util import lift


def dropout(x, p: float = 0.5, training: bool = True) -> Tensor:
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    x = lift(x)
    if not training or p == 0:
        return x
    if p == 1:
        mask = (x.data * 0).astype(x.dtype)
    else:
        keep = default_generator().random(x.shape, dtype=x.dtype.type) >= p
        mask = keep.astype(x.dtype) * x.dtype.type(1 / (1 - p))
    if x.device != "cpu":  # the same random numbers as on the CPU, moved to x's device
        from ..cuda import to_device_array
        mask = to_device_array(mask, x.device)
    return record(x.data * mask, (x,), lambda g, needs: (g * mask,), "Dropout")
