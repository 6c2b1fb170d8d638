"""minidl.nn: layers (Modules with Parameters), their functional forms and initializers,
with PyTorch's names: `import minidl.nn as nn; nn.Linear(784, 100)`."""
from . import functional, init
from .module import Module, RemovableHandle
from .modules import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d,
                      CrossEntropyLoss, Dropout, Flatten, Identity, Linear, LogSoftmax,
                      MaxPool2d, ModuleList, MSELoss, ReLU, Sequential, Sigmoid, Softmax, Tanh)
from .parameter import Parameter

__all__ = [
    "functional", "init", "Module", "RemovableHandle", "Parameter", "AdaptiveAvgPool2d",
    "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Concat", "Conv2d", "CrossEntropyLoss",
    "Dropout", "Flatten", "MSELoss", "Identity", "Linear", "LogSoftmax", "MaxPool2d",
    "ModuleList", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
]
