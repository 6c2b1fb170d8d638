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


def test_info_model_reports_parameters_macs_and_memory(capsys):
    from minidl.cli import main
    assert main(["info", "--model", "bn_inception_lite"]) == 0
    out = capsys.readouterr().out
    assert "202,154 parameters" in out and "15.4M multiply-adds" in out and "MiB" in out
    assert main(["info", "--model", "bn_inception_lite", "--input", "3,32,32"]) == 0
    assert "(3, 32, 32)" in capsys.readouterr().out
    assert main(["info", "--model", "bn_inception_lite", "--input", "3,x"]) == 2
    assert "--input must be C,H,W" in capsys.readouterr().out
