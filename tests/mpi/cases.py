"""Tiny float64 models and data shared by the MPI driver scripts and their tests."""
import numpy as np

from minidl import nn
from minidl.random import manual_seed

CASES = {
    # name: global batch, epochs, whether BN layers are synchronized
    "mlp": {"batch": 8, "epochs": 2, "sync_bn": False, "n": 24},
    "mlp_bn": {"batch": 8, "epochs": 2, "sync_bn": True, "n": 24},
    "cnn_bn": {"batch": 6, "epochs": 1, "sync_bn": True, "n": 18, "bucket_mb": 0.001},
    "mlp_bn_local": {"batch": 8, "epochs": 1, "sync_bn": False, "n": 24},
}


def build(name):
    manual_seed(0)
    if name.startswith("cnn"):
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.Flatten(), nn.Linear(3 * 2 * 2, 3))
    else:
        bn = "bn" in name
        layers = [nn.Linear(5, 7)]
        if bn:
            layers.append(nn.BatchNorm1d(7))
        layers += [nn.Sigmoid(), nn.Linear(7, 3)]
        model = nn.Sequential(*layers)
    return model.double()


def data(name):
    rng = np.random.default_rng(1)
    n = CASES[name]["n"]
    shape = (n, 2, 5, 5) if name.startswith("cnn") else (n, 5)
    return rng.normal(size=shape) * 2 + 0.5, rng.integers(0, 3, n)
