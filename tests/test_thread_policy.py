"""The BLAS thread policy (kernels/__init__.py): OpenBLAS's idle workers must not spin
beside Numba's, and `minidl info` says when the policy could not be applied."""
import os
import subprocess
import sys

import pytest


def _run(code, **env):
    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_minidl_first_applies_the_policy():
    code = ("import minidl, os, minidl.info as i; "
            "print(os.environ['OPENBLAS_THREAD_TIMEOUT']); print(i.blas_thread_policy())")
    value, policy = _run(code).splitlines()
    assert value == "18" and "2^18 cycles" in policy


def test_numpy_imported_first_gets_the_policy_applied_late_and_a_user_setting_wins():
    """NumPy (or torch) imported first: OpenBLAS already read its environment, so minidl
    re-reads it and restarts the workers; each loaded OpenBLAS then reports the new
    timeout, BLAS still runs on its threads and gives right answers."""
    code = """
import numpy as np
import minidl.kernels as k, minidl.info as i
import ctypes
libs = k._openblas_libraries()
assert libs, "no OpenBLAS found among the loaded libraries"
for path in libs:
    f = ctypes.CDLL(path).openblas_thread_timeout
    f.restype = ctypes.c_int
    assert f() == 18, (path, f())
a = np.random.default_rng(0).random((400, 300))
assert np.allclose(a @ a.T, np.einsum("ik,jk->ij", a, a))
print(k.BLAS_THREAD_TIMEOUT_LATE); print(i.blas_thread_policy())
"""
    late, policy = _run(code).splitlines()
    assert late == "True" and "2^18 cycles" in policy and "applied after NumPy" in policy
    code = "import numpy, os, minidl.kernels as k, minidl.info as i; " \
           "print(k.BLAS_THREAD_TIMEOUT_LATE); print(i.blas_thread_policy())"
    late, policy = _run(code, OPENBLAS_THREAD_TIMEOUT="10").splitlines()
    assert late == "False" and "OPENBLAS_THREAD_TIMEOUT=10)" in policy


def test_every_loaded_openblas_follows_the_policy_and_the_bench_thread_count():
    """SciPy's wheels bring an OpenBLAS of their own, which the 1x1 convolution with a
    bias calls (kernels/cpu/conv2d_nhwc.py): loaded after minidl, it reads the timeout
    too, and the benchmark's thread count reaches it as well as NumPy's."""
    code = """
import ctypes
import minidl, minidl.kernels as k
from minidl.kernels.cpu import conv2d_nhwc  # noqa: F401  (loads SciPy's BLAS)
from minidl.benchmarks import harness
harness.set_threads(1)
for path in k._openblas_libraries():
    lib = ctypes.CDLL(path)
    lib.openblas_thread_timeout.restype = ctypes.c_int
    n = [getattr(lib, s) for s in ("scipy_openblas_get_num_threads64_",
         "scipy_openblas_get_num_threads", "openblas_get_num_threads") if hasattr(lib, s)][0]
    print(path, lib.openblas_thread_timeout(), n())
"""
    rows = [line.rsplit(" ", 2) for line in _run(code).splitlines()]
    assert rows and all(t == "18" and n == "1" for _, t, n in rows), rows


def test_where_openblas_cannot_be_told_later_info_says_so(monkeypatch):
    import minidl.info as info
    from minidl import kernels
    monkeypatch.setattr(kernels, "BLAS_THREAD_TIMEOUT_APPLIED", False)
    assert "NumPy was imported before minidl" in info.blas_thread_policy()


def test_torch_imported_first_is_warned_about_once_with_the_fix():
    """torch's OpenMP runtime read its wait policy before minidl could set it: minidl
    cannot mend that, so it warns (and `minidl info` says so); a policy set in the
    environment is the user's fix and silences it."""
    pytest.importorskip("torch")
    code = ("import warnings; warnings.simplefilter('always'); import torch, minidl, "
            "minidl.info as i; print(i.openmp_wait_policy())")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT",
                                                              "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("torch was imported before minidl") == 1, out.stderr
    assert "too late" in out.stdout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, OMP_WAIT_POLICY="PASSIVE"), timeout=120)
    assert "torch was imported" not in out.stderr and "too late" not in out.stdout
    out = subprocess.run([sys.executable, "-c", code.replace("import torch, minidl",
                                                             "import minidl, torch")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert "torch was imported" not in out.stderr and "too late" not in out.stdout


@pytest.mark.parametrize("env_in, spin, policy", [
    ({}, "10000", "PASSIVE"),  # minidl's own: PASSIVE after a bounded spin
    ({"OMP_WAIT_POLICY": "ACTIVE"}, None, "ACTIVE"),  # the user's policy, no spin count
    ({"GOMP_SPINCOUNT": "500"}, "500", "PASSIVE"),  # the user's spin count kept
])
def test_openmp_wait_policy_is_a_bounded_spin_unless_the_user_set_one(env_in, spin, policy):
    code = ("import os, minidl, minidl.info as i; print(os.environ.get('GOMP_SPINCOUNT'), "
            "os.environ['OMP_WAIT_POLICY']); print(i.openmp_wait_policy())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY",
                                                              "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, **env_in), timeout=120)
    assert out.returncode == 0, out.stderr
    values, shown = out.stdout.splitlines()
    assert values == f"{spin} {policy}"
    assert shown == f"OMP_WAIT_POLICY={policy}" + (f", GOMP_SPINCOUNT={spin}" if spin else "")
