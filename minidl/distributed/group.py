"""The process group: MPI (through mpi4py) with a timeout on every collective.

Every collective here is issued non-blocking (MPI_Iallreduce, MPI_Ibcast, ...) and
then polled until it completes or `timeout` seconds pass. A blocking MPI call would
wait forever for a rank that hangs or whose machine went away; polling turns that into
a `DistributedTimeoutError` naming the collective, on every rank still alive. (A rank
that *exits* is noticed sooner by mpirun, which then terminates the others.) After a
timeout the group is broken: the pending collective can never finish, so the process
leaves without MPI_Finalize (which would wait for it) and with exit status 1.

Only the main thread calls MPI (MPI_THREAD_FUNNELED); Numba's and BLAS's threads never do.
"""
from __future__ import annotations

import atexit
import os
import pickle
import sys
import time
from datetime import timedelta

import numpy as np

DEFAULT_TIMEOUT = 600.0  # seconds; MINIDL_DIST_TIMEOUT overrides it
_SPIN_SECONDS = 5e-4     # busy polling before the poll starts to sleep between Test()s


class DistributedError(RuntimeError):
    """A distributed run cannot go on (MPI missing, not initialized, ranks disagree)."""


class DistributedTimeoutError(DistributedError):
    """A collective did not complete within the timeout: some rank died or hangs."""


class ReduceOp:
    """The reductions of `all_reduce` (PyTorch's torch.distributed.ReduceOp names)."""
    SUM = "sum"
    AVG = "avg"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"


_MPI = None
_MPI_ERROR = None


def _load_mpi():
    """mpi4py's MPI module without initializing MPI (so `minidl info` can ask about it),
    or None; the reason it is unavailable is kept for `unavailable_reason()`."""
    global _MPI, _MPI_ERROR
    if _MPI is not None or _MPI_ERROR is not None:
        return _MPI
    try:
        import mpi4py
    except ImportError:
        _MPI_ERROR = ("mpi4py is not installed: install an MPI (Debian: apt-get install -y "
                      "openmpi-bin libopenmpi-dev) and then pip install -e \".[mpi]\"")
        return None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.initialize = False  # MPI_Init happens in init_process_group
        mpi4py.rc.finalize = True
        mpi4py.rc.thread_level = "funneled"
    try:
        from mpi4py import MPI
    except Exception as e:  # mpi4py built against an MPI library that is gone
        _MPI_ERROR = f"mpi4py is installed but its MPI library does not load ({e})"
        return None
    _MPI = MPI
    return MPI


def is_available() -> bool:
    """Whether mpi4py and an MPI library are installed (PyTorch's is_available)."""
    return _load_mpi() is not None


def unavailable_reason() -> str | None:
    """Why distributed training is unavailable, or None when it is available."""
    _load_mpi()
    return _MPI_ERROR


def mpi_library_version() -> str:
    MPI = _load_mpi()
    if MPI is None:
        return "none"
    return MPI.Get_library_version().splitlines()[0].split(",")[0].strip()


def launched_by_mpirun(environ=os.environ) -> int:
    """The world size an MPI launcher announced in the environment (Open MPI, MPICH/Hydra,
    PMIx, Slurm's PMI), or 0 outside a launcher. Read before MPI is initialized."""
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if name in environ:
            try:
                return int(environ[name])
            except ValueError:
                continue
    return 0


def _seconds(timeout) -> float:
    if timeout is None:
        env = os.environ.get("MINIDL_DIST_TIMEOUT")
        if env:
            try:
                timeout = float(env)
            except ValueError:
                raise DistributedError(f"MINIDL_DIST_TIMEOUT must be a number of seconds, "
                                       f"got {env!r}") from None
        else:
            timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    timeout = float(timeout)
    if not timeout > 0:
        raise DistributedError(f"the collective timeout must be > 0 seconds, got {timeout}")
    return timeout


class Work:
    """A collective in flight (PyTorch's `async_op=True` handle): `wait()` blocks until
    it completes or the group's timeout passes."""

    def __init__(self, group, requests, what: str, finish=None):
        self.group, self.requests, self.what, self._finish = group, requests, what, finish

    def is_completed(self) -> bool:
        return self.group._MPI.Request.Testall(self.requests)

    def wait(self, timeout=None) -> bool:
        self.group._wait(self.requests, self.what, timeout)
        if self._finish is not None:
            self._finish()
            self._finish = None
        return True


