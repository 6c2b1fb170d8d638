"""The channels-last convolutions (kernels/cpu/conv2d_nhwc.py) and their micro-kernel
(kernels/cpu/microkernel.py): the micro-kernel alone against its plain-loop semantics
(edge tiles: zero-length contractions, strides, offsets), its machine code (vector FMAs,
accumulators never on the stack), then every pass on NHWC arrays against the NumPy
reference (odd sizes, batch 1, K and pixel counts that are not multiples of a tile,
stride 2/3, dilation 2, padding 0..2, float32 and float64), bitwise equality across
Numba thread counts, PyTorch's channels_last results, and the NUMBA_DISABLE_JIT path.
The NCHW entry point's routing to these kernels is tested in test_conv2d.py ("nhwc").
"""
import os
import re
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

from minidl.kernels.cpu import conv2d_nhwc as nhwc
from minidl.kernels.cpu import microkernel as mk
from minidl.kernels.reference import conv2d as ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def to_nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def to_nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    tol = 1e-4 if expected.dtype == np.float32 else 1e-10
    atol = tol * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


# --- the micro-kernel alone --------------------------------------------------------------

@njit
def run_tile(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows, o0,
             ooff, init, ioff):
    mk.tile(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows, o0,
            ooff, init, ioff)


@njit
def run_tile_half(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                  o0, ooff, init, ioff):
    mk.tile_half(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
                 o0, ooff, init, ioff)


def tile_numpy(A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride, out, orows,
               o0, ooff, init, ioff, mr, nr):
    """The documented semantics, with NumPy (float64 products): the new out."""
    idx = orows[o0:o0 + mr, None] + ooff + np.arange(nr)
    acc = (np.broadcast_to(init[ioff:ioff + nr], (mr, nr)) if init.size else out[idx])
    acc = acc.astype(np.float64)
    for t in range(T):
        for c in range(Cn):
            a = A[rows[r0:r0 + mr] + toff[t0 + t] + c * a_cs].astype(np.float64)
            q = b0 + t * b_tstride + c * b_stride
            acc += np.outer(a, B[q:q + nr])
    new = out.copy()
    new[idx] = acc  # rows sharing a place: the last one wins, as in the kernel
    return new


@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_init", [True, False])
@pytest.mark.parametrize("r0, t0, T, Cn, a_cs, b0, extra, gap", [
    (0, 0, 1, 1, 1, 0, 0, 0),      # one step
    (0, 0, 0, 5, 1, 0, 0, 0),      # empty contraction: the tile is its start value
    (2, 1, 3, 7, 1, 5, 3, 0),      # offsets into the tables, B rows longer than NR
    (1, 2, 4, 1, 0, 0, 0, 0),      # the backward-weight form: Cn = 1, table-driven steps
    (0, 0, 2, 9, 3, 2, 0, 0),      # strided channels
    (1, 0, 3, 4, 2, 1, 1, 2),      # B steps per table entry beyond Cn rows (trimmed runs)
])
def test_tile_matches_its_semantics(half, dtype, with_init, r0, t0, T, Cn, a_cs, b0, extra,
                                    gap):
    mr, nr = nhwc.blocking(dtype)
    nr = nr // 2 if half else nr
    rng = np.random.default_rng(T * 31 + Cn)
    A = rng.standard_normal(4000).astype(dtype)
    rows = rng.integers(0, 1000, r0 + mr + 2).astype(np.int64)
    toff = rng.integers(0, 1000, t0 + T + 1).astype(np.int64)
    b_stride = nr + extra
    b_tstride = (Cn + gap) * b_stride  # gap rows of B skipped after each table entry
    B = rng.standard_normal(b0 + max(T * (Cn + gap), 1) * b_stride + nr).astype(dtype)
    out = rng.standard_normal(8 * mr * nr).astype(dtype)
    # output rows scattered, not in order, the last two sharing a scratch place
    o0, ooff = 1, 3
    orows = np.concatenate([[0], rng.permutation(mr - 1) * 2 * nr + nr,
                            [7 * mr * nr]]).astype(np.int64)
    orows = np.concatenate([orows[:o0 + mr - 1], [orows[o0 + mr - 2]]])
    init = rng.standard_normal(nr + 5).astype(dtype) if with_init else out[:0]
    ioff = 5 if with_init else 0
    args = (A, rows, r0, toff, t0, T, Cn, a_cs, B, b0, b_stride, b_tstride)
    want = tile_numpy(*args, out, orows, o0, ooff, init, ioff, mr, nr)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    got = out.copy()
    (run_tile_half if half else run_tile)(*args, got, orows, o0, ooff, init, ioff)
    shared = orows[o0 + mr - 1] + ooff + np.arange(nr)  # written twice: either value
    keep = np.ones(out.size, bool)
    keep[shared] = False
    np.testing.assert_allclose(got[keep], want[keep], rtol=tol, atol=tol * max(1, T * Cn))
    # The plain-loop fallback (NUMBA_DISABLE_JIT) has the same semantics.
    fallback = out.copy()
    (mk.tile_half_reference if half else mk.tile_reference).py_func(
        *args, fallback, orows, o0, ooff, init, ioff)
    np.testing.assert_allclose(fallback[keep], want[keep], rtol=tol,
                               atol=tol * max(1, T * Cn))


