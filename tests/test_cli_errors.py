"""Every user mistake at the `minidl` command line: ONE line on stderr, no traceback,
exit status 2 for bad arguments and 1 for anything else; --debug / MINIDL_DEBUG=1 show
the traceback. Each case runs the real command in a subprocess, offline (the mirrors
point at a closed local port)."""
import gzip
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

# Runs `minidl` with the download mirrors pointed at a closed local port and the
# system dataset folders switched off, so that "missing data" is missing.
LAUNCH = """
import sys
import minidl.data.datasets as d
d.MIRRORS = {{"mnist": ["{dead}"], "fashion-mnist": ["{dead}"]}}
d.SYSTEM_DIRS = {{}}
from minidl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture
def dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def cli(tmp_path, dead_url):
    home = tmp_path / "home"
    home.mkdir()

    def run(*args, env=None):
        e = {k: v for k, v in os.environ.items() if k not in ("MINIDL_DATA", "MINIDL_DEBUG")}
        e.update(HOME=str(home), **(env or {}))
        proc = subprocess.run([sys.executable, "-c", LAUNCH.format(dead=dead_url), *args],
                              capture_output=True, text=True, timeout=300, env=e,
                              cwd=tmp_path)
        return proc.returncode, proc.stdout, proc.stderr
    return run


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("args,message", [
    (["train", "--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["train", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["figure1", "--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["train", "--lr", "nan"], "--lr must be >= 0, got nan"),
    (["train", "--unit", "100"], "--unit must be < 100"),
    (["train", "--resume", "--overwrite"], "--resume and --overwrite contradict"),
    (["ablation", "--lr-grid", "0.1,abc"], "--lr-grid needs positive rates"),
    (["ablation", "--variants", "bogus"], "unknown variant"),
    (["info", "--model", "mlp", "--input", "3,x"], "--input must be C,H,W"),
    (["bench", "--threads", "0"], "--threads must be >= 1"),
    (["bench", "--json", "no/such/folder/r.json"], "does not exist"),
    (["profile", "cnn", "--steps", "0"], "--steps and --batch-size must be >= 1"),
    (["nope"], "invalid choice"),
])
def test_argument_errors_are_one_line_and_exit_2(cli, tmp_path, args, message):
    rc, out, err = cli(*args, "--out", str(tmp_path / "o")) if args[0] in (
        "train", "figure1", "ablation") else cli(*args)
    assert rc == 2, err
    line = one_line(err)
    assert message in line and line.startswith("minidl")
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_bad_out_path_is_one_line(cli, tmp_path):
    (tmp_path / "a-file").write_text("x")
    rc, _, err = cli("train", "--out", str(tmp_path / "a-file"), "--no-progress")
    assert rc == 2 and "is a file, not a folder" in one_line(err)


def test_missing_data_is_one_line_exit_1_and_leaves_no_folder(cli, tmp_path):
    root = tmp_path / "data"
    rc, _, err = cli("train", "--dataset", "mnist", "--data-root", str(root), "--out",
                     str(tmp_path / "o"), "--no-progress", "--steps", "2")
    assert rc == 1
    line = one_line(err)
    assert line.startswith("minidl train: error: MNIST training files not found")
    assert "Download failed" in line and "connection refused" in line.lower()
    assert not root.exists()  # the failed download left no empty dataset folder


@pytest.mark.slow
def test_debug_flag_and_env_show_the_traceback(cli, tmp_path):
    args = ("train", "--dataset", "mnist", "--data-root", str(tmp_path / "data"), "--out",
            str(tmp_path / "o"), "--no-progress", "--steps", "2", "--overwrite")
    for extra, env in ((("--debug",), None), ((), {"MINIDL_DEBUG": "1"})):
        rc, _, err = cli(*args, *extra, env=env)
        assert rc == 1
        assert "Traceback" in err and "DatasetNotFoundError" in err
    rc, _, err = cli("train", "--steps", "0", "--debug")
    assert rc == 2 and "Traceback" in err and "UsageError" in err


def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


@pytest.mark.slow
def test_corrupt_data_is_one_line_naming_the_file(cli, tmp_path):
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    images = gzip.compress(_idx(np.zeros((5, 28, 28))))
    (root / "train-images-idx3-ubyte.gz").write_bytes(images[:-9])  # cut short
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5)))
    rc, _, err = cli("train", "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                     "--out", str(tmp_path / "o"), "--no-progress")
    assert rc == 1
    line = one_line(err)
    assert "train-images-idx3-ubyte.gz" in line and "expected shape (60000, 28, 28)" in line
    # a genuine header over a damaged body
    (root / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(_idx(np.zeros((60000, 28, 28))))[:-9])
    rc, _, err = cli("train", "--dataset", "mnist", "--data-root", str(tmp_path / "data"),
                     "--out", str(tmp_path / "o"), "--no-progress", "--overwrite")
    assert rc == 1
    line = one_line(err)
    assert "train-images-idx3-ubyte.gz" in line and "corrupt gzip" in line


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_is_one_line(cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really a zip")
    rc, _, err = cli("train", "--dataset", "fashion-mnist", "--data-root",
                     "/usr/share/datasets/fashion-mnist", "--out", str(out), "--no-progress",
                     "--resume", "--steps", "2")
    if "not found" in err:
        pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    assert rc == 1
    line = one_line(err)
    assert "checkpoint.npz" in line and "not a minidl checkpoint" in line
    assert (out / "checkpoint.npz").read_bytes() == b"PK\x03\x04 not really a zip"
