"""Bias + activation and the activation's gradient as parallel Numba kernels.

Same functions and results as kernels/reference/elementwise.py (read it first). The point
is fusion: NumPy's act(x + b) makes temporaries and sweeps memory two to five times; here
a task writes x + b for its block of samples and applies act to that block in place
while it is still in cache, so memory sees one read of x and one write of y.

The activation is passed to the kernels as a small integer and branched on once per
block, so that each activation's loop vectorizes. Small inputs (below _SERIAL_BELOW
elements, fewer for sigmoid and tanh) run on a serially compiled copy of the same code:
waking the thread pool costs more than the work. float64 runs there too, as in
batchnorm.py (no parallel float64 build to compile).
"""
import math

import numpy as np
from numba import njit, prange

from .builds import serial_precision

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")
IDENTITY, RELU, SIGMOID, TANH = range(4)  # the codes the kernels see
_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}

_CHUNK = 16384  # elements per parallel task of the flat kernels
_ROWS_MAX_L = 16  # maps of at most this many pixels broadcast the bias along whole rows
# Below this much work the serial twin runs (see kernels/cpu/batchnorm.py); sigmoid and
# tanh count _EXP_COST per element. 4 keeps the MLP steps' activations (up to batch 256
# of 100 units) serial: a parallel one there ran between two BLAS calls and left its
# workers spinning beside BLAS's (kernels/__init__.py); serial, it was no slower
# (numbers: benchmarks/DESIGN.md, kernels/__init__.py).
_SERIAL_BELOW = 1 << 17
_EXP_COST = 4


# (error_model="numpy" on the kernels that divide: Python's semantics would test every
# divisor for zero to raise ZeroDivisionError, and that branch stops vectorization.)

# --- exp without libm -----------------------------------------------------------------
# np.exp inside a Numba loop is a scalar libm call per element (tanh a slower one),
# which would make sigmoid and tanh the slowest layers of the paper's MLP (numbers:
# benchmarks/DESIGN.md, elementwise.py). The version below vectorizes:
# exp(t) = 2^k * exp(r), r = t - k ln2 in [-ln2/2, ln2/2], exp(r) - 1 by its Taylor
# polynomial (degree 13: truncation error < 1e-17 on that interval, evaluated by
# Estrin's scheme, which has shorter dependency chains than Horner's), and 2^k written
# directly as IEEE-754 bits (a float64 view of an int64 buffer, whence the blocks).
# Accuracy: within a few ulp of libm, in float64 for both dtypes.

_B = 256  # block of elements that share the scratch buffers
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 = _LN2_HI + _LN2_LO; k * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10  # for |k| < 2^11 (Cody & Waite)
_A = [1.0 / math.factorial(j + 1) for j in range(13)]  # expm1(r) = r * sum_j _A[j] r^j
_A0, _A1, _A2, _A3, _A4, _A5, _A6, _A7, _A8, _A9, _A10, _A11, _A12 = _A


@njit(cache=True, fastmath=False)
def _exp_parts(z, factor, q, bits):
    """For t = -factor * |z| <= 0: exp(t) = s * (1 + q), with s = 2^k left as IEEE bits
    in `bits` (read them through a float64 view) and q = expm1(r). t is clamped at
    -708, where exp is 3e-308: below, s would leave the normal range (callers flush
    such results to 0). NaN gives garbage here: callers pass NaN through themselves."""
    for i in range(z.size):
        t = max(-factor * abs(np.float64(z[i])), -708.0)
        k = np.floor(t * _INV_LN2 + 0.5)
        r = (t - k * _LN2_HI) - k * _LN2_LO
        bits[i] = (np.int64(k) + 1023) << 52
        r2 = r * r
        r4 = r2 * r2
        p0 = (_A0 + _A1 * r) + (_A2 + _A3 * r) * r2
        p4 = (_A4 + _A5 * r) + (_A6 + _A7 * r) * r2
        p8 = (_A8 + _A9 * r) + (_A10 + _A11 * r) * r2
        q[i] = r * ((p0 + p4 * r4) + (p8 + _A12 * r4) * (r4 * r4))


@njit(cache=True, fastmath=False)
def _scratch():
    q = np.empty(_B)
    bits = np.empty(_B, np.int64)
    return q, bits, bits.view(np.float64)


