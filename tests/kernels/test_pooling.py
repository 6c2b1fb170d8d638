"""Pooling kernels: Numba (minidl.kernels.cpu) vs NumPy reference
(minidl.kernels.reference), both vs a
naive loop oracle and, where installed, torch.nn.functional.

Tie rule (PyTorch's, matched by both backends): max pooling returns the FIRST maximum in
row-major scan order of the window, never a padding position (padding is -inf, and a
window of real -inf values reports its first real element); a NaN propagates and the
LAST NaN in scan order is the reported index.
"""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidl.kernels.cpu import pooling as cpu
from minidl.kernels.reference import pooling as ref
from minidl.kernels.reference.pooling import pool_output_size

SETTINGS = settings(max_examples=25, deadline=None)


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    tol = 1e-4 if expected.dtype == np.float32 else 1e-10
    atol = tol * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


@st.composite
def pool_cases(draw):
    """A random pooling problem, always with at least one output window per axis."""
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    # H + 2p >= k, else there is no window at all (PyTorch rejects that shape).
    H = max(draw(st.integers(1, 9)), k[0] - 2 * p[0])
    W = max(draw(st.integers(1, 9)), k[1] - 2 * p[1])
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        x = rng.standard_normal((N, C, H, W))
    else:
        x = rng.integers(-2, 3, (N, C, H, W)).astype(float)  # many ties within a window
    return dict(x=x.astype(dtype), kernel_size=k, stride=s, padding=p,
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()), rng=rng)


