"""Direct convolution for the "numba" backend: the GEMMs of kernels/reference/conv2d.py
computed in Numba, tile by tile, without a column matrix in memory and without BLAS.
kernels/cpu/conv2d.py sends groups=1 convolutions other than 1x1 here.

Why not im2col + BLAS (conv2d.py does that for the other cases): the column matrix is
R*S times the input, and writing it, reading it back and transposing the GEMM's result
cost as much as the GEMM itself. And OpenBLAS's worker threads keep spinning after
each call, slowing whichever Numba kernel runs next on the same cores, so a training
step that mixes the two pays for it in every kernel (numbers: benchmarks/DESIGN.md,
conv2d_direct.py). Here every parallel task builds the columns of a block of ~100
output pixels only, in a buffer that stays in the core's cache, and multiplies it at
once.

The multiply is a register tile: 3 rows of one operand times 4 rows of the other, 12
dot products over a contiguous contraction, in one loop. LLVM vectorizes that loop
(16 float32 lanes with AVX-512), keeps the 12 partial sums in registers and adds each
up once at the end; 7 vector loads feed 12 FMAs. A single row pair would load two
vectors per FMA and run at half the speed; Numba's SLP vectorizer is off, so tiles
written as unrolled loops over an accumulator array would not be vectorized at all.
3x4 is the fastest of the tile shapes tried (numbers: benchmarks/DESIGN.md,
conv2d_direct.py). What it cannot beat: the one horizontal sum per output element,
about 16/L of the work for a contraction of length L (6% for a 3x3 kernel over 32
channels), and the loads of both operands, where a JIT-generated outer-product kernel
(oneDNN's) broadcasts one of them.

Layouts. Forward: x is copied once into zero-padded NHWC, so a pixel's columns are R
contiguous runs of S*C values (R*S runs of C with dilation) and no bounds are checked;
the weights are ordered (K, R, S, C) to match; the result is written straight into
NCHW. A first layer's contraction (C*R*S = 9) is too short for dot products: it runs
along pixels instead (_forward_rows). Backward-input is the forward of dy with the
flipped kernel, phase by phase for strides > 1 (see backward_input). Backward-weight
contracts over pixels: rows of dy (NCHW planes are pixel-contiguous already) against
rows of the transposed columns, built per batch chunk and per block of weight columns.

Determinism: each output element is one task's dot product in a fixed order, and each
weight-gradient block belongs to one task that adds the batch chunks in order, so the
results do not depend on the thread count. fastmath allows only reassociation (for
the vectorized sums) and contraction (FMAs): NaN and inf propagate as usual.
"""
import numpy as np
from numba import njit, prange

from .builds import float32_parallel

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
def _products(A, B, bias, out, at, accumulate):
    """out[j, at[i]] = A[i] . B[j] + bias[j], or out[j, at[i]] += A[i] . B[j] when
    accumulating (bias is then not read), for rows A (m, n) and B (k, n): 3x4 tiles,
    and single dot products for the rows left over. `at` places A's rows among out's
    columns (a strided phase of dx, or a block of weight columns)."""
    m, n = A.shape
    k = B.shape[0]
    m3, k4 = m - m % 3, k - k % 4
    for j in range(0, k4, 4):
        b0, b1, b2, b3 = B[j], B[j + 1], B[j + 2], B[j + 3]
        for i in range(0, m3, 3):
            t = _dot_3x4(A[i], A[i + 1], A[i + 2], b0, b1, b2, b3, n)
            for ii in range(3):
                for jj in range(4):
                    _store(out, j + jj, at[i + ii], t[ii * 4 + jj], bias, accumulate)
        for i in range(m3, m):
            for jj in range(4):
                _store(out, j + jj, at[i], _dot(A[i], B[j + jj], n), bias, accumulate)
    for j in range(k4, k):
        for i in range(m):
            _store(out, j, at[i], _dot(A[i], B[j], n), bias, accumulate)


@njit(inline="always")
def gather(plane, pick, dst):
    """dst[p] = plane[pick[p]], 0 where pick[p] is -1: one row of a transposed column
    matrix, through conv2d._gather_table (-1 marks a window position on padding)."""
    for p in range(dst.size):
        q = pick[p]
        dst[p] = plane[q] if q >= 0 else 0


