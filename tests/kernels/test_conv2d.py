"""Conv2d kernels: Numba (kernels.cpu) vs the NumPy reference (kernels.reference), and
both vs torch.nn.functional.conv2d / torch.autograd where torch is installed.

Random problems cover odd H/W, stride 1/2, padding 0..2, dilation 1/2, groups 1/2/C
(depthwise), batch 1, C=1, 1x1 kernels (the no-im2col path), float32 and float64, with
and without bias. The Numba backend lays its GEMMs out in one of two ways (one GEMM per
sample, or one for a batch chunk), chosen by the contraction length Cg*R*S; small test
problems would mostly take the first, so each is forced in turn. It also cuts the batch
into chunks when the column matrix is large; that is tested by shrinking the budget.
"""
import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels.cpu import conv2d as cpu
from kernels.cpu import conv2d_direct as direct
from kernels.reference import conv2d as ref

SETTINGS = settings(max_examples=25, deadline=None)


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    tol = 1e-4 if expected.dtype == np.float32 else 1e-10
    atol = tol * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@st.composite
def conv_cases(draw, max_hw=9):
    """A random convolution with at least one output pixel per axis."""
    groups_kind = draw(st.sampled_from(["one", "two", "depthwise"]))
    if groups_kind == "one":
        G, Cg = 1, draw(st.integers(1, 4))
    elif groups_kind == "two":
        G, Cg = 2, draw(st.integers(1, 3))
    else:
        G, Cg = draw(st.integers(1, 4)), 1
    C = G * Cg
    K = G * draw(st.integers(1, 3))
    N = draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    # smallest input that still has one window: d*(k-1) + 1 <= size + 2p
    H = max(1, dilation[0] * (R - 1) + 1 - 2 * padding[0]) + draw(st.integers(0, max_hw - 1))
    W = max(1, dilation[1] * (S - 1) + 1 - 2 * padding[1]) + draw(st.integers(0, max_hw - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Ho = out_size(H, R, stride[0], padding[0], dilation[0])
    Wo = out_size(W, S, stride[1], padding[1], dilation[1])
    return dict(
        x=rng.standard_normal((N, C, H, W)).astype(dtype),
        w=rng.standard_normal((K, Cg, R, S)).astype(dtype),
        b=rng.standard_normal(K).astype(dtype) if draw(st.booleans()) else None,
        dy=rng.standard_normal((N, K, Ho, Wo)).astype(dtype),
        stride=stride, padding=padding, dilation=dilation, groups=G)


def all_passes(k, case):
    """(y, dx, dw, db) from kernel module k."""
    x, w, b, dy = case["x"], case["w"], case["b"], case["dy"]
    geo = (case["stride"], case["padding"], case["dilation"], case["groups"])
    return (k.conv2d_forward(x, w, b, *geo),
            k.conv2d_backward_input(dy, w, x.shape, *geo),
            k.conv2d_backward_weight(dy, x, w.shape, *geo),
            k.conv2d_backward_bias(dy))


@contextlib.contextmanager
def patched(**values):
    """Temporarily set module constants of kernels.cpu.conv2d (or of conv2d_direct)."""
    owner = {name: direct if hasattr(direct, name) else cpu for name in values}
    saved = {name: getattr(owner[name], name) for name in values}
    for name, value in values.items():
        setattr(owner[name], name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner[name], name, value)


# im2col + BLAS with one GEMM per sample (NCHW in and out) wherever groups == 1, or with
# one per batch chunk; or the direct kernels (groups == 1, not 1x1), whose forward runs
# along pixels for short contractions and in register tiles otherwise (and whose
# backward-weight is used for short contractions too).
# Or the channels-last implicit GEMMs of conv2d_nhwc.py, forced for every groups == 1
# pass (1x1 kernels and short contractions included).
ROUTES = {"per_sample": dict(_NHWC=False, _DIRECT=False, _THIN_FORWARD=10**9,
                             _THIN_WEIGHT=10**9),
          "batched": dict(_NHWC=False, _DIRECT=False, _THIN_FORWARD=-1, _THIN_WEIGHT=-1),
          "direct_rows": dict(_NHWC=False, _DIRECT=True, _ROWS_BELOW=10**9,
                              _THIN_WEIGHT=-1),
          "direct_tiles": dict(_NHWC=False, _DIRECT=True, _ROWS_BELOW=0, _THIN_WEIGHT=-1),
          "nhwc": dict(_NHWC=True, _NHWC_POINTWISE=True, _NHWC_MIN_FORWARD=0,
                       _NHWC_MIN_WEIGHT=0, _NHWC_MIN_INPUT=0)}


def check_against_reference(case):
    before = {name: case[name].copy() for name in ("x", "w", "dy")}
    got = all_passes(cpu, case)
    want = all_passes(ref, case)
    for g, e in zip(got, want):
        assert_close(g, e)
        assert g.flags.c_contiguous
    for name, arr in before.items():  # kernels never modify their inputs
        np.testing.assert_array_equal(case[name], arr)
    return got


# --- Numba vs NumPy reference ------------------------------------------------------------

@pytest.mark.parametrize("route", ROUTES)
@SETTINGS
@given(case=conv_cases())
def test_cpu_matches_reference(route, case):
    with patched(**ROUTES[route]):
        check_against_reference(case)


@pytest.mark.parametrize("route", ["per_sample", "batched"])  # the direct ones never chunk
@SETTINGS
@given(case=conv_cases(max_hw=13))
def test_cpu_matches_reference_in_batch_chunks(route, case):
    # A budget smaller than one sample's column matrix: every sample is its own chunk.
    with patched(_CHUNK_BYTES=1, **ROUTES[route]):
        check_against_reference(case)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, k, s, p, G", [
    (1, 1, 5, 7, 1, 3, 1, 1, 1),        # batch 1, C = 1, K = 1
    (2, 3, 6, 5, 4, 1, 1, 0, 1),        # 1x1, stride 1: no im2col
    (2, 4, 7, 7, 6, 1, 2, 0, 2),        # 1x1 with stride: im2col, grouped
    (3, 4, 9, 8, 4, 3, 2, 1, 4),        # depthwise, stride 2
    (2, 2, 3, 3, 3, 3, 1, 2, 1),        # padding wider than the image's border windows
    (4, 5, 11, 13, 7, 3, 1, 1, 1),      # several chunks with a budget of a few samples
])
def test_cpu_matches_reference_fixed_cases(route, dtype, N, C, H, W, K, k, s, p, G):
    rng = np.random.default_rng(0)
    Ho, Wo = out_size(H, k, s, p, 1), out_size(W, k, s, p, 1)
    case = dict(x=rng.standard_normal((N, C, H, W)).astype(dtype),
                w=rng.standard_normal((K, C // G, k, k)).astype(dtype),
                b=rng.standard_normal(K).astype(dtype),
                dy=rng.standard_normal((N, K, Ho, Wo)).astype(dtype),
                stride=(s, s), padding=(p, p), dilation=(1, 1), groups=G)
    with patched(**ROUTES[route]):
        check_against_reference(case)
    # Again with chunks of 3 samples (the last one shorter).
    budget = 3 * C * k * k * Ho * Wo * np.dtype(dtype).itemsize
    with patched(_CHUNK_BYTES=budget, **ROUTES[route]):
        check_against_reference(case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N, C, H, W, K, k, s, p, d", [
    (3, 32, 9, 11, 20, 3, 1, 1, 1),     # 288-long contraction; K, pixels not multiples of 4, 3
    (1, 17, 8, 8, 5, 3, 2, 1, 1),       # batch 1, stride 2, contraction not a multiple of 16
    (2, 8, 12, 10, 9, 3, 1, 2, 2),      # dilation 2: one copy per kernel offset
    (2, 1, 28, 28, 6, 5, 1, 2, 1),      # a first layer: the pixel-row kernel
    (1, 3, 7, 7, 2, 3, 1, 0, 1),        # fewer channels and pixels than one register tile
    (2, 6, 11, 12, 5, 5, 3, 2, 1),      # stride 3: backward-input in 9 phases
    (2, 4, 10, 9, 6, 1, 2, 0, 1),       # 1x1 with stride 2: a phase no kernel offset reaches
])
def test_direct_kernels_on_tile_sized_problems(dtype, N, C, H, W, K, k, s, p, d):
    rng = np.random.default_rng(5)
    Ho, Wo = out_size(H, k, s, p, d), out_size(W, k, s, p, d)
    case = dict(x=rng.standard_normal((N, C, H, W)).astype(dtype),
                w=rng.standard_normal((K, C, k, k)).astype(dtype),
                b=rng.standard_normal(K).astype(dtype),
                dy=rng.standard_normal((N, K, Ho, Wo)).astype(dtype),
                stride=(s, s), padding=(p, p), dilation=(d, d), groups=1)
    for route in ("direct_rows", "direct_tiles", "nhwc"):
        with patched(**ROUTES[route]):
            check_against_reference(case)


def test_results_do_not_alias_scratch_buffers():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    geo = ((1, 1), (1, 1), (1, 1), 1)
    y1 = cpu.conv2d_forward(x, w, None, *geo)
    kept = y1.copy()
    cpu.conv2d_forward(2 * x, w, None, *geo)  # same sizes: same scratch buffers
    cpu.conv2d_backward_weight(y1, x, w.shape, *geo)
    np.testing.assert_array_equal(y1, kept)


def test_bias_gradient_of_a_large_sum_float32():
    # 64*28*28 = 50176 terms per channel: float32 accumulation would drift past 1e-4.
    rng = np.random.default_rng(2)
    dy = (rng.standard_normal((64, 3, 28, 28)) + 3.0).astype(np.float32)
    expected = dy.astype(np.float64).sum(axis=(0, 2, 3))
    np.testing.assert_allclose(cpu.conv2d_backward_bias(dy), expected, rtol=1e-6)


# --- thread count ------------------------------------------------------------------------

@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@settings(max_examples=10, deadline=None)
@given(conv_cases(max_hw=12))
def test_results_do_not_depend_on_numba_thread_count(case):
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = all_passes(cpu, case)
        numba.set_num_threads(2)
        two = all_passes(cpu, case)
    finally:
        numba.set_num_threads(saved)
    # Every output element is computed by one task in a fixed order: bitwise equal.
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("route", ROUTES)
def test_thread_count_on_a_chunked_medium_problem(route):
    rng = np.random.default_rng(4)
    case = dict(x=rng.standard_normal((6, 16, 15, 13)).astype(np.float32),
                w=rng.standard_normal((24, 16, 3, 3)).astype(np.float32),
                b=rng.standard_normal(24).astype(np.float32),
                dy=rng.standard_normal((6, 24, 15, 13)).astype(np.float32),
                stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    saved = numba.get_num_threads()
    budget = 2 * 16 * 9 * 15 * 13 * 4  # chunks of 2 samples
    try:
        with patched(_CHUNK_BYTES=budget, **ROUTES[route]):
            numba.set_num_threads(1)
            one = all_passes(cpu, case)
            numba.set_num_threads(2)
            two = check_against_reference(case)
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# --- vs PyTorch -----------------------------------------------------------------------------

def torch_passes(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = torch.tensor(case["x"], requires_grad=True)
    w = torch.tensor(case["w"], requires_grad=True)
    b = None if case["b"] is None else torch.tensor(case["b"], requires_grad=True)
    y = F.conv2d(x, w, b, case["stride"], case["padding"], case["dilation"], case["groups"])
    y.backward(torch.tensor(case["dy"]))
    db = case["dy"].sum(axis=(0, 2, 3)) if b is None else b.grad.numpy()
    return y.detach().numpy(), x.grad.numpy(), w.grad.numpy(), db


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@SETTINGS
@given(case=conv_cases())
def test_matches_torch(backend, case):
    want = torch_passes(case)
    got = all_passes(cpu if backend == "cpu" else ref, case)
    names = ("y", "dx", "dw", "db") if case["b"] is not None else ("y", "dx", "dw")
    for name, g, e in zip(names, got, want):
        assert g.shape == e.shape, name
        assert_close(g, e.astype(g.dtype))


@pytest.mark.parametrize("shape, K, k, s, p", [
    ((4, 1, 28, 28), 8, 3, 1, 1),     # the first layer of the benchmark, smaller batch
    ((2, 16, 14, 14), 16, 1, 1, 0),
    ((2, 16, 14, 14), 8, 3, 2, 1),
    ((2, 32, 7, 7), 12, 3, 1, 1),     # the direct kernels' register tiles
])
def test_matches_torch_on_benchmark_like_shapes(shape, K, k, s, p):
    rng = np.random.default_rng(3)
    N, C, H, W = shape
    Ho, Wo = out_size(H, k, s, p, 1), out_size(W, k, s, p, 1)
    case = dict(x=rng.standard_normal(shape).astype(np.float32),
                w=rng.standard_normal((K, C, k, k)).astype(np.float32),
                b=rng.standard_normal(K).astype(np.float32),
                dy=rng.standard_normal((N, K, Ho, Wo)).astype(np.float32),
                stride=(s, s), padding=(p, p), dilation=(1, 1), groups=1)
    for g, e in zip(all_passes(cpu, case), torch_passes(case)):
        assert_close(g, e)