@njit(cache=True, fastmath=False, error_model="numpy")
def _sigmoid_inplace(y, q, bits, s):
    """y = 1 / (1 + exp(-y)), overflow-free: with e = exp(-|y|) <= 1 it is 1/(1+e) for
    y >= 0 and e/(1+e) for y < 0 (not 1 - 1/(1+e), which cancels)."""
    for i0 in range(0, y.size, _B):
        yb = y[i0:i0 + _B]
        _exp_parts(yb, 1.0, q, bits)
        for i in range(yb.size):
            z = yb[i]
            e = s[i] + s[i] * q[i]  # exp(-|z|)...
            e = e if abs(z) < 708.0 else 0.0  # ...flushed to 0 below 3e-308
            p = 1.0 / (1.0 + e)
            r = p if z >= 0 else e * p
            yb[i] = r if z == z else z  # NaN stays NaN


@njit(cache=True, fastmath=False, error_model="numpy")
def _tanh_inplace(y, q, bits, s):
    """tanh y = sign(y) * -m / (2 + m) with m = expm1(-2|y|) = (s - 1) + s*q: no
    cancellation near 0 (m ~ q there) and no overflow for large |y| (m -> -1)."""
    for i0 in range(0, y.size, _B):
        yb = y[i0:i0 + _B]
        _exp_parts(yb, 2.0, q, bits)
        for i in range(yb.size):
            z = yb[i]
            m = (s[i] - 1.0) + s[i] * q[i]
            t = (0.0 - m) / (2.0 + m)  # 0.0 - m: tanh(+0) is +0
            r = t if z >= 0 else -t
            yb[i] = r if z == z else z  # NaN stays NaN


@njit(cache=True, fastmath=False)
def _relu_into(x, y):
    """y = max(x, 0), NaN kept (as np.maximum): a select and an unconditional store, so
    the loop vectorizes (a conditional store `if x < 0: y = 0` would not)."""
    zero = x.dtype.type(0)  # typed: an int 0 would widen the select to float64
    for i in range(x.size):
        v = x[i]
        y[i] = zero if v < zero else v


@njit(cache=True, fastmath=False)
def _bias_relu_into(x, b, y):
    """y = max(x + b, 0) for a scalar bias b (one plane), in one vectorized pass."""
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i] + b
        y[i] = zero if v < zero else v


@njit(cache=True, fastmath=False)
def _bias_row_relu_into(x, b, y):
    """y = max(x + b, 0) for a bias row b as long as x (one sample's C*L values)."""
    zero = x.dtype.type(0)
    for i in range(x.size):
        v = x[i] + b[i]
        y[i] = zero if v < zero else v


@njit(cache=True, fastmath=False)
def _act_inplace(y, act, q, bits, s):
    if act == RELU:  # (the drivers fuse relu into their first pass; this is the fallback)
        _relu_into(y, y)
    elif act == SIGMOID:
        _sigmoid_inplace(y, q, bits, s)
    elif act == TANH:
        _tanh_inplace(y, q, bits, s)


@njit(cache=True, fastmath=False)
def _grad_run(g, y, dst, act):
    if act == RELU:
        for i in range(g.size):
            dst[i] = g[i] if y[i] > 0 else 0
    elif act == SIGMOID:
        for i in range(g.size):
            dst[i] = g[i] * (y[i] * (1 - y[i]))
    elif act == TANH:
        for i in range(g.size):
            dst[i] = g[i] * (1 - y[i] * y[i])
    else:
        dst[:] = g


