"""DistributedDataParallel: one model per rank, gradients averaged after every backward.

With K ranks each computing the mean loss over its own b = B/K examples,

    L = 1/B sum_i l_i = 1/K sum_r L_r,   so   dL/dw = 1/K sum_r dL_r/dw,

the average over ranks of each rank's gradient is exactly the gradient of the global
batch. The wrapper

* broadcasts rank 0's parameters and buffers when it wraps the model (so every rank
  starts from the same weights) after checking that every rank holds the same model;
* marks the model's outputs so that `loss.backward()` queues one callback
  (minidl.autograd.queue_callback) that runs when the pass has accumulated every
  gradient: it packs the gradients into a few flat buckets of at most `bucket_cap_mb`
  (PyTorch's 25 MB; the MLP of the paper is one bucket), all-reduces them (all buckets
  in flight at once), divides by K and writes them back;
* with broadcast_buffers=True (PyTorch's default), broadcasts rank 0's buffers (BN's
  running statistics) at the start of each training forward, so that per-rank BN
  layers, whose running statistics drift apart, evaluate like rank 0. SyncBatchNorm's
  buffers are left out: every rank updates them with the same global statistics.

The all-reduce is not overlapped with the backward pass. On CPU ranks the cores that
would have to progress an overlapped reduction are the ones running the backward
kernels (Open MPI only progresses a non-blocking collective inside MPI calls unless a
progress thread is given a core), minidl's tape has no per-parameter "gradient ready"
hook to start a bucket early, and the gain is bounded by the all-reduce's share of a
step, which benchmarks/distributed.py measures: the bound is reported there.

Example (mpirun -n 2):
    >>> model = DistributedDataParallel(mlp(bn=True))
    >>> loss = F.cross_entropy(model(x_shard), y_shard); loss.backward()
    >>> # every rank's p.grad now holds the average over ranks
"""
from __future__ import annotations

import contextlib
import hashlib

import numpy as np

from ..autograd import is_grad_enabled, queue_callback, record
from ..nn.module import Module
from ..tensor import Tensor
from .group import DistributedError
from .group import group as _group

MB = 2 ** 20


class _Bucket:
    """Parameters of one dtype whose gradients travel in one flat array."""

    def __init__(self, params: list, dtype):
        self.params = params
        sizes = [p.data.size for p in params]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self.flat = np.zeros(int(offsets[-1]), dtype=dtype)

    @property
    def nbytes(self) -> int:
        return self.flat.nbytes


def _buckets(params: list, cap_bytes: int) -> list:
    """Parameters in reverse registration order (the order backward produces their
    gradients, as PyTorch buckets them), split by dtype and at `cap_bytes`."""
    by_dtype: dict = {}
    for p in reversed(params):
        by_dtype.setdefault(p.data.dtype, []).append(p)
    buckets = []
    for dtype, ps in by_dtype.items():
        current, size = [], 0
        for p in ps:
            if current and size + p.data.nbytes > cap_bytes:
                buckets.append(_Bucket(current, dtype))
                current, size = [], 0
            current.append(p)
            size += p.data.nbytes
        if current:
            buckets.append(_Bucket(current, dtype))
    return buckets


