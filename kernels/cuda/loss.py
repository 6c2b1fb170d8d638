"""Fused softmax cross-entropy: one thread per row of the (N, C) logits.

Forward: logp[r, :] = x[r, :] - max_r - log(sum_c exp(x[r, c] - max_r)) and
loss[r] = -logp[r, target[r]]. Backward: dx[r, c] = g_r * (exp(logp[r, c]) - [c == t_r])
with g_r = g[r * g_step] * mult (mean: g / N from one device scalar, none: g[r])."""
from __future__ import annotations

import math

from numba import cuda


@cuda.jit
def ce_forward(x, target, C, logp, loss, bad):
    r = cuda.grid(1)
    step = cuda.gridsize(1)
    n = loss.size
    while r < n:
        base = r * C
        m = x[base]
        for c in range(1, C):
            if x[base + c] > m:
                m = x[base + c]
        s = 0.0
        for c in range(C):
            s += math.exp(x[base + c] - m)
        lse = m + math.log(s)
        for c in range(C):
            logp[base + c] = x[base + c] - lse
        t = target[r]
        if t < 0 or t >= C:
            bad[0] = 1
            loss[r] = math.nan
        else:
            loss[r] = -(x[base + t] - lse)
        r += step


@cuda.jit
def ce_backward(logp, target, C, g, g_step, mult, dx):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < dx.size:
        r = i // C
        c = i - r * C
        v = math.exp(logp[i])
        if c == target[r]:
            v -= 1
        dx[i] = v * g[r * g_step] * mult
        i += step
