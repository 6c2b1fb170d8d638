"""Run by tests/test_distributed.py under `mpirun -n K`: trains tiny float64 models with
DistributedDataParallel (+ SyncBatchNorm for BN models) on global batch B split over the
ranks, and writes rank 0's parameters (and every rank's, to check they agree) to
OUT/<case>.npz; also the indices each rank's sampler produced per epoch."""
import json
import sys
from pathlib import Path

import numpy as np

import minidl.distributed as dist
from minidl import optim
from minidl.data import DataLoader, TensorDataset
from minidl.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import CASES, build, data  # noqa: E402

out = Path(sys.argv[1])
dist.init_process_group(timeout=60)
rank, world = dist.get_rank(), dist.get_world_size()
report = {"world": world}

for name, case in CASES.items():
    model = build(name)
    if case["sync_bn"]:
        model = dist.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=case.get("bucket_mb", 25))
    opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    x, y = data(name)
    sampler = dist.DistributedSampler(TensorDataset(x, y), seed=3)
    loader = DataLoader(TensorDataset(x, y), batch_size=case["batch"] // world, sampler=sampler)
    losses = []
    for epoch in range(case["epochs"]):
        sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = F.cross_entropy(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.data))
    params = {k: v for k, v in model.state_dict().items()}
    gathered = [None] * world
    dist.all_gather_object(gathered, params)
    if rank == 0:
        np.savez(out / f"{name}.npz", **params)
        report[name] = {"same_on_all_ranks": all(
            all(np.array_equal(g[k], params[k]) for k in params) for g in gathered),
            "buckets": ddp.buckets}

# Gradient accumulation: each rank's share in two halves, the first under no_sync();
# the average over ranks of the accumulated gradients is the global batch's gradient.
model = build("mlp")
ddp = dist.DistributedDataParallel(model)
opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
x, y = data("mlp")
sampler = dist.DistributedSampler(TensorDataset(x, y), seed=3)
loader = DataLoader(TensorDataset(x, y), batch_size=CASES["mlp"]["batch"] // world,
                    sampler=sampler)
for epoch in range(CASES["mlp"]["epochs"]):
    sampler.set_epoch(epoch)
    for xb, yb in loader:
        h = len(yb.data) // 2
        opt.zero_grad()
        with ddp.no_sync():
            (F.cross_entropy(ddp(xb[:h]), yb[:h]) * 0.5).backward()
        (F.cross_entropy(ddp(xb[h:]), yb[h:]) * 0.5).backward()
        opt.step()
if rank == 0:
    np.savez(out / "mlp_accumulated.npz", **model.state_dict())

# The sampler: every rank's indices of 3 epochs, on a dataset that does not divide evenly.
ds = TensorDataset(np.arange(23.0), np.arange(23))
seen = []
for drop_last in (False, True):
    s = dist.DistributedSampler(ds, shuffle=True, seed=5, drop_last=drop_last)
    per_epoch = []
    for epoch in range(3):
        s.set_epoch(epoch)
        per_epoch.append(list(s))
    seen.append(per_epoch)
gathered = [None] * world
dist.all_gather_object(gathered, seen)
if rank == 0:
    report["sampler"] = gathered
    (out / "report.json").write_text(json.dumps(report))
dist.barrier()
