"""The MNIST network of the Batch Normalization paper (section 4.1): 784-100-100-100-10,
a sigmoid after each hidden layer, optionally with BN on each hidden layer's linear
output (before the sigmoid)."""
from __future__ import annotations

from .. import nn

_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(in_features: int = 784, hidden=(100, 100, 100), num_classes: int = 10,
        bn: bool = False, activation: str = "sigmoid", init_std: float | None = 0.01,
        bn_momentum: float = 0.1, bn_eps: float = 1e-5) -> nn.Sequential:
    """Flatten -> [Linear -> (BatchNorm1d) -> activation] * len(hidden) -> Linear.

    With BN the hidden Linear layers have no bias: BN's beta takes its role (the paper,
    section 3.2). `init_std`: weights ~ N(0, init_std^2) and biases 0, the protocol of
    published reproductions; None keeps PyTorch's default layer initialization."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"mlp: activation must be one of {sorted(_ACTIVATIONS)}, got "
                         f"{activation!r}")
    layers = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm1d(h, eps=bn_eps, momentum=bn_momentum))
        layers.append(_ACTIVATIONS[activation]())
        width = h
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    if init_std is not None:
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, init_std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
