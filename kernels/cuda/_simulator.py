"""A fix for numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1), applied only there.

The simulator runs each CUDA thread of a block as a Python thread and gives a block
its shared arrays through `FakeCUDAShared.array`, which looks the array up by the
caller's (file, line) and creates it on first use:

    res = self._allocations.get(caller)
    if res is None:
        res = np.empty(shape, dtype)            # <- another thread can get here too
        self._allocations[caller] = res

Two threads that both find nothing create two arrays; each writes its partial sum
into its own, and the block's tree reduction reads a mix. That made minidl's CUDA
tests (batch norm, reductions, GEMM) fail about one run in ten, more under a short
GIL switch interval or a busy garbage collector: a race in the simulator, not in the
kernels (the GPU gives every thread of a block the same shared array).

`patch_shared_arrays()` replaces the method with the same lookup done under a lock.
It keys on the caller's frame directly (`sys._getframe(1)`), which is also much
cheaper than the original's `traceback.extract_stack`. tests/test_cuda.py checks
that a block reduction gives the same answer on every launch.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

_LOCK = threading.Lock()


def patch_shared_arrays() -> bool:
    """Make the simulator's shared-array lookup thread-safe; False if this numba-cuda
    has no such method to patch (a newer layout), True once patched."""
    try:
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
    except ImportError:  # pragma: no cover - numba-cuda moved it
        return False
    if getattr(FakeCUDAShared.array, "_minidl_locked", False):
        return True
    original = FakeCUDAShared.array

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or not hasattr(self, "_allocations"):
            return original(self, shape, dtype, alignment)  # dynamic shared memory
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with _LOCK:
            res = self._allocations.get(caller)
            if res is None:
                from numba.core import types
                from numba.np import numpy_support
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array._minidl_locked = True
    FakeCUDAShared.array = array
    return True