def _build(parallel):
    """The drivers, compiled with prange running in parallel or as a plain loop. Each
    first writes x + b (in x's dtype, as NumPy does), then applies act in place while
    the run is still in cache."""
    loop = prange if parallel else range

    def bias_act_planes(x3, b, act, T):
        """(N, C, L) x3 as N*C planes of L values, bias b[c] on plane (n, c): task t takes
        planes [t*N*C//T, (t+1)*N*C//T), one contiguous block of memory."""
        N, C, L = x3.shape
        x2 = x3.reshape(N * C, L)
        y2 = np.empty_like(x2)
        y1 = y2.reshape(-1)
        for t in loop(T):
            r0, r1 = t * N * C // T, (t + 1) * N * C // T
            for r in range(r0, r1):
                xr, yr, br = x2[r], y2[r], b[r % C]
                if act == RELU:  # fused: one pass
                    _bias_relu_into(xr, br, yr)
                    continue
                for i in range(L):
                    yr[i] = xr[i] + br
            if act == RELU:
                continue
            # one call per task, not per row: a call passing arrays pays for reference
            # counting (numbers: benchmarks/DESIGN.md, elementwise.py)
            q, bits, s = _scratch()
            _act_inplace(y1[r0 * L:r1 * L], act, q, bits, s)
        return y2.reshape(N, C, L)

    def bias_act_rows(x3, b, act, T):
        """(N, C, L) x3 with short planes (L = 1 for (N, C) input), tasks as above: each
        sample's C*L values are one contiguous row, the bias expanded to match."""
        N, C, L = x3.shape
        J = C * L
        x2 = x3.reshape(N, J)
        y2 = np.empty_like(x2)
        y1 = y2.reshape(-1)
        bj = np.repeat(b, L)
        for t in loop(T):
            n0, n1 = t * N // T, (t + 1) * N // T
            for n in range(n0, n1):
                xr, yr = x2[n], y2[n]
                if act == RELU:
                    _bias_row_relu_into(xr, bj, yr)
                    continue
                for j in range(J):
                    yr[j] = xr[j] + bj[j]
            if act == RELU:
                continue
            q, bits, s = _scratch()
            _act_inplace(y1[n0 * J:n1 * J], act, q, bits, s)
        return y2.reshape(N, C, L)

    def act_flat(x1, act, chunk):
        """act(x) over a 1-D array, one task per chunk of elements: each task copies its
        chunk and applies act to it while it is in cache (the copy is parallel too)."""
        y1 = np.empty_like(x1)
        for t in loop((x1.size + chunk - 1) // chunk):
            xc, yc = x1[t * chunk:(t + 1) * chunk], y1[t * chunk:(t + 1) * chunk]
            if act == RELU:  # one pass, no copy first
                _relu_into(xc, yc)
                continue
            yc[:] = xc
            q, bits, s = _scratch()
            _act_inplace(yc, act, q, bits, s)
        return y1

    def act_grad_flat(g1, y1, act, chunk):
        dx1 = np.empty_like(g1)
        for t in loop((g1.size + chunk - 1) // chunk):
            lo, hi = t * chunk, (t + 1) * chunk
            _grad_run(g1[lo:hi], y1[lo:hi], dx1[lo:hi], act)
        return dx1

    jit = njit(parallel=parallel, cache=True, fastmath=False)
    return jit(bias_act_planes), jit(bias_act_rows), jit(act_flat), jit(act_grad_flat)


_PARALLEL = _build(True)
_SERIAL = _build(False)


def _code(act):
    try:
        return _CODES[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}") from None


def _serial(a, cost=1):
    """Whether `a` runs on the serial build: less work than _SERIAL_BELOW (`cost` per
    element), or float64 (no parallel float64 build, as in batchnorm._serial)."""
    return a.size * cost < _SERIAL_BELOW or serial_precision(a)


def bias_act_forward(x, b, act):
    code = _code(act)
    serial = _serial(x, _EXP_COST if code in (SIGMOID, TANH) else 1)
    planes, rows, flat, _ = _SERIAL if serial else _PARALLEL
    if b is None:
        return flat(x.reshape(-1), code, _CHUNK).reshape(x.shape)
    N, C = x.shape[:2]
    L = x.size // (N * C) if N * C else 0
    x3 = np.ascontiguousarray(x).reshape(N, C, L)  # a no-op under the contract
    if L <= _ROWS_MAX_L:  # tasks: blocks of samples, or of (sample, channel) planes
        y3 = rows(x3, b, code, 1 if serial else max(1, min(N, x.size // _CHUNK)))
    else:
        y3 = planes(x3, b, code, 1 if serial else max(1, min(N * C, x.size // _CHUNK)))
    return y3.reshape(x.shape)


def act_backward(dy, y, act):
    grad = (_SERIAL if _serial(dy) else _PARALLEL)[3]
    return grad(dy.reshape(-1), y.reshape(-1), _code(act), _CHUNK).reshape(dy.shape)
