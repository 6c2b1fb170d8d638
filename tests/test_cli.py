"""The `minidl` command, as a user (and CI) runs it."""
import subprocess
import sys


def test_python_m_minidl_info():
    out = subprocess.run([sys.executable, "-m", "minidl", "info"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for key in ("numba threading layer", "numba threads", "numpy BLAS", "cuda", "malloc tuning"):
        assert key in out.stdout


def test_unknown_subcommand_fails_cleanly():
    out = subprocess.run([sys.executable, "-m", "minidl", "nope"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice" in out.stderr
