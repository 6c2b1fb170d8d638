"""The register-blocked outer-product micro-kernel of the channels-last convolutions
(kernels/cpu/conv2d_nhwc.py), emitted as LLVM vector IR.

What it computes. `tile(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride,
b_tstride, out, orows, o0, ooff, init, ioff)`, on flat (1-D, C-contiguous) arrays A, B, out, init
of one float dtype and int64 tables rows, toff, orows, computes an MR x NR tile whose
row i lives at out[orows[o0 + i] + ooff : ... + NR]:

    for i < MR, j < NR:
        acc = init[ioff + j] if init.size > 0 else out[orows[o0 + i] + ooff + j]
        acc += sum over t < T, c < Cn (t outer, c inner, in that order) of
            A[rows[r0 + i] + toff[t0 + t] + c*a_cs] * B[b0 + t*b_tstride + c*b_stride + j]
        out[orows[o0 + i] + ooff + j] = acc

so a tile either starts from a bias row (init) and overwrites its output rows, or adds
to them (init empty: a running sum). Rows of the tile that a caller does not want
written point at a scratch row (orows is a table, so that is free); two rows may share
a scratch row (each reads it before any writes it back).

Row i of the tile reads A at its own base offset rows[r0 + i] (an output pixel of a
convolution, or a (tap, channel) pair for the weight gradient); the contraction runs
over T table-given offsets (the kernel taps, or the pixels) times Cn strided steps (the
channels); B supplies NR contiguous values per step (NR output channels in vector
lanes), b_stride apart within a table entry's Cn steps and b_tstride apart from one
entry to the next (Cn*b_stride where B's rows follow each other; more where a caller
skips some, as the weight gradient's border-trimmed pixel runs do). The caller must
make every index above valid: B has NR readable values past each step's start (pad its
channels to a multiple of NR), out has NR values from each row's start, and
rows/toff/orows hold at least r0 + MR, t0 + T, o0 + MR entries.

    forward (NHWC, weights packed [K/NR][R*S][C][NR]):
        A = padded input, rows = pixel bases, toff = tap offsets, Cn = C, a_cs = 1,
        B = one weight panel, b_stride = NR, b_tstride = C*NR
    backward-weight (dW[tap, c][k] = sum over pixels x[pixel + tap, c] * dy[pixel, k]):
        A = padded input, rows = (tap, channel) offsets, toff = pixel bases, Cn = 1,
        B = dy as (pixels, Kp) rows (K padded to a multiple of NR), b_stride = Kp,
        b_tstride = a segment's pixels apart times Kp

`fma_chains(n, out)` is the same register blocking with nothing but FMAs in the loop:
the chip's FMA peak, which benchmarks/harness.py reports as the compute limit.

Blocking (chosen at import from the host's vector width, see `host_lanes`): NV = 2
vectors of `lanes` values per tile row, NR = NV*lanes output channels, MR rows:

    AVX2 (8 float32 / 4 float64 lanes, 16 ymm registers): MR = 6, NR = 16 (float32)
        or 8 (float64): 12 accumulators + 2 weight vectors + 1 broadcast = 15 registers
    AVX-512 (16 / 8 lanes, 32 zmm registers): MR = 12, NR = 32 (float32) or 16:
        24 accumulators + 2 + 1 = 27 registers
    unknown CPUs: the AVX2 blocking (LLVM splits wider vectors; correct everywhere)

`tile_half` is the same kernel on vectors of half the width (NR/2 columns, the same MR):
for GEMMs with at most NR/2 output channels, where `tile` would compute zeros in half its
lanes (conv2d_nhwc.half_tail decides, for the last panel of a GEMM).

Optimizations:
  * outer products, not dot products: per contraction step NV vector loads of B and MR
    scalar loads of A broadcast to vectors feed MR*NV FMAs; no horizontal sums;
  * the MR*NV accumulators stay in registers across the whole contraction: they are
    allocas created once (cgutils.alloca_once_value) and loaded/stored inside the
    cgutils.for_range loops, which LLVM's mem2reg promotes to SSA registers;
  * vector FMAs through `llvm.fma.v<lanes>f<bits>`, declared by name in the module
    (llvmlite's builder.fma rejects vectors; Numba's SLP vectorizer is off, so plain
    Numba code would not produce these);
  * the row bases are loaded once per tile, the tap offset once per tap; the inner loop
    over c is a pointer walk with constant strides, kept rolled (`llvm.loop.unroll.disable`,
    see _counted_loop): unrolled by 2, its remainder copy spilled broadcasts to the stack;
  * the epilogue is vector loads and stores straight from/to the output rows (NHWC
    pixel rows, or rows of a partial weight gradient), through the orows table; edges
    (a block overlapping the previous one, K not a multiple of NR, NCHW output) are
    left to the caller, who points the rows at a scratch buffer and copies what it
    owns: the kernel itself has no edge code.

Check the code with `inspect_asm`: the inner loop should hold the accumulators in
vector registers (ymm/zmm) with no stack (rsp) traffic (tests/kernels/test_conv2d_nhwc.py
looks for the vfmadd instructions).

Debugging: with NUMBA_DISABLE_JIT=1 (or if the intrinsic cannot be built: no llvmlite
IR support for the vector types), `tile` is `tile_reference`, a plain-loop version with
the same semantics (separate multiply and add instead of a fused multiply-add, so the
results differ in the last bits), and every caller runs as Python, steppable in a
debugger. `tile_reference` is also what the tests compare the intrinsic with.

Cache key: Numba's on-disk cache of a caller is keyed on the caller's own source file,
so an edit here would leave a stale compiled caller running the old IR. `versioned()`
adds IR_VERSION and a hash of this file to the cache stamp of a caller; bump IR_VERSION
when the IR generator changes in a way the file hash would not capture.
"""
import contextlib
import hashlib
import os

