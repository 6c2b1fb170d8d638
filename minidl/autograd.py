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

from . import layout

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
    """One recorded op: where its output came from and how to send gradients back.

    `needs_grad[i]` says whether parent i wanted a gradient when the op ran (Chainer's
    and PyTorch's `needs_input_grad`). The engine hands it to `backward`, which returns
    None for every parent that does not need one, so no op computes a gradient that
    nobody asked for (a first conv layer skips its most expensive kernel this way)."""

    __slots__ = ("name", "parents", "needs_grad", "backward")

    def __init__(self, name, parents, needs_grad, backward):
        self.name = name
        self.parents = parents
        self.needs_grad = needs_grad
        self.backward = backward

    def __repr__(self):
        return f"<{self.name}Backward>"


def record(data: np.ndarray, parents: tuple, backward, name: str):
    """Wrap `data` as the output Tensor of op `name`; attach a Node when any parent
    requires grad and recording is on.

    `backward(grad_out, needs_grad) -> grads`: one gradient per parent, shaped like that
    parent, or None where `needs_grad[i]` is False."""
    out = Tensor._wrap(data)
    if _grad_enabled:
        needs_grad = tuple(p.requires_grad for p in parents)
        if True in needs_grad:
            out.requires_grad = True
            out._node = Node(name, parents, needs_grad, backward)
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


class _GradientAliasing:
    """The one place that decides when a gradient array must be copied.

    Ops may return their incoming gradient itself (Add), a view of it (Reshape), or
    hand one array to several parents. Inside the pass that is fine: the engine never
    writes into a gradient it was given. A leaf's `.grad`, however, belongs to the user
    (who may clip it in place), so a leaf keeps a private copy of any array that may be
    seen elsewhere, and an array that is surely fresh is kept without a copy."""

    def __init__(self):
        self.handed = set()  # ids of arrays already given to some tensor in this pass

    def is_shared(self, gp: np.ndarray, g_out: np.ndarray) -> bool:
        shared = gp is g_out or gp.base is not None or id(gp) in self.handed
        self.handed.add(id(gp))
        return shared


def _accumulate_leaf(leaf, g: np.ndarray, shared: bool) -> None:
    """Add `g` into `leaf.grad` (a private copy of `g` when it is shared). As in PyTorch,
    `.grad` takes its leaf's dtype and memory format (channels_last or not)."""
    if g.dtype != leaf.data.dtype:
        g, shared = g.astype(leaf.data.dtype), False
    if g.ndim == 4 and layout.is_channels_last(g) != layout.is_channels_last(leaf.data):
        g, shared = layout.convert(g, layout.format_of(leaf.data)), False
    if leaf.grad is None:
        leaf.grad = Tensor._wrap(g.copy(order="K") if shared else g)  # K: keeps the layout
    else:
        acc = leaf.grad.data
        if acc.flags.writeable and acc.base is None:
            acc += g  # accumulation across backward calls, in place as in PyTorch
        else:
            leaf.grad = Tensor._wrap(acc + g)


_queued_callbacks = None  # a list while a backward pass runs, else None


def queue_callback(fn) -> None:
    """Run `fn()` once the backward pass that is running now has accumulated every
    gradient (PyTorch's `Variable._execution_engine.queue_callback`). Called from an op's
    backward: minidl.distributed.DistributedDataParallel all-reduces gradients this way.
    A callback already queued in this pass (equal `fn`) is not queued twice."""
    if _queued_callbacks is None:
        raise RuntimeError("queue_callback: no backward pass is running")
    if fn not in _queued_callbacks:
        _queued_callbacks.append(fn)


def _seed_gradient(root, grad) -> np.ndarray:
    """d(root)/d(root): ones for a scalar, else the `grad` the caller passed."""
    if not root.requires_grad:
        raise RuntimeError("backward: this tensor does not require grad and has no recorded "
                           "history (was it computed under no_grad(), or from inputs that "
                           "do not require grad?)")
    if grad is None:
        if root.data.size != 1:
            raise RuntimeError(f"backward: grad can be implied only for a scalar output, got "
                               f"shape {root.shape}; pass grad= of that shape")
        return np.ones_like(root.data)
    grad = getattr(grad, "data", grad)
    if root.device != "cpu":  # the seed gradient goes where the output is
        from .cuda import to_device_array
        grad = to_device_array(grad, root.device).astype(root.data.dtype, copy=False)
    else:
        grad = np.asarray(grad, dtype=root.data.dtype)
    if grad.shape != root.shape:
        raise ValueError(f"backward: grad has shape {grad.shape} but the output has shape "
                         f"{root.shape}")
    return grad


def backward(root, grad=None, retain_graph: bool = False) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad; then run
    the callbacks that ops queued during the pass (`queue_callback`)."""
    global _queued_callbacks
    outer, _queued_callbacks = _queued_callbacks, []
    try:
        _backward(root, grad, retain_graph)
        callbacks = _queued_callbacks
    finally:
        _queued_callbacks = outer
    for fn in callbacks:
        fn()


def _backward(root, grad, retain_graph: bool) -> None:
    """Accumulate d(root)/d(leaf) into `.grad` of every leaf that requires grad.

    Three steps: visit the recorded tensors in reverse topological order (each after
    everything that used it); apply the chain rule at each (its node's local backward
    turns the summed gradient of its output into gradients for its parents); free the
    node's saved values unless `retain_graph`."""
    grad = _seed_gradient(root, grad)
    aliasing = _GradientAliasing()
    if root._node is None:  # a leaf: d(root)/d(root) = 1
        _accumulate_leaf(root, grad, aliasing.is_shared(grad, grad))
        return

    grads = {id(root): grad}  # summed gradient of each tensor whose users are all done
    for t in reversed(_topological_order(root)):
        g = grads.pop(id(t), None)
        if g is None:  # nothing flowed here (e.g. only through non-differentiable paths)
            continue
        node = t._node
        if node.backward is None:
            raise GraphFreedError(
                f"backward: trying to backward through the graph a second time (the saved "
                f"values of {node.name} were freed by the first backward). Pass "
                f"retain_graph=True to the first backward if you need to call it twice.")
        parent_grads = node.backward(g, node.needs_grad)
        for p, needed, gp in zip(node.parents, node.needs_grad, parent_grads):
            if not needed or gp is None:
                continue
            if p._node is None:
                _accumulate_leaf(p, gp, aliasing.is_shared(gp, g))
            else:
                aliasing.is_shared(gp, g)  # an intermediate may pass it on to a leaf
                prev = grads.get(id(p))
                grads[id(p)] = gp if prev is None else prev + gp
        if not retain_graph:
            # Free the saved values and the intermediate tensors now, not when the
            # Python objects happen to die: the loss often outlives the step.
            node.backward = None
            node.parents = ()
