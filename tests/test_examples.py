"""Every example runs, on a few steps, as a user would start it (a subprocess)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FASHION = "/usr/share/datasets/fashion-mnist"


def _fashion_available():
    return os.path.isdir(FASHION) or bool(os.environ.get("MINIDL_DATA"))


needs_fashion = pytest.mark.skipif(not _fashion_available(),
                                   reason=f"Fashion-MNIST not found in {FASHION} or $MINIDL_DATA "
                                          f"(apt-get install dataset-fashion-mnist)")


def run(script, *args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{script} {args} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_every_example_is_short():
    for path in EXAMPLES.glob("*.py"):
        assert len(path.read_text().splitlines()) < 100, path


def test_custom_op():
    out = run("custom_op.py", "--quick")
    assert "gradcheck(silu): ok" in out and "mse:" in out


def test_custom_kernel():
    out = run("custom_kernel.py", "--quick")
    assert "numba kernels == numpy reference: ok" in out and "gradcheck(softplus): ok" in out


@pytest.mark.slow
@needs_fashion
def test_fashion_cnn_resume_is_exact(tmp_path):
    straight = run("fashion_cnn.py", "--quick", "--steps", 6, "--checkpoint-every", 3,
                   "--out", tmp_path / "a")
    run("fashion_cnn.py", "--quick", "--steps", 3, "--checkpoint-every", 3, "--out", tmp_path / "b")
    resumed = run("fashion_cnn.py", "--quick", "--steps", 6, "--checkpoint-every", 3,
                  "--out", tmp_path / "b", "--resume")
    assert "resumed from step 3" in resumed
    last = [line for line in straight.splitlines() if line.startswith("step 6:")]
    assert last and last[0] in resumed  # same loss and accuracy, to the printed digits
    assert (tmp_path / "b" / "checkpoint.npz").exists()


@needs_fashion
def test_fashion_cnn_resume_without_checkpoint_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(EXAMPLES / "fashion_cnn.py"), "--resume",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no checkpoint at" in r.stderr


@pytest.mark.slow
@needs_fashion
def test_visualize(tmp_path):
    out = run("visualize.py", "--quick", "--bn", "--steps", 6, "--every", 2, "--out", tmp_path)
    dot = (tmp_path / "graph.dot").read_text()
    assert dot.startswith("digraph") and "BatchNorm (60, 100)" in dot and "0.weight" not in dot
    assert "1.weight (100, 784)" in dot  # parameters carry their state_dict names
    assert "layer  2 BatchNorm1d step 0:" in out and "step 4:" in out
    try:
        import matplotlib  # noqa: F401  (only to know whether the plot was expected)
        assert (tmp_path / "activations.png").stat().st_size > 1000
    except ImportError:
        assert "needs matplotlib" in out


@pytest.mark.slow
@needs_fashion
def test_mnist_bn_example_still_runs():
    out = run("mnist_bn.py", "--dataset", "fashion-mnist", "--steps", 4, "--eval-every", 2)
    assert out.count("step      4") == 2  # one line for each network
