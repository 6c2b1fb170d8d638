"""Batch normalization as parallel Numba kernels (the "numba" backend).

Same functions and results as kernels/reference/batchnorm.py; read that file first for the
math. This one is about moving each byte as few times as possible, on any thread count:

* Shifted sums. A channel's mean and variance come from float64 sums of d = x - k and d*d,
  with k the channel's first value: one pass over memory instead of the reference's two.
  var = E[d^2] - E[d]^2 only cancels in proportion to ((mean - k) / std)^2, which is at
  most m - 1 (no sample lies further than sqrt(m - 1) standard deviations from the mean),
  so float64 keeps at least 9 digits even for m = 10^6 and a mean of 10^4: unlike
  E[x^2] - E[x]^2, whose cancellation grows with (mean / std)^2.
* Lanes. With fastmath off, LLVM may not reorder a floating-point sum, so `s += v` stays
  scalar. We sum into many independent lanes instead, one per pixel of a plane (or per
  column of a row): s[j] += v[j] is an elementwise update that vectorizes. The lanes are
  added up at the end.
* A fixed decomposition. The work is cut into pieces whose bounds depend on the shape
  only, and partial sums are combined in a fixed order, so results are bitwise the same
  for any thread count.
* Two layouts. Plane layout, for (N, C, H, W): a task is a channel, or a piece of one
  (a block of its N planes of H*W contiguous pixels). With enough channels to keep every
  thread busy, a task computes its channel's statistics and normalizes it right away,
  while the channel is still in cache (fused); otherwise the pieces of all channels are
  summed in one parallel loop and normalized in a second (split). Row layout, for (N, C)
  and maps too small to stream per channel: a task is a block of samples, each one
  contiguous row of C*H*W values, added column-wise into the task's partial sums. Rows
  of 16 channels or fewer (a channels_last layer's (N*H*W, C) rows) are packed several
  to a row first (_pack), so that a row is long enough to vectorize.
* Element loops run in x's dtype (float32: twice the SIMD lanes), on coefficients
  computed in float64 and rounded once (see _coefs). The row backward's sums, sum dy
  and sum dy * (x - mean), take blocks of 16 rows in x's dtype before they go into
  float64 lanes (_rows_grad_moments): with float64 lanes that pass was compute-bound.
  A gradient's sums cancel nothing the float64 lanes would save.
* Small inputs (the paper's MLP: (60, 100), three calls per step) cost less than waking
  the thread pool, so below _SERIAL_BELOW elements the same code runs compiled serially;
  so does float64, the checking precision, whose parallel builds were a tenth of the
  kernels' cold compile time (_serial).
* A ReLU after batch norm can be fused (relu=True): the normalizing pass writes max(y, 0)
  instead of y, one pass over memory fewer than a ReLU of its own. Its backward
  (relu_out=) masks dy first, in the ReLU kernel's pass, then runs the plain backward.
"""
import numpy as np
from numba import get_num_threads, njit, prange

from .builds import serial_precision
from .elementwise import act_backward

_LANES_MAX = 2048  # widest piece of a plane: its lanes (2 x 16 KiB) stay in L1/L2
_PIECE = 16384  # values of one channel per piece: the unit of parallel work
_ROW_TASKS_MAX = 16  # row blocks of the row layout: bounds the partial sums to combine
_ROWS_MAX_L = 16  # maps of at most this many pixels use the row layout (serial inputs)
_ROWS_MAX_L_PARALLEL = 9  # ... and above _SERIAL_BELOW elements (see _layout)
_FUSE_MIN_C_PER_THREAD = 4  # channels per thread from which the plane layout fuses
_PACK_MAX_C = 16  # (M, C) input with at most this many channels packs rows (see _pack)
_PACK_COLUMNS = 128  # ... up to this many columns a row
_BLOCK_ROWS = 16  # rows of a block summed in x's dtype by the row backward's reductions
# Below this many elements the serial twin runs: waking the thread pool costs more than
# the work, and far more when another process holds the other cores (numbers:
# benchmarks/DESIGN.md, batchnorm.py; `python -m minidl.benchmarks.cases bn-sweep`).
_SERIAL_BELOW = 1 << 17


