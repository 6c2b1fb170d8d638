"""Look inside a model: its recorded graph as a picture, its activations as distributions.

`draw_dot(loss)` walks the tape backwards from a tensor, as `backward` does, and returns
the graph in Graphviz's DOT language (micrograd's draw_dot, for tensors): one node per
tensor, labelled with the op that made it and its shape (leaves: their name and shape),
and an edge from each parent to the tensor computed from it.

    loss = nn.functional.cross_entropy(model(x), y)
    g = draw_dot(loss, names=model)       # names the parameters: "0.weight (100, 784)"
    print(g.source)                        # DOT text: always available
    g.render("graph.svg")                  # needs Graphviz's `dot` program

Draw before `loss.backward()`: backward frees the graph (unless retain_graph=True).

`ActivationStats(model)` puts an `ActivationRecorder` (minidl.train) on every layer and
keeps, per layer and per recorded step, the mean, standard deviation and percentiles of
its output; `plot()` draws them over training (needs matplotlib: the `plot` extra).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

from .tensor import Tensor
from .train.recorder import ActivationRecorder

__all__ = ["ActivationStats", "Dot", "GraphvizNotFoundError", "draw_dot", "trace"]


class GraphvizNotFoundError(RuntimeError):
    """Rendering to SVG/PNG needs Graphviz's `dot` program, which is not installed."""


def trace(root: Tensor):
    """The tensors the tape reaches from `root` (root first) and the edges
    (parent, child) between them: a tensor's parents are its grad_fn's inputs."""
    if not isinstance(root, Tensor):
        raise TypeError(f"trace: expected a minidl Tensor, got {type(root).__name__}")
    nodes, edges, seen = [], [], {id(root)}
    stack = [root]
    while stack:  # iterative: a deep graph must not hit the recursion limit
        t = stack.pop()
        nodes.append(t)
        fn = t.grad_fn
        if fn is None:
            continue
        if fn.backward is None:
            raise ValueError(f"trace: the graph behind this tensor ({fn.name}) was freed by "
                             f"backward(); draw it before calling backward(), or pass "
                             f"retain_graph=True to backward")
        for p in fn.parents:
            edges.append((p, t))
            if id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return nodes, edges


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(n) for n in t.shape) + ("," if t.ndim == 1 else "") + ")"


def _names(names) -> dict:
    """id(tensor) -> name, from a Module (its named_parameters) or a {name: tensor} dict."""
    if names is None:
        return {}
    if hasattr(names, "named_parameters"):
        names = dict(names.named_parameters())
    return {id(t): str(n) for n, t in names.items()}


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Dot:
    """A graph in the DOT language: `.source` is the text; `render(path)` writes it
    (a .dot path) or draws it with Graphviz's `dot` program (.svg, .png, .pdf)."""

    def __init__(self, source: str):
        self.source = source

    def __str__(self) -> str:
        return self.source

    def render(self, path) -> str:
        path = os.fspath(path)
        fmt = os.path.splitext(path)[1].lstrip(".").lower()
        if fmt in ("dot", "gv", ""):
            with open(path, "w") as f:
                f.write(self.source)
            return path
        if fmt not in ("svg", "png", "pdf"):
            raise ValueError(f"Dot.render: unsupported format {fmt!r} of {path!r}; use .dot, "
                             f".svg, .png or .pdf")
        exe = shutil.which("dot")
        if exe is None:
            raise GraphvizNotFoundError(
                f"Dot.render: drawing {path!r} needs Graphviz's `dot` program, which is not "
                f"installed (apt-get install graphviz, or brew install graphviz). The DOT "
                f"text itself needs nothing: render it to a .dot file, or print .source, and "
                f"paste it into any Graphviz viewer.")
        subprocess.run([exe, f"-T{fmt}", "-o", path], input=self.source.encode(), check=True)
        return path

    def _repr_svg_(self):  # Jupyter shows the picture when Graphviz is installed
        exe = shutil.which("dot")
        if exe is None:
            return None
        return subprocess.run([exe, "-Tsvg"], input=self.source.encode(), check=True,
                              capture_output=True).stdout.decode()


