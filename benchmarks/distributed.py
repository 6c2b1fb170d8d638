"""Data-parallel training on MPI: what 1 and 2 ranks do on this machine, and what 8 and
64 machines would do by a stated network model.

    python -m minidl.benchmarks.distributed [--steps 200] [--ranks 1,2] [--json FILE] [--quick]

For the paper's BN MLP (784-100-100-100-10, global batch 60) and the small BN CNN of
benchmarks/cases.py (global batch 64), with SyncBatchNorm (the paper's batch is the
global batch) inside DistributedDataParallel, float32, SGD with momentum, random data:

1. Measured: `mpirun -n K` (K in --ranks) runs the steps; reported are steps/s and
   examples/s of the global batch, the share of each step spent waiting in collectives
   (gradient all-reduce, SyncBN statistics, the loss; waiting includes load imbalance
   between ranks), the gradient bytes and the collectives per step. One rank also times
   its compute (forward + backward + update, no collectives) at the batches a rank would
   hold on 8 and 64 machines, its backward alone, and a bare all-reduce of the gradient
   buffer between the ranks of this machine (shared memory).
2. Modeled: ring all-reduce of S gradient bytes over p machines with links of bandwidth
   B and per-message latency a costs 2 (p - 1) a + 2 (p - 1) / p * S / B; each small
   collective (SyncBN's per-layer statistics and gradient sums, the loss: a few hundred
   bytes, which MPI reduces by recursive doubling) costs ceil(log2 p) a. Links: 10 Gb/s
   Ethernet over TCP (a = 25 us) and 100 Gb/s with RDMA (a = 3 us) (assumed, not
   measured). Step time on p machines = compute + communication (no overlap; the bound
   on what overlapping the gradient all-reduce with the backward pass could hide,
   min(communication, measured backward time), is reported separately). Weak scaling:
   each machine keeps the measured per-rank batch (the global batch grows p-fold);
   strong scaling: the global batch stays, each machine computes batch / p (not
   possible, "-", when the global batch is smaller than p).

Run it on a quiet machine: with several ranks per machine the ranks share its cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from minidl.benchmarks.harness import clean_blas_env

clean_blas_env()

MODELS = {"BN MLP": ("mlp_bn", 60), "BN CNN": ("cnn", 64)}
LINKS = {"10 Gb/s TCP": (10e9 / 8, 25e-6), "100 Gb/s RDMA": (100e9 / 8, 3e-6)}
MACHINES = (8, 64)


# ------------------------------------------------------------------ the worker (a rank)

def _worker(steps: int, warmup: int, out: Path) -> None:
    import numpy as np

    import minidl as md
    import minidl.distributed as dist
    from minidl.benchmarks.cases import minidl_model
    from minidl import nn, optim

    dist.init_process_group()
    g = dist.current_group()
    rank, k = g.rank, g.size
    results = {}
    for name, (kind, batch) in MODELS.items():
        if batch % k:
            continue
        md.manual_seed(0)
        inner = dist.SyncBatchNorm.convert_sync_batchnorm(minidl_model(kind))
        model = dist.DistributedDataParallel(inner)
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        rng = np.random.default_rng(rank)
        b = batch // k
        shape = (b, 784) if kind.startswith("mlp") else (b, 1, 28, 28)
        batches = [(md.tensor(rng.random(shape, dtype=np.float32)),
                    md.tensor(rng.integers(0, 10, b))) for _ in range(4)]
        loss_sum = np.zeros(1)

        def step(i, batches=batches, model=model, opt=opt, loss_sum=loss_sum):
            x, y = batches[i % len(batches)]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum[0] = float(loss.data)
            g.allreduce_(loss_sum)  # what the Trainer adds per step
        for i in range(warmup):
            step(i)
        g.barrier()
        s0 = dict(g.stats)
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        wall = time.perf_counter() - t0
        comm = g.stats["seconds"] - s0["seconds"]
        grad_bytes = sum(nbytes for _, nbytes in model.buckets)
        row = {"ranks": k, "global_batch": batch, "per_rank_batch": b,
               "step_s": wall / steps, "comm_s": comm / steps,
               "collectives_per_step": (g.stats["calls"] - s0["calls"]) / steps,
               "grad_bytes": grad_bytes, "buckets": len(model.buckets)}
        rows = g.allgather_object(row)
        if k > 1:  # a bare all-reduce of the gradient buffer between the ranks here
            buf = np.zeros(grad_bytes // 4, np.float32)
            for _ in range(5):
                g.allreduce_(buf)
            t0 = time.perf_counter()
            for _ in range(50):
                g.allreduce_(buf)
            row["bare_allreduce_s"] = (time.perf_counter() - t0) / 50
        if k == 1:
            row["compute_s_at_batch"] = _compute_times(kind, batch, steps, warmup)
            row["backward_s"] = _backward_time(kind, batch, steps)
        if rank == 0:
            row["step_s"] = max(r["step_s"] for r in rows)  # the slowest rank sets the pace
            results[name] = row
    if rank == 0:
        out.write_text(json.dumps(results))


def _model_and_data(kind, b, seed=0):
    import numpy as np

    import minidl as md
    from minidl.benchmarks.cases import minidl_model
    from minidl import optim
    md.manual_seed(seed)
    model = minidl_model(kind)
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = np.random.default_rng(seed)
    shape = (b, 784) if kind.startswith("mlp") else (b, 1, 28, 28)
    x = md.tensor(rng.random(shape, dtype=np.float32))
    y = md.tensor(rng.integers(0, 10, b))
    return model, opt, x, y


def _compute_times(kind, batch, steps, warmup) -> dict:
    """Seconds per step without any collective, at the per-machine batches of strong
    scaling (batch / p, at least 2)."""
    from minidl import nn
    out = {}
    for b in sorted({batch} | {max(2, batch // p) for p in MACHINES}):
        model, opt, x, y = _model_and_data(kind, b)

        def step(model=model, opt=opt, x=x, y=y):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for _ in range(warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        out[str(b)] = (time.perf_counter() - t0) / steps
    return out


def _backward_time(kind, batch, steps) -> float:
    from minidl import nn
    model, opt, x, y = _model_and_data(kind, batch)
    total = 0.0
    for i in range(steps + 5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        t0 = time.perf_counter()
        loss.backward()
        if i >= 5:
            total += time.perf_counter() - t0
        opt.step()
    return total / steps


# ------------------------------------------------------------------ the model of a network

def ring_allreduce_s(nbytes: float, p: int, bandwidth: float, latency: float) -> float:
    """2 (p-1) steps of latency + 2 (p-1)/p of the buffer over each link."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * latency + 2 * (p - 1) / p * nbytes / bandwidth


