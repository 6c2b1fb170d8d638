"""Fused bias + activation kernels: Numba (minidl.kernels.cpu) vs the NumPy reference
(minidl.kernels.reference) and, where installed, torch; plus the activations' edge cases
(overflow-free sigmoid, NaN and infinities) and the Numba-side exp against libm.

As in test_batchnorm.py, MODES force each code path of the Numba kernels on small inputs.
"""
import contextlib
import warnings

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minidl.kernels.cpu import elementwise as cpu
from minidl.kernels.reference import elementwise as ref

SETTINGS = settings(max_examples=20, deadline=None)
ACTS = ["identity", "relu", "sigmoid", "tanh"]
BIG = 1 << 62

MODES = {
    "serial-rows": dict(_SERIAL_BELOW=BIG, _ROWS_MAX_L=BIG),
    "serial-planes": dict(_SERIAL_BELOW=BIG, _ROWS_MAX_L=0),
    "parallel-rows": dict(_SERIAL_BELOW=0, _ROWS_MAX_L=BIG, _CHUNK=5),
    "parallel-planes": dict(_SERIAL_BELOW=0, _ROWS_MAX_L=0, _CHUNK=5),
}


@contextlib.contextmanager
def mode(name):
    saved = {k: getattr(cpu, k) for k in MODES[name]}
    for k, v in MODES[name].items():
        setattr(cpu, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(cpu, k, v)


def assert_close(actual, expected):
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    tol = 1e-4 if expected.dtype == np.float32 else 1e-10
    atol = tol * max(1.0, float(np.nanmax(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=atol)


@st.composite
def cases(draw):
    N, C = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    if draw(st.booleans()):
        shape = (N, C, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    else:
        shape = (N, C)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 5.0, 100.0]))
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    b = None if draw(st.booleans()) else rng.standard_normal(C).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, b, dy, draw(st.sampled_from(ACTS))


@pytest.mark.parametrize("mode_name", list(MODES))
@SETTINGS
@given(case=cases())
def test_cpu_matches_reference(mode_name, case):
    x, b, dy, act = case
    x0 = x.copy()
    expected = ref.bias_act_forward(x, b, act)
    with mode(mode_name):
        y = cpu.bias_act_forward(x, b, act)
        dx = cpu.act_backward(dy, expected, act)
    assert_close(y, expected)
    assert_close(dx, ref.act_backward(dy, expected, act))
    np.testing.assert_array_equal(x, x0)  # inputs untouched...
    assert not np.shares_memory(y, x) and not np.shares_memory(dx, dy)  # ...outputs fresh


@pytest.mark.parametrize("shape", [(64, 16, 28, 28), (256, 96, 7, 7), (2000, 100)])
@pytest.mark.parametrize("act", ACTS)
def test_default_dispatch_matches_reference(shape, act):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    y = ref.bias_act_forward(x, b, act)
    assert_close(cpu.bias_act_forward(x, b, act), y)
    assert_close(cpu.act_backward(x, y, act), ref.act_backward(x, y, act))


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 4, 5), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("mod", [cpu, ref], ids=["numba", "numpy"])
def test_matches_torch(shape, dtype, act, mod):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    f = {"identity": lambda z: z, "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
    ty = f[act](tx + tb.reshape((1, -1) + (1,) * (x.ndim - 2)))
    ty.backward(torch.tensor(dy))
    y = mod.bias_act_forward(x, b, act)
    dz = mod.act_backward(dy, y, act)
    assert_close(y, ty.detach().numpy())
    assert_close(dz, tx.grad.numpy())  # d/dx of act(x + b) = gradient through act
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    assert_close(dz.sum(axis=axes), tb.grad.numpy())


EDGES = [-np.inf, -1e30, -1000.0, -745.0, -720.0, -700.0, -100.0, -30.0, -1e-3, -0.0, 0.0,
         1e-3, 30.0, 100.0, 1000.0, 1e30, np.inf, np.nan]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_extreme_inputs(dtype, act):
    """No overflow (no warnings from the reference, no inf/garbage from Numba), the right
    limits at +-inf, NaN propagated; both agree with float64 math up to tiny values that
    underflow (|result| < 3e-308 may flush to 0)."""
    x = np.array([EDGES], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        expected = ref.bias_act_forward(x, None, act)
    x64 = x.astype(np.float64)[0]
    with np.errstate(over="ignore"):  # the textbook formulas, only for comparison
        textbook = {"relu": np.maximum(x64, 0), "tanh": np.tanh(x64),
                    "sigmoid": 1 / (1 + np.exp(-x64))}[act]
    for mod in (ref, cpu):
        y = mod.bias_act_forward(x, None, act)[0]
        assert np.isnan(y[-1])
        np.testing.assert_allclose(y[:-1], textbook[:-1].astype(dtype), rtol=1e-6, atol=1e-300)
    assert_close(cpu.bias_act_forward(x, None, act), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_tanh_accuracy_against_libm(dtype):
    """The Numba kernels' own exp: within a few ulp of NumPy's, over the whole range."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-40, 40, 20000), rng.uniform(-1e-3, 1e-3, 5000),
                        rng.uniform(-750, 750, 5000), np.logspace(-300, 2.5, 2000),
                        -np.logspace(-300, 2.5, 2000)]).astype(dtype).reshape(1, -1)
    x64 = x.astype(np.float64)
    e = np.exp(-np.abs(x64))
    sig = np.where(x64 >= 0, 1 / (1 + e), e / (1 + e))
    ulp = np.finfo(dtype).eps
    for act, exact in (("sigmoid", sig), ("tanh", np.tanh(x64))):
        y = cpu.bias_act_forward(x, None, act).astype(np.float64)
        # leave out subnormal results (fewer digits) and what the kernels flush to 0
        ok = np.abs(exact) > max(np.finfo(dtype).tiny, 1e-307)
        rel = np.abs(y - exact)[ok] / np.abs(exact)[ok]
        assert rel.max() <= 4 * ulp, (act, rel.max())


def test_unknown_activation_raises():
    x = np.zeros((2, 3), np.float32)
    for mod in (cpu, ref):
        with pytest.raises(ValueError, match="gelu"):
            mod.bias_act_forward(x, None, "gelu")
        with pytest.raises(ValueError, match="gelu"):
            mod.act_backward(x, x, "gelu")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_results_independent_of_thread_count():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 5, 9, 7)) * 3).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    saved = numba.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            with mode("parallel-planes"):
                out.append([cpu.bias_act_forward(x, b, act) for act in ACTS])
    finally:
        numba.set_num_threads(saved)
    for a, c in zip(*out):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu"])
def test_mlp_sized_activations_open_no_parallel_region(act, monkeypatch):
    """The MLP steps' activations (batch up to 256, 100 units; with or without a bias)
    run serially, so that no Numba worker is left spinning beside the BLAS calls around
    them (kernels/__init__.py); larger inputs still run in parallel."""
    def refuse(*args):
        raise AssertionError("a parallel kernel ran")
    monkeypatch.setattr(cpu, "_PARALLEL", (refuse,) * 4)
    x = np.random.default_rng(0).standard_normal((256, 100)).astype(np.float32)
    cpu.bias_act_forward(x, np.zeros(100, np.float32), act)
    cpu.bias_act_forward(x, None, act)
    cpu.act_backward(x, x, act)
    with pytest.raises(AssertionError, match="parallel kernel ran"):
        cpu.bias_act_forward(np.ones((4096, 100), np.float32), None, act)
