"""What a model costs: parameters, multiply-adds and activation memory per example.

Counted by running one example through the model with a forward hook on every leaf
module, so the figures follow the real layer shapes (any input size, any width)."""
from __future__ import annotations

import numpy as np

from .. import nn
from ..autograd import no_grad


def model_summary(model: nn.Module, input_shape: tuple, dtype=np.float32) -> dict:
    """{"parameters", "macs_per_example", "activation_bytes_per_example", "layers"}.

    `input_shape` excludes the batch: (C, H, W) for an image model. Multiply-adds count
    convolutions and linear layers (C_in/groups * R * S per output element, in_features
    per output); activation memory is the sum of every leaf module's output, the
    tensors a training step keeps for its backward pass, in `dtype`."""
    leaves = [m for m in model.modules() if not m._modules]
    rows = []

    def hook(module, inputs, output):
        out = output.data
        per_example = out.size // out.shape[0]
        macs = 0
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            macs = per_example * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            macs = per_example * module.in_features
        rows.append({"layer": type(module).__name__, "output": tuple(out.shape[1:]),
                     "macs": int(macs), "activation_elements": int(per_example)})

    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        from ..tensor import zeros
        with no_grad():
            model(zeros((1,) + tuple(input_shape), dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    itemsize = np.dtype(dtype).itemsize
    return {
        "parameters": int(sum(p.data.size for p in model.parameters())),
        "macs_per_example": int(sum(r["macs"] for r in rows)),
        "activation_bytes_per_example": int(sum(r["activation_elements"] for r in rows)
                                            * itemsize),
        "layers": rows,
    }


def format_summary(name: str, s: dict, input_shape: tuple) -> str:
    return (f"{name} on inputs {tuple(input_shape)}: {s['parameters']:,} parameters, "
            f"{s['macs_per_example'] / 1e6:.1f}M multiply-adds and "
            f"{s['activation_bytes_per_example'] / 2**20:.2f} MiB of activations per example "
            f"({len(s['layers'])} layers)")