class ProcessGroup:
    """A communicator (a duplicate of MPI_COMM_WORLD) with a collective timeout.

    Arrays are NumPy arrays reduced in place; every rank must call the same collectives
    in the same order with the same shapes and dtypes, as with any MPI program."""

    def __init__(self, comm, timeout: float):
        self._MPI = _load_mpi()
        self.comm = comm
        self.timeout = timeout
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        local = comm.Split_type(self._MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.broken = False
        self.stats = {"calls": 0, "bytes": 0, "seconds": 0.0}  # for benchmarks

    # ---- waiting with a deadline ------------------------------------------------------
    def _wait(self, requests, what: str, timeout=None) -> None:
        MPI = self._MPI
        if self.broken:
            raise DistributedTimeoutError(f"minidl.distributed: rank {self.rank}: the process "
                                          f"group is broken by an earlier timeout")
        t0 = time.perf_counter()
        if not MPI.Request.Testall(requests):
            limit = self.timeout if timeout is None else _seconds(timeout)
            deadline = time.monotonic() + limit
            spin_until, pause = t0 + _SPIN_SECONDS, 2e-5
            while not MPI.Request.Testall(requests):
                if time.perf_counter() < spin_until:
                    continue
                if time.monotonic() > deadline:
                    self._fail(what, limit)
                time.sleep(pause)  # lets the other ranks of an oversubscribed machine run
                pause = min(pause * 2, 1e-3)
        self.stats["seconds"] += time.perf_counter() - t0

    def _fail(self, what: str, limit: float) -> None:
        self.broken = True
        _exit_without_finalize_at_exit()
        raise DistributedTimeoutError(
            f"minidl.distributed: rank {self.rank} of {self.size} waited {limit:g} s in "
            f"{what} and not every rank joined: a rank died, hangs, or lost its network "
            f"(mpirun names a rank that exited). The timeout is init_process_group("
            f"timeout=...) or MINIDL_DIST_TIMEOUT seconds.")

    def _count(self, arr) -> None:
        self.stats["calls"] += 1
        self.stats["bytes"] += arr.nbytes

    # ---- collectives on arrays --------------------------------------------------------
    def _op(self, op):
        MPI = self._MPI
        table = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.PRODUCT: MPI.PROD,
                 ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX}
        if op not in table:
            raise ValueError(f"all_reduce: unknown op {op!r}; use minidl.distributed.ReduceOp")
        return table[op]

    def iallreduce_(self, arr: np.ndarray, op=ReduceOp.SUM, what: str = "all_reduce") -> Work:
        """Start an in-place all-reduce of a contiguous array; returns its Work."""
        _check_buffer(arr, what)
        if op == ReduceOp.AVG and not np.issubdtype(arr.dtype, np.floating):
            raise TypeError(f"{what}: ReduceOp.AVG needs a floating array, got {arr.dtype}")
        self._count(arr)
        req = self.comm.Iallreduce(self._MPI.IN_PLACE, arr, op=self._op(op))
        finish = None
        if op == ReduceOp.AVG:
            def finish():
                np.divide(arr, self.size, out=arr)
        return Work(self, [req], what, finish)

    def allreduce_(self, arr: np.ndarray, op=ReduceOp.SUM, what: str = "all_reduce"):
        self.iallreduce_(arr, op, what).wait()
        return arr

    def bcast_(self, arr: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        _check_buffer(arr, what)
        self._check_root(root, what)
        self._count(arr)
        self._wait([self.comm.Ibcast(arr, root=root)], what)
        return arr

    def allgather(self, arr: np.ndarray, what: str = "all_gather") -> np.ndarray:
        """(size, *arr.shape): every rank's array, in rank order."""
        arr = np.ascontiguousarray(arr)
        out = np.empty((self.size,) + arr.shape, dtype=arr.dtype)
        self._count(out)
        self._wait([self.comm.Iallgather(arr, out)], what)
        return out

    def barrier(self, what: str = "barrier") -> None:
        self._wait([self.comm.Ibarrier()], what)

    # ---- Python objects (pickled) -----------------------------------------------------
    def bcast_object(self, obj=None, root: int = 0, what: str = "broadcast_object"):
        """`obj` of rank `root`, on every rank (pickled; for states and small messages)."""
        self._check_root(root, what)
        if self.rank == root:
            payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                    dtype=np.uint8)
            n = np.array([payload.size], dtype=np.int64)
        else:
            n = np.zeros(1, dtype=np.int64)
        self.bcast_(n, root, what)
        if self.rank != root:
            payload = np.empty(int(n[0]), dtype=np.uint8)
        else:
            payload = payload.copy()  # frombuffer of bytes is read-only
        self.bcast_(payload, root, what)
        return obj if self.rank == root else pickle.loads(payload.tobytes())

    def allgather_object(self, obj, what: str = "all_gather_object") -> list:
        payload = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                dtype=np.uint8)
        sizes = self.allgather(np.array([payload.size], dtype=np.int64), what)[:, 0]
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        counts = [int(s) for s in sizes]
        displs = [int(d) for d in np.concatenate([[0], np.cumsum(sizes)[:-1]])]
        self._wait([self.comm.Iallgatherv(payload.copy(), [out, counts, displs,
                                                            self._MPI.BYTE])], what)
        return [pickle.loads(out[d:d + c].tobytes()) for d, c in zip(displs, counts)]

    def _check_root(self, root: int, what: str) -> None:
        if not 0 <= root < self.size:
            raise ValueError(f"{what}: src={root} is not a rank of a group of {self.size}")


