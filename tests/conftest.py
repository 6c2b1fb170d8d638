import os

# Before anything (torch included) loads an OpenMP runtime: see kernels/__init__.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("minidl", deadline=None, max_examples=15, derandomize=True,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minidl"))

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
