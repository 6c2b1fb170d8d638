"""Data-parallel training across processes and machines, on MPI (mpi4py).

Horovod's model with PyTorch's names: every rank holds the whole model, trains on its
shard of each global batch, and the gradients are averaged across ranks before every
update, so K ranks at global batch B take the steps one process takes at batch B.

    mpirun -n 2 python train.py                      # or: mpirun -n 2 minidl train ...

    import minidl.distributed as dist
    from minidl.data import DataLoader
    dist.init_process_group()                        # joins the job mpirun started
    model = dist.DistributedDataParallel(
        dist.SyncBatchNorm.convert_sync_batchnorm(model))   # BN over the global batch
    sampler = dist.DistributedSampler(train_set, seed=0)
    loader = DataLoader(train_set, batch_size=B // dist.get_world_size(), sampler=sampler)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)      # mean over this rank's shard
            optimizer.zero_grad()
            loss.backward()                          # ...then gradients are averaged
            optimizer.step()

Pieces: `init_process_group` / `get_rank` / `get_world_size` / `barrier` / `all_reduce` /
`broadcast` / `all_gather` / `broadcast_object_list` (minidl/distributed/group.py holds the
MPI communicator and the collective timeout), `DistributedDataParallel` (ddp.py),
`DistributedSampler` (sampler.py), `SyncBatchNorm` (sync_batchnorm.py). Install:
`apt-get install -y openmpi-bin libopenmpi-dev` and `pip install -e ".[mpi]"`.
"""
from __future__ import annotations

import numpy as np

from .ddp import DistributedDataParallel
from .group import (DistributedError, DistributedTimeoutError, ProcessGroup, ReduceOp,
                    SingleProcessGroup, Work, current_group, destroy_process_group,
                    init_process_group, is_available, is_initialized, launched_by_mpirun,
                    unavailable_reason)
from .group import group as _group
from .sampler import DistributedSampler
from .sync_batchnorm import SyncBatchNorm

__all__ = ["DistributedDataParallel", "DistributedError", "DistributedSampler",
           "DistributedTimeoutError", "ProcessGroup", "ReduceOp", "SingleProcessGroup",
           "SyncBatchNorm", "Work", "all_gather", "all_gather_object", "all_reduce",
           "barrier", "broadcast", "broadcast_object_list", "current_group",
           "destroy_process_group", "get_local_rank", "get_local_world_size", "get_rank",
           "get_world_size", "init_process_group", "is_available", "is_initialized",
           "is_main_process", "launched_by_mpirun", "unavailable_reason"]


def get_rank(group=None) -> int:
    """This process's rank in the group, 0..world_size-1."""
    return _group(group).rank


def get_world_size(group=None) -> int:
    return _group(group).size


def get_local_rank(group=None) -> int:
    """Rank among the ranks on this machine (PyTorch reads it from LOCAL_RANK)."""
    return _group(group).local_rank


def get_local_world_size(group=None) -> int:
    return _group(group).local_size


def is_main_process() -> bool:
    """True on rank 0, and in a process that is not part of a group."""
    return not is_initialized() or get_rank() == 0


def barrier(group=None) -> None:
    """Wait until every rank got here (or the timeout passes)."""
    _group(group).barrier()


def _array(tensor, what: str) -> np.ndarray:
    data = getattr(tensor, "data", tensor)
    if not isinstance(data, np.ndarray) or not data.flags.c_contiguous:
        raise TypeError(f"{what}: expected a minidl Tensor (or NumPy array) with contiguous "
                        f"data, got {type(tensor).__name__}")
    return data


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` over every rank, in place: afterwards every rank holds the sum
    (or ReduceOp.AVG / PRODUCT / MIN / MAX) of all ranks' values. With async_op=True
    returns a Work whose wait() completes it, else None.

        >>> t = minidl.tensor([float(dist.get_rank())])
        >>> dist.all_reduce(t)          # on 2 ranks: t == [1.0] everywhere
    """
    work = _group(group).iallreduce_(_array(tensor, "all_reduce"), op)
    if async_op:
        return work
    work.wait()
    return None


def broadcast(tensor, src: int = 0, group=None, async_op: bool = False):
    """Overwrite `tensor` on every rank with rank `src`'s values, in place."""
    _group(group).bcast_(_array(tensor, "broadcast"), src)


def all_gather(tensor_list: list, tensor, group=None, async_op: bool = False):
    """tensor_list[r] receives rank r's `tensor` (same shape and dtype on every rank)."""
    g = _group(group)
    if len(tensor_list) != g.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} entries for a "
                         f"group of {g.size}")
    gathered = g.allgather(_array(tensor, "all_gather"))
    for out, row in zip(tensor_list, gathered):
        dest = _array(out, "all_gather")
        if dest.shape != row.shape:
            raise ValueError(f"all_gather: output of shape {dest.shape} for inputs of shape "
                             f"{row.shape}")
        dest[...] = row


def broadcast_object_list(object_list: list, src: int = 0, group=None) -> None:
    """Replace object_list's entries on every rank with rank `src`'s (pickled)."""
    g = _group(group)
    objs = g.bcast_object(list(object_list) if g.rank == src else None, src)
    object_list[:] = objs


def all_gather_object(object_list: list, obj, group=None) -> None:
    """object_list[r] receives rank r's `obj` (pickled)."""
    g = _group(group)
    got = g.allgather_object(obj)
    if len(object_list) != len(got):
        raise ValueError(f"all_gather_object: object_list has {len(object_list)} entries "
                         f"for a group of {len(got)}")
    object_list[:] = got