class SingleProcessGroup:
    """The group of one process, without MPI: every collective is the identity. What the
    distributed classes use when nothing was initialized, and what tests use to check
    their math in one process."""
    rank, size, local_rank, local_size = 0, 1, 0, 1
    broken = False
    timeout = DEFAULT_TIMEOUT

    def __init__(self):
        self.stats = {"calls": 0, "bytes": 0, "seconds": 0.0}

    def iallreduce_(self, arr, op=ReduceOp.SUM, what="all_reduce"):
        _check_buffer(arr, what)
        return _DoneWork()

    def allreduce_(self, arr, op=ReduceOp.SUM, what="all_reduce"):
        _check_buffer(arr, what)
        return arr

    def bcast_(self, arr, root=0, what="broadcast"):
        return arr

    def allgather(self, arr, what="all_gather"):
        return np.ascontiguousarray(arr)[None].copy()

    def barrier(self, what="barrier"):
        pass

    def bcast_object(self, obj=None, root=0, what="broadcast_object"):
        return obj

    def allgather_object(self, obj, what="all_gather_object"):
        return [obj]


class _DoneWork:
    def is_completed(self):
        return True

    def wait(self, timeout=None):
        return True


def _check_buffer(arr, what: str) -> None:
    if not isinstance(arr, np.ndarray) or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise TypeError(f"{what}: needs a writeable C-contiguous NumPy array, got "
                        f"{type(arr).__name__}"
                        + (f" of shape {arr.shape}" if hasattr(arr, "shape") else ""))


# ---- the default group --------------------------------------------------------------
_default: ProcessGroup | None = None
_exit_hook_installed = False


def _exit_without_finalize_at_exit() -> None:
    """After a timeout MPI_Finalize would wait for the collective that never finishes:
    leave with status 1 instead, once Python's own exit handlers have run."""
    global _exit_hook_installed
    if _exit_hook_installed:
        return
    _exit_hook_installed = True

    def _leave():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    atexit.register(_leave)  # registered last, so it runs first among atexit handlers


def init_process_group(backend: str = "mpi", timeout=None, **kwargs) -> ProcessGroup:
    """Join the MPI job this process was started in (by `mpirun -n K ...`).

    backend: "mpi" (the only one). timeout: seconds or a datetime.timedelta that any
    collective may wait before raising DistributedTimeoutError (default: the
    MINIDL_DIST_TIMEOUT environment variable, else 600 s). PyTorch's init_method,
    world_size and rank are taken from the MPI launcher; passing them is an error.

    Example (run with `mpirun -n 2 python script.py`):
        >>> import minidl.distributed as dist
        >>> dist.init_process_group()
        >>> dist.get_rank(), dist.get_world_size()
        (0, 2)
    """
    global _default
    if kwargs:
        raise TypeError(f"init_process_group: {sorted(kwargs)} are not used: with MPI the "
                        f"launcher (mpirun -n K) decides the ranks and the world size")
    if backend != "mpi":
        raise ValueError(f"init_process_group: backend must be 'mpi', got {backend!r}")
    seconds = _seconds(timeout)
    if _default is not None:
        raise DistributedError("init_process_group: already initialized (call "
                               "destroy_process_group() first)")
    MPI = _load_mpi()
    if MPI is None:
        raise DistributedError(f"init_process_group: MPI is unavailable: {_MPI_ERROR}")
    if not MPI.Is_initialized():
        MPI.Init_thread(MPI.THREAD_FUNNELED)
    _default = ProcessGroup(MPI.COMM_WORLD.Dup(), seconds)
    return _default


def destroy_process_group() -> None:
    """Leave the group (MPI itself is finalized when the process exits)."""
    global _default
    if _default is not None and not _default.broken:
        _default.comm.Free()
    _default = None


def is_initialized() -> bool:
    return _default is not None


def group(group=None):
    """`group` if given, else the default group (error when none was initialized)."""
    if group is not None:
        return group
    if _default is None:
        raise DistributedError("minidl.distributed: the default process group is not "
                               "initialized; call minidl.distributed.init_process_group() "
                               "(in a program started by mpirun -n K)")
    return _default


def current_group():
    """The default group if initialized, else a SingleProcessGroup."""
    return _default if _default is not None else SingleProcessGroup()
