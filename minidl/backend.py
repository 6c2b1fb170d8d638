"""Which implementation runs the hot ops: a small strategy object, not `if` chains in
every op. A backend is a device plus a kernel namespace with the functions listed in
kernels/README.md; the ops in `minidl.functions` call `backend_for(x).<kernel>(...)`.

    "numba"  minidl.kernels.cpu        parallel Numba kernels (default)
    "numpy"  minidl.kernels.reference  the readable NumPy references
    "cuda"   minidl.kernels.cuda       not a global backend: chosen for tensors on device "cuda"
"""
from __future__ import annotations

import importlib

import numba

_MODULES = {"numba": "minidl.kernels.cpu", "numpy": "minidl.kernels.reference"}
_current = "numba"
_loaded = {}


class BackendError(ValueError):
    pass


class DeviceMismatchError(RuntimeError):
    """An op got tensors on two devices."""


def set_backend(name: str) -> None:
    """Choose the implementation of conv2d, batch_norm, pooling and fused activations."""
    global _current
    if name == "cuda":
        raise BackendError("set_backend: the device of the tensors picks the CUDA kernels; "
                           "move the model and data with .to('cuda') instead")
    if name not in _MODULES:
        raise BackendError(f"set_backend: unknown backend {name!r}; choose one of "
                           f"{sorted(_MODULES)}")
    _current = name


def get_backend() -> str:
    return _current


def kernels(name: str | None = None):
    """The kernel namespace of backend `name` (default: the current one)."""
    name = name or _current
    mod = _loaded.get(name)
    if mod is None:
        mod = _loaded[name] = importlib.import_module(_MODULES[name])
    return mod


def backend_for(*tensors):
    """Kernels for these tensors, chosen by their device: the current CPU backend, or
    minidl.kernels.cuda (kernels/cuda) for GPU tensors. Tensors on different devices raise
    an error naming both."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise DeviceMismatchError(f"expected all tensors to be on the same device, but "
                                      f"found at least two devices, {dev} and {t.device}")
    if dev == "cpu":
        return kernels()
    mod = _loaded.get("cuda")
    if mod is None:
        from .cuda import require
        require()
        mod = _loaded["cuda"] = importlib.import_module("minidl.kernels.cuda")
    return mod


def set_num_threads(n: int) -> None:
    """Threads used by the Numba kernels (BLAS keeps its own setting)."""
    numba.set_num_threads(int(n))


def get_num_threads() -> int:
    return numba.get_num_threads()
