"""2-D convolution for the "numba" backend: parallel Numba data movement around BLAS GEMMs,
or, for groups=1 convolutions, the channels-last implicit GEMMs of conv2d_nhwc.py
(outer-product register tiles from microkernel.py; NCHW converted on the way in and
written back to NCHW by the tiles' epilogue) or the direct kernels of conv2d_direct.py
(no column matrix, no BLAS; see there why, and _Geometry for the routes).

Same functions and results as kernels/reference/conv2d.py; read that file first for the
math (y = w_mat @ cols, dcols = w_mat^T @ dy, dw = dy @ cols^T). The arithmetic is all in
BLAS matrix products, called from Python so that BLAS uses its own threads; Numba does
the memory-bound reshuffling around them, in parallel. The choices (numbers:
benchmarks/DESIGN.md, conv2d.py):

* Two GEMM layouts. "Batched": the column matrix is (C*R*S, N*P) with P = Ho*Wo, so the
  batch is the GEMM's long dimension, and its (K, N*P) result is turned into NCHW by one
  pass that copies whole planes and adds the bias on the way. "Per sample": the same
  buffer viewed as (N, C*R*S, P), one GEMM per sample writing NCHW directly. The second
  skips the transposes but runs smaller GEMMs; it wins where the transposes cost about as
  much as the GEMM: a short contraction (a 1-channel first layer), or a 1x1 forward,
  whose column matrix is x itself (_Geometry has the rules).
* Batch chunks. The column matrix is R*S times the input (58 MB for (64, 32, 28, 28)
  and a 3x3 kernel), and once a working set outgrows the last-level cache, memory
  bandwidth drops steeply. The batch is processed in chunks whose column matrix fits
  _CHUNK_BYTES, in per-thread scratch buffers reused across calls.
* im2col gathers through a per-geometry index table, one loop over a whole output plane
  per (channel, kernel offset), instead of loops over clipped rows, which on small maps
  are all overhead.
* Backward-input with stride 1 is itself a convolution (of dy, with the flipped kernel),
  which replaces the col2im by an im2col and has a long contraction; it is used where
  it moves less data (see conv2d_backward_input).
* Every parallel task owns whole output rows or planes and fills them in a fixed order,
  so results do not depend on the Numba thread count (bitwise; the tests check this).
  col2im adds the R*S windows of one plane within one task: no atomics, no copies.

Thread pools: Numba's OpenMP workers spin after each parallel region by default, and on
few cores shared with BLAS's workers every Numba <-> BLAS hand-over then costs a
scheduler time slice (numbers: benchmarks/DESIGN.md, conv2d.py). With
OMP_WAIT_POLICY=PASSIVE they sleep instead: `kernels/__init__.py` sets it (unless the
user chose otherwise) before Numba starts its pool. Caveat: `import torch` loads its
own OpenMP runtime globally and Numba then binds to that one, so torch imported first
(with the variable unset) brings the spinning back.
"""
import functools

import numpy as np
from numba import njit, prange

from . import conv2d_direct, conv2d_nhwc
from .builds import float32_parallel
from .conv2d_direct import gather
from .scratch import buffer

_CHUNK_BYTES = 8 << 20  # column-matrix bytes per batch chunk (see module docstring)
_THIN_FORWARD = 16  # Cg*R*S up to which forward runs one GEMM per sample
_THIN_WEIGHT = 128  # ... and backward-weight (see _Geometry)
_DIRECT = True  # groups == 1 and not 1x1: kernels/cpu/conv2d_direct.py (see _Geometry)
_NHWC = True  # groups == 1: the channels-last implicit GEMMs of conv2d_nhwc.py (see _Geometry)
_NHWC_MIN_FORWARD = 32  # ... for forward from this contraction length C*R*S on
_NHWC_MIN_WEIGHT = 32  # ... for backward-weight likewise
_NHWC_POINTWISE = False  # ... also for 1x1 convolutions
_NHWC_MIN_INPUT = 8  # ... for backward-input from this many input channels on


# --- geometry ---------------------------------------------------------------------------

def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


