"""Batch-norm kernels: Numba (minidl.kernels.cpu) vs the NumPy reference
(minidl.kernels.reference); the
reference vs finite differences of itself; both vs torch.nn.functional.batch_norm where
torch is installed; and the numerical edge cases (constant channels, large means).

The Numba kernels choose among code paths by size and shape (serial or parallel, channel
planes or rows, fused or split, with pieces); the MODES below force each path on small
inputs by setting the module's (Python-level) thresholds.
"""
import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidl.kernels.cpu import batchnorm as cpu
from minidl.kernels.reference import batchnorm as ref

SETTINGS = settings(max_examples=15, deadline=None)
BIG = 1 << 62

MODES = {
    "serial-rows": dict(_SERIAL_BELOW=BIG, _ROWS_MAX_L=BIG, _PIECE=7),
    "serial-planes": dict(_SERIAL_BELOW=BIG, _ROWS_MAX_L=0, _PIECE=7, _LANES_MAX=5),
    "parallel-rows": dict(_SERIAL_BELOW=0, _ROWS_MAX_L_PARALLEL=BIG, _PIECE=7),
    "parallel-fused": dict(_SERIAL_BELOW=0, _ROWS_MAX_L_PARALLEL=0, _PIECE=7, _LANES_MAX=5,
                           _FUSE_MIN_C_PER_THREAD=0),
    "parallel-split": dict(_SERIAL_BELOW=0, _ROWS_MAX_L_PARALLEL=0, _PIECE=7, _LANES_MAX=5,
                           _FUSE_MIN_C_PER_THREAD=BIG),
}


@contextlib.contextmanager
def mode(name):
    """Set the cpu module's dispatch thresholds for the duration of a block."""
    saved = {k: getattr(cpu, k) for k in MODES[name]}
    for k, v in MODES[name].items():
        setattr(cpu, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(cpu, k, v)


def assert_close(actual, expected, tol=None):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    tol = tol or (1e-4 if expected.dtype == np.float32 else 1e-10)
    atol = tol * max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


def make_case(rng, shape, dtype, loc=0.0, scale=1.0):
    C = shape[1]
    return dict(
        x=rng.normal(loc, scale, shape).astype(dtype),
        dy=rng.standard_normal(shape).astype(dtype),
        gamma=(rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)).astype(dtype),
        beta=rng.standard_normal(C).astype(dtype),
        running_mean=rng.normal(loc, scale, C).astype(dtype),
        running_var=(rng.uniform(0.2, 3.0, C) * scale**2).astype(dtype),
    )


