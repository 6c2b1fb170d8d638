"""Channels-last (NHWC) convolution as implicit GEMM on the outer-product micro-kernel of
kernels/cpu/microkernel.py: no column matrix, no BLAS.

Layouts. x is NHWC (N, H, W, C): a window's values for one tap are C contiguous
numbers. The forward and backward-input read it where it is, each border pixel
skipping the taps that fall on padding (forward_plan); backward-weight, NCHW input
(converted anyway) and merged runs read a copy padded once into (N, H + 2*ph, W + 2*pw,
C), where every window is in bounds. Output pixels are numbered m = (n*Ho + i)*Wo + j
over the whole batch; `pixel_table` holds each one's flat offset into the input (that
of its window's first tap, padding included: negative on the border of an input read
in place), `tap_table` each kernel tap's offset relative to it. Weights (K, C, R, S),
PyTorch's layout, are packed once per call as [K/NR][R*S][C][NR] (output channels
padded with zeros to a multiple of NR): one panel of NR output channels is R*S*C*NR
contiguous values, read front to back by the kernel.

Forward. The output pixels are cut into blocks of MR that span rows and samples (no
rounding waste on 7x7 maps); the last block starts at M - MR and overlaps the one before
it, so there is no edge code: each block writes only the pixels it owns. The pixels
are first grouped by border class (forward_plan: always for an input read in place, on
a padded copy where it saves at least SKIP_MIN): the pixels of the first output row,
say, all have a kernel row that reads only padding, and their blocks skip it (18% of
the products on a 7x7 map with a 3x3 kernel and padding 1, 9% on 14x14).
A parallel task takes consecutive blocks, about GROUP of them and of equal work (as
many tasks per thread: _tasks) and, panel by panel, runs the micro-kernel over each
block's R*S*C contraction, or the tap ranges its class keeps (the accumulators start
at the bias), then writes the tile out: NHWC rows (y[m, k]), or straight into NCHW
planes for the NCHW entry points, through a table of each pixel's output offset and a
channel stride.

Backward-input is the forward of dy with input and output channels swapped and the
kernel flipped. Stride 1: one "full" convolution of dy padded by d*(R-1) - p. Stride > 1
(dilation 1): sh*sw phases, each a stride-1 convolution with the taps that reach that
phase (as in conv2d_direct.backward_input), writing its interleaved pixels of dx
through the output-offset table.

Backward-weight. dW[tap, c][k] = sum over pixels m of xp[pixel_m + tap, c] * dy[m, k]:
the same micro-kernel with the (tap, channel) pairs as tile rows (MR of them broadcast
from x) and NR output channels of dy in lanes, contracting over pixels. The pixels are
cut into chunks whose dy rows fill part of L2, whole output rows (or pieces of long
rows), so that the micro-kernel's inner loop walks a row's pixels at a constant stride
(weight_chunks); a number of groups set by the shape, not the thread count
(weight_blocking), each add their chunks in order into a private partial dW (the first
chunk's tiles start from zero), and the partials are summed in a fixed order: results
are bitwise the same for any Numba thread count. On small maps a tile skips the output
rows, and trims the columns, where its taps read only padding (weight_plan).

Every output element is computed by one task in a fixed order, so all passes are
deterministic. Supports stride, padding, dilation, groups = 1 (kernels/cpu/conv2d.py
keeps the other routes for groups > 1).
"""
import functools

import numba
import numpy as np
from numba import njit, prange
from scipy.linalg import get_blas_funcs

from .microkernel import MR32, MR64, NR32, NR64, host_lanes, tile, tile_half, versioned
from .scratch import buffer

GROUP = 16  # pixel blocks per forward task (at most, unless the blocks are cheap: ...)
TASK_STEPS = 4608  # ... then about this many micro-kernel steps a task (16 blocks of 288)
CHUNK = 64  # backward-weight: pixels per contraction chunk at least, and
WEIGHT_CHUNK_BYTES = 384 << 10  # ... about this many bytes of dy rows (see weight_blocking)
WEIGHT_GROUPS = 8  # backward-weight partial sums at most (from the shape, not the threads)
MIN_WEIGHT_GROUPS = 4  # ... and at least, where there are enough pixels
RUN_MERGE_BELOW = 16  # forward: below this many channels a kernel row is one run (_forward)
SKIP_MIN = 0.06  # forward: border pixels skip padding taps where that saves this much work
UNPADDED_READS = True  # forward, backward-input: NHWC input read in place, not padded (_forward)


def blocking(dtype):
    """(MR, NR) of the micro-kernel for dtype."""
    return (MR32, NR32) if np.dtype(dtype).itemsize == 4 else (MR64, NR64)


# Half-width tiles for a last panel of at most NR/2 output channels (K = 16 or 48 float32
# on AVX-512: a 16-channel layer, or the input gradient of one), on AVX-512 hosts only:
# there a full-width tile would leave half its lanes idle, while AVX-512 chips run two
# 256-bit FMAs in the time of one 512-bit (Zen 4), or as many (Intel), so the half
# tile does the same useful work in at most the same time (numbers: benchmarks/DESIGN.md,
# conv2d_nhwc.py). On AVX2 the half width would be 128 bits: no gain.
HALF_TILES = host_lanes(4) == 16
# 1x1 convolutions run on the micro-kernel, not BLAS, on the same AVX-512 hosts (see
# _pointwise_on_blas)
POINTWISE_TILES = HALF_TILES


def half_tail(K, dtype):
    """Whether the last panel of a GEMM with K output channels (lanes) runs on a
    half-width tile: it holds at most NR/2 of them."""
    nr = blocking(dtype)[1]
    return HALF_TILES and 0 < K % nr <= nr // 2


def _out_size(size, k, stride, padding, dilation):
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


# --- tables ------------------------------------------------------------------------------

def _frozen(a):
    a.flags.writeable = False  # shared by every call with this geometry
    return a


@functools.lru_cache(maxsize=64)
def pixel_table(N, Hp, Wp, C, Ho, Wo, sh, sw, origin=(0, 0)):
    """Flat offset into a padded NHWC (N, Hp, Wp, C) input of each output pixel's window
    origin, for all N*Ho*Wo output pixels in (n, i, j) order; the windows start at row
    and column `origin` of the input."""
    n = np.arange(N)[:, None, None]
    i = origin[0] + np.arange(Ho)[None, :, None] * sh
    j = origin[1] + np.arange(Wo)[None, None, :] * sw
    return _frozen((((n * Hp + i) * Wp + j) * C).ravel().astype(np.int64))


@functools.lru_cache(maxsize=64)
def tap_table(R, S, dh, dw, Wp, C):
    """Offset of each kernel tap (r, s), in (r, s) order, from a window's origin."""
    r = np.arange(R)[:, None]
    s = np.arange(S)[None, :]
    return _frozen(((r * dh * Wp + s * dw) * C).ravel().astype(np.int64))


