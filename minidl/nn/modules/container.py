"""Containers: Sequential (a pipeline), ModuleList (a registered list) and Concat
(parallel branches joined along channels, for Inception blocks)."""
from __future__ import annotations

from collections import OrderedDict

from ...functions import concatenate
from ..module import Module
from .activation import ReLU
from .batchnorm import _BatchNorm


def _index(i, n: int, what: str) -> int:
    i = int(i)
    if not -n <= i < n:
        raise IndexError(f"{what}: index {i} is out of range for {n} modules")
    return i % n


def _fuses_with_relu(m, nxt) -> bool:
    """A batch norm directly followed by a ReLU, neither with its forward replaced by a
    subclass nor watched by a hook that could see the intermediate values."""
    return (isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward
            and isinstance(nxt, ReLU) and type(nxt).forward is ReLU.forward
            and m._hooks_only_observe() and nxt._hooks_only_observe())


class Sequential(Module):
    """Sequential(m0, m1, ...) or Sequential(OrderedDict(name=module)): forward feeds
    each module's output to the next. Children are named "0", "1", ... by default."""

    def __init__(self, *args):
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, module in args[0].items():
                self.add_module(name, module)
        else:
            for i, module in enumerate(args):
                self.add_module(str(i), module)

    def forward(self, x):
        modules = list(self._modules.values())
        i = 0
        while i < len(modules):
            m = modules[i]
            if i + 1 < len(modules) and _fuses_with_relu(m, modules[i + 1]):
                # BatchNorm then ReLU as one op (F.batch_norm_relu): bitwise the same
                # values and gradients, one pass over memory and one op fewer
                x = m._call(m.forward_relu, x)
                i += 2
            else:
                x = m(x)
                i += 1
        return x

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[_index(idx, len(self), "Sequential")]

    def __setitem__(self, idx, module) -> None:
        key = list(self._modules)[_index(idx, len(self), "Sequential")]
        setattr(self, key, module)

    def __delitem__(self, idx) -> None:
        keys = list(self._modules)
        for key in (keys[idx] if isinstance(idx, slice)
                    else [keys[_index(idx, len(keys), "Sequential")]]):
            delattr(self, key)

    def append(self, module) -> "Sequential":
        self.add_module(str(len(self)), module)
        return self


class ModuleList(Module):
    """A list whose modules are registered (so parameters() and to() see them);
    it has no forward of its own."""

    def __init__(self, modules=None):
        super().__init__()
        if modules is not None:
            self.extend(modules)

    def _renumber(self, modules) -> None:
        for key in list(self._modules):
            delattr(self, key)
        for i, m in enumerate(modules):
            self.add_module(str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return type(self)(list(self._modules.values())[idx])
        return self._modules[str(_index(idx, len(self), "ModuleList"))]

    def __setitem__(self, idx, module) -> None:
        self.add_module(str(_index(idx, len(self), "ModuleList")), module)

    def __delitem__(self, idx) -> None:
        modules = list(self._modules.values())
        del modules[idx]
        self._renumber(modules)

    def append(self, module) -> "ModuleList":
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def insert(self, index: int, module) -> None:
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._renumber(modules)


class Concat(Module):
    """Runs every branch on the same input and concatenates the outputs along `dim`
    (channels by default): the join of an Inception block."""

    def __init__(self, *branches, dim: int = 1):
        super().__init__()
        self.dim = dim
        for i, branch in enumerate(branches):
            self.add_module(str(i), branch)

    def forward(self, x):
        return concatenate([branch(x) for branch in self._modules.values()], axis=self.dim)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        return list(self._modules.values())[_index(idx, len(self), "Concat")]

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
