"""DistributedSampler: each rank's share of every epoch, PyTorch's semantics.

Every rank draws the same epoch order (the same `seed`, and `set_epoch(e)` before epoch
e), then keeps every num_replicas-th index starting at its rank:

    order = permutation of range(N)            (or range(N) without shuffle)
    pad it with its own first indices up to a multiple of num_replicas (drop_last=False)
        or cut it down to one (drop_last=True)
    rank r gets order[r::num_replicas]

Fed to a DataLoader with batch_size b = B / num_replicas, step i of rank r sees
order[i*B + r : (i+1)*B : num_replicas]: the ranks together see exactly the global
batch order[i*B : (i+1)*B] that one process at batch B would see.

The epoch order is the one `DataLoader(..., shuffle=True, seed=seed)` draws in its epoch
e (the (e+1)-th `permutation(N)` of `numpy.random.default_rng(seed)`), so that K ranks
at global batch B see the batches one process sees at batch B, epoch after epoch.
(PyTorch seeds its generator with seed + epoch instead; both streams are fixed by
seed and epoch, the same on every rank.)
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["DistributedSampler"]


class DistributedSampler:
    """Indices of this rank's share of `dataset` (torch.utils.data.DistributedSampler).

    num_replicas, rank: default the world size and rank of the initialized group.
    shuffle: a new order each epoch (call `set_epoch(epoch)` before each; minidl's
        Trainer does). seed: the same on every rank. drop_last: drop the tail that
        does not divide evenly, instead of padding with repeated indices.

    >>> s = DistributedSampler(range(10), num_replicas=3, rank=1, shuffle=False)
    >>> list(s)                         # 10 padded to 12: 0..9, 0, 1
    [1, 4, 7, 0]
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if num_replicas is None or rank is None:
            from . import get_rank, get_world_size, is_initialized
            if not is_initialized():
                raise RuntimeError("DistributedSampler: pass num_replicas and rank, or call "
                                   "minidl.distributed.init_process_group() first")
            num_replicas = get_world_size() if num_replicas is None else num_replicas
            rank = get_rank() if rank is None else rank
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be a positive integer, "
                             f"got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % self.num_replicas:
            self.num_samples = math.ceil((n - self.num_replicas) / self.num_replicas)
        else:
            self.num_samples = math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        self._rng = None        # generator positioned before the order of epoch _rng_epoch
        self._rng_epoch = 0
        self._cached = (None, None)  # (epoch, order)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration uses."""
        self.epoch = int(epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._cached[0] == epoch:
            return self._cached[1]
        n = len(self.dataset)
        if self._rng is None or self._rng_epoch > epoch:
            self._rng, self._rng_epoch = np.random.default_rng(self.seed), 0
        while self._rng_epoch < epoch:  # fast-forward through earlier epochs' draws
            self._rng.permutation(n)
            self._rng_epoch += 1
        order = self._rng.permutation(n)
        self._rng_epoch += 1
        self._cached = (epoch, order)
        return order

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, as an int64 array."""
        n = len(self.dataset)
        order = self._epoch_order(self.epoch) if self.shuffle else np.arange(n)
        if not self.drop_last:
            pad = self.total_size - n
            if pad > 0:
                order = np.concatenate([order, np.resize(order, pad)])
        else:
            order = order[:self.total_size]
        return np.asarray(order[self.rank:self.total_size:self.num_replicas], dtype=np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict:
        """The epoch, plus what a resumed run must agree on (not the rank: a checkpoint
        written by rank 0 is loaded by every rank)."""
        return {"epoch": self.epoch, "seed": self.seed, "shuffle": self.shuffle,
                "drop_last": self.drop_last, "num_replicas": self.num_replicas,
                "dataset_len": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "shuffle", "drop_last", "num_replicas", "dataset_len"):
            mine = len(self.dataset) if key == "dataset_len" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"DistributedSampler.load_state_dict: saved {key}="
                                 f"{state[key]!r} but this sampler has {key}={mine!r}")
        self.epoch = int(state["epoch"])
