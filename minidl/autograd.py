"""The tape: how an op records itself, and how `backward` replays the record in reverse.

Every differentiable op computes its output with NumPy (or a backend kernel) and calls
`record(out, parents, backward, name)`. When gradients are wanted, that attaches a `Node`
to the output: the parents it came from and a closure `backward(grad_out) -> grads`,
one gradient (or None) per parent, already reduced to that parent's shape. The closure
holds whatever the op saved for its backward; dropping the closure frees it.

Rules every op's backward follows: it never modifies `grad_out` in place (the same array
may be handed to several parents), and it returns arrays of its parents' dtypes.
"""
from __future__ import annotations

import contextlib

import numpy as np

_grad_enabled = True
Tensor = None  # bound by minidl.tensor, which imports this module first (no import cycle)


def is_grad_enabled() -> bool:
    return _grad_enabled


class set_grad_enabled(contextlib.ContextDecorator):
    """Context manager (and decorator) that turns recording on or off."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)

    def __enter__(self):
        global _grad_enabled
        self.prev, _grad_enabled = _grad_enabled, self.mode

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self.prev
        return False


def no_grad():
    """`with minidl.no_grad():` records nothing: for evaluation and optimizer steps."""
    return set_grad_enabled(False)


def enable_grad():
    return set_grad_enabled(True)


class Node:
    """One recorded op: where its output came from and how to send gradients back."""

    __slots__ = ("name", "parents", "backward")

    def __init__(self, name, parents, backward):
        self.name = name
        self.parents = parents
        self.backward = backward

    def __repr__(self):
        return f"<{self.name}Backward>"


def record(data: np.ndarray, parents: tuple, backward, name: str):
    """Wrap `data` as the output Tensor of op `name`; attach a Node when any parent
    requires grad and recording is on."""
    out = Tensor._wrap(data)
    if _grad_enabled:
        for p in parents:
            if p.requires_grad:
                out.requires_grad = True
                out._node = Node(name, parents, backward)
                break
    return out


class GraphFreedError(RuntimeError):
    pass


def _topological_order(root) -> list:
    """Recorded tensors reachable from root, each after all of its parents.

    Iterative post-order DFS: a recursive one hits Python's recursion limit on deep
    graphs (a long RNN, or 10,000 chained ops)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:
            order.append(t)
            continue
        if id(t) in visited:
            continue
        visited.add(id(t))
        stack.append((t, True))
        for p in t._node.parents:
            if p._node is not None and id(p) not in visited:
                stack.append((p, False))
    return order


def _accumulate_leaf(leaf, g: np.ndarray, shared: bool) -> None:
    """Add `g` into `leaf.grad`. `shared`: `g` may be seen elsewhere (it is an op's
    incoming gradient, a view, or was handed to another parent too), so a leaf that
    keeps it gets a private copy: a user clipping p.grad in place must not change
    another tensor's gradient."""
    if g.dtype != leaf.data.dtype:
        g, shared = g.astype(leaf.data.dtype), False
    if leaf.grad is None:
        leaf.grad = Tensor._wrap(g.copy() if shared else g)
    else:
        acc = leaf.grad.data
        if acc.flags.writeable and acc.base is None:
            acc += g  # accumulation across backward calls, in place as in PyTorch
        else:
            leaf.grad = Tensor._wrap(acc + g)


def backward(root, grad=None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad."""
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad and has no recorded "
                           "history (was it computed under no_grad(), or from inputs that "
                           "do not require grad?)")
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward: grad can be implied only for a scalar output, got "
                               f"shape {root.shape}; pass grad= of that shape")
        grad = np.ones_like(root.data)
    else:
        grad = getattr(grad, "data", grad)
        if root.device != "cpu":  # the seed gradient goes where the output is
            from .cuda import to_device_array
            grad = to_device_array(grad, root.device).astype(root.data.dtype, copy=False)
        else:
            grad = np.asarray(grad, dtype=root.data.dtype)
        if grad.shape != root.shape:
            raise ValueError(f"backward: grad has shape {grad.shape} but the output has shape "
                             f"{root.shape}")
    if root._node is None:  # a leaf: d(root)/d(root) = 1
        _accumulate_leaf(root, grad, shared=True)
        return

    grads = {id(root): grad}
    handed = set()  # ids of gradient arrays already given to some tensor in this pass
    for t in reversed(_topological_order(root)):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        node = t._node
        if node.backward is None:
            raise GraphFreedError(
                f"backward: trying to backward through the graph a second time (the saved "
                f"values of {node.name} were freed by the first backward). Pass "
                f"retain_graph=True to the first backward if you need to call it twice.")
        parent_grads = node.backward(g)
        for p, gp in zip(node.parents, parent_grads):
            if gp is None or not p.requires_grad:
                continue
            shared = gp is g or gp.base is not None or id(gp) in handed
            handed.add(id(gp))
            if p._node is None:
                _accumulate_leaf(p, gp, shared)
            else:
                prev = grads.get(id(p))
                grads[id(p)] = gp if prev is None else prev + gp
        if not retain_graph:
            # Free the saved values and the intermediate tensors now, not when the
            # Python objects happen to die: the loss often outlives the step.
            node.backward = None
            node.parents = ()
