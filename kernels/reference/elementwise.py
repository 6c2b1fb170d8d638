"""Bias + activation and the activation's gradient, in plain NumPy.

`act` is one of "identity", "relu", "sigmoid", "tanh". The gradient is computed from the
activation's output y (what the autograd layer keeps), using
    relu'    = [y > 0]          (0 at the kink, as PyTorch)
    sigmoid' = y * (1 - y)
    tanh'    = 1 - y^2
Outputs are always fresh arrays of x's dtype, never views of the inputs.
"""
import numpy as np

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")


def sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only taken of -|z| <= 0, and for z < 0
    we use the equal e / (1 + e) with e = exp(z) (not 1 - sigmoid(-z), which cancels)."""
    e = np.exp(-np.abs(z))
    s = 1 / (1 + e)
    return np.where(z >= 0, s, e * s)


def _check_act(act):
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def bias_act_forward(x, b, act):
    """act(x + b), b of shape (C,) broadcast over axis 1 of (N, C) or (N, C, H, W) x."""
    _check_act(act)
    z = x if b is None else x + b.reshape((1, -1) + (1,) * (x.ndim - 2))
    if act == "relu":
        y = np.maximum(z, 0)
    elif act == "sigmoid":
        y = sigmoid(z)
    elif act == "tanh":
        y = np.tanh(z)
    else:
        y = z.copy() if z is x else z
    return y.astype(x.dtype, copy=False)


def act_backward(dy, y, act):
    """dL/dz given dL/dy = dy and the forward's output y = act(z)."""
    _check_act(act)
    if act == "relu":
        dx = np.where(y > 0, dy, 0)
    elif act == "sigmoid":
        dx = dy * (y * (1 - y))
    elif act == "tanh":
        dx = dy * (1 - y * y)
    else:
        dx = dy.copy()
    return dx.astype(dy.dtype, copy=False)
