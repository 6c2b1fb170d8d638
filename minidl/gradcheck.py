"""Finite-difference check of the tape's gradients, in float64.

The scalar checked is sum(fn(*inputs) * v) for a fixed random v, so every output
element takes part with a different weight (a plain sum would hide gradients that
cancel across outputs). Inputs may live on either device (CPU or CUDA)."""
from __future__ import annotations

import numpy as np

from .autograd import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    pass


def _as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


def _host(a) -> np.ndarray:
    """A float64 host copy of a NumPy or CUDA array (tensors on either device)."""
    return np.asarray(a.to_host() if hasattr(a, "to_host") else a, np.float64)


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0, raise_exception: bool = True) -> bool:
    """Compare d(sum(fn(*inputs) * v))/d(input) from the tape with central differences.

    `inputs` are Tensors; those with requires_grad=True are checked and must be float64.
    Returns True, or raises GradcheckError naming the worst element (or returns False
    with raise_exception=False)."""
    inputs = tuple(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires grad")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; finite differences "
                            f"need float64 inputs")

    outs = _as_tuple(fn(*inputs))
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(o.shape) for o in outs]

    def objective() -> float:
        with no_grad():
            return float(sum((_host(o.data) * w).sum()
                             for o, w in zip(_as_tuple(fn(*inputs)), weights)))

    for i in checked:
        inputs[i].grad = None
    total = None
    for o, w in zip(outs, weights):
        if o.requires_grad:
            term = (o * Tensor(w).to(o.device)).sum()
            total = term if total is None else total + term
    if total is None:
        raise GradcheckError("gradcheck: no output depends on an input that requires grad")
    total.backward()

    worst = None  # (excess error, input index, element, analytic, numeric)
    for i in checked:
        x = inputs[i].data
        xh = x.to_host() if hasattr(x, "to_host") else x  # reads; writes go to x itself
        analytic = (np.zeros(x.shape) if inputs[i].grad is None
                    else _host(inputs[i].grad.data))
        numeric = np.zeros(x.shape, np.float64)
        for idx in np.ndindex(x.shape):  # in place, whatever x's strides (channels_last too)
            orig = xh[idx]
            x[idx] = orig + eps
            plus = objective()
            x[idx] = orig - eps
            minus = objective()
            x[idx] = orig
            numeric[idx] = (plus - minus) / (2 * eps)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if err.size:
            j = int(np.argmax(err))
            if worst is None or err.reshape(-1)[j] > worst[0]:
                worst = (err.reshape(-1)[j], i, np.unravel_index(j, x.shape),
                         analytic.reshape(-1)[j], numeric.reshape(-1)[j])
    if worst is not None and worst[0] > 0:
        _, i, idx, a, n = worst
        msg = (f"gradcheck failed: input {i} (shape {inputs[i].shape}) at index {idx}: "
               f"analytic {a:.8g} vs numeric {n:.8g} (abs error {abs(a - n):.3g}, "
               f"atol {atol}, rtol {rtol})")
        if raise_exception:
            raise GradcheckError(msg)
        return False
    return True
