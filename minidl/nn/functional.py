"""`minidl.nn.functional`: the stateless functions under PyTorch's names. They are the
ops of `minidl.functions`; this module only gathers them where PyTorch users look."""
from ..functions import (adaptive_avg_pool2d, avg_pool2d, batch_norm, batch_norm_relu, conv2d,
                         cross_entropy, dropout, flatten, linear, log_softmax, max_pool2d,
                         mse_loss, relu, sigmoid, softmax, tanh)
from ..functions._util import ShapeError


def pad(x, pad, value=0.0):
    """PyTorch's pad spelling: `pad` lists (before, after) pairs from the LAST dim back."""
    from ..functions import pad as np_pad
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ShapeError(f"pad: {pad} needs an even length of at most 2 * {x.ndim} values")
    widths = [(0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1])
    return np_pad(x, widths, value)


__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "batch_norm_relu", "conv2d",
           "cross_entropy", "dropout", "flatten", "linear", "log_softmax", "max_pool2d",
           "mse_loss", "pad", "relu", "sigmoid", "softmax", "tanh"]
