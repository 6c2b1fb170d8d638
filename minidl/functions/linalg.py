"""Matrix products: batched matmul with NumPy's rules, and the fused linear layer."""
from __future__ import annotations

import numpy as np

from ..autograd import record
from ..tensor import Tensor
from ._util import ShapeError, lift_pair, unbroadcast


def matmul(a, b) -> Tensor:
    """`a @ b` with NumPy semantics: 1-D operands are promoted and the added dimension
    removed, leading dimensions broadcast."""
    a, b = lift_pair(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: operands must be at least 1-D, got {a.shape} and {b.shape}")
    k_a = a.shape[-1]
    k_b = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if k_a != k_b:
        raise ShapeError(f"matmul: shapes {a.shape} and {b.shape} do not fit "
                         f"({k_a} columns vs {k_b} rows)")
    try:
        out = a.data @ b.data
    except ValueError:
        raise ShapeError(f"matmul: batch dimensions of {a.shape} and {b.shape} cannot be "
                         f"broadcast together") from None

    def backward(g, needs):
        # Promote 1-D operands to matrices, so one rule covers every case.
        A = a.data[None, :] if a.ndim == 1 else a.data
        B = b.data[:, None] if b.ndim == 1 else b.data
        G = g
        if b.ndim == 1:  # restore the removed column axis first: (1-D @ 1-D) gives 0-d
            G = np.expand_dims(G, -1)
        if a.ndim == 1:
            G = np.expand_dims(G, -2)
        ga = gb = None
        if needs[0]:
            ga = unbroadcast(G @ np.swapaxes(B, -1, -2), A.shape).reshape(a.shape)
        if needs[1]:
            gb = unbroadcast(np.swapaxes(A, -1, -2) @ G, B.shape).reshape(b.shape)
        return ga, gb
    return record(out, (a, b), backward, "Matmul")


def linear(x, weight, bias=None) -> Tensor:
    """y = x @ weight.T + bias, fused so the layer is one node on the tape
    (x (..., in), weight (out, in), bias (out,))."""
    if x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: input {x.shape} does not fit weight {weight.shape} "
                         f"(expected last input dim {weight.shape[1]})")
    out = x.data @ weight.data.T
    if bias is not None:
        if bias.shape != (weight.shape[0],):
            raise ShapeError(f"linear: bias {bias.shape} does not fit weight {weight.shape}")
        out += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g, needs):
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g @ weight.data) if needs[0] else None
        gw = (g2.T @ x.data.reshape(-1, x.shape[-1])) if needs[1] else None
        if bias is None:
            return gx, gw
        return gx, gw, (g2.sum(axis=0) if needs[2] else None)
    return record(out, parents, backward, "Linear")