@pytest.mark.skipif(not mk.INTRINSIC, reason="the LLVM intrinsic is not in use")
def test_tile_machine_code_keeps_accumulators_in_vector_registers():
    A = np.zeros(64, np.float32)
    rows = np.zeros(16, np.int64)
    run_tile(A, rows, 0, rows, 0, 1, 1, 1, A, 0, 16, 16, A, rows, 0, 0, A[:0], 0)
    asm = run_tile.inspect_asm(run_tile.signatures[0])
    reg = "zmm" if mk.host_lanes(4) == 16 else "ymm"
    lines = asm.splitlines()
    at = [i for i, line in enumerate(lines) if "vfmadd" in line]
    fmas = [lines[i] for i in at]
    mr, nr = nhwc.blocking(np.float32)
    # The inner loop (unrolled or not) holds one FMA per accumulator vector.
    assert len(fmas) >= mr * nr // mk.host_lanes(4)
    assert all(reg in line for line in fmas)
    # The innermost loops that run the FMAs (a label, straight-line code, a branch back
    # to the label) move no vector register to or from the stack: no accumulator is
    # spilled. (The remainder iteration of an unrolled loop may spill; it runs once.)
    labels = {line[:-1]: i for i, line in enumerate(lines) if re.match(r"\.LBB\w*:$", line)}
    loops = []
    for i, line in enumerate(lines):
        m = re.match(r"\s+j\w+\s+(\.LBB\w+)", line)
        if m and labels.get(m.group(1), i) < i:
            body = lines[labels[m.group(1)] + 1:i]
            if any("vfmadd" in b for b in body) and not any(b in labels for b in
                                                            (x[:-1] for x in body)):
                loops.append(body)
    assert loops
    loop = [line for body in loops for line in body]
    assert not [line for line in loop if "rsp" in line and re.search(r"%[xyz]mm", line)]


@njit
def forward_like_tile(A, rows, toff, T, Cn, B, out, orows, init):
    # as _forward_gemm calls it: channel stride 1 and the panel width as constants
    mk.tile(A, rows, 0, toff, 0, T, Cn, 1, B, 0, mk.NR32, Cn * mk.NR32, out, orows, 0, 0, init,
            0)


@pytest.mark.skipif(not mk.INTRINSIC, reason="the LLVM intrinsic is not in use")
def test_tile_channel_loop_is_rolled_and_spills_nothing():
    # With constant strides LLVM unrolled the channel loop by 2; the remainder copy (run
    # whenever a run of channels is odd: first layers, few channels) spilled its
    # broadcasts to the stack on AVX-512. The loop is kept rolled
    # (llvm.loop.unroll.disable): one FMA per accumulator vector in the code, and no
    # vector register moved to or from the stack between the first FMA and the last.
    A = np.zeros(4096, np.float32)
    rows = np.zeros(64, np.int64)
    forward_like_tile(A, rows, rows, 1, 1, A, A, rows, A[:0])
    lines = forward_like_tile.inspect_asm(forward_like_tile.signatures[0]).splitlines()
    at = [i for i, line in enumerate(lines) if "vfmadd" in line]
    mr, nr = nhwc.blocking(np.float32)
    assert len(at) == mr * nr // mk.host_lanes(4)
    tile_code = lines[at[0]:at[-1] + 1]
    assert not [line for line in tile_code if "rsp" in line and re.search(r"%[xyz]mm", line)]


