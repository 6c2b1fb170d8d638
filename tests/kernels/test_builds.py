"""kernels/cpu/builds.py: one source, a parallel build for float32 and a serial build for
float64, each with its own cache files."""
import numba
import numpy as np
import pytest

from minidl.kernels.cpu import pooling
from minidl.kernels.cpu.builds import _twin, float32_parallel


@float32_parallel(cache=False)
def _scaled_sum(x, out):
    for i in numba.prange(x.shape[0]):
        out[i] = 2 * x[i].sum()


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="needs the compiled builds")
def test_float32_runs_parallel_and_float64_serial():
    x = np.arange(12.0).reshape(4, 3)
    for dt in (np.float32, np.float64):
        out = np.empty(4, dt)
        _scaled_sum(x.astype(dt), out)
        np.testing.assert_array_equal(out, 2 * x.sum(axis=1))
    (sig32,) = _scaled_sum.parallel.signatures
    (sig64,) = _scaled_sum.serial.signatures
    assert sig32[0].dtype == numba.float32 and sig64[0].dtype == numba.float64
    assert _scaled_sum.parallel.targetoptions["parallel"] is True
    assert _scaled_sum.serial.targetoptions.get("parallel", False) is False


def test_builds_have_their_own_cache_names():
    # Numba names cache files after the qualified name and keeps no flags in its index:
    # one name would let the serial build load the parallel one from disk.
    twin = _twin(pooling._max_pool_fwd.py_func)
    assert twin.__qualname__ != pooling._max_pool_fwd.py_func.__qualname__
    assert twin.__code__ is pooling._max_pool_fwd.py_func.__code__


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="needs the compiled builds")
def test_serial_build_matches_parallel_bitwise():
    # Same loops in the same order: the float64 serial build gives the parallel build's
    # bits (run here on float64 through the parallel build directly).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 5, 11, 9))
    y64, a64 = pooling.max_pool2d_forward(x, (3, 3), (2, 2), (1, 1), False)
    P, Ho, Wo = 30, 6, 5
    y = np.empty((P, Ho * Wo))
    a = np.empty((P, Ho * Wo), np.int64)
    pooling._max_pool_fwd.parallel(x.reshape(P, 11, 9), 3, 3, 2, 2, 1, 1, Ho, Wo, y, a,
                                   pooling._n_chunks(P))
    np.testing.assert_array_equal(y.reshape(y64.shape), y64)
    np.testing.assert_array_equal(a.reshape(a64.shape), a64)
