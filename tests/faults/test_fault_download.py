"""Fault injection on downloads and data files: SIGKILL in the middle of a download,
corrupted and truncated data files. No partial file ever sits under a final name, the
next start removes the dead download's temp file, and a damaged file is an error that
names it, never a silent wrong dataset."""
import gzip
import http.server
import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from minidl.data import DataFormatError, read_idx
from minidl.data import datasets as ds

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
HAVE_FASHION = os.path.isfile(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"))


class _Stalling(http.server.BaseHTTPRequestHandler):
    """/stall/NAME: the first 64 KiB of a plausible body, then nothing (the connection
    stays open); /good/NAME: the Debian Fashion-MNIST file, whole."""

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if self.path.startswith("/good/") and HAVE_FASHION:
            data = open(os.path.join(FASHION_DIR, name), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(ds.FILES["fashion-mnist"][name].size))
        self.end_headers()
        try:
            self.wfile.write(b"\x1f\x8b" + bytes(64 * 1024))
            self.wfile.flush()
            while not self.server.stopping:
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalling)
    httpd.stopping = False
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.stopping = True
    httpd.shutdown()
    httpd.server_close()


CHILD = """
import sys
import minidl.data.datasets as d
d.SYSTEM_DIRS = {{}}
d.fashion_mnist(root={root!r}, train=False, mirrors=[{url!r}])
"""


def test_sigkill_in_the_middle_of_a_download(tmp_path, server, monkeypatch):
    root = tmp_path / "data"
    directory = root / "fashion-mnist"
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("MINIDL_DATA", None)
    proc = subprocess.Popen([sys.executable, "-c",
                             CHILD.format(root=str(root), url=server + "/stall/")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    parts = []
    while time.time() < deadline and proc.poll() is None:
        parts = list(directory.glob(".*.part")) if directory.is_dir() else []
        if parts:
            time.sleep(0.3)  # the client is now blocked reading the stalled body
            break
        time.sleep(0.01)
    assert parts, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no .part"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    # nothing under a final name; the killed process's temp file is left behind
    assert sorted(p.name for p in directory.iterdir()) == [parts[0].name]
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    monkeypatch.setattr(ds, "SYSTEM_DIRS", {})
    assert ds.find_files("fashion-mnist", train=False, root=root) is None

    # The next start removes it (its lock died with the process) before downloading.
    old = time.time() - 60
    os.utime(parts[0], (old, old))  # past the few seconds' grace of a just-created file
    if HAVE_FASHION:
        data = ds.fashion_mnist(root=root, train=False, mirrors=[server + "/good/"])
        assert len(data) == 10000
        assert sorted(p.name for p in directory.iterdir()) == [
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    else:
        assert ds.remove_stale_parts(str(directory)) == [str(parts[0])]
        assert list(directory.iterdir()) == []


def _idx(arr):
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes() + arr.tobytes()


def test_truncated_and_corrupted_idx_files_never_read_wrong(tmp_path):
    rng = random.Random(3)
    arr = np.random.default_rng(3).integers(0, 256, (50, 7, 7), dtype=np.uint8)
    raw = _idx(arr)
    packed = gzip.compress(raw)
    path = tmp_path / "x"
    cases = []
    for data in (raw, packed):
        cases += [data[:rng.randrange(len(data))] for _ in range(10)]
        for _ in range(20):
            i = rng.randrange(len(data))
            cases.append(data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:])
    refused = 0
    for case in cases:
        path.write_bytes(case)
        try:
            got = read_idx(path, expected_shape=arr.shape)
        except DataFormatError as e:
            assert str(path) in str(e)
            refused += 1
            continue
        if case[:2] == b"\x1f\x8b":
            np.testing.assert_array_equal(got, arr)  # gzip's CRC: only harmless flips pass
        else:
            # raw IDX has no checksum: a flipped payload byte reads; the SHA-256 check
            # of known files (verify_file) is what catches it
            assert got.shape == arr.shape
    assert refused >= len(cases) // 2


def test_a_flipped_byte_in_a_known_raw_file_is_caught_by_its_hash(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data = bytearray(_idx(np.arange(10000) % 10))
    data[5000] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ds.ChecksumError, match="t10k-labels-idx1-ubyte: SHA-256"):
        ds.verify_file("fashion-mnist", str(path))
