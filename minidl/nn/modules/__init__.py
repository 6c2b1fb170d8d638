"""The layers. Each file holds one family; all are re-exported by minidl.nn."""
from .activation import Flatten, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .batchnorm import BatchNorm1d, BatchNorm2d
from .container import Concat, ModuleList, Sequential
from .conv import Conv2d
from .dropout import Dropout
from .linear import Identity, Linear
from .loss import CrossEntropyLoss, MSELoss
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Concat", "Conv2d",
    "CrossEntropyLoss", "Dropout", "Flatten", "MSELoss", "Identity", "Linear", "LogSoftmax",
    "MaxPool2d", "ModuleList", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
]
