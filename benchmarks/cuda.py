"""GPU benchmarks behind `minidl bench --device cuda`: minidl's CUDA kernels and training
steps against PyTorch CUDA on the same GPU, with the GPU's device-to-device copy rate
as the memory-bandwidth yardstick.

    python -m minidl.benchmarks.cuda [--quick] [--json FILE] [--markdown FILE]

Host time per call: numba-cuda's launch of an empty kernel, an allocation, one minidl
tensor op and one torch op on one element (what a launch-bound step pays per op).
Kernels: batch norm training forward/backward and eval forward, max/avg/global pooling
forward/backward (GB/s of compulsory traffic and % of the measured copy rate), conv2d
forward/backward (GFLOP/s), the GEMM, each beside PyTorch's time for the same pass
(float32: TF32 off; cuDNN in benchmark mode). Training steps: the Figure 1 MLP
(784-100-100-100-10, with and without BN, batch 60, SGD momentum), a small BN CNN and
BN-Inception-lite (batch 32), minidl vs PyTorch. --quick: tiny shapes and 2 repeats,
which also run on numba-cuda's simulator (NUMBA_ENABLE_CUDASIM=1) to check the harness.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _sync():
    from numba import cuda
    cuda.synchronize()


def timeit(fn, repeat: int, warmup: int = 1, sync=_sync) -> float:
    """Median seconds of fn() over `repeat` runs, the device synchronized around each."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# Where the PyTorch peer runs: the GPU; the tests set "cpu" to check the peer's code
# on a machine without one (with --quick on the simulator).
TORCH_DEVICE = "cuda"


def _torch_sync():
    import torch
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


def _torch_peer():
    """torch, set up as the peer on TORCH_DEVICE (None without it): at its best in
    float32, cuDNN picking its fastest algorithms (benchmark mode), TF32 off so that both
    sides compute in float32."""
    try:
        import torch
        if TORCH_DEVICE == "cpu" or torch.cuda.is_available():
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            return torch
    except Exception:
        pass
    return None


def _torch_backward(torch, fn, inputs, dy, repeat) -> float:
    """Seconds of the backward pass alone of fn(*inputs) (the graph is kept between
    runs), for the inputs that require gradients."""
    out = fn(*inputs)
    grad = torch.tensor(dy, device=TORCH_DEVICE)
    wrt = [t for t in inputs if t.requires_grad]
    return timeit(lambda: torch.autograd.grad(out, wrt, grad, retain_graph=True), repeat,
                  sync=_torch_sync)


def copy_bandwidth(n: int, repeat: int) -> float:
    """GB/s of a device-to-device copy of n float32 (read + write)."""
    from numba import cuda
    a = cuda.device_array(n, np.float32)
    b = cuda.device_array(n, np.float32)
    t = timeit(lambda: b.copy_to_device(a), repeat)
    return 2 * 4 * n / t / 1e9