def model_scaling(row: dict) -> list:
    """Modeled steps/s on 8 and 64 machines (weak and strong scaling) for each link."""
    compute = row["compute_s_at_batch"]
    t1 = compute[str(row["global_batch"])]
    small = max(0.0, row["collectives_per_step_2"] - row["buckets"])  # non-gradient ones
    out = []
    for link, (bw, lat) in LINKS.items():
        for p in MACHINES:
            comm = (ring_allreduce_s(row["grad_bytes"], p, bw, lat)
                    + small * math.ceil(math.log2(p)) * lat)
            b = row["global_batch"] // p
            strong = t1 / (compute[str(max(2, b))] + comm) if b >= 2 else None
            t_weak = t1 + comm
            out.append({"link": link, "machines": p, "comm_s": comm,
                        "weak_speedup": p * t1 / t_weak, "weak_efficiency": t1 / t_weak,
                        "strong_speedup": strong,
                        "comm_share_weak": comm / t_weak})
    return out


# ------------------------------------------------------------------------------ driver

def _run_ranks(k: int, steps: int, warmup: int, tmp: Path) -> dict:
    out = tmp / f"ranks-{k}.json"
    cmd = ["mpirun", "--oversubscribe", "-n", str(k)]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [sys.executable, "-m", "minidl.benchmarks.distributed", "--worker", "--steps",
            str(steps),
            "--warmup", str(warmup), "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads(out.read_text())


def _x(speedup) -> str:
    return "-" if speedup is None else f"{speedup:.1f}x"


def format_report(measured: dict, modeled: dict) -> str:
    lines = ["## Data-parallel training on MPI (benchmarks/distributed.py)", "",
             "| model | ranks | global batch | steps/s | examples/s | time in collectives "
             "| collectives/step | gradient bytes (buckets) | bare all-reduce ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for k, res in sorted(measured.items()):
            r = res.get(name)
            if r is None:
                continue
            bare = r.get("bare_allreduce_s")
            lines.append(
                f"| {name} | {k} | {r['global_batch']} | {1 / r['step_s']:.0f} | "
                f"{r['global_batch'] / r['step_s']:.0f} | {100 * r['comm_s'] / r['step_s']:.1f}%"
                f" | {r['collectives_per_step']:.0f} | {r['grad_bytes']:,} ({r['buckets']}) | "
                f"{'-' if bare is None else f'{1e3 * bare:.3f}'} |")
    lines += ["", "Modeled (ring all-reduce, no overlap; compute measured at 1 rank):", "",
              "| model | link | machines | comm ms/step | weak: speedup (efficiency) | "
              "strong: speedup | overlap could hide at most |", "|---|---|---|---|---|---|---|"]
    for name, rows in modeled.items():
        for m in rows["rows"]:
            lines.append(f"| {name} | {m['link']} | {m['machines']} | {1e3 * m['comm_s']:.3f} | "
                         f"{m['weak_speedup']:.1f}x ({100 * m['weak_efficiency']:.0f}%) | "
                         f"{_x(m['strong_speedup'])} | "
                         f"{1e3 * min(m['comm_s'], rows['backward_s']):.3f} ms |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 5 steps")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 5, 2
    if args.worker:
        _worker(args.steps, args.warmup, Path(args.out))
        return 0
    import minidl.distributed as dist
    if not dist.is_available() or shutil.which("mpirun") is None:
        print(f"minidl.benchmarks.distributed: MPI unavailable: "
              f"{dist.unavailable_reason() or 'mpirun is not on PATH'}")
        return 1
    import tempfile
    ranks = sorted({int(r) for r in args.ranks.split(",")} | {1})
    with tempfile.TemporaryDirectory() as tmp:
        measured = {k: _run_ranks(k, args.steps, args.warmup, Path(tmp)) for k in ranks}
    modeled = {}
    for name in MODELS:
        one = measured[1].get(name)
        several = [measured[k][name] for k in ranks if k > 1 and name in measured[k]]
        if one is None or not several:
            continue
        row = dict(one, collectives_per_step_2=several[0]["collectives_per_step"],
                   grad_bytes=several[0]["grad_bytes"], buckets=several[0]["buckets"])
        modeled[name] = {"rows": model_scaling(row), "backward_s": one["backward_s"]}
    text = format_report(measured, modeled)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": measured, "modeled": modeled},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
