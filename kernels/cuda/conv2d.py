"""conv2d (cross-correlation, PyTorch semantics) as three shared-memory tiled implicit
GEMMs: the products of kernels/reference/conv2d.py, with the column matrix never built.

Notation: x (N, C, H, W), w (K, Cg, R, S), y and dy (N, K, Ho, Wo); groups G, Cg = C/G,
Kg = K/G; stride (sh, sw), padding (ph, pw), dilation (dh, dw). For group g, the column
matrix of the reference,

    X[(n, i, j), (c, r, s)] = x[n, g Cg + c, i sh + r dh - ph, j sw + s dw - pw]
                              (0 outside the image),

turns the three products into GEMMs (k < Kg and c < Cg are
indices within group g):

    forward          y[n, g Kg + k, i, j] = b[g Kg + k]
                         + sum_{(c, r, s)} X[(n, i, j), (c, r, s)] w[g Kg + k, c, r, s]
                     (M = N Ho Wo rows, Kg columns, contraction Cg R S)
    backward-input   dx[n, g Cg + c, h, v] = sum_{(k, r, s)} D[(n, h, v), (k, r, s)]
                                                             w[g Kg + k, c, r, s]
                     with D[(n, h, v), (k, r, s)] = dy[n, g Kg + k, i, j] where
                     h + ph - r dh = i sh and v + pw - s dw = j sw (0 where no such
                     0 <= i < Ho, 0 <= j < Wo): the same GEMM with the transposed weight
                     (M = N H W rows, Cg columns, contraction Kg R S)
    backward-weight  dw[g Kg + k, c, r, s] = sum_{(n, i, j)} X[(n, i, j), (c, r, s)]
                                                             dy[n, g Kg + k, i, j]
                     (M = Cg R S rows, Kg columns, contraction N Ho Wo)

"Implicit": a gathered operand (X or D) exists only as the tile a block is working on.

Blocking. A block of TILE x TILE threads computes one BM x BN tile of the output
matrix (BM = BN = TILE * REG) and walks the contraction in steps of BK = TILE: per step
it loads a BK x BM tile of the left operand and a BK x BN tile of the right one into
shared memory, gathering from x, dy or w on the fly (zero outside the image and past
the matrix edges), synchronizes, and every thread adds the BK rank-1 updates to its
REG x REG register block: rows tx + TILE a, columns ty + TILE b (a, b < REG), so
neighbouring threads own neighbouring output rows and write neighbouring addresses.
Tiles are stored contraction-major with one element of padding per row, so the stores
of a load and the reads of the update hit distinct shared-memory banks. Each
gathered X element is loaded ceil(Kg/BN) times (a direct kernel: Kg times), each w
element ceil(M/BM) times.

Index arithmetic. 64-bit integer division is a long instruction sequence on a GPU, so
the gathers avoid it in the contraction loop: a thread decodes its pixel (n, i, j) once,
and the contraction index q is decoded by a small per-geometry table made on the host
(`x_offsets`, `dy_offsets`; kernels/cuda/__init__.py keeps a device copy per geometry)
holding q's offset into x or dy and its row and column shifts r dh, s dw. Only
backward-input at stride > 1 still divides (by the stride).

Groups are the grid's z dimension (one GEMM per group). Backward-weight contracts over
N Ho Wo, which is long while its output is small, so it also splits the contraction
over z ("split-K"): split p writes its partial product to slice p of a (splits, K, Cg,
R, S) buffer and one reduction adds the slices, deterministically (no atomics).

Known waste, kept for one simple scheme: backward-input with stride > 1 gathers many
zeros (only about one (r, s) in sh sw hits a given pixel), where cuDNN decomposes the
stride; and a depthwise convolution (Kg = Cg = 1) fills one column of each BN-wide
tile, where a direct kernel would do better.

Example (what kernels/cuda/__init__.py does for the forward):

    d = (N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw, Kg)
    launch_forward(x._dev, w._dev, b._dev, True, d, groups, y._dev)   # y (N, K, Ho, Wo)
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, int64

from ._launch import SIMULATOR, TILE

REG = 2 if SIMULATOR else 4   # each thread's register block is REG x REG outputs
BM = BN = TILE * REG          # a block's output tile
BK = TILE                     # contraction step
LD = BM + 1                   # shared tiles' row length, padded against bank conflicts
NT = TILE * TILE              # threads per block
QPT = BM // (NT // BK)        # X columns each thread gathers in backward-weight
SPLIT_BLOCKS = 8 if SIMULATOR else 512  # backward-weight splits up to ~this many blocks

# The loaders give each thread a fixed column of a tile and step over its rows.
assert NT % BM == 0 and BK % (NT // BM) == 0 and NT % BK == 0 and BM % (NT // BK) == 0


def _make(nbtype):
    @cuda.jit(device=True)
    def clear(acc):
        for a in range(REG):
            for b in range(REG):
                acc[a, b] = nbtype(0)

    @cuda.jit(device=True)
    def update(sa, sb, acc, tx, ty):
        """acc[a, b] += sum_kk sa[kk, tx + TILE a] sb[kk, ty + TILE b]."""
        rb = cuda.local.array(REG, nbtype)
        for kk in range(BK):
            for b in range(REG):
                rb[b] = sb[kk, ty + TILE * b]
            for a in range(REG):
                av = sa[kk, tx + TILE * a]
                for b in range(REG):
                    acc[a, b] += av * rb[b]

    @cuda.jit
    def forward(x, w, bias, has_bias, tab, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw,
                dh, dw, Kg, y):
        sa = cuda.shared.array((BK, LD), nbtype)   # X tile: [(c, r, s), (n, i, j)]
        sb = cuda.shared.array((BK, LD), nbtype)   # w tile: [(c, r, s), k]
        acc = cuda.local.array((REG, REG), nbtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TILE + tx
        g = cuda.blockIdx.z
        m0, n0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
        P, RS = Ho * Wo, R * S
        M, Q = N * P, Cg * RS
        # This thread gathers X row m0 + ml: its pixel is fixed over the contraction.
        ml = tid % BM
        m = m0 + ml
        n = m // P
        i = (m - n * P) // Wo
        j = m - n * P - i * Wo
        h0, v0 = i * sh - ph, j * sw - pw
        xb = ((n * C + g * Cg) * H + h0) * W + v0    # x[n, g Cg, h0, v0]
        qb = tid % BK          # and w's contraction row qb for columns tid // BK, ...
        clear(acc)
        for q0 in range(0, Q, BK):
            for ql in range(tid // BM, BK, NT // BM):
                q = q0 + ql
                val = nbtype(0)
                if m < M and q < Q:
                    h, v = h0 + tab[3 * q + 1], v0 + tab[3 * q + 2]
                    if 0 <= h < H and 0 <= v < W:
                        val = x[xb + tab[3 * q]]
                sa[ql, ml] = val
            q = q0 + qb
            for nl in range(tid // BK, BN, NT // BK):
                k = n0 + nl
                sb[qb, nl] = w[(g * Kg + k) * Q + q] if (k < Kg and q < Q) else nbtype(0)
            cuda.syncthreads()
            update(sa, sb, acc, tx, ty)
            cuda.syncthreads()
        for a in range(REG):
            m = m0 + tx + TILE * a
            if m < M:
                n = m // P
                for b in range(REG):
                    k = n0 + ty + TILE * b
                    if k < Kg:
                        k += g * Kg
                        val = acc[a, b]
                        if has_bias:
                            val += bias[k]
                        y[(n * K + k) * P + m - n * P] = val

    @cuda.jit
    def backward_input(dy, w, tab, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw,
                       Kg, dx):
        sa = cuda.shared.array((BK, LD), nbtype)   # D tile: [(k, r, s), (n, h, v)]
        sb = cuda.shared.array((BK, LD), nbtype)   # w tile: [(k, r, s), c]
        acc = cuda.local.array((REG, REG), nbtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TILE + tx
        g = cuda.blockIdx.z
        m0, n0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
        HW, P, RS = H * W, Ho * Wo, R * S
        M, Q = N * HW, Kg * RS
        ml = tid % BM
        m = m0 + ml
        n = m // HW
        h = (m - n * HW) // W
        v = m - n * HW - h * W
        hb, vb = h + ph, v + pw
        yb = (n * K + g * Kg) * P     # dy[n, g Kg]
        wb = g * Kg * Cg * RS         # w[g Kg]
        qb = tid % BK
        clear(acc)
        for q0 in range(0, Q, BK):
            for ql in range(tid // BM, BK, NT // BM):
                q = q0 + ql
                val = nbtype(0)
                if m < M and q < Q:
                    i, j = hb - tab[4 * q + 1], vb - tab[4 * q + 2]   # i sh, j sw
                    if i >= 0 and j >= 0:
                        if sh != 1:  # (uniform branches: no division at stride 1)
                            i = i // sh if i % sh == 0 else Ho
                        if sw != 1:
                            j = j // sw if j % sw == 0 else Wo
                        if i < Ho and j < Wo:
                            val = dy[yb + tab[4 * q] + i * Wo + j]
                sa[ql, ml] = val
            q = q0 + qb
            wq = wb + tab[4 * q + 3] if q < Q else 0
            for nl in range(tid // BK, BN, NT // BK):
                c = n0 + nl
                sb[qb, nl] = w[wq + c * RS] if (c < Cg and q < Q) else nbtype(0)
            cuda.syncthreads()
            update(sa, sb, acc, tx, ty)
            cuda.syncthreads()
        for a in range(REG):
            m = m0 + tx + TILE * a
            if m < M:
                n = m // HW
                for b in range(REG):
                    c = n0 + ty + TILE * b
                    if c < Cg:
                        dx[(n * C + g * Cg + c) * HW + m - n * HW] = acc[a, b]

    @cuda.jit
    def backward_weight(dy, x, tab, N, C, H, W, K, Cg, R, S, Ho, Wo, sh, sw, ph, pw, dh, dw,
                        Kg, splits, chunk, part):
        sa = cuda.shared.array((BK, LD), nbtype)   # X tile: [(n, i, j), (c, r, s)]
        sb = cuda.shared.array((BK, LD), nbtype)   # dy tile: [(n, i, j), k]
        acc = cuda.local.array((REG, REG), nbtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TILE + tx
        g = cuda.blockIdx.z // splits
        sp = cuda.blockIdx.z - g * splits
        m0, n0 = cuda.blockIdx.x * BM, cuda.blockIdx.y * BN
        P, RS = Ho * Wo, R * S
        L, Q = N * P, Cg * RS
        lo = sp * chunk
        hi = min(L, lo + chunk)
        pl = tid % BK          # both tiles: this thread's contraction row
        # The X columns (c, r, s) this thread gathers are fixed: their offsets, once.
        qoff = cuda.local.array(QPT, int64)
        qr = cuda.local.array(QPT, int64)
        qs = cuda.local.array(QPT, int64)
        for u in range(QPT):
            q = min(m0 + tid // BK + u * (NT // BK), Q - 1)
            qoff[u], qr[u], qs[u] = tab[3 * q], tab[3 * q + 1], tab[3 * q + 2]
        clear(acc)
        for p0 in range(lo, hi, BK):
            p = p0 + pl
            n = p // P
            i = (p - n * P) // Wo
            j = p - n * P - i * Wo
            h0, v0 = i * sh - ph, j * sw - pw
            xb = ((n * C + g * Cg) * H + h0) * W + v0    # x[n, g Cg, h0, v0]
            for u in range(QPT):
                ql = tid // BK + u * (NT // BK)
                val = nbtype(0)
                if p < hi and m0 + ql < Q:
                    h, v = h0 + qr[u], v0 + qs[u]
                    if 0 <= h < H and 0 <= v < W:
                        val = x[xb + qoff[u]]
                sa[pl, ql] = val
            for kl in range(tid // BK, BN, NT // BK):
                k = n0 + kl
                sb[pl, kl] = dy[(n * K + g * Kg + k) * P + p - n * P] \
                    if (p < hi and k < Kg) else nbtype(0)
            cuda.syncthreads()
            update(sa, sb, acc, tx, ty)
            cuda.syncthreads()
        for a in range(REG):
            q = m0 + tx + TILE * a
            if q < Q:
                for b in range(REG):
                    k = n0 + ty + TILE * b
                    if k < Kg:
                        part[((sp * K) + g * Kg + k) * Q + q] = acc[a, b]

    return forward, backward_input, backward_weight


_KERNELS = {"float32": _make(float32), "float64": _make(float64)}
FORWARD = {dt: k[0] for dt, k in _KERNELS.items()}
BACKWARD_INPUT = {dt: k[1] for dt, k in _KERNELS.items()}
BACKWARD_WEIGHT = {dt: k[2] for dt, k in _KERNELS.items()}


def _grid(rows, cols, z):
    return ((rows + BM - 1) // BM, (cols + BN - 1) // BN, z), (TILE, TILE)


def x_offsets(d) -> tuple:
    """(key, build): the gather table of forward and backward-weight, for q = (c, r, s):
    [c H W + r dh W + s dw, r dh, s dw] (x's offset from x[n, g Cg, h0, v0], and the
    row and column shifts to bounds-check), so the loaders need no integer division."""
    H, W, Cg, R, S, dh, dw = d[2], d[3], d[5], d[6], d[7], d[14], d[15]

    def build():
        c, r, s = np.meshgrid(np.arange(Cg), np.arange(R) * dh, np.arange(S) * dw,
                              indexing="ij")
        return np.stack([c * H * W + r * W + s, r, s], axis=-1).reshape(-1).astype(np.int64)
    return ("x", H, W, Cg, R, S, dh, dw), build


def dy_offsets(d) -> tuple:
    """(key, build): backward-input's table for q = (k, r, s): [k Ho Wo, r dh, s dw,
    k Cg R S + r S + s] (dy's offset from dy[n, g Kg], the shifts, w's offset from
    w[g Kg, 0])."""
    Cg, R, S, Ho, Wo, dh, dw, Kg = d[5], d[6], d[7], d[8], d[9], d[14], d[15], d[16]

    def build():
        k, r, s = np.meshgrid(np.arange(Kg), np.arange(R), np.arange(S), indexing="ij")
        return np.stack([k * Ho * Wo, r * dh, s * dw, (k * Cg * R + r) * S + s],
                        axis=-1).reshape(-1).astype(np.int64)
    return ("dy", Cg, R, S, Ho, Wo, dh, dw, Kg), build


def launch_forward(x, w, bias, has_bias, tab, d, groups, y):
    """y (device, flat) = conv(x, w) + bias; `d` is the dimension tuple of the kernels,
    `tab` the device copy of x_offsets(d)."""
    N, Ho, Wo, Kg = d[0], d[8], d[9], d[16]
    FORWARD[str(y.dtype)][_grid(N * Ho * Wo, Kg, groups)](x, w, bias, has_bias, tab, *d, y)


def launch_backward_input(dy, w, tab, d, groups, dx):
    """`tab`: the device copy of dy_offsets(d)."""
    N, H, W, Cg = d[0], d[2], d[3], d[5]
    BACKWARD_INPUT[str(dx.dtype)][_grid(N * H * W, Cg, groups)](dy, w, tab, *d, dx)


def weight_splits(d, groups) -> tuple:
    """(splits, chunk): backward-weight's contraction over N Ho Wo in `splits` pieces of
    `chunk` (a multiple of BK), enough to give the GPU about SPLIT_BLOCKS blocks."""
    N, Cg, R, S, Ho, Wo, Kg = d[0], d[5], d[6], d[7], d[8], d[9], d[16]
    L = N * Ho * Wo
    steps = max(1, (L + BK - 1) // BK)
    tiles = ((Cg * R * S + BM - 1) // BM) * ((Kg + BN - 1) // BN) * groups
    splits = max(1, min(steps, SPLIT_BLOCKS // tiles, 65535 // groups))
    chunk = (steps + splits - 1) // splits * BK
    return max(1, (L + chunk - 1) // chunk), chunk


def launch_backward_weight(dy, x, tab, d, groups, splits, chunk, part):
    """part (device, flat (splits, K, Cg, R, S)) = the splits' partial weight gradients;
    `tab`: the device copy of x_offsets(d)."""
    Cg, R, S, Kg = d[5], d[6], d[7], d[16]
    BACKWARD_WEIGHT[str(part.dtype)][_grid(Cg * R * S, Kg, groups * splits)](
        dy, x, tab, *d, splits, chunk, part)
