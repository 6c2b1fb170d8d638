"""Ready-made networks of the paper's experiments."""
from .mlp import mlp

__all__ = ["mlp"]