def kernel_rows(quick: bool, repeat: int) -> list:
    import minidl.kernels.cuda as kc
    from minidl.kernels.cuda.array import CudaArray
    torch = _torch_peer()
    rng = np.random.default_rng(0)
    shape = (2, 3, 6, 6) if quick else (64, 64, 28, 28)
    x = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    dx_ = CudaArray.from_host(x)
    g = CudaArray.from_host(np.ones(c, np.float32))
    b = CudaArray.from_host(np.zeros(c, np.float32))
    dy = CudaArray.from_host(rng.standard_normal(shape).astype(np.float32))
    nbytes = x.nbytes
    rows = []

    def add(name, seconds, traffic=None, flops=None, torch_seconds=None):
        row = {"kernel": name, "shape": list(shape), "ms": seconds * 1e3}
        if traffic:
            row["GB/s"] = traffic / seconds / 1e9
        if flops:
            row["GFLOP/s"] = flops / seconds / 1e9
        if torch_seconds:
            row["torch_ms"] = torch_seconds * 1e3
            row["vs_torch"] = torch_seconds / seconds
        rows.append(row)

    dyh = rng.standard_normal(shape).astype(np.float32)
    y, mean, var = kc.batch_norm_train_forward(dx_, g, b, 1e-5)
    tt = tb_ = None
    if torch:
        F = torch.nn.functional
        tx = torch.tensor(x, device=TORCH_DEVICE)
        txg = tx.clone().requires_grad_()
        tw, tb = torch.ones(c, device=TORCH_DEVICE), torch.zeros(c, device=TORCH_DEVICE)
        tt = timeit(lambda: F.batch_norm(tx, None, None, tw, tb, True), repeat,
                    sync=_torch_sync)
        tb_ = _torch_backward(torch, lambda a, w_, b_: F.batch_norm(a, None, None, w_, b_, True),
                              (txg, tw.clone().requires_grad_(), tb.clone().requires_grad_()),
                              dyh, repeat)
    add("batch_norm_train_forward", timeit(lambda: kc.batch_norm_train_forward(dx_, g, b, 1e-5),
                                           repeat), traffic=3 * nbytes, torch_seconds=tt)
    add("batch_norm_train_backward",
        timeit(lambda: kc.batch_norm_train_backward(dy, dx_, g, mean, var, 1e-5), repeat),
        traffic=5 * nbytes, torch_seconds=tb_)
    te = None
    if torch:
        rm, rv = torch.zeros(c, device=TORCH_DEVICE), torch.ones(c, device=TORCH_DEVICE)
        te = timeit(lambda: F.batch_norm(tx, rm, rv, tw, tb, False), repeat, sync=_torch_sync)
    add("batch_norm_eval_forward",
        timeit(lambda: kc.batch_norm_eval_forward(dx_, g, b, mean, var, 1e-5), repeat),
        traffic=2 * nbytes, torch_seconds=te)
    yp, arg = kc.max_pool2d_forward(dx_, (2, 2), (2, 2), (0, 0), False)
    ts = [None] * 5
    if torch:
        def avg3(a):
            return F.avg_pool2d(a, 3, 1, 1)
        sync = _torch_sync
        ts = [timeit(lambda: F.max_pool2d(tx, 2), repeat, sync=sync),
              _torch_backward(torch, lambda a: F.max_pool2d(a, 2), (txg,),
                              np.ones(yp.shape, np.float32), repeat),
              timeit(lambda: avg3(tx), repeat, sync=sync),
              _torch_backward(torch, avg3, (txg,), dyh, repeat),
              timeit(lambda: tx.mean((2, 3)), repeat, sync=sync)]
    add("max_pool2d_forward 2x2", timeit(lambda: kc.max_pool2d_forward(
        dx_, (2, 2), (2, 2), (0, 0), False), repeat), traffic=nbytes * (1 + 0.25 + 0.5),
        torch_seconds=ts[0])
    dyp = CudaArray.from_host(np.ones(yp.shape, np.float32))
    add("max_pool2d_backward 2x2", timeit(lambda: kc.max_pool2d_backward(dyp, arg, shape),
                                          repeat), traffic=nbytes * (1 + 0.25 + 0.5),
        torch_seconds=ts[1])
    add("avg_pool2d_forward 3x3 s1 p1", timeit(lambda: kc.avg_pool2d_forward(
        dx_, (3, 3), (1, 1), (1, 1), False, True), repeat), traffic=2 * nbytes,
        torch_seconds=ts[2])
    add("avg_pool2d_backward 3x3 s1 p1", timeit(lambda: kc.avg_pool2d_backward(
        dy, shape, (3, 3), (1, 1), (1, 1), False, True), repeat), traffic=2 * nbytes,
        torch_seconds=ts[3])
    add("global_avg_pool2d_forward", timeit(lambda: kc.global_avg_pool2d_forward(dx_), repeat),
        traffic=nbytes, torch_seconds=ts[4])

    k = 4 if quick else 64
    w = rng.standard_normal((k, c, 3, 3)).astype(np.float32)
    dw = CudaArray.from_host(w)
    args = ((1, 1), (1, 1), (1, 1), 1)
    flops = 2 * shape[0] * k * shape[2] * shape[3] * c * 9
    ts = [None] * 3
    yconv = kc.conv2d_forward(dx_, dw, None, *args)
    if torch:
        tw4 = torch.tensor(w, device=TORCH_DEVICE)
        tw4g = tw4.clone().requires_grad_()
        dyc = yconv.to_host()

        def conv(a, w_):
            return F.conv2d(a, w_, padding=1)
        ts = [timeit(lambda: conv(tx, tw4), repeat, sync=_torch_sync),
              _torch_backward(torch, conv, (txg, tw4), dyc, repeat),
              _torch_backward(torch, conv, (tx, tw4g), dyc, repeat)]
    add("conv2d_forward 3x3", timeit(lambda: kc.conv2d_forward(dx_, dw, None, *args), repeat),
        flops=flops, torch_seconds=ts[0])
    add("conv2d_backward_input 3x3",
        timeit(lambda: kc.conv2d_backward_input(yconv, dw, shape, *args), repeat), flops=flops,
        torch_seconds=ts[1])
    add("conv2d_backward_weight 3x3",
        timeit(lambda: kc.conv2d_backward_weight(yconv, dx_, w.shape, *args), repeat),
        flops=flops, torch_seconds=ts[2])
    m = 8 if quick else 1024
    a = CudaArray.from_host(rng.standard_normal((m, m)).astype(np.float32))
    tt = None
    if torch:
        ta = torch.randn(m, m, device=TORCH_DEVICE)
        tt = timeit(lambda: ta @ ta, repeat, sync=_torch_sync)
    add(f"matmul {m}x{m}", timeit(lambda: a @ a, repeat), flops=2 * m ** 3, torch_seconds=tt)
    return rows


