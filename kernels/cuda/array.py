"""`CudaArray`: a contiguous array in GPU memory with the part of NumPy's ndarray
interface that minidl's ops use, so one op written with NumPy calls runs on either
device. The dispatch happens once, here: NumPy hands any ufunc or array function that
meets a CudaArray to `__array_ufunc__` / `__array_function__`, which launch the CUDA
kernels of this package. CPU arrays never come through this file.

    a = CudaArray.from_host(np.arange(6.0).reshape(2, 3))
    b = np.exp(a) + 1.0          # two kernels, result stays on the GPU
    b.sum(axis=0).to_host()      # array([...]) copied back

Rules: operands are CudaArrays or scalars (Python numbers, NumPy scalars and 0-d
arrays, like PyTorch's 0-dim CPU tensors); any other host array raises
`DeviceMismatchError` naming both devices. Implicit conversion to NumPy
(`np.asarray(a)`) raises too: copies to the host are explicit (`to_host()`).

Memory comes from `ALLOCATOR`, a caching allocator: freed buffers go back to free
lists keyed by (dtype, rounded size) and are handed out again, so a training step that
repeats the shapes of the previous one makes no driver allocation.
"""
from __future__ import annotations

import numbers

import numpy as np
from numba import cuda

from . import elementwise as ew
from ._launch import grid1d
from .matmul import launch_gemm
from .reduction import MAX, MIN, SUM, launch_reduce, partial_blocks


class DeviceMismatchError(RuntimeError):
    pass


def mismatch(op: str, a: str = "cuda", b: str = "cpu") -> DeviceMismatchError:
    return DeviceMismatchError(f"{op}: expected all tensors to be on the same device, but "
                               f"found at least two devices, {a} and {b}")


# ---- the caching allocator ----------------------------------------------------------

def _bucket(n: int) -> int:
    """Capacity for n elements: the next power of two up to 1 Ki, then multiples of
    1/8 of the next power of two (at most 12.5% waste)."""
    if n <= 1024:
        return 1 << max(n - 1, 0).bit_length()
    p = 1 << (n - 1).bit_length()
    step = p // 8
    return (n + step - 1) // step * step


class CachingAllocator:
    """Free lists of device buffers by (dtype, capacity). `driver_allocations` counts the
    buffers taken from the CUDA driver; a step that reuses freed buffers adds none.

    The allocator holds every buffer it made (`owned`), in use or free, until
    `empty_cache` lets the free ones go. A buffer must never be reachable only through
    the `_Block` that uses it: when a reference cycle holding a block is collected,
    Python runs the weakref callbacks of the cycle first (numba-cuda's, which give a
    buffer's memory back to the driver when its last pointer object dies) and only then
    the block's `__del__`, which would put a buffer with freed memory on a free list
    (ReferenceError at its next use; seen on a GPU, never on the simulator).
    """

    def __init__(self):
        self.free = {}
        self.owned = {}
        self.driver_allocations = 0
        self.cached_bytes = 0

    def allocate(self, n: int, dtype: np.dtype):
        key = (dtype.str, _bucket(n))
        bucket = self.free.get(key)
        if bucket:
            buf = bucket.pop()
            self.cached_bytes -= buf.nbytes
            return buf
        self.driver_allocations += 1
        buf = cuda.device_array(key[1], dtype=dtype)
        self.owned[id(buf)] = buf
        return buf

    def release(self, buf) -> None:
        self.free.setdefault((buf.dtype.str, buf.size), []).append(buf)
        self.cached_bytes += buf.nbytes

    def empty_cache(self) -> None:
        """Give every cached buffer back to the driver."""
        for bucket in self.free.values():
            for buf in bucket:
                del self.owned[id(buf)]
        self.free.clear()
        self.cached_bytes = 0


ALLOCATOR = CachingAllocator()


class _Block:
    """One pooled buffer; returned to the allocator that made it when the last array
    using it dies."""
    __slots__ = ("buf", "allocator", "__weakref__")

    def __init__(self, n, dtype):
        self.allocator = ALLOCATOR
        self.buf = ALLOCATOR.allocate(n, dtype)

    def __del__(self):
        try:
            self.allocator.release(self.buf)
        except Exception:  # interpreter shutdown
            pass


