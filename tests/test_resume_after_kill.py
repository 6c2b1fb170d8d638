"""Training never loses work: a run killed with SIGKILL (no chance to clean up) resumes
from its last atomic checkpoint and ends with exactly the parameters of a run that was
never interrupted."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minidl as md

pytestmark = pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                                reason="apt-get install -y dataset-fashion-mnist")

STEPS = 3000  # ~2-3 s of training at ~1,300 steps/s: the kill lands mid-run (600 steps, a
#               fast host's half second, once let the poll below first see the last checkpoint)
ARGS = ["-m", "minidl.cli", "train", "--bn", "--dataset", "fashion-mnist", "--steps", str(STEPS),
        "--eval-every", "1000", "--checkpoint-every", "50", "--threads", "1", "--no-progress"]


def run(out, *extra, wait=True):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")  # one thread: bit-exact arithmetic
    proc = subprocess.Popen([sys.executable, *ARGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if wait:
        assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    return proc


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    run(tmp_path / "full")

    killed = tmp_path / "killed"
    proc = run(killed, wait=False)
    ckpt = killed / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and md.load(ckpt)["step"] >= 100:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast)")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    interrupted_at = md.load(ckpt)["step"]
    assert 100 <= interrupted_at < STEPS

    run(killed, "--resume")
    a, b = md.load(tmp_path / "full" / "checkpoint.npz"), md.load(ckpt)
    assert a["step"] == b["step"] == STEPS
    for key, value in a["model"].items():
        np.testing.assert_array_equal(value, b["model"][key], err_msg=key)
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "mnist_bn.py")
    out = subprocess.run([sys.executable, script, "--dataset", "fashion-mnist", "--steps", "200",
                          "--eval-every", "100"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("step")]
    assert len(lines) == 4  # two evaluations for each network
    assert "with BN" in out.stdout and "without BN" in out.stdout