def _flat_broadcast(g, tensors: list, what: str) -> None:
    """Broadcast rank 0's values of `tensors` (grouped by dtype, one call per dtype)."""
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault(t.data.dtype, []).append(t)
    for dtype, ts in by_dtype.items():
        flat = np.concatenate([t.data.ravel() for t in ts]) if ts else np.zeros(0, dtype)
        g.bcast_(flat, 0, what)
        at = 0
        for t in ts:
            n = t.data.size
            t.data[...] = flat[at:at + n].reshape(t.data.shape)
            at += n


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training (PyTorch's DistributedDataParallel).

    module: the model, the same on every rank (checked). broadcast_buffers: sync rank 0's
    buffers at every training forward. process_group: default the one of
    init_process_group. bucket_cap_mb: the largest gradient bucket. device_ids must be
    None (minidl ranks are CPU processes). find_unused_parameters is accepted for
    PyTorch's sake and not needed: a parameter without a gradient on some rank counts
    as a zero gradient there. `.module` is the wrapped model; its
    state_dict keys, as in PyTorch, are prefixed with "module.".
    """

    def __init__(self, module: Module, device_ids=None, output_device=None,
                 broadcast_buffers: bool = True, process_group=None,
                 bucket_cap_mb: float = 25.0, find_unused_parameters: bool = False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a minidl.nn.Module, got "
                            f"{type(module).__name__}")
        if device_ids is not None or output_device is not None:
            raise ValueError("DistributedDataParallel: device_ids/output_device must be None "
                             "(each rank is one CPU process)")
        if not bucket_cap_mb > 0:
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be > 0, got "
                             f"{bucket_cap_mb}")
        self.module = module
        object.__setattr__(self, "process_group", _group(process_group))
        self.broadcast_buffers = bool(broadcast_buffers)
        self.bucket_cap_mb = float(bucket_cap_mb)
        self.require_backward_grad_sync = True
        params = [p for p in module.parameters() if p.requires_grad]
        object.__setattr__(self, "_params", params)
        object.__setattr__(self, "_bucket_list", _buckets(params, int(bucket_cap_mb * MB)))
        self._check_same_model()
        g = self.process_group
        if g.size > 1:
            _flat_broadcast(g, list(module.parameters()), "DistributedDataParallel: broadcast "
                            "of rank 0's parameters")
            self._sync_buffers(all_buffers=True)

    # ---- setup ------------------------------------------------------------------------
    def _check_same_model(self) -> None:
        g = self.process_group
        sig = [(name, tuple(t.shape), str(t.data.dtype), bool(getattr(t, "requires_grad", 0)))
               for name, t in list(self.module.named_parameters()) +
               list(self.module.named_buffers()) if t is not None]
        digest = hashlib.sha1(repr(sig).encode()).hexdigest()
        digests = g.allgather_object((digest, len(sig)), "DistributedDataParallel: model check")
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise DistributedError(
                f"DistributedDataParallel: rank(s) {differ} hold a different model than rank "
                f"0 (parameter/buffer names, shapes, dtypes or requires_grad differ; rank 0 "
                f"has {digests[0][1]} tensors, rank {differ[0]} {digests[differ[0]][1]}); "
                f"every rank must build the same model")

    def _sync_buffers(self, all_buffers: bool = False) -> None:
        from .sync_batchnorm import SyncBatchNorm
        skip = set() if all_buffers else {
            id(b) for m in self.module.modules() if isinstance(m, SyncBatchNorm)
            for b in m.buffers(recurse=False)}
        buffers = [b for b in self.module.buffers() if b is not None and id(b) not in skip]
        if buffers:
            _flat_broadcast(self.process_group, buffers,
                            "DistributedDataParallel: broadcast of rank 0's buffers")

    @property
    def buckets(self) -> list:
        """[(number of parameters, bytes)] of each gradient bucket."""
        return [(len(b.params), b.nbytes) for b in self._bucket_list]

    # ---- forward and the gradient reduction ---------------------------------------------
    def forward(self, *inputs, **kwargs):
        g = self.process_group
        if self.training and self.broadcast_buffers and g.size > 1 and is_grad_enabled():
            self._sync_buffers()
        out = self.module(*inputs, **kwargs)
        if is_grad_enabled() and self.require_backward_grad_sync and g.size > 1:
            out = self._mark(out)
        return out

    def _mark(self, out):
        """The output, passed through an identity node whose backward queues the
        gradient reduction for the end of the backward pass."""
        if isinstance(out, Tensor):
            if not out.requires_grad:
                return out

            def backward(grad, needs):
                queue_callback(self._reduce_gradients)
                return (grad,)
            return record(out.data, (out,), backward, "DistributedDataParallel")
        if isinstance(out, (tuple, list)):
            return type(out)(self._mark(o) for o in out)
        if isinstance(out, dict):
            return {k: self._mark(v) for k, v in out.items()}
        return out

    def _reduce_gradients(self) -> None:
        """Average every parameter's gradient over the ranks (a parameter this rank did
        not use counts as a zero gradient)."""
        g = self.process_group
        works = []
        n = len(self._bucket_list)
        for i, bucket in enumerate(self._bucket_list):
            for p, sl in zip(bucket.params, bucket.slices):
                if p.grad is None:
                    bucket.flat[sl] = 0
                else:
                    bucket.flat[sl] = p.grad.data.ravel()
            works.append(g.iallreduce_(bucket.flat, what=f"all_reduce of the gradients "
                                       f"(bucket {i + 1} of {n})"))
        for bucket, work in zip(self._bucket_list, works):
            work.wait()
            bucket.flat /= g.size
            for p, sl in zip(bucket.params, bucket.slices):
                avg = bucket.flat[sl].reshape(p.data.shape)
                grad = None if p.grad is None else p.grad.data
                if grad is not None and grad.flags.writeable and grad.base is None:
                    grad[...] = avg
                else:
                    p.grad = Tensor._wrap(avg.copy())

    @contextlib.contextmanager
    def no_sync(self):
        """Inside the block, backward passes accumulate gradients locally; the first
        backward after it averages the accumulated gradients (gradient accumulation)."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def extra_repr(self) -> str:
        return (f"world_size={self.process_group.size}, broadcast_buffers="
                f"{self.broadcast_buffers}, buckets={len(self._bucket_list)} "
                f"(cap {self.bucket_cap_mb:g} MB)")