@njit(inline="always")
def _store(out, j, i, v, bias, accumulate):
    if accumulate:
        out[j, i] += v
    else:
        out[j, i] = v + bias[j]


# --- forward (and backward-input, as the forward of the flipped kernel) -------------

@float32_parallel(cache=True)
def _to_padded_nhwc(x, top, left, out):
    """out[n, i, j, c] = x[n, c, i - top, j - left], 0 outside x: x in NHWC, padded (or,
    where top or left is negative, cropped) to out's size. One row of out a task, filled
    pixel by pixel: reading C strided values and writing them contiguously is faster
    than the other way round, strided writes (numbers: benchmarks/DESIGN.md,
    conv2d_direct.py)."""
    N, C, H, W = x.shape
    _, Hp, Wp, _ = out.shape
    HW = H * W
    j0, j1 = max(0, left), min(Wp, W + left)  # the columns of out that x covers
    xf = x.reshape(-1)
    for t in prange(N * Hp):
        n = t // Hp
        h = t - n * Hp - top
        row = out[n, h + top]
        if h < 0 or h >= H or j0 >= j1:
            row[:] = 0
            continue
        row[:j0] = 0
        row[j1:] = 0
        first = n * C * HW + h * W - left  # flat index of x[n, 0, h, j] is first + j
        for j in range(j0, j1):
            pixel = row[j]
            for c in range(C):
                pixel[c] = xf[first + j + c * HW]


