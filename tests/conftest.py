import os

# Before anything (torch included) loads an OpenMP runtime: see kernels/__init__.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The CUDA backend's tests run on numba-cuda's simulator unless told otherwise (on a GPU:
# NUMBA_ENABLE_CUDASIM=0, see benchmarks/cuda_check.sh). numba.cuda reads the variable
# when it is first imported, which any test may do (`minidl info` asks for CUDA's status),
# so it is set here, before every test module.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("minidl", deadline=None, max_examples=15, derandomize=True,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "minidl"))

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Dataset lookup with no $MINIDL_DATA, an empty home, no system dataset dirs and no
    proxies (the data and fault tests)."""
    from minidl.data import datasets as ds
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    monkeypatch.setattr(ds, "SYSTEM_DIRS", {})
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