class _Flags:
    c_contiguous = True
    writeable = True


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _contig_strides(shape) -> tuple:
    st, acc = [], 1
    for s in reversed(shape):
        st.append(acc)
        acc *= int(s)
    return tuple(reversed(st))


def _bcast_strides(shape, out_shape) -> tuple:
    """Element strides of a contiguous array of `shape` read as `out_shape`."""
    st = _contig_strides(shape)
    lead = len(out_shape) - len(shape)
    return tuple(0 if i < lead or shape[i - lead] == 1 else st[i - lead]
                 for i in range(len(out_shape)))


def _kshape(shape) -> tuple:
    """Kernels index with tuples of at least one dim."""
    return tuple(int(s) for s in shape) or (1,)


_DTYPE_CACHE = {}


def _result_dtype(ufunc, operands) -> np.dtype:
    """The dtype NumPy would give, from a tiny host evaluation (cached)."""
    key = (ufunc.__name__,) + tuple(o.dtype if isinstance(o, CudaArray) else
                                    (type(o), getattr(o, "dtype", None)) for o in operands)
    dt = _DTYPE_CACHE.get(key)
    if dt is None:
        probes = [np.ones(1, o.dtype) if isinstance(o, CudaArray) else o for o in operands]
        with np.errstate(all="ignore"):
            dt = _DTYPE_CACHE[key] = np.asarray(ufunc(*probes)).dtype
    return dt