def test_cached_callers_are_keyed_on_the_ir_generator():
    # A changed micro-kernel generator must not run stale cached callers: their cache
    # stamps carry IR_VERSION and a hash of microkernel.py.
    for kernel in (nhwc._forward_gemm, nhwc._weight_gemm):
        stamp = kernel._cache._cache_file._source_stamp
        assert stamp[1:3] == (mk.IR_VERSION, mk._SOURCE_HASH)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fma_chains_matches_its_reference(dtype):
    out = np.random.default_rng(0).uniform(0.5, 1.0, 4096).astype(dtype)
    want = out.copy()

    @njit
    def run(n, o):
        mk.fma_chains(n, o)

    run(7, out)
    mk.fma_chains_reference.py_func(7, want)
    np.testing.assert_allclose(out, want, rtol=1e-5 if dtype == np.float32 else 1e-12)


# --- the convolutions on NHWC arrays -----------------------------------------------------

def make_case(rng, N, C, H, W, K, R, S, stride, padding, dilation, dtype, bias=True):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    geo = (stride, padding, dilation, 1)
    y = ref.conv2d_forward(x, w, b, *geo)
    dy = rng.standard_normal(y.shape).astype(dtype)
    return dict(x=x, w=w, b=b, dy=dy, geo=geo[:3], y=y,
                dx=ref.conv2d_backward_input(dy, w, x.shape, *geo),
                dw=ref.conv2d_backward_weight(dy, x, w.shape, *geo),
                db=ref.conv2d_backward_bias(dy))


def nhwc_passes(case):
    x, w, b, dy, geo = (to_nhwc(case["x"]), case["w"], case["b"], to_nhwc(case["dy"]),
                        case["geo"])
    return (nhwc.conv2d_forward_nhwc(x, w, b, *geo),
            nhwc.conv2d_backward_input_nhwc(dy, w, x.shape, *geo),
            nhwc.conv2d_backward_weight_nhwc(dy, x, w.shape, *geo),
            nhwc.conv2d_backward_bias_nhwc(dy))


def check(case):
    inputs = {k: case[k].copy() for k in ("x", "w", "dy")}
    y, dx, dw, db = nhwc_passes(case)
    assert_close(to_nchw(y), case["y"])
    assert_close(to_nchw(dx), case["dx"])
    assert_close(dw, case["dw"])
    assert_close(db, case["db"])
    for arr in (y, dx, dw):
        assert arr.flags.c_contiguous
    for k, v in inputs.items():  # inputs untouched
        np.testing.assert_array_equal(case[k], v)


