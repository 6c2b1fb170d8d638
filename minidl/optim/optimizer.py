"""`Optimizer`: the base of SGD, Adam and RMSprop, with PyTorch's param_groups and
state_dict layout.

Subclasses implement `_update(group)`, which walks `group["params"]` and updates each
parameter with a gradient IN PLACE on `p.data` with NumPy (no tape recording). Per-param
state lives in `self.state[p]`, a dict of NumPy arrays and Python numbers.
"""
from __future__ import annotations

import copy

import numpy as np

from ..tensor import Tensor


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        # Keyed by the Parameter object. Tensor hashes by identity, and a dict compares
        # identity before ==, so Tensor's elementwise __eq__ is never called here.
        self.state = {}
        self.param_groups = []
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"{type(self).__name__}: can only optimize minidl Tensors, got "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{type(self).__name__}: can't optimize a non-leaf tensor "
                                 f"(shape {p.shape})")
        # Identity sets: `p in list` would call Tensor.__eq__ (elementwise).
        ids = {id(p) for p in params}
        if len(ids) != len(params):
            raise ValueError(f"{type(self).__name__}: a parameter appears twice in one group")
        for other in self.param_groups:
            if ids & {id(p) for p in other["params"]}:
                raise ValueError(f"{type(self).__name__}: some parameters appear in more than "
                                 f"one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: dict) -> None:
        """Validate a group's options (subclasses raise ValueError)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.data[...] = 0

    def step(self, closure=None):
        """One update of every parameter that has a gradient; `closure` (optional)
        re-evaluates the model and returns the loss, as in PyTorch."""
        loss = None
        if closure is not None:
            from ..autograd import enable_grad
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update(group)
        return loss

    def _update(self, group: dict) -> None:
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------
    def state_dict(self) -> dict:
        """{"state": {index: {name: array or number}}, "param_groups": [{option: value,
        "params": [index, ...]}]}: parameters are numbered in group order, like PyTorch,
        and arrays are NumPy copies, so minidl.save can store them without pickle."""
        index = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                index.setdefault(id(p), len(index))
                packed["params"].append(index[id(p)])
            groups.append(packed)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state.get(p)
                if s:
                    state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else
                                               v.to_host() if hasattr(v, "to_host") else v)
                                           for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state has "
                             f"{len(groups)} parameter groups, this optimizer has "
                             f"{len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"{type(self).__name__}.load_state_dict: parameter group {i} "
                                 f"has {len(saved['params'])} parameters in the state, "
                                 f"{len(own['params'])} here")
        by_index = {}
        for saved, own in zip(groups, self.param_groups):
            for i, p in zip(saved["params"], own["params"]):
                by_index[int(i)] = p
        new_state = {}
        # Keys may come back as strings from a file format with string keys only.
        for key, saved in state_dict["state"].items():
            p = by_index.get(int(key))
            if p is None:
                continue
            entry = {}
            for name, value in saved.items():
                if isinstance(value, Tensor):
                    value = value.data
                if hasattr(value, "to_host"):  # saved from a GPU optimizer
                    value = value.to_host()
                if isinstance(value, np.ndarray) and value.ndim > 0:
                    if value.shape != p.data.shape:
                        raise ValueError(f"{type(self).__name__}.load_state_dict: state "
                                         f"{name!r} of parameter {key} has shape {value.shape}, "
                                         f"the parameter has shape {p.data.shape}")
                    value = value.astype(p.data.dtype, copy=True)
                    if p.device != "cpu":  # state lives with its parameter
                        from ..cuda import to_device_array
                        value = to_device_array(value, p.device)
                elif isinstance(value, (np.ndarray, np.generic)):
                    value = value.item()  # a 0-d array, e.g. the step count
                entry[name] = value
            new_state[p] = entry
        self.state = new_state
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = tuple(v) if isinstance(v, list) else copy.deepcopy(v)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(group):
                if k != "params":
                    lines.append(f"    {k}: {group[k]}")
        return "\n".join(lines) + "\n)"
