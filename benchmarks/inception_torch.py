"""BN-Inception-lite in PyTorch CPU, for comparison with `minidl ablation`: the same
network (module for module, so state_dict keys match), the same initial weights (copied
from minidl's model built with the same seed), the same mini-batch sequence (minidl's
seeded DataLoader) and the same protocol (SGD momentum, weight decay / 5 with BN, the
per-step exponential learning-rate decay, 6x faster with BN; evaluation on the first
`--eval-examples` test images every `--eval-every` steps, the whole test set at the end).

    python -m benchmarks.inception_torch --variant bn-x5 --base-lr 0.02 --steps 1500 \\
        [--compare runs/ablation/bn-x5/seed-0/result.json]

With --compare it prints minidl's accuracies of the same run beside PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import math
import time

from benchmarks.harness import clean_blas_env, endless

clean_blas_env()

import torch  # noqa: E402  (before minidl: see figure1_torch.py)
import numpy as np  # noqa: E402


class Concat(torch.nn.Module):
    def __init__(self, *branches):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_module(str(i), b)

    def forward(self, x):
        return torch.cat([b(x) for b in self.children()], 1)


def torch_bn_inception_lite(num_classes=10, in_channels=1, bn=True, activation="relu",
                            width=1.0):
    """Module for module the same network as minidl.models.bn_inception_lite."""
    tnn = torch.nn
    act = {"relu": tnn.ReLU, "sigmoid": tnn.Sigmoid}[activation]

    def c(n):
        return max(1, int(round(n * width)))

    def cba(i, o, k, s=1):
        layers = [tnn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=not bn)]
        if bn:
            layers.append(tnn.BatchNorm2d(o))
        return tnn.Sequential(*layers, act())

    def inception(cin, c1, c3r, c3, cd3r, cd3, pp, pool):
        p = (tnn.AvgPool2d(3, 1, 1) if pool == "avg" else tnn.MaxPool2d(3, 1, 1))
        return Concat(cba(cin, c1, 1), tnn.Sequential(cba(cin, c3r, 1), cba(c3r, c3, 3)),
                      tnn.Sequential(cba(cin, cd3r, 1), cba(cd3r, cd3, 3), cba(cd3, cd3, 3)),
                      tnn.Sequential(p, cba(cin, pp, 1))), c1 + c3 + cd3 + pp

    stem = tnn.Sequential(cba(in_channels, c(16), 3), tnn.MaxPool2d(2), cba(c(16), c(32), 3))
    i3a, n3a = inception(c(32), c(16), c(16), c(24), c(16), c(24), c(16), "avg")
    r3b = Concat(tnn.Sequential(cba(n3a, c(32), 1), cba(c(32), c(48), 3, 2)),
                 tnn.Sequential(cba(n3a, c(32), 1), cba(c(32), c(48), 3),
                                cba(c(48), c(48), 3, 2)),
                 tnn.MaxPool2d(3, 2, 1))
    n3b = c(48) + c(48) + n3a
    i4a, n4a = inception(n3b, c(64), c(48), c(64), c(48), c(64), c(32), "max")
    return tnn.Sequential(stem, i3a, r3b, i4a, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                          tnn.Linear(n4a, num_classes))


def copy_from_minidl(torch_model, minidl_model) -> None:
    """Load minidl's state_dict (same keys) into the torch model."""
    state = {k: torch.from_numpy(np.array(v)) for k, v in minidl_model.state_dict().items()}
    missing = torch_model.load_state_dict(state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys


def evaluate(model, x, y, batch=500) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def train(args) -> dict:
    from minidl.data import DataLoader, TensorDataset
    from minidl.experiments.ablation import (BN_DECAY_SPEEDUP, BN_WEIGHT_DECAY_DIVISOR, BY_KEY,
                                             _load_dataset, _lr_lambda)
    from minidl.models import bn_inception_lite
    from minidl.random import manual_seed
    v = BY_KEY[args.variant]
    (xtr, ytr), (xte, yte) = (_load_dataset(args.dataset, None, t) for t in (True, False))
    manual_seed(args.seed)  # minidl's init, exactly as `minidl ablation` builds it
    ref = bn_inception_lite(num_classes=int(ytr.max()) + 1, in_channels=xtr.shape[1], bn=v.bn,
                            activation=v.activation)
    model = torch_bn_inception_lite(int(ytr.max()) + 1, xtr.shape[1], v.bn, v.activation)
    copy_from_minidl(model, ref)
    lr = args.base_lr * v.lr_mult
    wd = args.weight_decay / (BN_WEIGHT_DECAY_DIVISOR if v.bn else 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(args.lr_decay, args.steps, BN_DECAY_SPEEDUP if v.bn else 1))
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed)
    xe, ye = torch.from_numpy(xte), torch.from_numpy(yte)
    n_eval = min(args.eval_examples, len(xte))
    history, train_seconds, step, batches = [], 0.0, 0, endless(loader)
    diverged = None
    while step < args.steps:
        x, y = next(batches)
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x.data)),
                                                 torch.from_numpy(y.data))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        train_seconds += time.perf_counter() - t0
        step += 1
        if not math.isfinite(loss.item()):
            diverged = step
            break
        if step % args.eval_every == 0 or step == args.steps:
            history.append({"step": step,
                            "test_acc": evaluate(model, xe[:n_eval], ye[:n_eval])})
    final = None if diverged else evaluate(model, xe, ye)
    return {"variant": v.key, "lr": lr, "history": history, "final_test_acc": final,
            "diverged_at": diverged, "train_seconds": train_seconds,
            "steps_per_second": step / train_seconds}


def main(argv=None):
    from minidl.experiments.ablation import BY_KEY
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="bn-x5", choices=list(BY_KEY))
    p.add_argument("--dataset", default="fashion-mnist",
                   choices=["fashion-mnist", "mnist", "cifar10"])
    p.add_argument("--base-lr", type=float, required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-decay", type=float, default=0.5)
    p.add_argument("--eval-every", type=int, default=75)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare", default=None, help="minidl's result.json of the same run")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = train(args)
    best = max((h["test_acc"] for h in r["history"]), default=float("nan"))
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads): {r['variant']} "
          f"lr {r['lr']:g}, {args.steps} steps of {args.batch_size}, seed {args.seed}")
    print(f"  best periodic acc {best:.4f}, final test acc {r['final_test_acc']}, "
          f"{r['steps_per_second']:.1f} steps/s, train {r['train_seconds']:.0f} s")
    if args.compare:
        m = json.loads(open(args.compare).read())
        mbest = max(h["test_acc"] for h in m["history"])
        print(f"  minidl:  best periodic acc {mbest:.4f}, final test acc "
              f"{m['final_test_acc']}, {m.get('steps_per_second', float('nan')):.1f} steps/s")
        if r["final_test_acc"] is not None and m["final_test_acc"] is not None:
            print(f"  difference in final test acc: "
                  f"{100 * (m['final_test_acc'] - r['final_test_acc']):+.2f} points")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
