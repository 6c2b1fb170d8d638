"""Channels-in-lanes pooling (kernels/cpu/pooling_nhwc.py) against the reference: NHWC
arrays directly (B = N, L = C) and NCHW through the lanes (B = 1, L = N*C), bitwise,
including ceil_mode, count_include_pad, ties, -inf windows and NaN, and across thread
counts."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidl.kernels.cpu import pooling_nhwc as lanes
from minidl.kernels.cpu.pooling_nhwc import _NV
from minidl.kernels.reference import pooling as ref
from minidl.kernels.reference.pooling import pool_output_size


@st.composite
def cases(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    H = max(draw(st.integers(1, 9)), k[0] - 2 * p[0])
    W = max(draw(st.integers(1, 9)), k[1] - 2 * p[1])
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 600))  # > one lane block
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Few distinct values: ties are common, so the first-maximum rule is exercised.
    x = rng.integers(-3, 3, (N, C, H, W)).astype(dtype)
    return x, k, s, p, draw(st.booleans()), draw(st.booleans()), rng


def out_hw(x, k, s, p, ceil):
    return (pool_output_size(x.shape[2], k[0], s[0], p[0], ceil),
            pool_output_size(x.shape[3], k[1], s[1], p[1], ceil))


@settings(max_examples=25, deadline=None)
@given(cases())
def test_nchw_through_lanes_matches_the_reference_bitwise(case):
    x, k, s, p, ceil, include_pad, rng = case
    Ho, Wo = out_hw(x, k, s, p, ceil)
    y0, a0 = ref.max_pool2d_forward(x, k, s, p, ceil)
    y1, a1 = lanes.max_pool2d_forward_lanes(x, k, s, p, Ho, Wo)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(a1, a0)
    dy = rng.standard_normal(y0.shape).astype(x.dtype)
    dx = lanes.max_pool2d_backward_lanes(dy, a1, x.shape, k, s, p)
    np.testing.assert_allclose(dx, ref.max_pool2d_backward(dy, a0, x.shape), rtol=1e-6,
                               atol=1e-6)
    # Gather (disjoint windows) or scatter: the per-plane scatter's bits, -0 included.
    from minidl.kernels.cpu import pooling as planes
    dy[..., ::3] = -0.0
    np.testing.assert_array_equal(
        np.signbit(lanes.max_pool2d_backward_lanes(dy, a1, x.shape, k, s, p)),
        np.signbit(planes.max_pool2d_backward(dy, a0, x.shape)))
    np.testing.assert_array_equal(lanes.max_pool2d_backward_lanes(dy, a1, x.shape, k, s, p),
                                  planes.max_pool2d_backward(dy, a0, x.shape))
    v0 = ref.avg_pool2d_forward(x, k, s, p, ceil, include_pad)
    np.testing.assert_array_equal(
        lanes.avg_pool2d_forward_lanes(x, k, s, p, include_pad, Ho, Wo), v0)
    g0 = ref.avg_pool2d_backward(dy, x.shape, k, s, p, ceil, include_pad)
    np.testing.assert_array_equal(
        lanes.avg_pool2d_backward_lanes(dy, x.shape, k, s, p, include_pad), g0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nhwc_layout_directly(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 7)).astype(dtype)  # N, C, H, W
    x[0, 1, :3, :3] = -np.inf           # a window of real -inf values
    x[1, 2, 2, 2] = np.nan              # NaN propagates
    k, s, p = (3, 3), (2, 2), (1, 1)
    Ho, Wo = out_hw(x, k, s, p, False)
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = np.empty((2, Ho, Wo, 5), dtype)
    am = np.empty((2, Ho, Wo, 5), np.int32)  # positions as the NHWC kernels keep them
    lanes.max_pool_fwd(xn, *k, *s, *p, y, am)
    y0, a0 = ref.max_pool2d_forward(x, k, s, p, False)
    np.testing.assert_array_equal(y.transpose(0, 3, 1, 2), y0)
    np.testing.assert_array_equal(am.transpose(0, 3, 1, 2), a0)
    dy = rng.standard_normal((2, Ho, Wo, 5)).astype(dtype)
    dx = np.empty((2, 6 * 7, 5), dtype)
    lanes.max_pool_bwd(dy, am, dx)
    np.testing.assert_allclose(
        dx.reshape(2, 6, 7, 5).transpose(0, 3, 1, 2),
        ref.max_pool2d_backward(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)), a0, x.shape))


def test_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 300, 9, 9)).astype(np.float32)
    dy = rng.standard_normal((4, 300, 9, 9)).astype(np.float32)
    prev = numba.get_num_threads()
    out = []
    try:
        for t in (1, prev):
            numba.set_num_threads(t)
            y, a = lanes.max_pool2d_forward_lanes(x, (3, 3), (1, 1), (1, 1), 9, 9)
            y2, a2 = lanes.max_pool2d_forward_lanes(x, (2, 2), (2, 2), (0, 0), 4, 4)
            out.append((y, np.array(a),
                        lanes.max_pool2d_backward_lanes(dy, a, x.shape, (3, 3), (1, 1), (1, 1)),
                        lanes.max_pool2d_backward_lanes(dy[:, :, :4, :4], a2, x.shape,
                                                        (2, 2), (2, 2), (0, 0)),  # gather
                        lanes.avg_pool2d_backward_lanes(dy, x.shape, (3, 3), (1, 1),
                                                        (1, 1), True)))
    finally:
        numba.set_num_threads(prev)
    for u, v in zip(*out):
        np.testing.assert_array_equal(u, v)


@settings(max_examples=25, deadline=None)
@given(cases())
def test_channels_last_entry_points_match_the_reference_entry_points(case):
    """The (N, H, W, C) entry points the channels_last ops call, cpu against reference
    (whose NHWC entry points transpose around the NCHW oracle), bitwise."""
    x, k, s, p, ceil, include_pad, rng = case
    from minidl.kernels import cpu
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y0, a0 = ref.max_pool2d_forward_nhwc(xh, k, s, p, ceil)
    y1, a1 = cpu.max_pool2d_forward_nhwc(xh, k, s, p, ceil)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(a1, a0)
    dy = rng.standard_normal(y0.shape).astype(x.dtype)
    # (the reference's max backward adds overlapping windows in float64: not bitwise)
    tol = 1e-6 if x.dtype == np.float32 else 1e-13
    np.testing.assert_allclose(cpu.max_pool2d_backward_nhwc(dy, a1, xh.shape, k, s, p),
                               ref.max_pool2d_backward_nhwc(dy, a0, xh.shape, k, s, p),
                               rtol=tol, atol=tol)
    args = (k, s, p, ceil, include_pad)
    np.testing.assert_array_equal(cpu.avg_pool2d_forward_nhwc(xh, *args),
                                  ref.avg_pool2d_forward_nhwc(xh, *args))
    np.testing.assert_array_equal(cpu.avg_pool2d_backward_nhwc(dy, xh.shape, *args),
                                  ref.avg_pool2d_backward_nhwc(dy, xh.shape, *args))
    np.testing.assert_allclose(cpu.global_avg_pool2d_forward_nhwc(xh),
                               ref.global_avg_pool2d_forward_nhwc(xh), rtol=tol, atol=tol)
    g = rng.standard_normal(x.shape[:2]).astype(x.dtype)
    np.testing.assert_array_equal(cpu.global_avg_pool2d_backward_nhwc(g, xh.shape),
                                  ref.global_avg_pool2d_backward_nhwc(g, xh.shape))


@numba.njit
def _window_one(ref_, x, xoff, W, L, hs, he, ws, we, y, ooff, am, div):
    if ref_:
        lanes.max_window_reference(1, x, xoff, W, L, hs, he, ws, we, y, ooff, am)
        lanes.avg_window_reference(1, x, xoff, W, L, hs, he, ws, we, y, ooff + am.size, div)
    else:
        lanes.max_window(1, x, xoff, W, L, hs, he, ws, we, y, ooff, am)
        lanes.avg_window(1, x, xoff, W, L, hs, he, ws, we, y, ooff + am.size, div)


@numba.njit
def _window_all(ref_, x, xoff, W, L, hs, he, ws, we, y, ooff, am, div):
    # (_NV is a global int: a literal, as the intrinsics require)
    if ref_:
        lanes.max_window_reference(_NV, x, xoff, W, L, hs, he, ws, we, y, ooff, am)
        lanes.avg_window_reference(_NV, x, xoff, W, L, hs, he, ws, we, y, ooff + am.size,
                                   div)
    else:
        lanes.max_window(_NV, x, xoff, W, L, hs, he, ws, we, y, ooff, am)
        lanes.avg_window(_NV, x, xoff, W, L, hs, he, ws, we, y, ooff + am.size, div)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_window_intrinsics_match_their_references(dtype):
    """The vector-IR window max and average (running values in registers) against their
    plain-loop twins, bitwise, for one vector and _NV vectors of lanes: NaN (the last one
    wins the argmax), all -inf lanes (the first real position), ties (the first maximum),
    windows clipped at every edge, an offset into the middle of x and of the outputs."""
    rng = np.random.default_rng(3)
    H, W = 5, 6
    one = lanes._LANES32 if dtype == np.float32 else lanes._LANES64
    for nv, call in ((1, _window_one), (_NV, _window_all)):
        n = nv * one
        L = n + 3
        x = rng.integers(-2, 2, (2, H, W, L)).astype(dtype)  # few values: many ties
        x[1, :, :, 1::7] = rng.standard_normal((H, W, len(range(1, L, 7))))  # inexact sums
        x[1, 1, 2, ::3] = np.nan
        x[1, 3, 4, 1::4] = np.nan
        x[1, :, :, 2::5] = -np.inf
        xf = x.reshape(-1)
        for hs, he, ws, we in [(0, 3, 0, 3), (1, 2, 4, 6), (2, 5, 0, 1), (0, 5, 0, 6),
                               (3, 5, 5, 6)]:
            out = []
            for ref_ in (True, False):
                y = np.full(2 * (n + 7), 99, dtype)
                am = np.full(n + 7, -1, np.int32)
                call(ref_, xf, H * W * L + 2, W, L, hs, he, ws, we, y, 5, am, dtype(3))
                out.append((y, am))
            (y0, a0), (y1, a1) = out
            np.testing.assert_array_equal(y1, y0)
            np.testing.assert_array_equal(a1, a0)
            written = np.zeros(y1.size, bool)
            written[5:5 + n] = written[n + 12:2 * n + 12] = True
            assert (y1[~written] == 99).all()  # nothing else written
            assert (a1[:5] == -1).all() and (a1[5 + n:] == -1).all()
            window = x[1, hs:he, ws:we, 2:2 + n].reshape(-1, n)
            finite = ~np.isnan(window).any(axis=0)
            np.testing.assert_array_equal(y1[5:5 + n][finite], window[:, finite].max(axis=0))
            assert np.isnan(y1[5:5 + n][~finite]).all()
            np.testing.assert_allclose(y1[n + 12:2 * n + 12], window.sum(axis=0) / 3,
                                       rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p, include_pad", [
    ((2, 2), (2, 2), (0, 0), True),    # the common 2x2 pool
    ((2, 3), (3, 3), (1, 1), False),   # stride > kernel: pixels in no window get 0
    ((3, 3), (3, 3), (1, 1), True),    # padded windows: the divisor counts the padding
    ((1, 2), (2, 2), (0, 1), False),
])
def test_avg_backward_for_disjoint_windows_is_one_pass_with_the_same_bits(dtype, k, s, p,
                                                                          include_pad):
    """Disjoint windows (k <= s): one pass, each pixel 0 + its window's dy / divisor;
    bitwise the two-pass kernel (shares first), -0 included, and the reference."""
    rng = np.random.default_rng(sum(k) + 10 * sum(s))
    N, C, H, W = 2, 70, 9, 11
    Ho, Wo = out_hw(np.empty((N, C, H, W)), k, s, p, True)
    dy = rng.standard_normal((N, Ho, Wo, C)).astype(dtype)
    dy[..., ::5] = -0.0
    one = np.empty((N, H, W, C), dtype)
    two = np.empty((N, H, W, C), dtype)
    lanes.avg_pool_bwd_disjoint(dy, *k, *s, *p, include_pad, one)
    lanes.avg_pool_bwd(dy, *k, *s, *p, include_pad, two)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(np.signbit(one), np.signbit(two))
    got = lanes.avg_pool2d_backward_nhwc(dy, (N, H, W, C), k, s, p, True, include_pad)
    np.testing.assert_array_equal(got, one)
    want = ref.avg_pool2d_backward(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)),
                                   (N, C, H, W), k, s, p, True, include_pad)
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)


@numba.njit
def _grad_window_call(ref_, nv, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff):
    # (nv is a literal at each call site below, as the intrinsic requires)
    if nv == 1:
        if ref_:
            lanes.grad_window_reference(1, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff)
        else:
            lanes.grad_window(1, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff)
    elif ref_:
        lanes.grad_window_reference(_NV, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff)
    else:
        lanes.grad_window(_NV, dy, am, hoffs, hcnt, woffs, w0, wcnt, pos, dx, doff)


def _check_gather_against_reference(dtype, rng, run, term, want_bits):
    """A gather intrinsic (run(ref_, nv, g, am, hoffs, hcnt, woffs, w0, wcnt, dx) calls it,
    or its reference with ref_, writing from dx[3]) against its reference, bitwise, for
    one vector and _NV vectors of lanes: 0 to 4 covering windows from the two tables, -0
    and NaN values, nothing written outside the nv vectors; and against the NumPy sum of
    term(g, am, o, n) over the windows o (compared bitwise with want_bits, else by
    value)."""
    one = lanes._LANES32 if dtype == np.float32 else lanes._LANES64
    for nv in (1, _NV):
        n = nv * one
        g = rng.standard_normal(6 * n + 9).astype(dtype)
        g[3::11] = -0.0
        g[5::29] = np.nan
        am = rng.integers(0, 3, g.size).astype(np.int32)  # argmax 1 = this pixel
        woffs = np.array([7, 7 + n, 7 + 2 * n], np.int64)  # windows' lane offsets
        hoffs = np.array([0, 3 * n], np.int64)
        for hcnt, wcnt, w0 in [(0, 1, 0), (1, 1, 0), (1, 2, 1), (2, 2, 0), (2, 1, 2)]:
            out = []
            for ref_ in (True, False):
                dx = np.full(n + 8, 99, dtype)
                run(ref_, nv, g, am, hoffs, hcnt, woffs, w0, wcnt, dx)
                out.append(dx)
            np.testing.assert_array_equal(out[1].view(np.uint8), out[0].view(np.uint8))
            assert (out[1][:3] == 99).all() and (out[1][3 + n:] == 99).all()
            want = np.zeros(n, dtype)
            for i in range(hcnt):
                for j in range(wcnt):
                    want += term(g, am, hoffs[i] + woffs[w0 + j], n)
            if want_bits:
                np.testing.assert_array_equal(out[1][3:3 + n].view(np.uint8),
                                              want.view(np.uint8))
            else:
                np.testing.assert_array_equal(out[1][3:3 + n], want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_window_intrinsic_matches_its_reference(dtype):
    """The vector-IR max-pool gradient gather against its plain-loop twin, bitwise: the
    covering windows in row-major order, lanes whose argmax is elsewhere adding exact
    zeros."""
    _check_gather_against_reference(
        dtype, np.random.default_rng(4),
        lambda ref_, nv, g, am, hoffs, hcnt, woffs, w0, wcnt, dx: _grad_window_call(
            ref_, nv, g, am, hoffs, hcnt, woffs, w0, wcnt, np.int32(1), dx, 3),
        lambda g, am, o, n: np.where(am[o:o + n] == 1, g[o:o + n], 0), want_bits=False)


@numba.njit
def _sum_window_call(ref_, nv, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff):
    if nv == 1:
        if ref_:
            lanes.sum_window_reference(1, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff)
        else:
            lanes.sum_window(1, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff)
    elif ref_:
        lanes.sum_window_reference(_NV, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff)
    else:
        lanes.sum_window(_NV, g, hoffs, hcnt, woffs, w0, wcnt, dx, doff)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_window_intrinsic_matches_its_reference(dtype):
    """The vector-IR average-pool gradient gather against its plain-loop twin, bitwise:
    the windows added from +0 in the tables' order (-0 shares give +0, NaN propagates)."""
    _check_gather_against_reference(
        dtype, np.random.default_rng(6),
        lambda ref_, nv, g, am, hoffs, hcnt, woffs, w0, wcnt, dx: _sum_window_call(
            ref_, nv, g, hoffs, hcnt, woffs, w0, wcnt, dx, 3),
        lambda g, am, o, n: g[o:o + n], want_bits=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p, include_pad", [((3, 3), (2, 2), (1, 1), True),
                                                  ((3, 3), (1, 1), (1, 1), False),
                                                  ((3, 2), (2, 1), (0, 1), True)])
