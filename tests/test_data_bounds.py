"""Bounded inputs and verified data (issue 13 items 5, 6, 9): gzip IDX bombs are refused
with bounded memory, downloads stop at the expected size, files found on disk are checked
against the published SHA-256 once, and stale download temp files are cleaned up.
Offline: every server here is a local http.server on 127.0.0.1."""
import gzip
import http.server
import os
import socket
import threading
import time
import tracemalloc

import numpy as np
import pytest

from minidl.data import DataFormatError, DatasetNotFoundError, fashion_mnist, mnist, read_idx
from minidl.data import datasets as ds

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="apt-get install dataset-fashion-mnist")
BOMB_BYTES = 200 * 2 ** 20
PEAK_LIMIT = 8 * 2 ** 20  # far below the bomb's size




def idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + np.array(shape, dtype=">u4").tobytes()


def write_gzip(path, head: bytes, zeros: int):
    """`head` then `zeros` zero bytes, gzipped in chunks (never all in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(head)
        block = bytes(1 << 20)
        while zeros > 0:
            f.write(block[:min(zeros, len(block))])
            zeros -= len(block)
    return path


def peak_of(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_with_a_huge_header_is_refused_before_decompressing(isolated, tmp_path):
    shape = (BOMB_BYTES // 784, 28, 28)
    root = tmp_path / "root"
    bomb = write_gzip(root / "mnist" / "train-images-idx3-ubyte.gz", idx_header(shape),
                      BOMB_BYTES)
    (root / "mnist" / "train-labels-idx1-ubyte").write_bytes(
        idx_header((60000,)) + bytes(60000))
    assert os.path.getsize(bomb) < BOMB_BYTES // 100  # a real bomb: small on disk

    def load():
        with pytest.raises(DataFormatError, match=r"expected shape \(60000, 28, 28\)") as e:
            mnist(root=root, train=True, download=False)
        assert str(bomb) in str(e.value)
    assert peak_of(load) < PEAK_LIMIT


def test_gzip_bomb_behind_a_small_header_stops_at_the_payload(tmp_path):
    bomb = write_gzip(tmp_path / "labels.gz", idx_header((100,)) + bytes(100), BOMB_BYTES)

    def load():
        with pytest.raises(DataFormatError, match="trailing bytes.*more than"):
            read_idx(bomb)
    assert peak_of(load) < PEAK_LIMIT


def test_header_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_header((10 ** 6, 28, 28)) + bytes(1000)))
    with pytest.raises(DataFormatError, match="more than a gzip of .* bytes can hold"):
        read_idx(path)


def test_hash_check_of_a_gzip_is_bounded(isolated, tmp_path):
    bomb = write_gzip(tmp_path / "t10k-labels-idx1-ubyte.gz", b"", BOMB_BYTES)

    def check():
        with pytest.raises(ds.ChecksumError, match="does not match the published"):
            ds.verify_file("mnist", str(bomb))
    assert peak_of(check) < PEAK_LIMIT


# ---- files found on disk are verified once ---------------------------------------------

def test_a_valid_idx_with_wrong_contents_is_refused_naming_the_file(isolated, tmp_path):
    root = tmp_path / "root" / "mnist"
    root.mkdir(parents=True)
    (root / "t10k-images-idx3-ubyte").write_bytes(idx_header((10000, 28, 28))
                                                  + bytes(10000 * 784))
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_header((10000,)) + bytes(10000))
    with pytest.raises(ds.ChecksumError, match="t10k-images-idx3-ubyte: SHA-256 .* does "
                                               "not match the published MNIST"):
        mnist(root=tmp_path / "root", train=False, download=False)
    data = mnist(root=tmp_path / "root", train=False, download=False, verify=False)
    assert len(data) == 10000  # the user may opt out


@needs_fashion
def test_verification_is_cached_until_the_file_changes(isolated, tmp_path, monkeypatch):
    import shutil
    root = tmp_path / "fm"
    root.mkdir()
    for stem in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(os.path.join(FASHION_DIR, stem), root / stem)
    fashion_mnist(root=root, train=False, download=False)
    stamp = isolated / ".cache" / "minidl" / "verified.json"
    assert stamp.is_file() and str(root / "t10k-labels-idx1-ubyte.gz") in stamp.read_text()
    hashed = []
    real = ds._sha256_file
    monkeypatch.setattr(ds, "_sha256_file", lambda p: hashed.append(p) or real(p))
    fashion_mnist(root=root, train=False, download=False)
    assert hashed == []  # verified once, remembered
    labels = root / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[8:] = bytes(len(data) - 8)   # every label 0: a valid IDX, the wrong dataset
    labels.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(ds.ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        fashion_mnist(root=root, train=False, download=False)
    assert hashed == [str(labels)]  # only the changed file was hashed again


# ---- downloads: size cap, stale .part files ----------------------------------------------

class _Junk(http.server.BaseHTTPRequestHandler):
    """/length/...: 3 MB with a Content-Length; /stream/...: 3 MB without one."""
    sent = []

    def do_GET(self):
        size = 3 * 2 ** 20
        self.send_response(200)
        if self.path.startswith("/length/"):
            self.send_header("Content-Length", str(size))
        self.end_headers()
        sent = 0
        try:
            while sent < size:
                self.wfile.write(bytes(64 * 1024))
                sent += 64 * 1024
        except OSError:
            pass
        _Junk.sent.append(sent)

    def log_message(self, *args):
        pass


@pytest.fixture
def junk_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Junk)
    httpd.protocol_version = "HTTP/1.0"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("kind,message", [("length", "the server sends 3145728 bytes"),
                                          ("stream", "download stopped")])
def test_download_stops_at_the_expected_size(isolated, tmp_path, junk_server, kind, message):
    root = tmp_path / "r"
    with pytest.raises(DatasetNotFoundError, match=message):
        mnist(root=root, train=False, mirrors=[f"{junk_server}/{kind}/"])
    assert not root.exists()  # nothing kept: no file, no .part, no empty folder


@pytest.fixture
def dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_stale_download_parts_are_removed_at_the_next_start(isolated, tmp_path, dead_url):
    directory = tmp_path / "r" / "mnist"
    directory.mkdir(parents=True)
    stale = directory / ".t10k-images-idx3-ubyte.gz.abc123.part"
    stale.write_bytes(b"half a download")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    fresh = directory / ".t10k-labels-idx1-ubyte.gz.def456.part"  # just created
    fresh.write_bytes(b"being written")
    live = directory / ".t10k-labels-idx1-ubyte.gz.ghi789.part"  # old, but locked
    live.write_bytes(b"a slow download, alive")
    os.utime(live, (old, old))
    import fcntl
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as the downloading process does
        with pytest.raises(DatasetNotFoundError):
            mnist(root=tmp_path / "r", train=False, mirrors=[dead_url])
        assert not stale.exists() and fresh.exists() and live.exists()
    ds.remove_stale_parts(str(directory))  # its process is gone now
    assert not live.exists() and fresh.exists()