# --- pieces: the unit of parallel work on (N, C, L) planes ------------------------------
# Piece p of channel c is the rectangle of planes [n0, n1) by pixels [l0, l1): PN pieces
# across the batch times PL across a plane (PL > 1 only for planes of more than
# _LANES_MAX pixels). Its sums are accumulated in l1 - l0 lanes, one per pixel, so a sweep
# adds a whole run of contiguous pixels with one vectorized loop.

@njit(cache=True, fastmath=False)
def _piece(N, L, PN, PL, p):
    pn, pl = p // PL, p % PL
    return pn * N // PN, (pn + 1) * N // PN, pl * L // PL, (pl + 1) * L // PL


@njit(cache=True, fastmath=False)
def _piece_moments(x3, c, n0, n1, l0, l1, k):
    """(sum d, sum d^2), d = x - k, over one piece of channel c. Four planes per sweep
    over the lanes: the lanes live in memory, and their loads and stores, not the
    arithmetic, limit this loop. (Slices keep indices provably >= 0: no gathers.)"""
    s1 = np.zeros(l1 - l0)
    s2 = np.zeros(l1 - l0)
    n = n0
    while n + 4 <= n1:
        b0, b1 = x3[n, c, l0:l1], x3[n + 1, c, l0:l1]
        b2, b3 = x3[n + 2, c, l0:l1], x3[n + 3, c, l0:l1]
        for j in range(s1.size):
            d0 = np.float64(b0[j]) - k
            d1 = np.float64(b1[j]) - k
            d2 = np.float64(b2[j]) - k
            d3 = np.float64(b3[j]) - k
            s1[j] += (d0 + d1) + (d2 + d3)
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        n += 4
    for rest in range(n, n1):  # the remaining rows, one at a time
        b0 = x3[rest, c, l0:l1]
        for j in range(s1.size):
            d0 = np.float64(b0[j]) - k
            s1[j] += d0
            s2[j] += d0 * d0
    return s1.sum(), s2.sum()


@njit(cache=True, fastmath=False)
def _piece_grad_moments(dy3, x3, c, n0, n1, l0, l1, center):
    """(sum dy, sum dy * (x - center)) over one piece, swept as in _piece_moments."""
    s1 = np.zeros(l1 - l0)
    s2 = np.zeros(l1 - l0)
    n = n0
    while n + 4 <= n1:
        g0, g1 = dy3[n, c, l0:l1], dy3[n + 1, c, l0:l1]
        g2, g3 = dy3[n + 2, c, l0:l1], dy3[n + 3, c, l0:l1]
        x0, x1 = x3[n, c, l0:l1], x3[n + 1, c, l0:l1]
        x2, x3_ = x3[n + 2, c, l0:l1], x3[n + 3, c, l0:l1]
        for j in range(s1.size):
            e0 = np.float64(g0[j])
            e1 = np.float64(g1[j])
            e2 = np.float64(g2[j])
            e3 = np.float64(g3[j])
            s1[j] += (e0 + e1) + (e2 + e3)
            s2[j] += ((e0 * (np.float64(x0[j]) - center) + e1 * (np.float64(x1[j]) - center))
                      + (e2 * (np.float64(x2[j]) - center) + e3 * (np.float64(x3_[j]) - center)))
        n += 4
    for rest in range(n, n1):
        g0, x0 = dy3[rest, c, l0:l1], x3[rest, c, l0:l1]
        for j in range(s1.size):
            e0 = np.float64(g0[j])
            s1[j] += e0
            s2[j] += e0 * (np.float64(x0[j]) - center)
    return s1.sum(), s2.sum()