def _minidl_step(model, opt, x, y):
    import minidl
    opt.zero_grad()
    loss = minidl.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def _step_row(name, model, tmodel, xs, ys, repeat, torch) -> dict:
    """One training step (SGD with momentum, cross-entropy) of a minidl model on the GPU
    and, with PyTorch CUDA, of the same network in PyTorch on the same data."""
    import minidl
    from minidl import optim
    model = model.to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = minidl.tensor(xs, device="cuda"), minidl.tensor(ys, device="cuda")
    row = {"step": name, "ms": timeit(lambda: _minidl_step(model, opt, x, y), repeat) * 1e3}
    if torch is not None and tmodel is not None:
        tmodel = tmodel.to(TORCH_DEVICE)
        topt = torch.optim.SGD(tmodel.parameters(), lr=0.01, momentum=0.9)
        tx, ty = torch.tensor(xs, device=TORCH_DEVICE), torch.tensor(ys, device=TORCH_DEVICE)

        def tstep():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
            topt.step()
        row["torch_ms"] = timeit(tstep, repeat, sync=_torch_sync) * 1e3
        row["vs_torch"] = row["torch_ms"] / row["ms"]
    return row


def _cnn(nn):
    """The small BN CNN of the table, in minidl's nn or torch.nn (the same names)."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=False),
                         nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def train_rows(quick: bool, repeat: int) -> list:
    import minidl
    from minidl import models, nn
    from minidl.benchmarks.cases import torch_mlp_layers
    torch = _torch_peer()
    rng = np.random.default_rng(0)
    rows = []
    batch, width = (4, (6, 5)) if quick else (60, (100, 100, 100))
    feat, classes = (10, 3) if quick else (784, 10)
    xs = rng.standard_normal((batch, feat)).astype(np.float32)
    ys = rng.integers(0, classes, batch)
    for bn in (False, True):
        rows.append(_step_row(
            f"Figure 1 MLP{' + BN' if bn else ''}, batch {batch}",
            models.mlp(in_features=feat, hidden=width, num_classes=classes, bn=bn),
            torch and torch.nn.Sequential(*torch_mlp_layers(torch.nn, feat, width, classes, bn)),
            xs, ys, repeat, torch))
    n, hw = (2, 6) if quick else (32, 28)
    rows.append(_step_row(
        f"BN CNN, batch {n}, {hw}x{hw}", _cnn(nn), torch and _cnn(torch.nn),
        rng.standard_normal((n, 1, hw, hw)).astype(np.float32), rng.integers(0, 10, n),
        repeat, torch))
    if not quick:  # minutes on the simulator
        from minidl.benchmarks.inception_torch import torch_bn_inception_lite
        n = 32
        rows.append(_step_row(
            f"BN-Inception-lite, batch {n}, 28x28", models.bn_inception_lite(),
            torch and torch_bn_inception_lite(),
            rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n),
            repeat, torch))
    stats = minidl.cuda.memory_stats()
    rows.append({"step": "caching allocator", "driver_allocations": stats["driver_allocations"],
                 "cached_MB": stats["cached_bytes"] / 2 ** 20})
    return rows


def overhead_rows(quick: bool) -> list:
    """Host time per launch, in microseconds: where a launch-bound step's time goes. Each
    row runs n calls back to back and synchronizes once, so the GPU's own work (one
    element) hides behind the host's: numba-cuda's launch of an empty kernel, an
    allocation from the caching allocator, minidl's `a + b` on one element (allocation,
    dispatch, launch) and, with PyTorch CUDA, torch's `a + b` on one element."""
    from numba import cuda

    import minidl
    from minidl.kernels.cuda.array import CudaArray
    n = 5 if quick else 2000

    @cuda.jit
    def empty(x):
        pass

    a = CudaArray.from_host(np.ones(1, np.float32))
    x = minidl.tensor(np.ones(1, np.float32), device="cuda")

    def per_call(fn, sync=_sync):
        def run():
            for _ in range(n):
                fn()
        return timeit(run, 3, sync=sync) / n * 1e6

    rows = [{"what": "numba-cuda launch of an empty kernel",
             "us": per_call(lambda: empty[1, 1](a._dev))},
            {"what": "CudaArray of one element (caching allocator)",
             "us": per_call(lambda: CudaArray((1,), np.float32))},
            {"what": "minidl a + b, one element (a tensor op)", "us": per_call(lambda: x + x)}]
    torch = _torch_peer()
    if torch:
        t = torch.ones(1, device=TORCH_DEVICE)
        rows.append({"what": "torch a + b, one element", "us": per_call(lambda: t + t,
                                                                        _torch_sync)})
    return rows