def draw_dot(root: Tensor, names=None, rankdir: str = "LR") -> Dot:
    """The graph that produced `root`, as a `Dot`.

    Each tensor is a node: a computed tensor is labelled with its op name and shape
    ("Mul (3, 4)"), a leaf with its name from `names` (a Module, whose parameter names are
    used, or a {name: tensor} dict), else "leaf" (or "const" and the value of a scalar that
    does not require grad), and its shape. Leaves that require grad
    (what an optimizer updates) are filled; constants are grey. Edges run from parent to
    child, the way data flows in the forward pass."""
    nodes, edges = trace(root)
    label_of = _names(names)
    ids = {id(t): f"t{i}" for i, t in enumerate(nodes)}
    lines = ["digraph minidl {", f"  rankdir={rankdir};",
             '  node [shape=box, fontname="Helvetica", fontsize=10];']
    for t in nodes:
        if t.grad_fn is not None:
            label, style = f"{t.grad_fn.name} {_shape(t)}", ""
        else:
            default = "leaf" if t.requires_grad else (
                f"const {t.data.item():.4g}" if t.data.size == 1 else "const")
            label = f"{label_of.get(id(t), default)} {_shape(t)}"
            style = (', style=filled, fillcolor="#cfe2ff"' if t.requires_grad
                     else ', color="grey50", fontcolor="grey35"')
        lines.append(f"  {ids[id(t)]} [label={_quote(label)}{style}];")
    for parent, child in edges:
        lines.append(f"  {ids[id(parent)]} -> {ids[id(child)]};")
    lines.append("}")
    return Dot("\n".join(lines) + "\n")


class ActivationStats:
    """Per-layer activation distributions over training.

    One `ActivationRecorder` (minidl.train) per layer, watching its whole output (or
    input): while `with stats:` is active, every forward pass through the layers is
    recorded; `snapshot(step)` reduces what was recorded to the layer's mean, standard
    deviation and percentiles, and appends them to `history[layer]`.

    `layers`: names from `model.named_modules()` (default: every leaf module, i.e. every
    layer that holds no other layer).

        stats = ActivationStats(model)
        for step in range(steps):
            with stats if step % 100 == 0 else contextlib.nullcontext():
                loss = loss_fn(model(x), y)
            ...
            if step % 100 == 0:
                stats.snapshot(step)
        stats.plot("activations.png")
    """

    def __init__(self, model, layers=None, percentiles=(15, 50, 85), source: str = "output"):
        modules = dict(model.named_modules())
        if layers is None:
            layers = [n for n, m in modules.items() if n and not any(m.children())]
            if not layers:  # a model that is one layer
                layers = [""]
        missing = [n for n in layers if n not in modules]
        if missing:
            raise KeyError(f"ActivationStats: no layer named {', '.join(map(repr, missing))} "
                           f"in {type(model).__name__}; layers are "
                           f"{[n for n in modules if n]}")
        self.percentiles = tuple(percentiles)
        self.recorders = {
            n: ActivationRecorder(modules[n], unit=None, percentiles=self.percentiles,
                                  name=n or type(model).__name__, source=source, moments=True)
            for n in layers}

    @property
    def history(self) -> dict:
        """{layer name: [{"step", "mean", "std", "p15", ...}, ...]}."""
        return {n: r.history for n, r in self.recorders.items()}

    def __enter__(self):
        for r in self.recorders.values():
            r.__enter__()
        return self

    def __exit__(self, *exc):
        for r in self.recorders.values():
            r.__exit__(*exc)
        return False

    def snapshot(self, step: int) -> dict:
        """Summarize what each layer produced since `with stats:` began."""
        return {n: r.snapshot(step) for n, r in self.recorders.items()}

    def remove(self) -> None:
        """Unregister the hooks: the model runs as if never watched."""
        for r in self.recorders.values():
            r.remove()

    def plot(self, path=None, layers=None):
        """One panel per layer: the band between the lowest and highest recorded
        percentile, the median and the mean, over the recorded steps. Saves to `path`
        when given; returns the matplotlib Figure."""
        try:
            from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
        except ImportError:
            raise ImportError("ActivationStats.plot needs matplotlib: pip install "
                              "'minidl[plot]' (the numbers are in .history without it)") from None
        layers = list(self.recorders) if layers is None else list(layers)
        if not layers or not any(self.recorders[n].history for n in layers):
            raise RuntimeError("ActivationStats.plot: nothing recorded yet; call snapshot() "
                               "after a forward pass inside `with stats:`")
        cols = min(4, len(layers))
        rows = -(-len(layers) // cols)
        fig = Figure(figsize=(3.2 * cols, 2.4 * rows))
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
        lo, hi = f"p{min(self.percentiles):g}", f"p{max(self.percentiles):g}"
        for ax, n in zip(axes.ravel(), layers):
            h = self.recorders[n].history
            steps = np.array([r["step"] for r in h])
            ax.fill_between(steps, [r[lo] for r in h], [r[hi] for r in h], alpha=0.3,
                            label=f"{lo}-{hi}")
            if "p50" in h[0]:
                ax.plot(steps, [r["p50"] for r in h], lw=1, label="median")
            ax.plot(steps, [r["mean"] for r in h], lw=1, ls="--", label="mean")
            ax.set_title(f"{self.recorders[n].name} ({type(self.recorders[n].module).__name__})",
                         fontsize=9)
        for ax in axes.ravel()[len(layers):]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7)
        fig.supxlabel("step")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig
