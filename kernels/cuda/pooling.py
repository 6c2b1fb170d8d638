"""Max and average pooling, PyTorch semantics (kernels/reference/pooling.py is the
oracle): forward one thread per output; average backward one thread per input element
that gathers from every window containing it; max backward scatters with atomics.

Max pooling scans each window in row-major order with strict '>' (the first maximum
wins) and lets a NaN take over; argmax is the flat h*W + w in the (H, W) plane.
"""
from __future__ import annotations

import math

from numba import cuda, float64


@cuda.jit(device=True)
def _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad):
    h0 = i * sh - ph
    w0 = j * sw - pw
    h1 = h0 + kh
    w1 = w0 + kw
    if include_pad:
        return (min(h1, H + ph) - h0) * (min(w1, W + pw) - w0)
    return (min(h1, H) - max(h0, 0)) * (min(w1, W) - max(w0, 0))


@cuda.jit
def max_forward(x, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, y, arg):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < y.size:
        j = t % Wo
        i = (t // Wo) % Ho
        plane = t // (Wo * Ho)
        h0 = i * sh - ph
        w0 = j * sw - pw
        best = -math.inf
        where = max(h0, 0) * W + max(w0, 0)
        for r in range(kh):
            h = h0 + r
            if 0 <= h < H:
                for s in range(kw):
                    v = w0 + s
                    if 0 <= v < W:
                        val = float64(x[plane * H * W + h * W + v])
                        if val > best or val != val:
                            best = val
                            where = h * W + v
        y[t] = best
        arg[t] = where
        t += step


@cuda.jit
def max_backward(dy, arg, HW, HoWo, dx):
    """dx (zeroed) += dy at each window's argmax: a scatter, with atomic adds because
    overlapping windows (stride < kernel) can share an argmax."""
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < dy.size:
        cuda.atomic.add(dx, (t // HoWo) * HW + arg[t], dy[t])
        t += step


@cuda.jit
def avg_forward(x, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, include_pad, y):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < y.size:
        j = t % Wo
        i = (t // Wo) % Ho
        plane = t // (Wo * Ho)
        h0 = i * sh - ph
        w0 = j * sw - pw
        acc = 0.0
        for r in range(kh):
            h = h0 + r
            if 0 <= h < H:
                for s in range(kw):
                    v = w0 + s
                    if 0 <= v < W:
                        acc += float64(x[plane * H * W + h * W + v])
        y[t] = acc / _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad)
        t += step


@cuda.jit
def avg_backward(dy, H, W, Ho, Wo, kh, kw, sh, sw, ph, pw, include_pad, dx):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < dx.size:
        v = t % W
        h = (t // W) % H
        plane = t // (W * H)
        acc = 0.0
        i_lo = max(0, (h + ph - kh) // sh + 1) if h + ph - kh >= 0 else 0
        i_hi = min(Ho - 1, (h + ph) // sh)
        j_lo = max(0, (v + pw - kw) // sw + 1) if v + pw - kw >= 0 else 0
        j_hi = min(Wo - 1, (v + pw) // sw)
        for i in range(i_lo, i_hi + 1):
            for j in range(j_lo, j_hi + 1):
                acc += float64(dy[(plane * Ho + i) * Wo + j]) / \
                    _avg_div(i, j, H, W, kh, kw, sh, sw, ph, pw, include_pad)
        dx[t] = acc
        t += step