import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, types

IR_VERSION = 4  # part of every caller's cache key (see versioned)


# --- blocking --------------------------------------------------------------------------

def host_lanes(itemsize=4):
    """Vector lanes of the host for elements of `itemsize` bytes: 64-byte vectors where
    the CPU has AVX-512F, 32-byte vectors otherwise (AVX2, and unknown CPUs)."""
    try:
        wide = bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # no feature query on this platform: the safe default
        wide = False
    return (64 if wide else 32) // itemsize


def blocking(dtype):
    """(MR, NR) of the tile for dtype on this host (see the module docstring)."""
    lanes = host_lanes(np.dtype(dtype).itemsize)
    nv = 2
    mr = 12 if lanes * np.dtype(dtype).itemsize == 64 else 6
    return mr, nv * lanes


MR32, NR32 = blocking(np.float32)
MR64, NR64 = blocking(np.float64)


# --- the reference semantics (also the NUMBA_DISABLE_JIT / no-intrinsic fallback) -------

@njit(inline="always")
def _reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
               o0, ooff, init, ioff, mr, nr):
    acc = np.empty(mr * nr, dtype=out.dtype)  # all rows read before any is written
    for i in range(mr):
        for j in range(nr):
            s = init[ioff + j] if init.size > 0 else out[orows[o0 + i] + ooff + j]
            for t in range(T):
                base = rows[r0 + i] + toff[t0 + t]
                for c in range(Cn):
                    s += A[base + c * a_cs] * B[b0 + t * b_tstride + c * b_stride + j]
            acc[i * nr + j] = s
    for i in range(mr):
        for j in range(nr):
            out[orows[o0 + i] + ooff + j] = acc[i * nr + j]


@njit(inline="always")
def tile_reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out,
                   orows, o0, ooff, init, ioff):
    """Plain loops with the semantics of `tile` (see the module docstring); MR and NR
    follow from the dtype, as for the intrinsic."""
    if A.itemsize == 4:
        _reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                   o0, ooff, init, ioff, MR32, NR32)
    else:
        _reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                   o0, ooff, init, ioff, MR64, NR64)