def _dy(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------- naive oracle (loops over windows)

def naive_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad, mode):
    """Straight from PyTorch's documented definition, one window at a time."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    Ho = pool_output_size(H, kh, sh, ph, ceil_mode)
    Wo = pool_output_size(W, kw, sw, pw, ceil_mode)
    y = np.zeros((N, C, Ho, Wo), dtype=np.float64)
    idx = np.zeros((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    hs, ws = oh * sh - ph, ow * sw - pw
                    cells = [(h, w) for h in range(hs, hs + kh) for w in range(ws, ws + kw)
                             if 0 <= h < H and 0 <= w < W]
                    vals = [float(x[n, c, h, w]) for h, w in cells]
                    if mode == "max":
                        j = int(np.argmax(vals))  # first max
                        y[n, c, oh, ow] = vals[j]
                        idx[n, c, oh, ow] = cells[j][0] * W + cells[j][1]
                    else:
                        if count_include_pad:
                            div = (min(hs + kh, H + ph) - hs) * (min(ws + kw, W + pw) - ws)
                        else:
                            div = len(cells)
                        y[n, c, oh, ow] = sum(vals) / div
    return y.astype(x.dtype), idx


# ------------------------------------------------------------------------------- output size

@pytest.mark.parametrize("args, expected", [
    ((5, 2, 2, 0, False), 2),
    ((5, 2, 2, 0, True), 3),    # ceil: a last, partial window
    ((5, 2, 2, 1, True), 3),    # ceil would give 4, but that window starts in the right padding
    ((6, 3, 2, 1, True), 4),
    ((6, 3, 2, 1, False), 3),
    ((1, 3, 1, 1, False), 1),
    ((28, 3, 2, 1, False), 14),
    ((14, 2, 2, 0, False), 7),
    ((7, 1, 3, 0, True), 3),
])
def test_pool_output_size(args, expected):
    assert pool_output_size(*args) == expected


# ------------------------------------------------------------------------- cpu vs reference

def _pool_args(case):
    return case["kernel_size"], case["stride"], case["padding"], case["ceil_mode"]


@SETTINGS
@given(pool_cases())
def test_max_pool_cpu_matches_reference_and_oracle(case):
    x, rng = case["x"], case["rng"]
    x0 = x.copy()
    y_ref, a_ref = ref.max_pool2d_forward(x, *_pool_args(case))
    y_cpu, a_cpu = cpu.max_pool2d_forward(x, *_pool_args(case))
    y_naive, a_naive = naive_pool(x, *_pool_args(case), False, "max")
    np.testing.assert_array_equal(x, x0)  # inputs are never modified
    for y, a in [(y_ref, a_ref), (y_cpu, a_cpu)]:
        assert y.dtype == x.dtype and a.dtype == np.int64
        # Selection is exact: same values, same (first-max) indices.
        np.testing.assert_array_equal(y, y_naive)
        np.testing.assert_array_equal(a, a_naive)

    dy = _dy(rng, y_ref.shape, x.dtype)
    dx_ref = ref.max_pool2d_backward(dy, a_ref, x.shape)
    dx_cpu = cpu.max_pool2d_backward(dy, a_cpu, x.shape)
    assert_close(dx_cpu, dx_ref)
    # For a fixed argmax, max pooling is a linear selection and backward its adjoint.
    lhs = np.vdot(dy.astype(np.float64), y_ref.astype(np.float64))
    rhs = np.vdot(dx_ref.astype(np.float64), x.astype(np.float64))
    assert np.isclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(pool_cases())
def test_avg_pool_cpu_matches_reference_and_oracle(case):
    x, rng, cip = case["x"], case["rng"], case["count_include_pad"]
    x0 = x.copy()
    y_ref = ref.avg_pool2d_forward(x, *_pool_args(case), cip)
    y_cpu = cpu.avg_pool2d_forward(x, *_pool_args(case), cip)
    np.testing.assert_array_equal(x, x0)
    assert_close(y_cpu, y_ref)
    assert_close(y_ref, naive_pool(x, *_pool_args(case), cip, "avg")[0])

    dy = _dy(rng, y_ref.shape, x.dtype)
    dy0 = dy.copy()
    dx_ref = ref.avg_pool2d_backward(dy, x.shape, *_pool_args(case), cip)
    dx_cpu = cpu.avg_pool2d_backward(dy, x.shape, *_pool_args(case), cip)
    np.testing.assert_array_equal(dy, dy0)
    assert_close(dx_cpu, dx_ref)
    # Average pooling is linear, so backward must be its adjoint: <dy, A x> == <A^T dy, x>.
    lhs = np.vdot(dy.astype(np.float64), y_ref.astype(np.float64))
    rhs = np.vdot(dx_ref.astype(np.float64), x.astype(np.float64))
    assert np.isclose(lhs, rhs, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_global_avg_pool_cpu_matches_reference(N, C, H, W, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((N, C, H, W)) + 3.0).astype(dtype)  # nonzero mean
    y_ref = ref.global_avg_pool2d_forward(x)
    y_cpu = cpu.global_avg_pool2d_forward(x)
    assert y_ref.shape == (N, C)
    assert_close(y_cpu, y_ref)
    assert_close(y_ref, x.astype(np.float64).mean(axis=(2, 3)).astype(dtype))

    dy = _dy(rng, (N, C), dtype)
    dx_ref = ref.global_avg_pool2d_backward(dy, x.shape)
    dx_cpu = cpu.global_avg_pool2d_backward(dy, x.shape)
    assert dx_ref.shape == x.shape and dx_ref.flags.c_contiguous
    assert_close(dx_cpu, dx_ref)
    assert_close(dx_ref, np.broadcast_to((dy / dtype(H * W))[:, :, None, None], x.shape).copy())


# ------------------------------------------------------------ overlapping windows, ties, NaN

BACKENDS = [ref, cpu]


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_backward_accumulates_overlapping_windows(mod, stride):
    # A ramp puts the max of every 3x3 window at its bottom-right corner; with stride < 3
    # windows share corners, so those elements must receive several gradients.
    x = np.arange(2 * 7 * 7, dtype=np.float64).reshape(1, 2, 7, 7)
    y, a = mod.max_pool2d_forward(x, (3, 3), (stride, stride), (0, 0), False)
    dx = mod.max_pool2d_backward(np.ones_like(y), a, x.shape)
    # Counts of windows whose bottom-right corner is each element, computed directly.
    expected = np.zeros((7, 7))
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            expected[oh * stride + 2, ow * stride + 2] += 1
    np.testing.assert_array_equal(dx[0, 0], expected)
    np.testing.assert_array_equal(dx[0, 1], expected)

    # Interior maxima of a peaked input are shared by overlapping windows: counts > 1.
    x = np.zeros((1, 1, 7, 7))
    x[0, 0, 3, 3] = 1.0
    y, a = mod.max_pool2d_forward(x, (3, 3), (stride, stride), (1, 1), False)
    dx = mod.max_pool2d_backward(np.ones_like(y), a, x.shape)
    assert dx[0, 0, 3, 3] == (9 if stride == 1 else 4)
    assert dx.sum() == y.size


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_ties_take_first_valid_element(mod, dtype):
    for fill in [1.5, -np.inf]:
        x = np.full((1, 1, 4, 5), fill, dtype=dtype)
        y, a = mod.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), True)
        assert np.all(y == fill)
        # Window (oh, ow) starts at (2*oh - 1, 2*ow - 1); its first real element is that
        # corner clipped into the input: padding never wins, even against -inf.
        Ho, Wo = y.shape[2:]
        expected = np.array([[max(2 * oh - 1, 0) * 5 + max(2 * ow - 1, 0) for ow in range(Wo)]
                             for oh in range(Ho)])
        np.testing.assert_array_equal(a[0, 0], expected)


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
def test_max_pool_nan_propagates_last_nan_wins(mod):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 1, 0] = np.nan
    y, a = mod.max_pool2d_forward(x, (2, 2), (2, 2), (0, 0), False)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, :]).any()
    assert a[0, 0, 0, 0] == 4  # (1, 0): the later NaN in scan order
    np.testing.assert_array_equal(a[0, 0, 1], [13, 15])


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
def test_avg_pool_ceil_mode_divisor(mod):
    # H = W = 6, k3 s2 p1, ceil_mode: 4 windows per axis; the last one covers rows 5..7,
    # i.e. real row 5, padding row 6 and row 7 beyond the padded extent [-1, 7).
    x = np.ones((1, 1, 6, 6))
    y = mod.avg_pool2d_forward(x, (3, 3), (2, 2), (1, 1), True, True)
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 3, 3] == 1 / 4      # divisor clipped to the padded extent: 2 x 2
    assert y[0, 0, 0, 0] == 4 / 9      # a full window with one padded row and column
    assert y[0, 0, 1, 1] == 1.0
    y = mod.avg_pool2d_forward(x, (3, 3), (2, 2), (1, 1), True, False)
    np.testing.assert_array_equal(y, np.ones((1, 1, 4, 4)))  # only real elements count

    dx = mod.avg_pool2d_backward(np.ones((1, 1, 4, 4)), x.shape, (3, 3), (2, 2), (1, 1),
                                 True, True)
    assert dx[0, 0, 5, 5] == 1 / 4 + 2 * (1 / 6) + 1 / 9  # windows (3,3), (2,3), (3,2), (2,2)


def test_results_do_not_depend_on_thread_count():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 11, 9)).astype(np.float32)
    args = ((3, 3), (2, 2), (1, 1), True)

    def run_all():
        y, a = cpu.max_pool2d_forward(x, *args)
        dy = np.ones_like(y)
        return [y, a, cpu.max_pool2d_backward(dy, a, x.shape),
                cpu.avg_pool2d_forward(x, *args, False),
                cpu.avg_pool2d_backward(dy, x.shape, *args, False),
                cpu.global_avg_pool2d_forward(x),
                cpu.global_avg_pool2d_backward(y[:, :, 0, 0], x.shape)]

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = run_all()
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = run_all()
    finally:
        numba.set_num_threads(before)
    for r1, r2 in zip(one, two):
        np.testing.assert_array_equal(r1, r2)  # planes never mix, so results are bitwise equal


# ---------------------------------------------------------------------------- vs torch

def _torch_leaf(torch, x):
    return torch.tensor(x, requires_grad=True)


def _torch_kwargs(case):
    # Keywords: F.max_pool2d's 4th positional parameter is dilation, not ceil_mode.
    return dict(kernel_size=case["kernel_size"], stride=case["stride"],
                padding=case["padding"], ceil_mode=case["ceil_mode"])


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
@SETTINGS
@given(case=pool_cases())
def test_max_pool_matches_torch(mod, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, rng = case["x"], case["rng"]
    xt = _torch_leaf(torch, x)
    yt, it = F.max_pool2d(xt, **_torch_kwargs(case), return_indices=True)
    y, a = mod.max_pool2d_forward(x, *_pool_args(case))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(a, it.numpy())  # same tie-breaking as PyTorch

    dy = _dy(rng, y.shape, x.dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(mod.max_pool2d_backward(dy, a, x.shape), xt.grad.numpy())


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
@SETTINGS
@given(case=pool_cases())
def test_avg_pool_matches_torch(mod, case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, rng, cip = case["x"], case["rng"], case["count_include_pad"]
    xt = _torch_leaf(torch, x)
    yt = F.avg_pool2d(xt, **_torch_kwargs(case), count_include_pad=cip)
    y = mod.avg_pool2d_forward(x, *_pool_args(case), cip)
    assert_close(y, yt.detach().numpy())

    dy = _dy(rng, y.shape, x.dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(mod.avg_pool2d_backward(dy, x.shape, *_pool_args(case), cip), xt.grad.numpy())


@pytest.mark.parametrize("mod", BACKENDS, ids=["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (4, 16, 8, 8)])
def test_global_avg_pool_matches_torch(mod, dtype, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    xt = _torch_leaf(torch, x)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1).flatten(1)
    assert_close(mod.global_avg_pool2d_forward(x), yt.detach().numpy())
    dy = _dy(rng, shape[:2], dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(mod.global_avg_pool2d_backward(dy, x.shape), xt.grad.numpy())


def test_max_pool_nan_and_ties_match_torch():
    torch = pytest.importorskip("torch")
    x = np.full((1, 1, 5, 5), 2.0)
    x[0, 0, 1, 1] = x[0, 0, 1, 3] = x[0, 0, 2, 2] = np.nan
    x[0, 0, 4, :] = -np.inf
    for args in [((3, 3), (1, 1), (1, 1), False), ((2, 2), (2, 2), (1, 1), True)]:
        k, s, p, ceil = args
        yt, it = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=ceil,
                                                return_indices=True)
        for mod in BACKENDS:
            y, a = mod.max_pool2d_forward(x, *args)
            np.testing.assert_array_equal(y, yt.numpy())  # NaNs compare equal here
            np.testing.assert_array_equal(a, it.numpy())


# ------------------------------------------------- realistic planes (the vectorized fast path)

# Planes large enough that the per-offset loops of minidl.kernels.cpu run full vector iterations
# plus a remainder: strides 1 and 2 take the constant-stride paths, 3 the generic one;
# k > s leaves garbage windows per scratch row, k <= s none (the one-loop compaction).
LARGE_CASES = [
    ((2, 3, 28, 28), (3, 3), (2, 2), (1, 1), False),
    ((2, 3, 14, 14), (2, 2), (2, 2), (0, 0), False),
    ((1, 2, 17, 23), (3, 3), (1, 1), (1, 1), True),
    ((2, 1, 13, 11), (2, 3), (3, 2), (1, 1), True),
    ((1, 3, 15, 15), (3, 2), (2, 3), (1, 0), True),
    ((3, 2, 9, 31), (1, 1), (1, 1), (0, 0), False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, k, s, p, ceil", LARGE_CASES)
def test_pool_cpu_matches_reference_on_large_planes(shape, k, s, p, ceil, dtype):
    rng = np.random.default_rng(sum(shape) + 7 * k[0] + s[1])
    x = rng.integers(-3, 4, shape).astype(dtype)  # ties everywhere
    x.flat[rng.choice(x.size, 5, replace=False)] = np.nan
    x.flat[rng.choice(x.size, 5, replace=False)] = -np.inf
    x[0, 0, :4, :4] = -np.inf  # windows with no finite element, some at the padded border
    y_ref, a_ref = ref.max_pool2d_forward(x, k, s, p, ceil)
    y_cpu, a_cpu = cpu.max_pool2d_forward(x, k, s, p, ceil)
    np.testing.assert_array_equal(y_cpu, y_ref)  # NaNs compare equal here
    np.testing.assert_array_equal(a_cpu, a_ref)

    dy = _dy(rng, y_ref.shape, dtype)
    assert_close(cpu.max_pool2d_backward(dy, a_cpu, shape),
                 ref.max_pool2d_backward(dy, a_ref, shape))

    x = rng.standard_normal(shape).astype(dtype)
    for cip in (False, True):
        assert_close(cpu.avg_pool2d_forward(x, k, s, p, ceil, cip),
                     ref.avg_pool2d_forward(x, k, s, p, ceil, cip))
        assert_close(cpu.avg_pool2d_backward(dy, shape, k, s, p, ceil, cip),
                     ref.avg_pool2d_backward(dy, shape, k, s, p, ceil, cip))
