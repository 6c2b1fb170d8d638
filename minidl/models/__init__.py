"""Ready-made networks of the paper's experiments."""
from .inception import bn_inception_lite
from .mlp import mlp
from .summary import model_summary

__all__ = ["bn_inception_lite", "mlp", "model_summary"]
