"""The Figure 1 protocol in PyTorch CPU, for comparison with `minidl figure1`: the same
data, the same mini-batch sequence (minidl's seeded DataLoader), N(0, std^2) init, SGD
with momentum, evaluation every `eval_every` steps with the same sigmoid-input
percentiles. Prints the same table as minidl's summary.txt, with wall time.

    python -m benchmarks.figure1_torch --dataset fashion-mnist [--steps 50000] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import time

from benchmarks.harness import clean_blas_env, endless

clean_blas_env()

# torch before minidl: minidl sets OMP_WAIT_POLICY=PASSIVE for Numba's OpenMP pool, which
# would also make torch's threads sleep between ops (its cost: benchmarks/RESULTS.md).
# Imported first, torch's runtime starts with its own defaults.
import torch  # noqa: E402,F401
import numpy as np  # noqa: E402

from minidl.data import DataLoader, TensorDataset  # noqa: E402
from minidl.experiments.figure1 import PERCENTILES, load_data  # noqa: E402


def build(bn: bool, init_std: float):
    import torch.nn as tnn
    layers, width = [], 784
    for _ in range(3):
        layers.append(tnn.Linear(width, 100, bias=not bn))
        if bn:
            layers.append(tnn.BatchNorm1d(100))
        layers.append(tnn.Sigmoid())
        width = 100
    model = tnn.Sequential(*layers, tnn.Linear(width, 10))
    for m in model.modules():
        if isinstance(m, tnn.Linear):
            tnn.init.normal_(m.weight, 0.0, init_std)
            if m.bias is not None:
                tnn.init.zeros_(m.bias)
    return model


def train(bn, args, train_set, test_set):
    torch.manual_seed(args.seed)
    model = build(bn, args.init_std)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    loader = DataLoader(TensorDataset(*train_set), batch_size=args.batch_size, shuffle=True,
                        seed=args.seed)
    test_x, test_y = (torch.from_numpy(a) for a in test_set)
    captured = []
    last_sigmoid = [m for m in model.modules() if isinstance(m, torch.nn.Sigmoid)][-1]
    last_sigmoid.register_forward_hook(
        lambda m, inp, out: None if m.training else captured.append(inp[0][:, args.unit]))
    history, train_seconds, step, batches = [], 0.0, 0, endless(loader)
    while step < args.steps:
        x, y = next(batches)
        t0 = time.perf_counter()
        xt, yt = torch.from_numpy(x.data), torch.from_numpy(y.data)
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        train_seconds += time.perf_counter() - t0
        step += 1
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                acc = (model(test_x).argmax(1) == test_y).double().mean().item()
            model.train()
            p = np.percentile(captured.pop().numpy().astype(np.float64), PERCENTILES)
            history.append({"step": step, "test_acc": acc,
                            **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)}})
    return {"history": history, "train_seconds": train_seconds,
            "steps_per_second": step / train_seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--steps", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--init-std", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--unit", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write the histories here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set, test_set = load_data(args.dataset)
    t0 = time.perf_counter()
    results = {name: train(bn, args, train_set, test_set)
               for name, bn in (("without BN", False), ("with BN", True))}
    wall = time.perf_counter() - t0
    print(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads), {args.dataset}, "
          f"{args.steps} steps")
    print(f"{'network':<12}{'final acc':>10}{'best acc':>10}{'at step':>9}{'steps/s':>9}"
          f"{'train s':>9}")
    for name, r in results.items():
        h = r["history"]
        best = max(h, key=lambda row: row["test_acc"])
        print(f"{name:<12}{h[-1]['test_acc']:>10.4f}{best['test_acc']:>10.4f}"
              f"{best['step']:>9}{r['steps_per_second']:>9.0f}{r['train_seconds']:>9.1f}")
    print(f"wall time {wall:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "wall_seconds": wall}, f, indent=1)


if __name__ == "__main__":
    main()
