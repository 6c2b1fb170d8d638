"""Watch the distribution of a layer's input during training (Figure 1(b, c) of the
paper: the 15th, 50th and 85th percentiles of a sigmoid's input over time)."""
from __future__ import annotations

import numpy as np


class ActivationRecorder:
    """Collects the input of `module` (unit `unit` of its feature axis 1) while
    `recording`, and summarizes it as percentiles with `snapshot(step)`.

    Works on any module through a forward hook; records nothing unless switched on, so
    the training steps pay nothing."""

    def __init__(self, module, unit: int = 0, percentiles=(15, 50, 85), name: str = ""):
        self.module, self.unit, self.percentiles = module, unit, tuple(percentiles)
        self.name = name or type(module).__name__
        self.recording = False
        self._chunks = []
        self.history = []  # one dict per snapshot: {"step": s, "p15": ..., ...}
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.recording:
            x = inputs[0].detach().numpy()  # a host copy when it is on the GPU
            if self.unit >= x.shape[1]:
                raise IndexError(f"ActivationRecorder: unit {self.unit} is out of range for "
                                 f"{self.name} input of shape {x.shape}")
            self._chunks.append(np.array(x[:, self.unit], dtype=np.float64).ravel())

    def __enter__(self):
        self.recording, self._chunks = True, []
        return self

    def __exit__(self, *exc):
        self.recording = False
        return False

    def snapshot(self, step: int) -> dict:
        """Percentiles of what was recorded since `__enter__`, appended to history."""
        if not self._chunks:
            raise RuntimeError(f"ActivationRecorder({self.name}): nothing was recorded; run "
                               f"the model inside `with recorder:` first")
        values = np.concatenate(self._chunks)
        row = {"step": int(step)}
        row.update({f"p{p:g}": float(v) for p, v in
                    zip(self.percentiles, np.percentile(values, self.percentiles))})
        self.history.append(row)
        self._chunks = []
        return row

    def remove(self) -> None:
        self._handle.remove()