@njit(cache=True, fastmath=False)
def _piece_affine(x3, y3, relu, c, n0, n1, l0, l1, center, scale, shift):
    """y = (x - center) * scale + shift, with coefficients of x's dtype (see _coefs),
    then max(y, 0) with a fused ReLU (the ReLU kernel's select: NaN kept). Two loops,
    so that the plain one is exactly the unfused kernel's."""
    zero = x3.dtype.type(0)
    for n in range(n0, n1):
        xr, yr = x3[n, c, l0:l1], y3[n, c, l0:l1]
        if relu:
            for j in range(xr.size):
                v = (xr[j] - center) * scale + shift
                yr[j] = zero if v < zero else v
        else:
            for j in range(xr.size):
                yr[j] = (xr[j] - center) * scale + shift


@njit(cache=True, fastmath=False)
def _piece_grad_affine(dy3, x3, dx3, c, n0, n1, l0, l1, a, g0, g1, center):
    """dx = a * ((dy - g0) - (x - center) * g1): the paper's collapsed backward,
    a * (dy - dbeta/m - xhat * dgamma/m), in that order, so that where dy - dbeta/m
    cancels (a batch of one) it does so exactly, before the scaling by a."""
    for n in range(n0, n1):
        gr, xr, dxr = dy3[n, c, l0:l1], x3[n, c, l0:l1], dx3[n, c, l0:l1]
        for j in range(xr.size):
            dxr[j] = a * ((gr[j] - g0) - (xr[j] - center) * g1)


@njit(cache=True, fastmath=False, inline="always")
def _coefs(center, scale, shift, out):
    """Rounds the coefficients of y = (x - center) * scale + shift to out's dtype (x's),
    moving the rounding error of the center into the shift. The element loops then run
    in x's precision (twice the SIMD lanes for float32), and x - center stays exact
    (Sterbenz) for x near the center: what keeps a mean of 1e4 harmless in float32."""
    out[0] = center
    out[1] = scale
    out[2] = shift + (np.float64(out[0]) - center) * scale


@njit(cache=True, fastmath=False)
def _stats(s1, s2, k, m):
    """Mean and biased variance from the shifted sums; var is clamped at 0 because
    rounding can leave a constant channel's E[d^2] - E[d]^2 a hair below zero."""
    d = s1 / m
    return k + d, max(s2 / m - d * d, 0.0)


