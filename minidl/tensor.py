"""`Tensor`: a NumPy array with a device, an optional gradient and a recorded history.

The operators and methods (`a + b`, `x.sum()`, `x.reshape(...)`) are declared on the
class, one line each; the arithmetic itself, each op beside its backward, lives in
`minidl.functions` (bound below as `F` when that package loads, so no import cycle).
"""
from __future__ import annotations

import numpy as np

from . import autograd
from . import layout as _mf

F = None  # the module minidl.functions, bound by it when it is imported

float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
bool_ = np.dtype(np.bool_)

_FLOAT_DTYPES = (float32, float64)


def _as_array(data, dtype=None) -> np.ndarray:
    """The array a new tensor holds. Python floats become float32 (PyTorch's default);
    NumPy float32/float64 arrays keep their dtype; integer data stays integer."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype.kind == "f":
        if arr.dtype not in _FLOAT_DTYPES or not isinstance(data, np.ndarray):
            arr = arr.astype(np.float32)
    elif arr.dtype.kind not in "iub":
        raise TypeError(f"tensor: unsupported data type {arr.dtype}")
    return arr


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_node", "device", "__weakref__")
    # Makes `ndarray * Tensor` call Tensor.__rmul__ instead of NumPy's broadcasting.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None, device=None):
        """`device` None: where `data` is (NumPy and Python data: "cpu")."""
        src_device = getattr(data, "device", "cpu")
        if (device is None or device == "cpu") and src_device == "cpu":
            self.data = _as_array(data, dtype)
            device = "cpu"
        else:  # a GPU tensor, or GPU data (see minidl/cuda.py)
            from .cuda import canonical, to_device_array
            device = canonical(src_device if device is None else device)
            src = data.data if isinstance(data, Tensor) else data
            if getattr(src, "device", "cpu") == "cpu":
                self.data = to_device_array(_as_array(src, dtype), device)
            elif src.device == device and (dtype is None or np.dtype(dtype) == src.dtype):
                self.data = src  # shared, as NumPy data is shared on the CPU
            else:
                self.data = to_device_array(_as_array(src.to_host(), dtype), device)
        self.grad = None
        self._node = None
        self.device = device
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _wrap(cls, data: np.ndarray, device: str | None = None) -> "Tensor":
        """Fast constructor for op outputs: no conversion, no checks. The device is the
        data's (NumPy arrays say "cpu", minidl.kernels.cuda's CudaArray "cuda")."""
        t = cls.__new__(cls)
        t.data, t.grad, t._node, t.requires_grad = data, None, None, False
        if device is None:  # the type test is cheaper than ndarray.device
            device = "cpu" if type(data) is np.ndarray else data.device
        t.device = device
        return t

    # ---- data side -----------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        if self.data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.data)

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            # Same rule as PyTorch: the array would silently escape the graph.
            raise RuntimeError("numpy(): call .detach().numpy() on a tensor that requires grad")
        return self.data if self.device == "cpu" else self.data.to_host()

    def __array__(self, dtype=None, copy=None):
        if self.device != "cpu":
            raise TypeError(f"can't convert a {self.device} tensor to a NumPy array "
                            f"implicitly; use .cpu() or .numpy() to copy it to the host")
        if dtype is not None and dtype != self.data.dtype:
            return self.data.astype(dtype)
        return self.data.copy() if copy else self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item(): tensor of shape {self.shape} has {self.data.size} "
                             f"elements, not 1")
        return self.data.item()

    def tolist(self):
        return self.data.tolist()

    def detach(self) -> "Tensor":
        return Tensor._wrap(self.data, self.device)

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind != "f":
            raise RuntimeError(f"only floating point tensors can require grad, got {self.dtype}")
        if self._node is not None and not flag:
            raise RuntimeError("requires_grad_(False) on a non-leaf tensor: use .detach()")
        self.requires_grad = bool(flag)
        return self

    @property
    def is_leaf(self) -> bool:
        return self._node is None

    @property
    def grad_fn(self):
        return self._node

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        autograd.backward(self, grad, retain_graph)

    def zero_grad(self) -> None:
        self.grad = None

    def to(self, target=None, *, memory_format=None) -> "Tensor":
        """`to("cuda")`, `to("cpu")`, `to(dtype)` and/or
        `to(memory_format=minidl.channels_last)`.
        A dtype or layout change is a differentiable op; an unchanged tensor is returned
        as is."""
        out = self
        if isinstance(target, str):  # a device: differentiable copies, see minidl/cuda.py
            if target != self.device:
                from .cuda import canonical, move
                target = canonical(target)
                if target != self.device:
                    out = move(self, target)
        elif target is not None:
            out = F.cast(out, target)
        if memory_format is not None:
            out = F.to_memory_format(out, memory_format)
        return out

    def contiguous(self, memory_format=_mf.contiguous_format) -> "Tensor":
        """This tensor laid out in `memory_format` (itself when it already is)."""
        return F.to_memory_format(self, memory_format)

    def is_contiguous(self, memory_format=_mf.contiguous_format) -> bool:
        """Whether the elements lie in memory in `memory_format`'s order without gaps."""
        return _mf.is_contiguous(self.data, memory_format)

    def cuda(self) -> "Tensor":
        return self.to("cuda")

    def cpu(self) -> "Tensor":
        return self.to("cpu")

    def float(self) -> "Tensor":
        return self.to(float32)

    def double(self) -> "Tensor":
        return self.to(float64)

    def __repr__(self) -> str:
        host = self.data if self.device == "cpu" else self.data.to_host()
        body = np.array2string(host, separator=", ", prefix="tensor(", threshold=100)
        extra = "" if self.device == "cpu" else f", device='{self.device}'"
        if self.data.dtype not in (float32, int64):
            extra += f", dtype={self.data.dtype}"
        if self._node is not None:
            extra += f", grad_fn={self._node!r}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ---- arithmetic: declared here, computed (with its backward) in minidl.functions ----
    def __add__(self, other): return F.add(self, other)
    def __radd__(self, other): return F.add(other, self)
    def __sub__(self, other): return F.sub(self, other)
    def __rsub__(self, other): return F.sub(other, self)
    def __mul__(self, other): return F.mul(self, other)
    def __rmul__(self, other): return F.mul(other, self)
    def __truediv__(self, other): return F.div(self, other)
    def __rtruediv__(self, other): return F.div(other, self)
    def __pow__(self, other): return F.pow(self, other)
    def __rpow__(self, other): return F.pow(other, self)
    def __matmul__(self, other): return F.matmul(self, other)
    def __rmatmul__(self, other): return F.matmul(other, self)
    def __neg__(self): return F.neg(self)
    def __abs__(self): return F.abs(self)
    def __getitem__(self, index): return F.getitem(self, index)
    def __eq__(self, other): return F.eq(self, other)
    def __ne__(self, other): return F.ne(self, other)
    def __lt__(self, other): return F.lt(self, other)
    def __le__(self, other): return F.le(self, other)
    def __gt__(self, other): return F.gt(self, other)
    def __ge__(self, other): return F.ge(self, other)

    def exp(self): return F.exp(self)
    def log(self): return F.log(self)
    def sqrt(self): return F.sqrt(self)
    def abs(self): return F.abs(self)
    def pow(self, exponent): return F.pow(self, exponent)
    def maximum(self, other): return F.maximum(self, other)
    def clip(self, min=None, max=None): return F.clip(self, min, max)  # noqa: A002 - torch's names
    clamp = clip
    def matmul(self, other): return F.matmul(self, other)

    def sum(self, *args, **kwargs): return F.sum(self, *args, **kwargs)
    def mean(self, *args, **kwargs): return F.mean(self, *args, **kwargs)
    def var(self, *args, **kwargs): return F.var(self, *args, **kwargs)
    def max(self, *args, **kwargs): return F.max(self, *args, **kwargs)
    def min(self, *args, **kwargs): return F.min(self, *args, **kwargs)
    def argmax(self, *args, **kwargs): return F.argmax(self, *args, **kwargs)

    def reshape(self, *shape): return F.reshape(self, *shape)
    view = reshape
    def flatten(self, start_dim=0, end_dim=-1): return F.flatten(self, start_dim, end_dim)
    def permute(self, *dims): return F.permute(self, *dims)
    def transpose(self, dim0=-2, dim1=-1): return F.transpose(self, dim0, dim1)
    def squeeze(self, axis=None): return F.squeeze(self, axis)
    def unsqueeze(self, axis): return F.unsqueeze(self, axis)

    @property
    def T(self): return F.transpose(self, -2, -1) if self.ndim >= 2 else self  # noqa: N802

    def relu(self): return F.relu(self)
    def sigmoid(self): return F.sigmoid(self)
    def tanh(self): return F.tanh(self)
    def softmax(self, *args, **kwargs): return F.softmax(self, *args, **kwargs)
    def log_softmax(self, *args, **kwargs): return F.log_softmax(self, *args, **kwargs)

    __hash__ = object.__hash__  # == builds a tensor, so keep identity hashing

    def __bool__(self) -> bool:
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data)


