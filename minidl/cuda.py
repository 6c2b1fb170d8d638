"""`minidl.cuda`: is a GPU usable, and moving tensors between devices. PyTorch's names:

    minidl.cuda.is_available()        True when numba-cuda finds a GPU (or its simulator)
    minidl.cuda.unavailable_reason()  None, or one line saying why not
    minidl.device("cuda")             a device name; equal to the string "cuda"
    t.to("cuda"), t.cuda(), t.cpu()   differentiable copies between devices

Device data is a `minidl.kernels.cuda.array.CudaArray`; numba.cuda is imported only when a
tensor goes to the GPU or is_available() is asked, so the CPU path never pays for it.
With NUMBA_ENABLE_CUDASIM=1 in the environment numba-cuda runs its CUDA simulator
(every thread in Python: correct and slow, for tests on machines without a GPU).
"""
from __future__ import annotations

import importlib.util

import numpy as np

_probe = None


class CudaUnavailableError(RuntimeError):
    pass


def _check() -> tuple:
    """(usable, reason, simulator), computed once."""
    global _probe
    if _probe is None:
        if importlib.util.find_spec("numba_cuda") is None:
            _probe = (False, "numba-cuda is not installed (pip install 'minidl[cuda]')", False)
        else:
            try:
                from numba import cuda
                if _simulating(cuda):
                    _probe = (True, None, True)
                elif cuda.is_available():
                    _probe = (True, None, False)
                else:
                    try:
                        cuda.current_context()
                        reason = "numba-cuda found no usable GPU"
                    except Exception as e:  # the driver's own words, first line
                        text = " ".join(str(e).split())
                        reason = f"no usable GPU: {text[:160]}"
                    _probe = (False, reason, False)
            except Exception as e:
                _probe = (False, f"numba-cuda failed to import: {type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:160]}", False)
    return _probe


def _simulating(cuda) -> bool:
    from numba.cuda.core import config
    return bool(config.ENABLE_CUDASIM)


def is_available() -> bool:
    return _check()[0]


def unavailable_reason():
    """None when CUDA is usable, else one line saying why not."""
    return _check()[1]


def is_simulator() -> bool:
    return _check()[2]


def status() -> str:
    """One line for `minidl info`."""
    ok, reason, sim = _check()
    if not ok:
        return f"not available ({reason})"
    if sim:
        return "available (numba-cuda CUDA simulator, NUMBA_ENABLE_CUDASIM=1: slow)"
    from numba import cuda
    name = cuda.get_current_device().name
    return f"available ({name.decode(errors='replace') if isinstance(name, bytes) else name})"


def require(what: str = "cuda") -> None:
    """Raise one clear line when CUDA cannot be used."""
    ok, reason, _ = _check()
    if not ok:
        raise CudaUnavailableError(f"{what}: CUDA is not available: {reason}")


def device_count() -> int:
    if not is_available():
        return 0
    from numba import cuda
    return len(cuda.gpus)


def synchronize() -> None:
    if is_available():
        from numba import cuda
        cuda.synchronize()


def memory_stats() -> dict:
    """The caching allocator's counters: driver allocations so far, bytes held free."""
    if not is_available():
        return {"driver_allocations": 0, "cached_bytes": 0}
    from minidl.kernels.cuda.array import ALLOCATOR
    return {"driver_allocations": ALLOCATOR.driver_allocations,
            "cached_bytes": ALLOCATOR.cached_bytes}


def empty_cache() -> None:
    if is_available():
        from minidl.kernels.cuda.array import ALLOCATOR
        ALLOCATOR.empty_cache()


# ---- devices ----------------------------------------------------------------------------

class device(str):
    """A device name with PyTorch's spelling: device("cuda"), device("cuda:0"),
    device("cpu"). It compares equal to its type string ("cuda" == device("cuda:0"))."""

    def __new__(cls, type_or_name="cpu", index=None):
        name = str(type_or_name)
        kind, _, idx = name.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: expected 'cpu' or 'cuda', got {name!r}")
        if idx not in ("", "0") or index not in (None, 0):
            raise ValueError(f"device: only one GPU (cuda:0) is supported, got {name!r}"
                             + (f" index {index}" if index is not None else ""))
        return super().__new__(cls, kind)

    @property
    def type(self) -> str:
        return str(self)

    @property
    def index(self):
        return 0 if self == "cuda" else None

    def __repr__(self):
        return f"device(type='{str(self)}')"


def canonical(d) -> str:
    """'cpu' or 'cuda' for a device, a name like 'cuda:0', or None ('cpu')."""
    if d is None:
        return "cpu"
    if d == "cpu" or d == "cuda":
        return str(d)
    return str(device(d))


def to_device_array(data, dev: str):
    """`data` (an ndarray or a CudaArray) on device `dev`."""
    on_cpu = isinstance(data, np.ndarray) or isinstance(data, np.generic)
    if dev == "cpu":
        return data if on_cpu else data.to_host()
    require(f"to('{dev}')")
    if not on_cpu:
        return data
    from minidl.kernels.cuda.array import CudaArray
    return CudaArray.from_host(np.asarray(data))


def move(t, dev: str):
    """Differentiable copy of tensor `t` to `dev` (the gradient flows back)."""
    from .autograd import record
    src = t.device
    out = to_device_array(t.data, dev)
    return record(out, (t,), lambda g, needs: (to_device_array(g, src),), "ToCopy")