@functools.lru_cache(maxsize=64)
def _gather_table(H, W, R, S, sh, sw, ph, pw, dh, dw, Ho, Wo):
    """table[r*S + s, i*Wo + j] = flat index into an (H, W) plane of the pixel that kernel
    offset (r, s) sees at output (i, j), or -1 where that window lies on padding.

    With it im2col is one plain loop of Ho*Wo gathers per (plane, offset), instead of Ho
    loops of Wo with clipped bounds, as short rows are all overhead (numbers:
    benchmarks/DESIGN.md, conv2d.py).
    """
    table = np.empty((R * S, Ho * Wo), dtype=np.int64)
    i, j = np.arange(Ho)[:, None], np.arange(Wo)[None, :]
    for r in range(R):
        for s in range(S):
            h, w = i * sh + r * dh - ph, j * sw + s * dw - pw
            inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            table[r * S + s] = np.where(inside, h * W + w, -1).ravel()
    table.flags.writeable = False  # shared by every call with this geometry
    return table


@njit(cache=True)
def _inside(n_out, n_in, stride, offset):
    """[a, b): the outputs o whose input o*stride + offset lies in 0..n_in-1 (a range,
    since the input index grows with o)."""
    a = 0
    while a < n_out and a * stride + offset < 0:
        a += 1
    b = n_out
    while b > a and (b - 1) * stride + offset >= n_in:
        b -= 1
    return a, b


# --- Numba kernels: layout changes -----------------------------------------------------

@float32_parallel(cache=True, fastmath=False)
def _im2col(x, n0, table, cols):
    """cols[c*RS + rs, nl*P + p] = x[n0 + nl, c].flat[table[rs, p]] (0 where it is -1).

    cols is (C*R*S, nc*P) for the nc samples from n0. One task per row of cols, so each
    thread writes one long sequential run; each input plane is read R*S times, from cache.
    """
    _, C, H, W = x.shape
    RS, P = table.shape
    HW = H * W
    nc = cols.shape[1] // P
    xf = x.reshape(-1)  # flat slices below: cheaper than 2-D views in the hot loop
    for row in prange(C * RS):
        c = row // RS
        pick = table[row - c * RS]
        out = cols[row]
        for nl in range(nc):
            base = ((n0 + nl) * C + c) * HW
            gather(xf[base:base + HW], pick, out[nl * P:(nl + 1) * P])


@float32_parallel(cache=True, fastmath=False)
def _col2im(cols, n0, R, S, sh, sw, ph, pw, dh, dw, Ho, Wo, dx):
    """The adjoint of _im2col: each pixel of dx[n0 + nl, c] gets the sum of the cols
    entries whose windows saw it. One task per plane, so no two threads add into the same
    pixel, and the offsets are added in a fixed order.

    A scatter along output rows (a gather table would visit every pixel once per offset,
    also the pixels a stride skips; numbers: benchmarks/DESIGN.md, conv2d.py)."""
    _, C, H, W = dx.shape
    P = Ho * Wo
    nc = cols.shape[1] // P
    xf = dx.reshape(-1)
    for t in prange(nc * C):
        nl = t // C
        c = t - nl * C
        base = ((n0 + nl) * C + c) * (H * W)
        plane = xf[base:base + H * W]
        for q in range(H * W):
            plane[q] = 0
        for r in range(R):
            i0, i1 = _inside(Ho, H, sh, r * dh - ph)
            for s in range(S):
                j0, j1 = _inside(Wo, W, sw, s * dw - pw)
                n = j1 - j0
                seen = cols[(c * R + r) * S + s, nl * P:(nl + 1) * P]
                for i in range(i0, i1):
                    src = seen[i * Wo + j0:i * Wo + j1]
                    x0 = (i * sh + r * dh - ph) * W + j0 * sw + s * dw - pw
                    if sw == 1:  # contiguous: a vector add
                        dst = plane[x0:x0 + n]
                        for j in range(n):
                            dst[j] += src[j]
                    else:
                        dst = plane[x0:x0 + (n - 1) * sw + 1]
                        for j in range(n):
                            dst[j * sw] += src[j]


@float32_parallel(cache=True, fastmath=False)
def _nkp_to_knp(a, n0, out):
    """out[k, nl*P + p] = a[n0 + nl, k, p]: NCHW samples -> one (K, nc*P) GEMM operand."""
    K, L = out.shape
    P = a.shape[2]
    nc = L // P
    for t in prange(nc * K):
        nl = t // K
        k = t - nl * K
        out[k, nl * P:(nl + 1) * P] = a[n0 + nl, k]


