"""conv2d (cross-correlation, PyTorch semantics) as direct gather kernels: one thread
per output element of each of the three products, so no atomics and no column matrix.

    forward          y[n, k, i, j]  = b[k] + sum_{c, r, s} x[n, g Cg + c, i sh + r dh - ph,
                                                             j sw + s dw - pw] w[k, c, r, s]
    backward-input   dx[n, c, h, v] = sum over (k in c's group, r, s) with
                                      h + ph - r dh = i sh, 0 <= i < Ho (same for v, j)
                                      of dy[n, k, i, j] w[k, c - g Cg, r, s]
    backward-weight  dw[k, c, r, s] = sum_{n, i, j} dy[n, k, i, j] x[n, g Cg + c, ...]

(g: the group of k, Cg = C / groups, Kg = K / groups.) Not yet the shared-memory tiled
implicit GEMM the issue asks for: these are the correct, simple first kernels.
"""
from __future__ import annotations

from numba import cuda, float64


@cuda.jit
def conv_forward(x, w, b, has_bias, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw,
                 Kg, y):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < y.size:
        j = t % Wo
        i = (t // Wo) % Ho
        k = (t // (Wo * Ho)) % K
        n = t // (Wo * Ho * K)
        g = k // Kg
        acc = float64(b[k]) if has_bias else 0.0
        for c in range(Cg):
            xc = (n * C + g * Cg + c) * H
            wc = (k * Cg + c) * R
            for r in range(R):
                h = i * sh + r * dh - ph
                if 0 <= h < H:
                    for s in range(S):
                        v = j * sw + s * dw - pw
                        if 0 <= v < W:
                            acc += float64(x[(xc + h) * W + v]) * float64(w[(wc + r) * S + s])
        y[t] = acc
        t += step


@cuda.jit
def conv_backward_input(dy, w, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, Kg,
                        dx):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < dx.size:
        v = t % W
        h = (t // W) % H
        c = (t // (W * H)) % C
        n = t // (W * H * C)
        g = c // Cg
        cl = c - g * Cg
        acc = 0.0
        for kk in range(Kg):
            k = g * Kg + kk
            for r in range(R):
                hi = h + ph - r * dh
                if hi >= 0 and hi % sh == 0 and hi // sh < Ho:
                    i = hi // sh
                    for s in range(S):
                        vj = v + pw - s * dw
                        if vj >= 0 and vj % sw == 0 and vj // sw < Wo:
                            acc += float64(dy[((n * K + k) * Ho + i) * Wo + vj // sw]) * \
                                float64(w[((k * Cg + cl) * R + r) * S + s])
        dx[t] = acc
        t += step


@cuda.jit
def conv_backward_weight(dy, x, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, Kg,
                         dwt):
    t = cuda.grid(1)
    step = cuda.gridsize(1)
    while t < dwt.size:
        s = t % S
        r = (t // S) % R
        c = (t // (S * R)) % Cg
        k = t // (S * R * Cg)
        g = k // Kg
        acc = 0.0
        for n in range(N):
            xc = (n * C + g * Cg + c) * H
            for i in range(Ho):
                h = i * sh + r * dh - ph
                if 0 <= h < H:
                    for j in range(Wo):
                        v = j * sw + s * dw - pw
                        if 0 <= v < W:
                            acc += float64(dy[((n * K + k) * Ho + i) * Wo + j]) * \
                                float64(x[(xc + h) * W + v])
        dwt[t] = acc
        t += step
