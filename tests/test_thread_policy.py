"""The BLAS thread policy (kernels/__init__.py): OpenBLAS's idle workers must not spin
beside Numba's, and `minidl info` says when the policy could not be applied."""
import os
import subprocess
import sys


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


def test_numpy_imported_first_is_reported_and_a_user_setting_wins():
    code = "import numpy, minidl.info as i; print(i.blas_thread_policy())"
    assert "NumPy was imported before minidl" in _run(code)
    code = "import numpy, os, minidl.info as i; print(i.blas_thread_policy())"
    assert "OPENBLAS_THREAD_TIMEOUT=10" in _run(code, OPENBLAS_THREAD_TIMEOUT="10")
