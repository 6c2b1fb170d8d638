"""Algorithm 2 of the paper: population statistics for inference.

Moving averages (what `BatchNorm.running_*` hold) lag behind fast-moving weights. The
paper's inference statistics are E[x] = mean of the batch means and Var[x] =
m/(m-1) * mean of the batch variances, over training batches with the weights frozen.
`population_statistics` computes them and installs them in the running buffers for the
duration of a `with` block, then puts the moving averages back."""
from __future__ import annotations

import contextlib

import numpy as np

from ..autograd import no_grad
from ..nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def population_statistics(model, batches):
    """Inside the block every BN layer of `model` (in eval mode) normalizes with
    statistics averaged over `batches`, an iterable of input tensors."""
    bns = [m for m in model.modules()
           if isinstance(m, _BatchNorm) and m.running_mean is not None]
    sums = {id(m): [0.0, 0.0, 0] for m in bns}

    def hook(module, inputs, output):
        x = inputs[0].data
        axes = (0,) if x.ndim == 2 else (0, 2, 3)
        m = x.size // x.shape[1]
        acc = sums[id(module)]
        acc[0] = acc[0] + x.mean(axis=axes, dtype=np.float64)
        acc[1] = acc[1] + x.var(axis=axes, dtype=np.float64) * (m / (m - 1))
        acc[2] += 1

    saved = [(m.running_mean.data.copy(), m.running_var.data.copy(),
              m.num_batches_tracked.data.copy()) for m in bns]
    was_training = model.training
    handles = [m.register_forward_hook(hook) for m in bns]
    try:
        # Train mode, so each layer sees its inputs normalized as during training, the
        # distribution the batch statistics were learned on; weights are frozen (no_grad,
        # no optimizer step).
        model.train()
        with no_grad():
            for x in batches:
                model(x)
        for h in handles:
            h.remove()
        handles = []
        for m in bns:
            mean_sum, var_sum, count = sums[id(m)]
            if count == 0:
                raise ValueError("population_statistics: no batch was given")
            m.running_mean.data[...] = mean_sum / count
            m.running_var.data[...] = var_sum / count
        model.eval()
        yield model
    finally:
        for h in handles:
            h.remove()
        for m, (rm, rv, nbt) in zip(bns, saved):
            m.running_mean.data[...] = rm
            m.running_var.data[...] = rv
            m.num_batches_tracked.data[...] = nbt
        model.train(was_training)
