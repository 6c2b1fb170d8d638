"""DataLoader: batches of minidl Tensors, shuffled reproducibly and resumable.

Epoch bookkeeping: each epoch's order is one `generator.permutation(n)` drawn when
the epoch starts. `state_dict()` stores the generator state from *before* that
draw, the epoch number and how many batches of the epoch were already handed out;
`load_state_dict()` redraws the same permutation and continues from the same batch,
so a resumed run sees exactly the batches an uninterrupted run would.
"""

import copy

import numpy as np

from .dataset import as_array

__all__ = ["DataLoader"]


def _default_collate(samples):
    """Stack a list of samples (tuples of arrays/Tensors/scalars) field by field."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(np.stack([as_array(s[i]) for s in samples]) for i in range(len(first)))
    return np.stack([as_array(s) for s in samples])


class DataLoader:
    """Iterate over `dataset` in batches of `batch_size`.

    shuffle: a new random order every epoch, drawn from `generator` (a
        numpy.random.Generator, used as is), else from `np.random.default_rng(seed)`,
        else from a generator seeded by one draw from minidl's global generator at
        construction (so `minidl.manual_seed` makes it repeatable).
    drop_last: drop the last batch of an epoch if it is smaller than batch_size.
    sampler: an iterable of dataset indices giving each epoch's order instead (e.g.
        minidl.distributed.DistributedSampler; mutually exclusive with shuffle). Its
        state_dict, if it has one, is saved and restored with the loader's.

    Yields tuples of minidl Tensors (one per array of the dataset; a dataset whose
    samples are single arrays yields single Tensors). Batches never alias the
    dataset's arrays.

    Iterating starts a new epoch, unless the current one was left unfinished (by
    `break`, or by `load_state_dict`), in which case it resumes where it stopped.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False,
                 generator=None, seed=None, sampler=None):
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler option is mutually exclusive with shuffle")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is not None and seed is not None:
            raise ValueError("pass either generator or seed, not both")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.sampler = sampler
        if generator is None:
            if seed is None and self.shuffle:
                from ..random import default_generator
                seed = int(default_generator().integers(0, 2**63))
            generator = np.random.default_rng(seed)
        self.generator = generator
        self.epoch = 0          # number of completed epochs
        self._position = 0      # batches already yielded in the current epoch
        self._order = None      # the current epoch's sample order; None between epochs
        self._epoch_rng_state = None

        from .. import tensor
        self._to_tensor = tensor

    # ---- sizes ----------------------------------------------------------------
    def __len__(self):
        n = len(self.dataset) if self.sampler is None else len(self.sampler)
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    # ---- iteration ------------------------------------------------------------
    def _start_epoch(self):
        n = len(self.dataset)
        if self.sampler is not None:
            self._epoch_rng_state = None
            self._order = np.fromiter(iter(self.sampler), dtype=np.int64)
        elif self.shuffle:
            self._epoch_rng_state = copy.deepcopy(self.generator.bit_generator.state)
            self._order = self.generator.permutation(n)
        else:
            self._epoch_rng_state = None
            self._order = np.arange(n)
        self._position = 0

    def _finish_epoch(self):
        self.epoch += 1
        self._position = 0
        self._order = None
        self._epoch_rng_state = None

    def __iter__(self):
        if self._order is not None and self._position >= len(self):
            self._finish_epoch()  # state saved right after an epoch's last batch
        if self._order is None:
            self._start_epoch()
        return self._iterate()

    def _iterate(self):
        arrays = getattr(self.dataset, "arrays", None)
        wrap = self._to_tensor
        bs = self.batch_size
        n_batches = len(self)
        while self._position < n_batches:
            start = self._position * bs
            idx = self._order[start:start + bs]
            # Count the batch before handing it out, so that a state_dict() taken
            # while the caller works on it resumes *after* it.
            self._position += 1
            if arrays is not None:
                # Fast path: one gather per array (copies, so no aliasing).
                yield tuple(wrap(a[idx]) for a in arrays)
            else:
                batch = _default_collate([self.dataset[int(i)] for i in idx])
                yield tuple(wrap(b) for b in batch) if isinstance(batch, tuple) else wrap(batch)
        self._finish_epoch()

    # ---- checkpointing --------------------------------------------------------
    def state_dict(self):
        """JSON-friendly state: epoch, position in the epoch and generator state(s)."""
        return {
            "epoch": self.epoch,
            "position": self._position,
            "in_epoch": self._order is not None,
            "epoch_rng_state": copy.deepcopy(self._epoch_rng_state),
            "rng_state": copy.deepcopy(self.generator.bit_generator.state),
            # Recorded to catch resuming with a different dataset or batching.
            "dataset_len": len(self.dataset),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "sampler": (self.sampler.state_dict() if hasattr(self.sampler, "state_dict")
                        else None),
        }

    def load_state_dict(self, state):
        for key in ("dataset_len", "batch_size", "shuffle", "drop_last"):
            mine = len(self.dataset) if key == "dataset_len" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"DataLoader.load_state_dict: saved {key}={state[key]!r} "
                                 f"but this loader has {key}={mine!r}")
        self.epoch = int(state["epoch"])
        if state.get("sampler") is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        if state["in_epoch"]:
            if self.shuffle:
                # Redraw this epoch's permutation from the state it was drawn from.
                self.generator.bit_generator.state = copy.deepcopy(state["epoch_rng_state"])
            self._start_epoch()
            self._position = int(state["position"])
        else:
            self._order, self._position, self._epoch_rng_state = None, 0, None
        # The generator may have been used for other things since the epoch started.
        self.generator.bit_generator.state = copy.deepcopy(state["rng_state"])
