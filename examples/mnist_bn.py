"""The BN paper's MNIST experiment in plain minidl, the way you would write it yourself.

    python examples/mnist_bn.py --dataset fashion-mnist --steps 5000

Trains the 784-100-100-100-10 sigmoid MLP with and without batch norm on the same
mini-batches and prints test accuracy and the 15/50/85th percentiles of one
last-layer sigmoid's input as training goes (Figure 1 of the paper, as numbers).
"""
import argparse

import numpy as np

import minidl
from minidl import nn, optim
from minidl.data import DataLoader, fashion_mnist, mnist

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
parser.add_argument("--steps", type=int, default=50000)
parser.add_argument("--eval-every", type=int, default=1000)
args = parser.parse_args()

load = mnist if args.dataset == "mnist" else fashion_mnist
train_set, test_set = load(train=True), load(train=False)
test_x, test_y = (minidl.tensor(a) for a in test_set.arrays)


def make_mlp(bn):
    layers = [nn.Flatten()]
    for n_in in (784, 100, 100):
        layers += [nn.Linear(n_in, 100, bias=not bn)]   # BN's beta replaces the bias
        layers += [nn.BatchNorm1d(100)] if bn else []
        layers += [nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(100, 10))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


for bn in (False, True):
    minidl.manual_seed(0)
    model = make_mlp(bn)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = []  # the input of the last sigmoid, captured at evaluation time
    last_sigmoid = [m for m in model.modules() if isinstance(m, nn.Sigmoid)][-1]
    last_sigmoid.register_forward_hook(
        lambda mod, inp, out, seen=seen: (seen.append(inp[0].data[:, 0].copy())
                                          if not mod.training else None))
    batches = iter(())
    loader = DataLoader(train_set, batch_size=60, shuffle=True, seed=0)
    print(f"--- {'with' if bn else 'without'} BN ---")
    for step in range(1, args.steps + 1):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.eval_every == 0:
            model.eval()
            with minidl.no_grad():
                acc = (model(test_x).data.argmax(1) == test_y.data).mean()
            model.train()
            p15, p50, p85 = np.percentile(seen.pop(), [15, 50, 85])
            print(f"step {step:6d}  loss {loss.item():.3f}  test acc {acc:.4f}  "
                  f"sigmoid input p15/50/85 {p15:+.2f} {p50:+.2f} {p85:+.2f}")
