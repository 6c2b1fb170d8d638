"""The `minidl` command, as a user (and CI) runs it."""
import pytest
import subprocess
import sys


@pytest.mark.slow
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
    assert "--input must be C,H,W" in capsys.readouterr().err


def test_profile_breaks_a_step_down_per_op_and_pass(tmp_path, capsys):
    import json

    from minidl.cli import main
    out = tmp_path / "p.json"
    assert main(["profile", "cnn", "--batch-size", "4", "--steps", "2", "--peak-gflops", "100",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "one training step" in text and "% peak" in text
    report = json.loads(out.read_text())
    rows = {(r["op"], r["pass"]): r for r in report["rows"]}
    assert rows[("Conv2d 3x3", "forward")]["calls"] == 3      # the model's three convs
    assert rows[("Conv2d 3x3", "backward")]["calls"] == 3
    # each BatchNorm2d is followed by a ReLU: nn.Sequential runs them as one fused op
    assert rows[("BatchNorm2d+ReLU", "forward")]["calls"] == 3
    assert rows[("BatchNormReLU", "backward")]["calls"] == 3
    assert ("ReLU", "forward") not in rows
    assert rows[("Conv2d 3x3", "forward")]["gflops"] > 0
    assert ("optimizer step", "update") in rows
    total = sum(r["share"] for r in report["rows"])
    assert 0.9 < total < 1.05                 # the rows account for the whole step
    assert main(["profile", "cnn", "--steps", "0"]) == 2