@functools.lru_cache(maxsize=64)
def nchw_table(N, K, Ho, Wo):
    """Flat offset into an NCHW (N, K, Ho, Wo) output of each output pixel (channel 0);
    the channel stride is Ho*Wo."""
    P = Ho * Wo
    return _frozen((np.arange(N)[:, None] * (K * P) + np.arange(P)).ravel().astype(np.int64))


@functools.lru_cache(maxsize=64)
def nhwc_table(M, K):
    """Flat offset of each pixel's row in an NHWC output (channel stride 1)."""
    return _frozen(np.arange(M, dtype=np.int64) * K)


@functools.lru_cache(maxsize=64)
def weight_tiles(R, S, dh, dw, Wp, C, mr, Kp):
    """The tiles of the weight gradient dW[(tap, c), k], L = R*S*C rows in (tap, c)
    order cut into tiles of MR consecutive rows (the last tile overlapping the one
    before, or, for L < MR, repeating the last row), as two tables of MR entries per
    tile: each row's offset from a pixel in the padded input (taps[tap] + c), and where
    the row goes in the partial sums, (tap*C + c)*Kp, or the scratch row at L*Kp for
    rows the tile does not own. (Tiles of MR channels of one tap, ordered channel
    block by channel block through the taps, were no faster; numbers:
    benchmarks/DESIGN.md, conv2d_nhwc.py.)"""
    taps = tap_table(R, S, dh, dw, Wp, C)
    L = R * S * C
    pair_rows = (taps[:, None] + np.arange(C)[None, :]).ravel()
    ls = np.minimum(np.arange(-(-L // mr))[:, None] * mr, max(L - mr, 0)) + np.arange(mr)
    own = (ls >= np.arange(-(-L // mr))[:, None] * mr) & (ls < L)
    rows = pair_rows[np.minimum(ls, L - 1)].ravel().astype(np.int64)
    orows = np.where(own, ls * Kp, L * Kp).ravel().astype(np.int64)
    return _frozen(rows), _frozen(orows)


@functools.lru_cache(maxsize=64)
def weight_plan(N, H, W, C, Ho, Wo, R, S, stride, padding, dilation, mr, chunk, groups):
    """Which pixels each backward-weight tile contracts over: (tile_class, lo, cut,
    run_s0, run_n, rptr), for the tiles of weight_tiles and the chunks of weight_chunks.

    A tile's rows are (tap, channel) pairs; a pixel whose window puts the tile's taps on
    padding adds exact zeros to it. Where the chunks are whole output rows (segments) and
    skipping saves at least SKIP_MIN of the work: a tile contracts only over the output
    rows where one of its taps' kernel rows reads real input (its class: tiles of the
    same valid output rows), as runs of consecutive segments, run_s0[x], run_n[x] for x
    in [rptr[ch*classes + class], rptr[ch*classes + class + 1]) in chunk ch, and only
    over the columns [lo, Wo - cut) of each row where one of its taps' kernel columns
    does. Otherwise one class whose runs are the chunks' own segments and lo = cut = 0.
    Same sums but for exact zeros (the sign of a zero sum)."""
    seg_m, first, count, length = weight_chunks(N, Ho, Wo, chunk, groups)
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    L, T = R * S * C, -(-(R * S * C) // mr)
    ntiles = T
    tap_of = np.minimum(np.minimum(np.arange(ntiles)[:, None] * mr, max(L - mr, 0))
                        + np.arange(mr), L - 1) // C  # (tiles, MR) taps of the rows
    oh_ok = np.array([[0 <= o * sh - ph + r * dh < H for o in range(Ho)] for r in range(R)])
    ow_ok = np.array([[0 <= o * sw - pw + c * dw < W for o in range(Wo)] for c in range(S)])
    rows_ok = oh_ok[tap_of // S].any(axis=1)  # (tiles, Ho): an output row any tap uses
    cols_ok = ow_ok[tap_of % S].any(axis=1)  # (tiles, Wo)
    lo = cols_ok.argmax(axis=1)
    cut = cols_ok[:, ::-1].argmax(axis=1)
    lo[~cols_ok.any(axis=1)], cut[~cols_ok.any(axis=1)] = 0, Wo  # (no column: empty runs)
    work = (rows_ok.sum(axis=1) * (Wo - lo - cut)).sum()
    nchunks = first.size
    if Wo > chunk or work > (1 - SKIP_MIN) * ntiles * Ho * Wo:
        zero = np.zeros(ntiles, dtype=np.int64)
        return (_frozen(zero), _frozen(zero.copy()), _frozen(zero.copy()), first, count,
                _frozen(np.arange(nchunks + 1, dtype=np.int64)))
    classes, tile_class = np.unique(rows_ok, axis=0, return_inverse=True)
    oh = (seg_m // Wo) % Ho
    run_s0, run_n, rptr = [], [], [0]
    for ch in range(nchunks):
        segs = np.arange(first[ch], first[ch] + count[ch])
        for keep in classes:
            ok = keep[oh[segs]]
            # runs of consecutive kept segments
            edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(np.int8), [0]])))
            for a, b in zip(edges[::2], edges[1::2]):
                run_s0.append(segs[a])
                run_n.append(b - a)
            rptr.append(len(run_s0))
    as64 = functools.partial(np.asarray, dtype=np.int64)
    return (_frozen(as64(tile_class.ravel())), _frozen(as64(lo)), _frozen(as64(cut)),
            _frozen(as64(run_s0)), _frozen(as64(run_n)), _frozen(as64(rptr)))


@functools.lru_cache(maxsize=64)
def weight_chunks(N, Ho, Wo, chunk, groups=1):
    """The backward-weight contraction over the M = N*Ho*Wo output pixels, cut into
    chunks of about `chunk` pixels: whole output rows (Wo pixels, equally spaced in the
    input), split evenly into a multiple of `groups` chunks (so that every group gets
    as many), or, for rows longer than `chunk`, pieces of at most `chunk`. Each output
    row, or piece, is one segment; a chunk is `count` consecutive segments of one
    `length`, so that the micro-kernel's inner loop walks a segment with a constant
    stride instead of one pixel per table entry. Returns (seg_m, first, count, length):
    each segment's first pixel, and per chunk its first segment, segments and their
    length. A function of the shape only: the same chunks, so the same sums, on any
    thread count."""
    rows = N * Ho
    if Wo <= chunk:
        n = max(1, round(rows * Wo / chunk))  # chunks
        n = min(rows, -(-n // groups) * groups)
        seg_m = np.arange(rows, dtype=np.int64) * Wo
        first = np.arange(n, dtype=np.int64) * rows // n
        count = np.diff(np.append(first, rows))
        length = np.full(n, Wo, dtype=np.int64)
    else:
        pieces = -(-Wo // chunk)
        j0 = np.arange(pieces) * chunk
        seg_m = (np.arange(rows)[:, None] * Wo + j0).ravel().astype(np.int64)
        first = np.arange(seg_m.size, dtype=np.int64)
        count = np.ones(seg_m.size, dtype=np.int64)
        length = np.tile(np.minimum(chunk, Wo - j0), rows).astype(np.int64)
    return _frozen(seg_m), _frozen(first), _frozen(count), _frozen(length)


def weight_blocking(M, Kp, itemsize, x_pixel_bytes=0):
    """(chunk, groups) of a backward-weight pass over M pixels with Kp lanes of dy.
    Chunks: dy rows that fill about WEIGHT_CHUNK_BYTES of L2 (each tile walks a whole
    chunk: one read-modify-write of its partial-sum rows per chunk), and input pixels
    (x_pixel_bytes each: sh*sw*C values) that fill no more (strided or wide layers read
    more input than dy per output pixel, all of it again for every tile). Groups: a
    power of two (even shares for 2, 4 or 8 threads), one per such chunk, between
    MIN_WEIGHT_GROUPS (work for every core of small machines) and WEIGHT_GROUPS (fewer
    partial sums to add where the problem is small), and no more than chunks of CHUNK
    pixels. From the shape only (results independent of the thread count)."""
    chunk = max(CHUNK, WEIGHT_CHUNK_BYTES // max(Kp * itemsize, x_pixel_bytes))
    want = min(WEIGHT_GROUPS, max(MIN_WEIGHT_GROUPS, round(M / chunk)), M // CHUNK)
    groups = 1
    while groups * 2 <= want:
        groups *= 2
    return chunk, groups


def pack_weights(w, nr):
    """(K, C, R, S) weights as [K/NR][R*S][C][NR], flat, output channels zero-padded to
    a multiple of nr. One strided copy into the packed array (through its (K/NR, NR, C,
    R*S) view), not a padded copy then a transposed one: a third less time."""
    K, C, R, S = w.shape
    nk, full = -(-K // nr), K // nr
    out = np.empty((nk, R * S, C, nr), dtype=w.dtype)
    v = out.transpose(0, 3, 2, 1)  # v[kb, j, c, t] is weight (kb*nr + j, c, t)
    w3 = w.reshape(K, C, R * S)
    if full:
        v[:full] = w3[:full * nr].reshape(full, nr, C, R * S)
    if K % nr:
        v[full, :K % nr] = w3[full * nr:]
        v[full, K % nr:] = 0
    return out.reshape(-1)


@njit(cache=True)
def _gather_weights(wf, idx, out):
    for i in range(idx.size):
        j = idx[i]
        out[i] = wf[j] if j >= 0 else 0


def _gather(w, idx):
    """out[i] = w.flat[idx[i]], or 0 where idx[i] < 0: backward-input's packed weight
    table. A serial Numba loop (numbers: benchmarks/DESIGN.md, conv2d_nhwc.py)."""
    out = np.empty(idx.size, dtype=w.dtype)
    _gather_weights(np.ascontiguousarray(w).reshape(-1), idx, out)
    return out


def _padded_bias(b, K, nr, dtype):
    bp = np.zeros(-(-K // nr) * nr, dtype=dtype)
    if b is not None:
        bp[:K] = b
    return bp


# --- layout kernels ----------------------------------------------------------------------

@njit(parallel=True, cache=True)
def _pad_nhwc(x, top, left, out):
    """out[n, i, j, :] = x[n, i - top, j - left, :], 0 outside x (NHWC; negative top or
    left crop). One row of out per task."""
    N, H, W, C = x.shape
    _, Hp, Wp, _ = out.shape
    j0, j1 = max(0, left), min(Wp, W + left)
    xf = x.reshape(N * H, W * C)  # (x and out C-contiguous: see _pad_to)
    of = out.reshape(N * Hp, Wp * C)
    q0, q1 = j0 * C, max(j0, j1) * C  # the part of a row that comes from x
    shift = left * C
    for t in prange(N * Hp):
        n = t // Hp
        h = t - n * Hp - top
        row = of[t]
        # flat loops, not 2-D slice assignments: as fast, and seconds less to compile
        if 0 <= h < H:
            dst, src = row[q0:q1], xf[n * H + h, q0 - shift:q1 - shift]
            for q in range(q1 - q0):
                dst[q] = src[q]
            for q in range(q0):
                row[q] = 0
            for q in range(q1, Wp * C):
                row[q] = 0
        else:
            for q in range(Wp * C):
                row[q] = 0


@njit(parallel=True, cache=True)
def _nchw_rows(a, Kp, out):
    """out[(n*P + p)*Kp + k] = a[n, k, p], 0 for k >= K: NCHW (N, K, P) as pixel rows of
    Kp values. A block of 64 pixels of one sample per task, filled row by row (strided
    reads, contiguous writes: the faster order, see conv2d_direct._to_padded_nhwc)."""
    N, K, P = a.shape
    nb = -(-P // 64)
    af = a.reshape(-1)
    for t in prange(N * nb):
        n = t // nb
        p0 = (t - n * nb) * 64
        for p in range(p0, min(P, p0 + 64)):
            row = out[(n * P + p) * Kp:(n * P + p + 1) * Kp]
            src = n * K * P + p
            for k in range(K):
                row[k] = af[src + k * P]
            row[K:] = 0


# --- the implicit GEMMs -----------------------------------------------------------------

@njit(inline="always")
def _tile_shape(a):
    if a.itemsize == 4:
        return MR32, NR32
    return MR64, NR64


@versioned
@njit(parallel=True, cache=True)
def _forward_gemm(xf, pix, taps, C, wp, bias, K, out, obase, kstride, half_tail, bounds,
                  blocks, segs):
    """out[obase[m] + k*kstride] = bias[k] + sum over taps t, c < C of
    xf[pix[m] + taps[t] + c] * wp[step (t, c)], for all pixels m and k < K, where the
    taps t run over the segments of m's block: a tap's C values are its channels, or
    (dilation 1 along the width, few channels) a whole kernel row's S*C; wp packed by
    pack_weights, bias padded to the packed width.

    The pixels come in blocks of MR (see forward_plan): block b's tile rows are the
    pixels blocks[b, 0] + min(i, blocks[b, 1] - 1) for i < MR, of which it owns (writes)
    rows blocks[b, 2] to blocks[b, 1] - 1, and it contracts over the tap ranges
    segs[s] for s in [blocks[b, 3], blocks[b, 4]) (the taps whose window reaches real
    input, not padding, for all its pixels): the first from the bias, the others adding
    to the tile written so far. Tiles write their rows of out directly where they can
    (kstride 1, a full panel, a full block that owns all its rows), else into a buffer
    that the owned part is copied from. With half_tail, a last panel of at most NR/2
    channels runs on the half-width tile (reading the first NR/2 columns of the packed
    panel). Task g computes blocks bounds[g] to bounds[g + 1] - 1 (the tasks decide
    only who computes a tile, not how: any bounds give the same results)."""
    T = taps.size
    mr, nr = _tile_shape(xf)
    nk = -(-K // nr)
    panel = T * C * nr
    for g in prange(bounds.size - 1):
        buf = np.empty(mr * nr, dtype=xf.dtype)
        nobias = np.empty(0, dtype=xf.dtype)  # a tile that adds to what it wrote
        brows = np.arange(mr) * nr  # the buffer's rows
        b0, b1 = bounds[g], bounds[g + 1]
        rows = np.empty((b1 - b0) * mr, dtype=np.int64)
        orows = np.empty((b1 - b0) * mr, dtype=np.int64)
        for b in range(b0, b1):
            start, count = blocks[b, 0], blocks[b, 1]
            for i in range(mr):
                m = start + min(i, count - 1)
                rows[(b - b0) * mr + i] = pix[m]
                orows[(b - b0) * mr + i] = obase[m]
        for kb in range(nk):
            k0 = kb * nr
            kn = min(nr, K - k0)
            half = half_tail and kn <= nr // 2
            width = nr // 2 if half else nr
            for b in range(b0, b1):
                r = (b - b0) * mr
                count, own = blocks[b, 1], blocks[b, 2]
                direct = kstride == 1 and kn == width and own == 0 and count == mr
                # (one call site with either destination: the tile is expanded once)
                if direct:
                    dst, drows, d0, doff = out, orows, r, k0
                else:
                    dst, drows, d0, doff = buf, brows, 0, 0
                for sg in range(blocks[b, 3], blocks[b, 4]):
                    t0, tn = segs[sg, 0], segs[sg, 1] - segs[sg, 0]
                    init = bias if sg == blocks[b, 3] else nobias
                    if half:
                        tile_half(xf, rows, r, taps, t0, tn, C, 1, wp,
                                  kb * panel + t0 * C * nr, nr, C * nr, dst, drows, d0, doff,
                                  init, k0)
                    else:
                        tile(xf, rows, r, taps, t0, tn, C, 1, wp, kb * panel + t0 * C * nr,
                             nr, C * nr, dst, drows, d0, doff, init, k0)
                if direct:
                    continue
                for i in range(own, count):
                    o = orows[r + i] + k0 * kstride
                    if kstride == 1:  # NHWC rows: a contiguous copy, which vectorizes
                        dst, src = out[o:o + kn], buf[i * nr:i * nr + kn]
                        for j in range(kn):
                            dst[j] = src[j]
                    else:
                        for j in range(kn):
                            out[o + j * kstride] = buf[i * nr + j]


@versioned
@njit(parallel=True, cache=True)
def _weight_gemm(xf, seg_pix, seg_m, first, length, a_cs, trows, torows, dyf, Kp, groups,
                 partial, half_tail, tile_class, lo, cut, run_s0, run_n, rptr):
    """partial[g, torows[q] + k] = sum over the pixels m of group g's chunks of
    xf[pix(m) + trows[q]] * dyf[m*Kp + k], for every tile row q (tiles of MR rows, see
    weight_tiles) and k < Kp (a multiple of NR, or of NR/2 with half_tail: then the
    last panel runs on the half-width tile), over the pixels weight_plan gives the tile:
    in chunk ch, the runs of segments of its class, and the columns [lo, length - cut)
    of each segment. Chunk ch has segments of length[ch] pixels from segment first[ch]
    on, consecutive in m (see weight_chunks); a segment's pixels are a_cs apart in xf,
    from seg_pix. Group g takes the chunks [g*n/groups, (g+1)*n/groups) in order;
    within a chunk, tile by tile, all panels (the tile's input values stay in L1 across
    the panels; panels as the outer loop were no faster: benchmarks/DESIGN.md,
    conv2d_nhwc.py)."""
    mr, nr = _tile_shape(xf)
    nchunks = first.size
    ntiles = trows.size // mr
    nclass = (rptr.size - 1) // nchunks
    nk = -(-Kp // nr)
    zeros = np.zeros(Kp, dtype=xf.dtype)
    none = np.empty(0, dtype=xf.dtype)
    for g in prange(groups):
        part = partial[g]
        c0, c1 = g * nchunks // groups, (g + 1) * nchunks // groups
        for ch in range(c0, c1):
            seg_len = length[ch]
            for q in range(ntiles):
                x0 = rptr[ch * nclass + tile_class[q]]
                x1 = rptr[ch * nclass + tile_class[q] + 1]
                j0, cn = lo[q], seg_len - lo[q] - cut[q]
                # the group's first chunk starts its tiles from zero (no zeroing pass; a
                # tile with no run there runs an empty one), the next ones add
                for k in range(max(x1 - x0, 1 if ch == c0 else 0)):
                    init = zeros if ch == c0 and k == 0 else none
                    s0, T = (run_s0[x0 + k], run_n[x0 + k]) if x0 + k < x1 else (first[ch], 0)
                    b0 = (seg_m[s0] + j0) * Kp
                    for kb in range(nk):
                        if half_tail and Kp - kb * nr <= nr // 2:  # (a last half panel)
                            tile_half(xf, trows, q * mr, seg_pix, s0, T, cn, a_cs, dyf,
                                      b0 + kb * nr, Kp, seg_len * Kp, part, torows, q * mr,
                                      kb * nr, init, kb * nr)
                        else:
                            tile(xf, trows, q * mr, seg_pix, s0, T, cn, a_cs, dyf,
                                 b0 + kb * nr, Kp, seg_len * Kp, part, torows, q * mr,
                                 kb * nr, init, kb * nr)


# --- drivers (shared by the NHWC and NCHW entry points) ---------------------------------

def _forward(xp, w_shape, wp, b, stride, dilation, out_hw, out, obase, kstride,
             origin=(0, 0), valid=None, exact=False):
    """Forward of the padded NHWC input xp into out (flat), at obase + k*kstride, with
    weights of w_shape (K, C, R, S) packed as pack_weights does (wp); the windows start
    at row and column `origin` of xp (not 0: a phase of backward-input reading a part
    of a larger padded dy). valid = (h0, h1, w0, w1), the rows and columns of xp that
    hold real input (the rest is zero padding), lets forward_plan skip the taps of
    border pixels that only read padding. With exact=True every such tap is skipped,
    whatever it saves: then xp need not hold the padding at all (origin negative, the
    windows reaching outside xp only where nothing is read; see _in_place)."""
    N, Hp, Wp, C = xp.shape
    K, _, R, S = w_shape
    (sh, sw), (dh, dw), (Ho, Wo) = stride, dilation, out_hw
    mr, nr = blocking(xp.dtype)
    pix = pixel_table(N, Hp, Wp, C, Ho, Wo, sh, sw, origin)
    merged = _merged_runs(C, dw)
    if merged:
        # A kernel row's S taps of C channels are S*C contiguous values of xp: one run
        # of the micro-kernel's inner loop per kernel row rather than S runs of a few
        # channels (the same products in the same order; runs of 1-3 values measured
        # up to 1.4x slower: benchmarks/DESIGN.md, conv2d_nhwc.py)
        taps, run = tap_table(R, 1, dh, 1, Wp, C), S * C
    else:
        taps, run = tap_table(R, S, dh, dw, Wp, C), C
    rows_valid = cols_valid = None
    if valid is not None:
        rows_valid = valid_taps(Ho, origin[0], sh, dh, R, valid[0], valid[1])
        if not merged:  # (a merged run spans the row's S taps: columns not skipped)
            cols_valid = valid_taps(Wo, origin[1], sw, dw, S, valid[2], valid[3])
    assert not exact or (valid is not None and not merged), "padding needed"
    perm, blocks, segs, cost = forward_plan(N, Ho, Wo, R, 1 if merged else S, rows_valid,
                                            cols_valid, mr, exact)
    if perm is not None:
        pix, obase = _permuted(pix, perm), _permuted(obase, perm)
    bounds = _task_bounds(_Key(cost), _tasks(blocks.shape[0] * mr, mr,
                                             taps.size * run * -(-K // nr)))
    _forward_gemm(xp.reshape(-1), pix, taps, run, wp,
                  _padded_bias(b, K, nr, xp.dtype), K, out, obase, kstride,
                  half_tail(K, xp.dtype), bounds, blocks, segs)


def _permuted(table, perm):
    """table[perm], kept per pair of cached (frozen) tables of a geometry (see _Key)."""
    return _permuted_cached(_Key(table), _Key(perm))


@functools.lru_cache(maxsize=256)
def _permuted_cached(table_key, perm_key):
    return _frozen(table_key.array[perm_key.array])


@functools.lru_cache(maxsize=64)
def _shifted_rows_cached(trows_key, lo_key, a_cs, mr):
    trows, lo = trows_key.array, lo_key.array
    return _frozen(trows + np.repeat(lo, mr) * a_cs)


class _Key:
    """A frozen, cached table as an lru_cache key: hashed and compared by identity,
    holding the array (so its id stays its own while the entry lives)."""
    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __hash__(self):
        return id(self.array)

    def __eq__(self, other):
        return isinstance(other, _Key) and other.array is self.array


def _shifted_rows(trows, lo, a_cs, mr):
    """Backward-weight tile rows moved lo[q] pixels along a segment (tile q's runs start
    there): trows[q*mr + i] + lo[q]*a_cs."""
    return _shifted_rows_cached(_Key(trows), _Key(lo), a_cs, mr)


@functools.lru_cache(maxsize=256)
def valid_taps(n_out, origin, stride, dilation, k, lo, hi):
    """For each output position o < n_out along one axis, the kernel taps [first, end)
    whose input position origin + o*stride + t*dilation lies in [lo, hi) (real input,
    not padding), as a tuple of pairs; (0, 0) where none does."""
    out = []
    for o in range(n_out):
        pos = origin + o * stride
        first = max(0, -(-(lo - pos) // dilation))
        end = min(k, (hi - 1 - pos) // dilation + 1)
        out.append((first, end) if end > first else (0, 0))
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _task_bounds(cost_key, ng):
    """The first block of each of ng tasks (and the end), cut so that the tasks get equal
    work (cost: forward_plan's running work per block), not equal block counts: border
    blocks contract over fewer taps."""
    cost = cost_key.array
    bounds = np.searchsorted(cost, cost[-1] * np.arange(ng + 1) / ng).astype(np.int64)
    bounds[-1] = cost.size - 1
    return _frozen(bounds)


def _blocks(start, count, mr, s_lo, s_hi):
    """The (start, rows, own, s_lo, s_hi) blocks of MR pixels over `count` pixels from
    `start` (see _forward_gemm): the last block starts at count - MR and overlaps the
    one before (owning only its new rows); with fewer than MR pixels one block repeats
    the last pixel in its extra rows."""
    out = []
    for b in range(-(-count // mr)):
        first = min(b * mr, max(count - mr, 0))
        out.append((start + first, min(mr, count - first), b * mr - first, s_lo, s_hi))
    return out


@functools.lru_cache(maxsize=64)
def forward_plan(N, Ho, Wo, R, S, rows_valid, cols_valid, mr, exact=False):
    """(perm, blocks, segs, cost) for _forward_gemm over N*Ho*Wo output pixels and R*S taps
    in (r, s) order (S = 1 where a kernel row is one merged run).

    Without rows_valid (or where skipping saves less than SKIP_MIN of the work): perm
    None, the pixels in their (n, i, j) order in blocks of MR across rows and samples,
    each contracting over all taps. With them (valid_taps per output row and column):
    the pixels grouped by border class, the rows with the same valid kernel rows times
    the columns with the same valid kernel columns (3 x 3 classes for a 3x3 kernel with
    padding 1), perm listing them class by class; a class's blocks contract over its
    valid taps only, one tap range per kernel row (one range for all rows where every
    column is valid). A border pixel then skips the products with padding zeros that
    the padded input would add: on a 7x7 map with a 3x3 kernel and padding 1, 18% of
    all. Skipping adds an exact zero less, so the results are those of the full
    contraction but for the sign of an exactly zero sum (exact: always the classes, for
    an input without its padding). cost[b] is the work of the
    blocks before block b, in blocks of all taps (for cutting tasks of equal work)."""
    M, T = N * Ho * Wo, R * S
    whole = np.array(_blocks(0, M, mr, 0, 1), dtype=np.int64).reshape(-1, 5)
    single = (None, _frozen(whole), _frozen(np.array([[0, T]], dtype=np.int64)),
              _frozen(np.arange(whole.shape[0] + 1, dtype=np.float64)))
    if rows_valid is None:
        return single
    cols_valid = cols_valid or ((0, S),) * Wo
    row_classes, col_classes = {}, {}
    for i, key in enumerate(rows_valid):
        row_classes.setdefault(key, []).append(i)
    for j, key in enumerate(cols_valid):
        col_classes.setdefault(key, []).append(j)
    m = np.arange(M).reshape(N, Ho, Wo)
    perm, blocks, segs, work, start = [], [], [], 0, 0
    for (r0, r1), rows in row_classes.items():
        for (s0, s1), cols in col_classes.items():
            pixels = m[:, rows][:, :, cols].ravel()
            if r1 <= r0 or s1 <= s0:
                ranges = [(0, 0)]  # no tap reaches real input: the bias alone
            elif (s0, s1) == (0, S):
                ranges = [(r0 * S, r1 * S)]
            else:
                ranges = [(r * S + s0, r * S + s1) for r in range(r0, r1)]
            blocks += _blocks(start, pixels.size, mr, len(segs), len(segs) + len(ranges))
            start += pixels.size
            perm.append(pixels)
            segs += ranges
            work += pixels.size * sum(e - f for f, e in ranges)
    if work > (1 - SKIP_MIN) * M * T and not exact:
        return single
    blocks, segs = np.array(blocks, dtype=np.int64), np.array(segs, dtype=np.int64)
    taps = np.concatenate([[0], np.cumsum(segs[:, 1] - segs[:, 0])])
    # (a block's own setup and epilogue counted as one tap: every block costs something)
    cost = np.concatenate([[0.0], np.cumsum(taps[blocks[:, 4]] - taps[blocks[:, 3]] + 1)])
    cost /= T + 1
    return _frozen(np.concatenate(perm)), _frozen(blocks), _frozen(segs), _frozen(cost)


def _tasks(M, mr, steps):
    """How many forward tasks share the -(-M // mr) pixel blocks, each block `steps`
    micro-kernel steps (contraction x panels): tasks of at most GROUP blocks, or of
    about TASK_STEPS steps where blocks are cheap (a first layer's 9-step contraction:
    a task's own setup, its tables and buffers, then weighs on 16 blocks), their count a
    multiple of the thread count, so that every thread gets the same work (262 blocks
    of a (64, 96, 7, 7) convolution as 17 tasks of 16 split 9:8 between 2 threads; as
    18 of 14-15, 131:131)."""
    blocks, threads = -(-M // mr), numba.get_num_threads()
    group = max(GROUP, TASK_STEPS // max(steps, 1))
    per_thread = -(-blocks // (group * threads))
    return max(1, threads * per_thread)


def _padded_input(x, padding, nchw):
    """x (NCHW or NHWC) as a zero-padded NHWC copy."""
    ph, pw = padding
    if nchw:
        N, C, H, W = x.shape
    else:
        N, H, W, C = x.shape
    return _pad_to(x, ph, pw, H + 2 * ph, W + 2 * pw, nchw)


def _pad_to(a, top, left, Hp, Wp, nchw):
    """a (NCHW or NHWC) as an NHWC (N, Hp, Wp, C) copy, shifted by (top, left) and
    zero-padded (or cropped)."""
    N, C = a.shape[0], a.shape[1 if nchw else 3]
    if not nchw and (top, left, Hp, Wp) == (0, 0) + a.shape[1:3] \
            and a.flags.c_contiguous:
        return a  # nothing to pad (a 1x1 or unpadded convolution): the kernels only read it
    out = buffer("padded", N * Hp * Wp * C, a.dtype).reshape(N, Hp, Wp, C)
    # On all threads even when small: the copy wakes the sleeping workers that the GEMM
    # right after needs anyway (a serial copy below 1 MiB made whole passes up to 12%
    # slower; numbers: benchmarks/DESIGN.md, conv2d_nhwc.py)
    if nchw:
        from .conv2d_direct import _to_padded_nhwc
        _to_padded_nhwc(a, top, left, out)
    else:
        _pad_nhwc(np.ascontiguousarray(a), top, left, out)
    return out


def forward(x, w, b, stride, padding, dilation, nchw=False):
    """conv2d forward, groups = 1: x NHWC (N, H, W, C) -> y NHWC (N, Ho, Wo, K), or NCHW
    -> NCHW with nchw=True (the output is then written straight into NCHW planes)."""
    if nchw:
        N, C, H, W = x.shape
    else:
        N, H, W, C = x.shape
    K, _, R, S = w.shape
    Ho = _out_size(H, R, stride[0], padding[0], dilation[0])
    Wo = _out_size(W, S, stride[1], padding[1], dilation[1])
    if nchw:
        y = np.empty((N, K, Ho, Wo), dtype=x.dtype)
        obase, kstride = nchw_table(N, K, Ho, Wo), Ho * Wo
    else:
        y = np.empty((N, Ho, Wo, K), dtype=x.dtype)
        obase, kstride = nhwc_table(N * Ho * Wo, K), 1
    wp = pack_weights(w, blocking(x.dtype)[1])
    if _in_place(nchw, C, dilation):
        _forward(np.ascontiguousarray(x), w.shape, wp, b, stride, dilation, (Ho, Wo),
                 y.reshape(-1), obase, kstride, origin=(-padding[0], -padding[1]),
                 valid=(0, H, 0, W), exact=True)
    else:
        _forward(_padded_input(x, padding, nchw), w.shape, wp, b, stride, dilation,
                 (Ho, Wo), y.reshape(-1), obase, kstride,
                 valid=(padding[0], padding[0] + H, padding[1], padding[1] + W))
    return y


def _in_place(nchw, C, dilation):
    """Whether a forward (or backward-input) reads its NHWC input where it is, with no
    padded copy: its border pixels then skip every tap on padding (_forward's exact).
    Not for NCHW input (converted anyway, padding included, in one copy) nor where a
    kernel row is one merged run (its columns cannot be skipped)."""
    return UNPADDED_READS and not nchw and not _merged_runs(C, dilation[1])


def _merged_runs(C, dw):
    """Whether the forward walks a kernel row's S taps as one run of S*C values (see
    _forward): few channels and dilation 1 along the width."""
    return dw == 1 and C < RUN_MERGE_BELOW


@functools.lru_cache(maxsize=64)
def _pack_index(w_shape, rows, cols, nr):
    """Where each value of the packed weights of backward-input comes from: the kernel
    taps (rows, cols) of (K, C, R, S) weights (flipped: rows and columns in decreasing
    order) as (C, K, len(rows), len(cols)) weights wt[c, k, a, b] = w[k, c, rows[a],
    cols[b]], packed by pack_weights; int32 flat indices into w, -1 for the zero
    padding. One gather (_gather) then replaces the slicing, transposing and packing
    copies (about 1 ms a call of a (64, 128, 14, 14) stride-2 input gradient)."""
    K, C, R, S = w_shape
    idx = np.arange(1, K * C * R * S + 1).reshape(K, C, R, S)
    sub = idx[:, :, list(rows)][:, :, :, list(cols)].transpose(1, 0, 2, 3)
    packed = pack_weights(sub, nr) - 1  # (the padding's zeros become -1)
    return _frozen(packed.astype(np.int32))


def backward_input(dy, w, x_shape, stride, padding, dilation, nchw=False):
    """conv2d backward-input, groups = 1: dy NHWC (N, Ho, Wo, K) -> dx NHWC with x_shape
    (N, H, W, C); or NCHW dy -> NCHW dx (x_shape NCHW) with nchw=True. Stride > 1 needs
    dilation 1."""
    if nchw:
        N, C, H, W = x_shape
        Ho, Wo = dy.shape[2:]
    else:
        N, H, W, C = x_shape
        Ho, Wo = dy.shape[1:3]
    K, _, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    nr = blocking(dy.dtype)[1]
    dx = np.empty(x_shape, dtype=dy.dtype)
    dxf = dx.reshape(-1)
    if (sh, sw) == (1, 1):
        top, left = dh * (R - 1) - ph, dw * (S - 1) - pw
        obase, kstride = (nchw_table(N, C, H, W), H * W) if nchw else \
            (nhwc_table(N * H * W, C), 1)
        flipped = tuple(range(R - 1, -1, -1)), tuple(range(S - 1, -1, -1))
        wt = _gather(w, _pack_index(w.shape, *flipped, nr))
        if _in_place(nchw, K, dilation):
            _forward(np.ascontiguousarray(dy), (C, K, R, S), wt, None, (1, 1), dilation,
                     (H, W), dxf, obase, kstride, origin=(-top, -left),
                     valid=(0, Ho, 0, Wo), exact=True)
        else:
            dyp = _pad_to(dy, top, left, H + dh * (R - 1), W + dw * (S - 1), nchw)
            _forward(dyp, (C, K, R, S), wt, None, (1, 1), dilation, (H, W), dxf, obase,
                     kstride, valid=(max(top, 0), top + Ho, max(left, 0), left + Wo))
        return dx
    assert dilation == (1, 1), "strided backward-input needs dilation 1"
    (top, left, Hd, Wd), phases = _phase_plan(N, C, H, W, Ho, Wo, R, S, stride, padding,
                                              nchw)
    live = any(p[2] is not None for p in phases)
    in_place = _in_place(nchw, K, (1, 1))
    if in_place:  # the phases' windows placed on dy itself
        dyp, shift, valid = np.ascontiguousarray(dy), (top, left), (0, Ho, 0, Wo)
    else:
        dyp = _pad_to(dy, top, left, Hd, Wd, nchw) if live else None
        shift, valid = (0, 0), (top, top + Ho, left, left + Wo)
    for rows, cols, obase, kstride, (Hu, Wu), origin in phases:
        if obase is None:  # no kernel offset reaches these pixels
            h0, w0 = rows, cols
            if nchw:
                dx[:, :, h0::sh, w0::sw] = 0
            else:
                dx[:, h0::sh, w0::sw, :] = 0
            continue
        # The taps that reach this phase (flipped already), as (C, K, Ma, Mb) weights
        _forward(dyp, (C, K, len(rows), len(cols)),
                 _gather(w, _pack_index(w.shape, rows, cols, nr)), None, (1, 1), (1, 1),
                 (Hu, Wu), dxf, obase, kstride,
                 origin=(origin[0] - shift[0], origin[1] - shift[1]), valid=valid,
                 exact=in_place)
    return dx


@functools.lru_cache(maxsize=64)
def _phase_plan(N, C, H, W, Ho, Wo, R, S, stride, padding, nchw):
    """Strided backward-input (dilation 1) as sh*sw phases, the sets of input pixels
    (h, w) with the same (h + ph) % sh and (w + pw) % sw: each phase is a stride-1
    convolution of dy with the taps that reach it (see conv2d_direct.backward_input).
    Phase (a, b) reads dy shifted by (len(rows) - 1 - u0, len(cols) - 1 - v0), so one
    copy of dy, padded by the largest shift, serves every phase from its own origin.
    Returns ((top, left, Hd, Wd) of that copy, phases), a phase being (tap rows, tap
    columns, its pixels' offsets in dx, the channel stride, (Hu, Wu), origin), or
    (h0, w0, None, ...) for a phase no tap reaches (zeros). Cached: a function of the
    geometry only."""
    from .conv2d_direct import _phase_taps
    (sh, sw), (ph, pw) = stride, padding
    phases = [(rows, h0, u0, Hu, cols, w0, v0, Wu)
              for rows, h0, u0, Hu in _phase_taps(R, sh, ph, H)
              for cols, w0, v0, Wu in _phase_taps(S, sw, pw, W) if Hu > 0 and Wu > 0]
    live = [p for p in phases if p[0] and p[4]]
    top = max([0] + [len(p[0]) - 1 - p[2] for p in live])
    left = max([0] + [len(p[4]) - 1 - p[6] for p in live])
    Hd = max([top + Ho] + [top - (len(p[0]) - 1 - p[2]) + p[3] + len(p[0]) - 1 for p in live])
    Wd = max([left + Wo] + [left - (len(p[4]) - 1 - p[6]) + p[7] + len(p[4]) - 1
                            for p in live])
    n = np.arange(N)[:, None, None]
    plan = []
    for rows, h0, u0, Hu, cols, w0, v0, Wu in phases:
        if not rows or not cols:
            plan.append((h0, w0, None, 0, (Hu, Wu), (0, 0)))
            continue
        hs = h0 + sh * np.arange(Hu)
        ws = w0 + sw * np.arange(Wu)
        if nchw:
            obase, kstride = (n * (C * H * W) + hs[:, None] * W + ws).ravel(), H * W
        else:
            obase, kstride = (((n * H + hs[:, None]) * W + ws) * C).ravel(), 1
        origin = (top - (len(rows) - 1 - u0), left - (len(cols) - 1 - v0))
        plan.append((tuple(rows), tuple(cols), _frozen(obase.astype(np.int64)), kstride,
                     (Hu, Wu), origin))
    return (top, left, Hd, Wd), plan


def backward_weight(dy, x, w_shape, stride, padding, dilation, nchw=False):
    """conv2d backward-weight, groups = 1: dy, x NHWC (or both NCHW with nchw=True) ->
    dw (K, C, R, S)."""
    K, C, R, S = w_shape
    mr, nr = blocking(x.dtype)
    tail = half_tail(K, x.dtype)
    step = nr // 2 if tail else nr  # dy's rows padded to this (no copy where K is one)
    Kp = -(-K // step) * step
    xp = _padded_input(x, padding, nchw)
    N, Hp, Wp, _ = xp.shape
    if nchw:
        Ho, Wo = dy.shape[2:]
        dyf = buffer("dy_rows", N * Ho * Wo * Kp, dy.dtype)
        _nchw_rows(dy.reshape(N, K, Ho * Wo), Kp, dyf)
    else:
        Ho, Wo = dy.shape[1:3]
        if Kp == K:
            dyf = dy.reshape(-1)
        else:
            dyf = buffer("dy_rows", N * Ho * Wo * Kp, dy.dtype)
            rows = dyf.reshape(-1, Kp)
            rows[:, :K] = dy.reshape(-1, K)
            rows[:, K:] = 0
    pix = pixel_table(N, Hp, Wp, C, Ho, Wo, *stride)
    chunk, groups = weight_blocking(N * Ho * Wo, Kp, x.itemsize,
                                    stride[0] * stride[1] * C * x.itemsize)
    seg_m, first, _, length = weight_chunks(N, Ho, Wo, chunk, groups)
    L = R * S * C
    a_cs = stride[1] * C  # a segment's pixels apart in the input
    trows, torows = weight_tiles(R, S, *dilation, Wp, C, mr, Kp)
    H, W = Hp - 2 * padding[0], Wp - 2 * padding[1]
    tile_class, lo, cut, run_s0, run_n, rptr = weight_plan(
        N, H, W, C, Ho, Wo, R, S, tuple(stride), tuple(padding), tuple(dilation), mr, chunk,
        groups)
    if lo.any():  # a tile's runs start lo pixels into each segment
        trows = _shifted_rows(trows, lo, a_cs, mr)
    groups = min(groups, first.size)
    partial = buffer("partial", groups * (L + 1) * Kp, x.dtype).reshape(
        groups, (L + 1) * Kp)  # + a scratch row
    _weight_gemm(xp.reshape(-1), _permuted(pix, seg_m), seg_m, first, length, a_cs, trows,
                 torows, dyf, Kp, groups, partial, tail, tile_class, lo, cut, run_s0, run_n,
                 rptr)
    # The partial sums added in group order (NumPy reduces over the leading axis one
    # slice at a time, in order).
    dwt = np.add.reduce(partial.reshape(groups, L + 1, Kp)[:, :L], axis=0)
    # dwt[(r*S + s)*C + c, k] -> dw[k, c, r, s]
    return np.ascontiguousarray(dwt[:, :K].reshape(R, S, C, K).transpose(3, 2, 0, 1))


def backward_bias(dy):
    """db[k] = sum of dy[..., k] for NHWC dy, accumulated in float64."""
    K = dy.shape[-1]
    return dy.reshape(-1, K).sum(axis=0, dtype=np.float64).astype(dy.dtype)


# --- public NHWC entry points (see kernels/README.md) ----------------------------------

def _is_pointwise(w_shape, stride, padding):
    """A 1x1 convolution that visits every pixel once: on NHWC memory it is one GEMM of
    the (N*H*W, C) pixel matrix with the (K, C) weights, no padding, no copy."""
    return w_shape[2] == w_shape[3] == 1 and stride == (1, 1) and padding == (0, 0)


def _pointwise_on_blas(dtype):
    """Whether 1x1 convolutions run on BLAS rather than on the micro-kernel: on AVX2
    hosts (there the 6 x 16 tiles lost to BLAS 2-3x) and for float64 (not measured).
    On AVX-512 the micro-kernel runs 1x1 float32 convolutions at every depth: alone it
    beats BLAS from 64 to 128 channels (up to 1.2x) and loses by up to 20% outside that
    range, but inside a training step it wins almost everywhere (BN-Inception-lite,
    batch 32, ms per call: 176 -> 32 forward 0.17 against 0.40, 32 -> 16 forward 0.12
    against 0.20), and a step with no BLAS call in its convolutions never runs a Numba
    kernel beside OpenBLAS's spinning workers. Numbers: benchmarks/DESIGN.md,
    conv2d_nhwc.py."""
    return not (POINTWISE_TILES and np.dtype(dtype).itemsize == 4)


@functools.lru_cache(maxsize=None)
def _gemm(typecode):
    return get_blas_funcs("gemm", dtype=np.dtype(typecode))


def _gemm_bias(a, w2, b):
    """a (M, C) @ w2.T + b (K,) -> (M, K), C-ordered, in one BLAS call: every row of the
    output starts as b and ?gemm adds the product to it (beta = 1), so the bias costs no
    second pass over the output (a 1x1 forward of (64, 64, 14, 14) -> 64: 0.78 against
    0.87 ms for `a @ w2.T` then `+= b`; numbers: benchmarks/DESIGN.md, conv2d_nhwc.py).
    The same single rounding of (product + bias) per element."""
    a, w2 = np.ascontiguousarray(a), np.ascontiguousarray(w2)
    if b is None:
        return a @ w2.T
    y = np.empty((a.shape[0], w2.shape[0]), dtype=a.dtype)
    y[...] = b
    gemm = _gemm(a.dtype.char)
    # BLAS is column-major: y.T (K, M) = w2 (K, C) @ a.T (C, M), where w2.T and a.T are
    # column-major views of w2's and a's memory (no copies), and y.T is updated in place.
    out = gemm(1.0, w2.T, a.T, 1.0, y.T, trans_a=1, overwrite_c=1)
    return out.T


def conv2d_forward_nhwc(x, w, b, stride, padding, dilation):
    """x (N, H, W, C), w (K, C, R, S), b (K,) or None -> y (N, Ho, Wo, K); groups = 1."""
    if _is_pointwise(w.shape, stride, padding) and _pointwise_on_blas(x.dtype):
        N, H, W, C = x.shape
        K = w.shape[0]
        return _gemm_bias(x.reshape(-1, C), w.reshape(K, C), b).reshape(N, H, W, K)
    return forward(x, w, b, stride, padding, dilation)


def conv2d_backward_input_nhwc(dy, w, x_shape, stride, padding, dilation):
    """dy (N, Ho, Wo, K) -> dx with x_shape = (N, H, W, C); groups = 1."""
    if _is_pointwise(w.shape, stride, padding) and _pointwise_on_blas(dy.dtype):
        K, C = w.shape[:2]
        return (dy.reshape(-1, K) @ w.reshape(K, C)).reshape(x_shape)
    if stride != (1, 1) and dilation != (1, 1):
        from .conv2d import conv2d_backward_input
        N, H, W, C = x_shape
        dx = conv2d_backward_input(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)), w,
                                   (N, C, H, W), stride, padding, dilation, 1)
        return np.ascontiguousarray(dx.transpose(0, 2, 3, 1))
    return backward_input(dy, w, x_shape, stride, padding, dilation)


def conv2d_backward_weight_nhwc(dy, x, w_shape, stride, padding, dilation):
    """dy (N, Ho, Wo, K), x (N, H, W, C) -> dw (K, C, R, S); groups = 1."""
    if _is_pointwise(w_shape, stride, padding) and _pointwise_on_blas(x.dtype):
        # dw^T = x^T dy, transposed back (a small copy): OpenBLAS runs this orientation
        # of the long-contraction GEMM up to 2x faster than dy^T x (numbers:
        # benchmarks/DESIGN.md, conv2d_nhwc.py), as conv2d.py found for its columns
        K, C = w_shape[:2]
        dwt = x.reshape(-1, C).T @ dy.reshape(-1, K)
        return np.ascontiguousarray(dwt.T).reshape(w_shape)
    return backward_weight(dy, x, w_shape, stride, padding, dilation)


def conv2d_backward_bias_nhwc(dy):
    """dy (N, Ho, Wo, K) -> db (K,)."""
    return backward_bias(dy)
