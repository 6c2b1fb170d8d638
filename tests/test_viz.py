"""minidl.viz: the graph as DOT text, and per-layer activation statistics."""
import re

import numpy as np
import pytest

import minidl
from minidl import nn, viz


def _parse(source):
    labels = dict(re.findall(r'^\s*(t\d+) \[label="([^"]*)"', source, re.M))
    edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(t\d+) -> (t\d+);", source, re.M)}
    return labels, edges


def test_dot_of_a_known_graph():
    a = minidl.randn(2, 3, requires_grad=True)
    w = minidl.randn(3, 4, requires_grad=True)
    loss = ((a @ w).relu() * 2.0).sum()
    src = viz.draw_dot(loss, names={"a": a, "w": w}).source
    assert src.startswith("digraph") and src.rstrip().endswith("}")
    labels, edges = _parse(src)
    assert sorted(labels.values()) == sorted(
        ["Sum ()", "Mul (2, 4)", "const 2 ()", "Relu (2, 4)", "Matmul (2, 4)", "a (2, 3)",
         "w (3, 4)"])
    assert edges == {("a (2, 3)", "Matmul (2, 4)"), ("w (3, 4)", "Matmul (2, 4)"),
                     ("Matmul (2, 4)", "Relu (2, 4)"), ("Relu (2, 4)", "Mul (2, 4)"),
                     ("const 2 ()", "Mul (2, 4)"), ("Mul (2, 4)", "Sum ()")}


def test_dot_names_module_parameters_and_shares_reused_tensors():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = minidl.randn(5, 3)
    h = model(x)
    out = (h * h).sum()  # h feeds Mul twice: one node, two edges
    labels, edges = _parse(viz.draw_dot(out, names=model).source)
    assert "0.weight (4, 3)" in labels.values() and "0.bias (4,)" in labels.values()
    assert list(labels.values()).count("Relu (5, 4)") == 1
    src = viz.draw_dot(out, names=model).source
    relu = [k for k, v in labels.items() if v == "Relu (5, 4)"][0]
    assert src.count(f"{relu} -> ") == 2


def test_dot_after_backward_says_graph_was_freed():
    a = minidl.randn(3, requires_grad=True)
    loss = (a * a).sum()
    loss.backward()
    with pytest.raises(ValueError, match="freed by backward"):
        viz.draw_dot(loss)


def test_render_dot_text_and_missing_graphviz(tmp_path, monkeypatch):
    a = minidl.randn(3, requires_grad=True)
    g = viz.draw_dot((a * 3.0).sum())
    p = g.render(tmp_path / "g.dot")
    assert open(p).read() == g.source
    monkeypatch.setattr(viz.shutil, "which", lambda name: None)
    with pytest.raises(viz.GraphvizNotFoundError, match="Graphviz's `dot` program"):
        g.render(tmp_path / "g.svg")
    with pytest.raises(ValueError, match="unsupported format"):
        g.render(tmp_path / "g.jpeg")


def test_render_svg_with_graphviz(tmp_path):
    import shutil
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    a = minidl.randn(3, requires_grad=True)
    p = viz.draw_dot((a * 3.0).sum()).render(tmp_path / "g.svg")
    assert "<svg" in open(p).read()


def test_activation_stats_equal_numpy():
    minidl.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    stats = viz.ActivationStats(model)
    assert list(stats.recorders) == ["0", "1", "2"]
    xs = [minidl.randn(4, 6), minidl.randn(3, 6)]
    for step in (0, 10):
        seen = {n: [] for n in stats.recorders}
        with stats:
            for x in xs:
                h0 = model[0](x)
                h1 = model[1](h0)
                h2 = model[2](h1)
                for n, h in zip("012", (h0, h1, h2)):
                    seen[n].append(h.data.astype(np.float64).ravel())
        model(xs[0])  # outside `with`: not recorded
        snap = stats.snapshot(step)
        for n, chunks in seen.items():
            v = np.concatenate(chunks)
            assert snap[n]["step"] == step
            np.testing.assert_allclose(snap[n]["mean"], v.mean(), rtol=1e-12)
            np.testing.assert_allclose(snap[n]["std"], v.std(), rtol=1e-12)
            np.testing.assert_allclose([snap[n][f"p{q}"] for q in (15, 50, 85)],
                                       np.percentile(v, [15, 50, 85]), rtol=1e-12)
        xs = [x * 2.0 for x in xs]
    assert [r["step"] for r in stats.history["1"]] == [0, 10]
    stats.remove()
    with stats:
        model(xs[0])
    with pytest.raises(RuntimeError, match="nothing was recorded"):
        stats.snapshot(20)


def test_activation_stats_input_source_and_bad_layer():
    model = nn.Sequential(nn.Linear(3, 3), nn.Sigmoid())
    stats = viz.ActivationStats(model, layers=["1"], source="input", percentiles=(5, 95))
    x = minidl.randn(8, 3)
    with stats:
        pre = model[0](x)
        model[1](pre)
    row = stats.snapshot(0)["1"]
    np.testing.assert_allclose([row["p5"], row["p95"]], np.percentile(pre.data, [5, 95]),
                               rtol=1e-6)
    with pytest.raises(KeyError, match="no layer named 'fc'"):
        viz.ActivationStats(model, layers=["fc"])


def test_activation_stats_plot(tmp_path):
    pytest.importorskip("matplotlib")
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    stats = viz.ActivationStats(model)
    with pytest.raises(RuntimeError, match="nothing recorded"):
        stats.plot()
    for step in range(3):
        with stats:
            model(minidl.randn(4, 3))
        stats.snapshot(step)
    stats.plot(tmp_path / "act.png")
    assert (tmp_path / "act.png").stat().st_size > 1000