@float32_parallel(cache=True, fastmath=False)
def _knp_to_nkp(a, b, n0, out):
    """out[n0 + nl, k, p] = a[k, nl*P + p] + b[k]: a GEMM result -> NCHW (b may be empty)."""
    K, L = a.shape
    P = out.shape[2]
    nc = L // P
    has_bias = b.size > 0
    for t in prange(nc * K):
        nl = t // K
        k = t - nl * K
        src = a[k, nl * P:(nl + 1) * P]
        dst = out[n0 + nl, k]
        if has_bias:
            bk = b[k]
            for p in range(P):
                dst[p] = src[p] + bk
        else:
            dst[:] = src


@float32_parallel(cache=True, fastmath=False)
def _add_bias(y, b):
    """y[n, k] += b[k], in place, one (n, k) plane per task."""
    N, K, P = y.shape
    for t in prange(N * K):
        n = t // K
        k = t - n * K
        bk = b[k]
        plane = y[n, k]
        for p in range(P):
            plane[p] += bk


@float32_parallel(cache=True, fastmath=False)
def _bias_grad(dy):
    """db[k] = sum of dy[:, k], in float64: one channel per task, its planes added into
    a per-position accumulator (an elementwise add, which vectorizes) summed at the end,
    so the order is fixed."""
    N, K, P = dy.shape
    db = np.empty(K, dtype=dy.dtype)
    for k in prange(K):
        acc = np.zeros(P)
        for n in range(N):
            plane = dy[n, k]
            for p in range(P):
                acc[p] += plane[p]
        db[k] = acc.sum()
    return db


# --- drivers -----------------------------------------------------------------------------