autograd.Tensor = Tensor  # the tape wraps op outputs as Tensors


# ---- creation helpers ---------------------------------------------------------

def tensor(data, dtype=None, requires_grad: bool = False, device=None) -> Tensor:
    """A new tensor holding `data` (copied from Python lists; arrays are wrapped as is),
    on `device` ("cpu" or "cuda")."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def _shape(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


def zeros(*shape, dtype=float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.zeros(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def ones(*shape, dtype=float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.ones(_shape(shape), dtype=dtype), requires_grad=requires_grad)


def full(shape, fill_value, dtype=float32, requires_grad: bool = False) -> Tensor:
    return Tensor(np.full(_shape((shape,)), fill_value, dtype=dtype), requires_grad=requires_grad)


def zeros_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    return Tensor(np.zeros_like(np.asarray(t), dtype=dtype), requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad: bool = False) -> Tensor:
    return Tensor(np.ones_like(np.asarray(t), dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=float32, requires_grad: bool = False, generator=None) -> Tensor:
    from .random import default_generator
    gen = generator or default_generator()
    data = gen.standard_normal(_shape(shape), dtype=np.dtype(dtype).type)
    return Tensor(data, requires_grad=requires_grad)


def rand(*shape, dtype=float32, requires_grad: bool = False, generator=None) -> Tensor:
    from .random import default_generator
    gen = generator or default_generator()
    data = gen.random(_shape(shape), dtype=np.dtype(dtype).type)
    return Tensor(data, requires_grad=requires_grad)


def arange(start, stop=None, step=1, dtype=None, requires_grad: bool = False) -> Tensor:
    if stop is None:
        start, stop = 0, start
    data = np.arange(start, stop, step)
    if dtype is None:
        dtype = int64 if data.dtype.kind in "iu" else float32
    return Tensor(data.astype(dtype), requires_grad=requires_grad)
