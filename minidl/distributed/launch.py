"""What `mpirun -n K minidl train|figure1|ablation` adds to a command.

* `run_command` joins the MPI job when a launcher started this process with K > 1 ranks
  (and says clearly why not when mpi4py is missing), turns a collective timeout into a
  one-line error, and turns mpirun's SIGTERM (sent when another rank exited abnormally,
  and on Ctrl-C) into a one-line message instead of a silent death. Under mpirun,
  Ctrl-C therefore stops every rank at once (mpirun sends SIGTERM, then SIGKILL): the
  run continues with --resume from its last periodic checkpoint (--checkpoint-every),
  not from the step it was at, unlike Ctrl-C in one process.
* `on_main(fn)`: fn runs on rank 0 only (claiming the output folder, writing results);
  if it fails, every rank stops.
* `local_main_first(fn)`: the data is loaded (downloaded if missing) by one rank per
  machine before the others read it.
* `data_parallel(model, dataset, batch_size, seed, sync_bn)`: the model wrapped in
  DistributedDataParallel (with SyncBatchNorm layers if asked) and a DataLoader of this
  rank's batch_size / K share of each global batch; in one process, the model as it is
  and the usual shuffled DataLoader, which draws the same batches.
"""
from __future__ import annotations

import os
import signal
import sys

from . import group as _g


def world() -> int:
    return _g.current_group().size


def is_main() -> bool:
    return _g.current_group().rank == 0


def fail(message: str):
    """Stop every rank with `message`, printed once (by rank 0)."""
    raise SystemExit(message if is_main() else 1)


def setup(command: str):
    """Join the MPI job if this process is one of K > 1 ranks; returns the group or None."""
    n = _g.launched_by_mpirun()
    if n <= 1 or _g.is_initialized():
        return _g._default
    if not _g.is_available():
        raise SystemExit(f"minidl {command}: started by an MPI launcher as one of {n} ranks, "
                         f"but distributed training is unavailable: "
                         f"{_g.unavailable_reason()}")
    pg = _g.init_process_group()

    def on_sigterm(signum, frame):
        sys.stderr.write(f"minidl {command}: rank {pg.rank} of {pg.size} was terminated by "
                         f"mpirun: another rank ended abnormally (mpirun's message names "
                         f"it), or mpirun was interrupted. Checkpoints are written "
                         f"atomically: rerun with --resume to continue from the last one.\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, on_sigterm)
    return pg


def run_command(command: str, fn, args):
    """fn(args) as one rank of a data-parallel job (or alone); returns its result, or
    {"failed": True} after a collective timeout."""
    setup(command)
    try:
        return fn(args)
    except _g.DistributedTimeoutError as e:
        print(f"minidl {command}: {e}", file=sys.stderr)
        return {"failed": True}


def on_main(fn):
    """fn() on rank 0 (its result there, None elsewhere). If it raises, rank 0 raises it
    and the other ranks exit with status 1, instead of waiting at the next collective."""
    g = _g.current_group()
    if g.size == 1:
        return fn()
    result, ok = None, True
    try:
        if g.rank == 0:
            result = fn()
    except BaseException:
        ok = False
        g.bcast_object(False, 0, "broadcast of rank 0's outcome")
        raise
    if g.rank == 0:
        g.bcast_object(ok, 0, "broadcast of rank 0's outcome")
    elif not g.bcast_object(None, 0, "broadcast of rank 0's outcome"):
        raise SystemExit(1)
    return result


def local_main_first(fn):
    """fn() on one rank per machine first, then on the others (e.g. loading a data set
    that the first call downloads)."""
    g = _g.current_group()
    if g.size == 1:
        return fn()
    result = fn() if g.local_rank == 0 else None
    g.barrier("barrier after the first rank of each machine loaded the data")
    return result if g.local_rank == 0 else fn()


def data_parallel(model, dataset, batch_size: int, seed: int, sync_bn: bool = False,
                  command: str = "train"):
    """(model, train loader) for this rank: see the module docstring."""
    from ..data import DataLoader
    g = _g.current_group()
    if g.size == 1:
        return model, DataLoader(dataset, batch_size=batch_size, shuffle=True, seed=seed)
    from .ddp import DistributedDataParallel
    from .sampler import DistributedSampler
    from .sync_batchnorm import SyncBatchNorm
    if batch_size % g.size:
        fail(f"minidl {command}: the global --batch-size {batch_size} does not split evenly "
             f"over {g.size} ranks; use a multiple of {g.size}")
    if sync_bn:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    model = DistributedDataParallel(model)
    sampler = DistributedSampler(dataset, g.size, g.rank, shuffle=True, seed=seed)
    return model, DataLoader(dataset, batch_size=batch_size // g.size, sampler=sampler)
