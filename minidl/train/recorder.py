"""Watch the distribution of a layer's activations during training (Figure 1(b, c) of
the paper: the 15th, 50th and 85th percentiles of a sigmoid's input over time).
`minidl.viz.ActivationStats` puts one recorder on every layer of a model."""
from __future__ import annotations

import numpy as np


class ActivationRecorder:
    """Collects the input (or, with `source="output"`, the output) of `module` while
    `recording`, and summarizes it as percentiles with `snapshot(step)`.

    `unit`: which unit of the feature axis 1 to watch; None watches every value of the
    tensor. `moments=True` adds the mean and (population) standard deviation to each
    snapshot. Works on any module through a forward hook; records nothing unless
    switched on, so the training steps pay nothing.

        rec = ActivationRecorder(model[2], unit=None, source="output", moments=True)
        with rec:
            model(x)
        rec.snapshot(step=0)  # {"step": 0, "p15": .., "p50": .., "p85": .., "mean": .., "std": ..}
    """

    def __init__(self, module, unit: int | None = 0, percentiles=(15, 50, 85), name: str = "",
                 source: str = "input", moments: bool = False):
        if source not in ("input", "output"):
            raise ValueError(f"ActivationRecorder: source must be 'input' or 'output', got "
                             f"{source!r}")
        self.module, self.unit, self.percentiles = module, unit, tuple(percentiles)
        self.name = name or type(module).__name__
        self.source, self.moments = source, moments
        self.recording = False
        self._chunks = []
        self.history = []  # one dict per snapshot: {"step": s, "p15": ..., ...}
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.recording:
            x = (inputs[0] if self.source == "input" else output).detach().numpy()
            if self.unit is None:  # (.numpy(): a host copy when it is on the GPU)
                self._chunks.append(np.array(x, dtype=np.float64).ravel())
                return
            if x.ndim < 2 or self.unit >= x.shape[1]:
                raise IndexError(f"ActivationRecorder: unit {self.unit} is out of range for "
                                 f"{self.name} {self.source} of shape {x.shape}")
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
        if self.moments:
            row.update(mean=float(values.mean()), std=float(values.std()))
        self.history.append(row)
        self._chunks = []
        return row

    def remove(self) -> None:
        self._handle.remove()
