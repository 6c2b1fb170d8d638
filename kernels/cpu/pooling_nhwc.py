"""Pooling with the channels in vector lanes: (B, H, W, L) arrays, L innermost.

Why: pooled planes are small (7x7 to 28x28), and a kernel that walks one plane at a time
spends its time on per-plane bookkeeping and on rows too short to vectorize. With the
channels innermost, every kernel tap is one contiguous vector operation over L lanes,
whatever the plane size. This is the layout of a channels_last (NHWC) tensor, B = N and
L = C: these are the pooling kernels of channels_last tensors. An NCHW tensor can be
brought here by one blocked transpose, (N*C, H*W) -> (H*W, N*C), i.e. B = 1 and
L = N*C (the *_lanes functions below), but the two transposes cost more than the lanes
save on all but the smallest NCHW planes (numbers: benchmarks/DESIGN.md,
pooling_nhwc.py), so `kernels/cpu/pooling.py` keeps its per-plane kernels for NCHW
input. Results are bitwise those of the reference (tests/kernels/test_pooling_nhwc.py).

Semantics are the reference's (kernels/reference/pooling.py): max pooling reads padding
as -inf, keeps the first maximum in row-major scan order, propagates NaN (the last NaN
wins), and reports the first real element of a window whose elements are all -inf;
argmax is the flat index h*W + w into the (H, W) plane. Average pooling sums the real
elements in scan order (padding adds exact zeros, so the sums are the reference's) and
divides by the reference's divisor; its backward adds each window's share in the
reference's order of kernel offsets.

Optimizations:
* forwards: `max_window` and `avg_window`, LLVM vector IR through
  numba.extending.intrinsic, keep the running maxima (and their positions) or sums of 4
  vectors of lanes in registers over the whole window (per tap: one load, then two
  compares and two selects, or one add) and store once; the max positions are int32
  (float32's width: one comparison mask selects both), in registers and in the argmax
  array (half the bytes of int64 for the backward to read). (Plain Numba kept them in
  memory, one pass over the lane block per tap; for max through two ping-ponged
  buffers, because LLVM makes an in-place `y = v if take else y` a conditional store
  that does not vectorize: 1.3-2.7x slower, numbers in benchmarks/DESIGN.md,
  pooling_nhwc.py);
* avg backward: each window's share dy / divisor divided once (a first pass), then
  `sum_window` (vector IR) gathers, per pixel of dx and 4 vectors of lanes in
  registers, the shares of the windows covering it, found in two small per-call tables
  with no integer division, and stores each dx value once (no zeroing pass, no
  read-modify-write of dx per window);
* parallel tasks are (sample, output row, lane block) triples: balanced even when B = 1,
  and each task owns its outputs (no races, results independent of the thread count);
* max backward: `grad_window` (vector IR as well) gathers, per pixel of dx and 4
  vectors of lanes in registers, the gradients of the covering windows whose argmax is
  that pixel (compare, select, add; the covering windows' offsets from two small
  tables): each dx value written once, no zeroing pass, no scatter. Below
  GATHER_MIN_LANES lanes the per-pixel setup costs more, and the backward scatters
  through argmax into the task's own lane block of dx instead.

Debugging: NUMBA_DISABLE_JIT=1 runs these as plain Python (slow, same results), with
max_window_reference (and its twins) in place of the intrinsics;
tests/kernels/test_pooling_nhwc.py compares the two.
"""
import numba
import numpy as np
from numba import njit, prange

from minidl.kernels.cpu.builds import float32_parallel
from minidl.kernels.cpu.microkernel import host_lanes
from minidl.kernels.cpu.pooling import _avg_divisor, _output_hw

_JIT = dict(cache=True, fastmath=False)  # parallel for float32 (builds.py)
LANE_BLOCK = 512  # lanes per task: a (kh, W, 512) float32 slab of x stays in L1/L2
GATHER_MIN_LANES = 64  # max-pool backward gathers from this many lanes