FIXED = [
    # N, C, H, W, K, R, S, stride, padding, dilation
    (3, 32, 9, 11, 20, 3, 3, 1, 1, 1),    # K and pixel count not multiples of a tile
    (1, 17, 8, 8, 5, 3, 3, 2, 1, 1),      # batch 1, stride 2, K < NR
    (2, 8, 12, 10, 9, 3, 3, 1, 2, 2),     # dilation 2, padding 2
    (2, 1, 28, 28, 6, 5, 5, 1, 2, 1),     # a first layer: C = 1 (fewer (tap, c) rows...)
    (1, 1, 3, 3, 1, 1, 1, 1, 0, 1),       # ... and fewer pixels than one tile, L = 1
    (1, 3, 7, 7, 2, 3, 3, 1, 0, 1),       # fewer channels and pixels than one tile
    (2, 6, 11, 12, 5, 5, 5, 3, 2, 1),     # stride 3: backward-input in 9 phases
    (2, 4, 10, 9, 6, 1, 1, 2, 0, 1),      # 1x1 stride 2: a phase no tap reaches
    (2, 16, 6, 5, 33, 1, 1, 1, 0, 1),     # 1x1: a plain GEMM over pixels (a half tile)
    (1, 176, 5, 7, 80, 1, 1, 1, 0, 1),    # 1x1, a long contraction
    (2, 5, 9, 7, 7, 3, 2, 2, 1, 2),       # stride 2 with dilation 2 (backward-input: old route)
    (1, 4, 5, 6, 3, 3, 3, 1, 3, 1),       # padding larger than the kernel's reach: cropped dy
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, R, S, s, p, d", FIXED)
def test_nhwc_matches_reference(dtype, N, C, H, W, K, R, S, s, p, d):
    rng = np.random.default_rng(N * 1000 + C * 10 + K)
    if d * (R - 1) + 1 > H + 2 * p:
        pytest.skip("no window")
    check(make_case(rng, N, C, H, W, K, R, S, (s, s), (p, p), (d, d), dtype))


@st.composite
def cases(draw):
    R, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H = max(1, dilation[0] * (R - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, 8))
    W = max(1, dilation[1] * (S - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return make_case(rng, draw(st.integers(1, 3)), draw(st.integers(1, 20)), H, W,
                     draw(st.integers(1, 40)), R, S, stride, padding, dilation,
                     draw(st.sampled_from([np.float32, np.float64])), draw(st.booleans()))


@settings(max_examples=25, deadline=None)
@given(case=cases())
def test_nhwc_matches_reference_on_random_problems(case):
    check(case)


def test_nchw_entry_matches_nhwc_entry():
    # The NCHW forms (input converted on the way in, output written into NCHW planes by
    # the epilogue) compute bitwise what the NHWC forms compute.
    case = make_case(np.random.default_rng(7), 2, 12, 9, 8, 19, 3, 3, (2, 1), (1, 0),
                     (1, 1), np.float32)
    x, w, b, dy, geo = case["x"], case["w"], case["b"], case["dy"], case["geo"]
    y, dx, dw, _ = nhwc_passes(case)
    np.testing.assert_array_equal(nhwc.forward(x, w, b, *geo, nchw=True), to_nchw(y))
    np.testing.assert_array_equal(nhwc.backward_input(dy, w, x.shape, *geo, nchw=True),
                                  to_nchw(dx))
    np.testing.assert_array_equal(nhwc.backward_weight(dy, x, w.shape, *geo, nchw=True), dw)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("shape", [
    (5, 24, 13, 11, 40, 3, 1, 1),   # several forward tasks
    (3, 8, 10, 10, 16, 3, 2, 1),    # stride 2
    (4, 20, 7, 7, 24, 1, 1, 1),     # 1x1 with padding: border blocks of no taps (bias)
])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_nhwc_results_do_not_depend_on_thread_count(monkeypatch, shape, small_chunks):
    if small_chunks:  # backward-weight in 8 groups of several chunks each
        monkeypatch.setattr(nhwc, "WEIGHT_CHUNK_BYTES", 0)
        monkeypatch.setattr(nhwc, "CHUNK", 8)
    N, C, H, W, K, k, s, p = shape
    case = make_case(np.random.default_rng(3), N, C, H, W, K, k, k, (s, s), (p, p), (1, 1),
                     np.float32)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = nhwc_passes(case)
        numba.set_num_threads(2)
        two = nhwc_passes(case)
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    assert_close(two[2], case["dw"])


@pytest.mark.parametrize("N, C, H, K, k, s, p", [
    (4, 1, 28, 8, 3, 1, 1),      # first layer
    (2, 16, 14, 24, 1, 1, 0),    # 1x1
    (2, 64, 7, 96, 1, 1, 0),     # 1x1 on the micro-kernel
    (2, 16, 14, 8, 3, 2, 1),     # stride 2
    (2, 32, 7, 40, 3, 1, 1),     # 7x7 maps: blocks spanning samples
])
def test_nhwc_matches_torch_channels_last(N, C, H, K, k, s, p):
    torch = pytest.importorskip("torch")
    case = make_case(np.random.default_rng(11), N, C, H, H, K, k, k, (s, s), (p, p), (1, 1),
                     np.float32)
    x = torch.tensor(case["x"]).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.tensor(case["w"]).requires_grad_()
    b = torch.tensor(case["b"]).requires_grad_()
    y = torch.nn.functional.conv2d(x, w, b, s, p)
    y.backward(torch.tensor(case["dy"]).to(memory_format=torch.channels_last))
    got = nhwc_passes(case)
    assert_close(to_nchw(got[0]), y.detach().numpy())
    assert_close(to_nchw(got[1]), x.grad.numpy())
    assert_close(got[2], w.grad.numpy())
    assert_close(got[3], b.grad.numpy())


def test_disable_jit_runs_the_plain_loop_fallback():
    # With NUMBA_DISABLE_JIT=1 every kernel is plain Python and `tile` is the reference.
    code = r"""
import numpy as np
from minidl.kernels.cpu import conv2d_nhwc as nh, microkernel as mk
from minidl.kernels.reference import conv2d as ref
assert not mk.INTRINSIC and mk.tile is mk.tile_reference
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 2, 4, 5)); w = rng.standard_normal((3, 2, 3, 3))
geo = ((1, 1), (1, 1), (1, 1))
y = ref.conv2d_forward(x, w, None, *geo, 1)
dy = rng.standard_normal(y.shape)
t = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))
np.testing.assert_allclose(nh.conv2d_forward_nhwc(t(x), w, None, *geo), t(y), atol=1e-12)
np.testing.assert_allclose(nh.conv2d_backward_input_nhwc(t(dy), w, t(x).shape, *geo),
                           t(ref.conv2d_backward_input(dy, w, x.shape, *geo, 1)), atol=1e-12)
np.testing.assert_allclose(nh.conv2d_backward_weight_nhwc(t(dy), t(x), w.shape, *geo),
                           ref.conv2d_backward_weight(dy, x, w.shape, *geo, 1), atol=1e-12)
print("ok")
"""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


@pytest.mark.parametrize("shape,top,left,Hp,Wp", [
    ((2, 5, 6, 3), 1, 1, 7, 8), ((1, 4, 3, 1), 2, 0, 9, 3), ((3, 5, 7, 2), -1, -2, 3, 4),
    ((1, 2, 2, 5), 0, 3, 2, 4), ((2, 3, 3, 4), 4, 4, 2, 2)])
def test_pad_and_crop_copy(rng, shape, top, left, Hp, Wp):
    """_pad_nhwc: out[n, i, j] = x[n, i - top, j - left], 0 outside x (negative top or left
    crop; a window entirely outside x is all zeros)."""
    x = rng.standard_normal(shape)
    out = np.full((shape[0], Hp, Wp, shape[3]), np.nan)
    nhwc._pad_nhwc(x, top, left, out)
    want = np.zeros_like(out)
    for i in range(Hp):
        for j in range(Wp):
            if 0 <= i - top < shape[1] and 0 <= j - left < shape[2]:
                want[:, i, j] = x[:, i - top, j - left]
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("C, stride, dilation", [(1, (1, 1), (1, 1)), (3, (2, 1), (1, 1)),
                                                 (5, (1, 2), (2, 1)), (2, (1, 1), (1, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_kernel_row_as_one_run_gives_the_same_bits(monkeypatch, C, stride, dilation,
                                                       dtype):
    """Few channels: the forward walks a kernel row's S*C values as one run (dilation 1
    along the width); the same products in the same order as S runs of C, so the same
    bits, and both match the reference."""
    rng = np.random.default_rng(C)
    x = rng.standard_normal((3, 9, 11, C)).astype(dtype)
    w = rng.standard_normal((37, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(37).astype(dtype)
    merged = nhwc.forward(x, w, b, stride, (1, 1), dilation)
    monkeypatch.setattr(nhwc, "RUN_MERGE_BELOW", 0)
    runs = nhwc.forward(x, w, b, stride, (1, 1), dilation)
    np.testing.assert_array_equal(merged, runs)
    assert_close(to_nchw(merged), ref.conv2d_forward(to_nchw(x), w, b, stride, (1, 1),
                                                     dilation, 1))


SKIP_GEOMETRIES = [
    # N, C, H, W, K, R, S, stride, padding, dilation
    (3, 20, 7, 7, 37, 3, 3, (1, 1), (1, 1), (1, 1)),   # 3 x 3 border classes
    (2, 17, 9, 6, 5, 5, 3, (1, 1), (2, 1), (2, 1)),    # dilation, unequal kernels
    (2, 24, 9, 10, 9, 3, 3, (2, 2), (1, 1), (1, 1)),   # stride 2: top and left classes
    (2, 20, 5, 6, 40, 1, 1, (1, 1), (1, 1), (1, 1)),   # 1x1 padded: bias-only borders
    (2, 3, 8, 7, 11, 3, 3, (1, 1), (1, 1), (1, 1)),    # merged runs: rows skipped only
    (1, 18, 4, 5, 70, 5, 5, (1, 1), (3, 3), (1, 1)),   # padding beyond the kernel's reach
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, R, S, stride, padding, dilation", SKIP_GEOMETRIES)
def test_skipping_padding_taps_gives_the_same_bits(monkeypatch, dtype, N, C, H, W, K, R, S,
                                                   stride, padding, dilation):
    """Border pixels contract over the taps that reach real input only (forward_plan),
    on a padded copy or on the input itself (UNPADDED_READS), weight-gradient tiles over
    the pixels their taps see real input at (weight_plan): with nonzero random data the
    same bits as the full contractions over the zero padding (forward, backward-input,
    which is a forward, and backward-weight), and the reference."""
    case = make_case(np.random.default_rng(C + K), N, C, H, W, K, R, S, stride, padding,
                     dilation, dtype)
    out = {}
    monkeypatch.setattr(nhwc, "CHUNK", 8)  # several chunks, and runs cut by chunk ends
    monkeypatch.setattr(nhwc, "WEIGHT_CHUNK_BYTES", 0)
    # the input read in place (every padding tap skipped), padded with the padding taps
    # skipped, padded with nothing skipped
    for in_place, skip_min in ((True, 2.0), (False, 0.0), (False, 2.0)):
        monkeypatch.setattr(nhwc, "UNPADDED_READS", in_place)
        monkeypatch.setattr(nhwc, "SKIP_MIN", skip_min)
        nhwc.forward_plan.cache_clear()
        nhwc.weight_plan.cache_clear()
        out[in_place, skip_min] = nhwc_passes(case)[:3]
    nhwc.forward_plan.cache_clear()
    nhwc.weight_plan.cache_clear()
    full = out[False, 2.0]
    for got in (out[True, 2.0], out[False, 0.0]):
        for a, b_ in zip(got, full):
            np.testing.assert_array_equal(a, b_)
    assert_close(to_nchw(full[0]), case["y"])
    assert_close(to_nchw(full[1]), case["dx"])
    assert_close(full[2], case["dw"])


@pytest.mark.parametrize("N, C, H, W, K, R, S, stride, padding, dilation", SKIP_GEOMETRIES)
def test_forward_plan_skips_only_taps_on_padding(N, C, H, W, K, R, S, stride, padding,
                                                 dilation):
    """The plan's blocks own every output pixel exactly once, tile rows stay within
    their class, and every tap a pixel skips reads padding, every tap it keeps real
    input; the work estimate (cost) grows with each block."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    rows = nhwc.valid_taps(Ho, 0, sh, dh, R, ph, ph + H)
    cols = nhwc.valid_taps(Wo, 0, sw, dw, S, pw, pw + W)
    perm, blocks, segs, cost = nhwc.forward_plan(N, Ho, Wo, R, S, rows, cols, 12)
    if perm is None:
        pytest.skip("too little to skip on this geometry")
    assert sorted(perm) == list(range(N * Ho * Wo))
    assert np.all(np.diff(cost) > 0) and cost.size == blocks.shape[0] + 1
    owned = []
    for start, count, own, s_lo, s_hi in blocks:
        assert 0 < count <= 12 and 0 <= own < count and s_lo < s_hi
        kept = set()
        for t0, t1 in segs[s_lo:s_hi]:
            kept |= set(range(t0, t1))
        for m in perm[start:start + count]:
            i, j = (m // Wo) % Ho, m % Wo
            for t in range(R * S):
                r, c = divmod(t, S)
                inside = (0 <= i * sh - ph + r * dh < H) and (0 <= j * sw - pw + c * dw < W)
                assert inside == (t in kept), (m, t)
        owned += list(perm[start + own:start + count])
    assert sorted(owned) == list(range(N * Ho * Wo))


@pytest.mark.parametrize("N, C, H, W, K, R, S, stride, padding, dilation", SKIP_GEOMETRIES)
@pytest.mark.parametrize("chunk, groups", [(8, 1), (8, 4), (1000, 1)])
def test_weight_plan_runs_cover_the_pixels_a_tile_needs(monkeypatch, N, C, H, W, K, R, S,
                                                        stride, padding, dilation, chunk,
                                                        groups):
    """Each backward-weight tile's runs, in every chunk, are the chunk's segments (output
    rows) where one of its taps' kernel rows reads real input, in order, and its column
    range [lo, Wo - cut) holds every column where one of its taps' kernel columns does:
    every product it drops is with padding."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    Ho = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    mr = 12
    if Wo > chunk:
        pytest.skip("rows cut into pieces: no skipping")
    monkeypatch.setattr(nhwc, "SKIP_MIN", 0.0)
    nhwc.weight_plan.cache_clear()
    tile_class, lo, cut, run_s0, run_n, rptr = nhwc.weight_plan(
        N, H, W, C, Ho, Wo, R, S, stride, padding, dilation, mr, chunk, groups)
    nhwc.weight_plan.cache_clear()
    seg_m, first, count, length = nhwc.weight_chunks(N, Ho, Wo, chunk, groups)
    L = R * S * C
    nclass = (rptr.size - 1) // first.size
    for q in range(-(-L // mr)):
        rows = np.minimum(np.minimum(q * mr, max(L - mr, 0)) + np.arange(mr), L - 1)
        taps = {(row // C) // S for row in rows}, {(row // C) % S for row in rows}
        for ch in range(first.size):
            x0, x1 = rptr[ch * nclass + tile_class[q]], rptr[ch * nclass + tile_class[q] + 1]
            got = [s for x in range(x0, x1) for s in range(run_s0[x], run_s0[x] + run_n[x])]
            want = [s for s in range(first[ch], first[ch] + count[ch])
                    if any(0 <= ((seg_m[s] // Wo) % Ho) * sh - ph + r * dh < H
                           for r in taps[0])]
            assert got == want, (q, ch)
        used = [j for j in range(Wo)
                if any(0 <= j * sw - pw + c * dw < W for c in taps[1])]
        if used:
            assert lo[q] <= used[0] and Wo - cut[q] > used[-1]


@pytest.mark.parametrize("N, Ho, Wo, chunk", [(2, 3, 5, 64), (1, 4, 7, 14), (2, 2, 11, 5),
                                              (1, 1, 1, 64), (3, 2, 64, 64), (1, 2, 65, 64)])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_weight_chunks_cover_every_pixel_once_in_order(N, Ho, Wo, chunk, groups):
    seg_m, first, count, length = nhwc.weight_chunks(N, Ho, Wo, chunk, groups)
    if Wo <= chunk:  # rows split evenly, into a multiple of the groups where there are enough
        assert first.size % groups == 0 or first.size == N * Ho
        assert count.max() - count.min() <= 1
    pixels = []
    for s0, T, L in zip(first, count, length):
        assert 1 <= L <= chunk and T * L <= chunk + Wo  # about `chunk` pixels: rows split evenly
        for t in range(T):
            m = seg_m[s0 + t]
            assert m == seg_m[s0] + t * L  # consecutive segments: B rows b0 + (t*L + c)
            assert m // Wo == (m + L - 1) // Wo  # a segment stays in one output row
            pixels.extend(range(m, m + L))
    assert pixels == list(range(N * Ho * Wo))


@pytest.mark.parametrize("chunk", [1, 4, 5])
@pytest.mark.parametrize("stride, dilation", [((1, 1), (1, 1)), ((2, 3), (1, 1)),
                                              ((1, 2), (2, 1))])
def test_backward_weight_with_rows_cut_into_pieces(monkeypatch, chunk, stride, dilation):
    """Output rows longer than a chunk are cut into pieces (on real shapes: rows over 64
    pixels); every cut matches the reference."""
    monkeypatch.setattr(nhwc, "CHUNK", chunk)
    monkeypatch.setattr(nhwc, "WEIGHT_CHUNK_BYTES", 0)
    case = make_case(np.random.default_rng(chunk), 2, 5, 9, 17, 7, 3, 3, stride, (1, 1),
                     dilation, np.float64)
    dw = nhwc.backward_weight(to_nhwc(case["dy"]), to_nhwc(case["x"]), case["w"].shape,
                              *case["geo"])
    assert_close(dw, case["dw"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C, K, stride", [(1, 16, 1), (16, 12, 1), (5, 3, 2), (9, 8, 1),
                                          (48, 20, 1), (3, 40, 2), (24, 48, 1)])
def test_half_width_tiles_give_the_same_bits(monkeypatch, dtype, C, K, stride):
    """A last panel of at most NR/2 output channels runs on the half-width tile (AVX-512
    hosts): the same products in the same order as the full-width tile, so the same
    bits, in all three passes (forward and backward-weight: K lanes; backward-input: C
    lanes); both match the reference."""
    nr = nhwc.blocking(dtype)[1]
    if not any(0 < n % nr <= nr // 2 for n in (C, K)):
        pytest.skip("no panel narrow enough for a half tile at this width")
    case = make_case(np.random.default_rng(C * K), 2, C, 9, 10, K, 3, 3, (stride, stride),
                     (1, 1), (1, 1), dtype)
    monkeypatch.setattr(nhwc, "HALF_TILES", True)
    got = nhwc_passes(case)
    check(case)
    monkeypatch.setattr(nhwc, "HALF_TILES", False)
    assert not nhwc.half_tail(K, dtype)
    for a, b in zip(got, nhwc_passes(case)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_route(monkeypatch, dtype):
    # A 1x1 convolution runs on BLAS (_gemm_bias, numpy's matmul) or on the micro-kernel
    # (AVX-512, float32); either way the reference's result.
    case = make_case(np.random.default_rng(5), 2, 40, 5, 6, 24, 1, 1, (1, 1), (0, 0), (1, 1),
                     dtype)
    calls = []
    gemm = nhwc._gemm_bias
    monkeypatch.setattr(nhwc, "_gemm_bias", lambda *a: calls.append(1) or gemm(*a))
    check(case)
    assert bool(calls) == (dtype == np.float64 or not nhwc.POINTWISE_TILES)


@pytest.mark.parametrize("K, C, R, S, nr", [(64, 3, 3, 3, 32), (40, 5, 1, 2, 32), (7, 2, 3, 1, 16),
                                            (16, 1, 3, 3, 32)])
def test_pack_weights_layout(K, C, R, S, nr):
    w = np.random.default_rng(K).standard_normal((K, C, R, S)).astype(np.float32)
    packed = nhwc.pack_weights(w, nr).reshape(-(-K // nr), R * S, C, nr)
    for kb in range(packed.shape[0]):
        for j in range(nr):
            k = kb * nr + j
            want = w[k].reshape(C, R * S).T if k < K else np.zeros((R * S, C), np.float32)
            np.testing.assert_array_equal(packed[kb, :, :, j], want)


@pytest.mark.parametrize("M, Kp, itemsize", [(3136, 128, 4), (50176, 64, 4), (40, 32, 8),
                                             (12544, 128, 4), (1, 16, 4)])
def test_weight_blocking_groups_are_a_power_of_two_within_the_chunks(M, Kp, itemsize):
    chunk, groups = nhwc.weight_blocking(M, Kp, itemsize)
    assert chunk >= nhwc.CHUNK and chunk * Kp * itemsize <= max(nhwc.WEIGHT_CHUNK_BYTES,
                                                                nhwc.CHUNK * Kp * itemsize)
    assert groups & (groups - 1) == 0 and 1 <= groups <= nhwc.WEIGHT_GROUPS
    assert groups == 1 or groups * nhwc.CHUNK <= M  # every group gets pixels
    assert groups <= max(nhwc.MIN_WEIGHT_GROUPS, round(M / chunk))
    if M >= nhwc.MIN_WEIGHT_GROUPS * nhwc.CHUNK:  # enough work for small machines' cores
        assert groups >= nhwc.MIN_WEIGHT_GROUPS


def test_weight_blocking_bounds_the_input_read_per_chunk():
    """A strided or wide layer reads more input than dy per output pixel: its chunks
    shrink so that their input pixels fit the same budget."""
    dy_only, _ = nhwc.weight_blocking(3136, 128, 4)
    strided, groups = nhwc.weight_blocking(3136, 128, 4, x_pixel_bytes=2 * 2 * 128 * 4)
    assert strided * 2 * 2 * 128 * 4 <= nhwc.WEIGHT_CHUNK_BYTES < dy_only * 2 * 2 * 128 * 4
    assert strided >= nhwc.CHUNK and groups == nhwc.WEIGHT_GROUPS