def test_avg_backward_gather_has_the_references_bits(dtype, k, s, p, include_pad):
    """Overlapping windows: the NHWC average-pool backward gathers (sum_window), bitwise
    the reference, -0 shares included, with 70 channels: blocks of _NV vectors, single
    vectors and leftover lanes."""
    rng = np.random.default_rng(7)
    N, C, H, W = 2, 70, 9, 8
    Ho, Wo = out_hw(np.empty((N, C, H, W)), k, s, p, False)
    dy = rng.standard_normal((N, Ho, Wo, C)).astype(dtype)
    dy[..., ::5] = -0.0
    got = lanes.avg_pool2d_backward_nhwc(dy, (N, H, W, C), k, s, p, False, include_pad)
    want = ref.avg_pool2d_backward(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)),
                                   (N, C, H, W), k, s, p, False, include_pad)
    np.testing.assert_array_equal(np.signbit(got.transpose(0, 3, 1, 2)), np.signbit(want))
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, p, ceil", [((3, 3), (2, 2), (1, 1), False),  # overlapping
                                           ((3, 3), (1, 1), (1, 1), False),
                                           ((2, 2), (2, 2), (0, 0), False),  # disjoint
                                           ((2, 3), (3, 3), (1, 1), True),   # gaps, ceil
                                           ((3, 2), (2, 1), (0, 1), True)])
