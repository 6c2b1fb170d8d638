"""Train a small CNN on Fashion-MNIST, with checkpoints and exact resume.

    python examples/fashion_cnn.py --steps 3000 --out runs/cnn
    python examples/fashion_cnn.py --steps 6000 --out runs/cnn --resume   # continues at 3000

Conv(1->8) BN ReLU MaxPool, Conv(8->16) BN ReLU MaxPool, Linear(784->10): about 8K
parameters. A checkpoint (minidl.save: one .npz, written atomically) holds everything
the next step depends on: the model's and optimizer's state_dicts, the DataLoader's
position in its shuffled epoch and minidl's random state; so a resumed run takes the
same steps, on the same batches, as an uninterrupted one. Ctrl-C saves one first.
Data: apt-get install dataset-fashion-mnist, or $MINIDL_DATA (minidl/data/datasets.py).
"""
import argparse
import os

import minidl
from minidl import nn, optim
from minidl.data import DataLoader, TensorDataset, fashion_mnist


def make_cnn():
    return nn.Sequential(  # shapes for a (N, 1, 28, 28) batch
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),                                  # (N, 8, 14, 14)
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.MaxPool2d(2),                                  # (N, 16, 7, 7)
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))          # (N, 10) logits


def accuracy(model, data, batch=1000):
    x, y = data.arrays
    model.eval()
    with minidl.no_grad():
        hits = sum(int((model(minidl.tensor(x[i:i + batch])).data.argmax(1)
                        == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    model.train()
    return hits / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="default 3000 (20 with --quick)")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--out", default="runs/fashion_cnn")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--quick", action="store_true", help="2,000 training and 500 test images")
    args = p.parse_args()
    args.steps = args.steps or (20 if args.quick else 3000)

    train, test = fashion_mnist(train=True), fashion_mnist(train=False)
    if args.quick:
        train = TensorDataset(*(a[:2000] for a in train.arrays))
        test = TensorDataset(*(a[:500] for a in test.arrays))
    minidl.manual_seed(0)
    model = make_cnn()
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(train, batch_size=64, shuffle=True, drop_last=True, seed=0)
    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "checkpoint.npz")

    def save(step):
        minidl.save({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "loader": loader.state_dict(), "rng": minidl.get_rng_state()}, ckpt)

    step = 0
    if args.resume:
        if not os.path.exists(ckpt):
            p.error(f"--resume: no checkpoint at {ckpt}")
        state = minidl.load(ckpt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loader.load_state_dict(state["loader"])
        minidl.set_rng_state(state["rng"])
        step = state["step"]
        print(f"resumed from step {step}")
    batches = iter(loader)
    try:
        while step < args.steps:
            try:
                x, y = next(batches)
            except StopIteration:  # end of an epoch: the loader reshuffles
                batches = iter(loader)
                continue
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % args.checkpoint_every == 0 or step == args.steps:
                save(step)
                print(f"step {step}: loss {loss.item():.6f}, test accuracy "
                      f"{accuracy(model, test):.4f} (checkpoint saved)")
    except KeyboardInterrupt:
        save(step)
        print(f"interrupted: checkpoint of step {step} saved; rerun with --resume")


if __name__ == "__main__":
    main()
