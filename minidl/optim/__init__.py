"""minidl.optim: optimizers and learning-rate schedulers with PyTorch's names and update
rules: `opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)`."""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "lr_scheduler"]
