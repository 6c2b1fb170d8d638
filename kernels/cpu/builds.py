"""Kernels compiled twice from one source: parallel for float32, serial for float64.

float64 is minidl's checking precision (gradcheck, the references, the tests' oracles);
float32 is what models train in. A `parallel=True` build costs about twice the compile
time of a serial one (Numba's parfor passes and the outlined gufunc), and the cold
compile of every kernel in both precisions is what a fresh install pays
(benchmarks/compile_time.py; numbers: benchmarks/DESIGN.md, builds.py). So the
memory-bound kernels (pooling, the NCHW direct convolutions and the layout changes
around BLAS) run their float64 calls on a serial build: `prange` there is a plain
`range`, the same loops in the same order, so the same results as a one-thread run of
the parallel build. batchnorm.py and elementwise.py, whose serial builds also take small
float32 inputs, make the same choice through their own `_build` and `serial_precision`.

Usage, in place of `@njit(parallel=True, ...)`:

    @float32_parallel(cache=True, fastmath=False)
    def kernel(x, ...):          # x: the first argument, whose dtype picks the build
        for t in prange(n): ...

Debugging: under NUMBA_DISABLE_JIT=1 both builds are the Python function itself.
"""
import functools
import types

from numba import njit


def serial_precision(a):
    """Whether `a`'s dtype runs on the serial builds: float64, the checking precision."""
    return a.dtype.itemsize == 8


def _twin(fn):
    """A copy of `fn` under its own qualified name: Numba names a kernel's cache files
    after it and does not tell builds with different flags apart in its cache index, so
    the serial build would otherwise load (or overwrite) the parallel one."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_serial"
    twin.__module__, twin.__doc__ = fn.__module__, fn.__doc__
    return twin


class _ByPrecision:
    """Callable kernel: the parallel build for float32 (and any non-float64) first
    arguments, the serial build for float64 ones."""

    def __init__(self, fn, options):
        self.py_func = fn
        self.parallel = njit(parallel=True, **options)(fn)
        self.serial = njit(parallel=False, **options)(_twin(fn))
        functools.update_wrapper(self, fn)

    def __call__(self, x, *args):
        build = self.serial if serial_precision(x) else self.parallel
        return build(x, *args)


def float32_parallel(**options):
    """Decorator: `njit(parallel=True, **options)` for float32 calls and
    `njit(parallel=False, **options)` for float64 calls (see the module docstring)."""
    return lambda fn: _ByPrecision(fn, options)