class _Geometry:
    """Sizes of one convolution, how its products are laid out, and the batch chunks its
    column matrix is built in."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, itemsize):
        self.N, self.C, self.H, self.W = x_shape
        self.K, self.Cg, self.R, self.S = w_shape
        self.G = groups
        self.Kg = self.K // groups
        self.sh, self.sw = stride
        self.ph, self.pw = padding
        self.dh, self.dw = dilation
        self.Ho = _out_size(self.H, self.R, self.sh, self.ph, self.dh)
        self.Wo = _out_size(self.W, self.S, self.sw, self.pw, self.dw)
        self.P = self.Ho * self.Wo
        self.CgRS = self.Cg * self.R * self.S
        # A 1x1 kernel that visits every input pixel once: cols is x itself.
        self.pointwise = (self.R == 1 and self.S == 1 and stride == (1, 1)
                          and padding == (0, 0))
        # One GEMM per sample reads and writes NCHW directly, with no transposes, but
        # is a smaller GEMM. It pays where the transposes cost as much as the GEMM: a
        # short contraction Cg*R*S (first layers), or a 1x1 forward that can read x as
        # it is. Backward-weight's per-sample products need a sum of (nc, K, Cg*R*S)
        # partial results, yet they paid for contractions up to _THIN_WEIGHT, though
        # not for 1x1 kernels (numbers: benchmarks/DESIGN.md, conv2d.py).
        one = groups == 1
        self.per_sample_forward = one and (self.pointwise or self.CgRS <= _THIN_FORWARD)
        self.per_sample_weight = one and not self.pointwise and self.CgRS <= _THIN_WEIGHT
        # The direct kernels build columns per block of pixels in cache and multiply
        # them in Numba: no column matrix, no transposes, and no BLAS call, whose
        # worker threads keep spinning after each call and then slow every Numba
        # kernel sharing the cores (numbers: benchmarks/DESIGN.md, conv2d.py). A 1x1
        # kernel needs no columns at all, and one GEMM per sample is faster there.
        self.direct = _DIRECT and one and not self.pointwise
        # The channels-last implicit GEMMs (conv2d_nhwc.py: outer-product register
        # tiles, NCHW converted on the way in, written back to NCHW by the tile's
        # epilogue) where they are faster (numbers: benchmarks/DESIGN.md, conv2d.py;
        # `minidl bench`, conv2d routes table): every groups=1 pass but a first
        # layer's short contraction (C*R*S = 9: the NCHW conversions cost more than its
        # 9-step tiles save) and 1x1 kernels (BLAS reads NCHW as it is).
        nhwc = _NHWC and one and (_NHWC_POINTWISE or not self.pointwise)
        self.nhwc_forward = nhwc and self.CgRS >= _NHWC_MIN_FORWARD
        # (backward-input's output channels are the C input channels: with fewer than
        # half a tile's 16 lanes most of its FMAs are spent on padding, and
        # conv2d_direct is faster; numbers: benchmarks/DESIGN.md, conv2d.py)
        self.nhwc_input = (nhwc and (stride == (1, 1) or dilation == (1, 1))
                           and self.C >= _NHWC_MIN_INPUT)
        self.nhwc_weight = nhwc and self.CgRS >= _NHWC_MIN_WEIGHT
        per_sample_bytes = self.C * self.R * self.S * self.P * itemsize
        self.nc = max(1, min(self.N, _CHUNK_BYTES // max(per_sample_bytes, 1)))

    def chunks(self):
        for n0 in range(0, self.N, self.nc):
            yield n0, min(self.nc, self.N - n0)

    def geometry(self):
        return (self.H, self.W, self.R, self.S, self.sh, self.sw, self.ph, self.pw,
                self.dh, self.dw, self.Ho, self.Wo)


def _columns(x, g, n0, nc):
    """The column matrix (C*R*S, nc*P) of samples n0..n0+nc-1, in a scratch buffer."""
    if g.pointwise:
        cols = buffer("cols", (g.C, nc * g.P), x.dtype)
        _nkp_to_knp(x.reshape(g.N, g.C, g.P), n0, cols)
    else:
        cols = buffer("cols", (g.C * g.R * g.S, nc * g.P), x.dtype)
        _im2col(x, n0, _gather_table(*g.geometry()), cols)
    return cols


def _by_sample(cols, nc, P):
    """(rows, nc*P) -> an (nc, rows, P) view: one BLAS-ready matrix per sample."""
    return cols.reshape(cols.shape[0], nc, P).transpose(1, 0, 2)


def _flipped(w, groups):
    """Weights of the convolution that maps dy back to dx (stride 1): input and output
    channels swapped within each group, kernel rotated by 180 degrees."""
    K, Cg, R, S = w.shape
    wg = w.reshape(groups, K // groups, Cg, R, S)[:, :, :, ::-1, ::-1]
    wt = np.ascontiguousarray(wg.transpose(0, 2, 1, 3, 4))
    return wt.reshape(groups * Cg, K // groups, R, S)


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    g = _Geometry(x.shape, w.shape, stride, padding, dilation, groups, x.itemsize)
    if g.nhwc_forward:
        return conv2d_nhwc.forward(x, w, b, stride, padding, dilation, nchw=True)
    if g.direct:
        return conv2d_direct.forward(x, w, b, stride, padding, dilation, (g.Ho, g.Wo),
                                     _gather_table(*g.geometry()))
    w_mat = w.reshape(g.G, g.Kg, g.CgRS)
    y = np.empty((g.N, g.K, g.P), dtype=x.dtype)
    if g.per_sample_forward:
        for n0, nc in g.chunks():
            if g.pointwise:
                cols3 = x.reshape(g.N, g.C, g.P)[n0:n0 + nc]
            else:
                cols3 = _by_sample(_columns(x, g, n0, nc), nc, g.P)
            np.matmul(w_mat[0], cols3, out=y[n0:n0 + nc])
        if b is not None:
            _add_bias(y, b)
        return y.reshape(g.N, g.K, g.Ho, g.Wo)
    bias = np.empty(0, x.dtype) if b is None else b
    for n0, nc in g.chunks():
        cols = _columns(x, g, n0, nc)
        y_knp = buffer("y_knp", (g.K, nc * g.P), x.dtype)
        for gi in range(g.G):
            np.matmul(w_mat[gi], cols[gi * g.CgRS:(gi + 1) * g.CgRS],
                      out=y_knp[gi * g.Kg:(gi + 1) * g.Kg])
        _knp_to_nkp(y_knp, bias, n0, y)
    return y.reshape(g.N, g.K, g.Ho, g.Wo)


def conv2d_backward_input(dy, w, x_shape, stride, padding, dilation, groups):
    g = _Geometry(x_shape, w.shape, stride, padding, dilation, groups, dy.itemsize)
    if g.nhwc_input:
        return conv2d_nhwc.backward_input(dy, w, x_shape, stride, padding, dilation,
                                          nchw=True)
    if g.direct and dilation == (1, 1):
        return conv2d_direct.backward_input(dy, w, x_shape, stride, padding)
    (dh, dw), (R, S) = dilation, (g.R, g.S)
    can_flip = stride == (1, 1) and g.ph <= dh * (R - 1) and g.pw <= dw * (S - 1)
    # dx is also the convolution of dy with the flipped kernel, padded to be "full": an
    # im2col of dy (K*R*S rows) and a GEMM with a long Kg*R*S contraction, instead of a
    # (Cg*R*S, Kg) @ (Kg, N*P) GEMM and a col2im of its C*R*S rows. The latter moves less
    # data when C < K, but col2im's scatter along short rows costs extra on small maps;
    # the (1 + 4/Wo) factor models that (fitted on the benchmark's shapes). The direct
    # kernels build no column matrix, so for them the flipped forward always wins.
    if can_flip and (g.pointwise or g.direct or g.K <= g.C * (1 + 4 / g.Wo)):
        return conv2d_forward(dy, _flipped(w, groups), None, (1, 1),
                              (dh * (R - 1) - g.ph, dw * (S - 1) - g.pw), dilation, groups)
    w_mat = w.reshape(g.G, g.Kg, g.CgRS)
    dy3 = dy.reshape(g.N, g.K, g.P)
    dx = np.empty(x_shape, dtype=dy.dtype)
    for n0, nc in g.chunks():
        dcols = buffer("cols", (g.C * g.R * g.S, nc * g.P), dy.dtype)
        if g.per_sample_forward:  # same trade-off as the forward product
            np.matmul(w_mat[0].T, dy3[n0:n0 + nc], out=_by_sample(dcols, nc, g.P))
        else:
            dy_knp = buffer("dy_knp", (g.K, nc * g.P), dy.dtype)
            _nkp_to_knp(dy3, n0, dy_knp)
            for gi in range(g.G):
                np.matmul(w_mat[gi].T, dy_knp[gi * g.Kg:(gi + 1) * g.Kg],
                          out=dcols[gi * g.CgRS:(gi + 1) * g.CgRS])
        _col2im(dcols, n0, *g.geometry()[2:], dx)
    return dx


def conv2d_backward_weight(dy, x, w_shape, stride, padding, dilation, groups):
    g = _Geometry(x.shape, w_shape, stride, padding, dilation, groups, x.itemsize)
    if g.nhwc_weight:
        return conv2d_nhwc.backward_weight(dy, x, w_shape, stride, padding, dilation,
                                           nchw=True)
    if g.direct and not g.per_sample_weight:
        return conv2d_direct.backward_weight(dy, x, w_shape, _gather_table(*g.geometry()))
    dy3 = dy.reshape(g.N, g.K, g.P)
    # Accumulates dw^T = cols @ dy^T, (Cg*R*S, Kg) per group, and transposes it back at
    # the end (a small copy): the same products as dw = dy @ cols^T, but OpenBLAS runs
    # this orientation faster, for both the batched and the per-sample products
    # (numbers: benchmarks/DESIGN.md, conv2d.py). The transposes are BLAS flags, not
    # copies.
    dw_t = np.zeros((g.G, g.CgRS, g.Kg), dtype=dy.dtype)
    per_sample = g.per_sample_weight and g.nc * g.K * g.CgRS * dy.itemsize <= _CHUNK_BYTES
    for n0, nc in g.chunks():
        cols = _columns(x, g, n0, nc)
        if per_sample:
            # dw^T += sum over samples of cols[n] @ dy[n]^T: per-sample products, then
            # one sum; no transpose of dy.
            part = buffer("dw_part", (nc, g.CgRS, g.K), dy.dtype)
            np.matmul(_by_sample(cols, nc, g.P), dy3[n0:n0 + nc].transpose(0, 2, 1),
                      out=part)
            dw_t[0] += part.sum(axis=0)
            continue
        dy_knp = buffer("dy_knp", (g.K, nc * g.P), dy.dtype)
        _nkp_to_knp(dy3, n0, dy_knp)
        part = buffer("dw_part", (g.CgRS, g.Kg), dy.dtype)
        for gi in range(g.G):
            np.matmul(cols[gi * g.CgRS:(gi + 1) * g.CgRS],
                      dy_knp[gi * g.Kg:(gi + 1) * g.Kg].T, out=part)
            dw_t[gi] += part
    return np.ascontiguousarray(dw_t.transpose(0, 2, 1)).reshape(w_shape)


def conv2d_backward_bias(dy):
    N, K, Ho, Wo = dy.shape
    return _bias_grad(dy.reshape(N, K, Ho * Wo))
