"""Training utilities: the loop, activation recording, BN population statistics."""
from .bn_stats import population_statistics
from .recorder import ActivationRecorder
from .trainer import DivergenceError, Trainer, accuracy_and_loss

__all__ = [
    "ActivationRecorder", "DivergenceError", "Trainer", "accuracy_and_loss",
    "population_statistics",
]