def _round16(n):
    """Contraction lengths are padded with zeros to a multiple of 16, the float32 vector
    width, so the tile loop has no scalar remainder (15 leftover iterations cost more
    than the whole vector loop for a contraction of 64)."""
    return -(-n // 16) * 16


@float32_parallel(cache=True, fastmath=_FASTMATH)
def _forward_direct(xp, wm, b, R, S, sh, sw, dh, dw, Ho, Wo, block, y, at):
    """y[n, k, at[p]] = cols_n[p] . wm[k] + b[k] for padded NHWC xp, wm (K, Lp) in
    (r, s, c) order and zero past R*S*C, y (N, K, Q), at (Ho*Wo,): where output pixel p
    goes. One task per (sample, block of pixels)."""
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
        _products(cols, wm, b, y[n], at[p0:p1], False)


@float32_parallel(cache=True, fastmath=_FASTMATH)
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
        for row in range(L):
            c = row // RS
            gather(xf[(n * C + c) * HW:(n * C + c + 1) * HW], table[row - c * RS, p0:p1],
                   colsT[row])
        for k in range(0, K - K % 4, 4):
            y0, y1 = y[n, k][p0:p1], y[n, k + 1][p0:p1]
            y2, y3 = y[n, k + 2][p0:p1], y[n, k + 3][p0:p1]
            y0[:] = b[k]
            y1[:] = b[k + 1]
            y2[:] = b[k + 2]
            y3[:] = b[k + 3]
            for row in range(L):
                w0, w1, w2, w3 = wm[k, row], wm[k + 1, row], wm[k + 2, row], wm[k + 3, row]
                src = colsT[row]
                for p in range(pn):
                    v = src[p]
                    y0[p] += w0 * v
                    y1[p] += w1 * v
                    y2[p] += w2 * v
                    y3[p] += w3 * v
        for k in range(K - K % 4, K):
            yk = y[n, k][p0:p1]
            yk[:] = b[k]
            for row in range(L):
                wk = wm[k, row]
                src = colsT[row]
                for p in range(pn):
                    yk[p] += wk * src[p]


def _tile_weights(w):
    """(K, C, R, S) weights as the (K, R*S*C) rows _forward_direct multiplies, zero-padded
    to a multiple of 16 columns."""
    K, C, R, S = w.shape
    L = R * S * C
    wm = np.zeros((K, _round16(L)), dtype=w.dtype)
    wm[:, :L] = w.transpose(0, 2, 3, 1).reshape(K, L)
    return wm


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
    _forward_direct(xp, _tile_weights(w), bias, R, S, *stride, *dilation, Ho, Wo, 96, y,
                    np.arange(Ho * Wo))
    return y.reshape(N, K, Ho, Wo)


# --- backward-input ------------------------------------------------------------------

def _phase_taps(k, stride, pad, size):
    """For the input positions h with (h + pad) % stride == a, for each phase a: the
    kernel offsets r that reach them ((r - a) % stride == 0, in decreasing order, so
    that they line up with increasing rows of dy), the first such h, and how many."""
    out = []
    for a in range(stride):
        taps = list(range(a, k, stride))[::-1]
        u0 = -(-(pad - a) // stride)  # first u with h = a - pad + stride*u >= 0
        u1 = (size - 1 + pad - a) // stride  # last u with h < size
        out.append((taps, a - pad + stride * u0, u0, max(0, u1 - u0 + 1)))
    return out


def backward_input(dy, w, x_shape, stride, padding):
    """conv2d_backward_input for groups == 1 and dilation 1, any stride: dx is made of
    sh*sw interleaved phases (input rows h with the same (h + ph) % sh, columns alike),
    and each phase is a stride-1 convolution of dy with the kernel offsets that reach
    it, flipped. With stride 1 that is the one "full" convolution with the flipped
    kernel; with stride 2 and a 3x3 kernel, four convolutions with 2x2, 2x1, 1x2 and
    1x1 kernels: the forward's multiply-adds exactly, none spent on zeros."""
    N, C, H, W = x_shape
    K, _, R, S = w.shape
    (sh, sw), (ph, pw) = stride, padding
    Ho, Wo = dy.shape[2:]
    dx = np.empty(x_shape, dtype=dy.dtype)
    zero = np.zeros(C, dy.dtype)
    for rows, h0, u0, Hu in _phase_taps(R, sh, ph, H):
        for cols, w0, v0, Wu in _phase_taps(S, sw, pw, W):
            if Hu == 0 or Wu == 0:
                continue
            if not rows or not cols:  # no kernel offset reaches these pixels
                dx[:, :, h0::sh, w0::sw] = 0
                continue
            # Rows: dx[h0 + sh*u] = sum over m of dy[u0 + u - m] * w[a + m*sh] (a the
            # phase), i.e. with the taps reversed (rows) a stride-1 correlation whose
            # output u reads dy rows u0 + u - (Ma - 1) on: dy padded (or cropped) by
            # Ma - 1 - u0 on top. Columns alike.
            sub = w[:, :, rows][:, :, :, cols]  # (K, C, Ma, Mb), flipped
            Ma, Mb = len(rows), len(cols)
            dyp = np.empty((N, Hu + Ma - 1, Wu + Mb - 1, K), dtype=dy.dtype)
            _to_padded_nhwc(dy, Ma - 1 - u0, Mb - 1 - v0, dyp)
            wm = _tile_weights(np.ascontiguousarray(sub.transpose(1, 0, 2, 3)))
            # where each of the phase's Hu x Wu pixels lies in a flat plane of dx
            at = ((h0 + sh * np.arange(Hu))[:, None] * W + w0 + sw * np.arange(Wu)).ravel()
            _forward_direct(dyp, wm, zero, Ma, Mb, 1, 1, 1, 1, Hu, Wu, 96,
                            dx.reshape(N, C, H * W), at)
    return dx


# --- backward-weight ---------------------------------------------------------------

@float32_parallel(cache=True)
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


@float32_parallel(cache=True, fastmath=_FASTMATH)
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
    columns = np.empty(L, dtype=np.int64)  # a loop, not np.arange: that would be a
    for i in range(L):                     # parallel region (a team wake-up) of its own
        columns[i] = i
    for t in prange(nb):
        l0, l1 = t * block, min(L, (t + 1) * block)
        colsT = np.empty((l1 - l0, Lq), dtype=x.dtype)  # every chunk fills every row
        for i in range(nchunks):
            m = min(nc, N - i * nc)
            for row in range(l0, l1):
                c = row // RS
                pick = table[row - c * RS]
                dst = colsT[row - l0]
                for nl in range(m):
                    base = ((i * nc + nl) * C + c) * HW
                    gather(xf[base:base + HW], pick, dst[nl * P:(nl + 1) * P])
                dst[m * P:] = 0  # padding, and samples a short last chunk lacks
            _products(colsT, dyc[i], dyc[i, :, 0], dwm, columns[l0:l1], True)


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
