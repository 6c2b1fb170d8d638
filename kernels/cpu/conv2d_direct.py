"""Direct convolution for the "numba" backend: the GEMM of kernels/reference/conv2d.py
computed in Numba, tile by tile, without a column matrix in memory.

Why not im2col + BLAS everywhere (kernels/cpu/conv2d.py does that for the other cases):
the column matrix is R*S times the input, and writing it, reading it back and
transposing the GEMM's result cost as much as the GEMM itself (profiled: 60% of the
time of a 3x3 forward on 28x28 maps). Here every parallel task builds the columns of
a block of ~100 output pixels only, in a buffer that stays in the core's cache, and
multiplies it at once.

The multiply is a register tile: 3 rows of one operand times 4 rows of the other, 12
dot products over a contiguous contraction, in one loop. LLVM vectorizes that loop
(16 float32 lanes with AVX-512), keeps the 12 partial sums in registers and adds each
up once at the end; 7 vector loads feed 12 FMAs. A single row pair would load two
vectors per FMA and run at half the speed; Numba's SLP vectorizer is off, so tiles
written as unrolled loops over an accumulator array would not be vectorized at all.
Measured on 2 Zen 4 cores: 190-210 GFLOP/s for the multiply alone (3x4 tiles; 4x4,
5x4, 3x6 and 6x3 tiles measured 1-8% slower).

Layouts. Forward: x is copied once into zero-padded NHWC, so a pixel's columns are
R*S contiguous runs of C values (R runs of S*C when dilation is 1) and no bounds are
checked; the weights are ordered (K, R, S, C) to match; the result is written straight
into NCHW. Backward-weight contracts over pixels instead: rows of dy (NCHW planes
are already pixel-contiguous) against rows of the transposed columns, built per batch
chunk and per block of weight columns.

Determinism: each output element is one task's dot product in a fixed order, and each
weight-gradient block belongs to one task that adds the batch chunks in order, so the
results do not depend on the thread count. fastmath allows only reassociation (for
the vectorized sums) and contraction (FMAs): NaN and inf propagate as usual.
"""
import numpy as np
from numba import njit, prange

_FASTMATH = {"reassoc", "contract"}
_ROWS_BELOW = 32  # contraction length under which forward takes _forward_rows


# --- the register tile ----------------------------------------------------------------

@njit(inline="always", fastmath=_FASTMATH)
def _dot(a, b, n):
    s = a.dtype.type(0)
    for q in range(n):
        s += a[q] * b[q]
    return s


