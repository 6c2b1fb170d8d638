"""Losses. cross_entropy is fused (log-softmax + NLL in one node): its gradient is
(softmax - onehot) / N, cheaper and more accurate than chaining the two ops."""
from __future__ import annotations

import numpy as np

from ..autograd import record
from ..backend import backend_for
from ..tensor import Tensor
from ._util import ShapeError, asarray, lift, lift_pair
from .activation import _log_softmax

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction, op):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def cross_entropy(logits, target, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of `logits` (N, C) against integer class `target` (N,)."""
    _check_reduction(reduction, "cross_entropy")
    logits = lift(logits)
    if logits.device != "cpu":
        return _cross_entropy_device(logits, target, reduction)
    t = np.asarray(getattr(target, "data", target))
    if logits.ndim != 2 or t.shape != (logits.shape[0],):
        raise ShapeError(f"cross_entropy: expected logits (N, C) and target (N,), got "
                         f"{logits.shape} and {t.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got {t.dtype}")
    n, c = logits.shape
    if n and (t.min() < 0 or t.max() >= c):
        raise ValueError(f"cross_entropy: target values must be in [0, {c}), got range "
                         f"[{t.min()}, {t.max()}]")
    logp = _log_softmax(logits.data, axis=1)
    rows = np.arange(n)
    losses = -logp[rows, t]
    out = losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses
    out = np.asarray(out, dtype=logits.dtype)

    def backward(g, needs):
        grad = np.exp(logp)
        grad[rows, t] -= 1
        if reduction == "none":
            return (grad * g[:, None],)
        scale = g / n if reduction == "mean" else g
        return (grad * scale,)
    return record(out, (logits,), backward, "CrossEntropy")


def _cross_entropy_device(logits, target, reduction):
    """cross_entropy on the GPU: the backend's fused kernels (kernels/cuda/loss.py)."""
    K = backend_for(logits, target)
    if logits.ndim != 2 or target.shape != (logits.shape[0],):
        raise ShapeError(f"cross_entropy: expected logits (N, C) and target (N,), got "
                         f"{logits.shape} and {target.shape}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: target must hold integer class indices, got "
                        f"{target.dtype}")
    n = logits.shape[0]
    t = target.data if target.dtype == np.int64 else target.data.astype(np.int64)
    logp, losses = K.cross_entropy_forward(logits.data, t)
    out = losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" \
        else losses

    def backward(g, needs):
        if reduction == "none":
            return (K.cross_entropy_backward(logp, t, g, True, 1.0),)
        return (K.cross_entropy_backward(logp, t, g, False,
                                         1.0 / n if reduction == "mean" else 1.0),)
    return record(out, (logits,), backward, "CrossEntropy")


def mse_loss(input, target, reduction: str = "mean") -> Tensor:  # noqa: A002
    _check_reduction(reduction, "mse_loss")
    a, b = lift_pair(input, target)
    if a.shape != b.shape:
        raise ShapeError(f"mse_loss: input {a.shape} and target {b.shape} must have the same "
                         f"shape")
    diff = a.data - b.data
    sq = diff * diff
    out = asarray(sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum"
                  else sq, dtype=a.dtype)
    scale = 2 / diff.size if reduction == "mean" else 2

    def backward(g, needs):
        gd = (g * scale) * diff
        return gd, (-gd if needs[1] else None)
    return record(out, (a, b), backward, "MseLoss")
