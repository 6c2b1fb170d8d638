"""Full training steps (forward, backward, SGD-momentum update) of minidl against the
same models in PyTorch CPU, on the same random data.

    python -m benchmarks.train_step [--steps 300] [--threads N]

Models: the paper's 784-100-100-100-10 sigmoid MLP with and without BN at batch 60 and
256, a small BN CNN (three conv3x3-BN-ReLU blocks, max pooling after the first two,
global average pooling, linear) at batch 64 on 28x28 inputs, and BN-Inception-lite
(minidl.models.bn_inception_lite; its PyTorch twin in benchmarks/inception_torch.py) at
batch 32 (the paper's) and 64. Steps/s is over `steps`
steps after 10 warm-up steps; the spread is over 5 equal blocks of them.

PyTorch is timed at 1 and N threads (and the CNNs also in channels_last) and its fastest
setting is reported (at batch 60 one thread often wins), in a child process: importing
torch here would bind Numba to torch's OpenMP runtime and slow minidl (see bench_conv.py).
"""
from __future__ import annotations

import argparse

from benchmarks.common import clean_blas_env

clean_blas_env()

import importlib.util  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# minidl is imported where it is used: the torch child must load torch first.

CASES = [  # (name, builder key, batch)
    ("MLP no-BN b60", "mlp", 60), ("MLP BN b60", "mlp_bn", 60),
    ("MLP no-BN b256", "mlp", 256), ("MLP BN b256", "mlp_bn", 256),
    ("CNN BN b64", "cnn", 64),
    ("Inception-lite BN b32", "inception", 32), ("Inception-lite BN b64", "inception", 64),
]
IMAGE_MODELS = ("cnn", "inception")


