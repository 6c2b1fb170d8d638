"""See a model: its graph as a picture, its activation distributions over training.

    python examples/visualize.py --out runs/viz

1. `minidl.viz.draw_dot(loss)` walks the tape back from the loss, the way `backward`
   does, and writes the graph as Graphviz DOT text (graph.dot): one box per tensor,
   labelled with the op that made it and its shape. With Graphviz installed
   (apt-get install graphviz) it is also drawn as graph.svg.
2. `minidl.viz.ActivationStats(model)` hooks every layer and records the mean, standard
   deviation and 15/50/85th percentiles of its output every few steps; `plot()` draws
   them (activations.png, needs matplotlib). Watch the sigmoid inputs of a plain MLP
   drift while training, and those of a batch-normalized one stay put (the paper's
   Figure 1(b, c)): run with and without --bn.
"""
import argparse
import contextlib
import os

import minidl
from minidl import nn, optim, viz
from minidl.data import DataLoader, TensorDataset, fashion_mnist


def mlp(bn):
    layers = [nn.Flatten()]
    for n_in in (784, 100):
        layers += [nn.Linear(n_in, 100)] + ([nn.BatchNorm1d(100)] if bn else []) + [nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(100, 10))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bn", action="store_true", help="batch-normalize the hidden layers")
    p.add_argument("--steps", type=int, default=None, help="default 2000 (20 with --quick)")
    p.add_argument("--every", type=int, default=None, help="record every N steps")
    p.add_argument("--out", default="runs/visualize")
    p.add_argument("--quick", action="store_true", help="a few steps on 1,000 images")
    args = p.parse_args()
    steps = args.steps or (20 if args.quick else 2000)
    every = args.every or max(1, steps // 20)
    os.makedirs(args.out, exist_ok=True)

    train = fashion_mnist(train=True)
    if args.quick:
        train = TensorDataset(*(a[:1000] for a in train.arrays))
    minidl.manual_seed(0)
    model = mlp(args.bn)
    opt = optim.SGD(model.parameters(), lr=0.5 if args.bn else 0.1)
    loader = DataLoader(train, batch_size=60, shuffle=True, drop_last=True, seed=0)

    # 1. The graph of one training step, drawn before backward() frees it.
    x, y = next(iter(loader))
    graph = viz.draw_dot(nn.functional.cross_entropy(model(x), y), names=model)
    graph.render(os.path.join(args.out, "graph.dot"))
    try:
        graph.render(os.path.join(args.out, "graph.svg"))
    except viz.GraphvizNotFoundError as e:
        print(f"graph.svg not drawn: {e}")
    print(f"wrote {args.out}/graph.dot ({graph.source.count('->')} edges)")

    # 2. Activation statistics of every layer, recorded on the training batches.
    stats = viz.ActivationStats(model, layers=[n for n, m in model.named_modules()
                                               if isinstance(m, (nn.Linear, nn.BatchNorm1d))])
    step = 0
    while step < steps:
        for x, y in loader:
            record = step % every == 0
            with stats if record else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if record:
                stats.snapshot(step)
            step += 1
            if step == steps:
                break
    print(f"loss after {steps} steps: {loss.item():.3f}")
    for name, rows in stats.history.items():
        a, b = rows[0], rows[-1]
        print(f"layer {name:>2} {type(stats.recorders[name].module).__name__:11s} step "
              f"{a['step']}: mean {a['mean']:+.2f} std {a['std']:.2f}  ->  step {b['step']}: "
              f"mean {b['mean']:+.2f} std {b['std']:.2f}")
    try:
        stats.plot(os.path.join(args.out, "activations.png"))
        print(f"wrote {args.out}/activations.png")
    except ImportError as e:
        print(e)


if __name__ == "__main__":
    main()
