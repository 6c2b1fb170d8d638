"""Fused bias + activation forward and the activation backward from the output y
(relu' = [y > 0], sigmoid' = y (1 - y), tanh' = 1 - y^2), as kernels/cpu does."""
from __future__ import annotations

import math

from numba import cuda

RELU, SIGMOID, TANH, IDENTITY = 0, 1, 2, 3
ACTS = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "identity": IDENTITY, None: IDENTITY}


@cuda.jit
def bias_act_forward(x, b, inner, C, has_bias, act, y):
    """y = act(x + b[channel]); channel = (i // inner) % C for x (N, C, inner...)."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        v = x[i]
        if has_bias:
            v += b[(i // inner) % C]
        if act == RELU:
            v = v if v > 0 else v * 0
        elif act == SIGMOID:
            v = 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))
        elif act == TANH:
            v = math.tanh(v)
        y[i] = v
        i += step


@cuda.jit
def act_backward(dy, y, act, dx):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dx.size:
        yi = y[i]
        if act == RELU:
            dx[i] = dy[i] if yi > 0 else dy[i] * 0
        elif act == SIGMOID:
            dx[i] = dy[i] * yi * (1 - yi)
        elif act == TANH:
            dx[i] = dy[i] * (1 - yi * yi)
        else:
            dx[i] = dy[i]
        i += step
