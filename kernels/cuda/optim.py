"""Fused optimizer updates: one kernel pass per parameter reads p, grad and the state
and writes them back, instead of NumPy's chain of temporaries (same rules as
minidl.optim.SGD / Adam / RMSprop, elementwise)."""
from __future__ import annotations

import math

from numba import cuda


@cuda.jit
def sgd_step(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """g' = g + wd p; buf = g' (first) or momentum buf + (1 - dampening) g';
    d = g' + momentum buf (nesterov) or buf; p -= lr d. momentum == 0: d = g'."""
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < p.size:
        d = g[i] + weight_decay * p[i]
        if momentum != 0:
            if first:
                b = d
            else:
                b = momentum * buf[i] + (1 - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d
        i += step


@cuda.jit
def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
              bias_correction1, bias_correction2_sqrt):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < p.size:
        gi = g[i]
        if weight_decay != 0:
            if decoupled:
                p[i] *= 1 - lr * weight_decay
            else:
                gi = gi + weight_decay * p[i]
        mi = beta1 * m[i] + (1 - beta1) * gi
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        if amsgrad:
            if vmax[i] > vi:
                vi = vmax[i]
            vmax[i] = vi
        p[i] -= (lr / bias_correction1) * mi / (math.sqrt(vi) / bias_correction2_sqrt + eps)
        i += step


@cuda.jit
def rmsprop_step(p, g, s, a, buf, lr, alpha, eps, weight_decay, momentum, centered):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < p.size:
        gi = g[i] + weight_decay * p[i]
        si = alpha * s[i] + (1 - alpha) * gi * gi
        s[i] = si
        if centered:
            ai = alpha * a[i] + (1 - alpha) * gi
            a[i] = ai
            d = math.sqrt(si - ai * ai) + eps
        else:
            d = math.sqrt(si) + eps
        if momentum > 0:
            b = momentum * buf[i] + gi / d
            buf[i] = b
            p[i] -= lr * b
        else:
            p[i] -= lr * gi / d
        i += step
