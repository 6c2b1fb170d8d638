"""`Module`: the base class of layers and models, with PyTorch's API.

Assigning a Parameter, a Module or (via `register_buffer`) a Tensor as an attribute
registers it in an ordered dict (`_parameters`, `_modules`, `_buffers`), which is what
`parameters()`, `state_dict()`, `train()` and `to()` walk. Unlike PyTorch, each value is
ALSO stored as a plain instance attribute, so `self.weight` in a forward pass is an
ordinary attribute lookup rather than a much slower trip through `__getattr__`
(forward passes read attributes a lot; numbers: benchmarks/DESIGN.md, module.py).
`__setattr__`/`__delattr__` keep the two in step.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np

from .. import layout as _mf
from ..tensor import Tensor
from .parameter import Parameter

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class RemovableHandle:
    """Returned by `register_forward_hook`; `remove()` unregisters the hook."""

    _next_id = 0

    def __init__(self, hooks: dict):
        self._hooks = hooks
        self.id = RemovableHandle._next_id
        RemovableHandle._next_id += 1

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def factory_dtype(device, dtype, owner: str) -> np.dtype:
    """The dtype a layer creates its parameters in. `device` is accepted (PyTorch's
    layers take it before dtype); layers are built on the CPU, then moved with .to()."""
    if device not in (None, "cpu"):
        raise ValueError(f"{owner}: device={device!r} in a layer's constructor is not "
                         f"supported; build it on the CPU and move it with .to({device!r})")
    dtype = np.dtype(np.float32 if dtype is None else dtype)
    if dtype.kind != "f":
        raise ValueError(f"{owner}: parameters must be floating point, got dtype {dtype}")
    return dtype


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    # Class-level defaults let `__setattr__` run before `__init__` has filled them in
    # (the check below turns that into a clear error instead of an AttributeError).
    _parameters = None
    _modules = None
    _buffers = None

    def __init__(self):
        set_ = object.__setattr__
        set_(self, "training", True)
        set_(self, "_parameters", OrderedDict())
        set_(self, "_buffers", OrderedDict())
        set_(self, "_non_persistent", set())
        set_(self, "_modules", OrderedDict())
        set_(self, "_forward_hooks", OrderedDict())
        set_(self, "_forward_pre_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} has no forward() method")

    def __call__(self, *args, **kwargs):
        return self._call(self.forward, *args, **kwargs)

    def _call(self, forward, *args, **kwargs):
        """forward(*args, **kwargs) between this module's forward pre- and post-hooks
        (`forward` is self.forward, or a fused form of it: see Sequential)."""
        if not (self._forward_hooks or self._forward_pre_hooks):
            return forward(*args, **kwargs)
        for hook in list(self._forward_pre_hooks.values()):
            res = hook(self, args)
            if res is not None:
                args = res if isinstance(res, tuple) else (res,)
        out = forward(*args, **kwargs)
        for hook in list(self._forward_hooks.values()):
            res = hook(self, args, out)
            if res is not None:
                out = res
        return out

    def _hooks_only_observe(self) -> bool:
        """No forward hook that may read or change this module's values: none at all, or
        only timers that mark themselves `_minidl_observer` (minidl.profiler's). Only
        then may a container fuse this module with its neighbour."""
        hooks = (*self._forward_pre_hooks.values(), *self._forward_hooks.values())
        return all(getattr(h, "_minidl_observer", False) for h in hooks)

    # ---- registration ----------------------------------------------------------
    def _check_init(self, what: str) -> None:
        if self._parameters is None:
            raise AttributeError(f"cannot assign {what} before Module.__init__() call "
                                 f"(call super().__init__() first in "
                                 f"{type(self).__name__}.__init__)")

    def _discard(self, name: str) -> None:
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        self._buffers.pop(name, None)
        self._non_persistent.discard(name)

    def __setattr__(self, name, value):
        if isinstance(value, Parameter):
            self._check_init("parameters")
            self._discard(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init("submodules")
            self._discard(name)
            self._modules[name] = value
        elif self._parameters is not None:
            if name in self._parameters:
                if value is not None:
                    raise TypeError(f"cannot assign {type(value).__name__} as parameter "
                                    f"{name!r} (minidl.nn.Parameter or None expected)")
                self._parameters[name] = None
            elif name in self._modules:
                if value is not None:
                    raise TypeError(f"cannot assign {type(value).__name__} as child module "
                                    f"{name!r} (minidl.nn.Module or None expected)")
                self._modules[name] = None
            elif name in self._buffers:
                if value is not None and not isinstance(value, Tensor):
                    raise TypeError(f"cannot assign {type(value).__name__} as buffer "
                                    f"{name!r} (minidl.Tensor or None expected)")
                self._buffers[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        if self._parameters is not None:
            self._discard(name)
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self._check_init("parameters")
        self._discard(name)
        self._parameters[name] = param
        object.__setattr__(self, name, param)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """A tensor that is state but not learnable (BatchNorm's running statistics):
        saved in state_dict (when persistent) and converted by `to()`."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: {name!r} must be a minidl.Tensor or None, got "
                            f"{type(tensor).__name__}")
        self._check_init("buffers")
        self._discard(name)
        self._buffers[name] = tensor
        if not persistent:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def add_module(self, name: str, module) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {name!r} must be a Module or None, got "
                            f"{type(module).__name__}")
        self._check_init("submodules")
        self._discard(name)
        self._modules[name] = module
        object.__setattr__(self, name, module)

    register_module = add_module

    def register_forward_hook(self, hook) -> RemovableHandle:
        """`hook(module, inputs, output)` runs after forward; a non-None return value
        replaces the output."""
        handle = RemovableHandle(self._forward_hooks)
        self._forward_hooks[handle.id] = hook
        return handle

    def register_forward_pre_hook(self, hook) -> RemovableHandle:
        """`hook(module, inputs)` runs before forward; a non-None return value replaces
        the inputs."""
        handle = RemovableHandle(self._forward_pre_hooks)
        self._forward_pre_hooks[handle.id] = hook
        return handle

    # ---- traversal -------------------------------------------------------------
    def named_modules(self, memo=None, prefix: str = ""):
        if memo is None:
            memo = set()
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_members(self, attr: str, prefix: str, recurse: bool):
        # Identity, not ==, decides duplicates: Tensor.__eq__ is elementwise.
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, module in modules:
            for name, value in getattr(module, attr).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def get_submodule(self, target: str) -> "Module":
        module = self
        for part in target.split(".") if target else []:
            child = module._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(module).__name__} has no submodule {part!r} "
                                     f"(looking up {target!r})")
            module = child
        return module

    # ---- modes and gradients ---------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError(f"train(mode): mode must be a bool, got {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.data[...] = 0

    def apply(self, fn) -> "Module":
        """Call `fn(module)` on every submodule (children first) and on self."""
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- dtype -----------------------------------------------------------------
    def to(self, target=None, *, memory_format=None) -> "Module":
        """`to(dtype)` converts floating parameters, their gradients and floating buffers
        in place: the Parameter objects stay the same (an optimizer built before still
        holds them), only their arrays change. `to(memory_format=minidl.channels_last)`
        lays out the 4-D parameters (convolution weights) channels-last, which makes a
        convolution's output channels-last even for a one-channel input. `to("cuda")` /
        `to("cpu")` move them the same way (create the optimizer after the move, as in
        PyTorch)."""
        if memory_format is not None:
            on_gpu = (isinstance(target, str) and target.startswith("cuda")) or (
                target is None and any(t.device != "cpu" for t in self.parameters()))
            if on_gpu and _mf._check(memory_format) is _mf.channels_last:
                raise _mf._gpu_unsupported(f"the {type(self).__name__} on cuda")
            for t in list(self.parameters()) + list(self.buffers()):
                if t.data.ndim == 4:
                    t.data = _mf.convert(t.data, memory_format)
                    if t.grad is not None:
                        t.grad = Tensor._wrap(_mf.convert(t.grad.data, memory_format))
        if isinstance(target, str) and target.partition(":")[0] in ("cpu", "cuda"):
            from ..cuda import canonical, to_device_array
            dev = canonical(target)
            for t in list(self.parameters()) + list(self.buffers()):
                if t.device != dev:
                    t.data, t.device = to_device_array(t.data, dev), dev
                    if t.grad is not None:
                        t.grad = Tensor._wrap(to_device_array(t.grad.data, dev))
            return self
        if target is None:
            return self
        try:
            dtype = np.dtype(target)
        except TypeError:
            raise ValueError(f"to(): expected a float dtype or 'cpu', got {target!r}") from None
        if dtype.kind != "f":
            raise ValueError(f"to(): only floating dtypes are supported, got {dtype}")
        for t in list(self.parameters()) + list(self.buffers()):
            if t.data.dtype.kind == "f" and t.data.dtype != dtype:
                t.data = t.data.astype(dtype)
                if t.grad is not None:
                    t.grad = Tensor._wrap(t.grad.data.astype(dtype))
        return self

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    def cpu(self) -> "Module":
        return self.to("cpu")

    def cuda(self) -> "Module":
        return self.to("cuda")

    # ---- state -----------------------------------------------------------------
    def _state_items(self, prefix: str = ""):
        """(dotted name, tensor) of every parameter and persistent buffer, in order.
        Unlike parameters(), a module or tensor shared by two parents appears under
        every name (as in PyTorch), so a state_dict loads into a model built the same way."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, p
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, b
        for name, module in self._modules.items():
            if module is not None:
                yield from module._state_items(f"{prefix}{name}.")

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of the parameter and buffer arrays as NumPy arrays, keyed by dotted
        names ("features.0.weight"): they save straight into an .npz."""
        return OrderedDict((name, t.data.copy() if t.device == "cpu" else t.data.to_host())
                           for name, t in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy `state_dict` values into the existing arrays (in place, so optimizers
        keep their references). Mis-shaped entries and values that do not convert to
        the entry's dtype always raise; missing and unexpected keys raise when `strict`.
        Every entry is checked and converted before the first one is copied: a failed
        load leaves the module as it was. Returns (missing_keys, unexpected_keys)."""
        own = OrderedDict(self._state_items())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mis_shaped, values, bad_values = [], [], []
        for name, t in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            try:
                value = value.data if isinstance(value, Tensor) else value
                value = value.to_host() if hasattr(value, "to_host") else np.asarray(value)
            except (ValueError, TypeError) as e:
                bad_values.append(f"{name!r} ({e})")
                continue
            if value.shape != t.data.shape:
                mis_shaped.append((name, t.data.shape, value.shape))
                continue
            target = t.data.dtype
            if value.dtype.hasobject or (np.iscomplexobj(value)
                                         and not np.issubdtype(target, np.complexfloating)):
                bad_values.append(f"{name!r} (dtype {value.dtype} does not convert to "
                                  f"{target})")
                continue
            try:
                values.append((t, value.astype(target, copy=False)))
            except (ValueError, TypeError) as e:
                bad_values.append(f"{name!r} (dtype {value.dtype} does not convert to "
                                  f"{target}: {e})")
        errors = []
        if strict and missing:
            errors.append("missing keys: " + ", ".join(repr(k) for k in missing))
        if strict and unexpected:
            errors.append("unexpected keys: " + ", ".join(repr(k) for k in unexpected))
        if mis_shaped:
            errors.append("mis-shaped keys: " + ", ".join(
                f"{k!r} (expected shape {exp}, got {got})" for k, exp, got in mis_shaped))
        if bad_values:
            errors.append("values that do not convert: " + ", ".join(bad_values))
        if errors:
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}:\n  "
                               + "\n  ".join(errors))
        for t, value in values:
            t.data[...] = value
        return _IncompatibleKeys(missing, unexpected)

    # ---- printing --------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): " + _addindent(repr(module), 2)
                       for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{self._get_name()}({body})"