@st.composite
def cases(draw):
    N, C = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    if draw(st.booleans()):
        shape = (N, C, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    else:
        shape = (N, C)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    loc = draw(st.sampled_from([0.0, 3.0, -50.0]))
    scale = draw(st.sampled_from([1.0, 0.01, 20.0]))
    case = make_case(rng, shape, dtype, loc, scale)
    case["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    return case


def run_all(mod, c):
    """All four kernels of `mod` on case c; the backward passes get the reference's
    forward statistics so that both modules differentiate at the same point."""
    y, mean, var = mod.batch_norm_train_forward(c["x"], c["gamma"], c["beta"], c["eps"])
    _, rmean, rvar = ref.batch_norm_train_forward(c["x"], c["gamma"], c["beta"], c["eps"])
    return dict(
        y=y, mean=mean, var=var,
        train_bwd=mod.batch_norm_train_backward(c["dy"], c["x"], c["gamma"], rmean, rvar, c["eps"]),
        eval_y=mod.batch_norm_eval_forward(c["x"], c["gamma"], c["beta"], c["running_mean"],
                                           c["running_var"], c["eps"]),
        eval_bwd=mod.batch_norm_eval_backward(c["dy"], c["x"], c["gamma"], c["running_mean"],
                                              c["running_var"], c["eps"]),
    )


def compare(out, expected):
    for key in ("y", "mean", "var", "eval_y"):
        assert_close(out[key], expected[key])
    for key in ("train_bwd", "eval_bwd"):
        for a, e in zip(out[key], expected[key]):
            assert_close(a, e)


# ----------------------------------------------------------------- numba vs reference

@pytest.mark.parametrize("mode_name", list(MODES))
@SETTINGS
@given(c=cases())
def test_cpu_matches_reference(mode_name, c):
    before = {k: v.copy() for k, v in c.items() if isinstance(v, np.ndarray)}
    with mode(mode_name):
        out = run_all(cpu, c)
    expected = run_all(ref, c)
    compare(out, expected)
    for k, v in before.items():  # kernels never write to their inputs
        np.testing.assert_array_equal(c[k], v)
    # N = 1 with (N, C) input is a batch of one per channel: var 0, yet all finite
    for arr in [out["y"], *out["train_bwd"]]:
        assert np.all(np.isfinite(arr))


@pytest.mark.parametrize("shape", [(16, 16, 28, 28), (256, 32, 5, 5), (2000, 80), (2, 3, 150, 151)])
def test_default_dispatch_matches_reference(shape):
    """The thresholds as shipped, on inputs large enough to take the parallel paths."""
    c = make_case(np.random.default_rng(1), shape, np.float32, 1.0, 2.0)
    c["eps"] = 1e-5
    compare(run_all(cpu, c), run_all(ref, c))


# ----------------------------------------------------------- the oracle checks itself

def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar f() with respect to array a (perturbed in place)."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 3), (1, 2, 3, 2), (4, 1)])
@pytest.mark.parametrize("train", [True, False])
def test_reference_backward_matches_finite_differences(shape, train):
    c = make_case(np.random.default_rng(2), shape, np.float64, 0.5, 1.5)
    x, gamma, beta, dy, eps = c["x"], c["gamma"], c["beta"], c["dy"], 1e-3
    rm, rv = c["running_mean"], c["running_var"]

    def loss():  # <dy, y>: its gradient is the backward of dy
        if train:
            y = ref.batch_norm_train_forward(x, gamma, beta, eps)[0]
        else:
            y = ref.batch_norm_eval_forward(x, gamma, beta, rm, rv, eps)
        return float(np.sum(dy * y))

    if train:
        _, mean, var = ref.batch_norm_train_forward(x, gamma, beta, eps)
        dx, dgamma, dbeta = ref.batch_norm_train_backward(dy, x, gamma, mean, var, eps)
    else:
        dx, dgamma, dbeta = ref.batch_norm_eval_backward(dy, x, gamma, rm, rv, eps)
    for analytic, wrt in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        np.testing.assert_allclose(analytic, numeric_grad(loss, wrt), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------- torch as oracle

TORCH_SHAPES = [(4, 3), (1, 3, 5, 7), (6, 1, 4, 5), (3, 4, 7, 9), (2, 5, 1, 1), (64, 8, 9, 9)]


@pytest.mark.parametrize("shape", TORCH_SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mod", [cpu, ref], ids=["numba", "numpy"])
def test_matches_torch(shape, dtype, training, mod):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    c = make_case(np.random.default_rng(3), shape, dtype, -2.0, 3.0)
    eps = 1e-5
    t = {k: torch.tensor(v, requires_grad=k in ("x", "gamma", "beta")) for k, v in c.items()}
    y_t = F.batch_norm(t["x"], None if training else t["running_mean"],
                       None if training else t["running_var"], t["gamma"], t["beta"],
                       training=training, eps=eps)
    y_t.backward(t["dy"])
    if training:
        y, mean, var = mod.batch_norm_train_forward(c["x"], c["gamma"], c["beta"], eps)
        grads = mod.batch_norm_train_backward(c["dy"], c["x"], c["gamma"], mean, var, eps)
        axes = (0,) if len(shape) == 2 else (0, 2, 3)
        var_t, mean_t = torch.var_mean(t["x"].detach(), dim=axes, unbiased=False)
        assert_close(mean, mean_t.numpy())
        assert_close(var, var_t.numpy())
    else:
        stats = (c["running_mean"], c["running_var"], eps)
        y = mod.batch_norm_eval_forward(c["x"], c["gamma"], c["beta"], *stats)
        grads = mod.batch_norm_eval_backward(c["dy"], c["x"], c["gamma"], *stats)
    assert_close(y, y_t.detach().numpy())
    for ours, name in zip(grads, ("x", "gamma", "beta")):
        assert_close(ours, t[name].grad.numpy())


# ------------------------------------------------------------------- numerical edges

@pytest.mark.parametrize("shape, groups", [((64, 16), 8), ((50, 16), 5), ((13, 16), 1),
                                           ((4096, 32), 1), ((4096, 8), 16), ((30, 3), 30),
                                           ((1, 7), 1), ((40, 33), 1), ((8, 16, 1, 1), 8),
                                           ((8, 16, 2, 2), 1)])
@pytest.mark.parametrize("mode_name", ["serial-rows", "parallel-rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_rows_match_reference(shape, groups, mode_name, dtype):
    """(M, C) input with few channels runs G of its rows as one (G the largest divisor
    of M up to 128 // C; prime M: none), and so does (N, C, 1, 1) input, (N, C) in
    memory; larger maps are not packed."""
    c = make_case(np.random.default_rng(3), shape, dtype, 2.0, 3.0)
    c["eps"] = 1e-5
    x3, rows = cpu._layout(c["x"])
    assert rows and cpu._pack(x3).shape[1] == groups * shape[1]
    with mode(mode_name):
        out = run_all(cpu, c)
    compare(out, run_all(ref, c))


@pytest.mark.parametrize("shape", [(6, 3), (1, 3), (4, 3, 5, 3), (1, 3, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode_name", ["serial-rows", "serial-planes", "parallel-split"])
def test_constant_channel_is_finite_and_gives_beta(shape, dtype, mode_name):
    c = make_case(np.random.default_rng(4), shape, dtype)
    x = c["x"]
    x[:, 1] = 3.7  # channel 1 has variance 0 (so has every channel when N*H*W = 1)
    with mode(mode_name):
        for mod in (cpu, ref):
            y, mean, var = mod.batch_norm_train_forward(x, c["gamma"], c["beta"], 1e-5)
            grads = mod.batch_norm_train_backward(c["dy"], x, c["gamma"], mean, var, 1e-5)
            assert abs(var[1]) <= 1e-12 and mean[1] == pytest.approx(3.7, rel=1e-6)
            np.testing.assert_allclose(y[:, 1], np.broadcast_to(c["beta"][1], y[:, 1].shape),
                                       rtol=0, atol=1e-6)
            for arr in (y, *grads):
                assert np.all(np.isfinite(arr))
    # the shifted sums of the Numba kernels (x - x[0] = 0) make this exact there
    with mode(mode_name):
        y, mean, var = cpu.batch_norm_train_forward(x, c["gamma"], c["beta"], 1e-5)
    assert var[1] == 0 and mean[1] == dtype(3.7)
    assert np.all(y[:, 1] == c["beta"][1])


@pytest.mark.parametrize("shape", [(16, 3, 12, 12), (512, 4), (2, 2, 64, 65)])
@pytest.mark.parametrize("mode_name", list(MODES))
def test_large_mean_float32(shape, mode_name):
    """Mean 1e4, std 1, float32: the normalized output must match float64 math on the same
    float32 inputs (E[x^2] - E[x]^2 in float32 would lose every digit of the variance)."""
    rng = np.random.default_rng(5)
    c = make_case(rng, shape, np.float32, 1e4, 1.0)
    x, gamma, beta = c["x"], c["gamma"], c["beta"]
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    exact = ref.batch_norm_train_forward(x.astype(np.float64), gamma.astype(np.float64),
                                         beta.astype(np.float64), 1e-5)
    naive_var = (x * x).mean(axis=axes) - x.mean(axis=axes) ** 2
    assert np.max(np.abs(naive_var - exact[2])) > 0.05  # the trap is real
    with mode(mode_name):
        for mod in (cpu, ref):
            y, mean, var = mod.batch_norm_train_forward(x, gamma, beta, 1e-5)
            assert_close(y, exact[0].astype(np.float32))
            assert_close(var, exact[2].astype(np.float32))
            np.testing.assert_allclose(mean, exact[1], rtol=1e-7)


# ------------------------------------------------------------------------ determinism

@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("shape", [(5, 4, 9, 7), (3, 12, 6, 6), (37, 6), (2, 3, 40, 41),
                                   (16384, 16)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_independent_of_thread_count(shape, dtype):
    """Pieces and their summation order depend on the shape only, so 1 and 2 threads give
    bitwise equal results, even where the thread count switches fused/split (C = 4)."""
    c = make_case(np.random.default_rng(6), shape, dtype, 1.0, 2.0)
    c["eps"] = 1e-5
    results = []
    saved = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            with mode("parallel-fused" if len(shape) == 2 else "parallel-split"):
                cpu._FUSE_MIN_C_PER_THREAD = 3  # C = 4: fused on 1 thread, split on 2
                results.append(run_all(cpu, c))
    finally:
        numba.set_num_threads(saved)
    a, b = results
    for key in ("y", "mean", "var", "eval_y"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("train_bwd", "eval_bwd"):
        for u, v in zip(a[key], b[key]):
            np.testing.assert_array_equal(u, v)


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="counts the compiled parallel regions")
@pytest.mark.parametrize("kernel, args", [
    (0, "plane"), (1, "plane"), (2, "rows"), (3, "rows")])
def test_parallel_kernels_open_two_parallel_regions(kernel, args):
    """Each parallel region wakes the thread team (tens of microseconds on a VM), so a
    kernel has only its two prange loops: no np.zeros or small prange that parallel=True
    would make regions of their own (the row kernels had five and seven)."""
    fn = numba.njit(parallel=True, cache=False)(cpu._PARALLEL[kernel].py_func)
    x = np.ones((4, 3, 5), np.float32)
    g = np.ones(3, np.float32)
    plan = (1, 2, False) if args == "plane" else (2, 3)  # rows: (T, C)
    if kernel in (0, 2):  # forward: (x, gamma, beta, mean, var, eps, train, plan..., relu)
        call = (x, g, g, g, g, 1e-5, True) + plan + (True,)
    else:  # backward: (dy, x, gamma, mean, var, eps, train, plan...)
        call = (x, x, g, g, g, 1e-5, True) + plan
    fn(*call)
    parfors = fn.overloads[fn.signatures[0]].metadata["parfor_diagnostics"].get_parfors()
    assert len(parfors) == 2


# --- a ReLU fused into batch norm (relu=True / relu_out) --------------------------------

@pytest.mark.parametrize("mode_name", list(MODES))
@pytest.mark.parametrize("shape", [(9, 5), (5, 3, 4, 3), (1, 2, 1, 1), (3, 4, 7, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("train", [True, False])
def test_fused_relu_is_bitwise_bn_then_relu(mode_name, shape, dtype, train):
    """relu(bn(x)) in one kernel gives bitwise what the ReLU kernels give after the plain
    batch norm, forward and backward, on every code path; NaN and exact zeros included
    (the mask is relu_out > 0: a NaN output passes no gradient, as in act_backward)."""
    from minidl.kernels.cpu import elementwise
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::7] = 0.0
    if x.size > 3:
        x.reshape(-1)[3] = np.nan
    g = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm = rng.standard_normal(shape[1]).astype(dtype)
    rv = rng.uniform(0.5, 2, shape[1]).astype(dtype)
    with mode(mode_name):
        if train:
            y, mean, var = cpu.batch_norm_train_forward(x, g, b, 1e-5)
            yf, mf, vf = cpu.batch_norm_train_forward(x, g, b, 1e-5, relu=True)
            np.testing.assert_array_equal(mf, mean)
            np.testing.assert_array_equal(vf, var)
        else:
            mean, var = rm, rv
            y = cpu.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5)
            yf = cpu.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5, relu=True)
        relu_y = elementwise.bias_act_forward(y, None, "relu")
        np.testing.assert_array_equal(yf, relu_y)
        bwd = cpu.batch_norm_train_backward if train else cpu.batch_norm_eval_backward
        fused = bwd(dy, x, g, mean, var, 1e-5, relu_out=yf)
        plain = bwd(elementwise.act_backward(dy, yf, "relu"), x, g, mean, var, 1e-5)
    for u, v in zip(fused, plain):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4, 4)])
@pytest.mark.parametrize("train", [True, False])
def test_fused_relu_matches_reference(shape, train):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    g, b = rng.uniform(0.5, 2.0, shape[1]), rng.standard_normal(shape[1])
    dy = rng.standard_normal(shape)
    rm, rv = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    out = {}
    for mod in (cpu, ref):
        if train:
            y, mean, var = mod.batch_norm_train_forward(x, g, b, 1e-5, relu=True)
            grads = mod.batch_norm_train_backward(dy, x, g, mean, var, 1e-5, relu_out=y)
        else:
            y = mod.batch_norm_eval_forward(x, g, b, rm, rv, 1e-5, relu=True)
            grads = mod.batch_norm_eval_backward(dy, x, g, rm, rv, 1e-5, relu_out=y)
        out[mod] = (y,) + tuple(grads)
    assert (out[ref][0] == 0).any() and (out[ref][0] > 0).any()  # the mask matters
    for u, v in zip(out[cpu], out[ref]):
        np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-12)