def test_max_backward_gather_has_the_scatters_bits(dtype, k, s, p, ceil):
    """From GATHER_MIN_LANES lanes on, the NHWC max-pool backward gathers: the same bits
    as the per-plane scatter of kernels/cpu/pooling.py (-0 and NaN gradients, ties),
    with 70 channels: blocks of _NV vectors, single vectors and leftover lanes."""
    from minidl.kernels.cpu import pooling as planes
    rng = np.random.default_rng(5)
    C = 70
    assert C >= lanes.GATHER_MIN_LANES
    x = rng.integers(-2, 2, (2, C, 9, 8)).astype(dtype)
    y0, a0 = ref.max_pool2d_forward(x, k, s, p, ceil)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y, am = lanes.max_pool2d_forward_nhwc(xh, k, s, p, ceil)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[..., ::5] = -0.0
    dy[0, 0, 0, 3] = np.nan
    dx = lanes.max_pool2d_backward_nhwc(dy, am, xh.shape, k, s, p)
    want = planes.max_pool2d_backward(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)), a0,
                                      x.shape)
    np.testing.assert_array_equal(np.signbit(dx.transpose(0, 3, 1, 2)), np.signbit(want))
    np.testing.assert_array_equal(dx.transpose(0, 3, 1, 2), want)