def _f(value, spec=".3f", suffix="") -> str:
    return "" if value is None else format(value, spec) + suffix


def markdown(result: dict) -> str:
    copy = result["copy_GBps"]
    lines = [f"# minidl CUDA benchmarks ({result['device']})", "",
             f"device-to-device copy: {copy:.0f} GB/s", "",
             "| host time per call | us |", "|---|---|"]
    lines += [f"| {r['what']} | {r['us']:.1f} |" for r in result.get("overhead", [])]
    lines += ["", "| kernel | ms | GB/s | % of copy | GFLOP/s | torch ms | torch/minidl |",
              "|---|---|---|---|---|---|---|"]
    for r in result["kernels"]:
        gb = r.get("GB/s")
        lines.append(" | ".join([
            f"| {r['kernel']}", _f(r["ms"]), _f(gb, ".0f"),
            _f(None if gb is None else 100 * gb / copy, ".0f", "%"),
            _f(r.get("GFLOP/s"), ".0f"), _f(r.get("torch_ms")), _f(r.get("vs_torch"), ".2f")])
            + " |")
    lines += ["", "| training step | ms | torch ms | torch/minidl |", "|---|---|---|---|"]
    for r in result["train"]:
        if "ms" in r:
            lines.append(f"| {r['step']} | {_f(r['ms'])} | {_f(r.get('torch_ms'))} | "
                         f"{_f(r.get('vs_torch'), '.2f')} |")
        else:
            lines.append(f"| {r['step']}: {r['driver_allocations']} driver allocations, "
                         f"{r['cached_MB']:.1f} MiB cached | | | |")
    return "\n".join(lines) + "\n"


def main_with(quick=False, json_path=None, markdown_path=None) -> int:
    import minidl
    if not minidl.cuda.is_available():
        print(f"minidl bench: --device cuda: CUDA is not available: "
              f"{minidl.cuda.unavailable_reason()}", file=sys.stderr)
        return 2
    repeat = 2 if quick else 20
    result = {"device": minidl.cuda.status(),
              "copy_GBps": copy_bandwidth(1024 if quick else 1 << 26, repeat),
              "overhead": overhead_rows(quick),
              "kernels": kernel_rows(quick, repeat), "train": train_rows(quick, repeat)}
    text = markdown(result)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text)
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m minidl.benchmarks.cuda", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    a = p.parse_args(argv)
    return main_with(a.quick, a.json, a.markdown)


if __name__ == "__main__":
    sys.exit(main())