def minidl_model(kind):
    from minidl import nn
    from minidl.models import mlp
    if kind == "mlp":
        return mlp(bn=False)
    if kind == "mlp_bn":
        return mlp(bn=True)
    if kind == "inception":
        from minidl.models import bn_inception_lite
        return bn_inception_lite()
    blocks, c_in = [], 1
    for i, c in enumerate((16, 32, 64)):
        blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        if i < 2:
            blocks.append(nn.MaxPool2d(2))
        c_in = c
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def torch_model(kind):
    import torch.nn as tnn
    if kind in ("mlp", "mlp_bn"):
        bn = kind == "mlp_bn"
        layers, width = [tnn.Flatten()], 784
        for _ in range(3):
            layers.append(tnn.Linear(width, 100, bias=not bn))
            if bn:
                layers.append(tnn.BatchNorm1d(100))
            layers.append(tnn.Sigmoid())
            width = 100
        return tnn.Sequential(*layers, tnn.Linear(100, 10))
    if kind == "inception":
        from benchmarks.inception_torch import torch_bn_inception_lite
        return torch_bn_inception_lite()
    blocks, c_in = [], 1
    for i, c in enumerate((16, 32, 64)):
        blocks += [tnn.Conv2d(c_in, c, 3, padding=1, bias=False), tnn.BatchNorm2d(c), tnn.ReLU()]
        if i < 2:
            blocks.append(tnn.MaxPool2d(2))
        c_in = c
    return tnn.Sequential(*blocks, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def data(kind, batch, n_batches=8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch, 784) if kind.startswith("mlp") else (batch, 1, 28, 28)
    return [(rng.random(shape, dtype=np.float32), rng.integers(0, 10, batch))
            for _ in range(n_batches)]


def _time_steps(step, steps, warmup, blocks=5):
    """Steps/s over `steps` steps after `warmup` ones, and its spread over `blocks` blocks."""
    for i in range(warmup):
        step(i)
    per_block = max(1, steps // blocks)
    block_s = []
    for b in range(blocks):
        t0 = time.perf_counter()
        for i in range(b * per_block, (b + 1) * per_block):
            step(i)
        block_s.append(time.perf_counter() - t0)
    rates = [per_block / t for t in block_s]
    return {"steps_s": per_block * blocks / sum(block_s), "min_steps_s": min(rates),
            "max_steps_s": max(rates), "steps": per_block * blocks}


def time_minidl(kind, batch, steps, threads, warmup=10):
    import minidl as md
    from minidl import nn, optim
    md.set_num_threads(threads)
    md.manual_seed(0)
    model = minidl_model(kind)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(md.tensor(x), md.tensor(y)) for x, y in data(kind, batch)]

    def step(i):
        x, y = batches[i % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    t0 = time.perf_counter()
    step(0)
    first = time.perf_counter() - t0  # includes JIT compilation (or cache load)
    return _time_steps(step, steps, warmup), first


def time_torch(kind, batch, steps, threads, channels_last=False, warmup=10):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_model(kind)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = [(torch.from_numpy(x).contiguous(memory_format=fmt) if x.ndim == 4
                else torch.from_numpy(x), torch.from_numpy(y)) for x, y in data(kind, batch)]
    loss_fn = torch.nn.functional.cross_entropy

    def step(i):
        x, y = batches[i % len(batches)]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _time_steps(step, steps, warmup)


def torch_worker(request):
    """In a child process (benchmarks.kernels.run_child): every case in every torch
    configuration; {case name: {config: result}}."""
    out = {}
    for name, kind, batch, steps in request["cases"]:
        out[name] = {}
        for threads in request["threads"]:
            for cl in (False, True) if kind in IMAGE_MODELS else (False,):
                config = f"{threads} thread{'s' if threads > 1 else ''}"
                if kind in IMAGE_MODELS:
                    config = f"{'channels_last' if cl else 'nchw'}, {config}"
                out[name][config] = dict(time_torch(kind, batch, steps, threads, cl,
                                                    request["warmup"]), threads=threads)
    return out


def run(threads=None, steps=300, quick=False, cases=None, use_torch=True) -> list[dict]:
    """One row per case: minidl and (best) torch steps/s, their ratio, minidl's first step."""
    import numba

    import minidl as md
    threads = threads or numba.config.NUMBA_NUM_THREADS
    steps, warmup = (5, 1) if quick else (steps, 10)
    per_kind = {"cnn": max(steps // 5, 5), "inception": max(steps // 10, 5)}
    plan = [(name, kind, batch, per_kind.get(kind, steps))
            for name, kind, batch in cases or CASES]
    rows = []
    for name, kind, batch, n in plan:
        ours, first = time_minidl(kind, batch, n, threads, warmup)
        rows.append({"case": name, "batch": batch, "threads": threads,
                     "minidl_steps_s": ours["steps_s"], "minidl_min_steps_s": ours["min_steps_s"],
                     "minidl_max_steps_s": ours["max_steps_s"], "steps": ours["steps"],
                     "minidl_first_step_s": first})
    md.set_num_threads(threads)
    if use_torch and importlib.util.find_spec("torch") is not None:
        from benchmarks.kernels import run_child
        res = run_child("benchmarks.train_step", {"cases": plan, "warmup": warmup,
                                                  "threads": sorted({1, threads})})
        for row in rows:
            configs = res[row["case"]]
            best = max(configs, key=lambda c: configs[c]["steps_s"])
            row.update(torch_steps_s=configs[best]["steps_s"],
                       torch_threads=configs[best]["threads"], torch_config=best,
                       torch_configs={c: r["steps_s"] for c, r in configs.items()},
                       ratio_vs_torch=row["minidl_steps_s"] / configs[best]["steps_s"])
    return rows


def format_table(rows) -> str:
    lines = [f"{'case':<22}{'minidl steps/s':>15}{'torch steps/s':>15}{'torch thr':>10}"
             f"{'minidl/torch':>13}"]
    for r in rows:
        lines.append(f"{r['case']:<22}{r['minidl_steps_s']:>15.1f}"
                     f"{r.get('torch_steps_s', float('nan')):>15.0f}"
                     f"{r.get('torch_threads', '-'):>10}"
                     f"{r.get('ratio_vs_torch', float('nan')):>13.2f}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rows = run(args.threads, args.steps, args.quick)
    print(format_table(rows))


if __name__ == "__main__":
    main()