class CudaArray(np.lib.mixins.NDArrayOperatorsMixin):
    """A C-contiguous device array: `_dev` is a 1-D device view of `size` elements of a
    pooled buffer; `base` is the array this one is a view of (None if it owns)."""

    __slots__ = ("_block", "_dev", "shape", "dtype", "base", "__weakref__")
    device = "cuda"
    flags = _Flags()
    __array_priority__ = 2000

    def __init__(self, shape, dtype, _block=None, _dev=None, base=None):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        n = _prod(self.shape)
        if _block is None:
            _block = _Block(max(n, 1), self.dtype)
            _dev = _block.buf[:n]
        self._block, self._dev, self.base = _block, _dev, base

    # ---- construction and transfer ------------------------------------------------
    @classmethod
    def empty(cls, shape, dtype) -> "CudaArray":
        return cls(shape, dtype)

    @classmethod
    def full(cls, shape, value, dtype) -> "CudaArray":
        out = cls(shape, dtype)
        if out.size:
            ew.fill[grid1d(out.size)](out._dev, out.dtype.type(value))
        return out

    @classmethod
    def from_host(cls, a) -> "CudaArray":
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            a = a.copy()
        out = cls(a.shape, a.dtype)
        if a.size:
            out._dev.copy_to_device(a.reshape(-1))
        return out

    def to_host(self) -> np.ndarray:
        if self.size == 0:
            return np.empty(self.shape, self.dtype)
        return self._dev.copy_to_host().reshape(self.shape)

    get = to_host

    def __array__(self, dtype=None, copy=None):
        raise TypeError("can't convert a cuda array to a NumPy array implicitly (an op "
                        "without a CUDA path, or a CPU tensor mixed in?); use .cpu() or "
                        ".numpy() to copy it to the host")

    # ---- ndarray attributes ---------------------------------------------------------
    @property
    def size(self) -> int:
        return _prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def item(self):
        if self.size != 1:
            raise ValueError(f"item(): array of shape {self.shape} has {self.size} elements, "
                             f"not 1")
        return self.to_host().reshape(()).item()

    def tolist(self):
        return self.to_host().tolist()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __repr__(self):
        return f"CudaArray({self.to_host()!r})"

    # ---- views and copies -------------------------------------------------------------
    def reshape(self, *shape, order="C"):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(int(s) for s in shape)
        if shape.count(-1) > 1:
            raise ValueError("can only specify one unknown dimension")
        if -1 in shape:
            known = _prod(s for s in shape if s != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape array of size {self.size} into shape "
                                 f"{tuple(shape)}")
            shape[shape.index(-1)] = self.size // known
        if _prod(shape) != self.size:
            raise ValueError(f"cannot reshape array of size {self.size} into shape "
                             f"{tuple(shape)}")
        return CudaArray(shape, self.dtype, self._block, self._dev, self)

    def ravel(self):
        return self.reshape(-1)

    def copy(self, order="K") -> "CudaArray":
        return self.astype(self.dtype)

    def astype(self, dtype, copy=True, **_) -> "CudaArray":
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        out = CudaArray(self.shape, dtype)
        if self.size:
            ew.copy[grid1d(self.size)](self._dev, out._dev)
        return out

    def _strided(self, strides, shape) -> "CudaArray":
        out = CudaArray(shape, self.dtype)
        if out.size:
            ew.strided_copy[grid1d(out.size)](self._dev, _kshape(strides) if strides else (0,),
                                              out._dev, _kshape(shape))
        return out

    def broadcast_to(self, shape) -> "CudaArray":
        """A materialized copy (device arrays here are always contiguous)."""
        shape = tuple(int(s) for s in shape)
        if shape == self.shape:
            return self
        np.broadcast_shapes(self.shape, shape)  # raises ValueError if they don't fit
        if np.broadcast_shapes(self.shape, shape) != shape:
            raise ValueError(f"cannot broadcast {self.shape} to {shape}")
        return self._strided(_bcast_strides(self.shape, shape), shape)

    def transpose(self, *axes) -> "CudaArray":
        if len(axes) == 1 and isinstance(axes[0], (tuple, list, np.ndarray)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(range(self.ndim))[::-1]
        axes = tuple(int(a) % max(self.ndim, 1) for a in axes)
        if axes == tuple(range(self.ndim)):
            return self
        st = _contig_strides(self.shape)
        return self._strided(tuple(st[a] for a in axes), tuple(self.shape[a] for a in axes))

    @property
    def T(self) -> "CudaArray":
        return self.transpose()

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def squeeze(self, axis=None):
        if axis is None:
            return self.reshape(tuple(s for s in self.shape if s != 1))
        axes = {a % self.ndim for a in ((axis,) if isinstance(axis, int) else axis)}
        return self.reshape(tuple(s for i, s in enumerate(self.shape) if i not in axes))

    def _view(self, key):
        """(offset, shape, strides) in elements of basic index `key` (ints, slices,
        Ellipsis, None), NumPy's rules; advanced (array) indices are refused."""
        key = key if isinstance(key, tuple) else (key,)
        for k in key:
            if not (k is None or k is Ellipsis or isinstance(k, (slice, numbers.Integral))):
                raise NotImplementedError(f"indexing a cuda array with {type(k).__name__} "
                                          f"indices is not implemented (only ints, slices, "
                                          f"... and None); move it to the CPU")
        n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
        if n_real > self.ndim:
            raise IndexError(f"too many indices for an array of shape {self.shape}")
        if Ellipsis in key:
            e = key.index(Ellipsis)
            key = key[:e] + (slice(None),) * (self.ndim - n_real) + key[e + 1:]
        else:
            key = key + (slice(None),) * (self.ndim - n_real)
        st = _contig_strides(self.shape)
        off, shape, strides, d = 0, [], [], 0
        for k in key:
            if k is None:
                shape.append(1)
                strides.append(0)
                continue
            size = self.shape[d]
            if isinstance(k, slice):
                start, stop, step = k.indices(size)
                shape.append(len(range(start, stop, step)))
                strides.append(st[d] * step)
                off += start * st[d]
            else:
                if not -size <= k < size:
                    raise IndexError(f"index {k} is out of bounds for axis {d} with size {size}")
                off += (int(k) % size) * st[d]
            d += 1
        return off, tuple(shape), tuple(strides)

    def __getitem__(self, key):
        if key is Ellipsis or (isinstance(key, tuple) and key == ()) or (
                isinstance(key, slice) and key == slice(None)):
            return self
        if isinstance(key, numbers.Integral) and self.ndim >= 1:
            if not -self.shape[0] <= key < self.shape[0]:
                raise IndexError(f"index {key} is out of bounds for axis 0 with size "
                                 f"{self.shape[0]}")
            i = int(key) % self.shape[0]
            inner = _prod(self.shape[1:])
            return CudaArray(self.shape[1:], self.dtype, self._block,
                             self._dev[i * inner:(i + 1) * inner], self)
        off, shape, strides = self._view(key)
        out = CudaArray(shape, self.dtype)
        if out.size:
            ew.strided_copy2[grid1d(out.size)](self._dev, off, _kshape(strides),
                                               out._dev, 0, _kshape(_contig_strides(shape)),
                                               _kshape(shape))
        return out

    def __setitem__(self, key, value):
        if not (key is Ellipsis or (isinstance(key, slice) and key == slice(None))):
            off, shape, strides = self._view(key)
            if not _prod(shape):
                return
            if not isinstance(value, CudaArray):
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    raise mismatch("setitem")
                value = CudaArray.full(shape, value, self.dtype)
            src = value if value.dtype == self.dtype else value.astype(self.dtype)
            if src.shape != shape:
                src = src.broadcast_to(shape)
            ew.strided_copy2[grid1d(src.size)](src._dev, 0, _kshape(_contig_strides(shape)),
                                               self._dev, off, _kshape(strides), _kshape(shape))
            return
        if isinstance(value, CudaArray):
            src = value.broadcast_to(self.shape) if value.shape != self.shape else value
            if self.size:
                ew.copy[grid1d(self.size)](src._dev, self._dev)
        elif isinstance(value, np.ndarray) and value.ndim > 0:
            host = np.ascontiguousarray(np.broadcast_to(value, self.shape), dtype=self.dtype)
            if self.size:
                self._dev.copy_to_device(host.reshape(-1))
        else:
            if self.size:
                ew.fill[grid1d(self.size)](self._dev, self.dtype.type(value))

    def fill(self, value):
        self[...] = value

    # ---- reductions -----------------------------------------------------------------
    def _reduce(self, mode, axis, keepdims, dtype=None, scale=1.0, name="sum"):
        nd = self.ndim
        if axis is None:
            axes = tuple(range(nd))
        else:
            axes = tuple(sorted({int(a) % max(nd, 1) for a in
                                 ((axis,) if isinstance(axis, numbers.Integral) else axis)}))
        kept = tuple(i for i in range(nd) if i not in axes)
        oshape = tuple(1 if i in axes else s for i, s in enumerate(self.shape)) if keepdims \
            else tuple(self.shape[i] for i in kept)
        if dtype is None:
            dtype = np.ones(1, self.dtype).sum().dtype if mode == SUM else self.dtype
        out = CudaArray(oshape, dtype)
        count = _prod(self.shape[i] for i in axes)
        if count == 0 and mode != SUM:
            raise ValueError(f"zero-size array to reduction operation {name}")
        if out.size == 0:
            return out
        st = _contig_strides(self.shape)
        kshape = _kshape([self.shape[i] for i in kept])
        kstr = _kshape([st[i] for i in kept]) if kept else (0,)
        rshape = _kshape([self.shape[i] for i in axes])
        rstr = _kshape([st[i] for i in axes]) if axes else (0,)
        parts = partial_blocks(out.size, count)
        if parts == 1:
            launch_reduce(self._dev, kshape, kstr, rshape, rstr, out._dev, mode, float(scale))
        else:  # two passes (reduction.py): partial results, then each output's row of them
            part = CudaArray((out.size, parts), np.float64)
            launch_reduce(self._dev, kshape, kstr, rshape, rstr, part._dev, mode, 1.0, parts)
            launch_reduce(part._dev, (out.size,), (parts,), (parts,), (1,), out._dev, mode,
                          float(scale))
        return out

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        _no_out(out, "sum")
        return self._reduce(SUM, axis, keepdims, dtype)

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        _no_out(out, "mean")
        axes = range(self.ndim) if axis is None else \
            ((axis,) if isinstance(axis, numbers.Integral) else axis)
        n = _prod(self.shape[a] for a in axes)
        if dtype is None:
            dtype = self.dtype if self.dtype.kind == "f" else np.dtype(np.float64)
        return self._reduce(SUM, axis, keepdims, dtype, 1.0 / n if n else float("nan"))

    def argmax(self, axis=None, out=None, keepdims=False):
        return _argmax(self, axis, out, keepdims)

    def var(self, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
        _no_out(out, "var")
        x = self if dtype is None else self.astype(dtype)
        d = x - x.mean(axis=axis, keepdims=True)
        axes = range(self.ndim) if axis is None else \
            ((axis,) if isinstance(axis, numbers.Integral) else axis)
        n = _prod(self.shape[a] for a in axes)
        return (d * d).sum(axis=axis, keepdims=keepdims) * (1.0 / max(n - ddof, 0)
                                                              if n > ddof else float("nan"))

    def max(self, axis=None, out=None, keepdims=False):
        _no_out(out, "max")
        return self._reduce(MAX, axis, keepdims, name="max")

    def min(self, axis=None, out=None, keepdims=False):
        _no_out(out, "min")
        return self._reduce(MIN, axis, keepdims, name="min")

    # ---- NumPy protocols ----------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if method != "__call__" or kwargs.get("where", True) is not True:
            return NotImplemented
        if out is not None:
            out = out[0] if isinstance(out, tuple) else out
            if not isinstance(out, CudaArray):
                raise mismatch(ufunc.__name__)
        operands = []
        for x in inputs:
            if isinstance(x, np.ndarray):
                if x.ndim > 0:
                    raise mismatch(ufunc.__name__)
                x = x[()]
            elif not isinstance(x, (CudaArray, numbers.Number, np.generic)):
                return NotImplemented
            operands.append(x)
        name = ufunc.__name__
        if name == "matmul":
            return _matmul(*operands, out=out)
        if ufunc.nin == 1:
            kernel = ew.UNARY.get(name)
            if kernel is None:
                raise NotImplementedError(f"np.{name} is not implemented for cuda arrays")
            a = operands[0]
            dt = _result_dtype(ufunc, operands)
            if out is None:
                out = CudaArray(a.shape, dt)
            elif out.shape != a.shape:
                raise ValueError(f"{name}: out shape {out.shape} != {a.shape}")
            if a.dtype != dt and out is not a:  # compute in the result dtype
                a = a.astype(dt)
            if out.size:
                kernel[grid1d(out.size)](a._dev, out._dev)
            return out
        kernels = ew.BINARY.get(name)
        if kernels is None or ufunc.nin != 2:
            raise NotImplementedError(f"np.{name} is not implemented for cuda arrays")
        a, b = operands
        shape = np.broadcast_shapes(getattr(a, "shape", ()), getattr(b, "shape", ()))
        dt = _result_dtype(ufunc, operands)
        if out is None:
            out = CudaArray(shape, dt)
        elif np.broadcast_shapes(out.shape, shape) != out.shape:
            raise ValueError(f"{name}: non-broadcastable output {out.shape} for {shape}")
        shape = out.shape
        if out.size == 0:
            return out
        full, same, right, left = kernels
        ks = _kshape(shape)
        g = grid1d(out.size)
        if isinstance(a, CudaArray) and isinstance(b, CudaArray):
            if a.shape == b.shape == shape:
                same[g](a._dev, b._dev, out._dev)
            else:
                full[g](a._dev, _kshape(_bcast_strides(a.shape, shape)) if shape else (0,),
                        b._dev, _kshape(_bcast_strides(b.shape, shape)) if shape else (0,),
                        out._dev, ks)
        elif isinstance(a, CudaArray):
            sa = _kshape(_bcast_strides(a.shape, shape)) if shape else (0,)
            right[g](a._dev, sa, _scalar(b, a.dtype), out._dev, ks)
        else:
            sb = _kshape(_bcast_strides(b.shape, shape)) if shape else (0,)
            left[g](_scalar(a, b.dtype), b._dev, sb, out._dev, ks)
        return out

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCTIONS.get(func)
        if impl is None:
            raise NotImplementedError(f"np.{func.__name__} is not implemented for cuda arrays")
        return impl(*args, **kwargs)


def _no_out(out, op):
    if out is not None:
        raise NotImplementedError(f"{op}(out=...) is not implemented for cuda arrays")


def _scalar(v, like: np.dtype):
    """A scalar operand as the kernel gets it: NumPy scalars keep their type; Python
    numbers take the array operand's dtype where NumPy's weak promotion would (a float
    next to a float array, an int next to any numeric array)."""
    if isinstance(v, np.generic):
        return v
    if isinstance(v, bool):
        return np.bool_(v)
    if isinstance(v, int):
        return like.type(v) if like.kind in "fiu" else np.int64(v)
    if isinstance(v, float):
        return like.type(v) if like.kind == "f" else np.float64(v)
    raise TypeError(f"unsupported scalar operand {v!r} for a cuda array")


def _matmul(a, b, out=None):
    if not (isinstance(a, CudaArray) and isinstance(b, CudaArray)):
        raise ValueError("matmul: both operands must be arrays, not scalars")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul: operands must be at least 1-D")
    va = a.reshape(1, -1) if a.ndim == 1 else a
    vb = b.reshape(-1, 1) if b.ndim == 1 else b
    if vb.ndim > 2:
        raise NotImplementedError(f"matmul: batched products {a.shape} @ {b.shape} are not "
                                  f"implemented on cuda (the right operand must be 1-D or 2-D)")
    lead = va.shape[:-2]
    M, K = _prod(va.shape[:-1]), va.shape[-1]
    K2, N = vb.shape
    if K != K2:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit")
    dt = np.result_type(a.dtype, b.dtype)
    if dt.kind != "f":
        raise NotImplementedError(f"matmul: {dt} is not implemented on cuda (floats only)")
    va = va if va.dtype == dt else va.astype(dt)
    vb = vb if vb.dtype == dt else vb.astype(dt)
    shape = lead + (va.shape[-2], N)
    if a.ndim == 1:
        shape = shape[:-2] + (N,)
    if b.ndim == 1:
        shape = shape[:-1]
    c = CudaArray(shape, dt) if out is None else out
    if M and N:
        if K == 0:
            c[...] = 0
        else:
            launch_gemm(va._dev, vb._dev, c._dev, M, N, K)
    return c


# ---- np.* functions on cuda arrays --------------------------------------------------

def _like(fill):
    def like(a, dtype=None, order="K", subok=True, shape=None):
        return CudaArray.full(a.shape if shape is None else shape, fill,
                              a.dtype if dtype is None else np.dtype(dtype))
    return like


def _expand_dims(a, axis):
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    nd = a.ndim + len(axes)
    axes = sorted(int(x) % nd for x in axes)
    shape = list(a.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return a.reshape(shape)


def _operand(x, shape, dtype):
    """x (a CudaArray or a scalar / 0-d host array) as a CudaArray of shape and dtype."""
    if isinstance(x, np.ndarray):
        if x.ndim > 0:
            raise mismatch("where")
        x = x[()]
    if not isinstance(x, CudaArray):
        return CudaArray.full(shape, x, dtype)
    x = x if x.dtype == dtype else x.astype(dtype)
    return x if x.shape == shape else x.broadcast_to(shape)


def _where(cond, a=None, b=None):
    if a is None or b is None:
        raise NotImplementedError("np.where(cond) (indices) is not implemented for cuda "
                                  "arrays")
    shape = np.broadcast_shapes(*(getattr(x, "shape", ()) for x in (cond, a, b)))
    dt = np.result_type(*(x.dtype if isinstance(x, CudaArray) else x for x in (a, b)))
    c = _operand(cond, shape, np.dtype(bool))
    out = CudaArray(shape, dt)
    if out.size:
        # Both operands held in variables: a temporary's buffer would go back to the
        # allocator (and be handed to the next operand) before the kernel runs.
        a, b = _operand(a, shape, dt), _operand(b, shape, dt)
        ew.where[grid1d(out.size)](c._dev, a._dev, b._dev, out._dev)
    return out


def _clip(a, a_min=None, a_max=None, out=None, **_):
    _no_out(out, "clip")
    if a_min is not None:
        a = np.maximum(a, a_min)
    if a_max is not None:
        a = np.minimum(a, a_max)
    return a.copy() if a_min is None and a_max is None else a


def _concatenate(arrays, axis=0, out=None, **_):
    arrays = list(arrays)
    for a in arrays:
        if not isinstance(a, CudaArray):
            raise mismatch("concatenate")
    first = arrays[0]
    ax = int(axis) % first.ndim
    for a in arrays:
        if a.ndim != first.ndim or any(x != y for i, (x, y) in
                                       enumerate(zip(a.shape, first.shape)) if i != ax):
            raise ValueError("concatenate: all the input array dimensions except for the "
                             "concatenation axis must match exactly")
    shape = list(first.shape)
    shape[ax] = sum(a.shape[ax] for a in arrays)
    dt = np.result_type(*[a.dtype for a in arrays])
    res = CudaArray(shape, dt)
    start = 0
    for a in arrays:
        n = a.shape[ax]
        if n:
            key = (slice(None),) * ax + (slice(start, start + n),)
            res[key] = a
        start += n
    return res


def _split(a, indices_or_sections, axis=0):
    ax = int(axis) % a.ndim
    if isinstance(indices_or_sections, numbers.Integral):
        n = a.shape[ax]
        k = int(indices_or_sections)
        if n % k:
            raise ValueError("array split does not result in an equal division")
        bounds = [n // k * i for i in range(1, k)]
    else:
        bounds = [int(b) for b in indices_or_sections]
    edges = [0] + bounds + [a.shape[ax]]
    return [a[(slice(None),) * ax + (slice(lo, hi),)] for lo, hi in zip(edges, edges[1:])]


def _stack(arrays, axis=0, out=None, **_):
    arrays = list(arrays)
    nd = arrays[0].ndim + 1
    ax = int(axis) % nd
    return _concatenate([_expand_dims(a, ax) for a in arrays], ax)


def _take(a, index, axis=None, **_):
    if axis is None or not isinstance(index, numbers.Integral):
        raise NotImplementedError("np.take on cuda arrays: only an int index along an axis")
    return a[(slice(None),) * (int(axis) % a.ndim) + (int(index),)]


def _pad(a, pad_width, mode="constant", constant_values=0, **_):
    if mode != "constant":
        raise NotImplementedError(f"np.pad mode {mode!r} is not implemented for cuda arrays")
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2))
    shape = tuple(int(n + lo + hi) for n, (lo, hi) in zip(a.shape, widths))
    out = CudaArray.full(shape, constant_values, a.dtype)
    out[tuple(slice(int(lo), int(lo) + n) for (lo, _), n in zip(widths, a.shape))] = a
    return out


def _argmax(a, axis=None, out=None, keepdims=False):
    """On the host and back (one copy each way): no CUDA kernel for argmax yet."""
    _no_out(out, "argmax")
    return CudaArray.from_host(np.asarray(np.argmax(a.to_host(), axis=axis,
                                                    keepdims=keepdims)))


_FUNCTIONS = {
    np.argmax: _argmax,
    np.concatenate: _concatenate, np.split: _split, np.stack: _stack, np.take: _take,
    np.pad: _pad,
    np.broadcast_to: lambda a, shape, subok=False: a.broadcast_to(shape),
    np.expand_dims: _expand_dims,
    np.ones_like: _like(1), np.zeros_like: _like(0),
    np.empty_like: _like(0),
    np.full_like: lambda a, fill_value, dtype=None, **_: CudaArray.full(
        a.shape, fill_value, a.dtype if dtype is None else np.dtype(dtype)),
    np.sum: lambda a, axis=None, dtype=None, out=None, keepdims=False, **_:
        a.sum(axis, dtype, out, keepdims),
    np.mean: lambda a, axis=None, dtype=None, out=None, keepdims=False, **_:
        a.mean(axis, dtype, out, keepdims),
    np.var: lambda a, axis=None, dtype=None, out=None, ddof=0, keepdims=False, **_:
        a.var(axis, dtype, out, ddof, keepdims),
    np.max: lambda a, axis=None, out=None, keepdims=False, **_: a.max(axis, out, keepdims),
    np.amax: lambda a, axis=None, out=None, keepdims=False, **_: a.max(axis, out, keepdims),
    np.min: lambda a, axis=None, out=None, keepdims=False, **_: a.min(axis, out, keepdims),
    np.reshape: lambda a, shape, **_: a.reshape(shape),
    np.transpose: lambda a, axes=None: a.transpose(axes or ()),
    np.swapaxes: lambda a, x, y: a.swapaxes(x, y),
    np.squeeze: lambda a, axis=None: a.squeeze(axis),
    np.copy: lambda a, **_: a.copy(),
    np.ravel: lambda a, order="C": a.ravel(),
    np.shape: lambda a: a.shape,
    np.ndim: lambda a: a.ndim,
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
    np.where: _where, np.clip: _clip,
}
