"""Default thread counts for a process that mpirun started next to others on one machine.

K ranks on a machine of C cores, each with C Numba and C BLAS threads, run K*C threads on
C cores: they preempt each other in the middle of every parallel loop. So, when the
launcher says how many ranks share this machine (Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE;
MPICH/Hydra: MPI_LOCALNRANKS), each rank defaults to C // K threads (at least 1, at most
the CPUs it is allowed to run on). Runs before NumPy and Numba load, since both read
their thread counts from the environment once; a variable the user set is left alone.
"""
from __future__ import annotations

import os

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS")
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS")

applied: dict = {}  # what was set, for `minidl info`


def local_ranks(environ=os.environ) -> int:
    """How many ranks of this MPI job run on this machine (1 outside mpirun)."""
    for name in LOCAL_SIZE_VARIABLES:
        try:
            return max(1, int(environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def threads_per_rank(local: int, cores: int | None = None, allowed: int | None = None) -> int:
    """cores // local ranks, within [1, CPUs this process may use]."""
    cores = cores or os.cpu_count() or 1
    if allowed is None:
        try:
            allowed = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            allowed = cores
    return max(1, min(allowed, cores // max(1, local)))


def apply_defaults(environ=os.environ) -> dict:
    """Set the thread variables a user did not set, when several ranks share the
    machine. Returns {variable: value} of what it set."""
    local = local_ranks(environ)
    if local <= 1:
        return {}
    n = str(threads_per_rank(local))
    done = {}
    for name in THREAD_VARIABLES:
        if name not in environ:
            environ[name] = n
            done[name] = n
    applied.update(done)
    return done