@njit(inline="always", fastmath=_FASTMATH)
def _dot_3x4(a0, a1, a2, b0, b1, b2, b3, n):
    """The 12 dot products a_i . b_j over n elements, in one loop. (The sums start from
    a typed zero, not from the first products: a loop of n - 1 would leave a scalar
    remainder of up to 15 iterations when n is a multiple of 16.)"""
    z = a0.dtype.type(0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = s20 = s21 = s22 = s23 = z
    for q in range(n):
        x0 = a0[q]; x1 = a1[q]; x2 = a2[q]  # noqa: E702
        w0 = b0[q]; w1 = b1[q]; w2 = b2[q]; w3 = b3[q]  # noqa: E702
        s00 += x0 * w0; s01 += x0 * w1; s02 += x0 * w2; s03 += x0 * w3  # noqa: E702
        s10 += x1 * w0; s11 += x1 * w1; s12 += x1 * w2; s13 += x1 * w3  # noqa: E702
        s20 += x2 * w0; s21 += x2 * w1; s22 += x2 * w2; s23 += x2 * w3  # noqa: E702
    return s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23


@njit(inline="always", fastmath=_FASTMATH)
def _products(A, B, bias, out, accumulate):
    """out[j, i] = A[i] . B[j] + bias[j], or out[j, i] += A[i] . B[j] when accumulating
    (bias is then not read), for rows A (m, n) and B (k, n): 3x4 tiles, and single dot
    products for the rows left over."""
    m, n = A.shape
    k = B.shape[0]
    m3, k4 = m - m % 3, k - k % 4
    for j in range(0, k4, 4):
        b0, b1, b2, b3 = B[j], B[j + 1], B[j + 2], B[j + 3]
        for i in range(0, m3, 3):
            t = _dot_3x4(A[i], A[i + 1], A[i + 2], b0, b1, b2, b3, n)
            for ii in range(3):
                for jj in range(4):
                    if accumulate:
                        out[j + jj, i + ii] += t[ii * 4 + jj]
                    else:
                        out[j + jj, i + ii] = t[ii * 4 + jj] + bias[j + jj]
        for i in range(m3, m):
            for jj in range(4):
                _store(out, j + jj, i, _dot(A[i], B[j + jj], n), bias, accumulate)
    for j in range(k4, k):
        for i in range(m):
            _store(out, j, i, _dot(A[i], B[j], n), bias, accumulate)


@njit(inline="always")
def _store(out, j, i, v, bias, accumulate):
    if accumulate:
        out[j, i] += v
    else:
        out[j, i] = v + bias[j]


# --- forward (and backward-input, as the forward of the flipped kernel) -------------

@njit(parallel=True, cache=True)
def _to_padded_nhwc(x, ph, pw, out):
    """out[n, ph + h, pw + w, c] = x[n, c, h, w], zeros around; one padded row a task."""
    N, C, H, W = x.shape
    _, Hp, Wp, _ = out.shape
    for t in prange(N * Hp):
        n = t // Hp
        h = t - n * Hp - ph
        row = out[n, h + ph]
        if h < 0 or h >= H:
            row[:] = 0
            continue
        row[:pw] = 0
        row[pw + W:] = 0
        for c in range(C):
            src = x[n, c, h]
            for w in range(W):
                row[pw + w, c] = src[w]


def _round16(n):
    """Contraction lengths are padded with zeros to a multiple of 16, the float32 vector
    width, so the tile loop has no scalar remainder (15 leftover iterations cost more
    than the whole vector loop for a contraction of 64)."""
    return -(-n // 16) * 16


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_direct(xp, wm, b, R, S, sh, sw, dh, dw, Ho, Wo, block, y):
    """y[n, k, p] = cols_n[p] . wm[k] + b[k] for padded NHWC xp, wm (K, Lp) in
    (r, s, c) order and zero past R*S*C, y (N, K, Ho*Wo). One task per (sample, block
    of pixels)."""
    N, Hp, Wp, C = xp.shape
    K, Lp = wm.shape
    L = R * S * C
    P = Ho * Wo
    nb = (P + block - 1) // block
    xf = xp.reshape(-1)
    run = S * C if dw == 1 else C  # contiguous values per copy
    for t in prange(N * nb):
        n = t // nb
        i = t - n * nb
        p0, p1 = i * P // nb, (i + 1) * P // nb  # even blocks
        cols = np.empty((p1 - p0, Lp), dtype=xp.dtype)
        for p in range(p0, p1):
            oh = p // Wo
            ow = p - oh * Wo
            dst = cols[p - p0]
            for r in range(R):
                base = ((n * Hp + oh * sh + r * dh) * Wp + ow * sw) * C
                for s in range(0, S, run // C):
                    src = base + s * dw * C
                    d = (r * S + s) * C
                    dst[d:d + run] = xf[src:src + run]
            dst[L:] = 0
        _products(cols, wm, b, y[n, :, p0:p1], False)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _forward_rows(x, table, wm, b, block, y):
    """The same product for a short contraction (a first layer's R*S*C = 9): there the
    dot products are too short to vectorize, so the loop runs along pixels instead, four
    output rows at a time, each updated once per column in the core's L1 cache.
    x NCHW, table the im2col gather table, wm (K, C*R*S) as PyTorch lays it out."""
    N, C, H, W = x.shape
    RS, P = table.shape
    K, L = wm.shape
    HW = H * W
    xf = x.reshape(-1)
    nb = (P + block - 1) // block
    for t in prange(N * nb):
        n = t // nb
        i = t - n * nb
        p0, p1 = i * P // nb, (i + 1) * P // nb
        pn = p1 - p0
        colsT = np.empty((L, pn), dtype=x.dtype)
        for l in range(L):
            c = l // RS
            pick = table[l - c * RS, p0:p1]
            plane = xf[(n * C + c) * HW:(n * C + c + 1) * HW]
            d = colsT[l]
            for p in range(pn):
                q = pick[p]
                d[p] = plane[q] if q >= 0 else 0
        for k in range(0, K - K % 4, 4):
            y0, y1 = y[n, k][p0:p1], y[n, k + 1][p0:p1]
            y2, y3 = y[n, k + 2][p0:p1], y[n, k + 3][p0:p1]
            y0[:] = b[k]
            y1[:] = b[k + 1]
            y2[:] = b[k + 2]
            y3[:] = b[k + 3]
            for l in range(L):
                w0, w1, w2, w3 = wm[k, l], wm[k + 1, l], wm[k + 2, l], wm[k + 3, l]
                src = colsT[l]
                for p in range(pn):
                    v = src[p]
                    y0[p] += w0 * v
                    y1[p] += w1 * v
                    y2[p] += w2 * v
                    y3[p] += w3 * v
        for k in range(K - K % 4, K):
            yk = y[n, k][p0:p1]
            yk[:] = b[k]
            for l in range(L):
                wk = wm[k, l]
                src = colsT[l]
                for p in range(pn):
                    yk[p] += wk * src[p]


def forward(x, w, b, stride, padding, dilation, out_hw, table):
    """conv2d_forward for groups == 1, any stride, padding and dilation; table is the
    im2col gather table of the geometry (conv2d._gather_table)."""
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    (ph, pw), (Ho, Wo) = padding, out_hw
    bias = np.zeros(K, x.dtype) if b is None else b
    y = np.empty((N, K, Ho * Wo), dtype=x.dtype)
    if C * R * S < _ROWS_BELOW:
        _forward_rows(x, table, w.reshape(K, C * R * S), bias, 512, y)
        return y.reshape(N, K, Ho, Wo)
    xp = np.empty((N, H + 2 * ph, W + 2 * pw, C), dtype=x.dtype)
    _to_padded_nhwc(x, ph, pw, xp)
    L = R * S * C
    wm = np.zeros((K, _round16(L)), dtype=x.dtype)
    wm[:, :L] = w.transpose(0, 2, 3, 1).reshape(K, L)
    _forward_direct(xp, wm, bias, R, S, *stride, *dilation, Ho, Wo, 96, y)
    return y.reshape(N, K, Ho, Wo)


# --- backward-weight ---------------------------------------------------------------

@njit(parallel=True, cache=True)
def _chunk_dy(dy, nc, out):
    """out[i, k, nl*P + p] = dy[i*nc + nl, k, p], zeros past the samples there are:
    each chunk of nc samples as one contiguous row per output channel."""
    N, K, P = dy.shape
    nchunks = out.shape[0]
    for t in prange(nchunks * K):
        i = t // K
        k = t - i * K
        row = out[i, k]
        m = min(nc, N - i * nc)
        for nl in range(m):
            row[nl * P:(nl + 1) * P] = dy[i * nc + nl, k]
        row[m * P:] = 0


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _weight_direct(x, table, nc, dyc, block, dwm):
    """dwm[k, l] = sum over chunks i of colsT_i[l] . dyc[i, k], where colsT_i[l] for
    l = (c, r, s) holds what weight (c, r, s) saw at every output pixel of chunk i's
    samples (table: see conv2d._gather_table; -1 is padding). One task per block of
    weight columns l, adding the chunks in order: each dwm element has one owner."""
    N, C, H, W = x.shape
    RS, P = table.shape
    K, L = dwm.shape
    nchunks, _, Lq = dyc.shape
    HW = H * W
    xf = x.reshape(-1)
    nb = (L + block - 1) // block
    for t in prange(nb):
        l0, l1 = t * block, min(L, (t + 1) * block)
        colsT = np.zeros((l1 - l0, Lq), dtype=x.dtype)  # the padding past P*nc stays 0
        for i in range(nchunks):
            m = min(nc, N - i * nc)
            for l in range(l0, l1):
                c = l // RS
                pick = table[l - c * RS]
                dst = colsT[l - l0]
                for nl in range(m):
                    base = ((i * nc + nl) * C + c) * HW
                    plane = xf[base:base + HW]
                    d = dst[nl * P:(nl + 1) * P]
                    for p in range(P):
                        q = pick[p]
                        d[p] = plane[q] if q >= 0 else 0
                dst[m * P:] = 0
            _products(colsT, dyc[i], dyc[i, :, 0], dwm[:, l0:l1], True)


def backward_weight(dy, x, w_shape, table, chunk_pixels=512):
    """conv2d_backward_weight for groups == 1; table as for forward. Samples are taken
    in chunks of about chunk_pixels output pixels, so the contraction is long enough to
    vectorize also on 7x7 maps; weight columns in blocks of 24 (of 3 when there are
    fewer than 48, so a first layer's 9 still make 3 tasks)."""
    N, K, P = dy.shape[0], dy.shape[1], table.shape[1]
    L = int(np.prod(w_shape[1:]))
    nc = max(1, min(N, -(-chunk_pixels // P)))
    dyc = np.empty((-(-N // nc), K, _round16(nc * P)), dtype=dy.dtype)
    _chunk_dy(dy.reshape(N, K, P), nc, dyc)
    dwm = np.zeros((K, L), dtype=dy.dtype)
    _weight_direct(x, table, nc, dyc, 24 if L >= 48 else 3, dwm)
    return dwm.reshape(w_shape)