@njit(cache=True)
def _n_lane_blocks(L):
    return max(1, -(-L // LANE_BLOCK))


@njit(cache=True, inline="always")
def _row_task(task, rows, L):
    """(b, row, l0, l1): the sample, output row and lane block [l0, l1) of a task, the
    tasks being numbered (b * rows + row) * n_lane_blocks + block."""
    nlb = _n_lane_blocks(L)
    b, rest = task // (rows * nlb), task % (rows * nlb)
    l0 = (rest % nlb) * LANE_BLOCK
    return b, rest // nlb, l0, min(l0 + LANE_BLOCK, L)


@float32_parallel(**_JIT)
def transpose(a, out):
    """out[q, p] = a[p, q] in 32x32 tiles: (P, Q) planes <-> (Q, P) lanes."""
    P, Q = a.shape
    nq = (Q + 31) // 32
    for t in prange(((P + 31) // 32) * nq):
        p0, q0 = (t // nq) * 32, (t % nq) * 32
        for p in range(p0, min(p0 + 32, P)):
            for q in range(q0, min(q0 + 32, Q)):
                out[q, p] = a[p, q]


# --- pooling windows as LLVM vector IR ----------------------------------------------------

@njit(inline="always")
def _max_lanes(n, x, xoff, W, L, hs, he, ws, we, y, ooff, am):
    """For the n lanes from xoff: the max over the window rows [hs, he) x columns
    [ws, we) of a (H, W, L) block of x (element (h, w, lane) at xoff + (h*W + w)*L +
    lane) in row-major scan order, where a strictly greater value or a NaN takes over,
    and its position h*W + w (hs*W + ws if nothing takes over); stored at y[ooff + lane],
    am[ooff + lane]. Plain loops: the semantics of `max_window`, and the lanes left over
    after its vectors."""
    for lane in range(n):
        best = -np.inf
        at = hs * W + ws
        for h in range(hs, he):
            for w in range(ws, we):
                v = x[xoff + (h * W + w) * L + lane]
                if (v > best) | (v != v):
                    best = v
                    at = h * W + w
        y[ooff + lane] = best
        am[ooff + lane] = at


@njit(inline="always")
def _avg_lanes(n, x, xoff, W, L, hs, he, ws, we, y, ooff, div):
    """For the n lanes from xoff: the sum over the same window, in x's dtype, from 0 in
    row-major scan order, divided by div; stored at y[ooff + lane]."""
    for lane in range(n):
        acc = x.dtype.type(0)
        for h in range(hs, he):
            for w in range(ws, we):
                acc += x[xoff + (h * W + w) * L + lane]
        y[ooff + lane] = acc / div


@njit(inline="always")
def max_window_reference(nv, x, xoff, W, L, hs, he, ws, we, y, ooff, am):
    """What `max_window` computes, in plain loops (NUMBA_DISABLE_JIT, or an llvmlite
    without vector IR): _max_lanes over nv vectors of lanes."""
    _max_lanes(nv * (_LANES32 if x.itemsize == 4 else _LANES64), x, xoff, W, L, hs, he,
               ws, we, y, ooff, am)


@njit(inline="always")
def avg_window_reference(nv, x, xoff, W, L, hs, he, ws, we, y, ooff, div):
    """What `avg_window` computes: _avg_lanes over nv vectors of lanes."""
    _avg_lanes(nv * (_LANES32 if x.itemsize == 4 else _LANES64), x, xoff, W, L, hs, he,
               ws, we, y, ooff, div)


_NV = 4  # vectors of lanes per window call (their running values stay in registers)
_LANES32, _LANES64 = host_lanes(4), host_lanes(8)  # one vector of float32 / float64


def _build_windows():
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def typed(nv, x, ints, y, extra_ok):
        return (isinstance(nv, types.IntegerLiteral)
                and isinstance(x, types.Array) and x.ndim == 1
                and x.dtype in (types.float32, types.float64)
                and isinstance(y, types.Array) and y.ndim == 1 and y.dtype == x.dtype
                and all(isinstance(v, types.Integer) for v in ints) and extra_ok)

    def codegen_for(kind):
        """The window loop of both intrinsics; `kind` says what runs per tap and at the
        end. Arguments: nv, x, xoff, W, L, hs, he, ws, we, y, ooff, extra (am or div)."""
        def codegen(context, builder, sig, args):
            i64, i32 = ir.IntType(64), ir.IntType(32)
            count = sig.args[0].literal_value
            xoff_v, W_v, L_v, hs_v, he_v, ws_v, we_v = (
                context.cast(builder, args[k], sig.args[k], types.int64) for k in range(2, 9))
            ooff_v = context.cast(builder, args[10], sig.args[10], types.int64)
            dtype = sig.args[1].dtype
            bits = 32 if dtype == types.float32 else 64
            lanes = host_lanes(bits // 8)
            fty = context.get_value_type(dtype)
            vty = ir.VectorType(fty, lanes)
            ity = ir.VectorType(i32, lanes)
            xp, yp = (context.make_array(sig.args[k])(context, builder, args[k]).data
                      for k in (1, 9))

            def vptr(ptr, idx, ty):
                return builder.bitcast(builder.gep(ptr, [idx]), ty.as_pointer())

            def splat(val, ty):
                undef = ir.Constant(ty, ir.Undefined)
                return builder.shuffle_vector(
                    builder.insert_element(undef, val, ir.Constant(i64, 0)), undef,
                    ir.Constant(ity, [0] * lanes))

            def register(value):  # an alloca that mem2reg promotes to a register
                return cgutils.alloca_once_value(builder, value)

            if kind == "max":
                first = builder.trunc(builder.add(builder.mul(hs_v, W_v), ws_v), i32)
                best = [register(ir.Constant(vty, [float("-inf")] * lanes))
                        for _ in range(count)]
                at = [register(splat(first, ity)) for _ in range(count)]
            else:
                acc = [register(ir.Constant(vty, [0.0] * lanes)) for _ in range(count)]
            with cgutils.for_range(builder, builder.sub(he_v, hs_v)) as hl:
                h = builder.add(hs_v, hl.index)
                with cgutils.for_range(builder, builder.sub(we_v, ws_v)) as wl:
                    pos = builder.add(builder.mul(h, W_v), builder.add(ws_v, wl.index))
                    base = builder.add(xoff_v, builder.mul(pos, L_v))
                    if kind == "max":
                        here = splat(builder.trunc(pos, i32), ity)
                    for v in range(count):
                        val = builder.load(vptr(xp, builder.add(base, ir.Constant(
                            i64, v * lanes)), vty), align=bits // 8)
                        if kind == "max":
                            b = builder.load(best[v])
                            take = builder.or_(builder.fcmp_ordered(">", val, b),  # first max
                                               builder.fcmp_unordered("uno", val, val))  # NaN
                            builder.store(builder.select(take, val, b), best[v])
                            builder.store(builder.select(take, here, builder.load(at[v])),
                                          at[v])
                        else:
                            builder.store(builder.fadd(builder.load(acc[v]), val), acc[v])
            if kind == "max":
                ap = context.make_array(sig.args[11])(context, builder, args[11]).data
            else:
                div = splat(context.cast(builder, args[11], sig.args[11], dtype), vty)
            for v in range(count):
                o = builder.add(ooff_v, ir.Constant(i64, v * lanes))
                if kind == "max":
                    builder.store(builder.load(best[v]), vptr(yp, o, vty), align=bits // 8)
                    builder.store(builder.load(at[v]), vptr(ap, o, ity), align=4)
                else:
                    builder.store(builder.fdiv(builder.load(acc[v]), div), vptr(yp, o, vty),
                                  align=bits // 8)
            return context.get_dummy_value()
        return codegen

    @intrinsic
    def max_window(typingctx, nv, x, xoff, W, L, hs, he, ws, we, y, ooff, am):
        """max_window_reference's semantics, with the nv (a literal, 1 or _NV) vectors of
        running maxima and their int32 positions held in registers across the window:
        per tap one vector load, two compares, two selects; stored once at the end."""
        if not typed(nv, x, (xoff, W, L, hs, he, ws, we, ooff), y,
                     isinstance(am, types.Array) and am.ndim == 1
                     and am.dtype == types.int32):
            return None
        return (types.void(nv, x, xoff, W, L, hs, he, ws, we, y, ooff, am),
                codegen_for("max"))

    @intrinsic
    def avg_window(typingctx, nv, x, xoff, W, L, hs, he, ws, we, y, ooff, div):
        """avg_window_reference's semantics, the nv vectors of sums in registers (the same
        additions in the same order: the same bits)."""
        if not typed(nv, x, (xoff, W, L, hs, he, ws, we, ooff), y,
                     isinstance(div, (types.Float, types.Integer))):
            return None
        return (types.void(nv, x, xoff, W, L, hs, he, ws, we, y, ooff, div),
                codegen_for("avg"))

    return max_window, avg_window


def _intrinsics(build, references):
    """The intrinsics `build()` returns, or their plain-loop references under
    NUMBA_DISABLE_JIT or where they cannot be built."""
    if numba.config.DISABLE_JIT:
        return references
    try:
        return build()
    except Exception:  # pragma: no cover - an llvmlite without vector IR support
        return references


max_window, avg_window = _intrinsics(_build_windows,
                                     (max_window_reference, avg_window_reference))


@njit(inline="always")
def _grad_lanes(n, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff):
    """For the n lanes from lane 0: dx[doff + lane] = the sum, from 0, of dy[o + lane] over
    the windows o = hoffs[i] + woffs[w0 + j] (i < hcnt outer, j < wcnt inner: row-major)
    whose argmax am[o + lane] is pos. Window by window over the lanes (contiguous loops
    that LLVM vectorizes: this also serves the lanes left over after whole vectors)."""
    zero = dy.dtype.type(0)
    for lane in range(n):
        dx[doff + lane] = zero
    for i in range(hcnt):
        for j in range(wcnt):
            o = hoffs[i] + woffs[w0 + j]
            for lane in range(n):
                dx[doff + lane] += dy[o + lane] if am[o + lane] == pos else zero

@njit(inline="always")
def grad_window_reference(nv, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff):
    """What `grad_window` computes: _grad_lanes over nv vectors of lanes."""
    _grad_lanes(nv * (_LANES32 if dy.itemsize == 4 else _LANES64), dy, am, hoffs, hcnt,
                woffs, w0, wcnt, pos, dx, doff)


@njit(inline="always")
def _sum_lanes(n, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff):
    """For the n lanes from lane 0: dx[doff + lane] = the sum, from 0, of g[o + lane] over
    the windows o = hoffs[i] + woffs[w0 + j] (i < hcnt outer, j < wcnt inner); window by
    window, as _grad_lanes."""
    for lane in range(n):
        dx[doff + lane] = 0
    for i in range(hcnt):
        for j in range(wcnt):
            o = hoffs[i] + woffs[w0 + j]
            for lane in range(n):
                dx[doff + lane] += g[o + lane]

@njit(inline="always")
def sum_window_reference(nv, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff):
    """What `sum_window` computes: _sum_lanes over nv vectors of lanes."""
    _sum_lanes(nv * (_LANES32 if g.itemsize == 4 else _LANES64), g, hoffs, hcnt, woffs, w0,
               wcnt, dx, doff)


def _build_gathers():
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    def codegen_for(masked):
        # argument positions: grad_window (masked) and sum_window share all but am, pos
        at = (dict(g=1, am=2, h=3, hcnt=4, w=5, w0=6, wcnt=7, pos=8, dx=9, doff=10) if masked
              else dict(g=1, h=2, hcnt=3, w=4, w0=5, wcnt=6, dx=7, doff=8))

        def codegen(context, builder, sig, args):
            i64, i32 = ir.IntType(64), ir.IntType(32)
            count = sig.args[0].literal_value
            dtype = sig.args[at["g"]].dtype
            bits = 32 if dtype == types.float32 else 64
            lanes = host_lanes(bits // 8)
            vty = ir.VectorType(context.get_value_type(dtype), lanes)
            ity = ir.VectorType(i32, lanes)

            def data(name):
                k = at[name]
                return context.make_array(sig.args[k])(context, builder, args[k]).data

            def int_arg(name, ty=types.int64):
                k = at[name]
                return context.cast(builder, args[k], sig.args[k], ty)

            gp, hp, wp, dxp = data("g"), data("h"), data("w"), data("dx")
            hcnt, w0, wcnt, doff = (int_arg(n) for n in ("hcnt", "w0", "wcnt", "doff"))

            def vptr(ptr, idx, ty):
                return builder.bitcast(builder.gep(ptr, [idx]), ty.as_pointer())

            zero = ir.Constant(vty, [0.0] * lanes)
            if masked:
                amp = data("am")
                undef = ir.Constant(ity, ir.Undefined)
                here = builder.shuffle_vector(
                    builder.insert_element(undef, int_arg("pos", types.int32),
                                           ir.Constant(i64, 0)),
                    undef, ir.Constant(ity, [0] * lanes))
            acc = [cgutils.alloca_once_value(builder, zero) for _ in range(count)]
            with cgutils.for_range(builder, hcnt) as hl, \
                    cgutils.for_range(builder, wcnt) as wl:
                o = builder.add(builder.load(builder.gep(hp, [hl.index])),
                                builder.load(builder.gep(wp, [builder.add(w0, wl.index)])))
                for v in range(count):
                    ov = builder.add(o, ir.Constant(i64, v * lanes))
                    g = builder.load(vptr(gp, ov, vty), align=bits // 8)
                    if masked:
                        take = builder.icmp_signed("==", builder.load(vptr(amp, ov, ity),
                                                                      align=4), here)
                        g = builder.select(take, g, zero)
                    builder.store(builder.fadd(builder.load(acc[v]), g), acc[v])
            for v in range(count):
                builder.store(builder.load(acc[v]),
                              vptr(dxp, builder.add(doff, ir.Constant(i64, v * lanes)), vty),
                              align=bits // 8)
            return context.get_dummy_value()
        return codegen

    def float_vector(a):
        return (isinstance(a, types.Array) and a.ndim == 1
                and a.dtype in (types.float32, types.float64))

    def tables_ok(hoffs, woffs, ints):
        return (all(isinstance(t, types.Array) and t.ndim == 1 and t.dtype == types.int64
                    for t in (hoffs, woffs))
                and all(isinstance(v, types.Integer) for v in ints))

    @intrinsic
    def grad_window(typingctx, nv, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff):
        """grad_window_reference's semantics, the nv vectors of sums in registers: per
        covering window one load of argmax and of dy, a compare, a select and an add per
        vector (the scatter's additions in its order: the same bits)."""
        if not (isinstance(nv, types.IntegerLiteral) and float_vector(dy)
                and isinstance(am, types.Array) and am.ndim == 1 and am.dtype == types.int32
                and float_vector(dx) and dx.dtype == dy.dtype
                and tables_ok(hoffs, woffs, (hcnt, w0, wcnt, pos, doff))):
            return None
        return (types.void(nv, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff),
                codegen_for(True))

    @intrinsic
    def sum_window(typingctx, nv, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff):
        """sum_window_reference's semantics, the nv vectors of sums in registers: per
        covering window one load and one add per vector, in the tables' order."""
        if not (isinstance(nv, types.IntegerLiteral) and float_vector(g)
                and float_vector(dx) and dx.dtype == g.dtype
                and tables_ok(hoffs, woffs, (hcnt, w0, wcnt, doff))):
            return None
        return types.void(nv, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff), codegen_for(False)

    return grad_window, sum_window


grad_window, sum_window = _intrinsics(_build_gathers,
                                      (grad_window_reference, sum_window_reference))


@float32_parallel(**_JIT)
def max_pool_fwd(x, kh, kw, sh, sw, ph, pw, y, argmax):
    """x (B, H, W, L) -> y, argmax (B, Ho, Wo, L). Each output pixel's lanes go through
    max_window in blocks of _NV vectors, then single vectors, then _max_lanes."""
    B, H, W, L = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    one = _LANES32 if x.itemsize == 4 else _LANES64
    big = _NV * one
    xf, yf, af = x.reshape(-1), y.reshape(-1), argmax.reshape(-1)
    for task in prange(B * Ho * _n_lane_blocks(L)):
        b, oh, l0, l1 = _row_task(task, Ho, L)
        l_big = l0 + (l1 - l0) // big * big
        l_one = l_big + (l1 - l_big) // one * one
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        xb = b * H * W * L
        for ow in range(Wo):
            w0 = ow * sw - pw
            ws, we = max(w0, 0), min(w0 + kw, W)
            ob = ((b * Ho + oh) * Wo + ow) * L
            for lane in range(l0, l_big, big):
                max_window(_NV, xf, xb + lane, W, L, hs, he, ws, we, yf, ob + lane, af)
            for lane in range(l_big, l_one, one):
                max_window(1, xf, xb + lane, W, L, hs, he, ws, we, yf, ob + lane, af)
            _max_lanes(l1 - l_one, xf, xb + l_one, W, L, hs, he, ws, we, yf, ob + l_one, af)


@float32_parallel(**_JIT)
def max_pool_bwd(dy, argmax, dx):
    """dy, argmax (B, Ho, Wo, L) -> dx (B, H*W, L) (zeroed here)."""
    B, Ho, Wo, L = dy.shape
    nlb = _n_lane_blocks(L)
    for task in prange(B * nlb):
        b, l0 = task // nlb, (task % nlb) * LANE_BLOCK
        l1 = min(l0 + LANE_BLOCK, L)
        d = dx[b, :, l0:l1]
        for q in range(d.shape[0]):
            dq = d[q]
            for lane in range(l1 - l0):
                dq[lane] = 0
        for oh in range(Ho):
            for ow in range(Wo):
                g, a = dy[b, oh, ow, l0:l1], argmax[b, oh, ow, l0:l1]
                for lane in range(l1 - l0):
                    d[a[lane], lane] += g[lane]  # overlapping windows accumulate


@njit(cache=True)
def _covering(size, k, s, p, n_out):
    """For each input index x < size along one axis, the outputs o whose window covers
    it (o*s - p + i == x for a kernel offset i < k), listed in increasing i: cnt[x] of
    them, in who[x, :cnt[x]]. Built once per call, so the backward's inner loops do no
    integer division (a `%` and a `//` per kernel offset and pixel were most of its
    time)."""
    cnt = np.zeros(size, np.int64)
    who = np.empty((size, k), np.int64)
    for x in range(size):
        for i in range(k):
            a = x + p - i
            if a >= 0 and a % s == 0 and a // s < n_out:
                who[x, cnt[x]] = a // s
                cnt[x] += 1
    return cnt, who


@float32_parallel(**_JIT)
def max_pool_bwd_gather(dy, argmax, kh, kw, sh, sw, ph, pw, dx):
    """dy, argmax (B, Ho, Wo, L) -> dx (B, H, W, L) by gathering: each pixel of dx sums,
    lane by lane, the gradients of the windows that cover it and whose argmax is the
    pixel, in the scatter's order (windows row-major) and from 0: the scatter's bits.
    Each dx value is written once, by grad_window (registers), with no zeroing pass."""
    B, Ho, Wo, L = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    one = _LANES32 if dy.itemsize == 4 else _LANES64
    big = _NV * one
    hcnt, hwho = _covering(H, kh, sh, ph, Ho)
    wcnt, wwho = _covering(W, kw, sw, pw, Wo)
    # offsets of the covering windows' lanes in dy: ow*L per column (in increasing ow;
    # _covering lists them last first), (b*Ho + oh)*Wo*L per row, built per task
    woffs = np.empty(W * kw, dtype=np.int64)
    for w in range(W):
        for j in range(wcnt[w]):
            woffs[w * kw + j] = wwho[w, wcnt[w] - 1 - j] * L
    dyf, af, dxf = dy.reshape(-1), argmax.reshape(-1), dx.reshape(-1)
    for task in prange(B * H * _n_lane_blocks(L)):
        b, h, l0, l1 = _row_task(task, H, L)
        l_big = l0 + (l1 - l0) // big * big
        hoffs = np.empty(kh, dtype=np.int64)
        for i in range(hcnt[h]):
            hoffs[i] = (b * Ho + hwho[h, hcnt[h] - 1 - i]) * Wo * L
        for w in range(W):
            pos = np.int32(h * W + w)
            dbase = ((b * H + h) * W + w) * L
            for lane in range(l0, l_big, big):
                grad_window(_NV, dyf[lane:], af[lane:], hoffs, hcnt[h], woffs, w * kw,
                            wcnt[w], pos, dxf, dbase + lane)
            if l1 - l0 >= one:  # single vectors, the last one ending at l1 (see avg)
                for k in range(l_big, l1, one):
                    lane = min(k, l1 - one)
                    grad_window(1, dyf[lane:], af[lane:], hoffs, hcnt[h], woffs, w * kw,
                                wcnt[w], pos, dxf, dbase + lane)
            else:
                _grad_lanes(l1 - l0, dyf[l0:], af[l0:], hoffs, hcnt[h], woffs, w * kw,
                            wcnt[w], pos, dxf, dbase + l0)


@float32_parallel(**_JIT)
def avg_pool_fwd(x, kh, kw, sh, sw, ph, pw, count_include_pad, y):
    """x (B, H, W, L) -> y (B, Ho, Wo, L): each output pixel's lanes through avg_window
    in blocks of _NV vectors, then single vectors, then _avg_lanes."""
    B, H, W, L = x.shape
    Ho, Wo = y.shape[1], y.shape[2]
    one = _LANES32 if x.itemsize == 4 else _LANES64
    big = _NV * one
    xf, yf = x.reshape(-1), y.reshape(-1)
    for task in prange(B * Ho * _n_lane_blocks(L)):
        b, oh, l0, l1 = _row_task(task, Ho, L)
        l_big = l0 + (l1 - l0) // big * big
        l_one = l_big + (l1 - l_big) // one * one
        h0 = oh * sh - ph
        hs, he = max(h0, 0), min(h0 + kh, H)
        dh = _avg_divisor(h0, kh, H, ph, count_include_pad)
        xb = b * H * W * L
        for ow in range(Wo):
            w0 = ow * sw - pw
            ws, we = max(w0, 0), min(w0 + kw, W)
            div = x.dtype.type(dh * _avg_divisor(w0, kw, W, pw, count_include_pad))
            ob = ((b * Ho + oh) * Wo + ow) * L
            for lane in range(l0, l_big, big):
                avg_window(_NV, xf, xb + lane, W, L, hs, he, ws, we, yf, ob + lane, div)
            for lane in range(l_big, l_one, one):
                avg_window(1, xf, xb + lane, W, L, hs, he, ws, we, yf, ob + lane, div)
            _avg_lanes(l1 - l_one, xf, xb + l_one, W, L, hs, he, ws, we, yf, ob + l_one, div)


@float32_parallel(**_JIT)
def avg_pool_bwd(dy, kh, kw, sh, sw, ph, pw, count_include_pad, dx):
    """dx[b, h, w] = sum of the shares dy/divisor of the windows covering (h, w), added
    from 0 in the reference's order (kernel offset (i, j) row-major). The shares are
    divided once per window, in a first pass, not once per covered pixel (kh*kw
    divisions per window with a 3x3 kernel); the same divisions, so the same bits. Then
    a gather: `sum_window` adds, per pixel of dx and 4 vectors of lanes in registers,
    the shares of the covering windows (offsets from two small tables, as in
    max_pool_bwd_gather) and stores each dx value once."""
    B, Ho, Wo, L = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    share = np.empty_like(dy)
    for t in prange(B * Ho):
        b, oh = t // Ho, t % Ho
        dh = _avg_divisor(oh * sh - ph, kh, H, ph, count_include_pad)
        for ow in range(Wo):
            div = dx.dtype.type(dh * _avg_divisor(ow * sw - pw, kw, W, pw,
                                                  count_include_pad))
            g, q = dy[b, oh, ow], share[b, oh, ow]
            for lane in range(L):
                q[lane] = g[lane] / div
    one = _LANES32 if dy.itemsize == 4 else _LANES64
    big = _NV * one
    hcnt, hwho = _covering(H, kh, sh, ph, Ho)  # windows covering row h, by offset i
    wcnt, wwho = _covering(W, kw, sw, pw, Wo)  # ... column w, by offset j
    woffs = np.empty(W * kw, dtype=np.int64)  # their lanes' offsets in share, per column
    for w in range(W):
        for j in range(wcnt[w]):
            woffs[w * kw + j] = wwho[w, j] * L
    sf, dxf = share.reshape(-1), dx.reshape(-1)
    for task in prange(B * H * _n_lane_blocks(L)):
        b, h, l0, l1 = _row_task(task, H, L)
        l_big = l0 + (l1 - l0) // big * big
        hoffs = np.empty(kh, dtype=np.int64)  # ... per row, of this task's sample
        for i in range(hcnt[h]):
            hoffs[i] = (b * Ho + hwho[h, i]) * Wo * L
        for w in range(W):
            dbase = ((b * H + h) * W + w) * L
            for lane in range(l0, l_big, big):
                sum_window(_NV, sf[lane:], hoffs, hcnt[h], woffs, w * kw, wcnt[w], dxf,
                           dbase + lane)
            if l1 - l0 >= one:
                # single vectors; the last one ends at l1, recomputing a few lanes of the
                # one before with the same bits where the lanes do not divide into vectors
                for k in range(l_big, l1, one):
                    lane = min(k, l1 - one)
                    sum_window(1, sf[lane:], hoffs, hcnt[h], woffs, w * kw, wcnt[w], dxf,
                               dbase + lane)
            else:  # fewer lanes than a vector
                _sum_lanes(l1 - l0, sf[l0:], hoffs, hcnt[h], woffs, w * kw, wcnt[w], dxf,
                           dbase + l0)


@float32_parallel(**_JIT)
def avg_pool_bwd_disjoint(dy, kh, kw, sh, sw, ph, pw, count_include_pad, dx):
    """avg_pool_bwd for windows that do not overlap (kh <= sh, kw <= sw): a pixel lies in
    at most one window, so it takes 0 + that window's dy / divisor directly, in one
    parallel pass; no share array written in a first pass (and read back), one parallel
    region instead of two. The same division and the same 0 + share, so the same bits.
    (One kernel for both, branching per pixel on the
    kind of pool, measured 0.62-0.83x on 2x2 pools, so they stay two.)"""
    B, Ho, Wo, L = dy.shape
    H, W = dx.shape[1], dx.shape[2]
    zero = dy.dtype.type(0)
    hcnt, hwho = _covering(H, kh, sh, ph, Ho)
    wcnt, wwho = _covering(W, kw, sw, pw, Wo)
    for task in prange(B * H * _n_lane_blocks(L)):
        b, h, l0, l1 = _row_task(task, H, L)
        for w in range(W):
            dr = dx[b, h, w, l0:l1]
            if hcnt[h] == 0 or wcnt[w] == 0:  # in no window (stride > kernel)
                for lane in range(l1 - l0):
                    dr[lane] = zero
                continue
            oh, ow = hwho[h, 0], wwho[w, 0]
            div = dx.dtype.type(_avg_divisor(oh * sh - ph, kh, H, ph, count_include_pad)
                                * _avg_divisor(ow * sw - pw, kw, W, pw, count_include_pad))
            g = dy[b, oh, ow, l0:l1]
            for lane in range(l1 - l0):
                dr[lane] = zero + g[lane] / div


def _avg_backward(dy, kernel_size, stride, padding, count_include_pad, dx):
    """avg_pool_bwd, or its one-pass form where the windows are disjoint."""
    kh, kw = kernel_size
    sh, sw = stride
    kernel = avg_pool_bwd_disjoint if kh <= sh and kw <= sw else avg_pool_bwd
    kernel(dy, kh, kw, sh, sw, padding[0], padding[1], bool(count_include_pad), dx)


# ------------------------------------------------------------- NCHW through the lanes

def nchw_to_lanes(x):
    """(N, C, H, W) -> (1, H, W, N*C) C-contiguous."""
    N, C, H, W = x.shape
    out = np.empty((H * W, N * C), dtype=x.dtype)
    transpose(np.ascontiguousarray(x).reshape(N * C, H * W), out)
    return out.reshape(1, H, W, N * C)


def lanes_to_nchw(a, N, C):
    """(1, H, W, N*C) -> (N, C, H, W) C-contiguous."""
    H, W = a.shape[1], a.shape[2]
    out = np.empty((N * C, H * W), dtype=a.dtype)
    transpose(a.reshape(H * W, N * C), out)
    return out.reshape(N, C, H, W)


def max_pool2d_forward_lanes(x, kernel_size, stride, padding, Ho, Wo):
    """NCHW in and out; argmax is returned as an (N, C, Ho, Wo) view of its lanes array
    (the backward below takes it back without a copy)."""
    N, C = x.shape[:2]
    xl = nchw_to_lanes(x)
    y = np.empty((1, Ho, Wo, N * C), dtype=x.dtype)
    argmax = np.empty((1, Ho, Wo, N * C), dtype=np.int32)
    max_pool_fwd(xl, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], y, argmax)
    return lanes_to_nchw(y, N, C), argmax.reshape(Ho, Wo, N, C).transpose(2, 3, 0, 1)


def is_lanes_view(argmax) -> bool:
    """True for the argmax view that max_pool2d_forward_lanes returns."""
    return argmax.ndim == 4 and argmax.transpose(2, 3, 0, 1).flags.c_contiguous \
        and not argmax.flags.c_contiguous


def _max_backward(dy, argmax, kernel_size, stride, padding, dx):
    """dx (B, H, W, L) from dy, argmax (B, Ho, Wo, L): a gather where a pixel has at least
    GATHER_MIN_LANES lanes, else the scatter (with fewer lanes the gather's per-pixel
    setup costs more than the scatter's dependent adds; benchmarks/DESIGN.md,
    pooling_nhwc.py)."""
    B, H, W, L = dx.shape
    if L >= GATHER_MIN_LANES:
        max_pool_bwd_gather(dy, argmax, *kernel_size, *stride, *padding, dx)
    else:
        max_pool_bwd(dy, argmax, dx.reshape(B, H * W, L))
    return dx


def max_pool2d_backward_lanes(dy, argmax, x_shape, kernel_size, stride, padding):
    N, C, H, W = x_shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    am = argmax.transpose(2, 3, 0, 1).reshape(1, Ho, Wo, N * C)
    dx = np.empty((1, H, W, N * C), dtype=dy.dtype)
    return lanes_to_nchw(_max_backward(nchw_to_lanes(dy), am, kernel_size, stride, padding,
                                       dx), N, C)


def avg_pool2d_forward_lanes(x, kernel_size, stride, padding, count_include_pad, Ho, Wo):
    N, C = x.shape[:2]
    y = np.empty((1, Ho, Wo, N * C), dtype=x.dtype)
    avg_pool_fwd(nchw_to_lanes(x), kernel_size[0], kernel_size[1], stride[0], stride[1],
                 padding[0], padding[1], bool(count_include_pad), y)
    return lanes_to_nchw(y, N, C)


def avg_pool2d_backward_lanes(dy, x_shape, kernel_size, stride, padding, count_include_pad):
    N, C, H, W = x_shape
    dx = np.empty((1, H, W, N * C), dtype=dy.dtype)
    _avg_backward(nchw_to_lanes(dy), kernel_size, stride, padding, count_include_pad, dx)
    return lanes_to_nchw(dx, N, C)


# ------------------------------------------------ channels_last entry points (N, H, W, C)

def max_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode):
    """x (N, H, W, C) -> y, argmax (N, Ho, Wo, C); argmax holds flat h*W + w as int32:
    half the bytes of int64 for the forward to write and the backward to read (a plane
    of 2**31 pixels is beyond any input; see benchmarks/DESIGN.md, pooling_nhwc.py)."""
    N, H, W, C = x.shape
    Ho, Wo = _output_hw((N, C, H, W), kernel_size, stride, padding, ceil_mode)
    y = np.empty((N, Ho, Wo, C), dtype=x.dtype)
    argmax = np.empty((N, Ho, Wo, C), dtype=np.int32)
    max_pool_fwd(x, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], y, argmax)
    return y, argmax


def max_pool2d_backward_nhwc(dy, argmax, x_shape, kernel_size, stride, padding):
    """dy, argmax (N, Ho, Wo, C) -> dx (N, H, W, C) = x_shape; argmax as int32 (a copy
    only if it is not), gathered or scattered by channel count (see _max_backward)."""
    dx = np.empty(x_shape, dtype=dy.dtype)
    return _max_backward(np.ascontiguousarray(dy), np.ascontiguousarray(argmax, np.int32),
                         kernel_size, stride, padding, dx)


def avg_pool2d_forward_nhwc(x, kernel_size, stride, padding, ceil_mode, count_include_pad):
    N, H, W, C = x.shape
    Ho, Wo = _output_hw((N, C, H, W), kernel_size, stride, padding, ceil_mode)
    y = np.empty((N, Ho, Wo, C), dtype=x.dtype)
    avg_pool_fwd(x, kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0],
                 padding[1], bool(count_include_pad), y)
    return y


def avg_pool2d_backward_nhwc(dy, x_shape, kernel_size, stride, padding, ceil_mode,
                             count_include_pad):
    dx = np.empty(x_shape, dtype=dy.dtype)
    _avg_backward(dy, kernel_size, stride, padding, count_include_pad, dx)
    return dx


def global_avg_pool2d_forward_nhwc(x):
    """x (N, H, W, C) -> (N, C), summed in float64 like the NCHW kernel."""
    N, H, W, C = x.shape
    s = x.reshape(N, H * W, C).sum(axis=1, dtype=np.float64)
    return (s / (H * W)).astype(x.dtype)


def global_avg_pool2d_backward_nhwc(dy, x_shape):
    N, H, W, C = x_shape
    g = dy / dy.dtype.type(H * W)
    return np.ascontiguousarray(np.broadcast_to(g[:, None, None, :], x_shape))
