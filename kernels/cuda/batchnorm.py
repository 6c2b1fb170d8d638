"""Batch normalization kernels: x viewed as (N, C, L) with L = H*W (1 for (N, C)).

Training forward: one block per channel. Its threads stride over the channel's
m = N*L values, summing d = x - k and d*d (k: the channel's first value, a shift that
keeps E[d^2] - E[d]^2 from cancelling), combine the partial sums in shared memory,
then normalize the channel: y = gamma (x - mean) / sqrt(var + eps) + beta.

Training backward (xhat = (x - mean) * inv_std, inv_std = 1/sqrt(var + eps)):
    dbeta = sum dy,   dgamma = sum dy * xhat,
    dx = gamma * inv_std / m * (m dy - dbeta - xhat dgamma)
again one block per channel: a block reduction of the two sums, then the dx sweep.
"""
from __future__ import annotations

import math

from numba import cuda, float64

from ._launch import THREADS


@cuda.jit(device=True)
def _block_sum2(part_a, part_b, t, nt):
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if t < s:
            part_a[t] += part_a[t + s]
            part_b[t] += part_b[t + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit
def bn_train_forward(x, gamma, beta, N, C, L, eps, y, mean_out, var_out):
    pa = cuda.shared.array(THREADS, float64)
    pb = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    m = N * L
    c = cuda.blockIdx.x
    while c < C:
        k = float64(x[c * L])
        sa = 0.0
        sb = 0.0
        j = t
        while j < m:
            n = j // L
            d = float64(x[(n * C + c) * L + j - n * L]) - k
            sa += d
            sb += d * d
            j += nt
        pa[t] = sa
        pb[t] = sb
        _block_sum2(pa, pb, t, nt)
        md = pa[0] / m
        mean = k + md
        var = pb[0] / m - md * md
        if var < 0:
            var = 0.0
        inv = 1.0 / math.sqrt(var + eps)
        scale = gamma[c] * inv
        shift = beta[c] - mean * scale
        j = t
        while j < m:
            n = j // L
            i = (n * C + c) * L + j - n * L
            y[i] = x[i] * scale + shift
            j += nt
        if t == 0:
            mean_out[c] = mean
            var_out[c] = var
        cuda.syncthreads()
        c += cuda.gridDim.x


@cuda.jit
def bn_backward(dy, x, gamma, mean, var, N, C, L, eps, training, dx, dgamma, dbeta):
    """training=False: the statistics are constants (eval mode), dx = gamma inv_std dy."""
    pa = cuda.shared.array(THREADS, float64)
    pb = cuda.shared.array(THREADS, float64)
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    m = N * L
    c = cuda.blockIdx.x
    while c < C:
        mu = float64(mean[c])
        inv = 1.0 / math.sqrt(float64(var[c]) + eps)
        sa = 0.0
        sb = 0.0
        j = t
        while j < m:
            n = j // L
            i = (n * C + c) * L + j - n * L
            g = float64(dy[i])
            sa += g
            sb += g * (float64(x[i]) - mu) * inv
            j += nt
        pa[t] = sa
        pb[t] = sb
        _block_sum2(pa, pb, t, nt)
        db = pa[0]
        dg = pb[0]
        coef = gamma[c] * inv
        j = t
        while j < m:
            n = j // L
            i = (n * C + c) * L + j - n * L
            if training:
                xhat = (float64(x[i]) - mu) * inv
                dx[i] = coef / m * (m * float64(dy[i]) - db - xhat * dg)
            else:
                dx[i] = coef * dy[i]
            j += nt
        if t == 0:
            dgamma[c] = dg
            dbeta[c] = db
        cuda.syncthreads()
        c += cuda.gridDim.x


@cuda.jit
def bn_eval_forward(x, gamma, beta, rmean, rvar, C, L, eps, y):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < y.size:
        c = (i // L) % C
        scale = gamma[c] / math.sqrt(float64(rvar[c]) + eps)
        y[i] = (x[i] - rmean[c]) * scale + beta[c]
        i += step
