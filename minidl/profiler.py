"""`minidl profile MODEL`: where the time of one training step goes.

A training step is run `--steps` times after warm-up, and every piece of it is timed:

* forward, per leaf module (`Conv2d 3x3 s1`, `BatchNorm2d`, `ReLU`, ...), with forward
  pre/post hooks; what is left of the forward (concatenations, the loss, glue) is
  "other forward";
* backward, per tape node (each `Node.backward` closure is wrapped with a timer after
  the forward pass), and "autograd bookkeeping" for what the engine does around them;
* the optimizer step.

Each row gets its time per step, its share of the step, a rate (GFLOP/s for
convolutions and linear layers, GB/s of activations read and written for the rest)
and, for compute rows, the fraction of `peak_gflops` if given.

    from minidl.profiler import profile_step
    rows, total = profile_step(model, optimizer, x, y, steps=10)
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from . import nn
from .functions import cross_entropy


def _conv_name(weight_shape) -> str:
    return f"Conv2d {weight_shape[2]}x{weight_shape[3]}"


def _module_name(m) -> str:
    return _conv_name(m.weight.shape) if isinstance(m, nn.Conv2d) else type(m).__name__


def _forward_work(m, x, out) -> tuple[float, float]:
    """(flops, bytes) of one forward of leaf module m."""
    nbytes = float(x.nbytes + out.nbytes)
    if isinstance(m, nn.Conv2d):
        kh, kw = m.kernel_size
        return 2.0 * out.size * (m.in_channels // m.groups) * kh * kw, nbytes
    if isinstance(m, nn.Linear):
        return 2.0 * out.size * m.in_features, nbytes
    return 0.0, nbytes


def _walk_nodes(root):
    """Every tape node reachable from `root`, without recursion."""
    seen, stack, nodes = set(), [root], []
    while stack:
        t = stack.pop()
        node = getattr(t, "_node", None)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(node.parents)
    return nodes


def _backward_work(node, g) -> tuple[float, float]:
    """(flops, bytes) of one backward closure, from its gradient and its parents."""
    parents = node.parents
    nbytes = float(g.nbytes + sum(p.data.nbytes for p in parents if p.requires_grad))
    if node.name == "Conv2d":
        x, w = parents[0], parents[1]
        per_out = w.shape[1] * w.shape[2] * w.shape[3]
        passes = int(x.requires_grad) + int(w.requires_grad)
        return 2.0 * g.size * per_out * passes, nbytes
    if node.name in ("Linear", "MatMul"):
        x, w = parents[0], parents[1]
        k = x.shape[-1]
        passes = int(x.requires_grad) + int(w.requires_grad)
        return 2.0 * g.size * k * passes, nbytes
    return 0.0, nbytes


class _Rows:
    def __init__(self):
        self.t = defaultdict(float)
        self.calls = defaultdict(int)
        self.flops = defaultdict(float)
        self.bytes = defaultdict(float)

    def add(self, key, dt, flops, nbytes):
        self.t[key] += dt
        self.calls[key] += 1
        self.flops[key] += flops
        self.bytes[key] += nbytes


def profile_step(model, optimizer, x, y, steps: int = 10, warmup: int = 3,
                 loss_fn=cross_entropy):
    """Time `steps` training steps of `model` on one batch (x, y). Returns (rows, step_s):
    rows sorted by time, each {"op", "pass", "ms", "share", "calls", "gflops", "gbs"}
    per step, and the mean wall time of one step in seconds."""
    rows = _Rows()
    leaves = [m for m in model.modules() if not m._modules]
    started = {}
    recording = [False]

    def pre(m, inputs):
        if recording[0]:
            started[id(m)] = time.perf_counter()

    def post(m, inputs, out):
        if recording[0]:
            dt = time.perf_counter() - started.pop(id(m))
            flops, nbytes = _forward_work(m, inputs[0].data, out.data)
            fused = getattr(getattr(out, "_node", None), "name", "") == "BatchNormReLU"
            rows.add((_module_name(m) + ("+ReLU" if fused else ""), "forward"), dt, flops,
                     nbytes)

    # Timers only: they do not keep nn.Sequential from fusing a BatchNorm with the ReLU
    # after it (the fused op's time is then the BatchNorm's row, named "+ReLU").
    pre._minidl_observer = post._minidl_observer = True
    handles = [m.register_forward_pre_hook(pre) for m in leaves]
    handles += [m.register_forward_hook(post) for m in leaves]

    def timed_backward(node):
        inner = node.backward

        def run(g, needs):
            t0 = time.perf_counter()
            out = inner(g, needs)
            flops, nbytes = _backward_work(node, g)
            name = _conv_name(node.parents[1].shape) if node.name == "Conv2d" else node.name
            rows.add((name, "backward"), time.perf_counter() - t0, flops, nbytes)
            return out
        return run

    def step(record: bool):
        recording[0] = record
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        t1 = time.perf_counter()
        if record:
            for node in _walk_nodes(loss):
                node.backward = timed_backward(node)
        t2 = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        recording[0] = False
        return t1 - t0, t3 - t2, t4 - t3, (t4 - t0) - (t2 - t1)

    try:
        model.train()
        for _ in range(warmup):
            step(False)
        fwd = bwd = opt = total = 0.0
        for _ in range(steps):
            f, b, o, t = step(True)
            fwd, bwd, opt, total = fwd + f, bwd + b, opt + o, total + t
    finally:
        for h in handles:
            h.remove()

    fwd_modules = sum(t for (op, p), t in rows.t.items() if p == "forward")
    bwd_nodes = sum(t for (op, p), t in rows.t.items() if p == "backward")
    rows.add(("other forward (concat, loss, glue)", "forward"), max(fwd - fwd_modules, 0), 0, 0)
    rows.add(("autograd bookkeeping", "backward"), max(bwd - bwd_nodes, 0), 0, 0)
    rows.add(("optimizer step", "update"), opt, 0, 0)
    out = []
    for key, t in rows.t.items():
        op, ps = key
        calls = rows.calls[key] / steps if key[0] not in (
            "other forward (concat, loss, glue)", "autograd bookkeeping", "optimizer step") else 1
        out.append({"op": op, "pass": ps, "ms": 1e3 * t / steps, "share": t / total,
                    "calls": calls,
                    "gflops": rows.flops[key] / t / 1e9 if rows.flops[key] and t > 0 else None,
                    "gbs": rows.bytes[key] / t / 1e9 if rows.bytes[key] and t > 0 else None})
    out.sort(key=lambda r: -r["ms"])
    return out, total / steps


def format_rows(rows, step_s: float, peak_gflops: float | None = None, title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"one training step: {1e3 * step_s:.2f} ms ({1 / step_s:.1f} steps/s)")
    lines.append(f"{'op':<36}{'pass':<10}{'ms/step':>9}{'share':>8}{'calls':>7}"
                 f"{'GFLOP/s':>9}{'% peak':>8}{'GB/s':>8}")
    for r in rows:
        rate = f"{r['gflops']:.1f}" if r["gflops"] else ""
        peak = f"{100 * r['gflops'] / peak_gflops:.0f}%" if peak_gflops and r["gflops"] else ""
        bw = f"{r['gbs']:.1f}" if r["gbs"] else ""
        lines.append(f"{r['op']:<36}{r['pass']:<10}{r['ms']:>9.3f}{100 * r['share']:>7.1f}%"
                     f"{r['calls']:>7.0f}{rate:>9}{peak:>8}{bw:>8}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- the command

PROFILE_MODELS = ("cnn", "mlp", "mlp-bn", "bn_inception_lite", "inception_lite")


def add_arguments(p) -> None:
    p.add_argument("model", choices=PROFILE_MODELS,
                   help="cnn: the bench suite's 3 conv-BN-ReLU blocks; mlp / mlp-bn: "
                        "Figure 1's networks; bn_inception_lite / inception_lite: with / "
                        "without BN")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 64 (cnn), 60 (mlp), 32 (inception)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="the machine's compute limit for the '%% peak' column (e.g. from "
                        "`minidl bench --suite kernels`)")
    p.add_argument("--format", choices=("nchw", "channels_last"), default="nchw",
                   help="memory format of the model and its input (default: nchw)")
    p.add_argument("--json", default=None, metavar="FILE")


def build(name: str):
    from . import models
    if name == "cnn":
        blocks, c_in = [], 1
        for i, c in enumerate((16, 32, 64)):
            blocks += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU()]
            if i < 2:
                blocks.append(nn.MaxPool2d(2))
            c_in = c
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)), 64
    if name in ("mlp", "mlp-bn"):
        return models.mlp(bn=name == "mlp-bn"), 60
    return models.bn_inception_lite(bn=name == "bn_inception_lite"), 32


def main(args) -> int:
    import json

    from . import optim
    from .backend import get_num_threads, set_num_threads
    from .random import manual_seed
    from .tensor import tensor
    if args.steps < 1 or (args.batch_size is not None and args.batch_size < 1):
        from .errors import UsageError
        raise UsageError("minidl profile: --steps and --batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        from .errors import UsageError
        raise UsageError(f"minidl profile: --threads must be >= 1, got {args.threads}")
    if args.threads:
        set_num_threads(args.threads)
    manual_seed(0)
    model, batch = build(args.model)
    batch = args.batch_size or batch
    rng = np.random.default_rng(0)
    x = tensor(rng.random((batch, 1, 28, 28), dtype=np.float32))
    if args.format == "channels_last" and args.model not in ("mlp", "mlp-bn"):
        from .layout import channels_last
        model.to(memory_format=channels_last)
        x = x.to(memory_format=channels_last)
    y = tensor(rng.integers(0, 10, batch))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rows, step_s = profile_step(model, opt, x, y, steps=args.steps)
    print(format_rows(rows, step_s, args.peak_gflops,
                      f"minidl profile {args.model}: batch {batch}, {args.format}, "
                      f"{get_num_threads()} "
                      f"Numba thread(s), {args.steps} steps"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch": batch, "format": args.format,
                       "threads": get_num_threads(),
                       "step_seconds": step_s, "rows": rows}, f, indent=1)
    return 0