@njit(inline="always")
def tile_half_reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride,
                        out, orows, o0, ooff, init, ioff):
    """Plain loops with the semantics of `tile_half`: NR/2 columns."""
    if A.itemsize == 4:
        _reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                   o0, ooff, init, ioff, MR32, NR32 // 2)
    else:
        _reference(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                   o0, ooff, init, ioff, MR64, NR64 // 2)


# --- the intrinsic -----------------------------------------------------------------------

UNROLL_CHANNEL_LOOP = False  # see _counted_loop


def _build_intrinsic():
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    @contextlib.contextmanager
    def _counted_loop(builder, count):
        """for index in range(count), with the back edge marked `llvm.loop.unroll.disable`
        (unless UNROLL_CHANNEL_LOOP). LLVM would unroll the channel loop by 2 and add a
        remainder copy for odd counts, which on AVX-512 (24 accumulators) hoists all MR
        broadcasts and spills them to the stack; a 24-FMA body gains nothing from the
        unrolling, while runs of 1, 3 or 9 values (first layers, backward-weight) take
        that remainder once in every two or three steps."""
        ity = count.type
        before = builder.block
        cond = builder.append_basic_block("loop.cond")
        body = builder.append_basic_block("loop.body")
        end = builder.append_basic_block("loop.end")
        builder.branch(cond)
        builder.position_at_end(cond)
        index = builder.phi(ity)
        index.add_incoming(ir.Constant(ity, 0), before)
        builder.cbranch(builder.icmp_signed("<", index, count), body, end)
        builder.position_at_end(body)
        yield index
        index.add_incoming(builder.add(index, ir.Constant(ity, 1)), builder.block)
        back = builder.branch(cond)
        if not UNROLL_CHANNEL_LOOP:
            module = builder.module
            off = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
            loop_id = module.add_metadata([off])
            if loop_id.operands[0] is not loop_id:  # a loop ID refers to itself
                loop_id.operands = (loop_id,) + tuple(loop_id.operands)
            back.set_metadata("llvm.loop", loop_id)
        builder.position_at_end(end)

    def _shape(bits, half=False):
        mr, nr = (MR32, NR32) if bits == 32 else (MR64, NR64)
        if half:  # half-width vectors: NR/2 columns
            nr //= 2
        return mr, nr, 2, nr // 2  # MR, NR, NV, lanes

    def make_tile(half):
        """The tile intrinsic, full width (NR columns) or half width (NR/2: output
        channels that fit one half, where full-width lanes would idle)."""
        def tile(typingctx, A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride,
                 out, orows, o0, ooff, init, ioff):
            floats = (A, B, out, init)
            tables = (rows, toff, orows)
            ints = (r0, t0, T, Cn, a_cs, b0, b_stride, b_tstride, o0, ooff, ioff)
            if not (all(isinstance(a, types.Array) and a.ndim == 1 for a in floats + tables)
                    and A.dtype in (types.float32, types.float64)
                    and all(a.dtype == A.dtype for a in floats)
                    and all(a.dtype == types.int64 for a in tables)
                    and all(isinstance(v, types.Integer) for v in ints)):
                return None
            sig = types.void(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride,
                             out, orows, o0, ooff, init, ioff)

            def codegen(context, builder, sig, args):
                at = dict(zip(("A", "rows", "r0", "toff", "t0", "T", "Cn", "a_cs", "B", "b0",
                               "b_stride", "b_tstride", "out", "orows", "o0", "ooff", "init",
                               "ioff"),
                              zip(args, sig.args)))
                i64 = ir.IntType(64)

                def integer(name):
                    val, ty = at[name]
                    return context.cast(builder, val, ty, types.int64)

                def array(name):
                    val, ty = at[name]
                    return context.make_array(ty)(context, builder, val)

                r0_v, t0_v, T_v, Cn_v, acs_v, b0_v, bst_v, btst_v, o0_v, ooff_v, ioff_v = (
                    integer(n) for n in ("r0", "t0", "T", "Cn", "a_cs", "b0", "b_stride",
                                         "b_tstride", "o0", "ooff", "ioff"))
                dtype = sig.args[0].dtype
                fty = context.get_value_type(dtype)
                bits = 32 if dtype == types.float32 else 64
                mr, nr, nv, lanes = _shape(bits, half)
                vty = ir.VectorType(fty, lanes)
                fma = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                    f"llvm.fma.v{lanes}f{bits}")
                align = bits // 8
                a_ptr, b_ptr, out_ptr = (array(n).data for n in ("A", "B", "out"))
                rows_ptr, toff_ptr, orows_ptr = (array(n).data for n in ("rows", "toff", "orows"))
                init_arr = array("init")

                def vptr(ptr, idx):
                    return builder.bitcast(builder.gep(ptr, [idx]), vty.as_pointer())

                def entry(ptr, first, i):
                    return builder.load(builder.gep(ptr, [builder.add(first, ir.Constant(i64, i))]))

                def lane(base, v):
                    return builder.add(base, ir.Constant(i64, v * lanes))

                # Where each tile row lives in out, and where it starts from.
                out_rows = [builder.add(entry(orows_ptr, o0_v, i), ooff_v) for i in range(mr)]
                from_init = builder.icmp_signed(">", init_arr.nitems, ir.Constant(i64, 0))
                init_ptr = builder.gep(init_arr.data, [ioff_v])
                # Accumulators: allocas promoted to registers (see the module docstring).
                accs = []
                for i in range(mr):
                    for v in range(nv):
                        src = builder.select(from_init, vptr(init_ptr, ir.Constant(i64, v * lanes)),
                                             vptr(out_ptr, lane(out_rows[i], v)))
                        accs.append(cgutils.alloca_once_value(
                            builder, builder.load(src, align=align)))
                bases = [entry(rows_ptr, r0_v, i) for i in range(mr)]
                zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
                undef = ir.Constant(vty, ir.Undefined)
                with cgutils.for_range(builder, T_v) as tloop:
                    t = tloop.index
                    off = builder.load(builder.gep(toff_ptr, [builder.add(t0_v, t)]))
                    # B index of step (t, 0): b0 + t*b_tstride
                    bt = builder.add(b0_v, builder.mul(t, btst_v))
                    a_t = [builder.add(base, off) for base in bases]
                    with _counted_loop(builder, Cn_v) as c:
                        bidx = builder.add(bt, builder.mul(c, bst_v))
                        ws = [builder.load(vptr(b_ptr, lane(bidx, v)), align=align)
                              for v in range(nv)]
                        ac = builder.mul(c, acs_v)
                        for i in range(mr):
                            a = builder.load(builder.gep(a_ptr, [builder.add(a_t[i], ac)]))
                            a = builder.shuffle_vector(
                                builder.insert_element(undef, a, ir.Constant(i64, 0)),
                                undef, zero_mask)
                            for v in range(nv):
                                slot = accs[i * nv + v]
                                builder.store(builder.call(
                                    fma, [a, ws[v], builder.load(slot)]), slot)
                for i in range(mr):
                    for v in range(nv):
                        builder.store(builder.load(accs[i * nv + v]),
                                      vptr(out_ptr, lane(out_rows[i], v)), align=align)
                return context.get_dummy_value()

            return sig, codegen

        tile.__name__ = tile.__qualname__ = "tile_half" if half else "tile"
        return intrinsic(tile)

    tile, tile_half = make_tile(False), make_tile(True)

    @intrinsic
    def fma_chains(typingctx, n, out):
        """out[:MR*NR] = the MR*NV independent vector FMA chains of a tile, each run n
        steps (acc = acc*x + y): the chip's FMA throughput with nothing else in the loop
        (no loads), the compute limit the benchmarks judge the kernels against."""
        if not (isinstance(n, types.Integer) and isinstance(out, types.Array)
                and out.dtype in (types.float32, types.float64)):
            return None
        sig = types.void(n, out)

        def codegen(context, builder, sig, args):
            n_v = context.cast(builder, args[0], sig.args[0], types.int64)
            fty = context.get_value_type(sig.args[1].dtype)
            bits = 32 if sig.args[1].dtype == types.float32 else 64
            mr, nr, nv, lanes = _shape(bits)
            vty = ir.VectorType(fty, lanes)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                f"llvm.fma.v{lanes}f{bits}")
            ptr = context.make_array(sig.args[1])(context, builder, args[1]).data
            i64 = ir.IntType(64)

            def vptr(k):
                return builder.bitcast(builder.gep(ptr, [ir.Constant(i64, k * lanes)]),
                                       vty.as_pointer())

            x = builder.load(vptr(0), align=bits // 8)
            y = builder.load(vptr(1), align=bits // 8)
            accs = [cgutils.alloca_once_value(builder, builder.load(vptr(k), align=bits // 8))
                    for k in range(mr * nv)]
            with cgutils.for_range(builder, n_v):
                for slot in accs:
                    builder.store(builder.call(fma, [builder.load(slot), x, y]), slot)
            for k, slot in enumerate(accs):
                builder.store(builder.load(slot), vptr(k), align=bits // 8)
            return context.get_dummy_value()

        return sig, codegen

    return tile, tile_half, fma_chains


@njit(inline="always")
def fma_chains_reference(n, out):
    """What fma_chains computes, in plain loops (NUMBA_DISABLE_JIT / no intrinsic)."""
    if out.itemsize == 4:
        lanes = NR32 // 2
        k = MR32 * 2
    else:
        lanes = NR64 // 2
        k = MR64 * 2
    x = out[:lanes].copy()
    y = out[lanes:2 * lanes].copy()
    for v in range(k):
        for j in range(lanes):
            a = out[v * lanes + j]
            for _ in range(n):
                a = a * x[j] + y[j]
            out[v * lanes + j] = a


if numba.config.DISABLE_JIT:
    tile, tile_half, fma_chains = tile_reference, tile_half_reference, fma_chains_reference
    INTRINSIC = False
else:
    try:
        tile, tile_half, fma_chains = _build_intrinsic()
        INTRINSIC = True
    except Exception:  # pragma: no cover - an llvmlite without vector IR support
        tile, tile_half, fma_chains = (tile_reference, tile_half_reference,
                                       fma_chains_reference)
        INTRINSIC = False


# --- cache versioning --------------------------------------------------------------------

with open(os.path.abspath(__file__), "rb") as _f:
    _SOURCE_HASH = hashlib.sha256(_f.read()).hexdigest()[:16]


def versioned(dispatcher):
    """Make a cache=True caller of `tile` recompile when this generator changes: its
    on-disk cache stamp (normally the caller file's mtime and size) gets IR_VERSION,
    the blocking and this file's hash appended. Returns the dispatcher. If Numba's cache
    internals differ from the expected ones, the dispatcher is returned unchanged."""
    try:
        cache_file = dispatcher._cache._cache_file
        cache_file._source_stamp = (cache_file._source_stamp, IR_VERSION, _SOURCE_HASH,
                                    MR32, NR32, MR64, NR64, INTRINSIC)
    except AttributeError:
        pass
    return dispatcher