@njit(cache=True, fastmath=False)
def _per_column(v, L, G):
    """out[j] = v[(j // L) % C] for the J = G*C*L columns of the row layout (C = len(v)):
    each column's copy of its channel's value."""
    C = v.shape[0]
    out = np.empty(G * C * L, v.dtype)
    for j in range(out.shape[0]):
        out[j] = v[(j // L) % C]
    return out


@njit(cache=True, fastmath=False)
def _rows_grad_moments(dy2, x2, mj, n0, n1, s1, s2):
    """s1[j], s2[j] = sum dy, sum dy * (x - mj[j]) over rows [n0, n1) of (N, J) dy2, x2,
    column-wise. Blocks of _BLOCK_ROWS rows are summed in x's dtype (float32: twice the
    lanes of float64 and no conversions), and the block sums added into float64 s1, s2:
    a float32 sum of 16 terms, then float64 (numbers: benchmarks/DESIGN.md,
    batchnorm.py). The blocks follow the rows, so the result is the same on any thread
    count."""
    J = x2.shape[1]
    dt = x2.dtype.type
    b1 = np.empty(J, x2.dtype)
    b2 = np.empty(J, x2.dtype)
    m = np.empty(J, x2.dtype)
    for j in range(J):
        s1[j] = 0.0
        s2[j] = 0.0
        m[j] = dt(mj[j])
    for n in range(n0, n1, _BLOCK_ROWS):
        for j in range(J):
            b1[j] = 0.0
            b2[j] = 0.0
        for r in range(n, min(n + _BLOCK_ROWS, n1)):
            g, xr = dy2[r], x2[r]
            for j in range(J):
                b1[j] += g[j]
                b2[j] += g[j] * (xr[j] - m[j])
        for j in range(J):
            s1[j] += b1[j]
            s2[j] += b2[j]


def _build(parallel):
    """The kernels, compiled with prange loops running in parallel or (for small inputs,
    parallel=False) as plain loops. Same code, so bitwise the same results."""
    loop = prange if parallel else range

    def plane_forward(x3, gamma, beta, mean_in, var_in, eps, train, PN, PL, fused, relu):
        """y = (x - mean) / sqrt(var + eps) * gamma + beta over (N, C, L) x3, with the
        batch statistics (train) or mean_in, var_in (eval), then max(y, 0) if relu.
        Returns (y3, mean, var)."""
        N, C, L = x3.shape
        P = PN * PL
        y3 = np.empty_like(x3)
        mean = np.empty(C, x3.dtype)
        var = np.empty(C, x3.dtype)
        S1 = np.empty((C, P))  # shifted sums of each piece (every one written below)
        S2 = np.empty((C, P))
        per = 1 if fused else P  # normalization tasks per channel
        cf = np.empty((C * per, 3), x3.dtype)  # each task's (center, scale, shift)
        if train and not fused:
            for t in loop(C * P):
                c, p = t // P, t % P
                n0, n1, l0, l1 = _piece(N, L, PN, PL, p)
                k = np.float64(x3[0, c, 0])
                S1[c, p], S2[c, p] = _piece_moments(x3, c, n0, n1, l0, l1, k)
        for t in loop(C * per):
            c, p = t // per, t % per
            if train:
                k = np.float64(x3[0, c, 0])
                if fused:
                    for q in range(P):
                        n0, n1, l0, l1 = _piece(N, L, PN, PL, q)
                        S1[c, q], S2[c, q] = _piece_moments(x3, c, n0, n1, l0, l1, k)
                s1 = 0.0
                s2 = 0.0
                for q in range(P):
                    s1 += S1[c, q]
                    s2 += S2[c, q]
                mu, v = _stats(s1, s2, k, N * L)
            else:
                mu, v = np.float64(mean_in[c]), np.float64(var_in[c])
            if p == 0:
                mean[c] = mu
                var[c] = v
            # y = gamma (x - mu) / sqrt(v + eps) + beta: one scale and shift per channel,
            # applied to x - mu rather than x (see _coefs)
            _coefs(mu, gamma[c] / np.sqrt(v + eps), np.float64(beta[c]), cf[t])
            n0, n1, l0, l1 = (0, N, 0, L) if fused else _piece(N, L, PN, PL, p)
            _piece_affine(x3, y3, relu, c, n0, n1, l0, l1, cf[t, 0], cf[t, 1], cf[t, 2])
        return y3, mean, var

    def plane_backward(dy3, x3, gamma, mean, var, eps, train, PN, PL, fused):
        """(dx3, dgamma, dbeta) for (N, C, L) arrays; mean, var are the forward's batch
        statistics (train) or the running statistics (eval, where dx = dy * scale)."""
        N, C, L = x3.shape
        P = PN * PL
        dx3 = np.empty_like(x3)
        dgamma = np.empty(C, x3.dtype)
        dbeta = np.empty(C, x3.dtype)
        G1 = np.empty((C, P))  # sum dy and sum dy * (x - mean) of each piece (all written)
        G2 = np.empty((C, P))
        per = 1 if fused else P
        cf = np.empty((C * per, 3), x3.dtype)  # each task's (a, g0, g1), in x's dtype
        if not fused:
            for t in loop(C * P):
                c, p = t // P, t % P
                n0, n1, l0, l1 = _piece(N, L, PN, PL, p)
                mu = np.float64(mean[c])
                G1[c, p], G2[c, p] = _piece_grad_moments(dy3, x3, c, n0, n1, l0, l1, mu)
        for t in loop(C * per):
            c, p = t // per, t % per
            mu = np.float64(mean[c])
            if fused:
                for q in range(P):
                    n0, n1, l0, l1 = _piece(N, L, PN, PL, q)
                    G1[c, q], G2[c, q] = _piece_grad_moments(dy3, x3, c, n0, n1, l0, l1, mu)
            sdy = 0.0
            sdyxc = 0.0
            for q in range(P):
                sdy += G1[c, q]
                sdyxc += G2[c, q]
            inv_std = 1.0 / np.sqrt(np.float64(var[c]) + eps)
            db, dg = sdy, sdyxc * inv_std
            a = gamma[c] * inv_std
            # dx = a * (dy - dbeta/m - xhat * dgamma/m), xhat = (x - mean) * inv_std;
            # in eval the statistics are constants and dx = a * dy
            g0, g1 = (db / (N * L), inv_std * dg / (N * L)) if train else (0.0, 0.0)
            if p == 0:
                dgamma[c] = dg
                dbeta[c] = db
            cf[t, 0], cf[t, 1], cf[t, 2] = a, g0, g1
            n0, n1, l0, l1 = (0, N, 0, L) if fused else _piece(N, L, PN, PL, p)
            _piece_grad_affine(dy3, x3, dx3, c, n0, n1, l0, l1,
                               cf[t, 0], cf[t, 1], cf[t, 2], mean[c])
        return dx3, dgamma, dbeta

    def rows_forward(x3, gamma, beta, mean_in, var_in, eps, train, T, C, relu):
        """Forward for (N, G*C, L) x3: rows of G samples of C channels with short planes
        (L = 1 for (N, C) input; G > 1 packs G of its rows into one, see _pack). Task t
        takes rows [t*N//T, (t+1)*N//T), each a contiguous run of J = G*C*L values, and
        adds them column-wise into its own partial sums: the columns are the lanes;
        column j is channel (j // L) % C. max(y, 0) if relu."""
        N, GC, L = x3.shape
        G = GC // C
        J = GC * L
        x2 = x3.reshape(N, J)
        y2 = np.empty_like(x2)
        mean = np.empty(C, x3.dtype)
        var = np.empty(C, x3.dtype)
        cf = np.empty((3, C), x3.dtype)  # per channel (center, scale, shift), see _coefs
        if train:
            k = _per_column(x3[0, :C, 0].astype(np.float64), L, G)  # channels' first values
            S1 = np.empty((T, J))  # zeroed by the task that owns the row
            S2 = np.empty((T, J))
            for t in loop(T):
                s1, s2 = S1[t], S2[t]
                for j in range(J):
                    s1[j] = 0.0
                    s2[j] = 0.0
                n, n1 = t * N // T, (t + 1) * N // T
                while n + 4 <= n1:  # four rows per sweep, as in _piece_moments
                    r0, r1, r2, r3 = x2[n], x2[n + 1], x2[n + 2], x2[n + 3]
                    for j in range(J):
                        d0 = np.float64(r0[j]) - k[j]
                        d1 = np.float64(r1[j]) - k[j]
                        d2 = np.float64(r2[j]) - k[j]
                        d3 = np.float64(r3[j]) - k[j]
                        s1[j] += (d0 + d1) + (d2 + d3)
                        s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                    n += 4
                for rest in range(n, n1):
                    r0 = x2[rest]
                    for j in range(J):
                        d0 = np.float64(r0[j]) - k[j]
                        s1[j] += d0
                        s2[j] += d0 * d0
            for c in range(C):  # combine the tasks' partial sums, in a fixed order
                s1c = 0.0
                s2c = 0.0
                for t in range(T):
                    for g in range(G):
                        for j in range((g * C + c) * L, (g * C + c + 1) * L):
                            s1c += S1[t, j]
                            s2c += S2[t, j]
                mu, v = _stats(s1c, s2c, k[c * L], N * G * L)
                mean[c], var[c] = mu, v
                _coefs(mu, gamma[c] / np.sqrt(v + eps), np.float64(beta[c]), cf[:, c])
        else:
            for c in range(C):
                mu, v = np.float64(mean_in[c]), np.float64(var_in[c])
                mean[c], var[c] = mu, v
                _coefs(mu, gamma[c] / np.sqrt(v + eps), np.float64(beta[c]), cf[:, c])
        # per-column copies of the per-channel coefficients keep the inner loop a plain
        # vectorizable sweep along the row
        cj, sj, hj = _per_column(cf[0], L, G), _per_column(cf[1], L, G), _per_column(cf[2], L, G)
        zero = x3.dtype.type(0)
        for t in loop(T):
            for n in range(t * N // T, (t + 1) * N // T):
                xr, yr = x2[n], y2[n]
                if relu:  # (as in _piece_affine)
                    for j in range(J):
                        v = (xr[j] - cj[j]) * sj[j] + hj[j]
                        yr[j] = zero if v < zero else v
                else:
                    for j in range(J):
                        yr[j] = (xr[j] - cj[j]) * sj[j] + hj[j]
        return y2.reshape(x3.shape), mean, var

    def rows_backward(dy3, x3, gamma, mean, var, eps, train, T, C):
        """Backward for the row layout: the reductions of plane_backward, per column."""
        N, GC, L = x3.shape
        G = GC // C
        J = GC * L
        x2 = x3.reshape(N, J)
        dy2 = dy3.reshape(N, J)
        dx2 = np.empty_like(x2)
        mj = _per_column(mean.astype(np.float64), L, G)
        G1 = np.empty((T, J))  # sum dy and sum dy * (x - mean), per task and column
        G2 = np.empty((T, J))
        for t in loop(T):
            _rows_grad_moments(dy2, x2, mj, t * N // T, (t + 1) * N // T, G1[t], G2[t])
        dgamma = np.empty(C, x3.dtype)
        dbeta = np.empty(C, x3.dtype)
        a = np.empty(C, x3.dtype)  # dx = a ((dy - g0) - (x - mean) g1), see _piece_grad_affine
        g0 = np.empty(C, x3.dtype)
        g1 = np.empty(C, x3.dtype)
        m = N * G * L
        for c in range(C):
            sdy = 0.0
            sdyxc = 0.0
            for t in range(T):
                for g in range(G):
                    for j in range((g * C + c) * L, (g * C + c + 1) * L):
                        sdy += G1[t, j]
                        sdyxc += G2[t, j]
            inv_std = 1.0 / np.sqrt(np.float64(var[c]) + eps)
            db, dg = sdy, sdyxc * inv_std
            dbeta[c], dgamma[c] = db, dg
            a[c] = gamma[c] * inv_std
            g0[c] = db / m if train else 0.0
            g1[c] = inv_std * dg / m if train else 0.0
        aj, g0j, g1j = _per_column(a, L, G), _per_column(g0, L, G), _per_column(g1, L, G)
        mxj = _per_column(mean, L, G)
        for t in loop(T):
            for n in range(t * N // T, (t + 1) * N // T):
                gr, xr, dxr = dy2[n], x2[n], dx2[n]
                for j in range(J):
                    dxr[j] = aj[j] * ((gr[j] - g0j[j]) - (xr[j] - mxj[j]) * g1j[j])
        return dx2.reshape(x3.shape), dgamma, dbeta

    jit = njit(parallel=parallel, cache=True, fastmath=False)
    return jit(plane_forward), jit(plane_backward), jit(rows_forward), jit(rows_backward)


_PARALLEL = _build(True)
_SERIAL = _build(False)


def _serial(x):
    """Whether x runs on the serial build: small inputs (the thread pool costs more than
    it saves) and float64, minidl's checking precision (gradcheck, references), where
    speed matters less than the ~10 s of cold compilation its parallel builds took
    (numbers: benchmarks/DESIGN.md, batchnorm.py)."""
    return x.size < _SERIAL_BELOW or serial_precision(x)


def _row_tasks(x3):
    """Row blocks for the row layout: from the shape only (determinism), and at most
    _ROW_TASKS_MAX so that combining the (T, C*L) partial sums stays cheap."""
    return max(1, min(x3.shape[0], _ROW_TASKS_MAX, x3.size // _PIECE))


def _layout(x):
    """x as a C-contiguous (N, C, L), and whether to use the row layout: for (N, C) input
    and for maps so small that a channel's runs of L values are too short to stream.
    Where that size lies depends on the thread count: in parallel the plane layout wins
    from 4x4 maps up, serially the row layout still wins on 4x4 maps (numbers:
    benchmarks/DESIGN.md, batchnorm.py)."""
    x = np.ascontiguousarray(x)  # a no-op under the contract; a copy for stray views
    if x.ndim == 2:
        return x.reshape(x.shape[0], x.shape[1], 1), True
    N, C, H, W = x.shape
    limit = _ROWS_MAX_L if _serial(x) else _ROWS_MAX_L_PARALLEL
    return x.reshape(N, C, H * W), H * W <= limit


def _pack(x3):
    """x3 for the row kernels: an (M, C, 1) input with few channels as (M/G, G*C, 1), G
    of its rows in one (G the largest divisor of M up to _PACK_COLUMNS // C), so that a
    sweep along a row is long enough to vectorize (16 float32 channels: a row is one
    vector; measured in benchmarks/DESIGN.md, batchnorm.py)."""
    M, C, L = x3.shape
    G = _PACK_COLUMNS // C if L == 1 and C <= _PACK_MAX_C else 1
    while M % G:
        G -= 1
    return x3.reshape(M // G, G * C, 1) if G > 1 else x3


def _plane_plan(x):
    """(PN, PL, fused) for the plane layout: pieces across the batch and across a plane
    (from the shape only), and whether to fuse. Fusing a channel's statistics with its
    normalization saves a pass over memory, but needs enough channels to share out:
    numba gives each thread one contiguous block of the channels."""
    N, C, H, W = x.shape
    L = H * W
    PL = -(-L // _LANES_MAX)
    PN = max(1, min(N, N * (L // PL) // _PIECE))
    fused = (PN * PL == 1 or _serial(x)
             or C >= _FUSE_MIN_C_PER_THREAD * get_num_threads())
    return PN, PL, fused


def _forward(x, gamma, beta, mean_in, var_in, eps, train, relu):
    plane_fwd, _, rows_fwd, _ = _SERIAL if _serial(x) else _PARALLEL
    x3, rows = _layout(x)
    if rows:
        C, x3 = x3.shape[1], _pack(x3)
        y, mean, var = rows_fwd(x3, gamma, beta, mean_in, var_in, eps, train, _row_tasks(x3),
                                C, relu)
    else:
        PN, PL, fused = _plane_plan(x)
        y, mean, var = plane_fwd(x3, gamma, beta, mean_in, var_in, eps, train, PN, PL, fused,
                                 relu)
    return y.reshape(x.shape), mean, var


def _backward(dy, x, gamma, mean, var, eps, train, relu_out):
    _, plane_bwd, _, rows_bwd = _SERIAL if _serial(x) else _PARALLEL
    if relu_out is not None:
        # The fused ReLU's gradient, dy * [relu_out > 0], in a pass of its own: masking
        # inside the two passes below reads relu_out twice, and measured no faster than
        # this (numbers: benchmarks/DESIGN.md, batchnorm.py).
        dy = act_backward(dy, relu_out, "relu")
    x3, rows = _layout(x)
    dy3 = np.ascontiguousarray(dy).reshape(x3.shape)
    if rows:
        C, x3, dy3 = x3.shape[1], _pack(x3), _pack(dy3)
        dx, dgamma, dbeta = rows_bwd(dy3, x3, gamma, mean, var, eps, train, _row_tasks(x3), C)
    else:
        PN, PL, fused = _plane_plan(x)
        dx, dgamma, dbeta = plane_bwd(dy3, x3, gamma, mean, var, eps, train, PN, PL, fused)
    return dx.reshape(x.shape), dgamma, dbeta


def batch_norm_train_forward(x, gamma, beta, eps, relu=False):
    # the running-statistics slots are unused in training; gamma fills them so that
    # training and eval share one compiled specialization
    return _forward(x, gamma, beta, gamma, gamma, eps, True, relu)


def batch_norm_train_backward(dy, x, gamma, mean, var, eps, relu_out=None):
    return _backward(dy, x, gamma, mean, var, eps, True, relu_out)


def batch_norm_eval_forward(x, gamma, beta, running_mean, running_var, eps, relu=False):
    return _forward(x, gamma, beta, running_mean, running_var, eps, False, relu)[0]


def batch_norm_eval_backward(dy, x, gamma, running_mean, running_var, eps, relu_out=None):
    return _backward(dy, x, gamma, running_mean, running_var, eps, False, relu_out)
