"""minidl.data: IDX/CIFAR readers, dataset lookup and download, DataLoader."""

import functools
import gzip
import hashlib
import http.server
import os
import pickle
import socket
import struct
import threading

import numpy as np
import pytest

import minidl
from minidl.data import (DataFormatError, DataLoader, Dataset, DatasetNotFoundError,
                         TensorDataset, cifar10, fashion_mnist, find_files, load_idx_pair,
                         mnist, read_idx, search_dirs)
from minidl.data import datasets as ds
from minidl.data.idx import IDX_DTYPES
from minidl.serialization import load, save

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
HAVE_FASHION = all(os.path.isfile(os.path.join(FASHION_DIR, f)) for f in FASHION_FILES)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"real Fashion-MNIST not installed in {FASHION_DIR} "
           f"(apt-get install dataset-fashion-mnist)")


def fashion_path(name):
    return os.path.join(FASHION_DIR, name)


def idx_bytes(arr, code=0x08):
    """Encode `arr` as an IDX file with the given dtype code."""
    arr = np.asarray(arr)
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(IDX_DTYPES[code]).tobytes()


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path




# ---- real Fashion-MNIST (read once per session) -----------------------------------

@pytest.fixture(scope="module")
def fashion_train():
    if not HAVE_FASHION:
        pytest.skip(f"real Fashion-MNIST not installed in {FASHION_DIR}")
    return fashion_mnist(root=FASHION_DIR, train=True, download=False)


@pytest.fixture(scope="module")
def fashion_test():
    if not HAVE_FASHION:
        pytest.skip(f"real Fashion-MNIST not installed in {FASHION_DIR}")
    return fashion_mnist(root=FASHION_DIR, train=False, download=False)


@pytest.mark.parametrize("split", ["train", "test"])
def test_real_fashion_mnist(split, request):
    data = request.getfixturevalue(f"fashion_{split}")
    n = 60000 if split == "train" else 10000
    x, y = data.arrays
    assert len(data) == n
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # Scaled from uint8: every value is k/255 exactly as torchvision computes it.
    head = x[:2000]
    k = np.rint(head * 255).astype(np.uint8)
    assert np.array_equal(head, k / np.float32(255))
    # Balanced classes 0..9; the first image of both splits is an ankle boot (9).
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, n // 10))
    assert y[0] == 9
    xi, yi = data[3]
    assert xi.shape == (1, 28, 28) and yi == y[3]


@needs_fashion
def test_default_lookup_finds_debian_package(isolated, monkeypatch):
    monkeypatch.setattr(ds, "SYSTEM_DIRS", {"fashion-mnist": [FASHION_DIR]})
    assert find_files("fashion-mnist", train=False) == (
        fashion_path("t10k-images-idx3-ubyte.gz"), fashion_path("t10k-labels-idx1-ubyte.gz"))
    assert find_files("mnist") is None  # the Debian dir is only for Fashion-MNIST


@needs_fashion
def test_debian_files_are_the_published_ones():
    """Debian's .gz files differ from the published ones only in the gzip header.
    Putting back the original name and mtime must reproduce the published MD5 and our
    SHA-256 table (this is how the table's Fashion-MNIST entries were derived)."""
    for stem, mtime in [("t10k-labels-idx1-ubyte", 1504176627),
                        ("train-labels-idx1-ubyte", 1504176606)]:
        body = open(fashion_path(stem + ".gz"), "rb").read()[10:]
        original = (b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03"
                    + stem.encode() + b"\x00" + body)
        info = ds.FILES["fashion-mnist"][stem + ".gz"]
        assert len(original) == info.size
        assert hashlib.md5(original).hexdigest() == info.md5
        assert hashlib.sha256(original).hexdigest() == info.sha256
        assert hashlib.sha256(gzip.decompress(original)).hexdigest() == info.raw_sha256


# ---- IDX reader -------------------------------------------------------------------

@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_roundtrip_all_dtypes(tmp_path, code, compress):
    rng = np.random.default_rng(code)
    arr = rng.integers(-100, 100, size=(3, 1, 5)).astype(IDX_DTYPES[code].newbyteorder("="))
    if IDX_DTYPES[code].kind == "u":
        arr = np.abs(arr)
    data = idx_bytes(arr, code)
    # Names deliberately lie: gzip is detected by content, not by the .gz suffix.
    name = "data.idx" if compress else "data.idx.gz"
    path = write(tmp_path / name, gzip.compress(data) if compress else data)
    out = read_idx(path)
    assert out.dtype == arr.dtype and out.dtype.isnative and out.flags.writeable
    assert np.array_equal(out, arr)


def test_read_idx_1d_and_empty(tmp_path):
    assert np.array_equal(read_idx(write(tmp_path / "a", idx_bytes([1, 2, 3]))), [1, 2, 3])
    empty = read_idx(write(tmp_path / "b", idx_bytes(np.zeros((0, 4)))))
    assert empty.shape == (0, 4)


@needs_fashion
def test_read_idx_gzip_and_raw_agree(tmp_path):
    gz = fashion_path("t10k-labels-idx1-ubyte.gz")
    raw = write(tmp_path / "labels", gzip.decompress(open(gz, "rb").read()))
    a, b = read_idx(gz), read_idx(raw)
    assert a.shape == (10000,) and a.dtype == np.uint8 and np.array_equal(a, b)


@pytest.fixture
def labels_raw():
    if HAVE_FASHION:
        return gzip.decompress(open(fashion_path("t10k-labels-idx1-ubyte.gz"), "rb").read())
    return idx_bytes(np.arange(10000) % 10)


def test_corrupt_gzip(tmp_path, labels_raw):
    good = gzip.compress(labels_raw)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    cut = good[: len(good) // 2]
    for name, data in [("flipped.gz", bytes(flipped)), ("cut.gz", cut)]:
        path = write(tmp_path / name, data)
        with pytest.raises(DataFormatError, match="corrupt gzip") as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_truncated_and_trailing_bytes(tmp_path, labels_raw):
    n = len(labels_raw)
    path = write(tmp_path / "short", labels_raw[:-5])
    with pytest.raises(DataFormatError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert f"{n} bytes" in str(info.value) and f"{n - 5} bytes" in str(info.value)

    path = write(tmp_path / "long.gz", gzip.compress(labels_raw + b"\x00\x00\x00"))
    with pytest.raises(DataFormatError, match="trailing bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value) and f"{n + 3} bytes" in str(info.value)


@pytest.mark.parametrize("header", [
    b"\x00\x01\x08\x01",   # first two bytes must be zero
    b"\x00\x00\x07\x01",   # unknown dtype code
    b"\x00\x00\x08\x00",   # zero dimensions
    b"\x1f\x8c\x08\x01",   # almost gzip
])
def test_wrong_magic(tmp_path, header):
    path = write(tmp_path / "bad", header + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataFormatError, match="not an IDX file") as info:
        read_idx(path)
    assert str(path) in str(info.value) and header.hex(" ") in str(info.value)


def test_truncated_header(tmp_path):
    path = write(tmp_path / "hdr", b"\x00\x00\x08\x03" + struct.pack(">I", 60000))
    with pytest.raises(DataFormatError, match="truncated header: expected 16 bytes, found 8"):
        read_idx(path)
    with pytest.raises(DataFormatError, match="too short"):
        read_idx(write(tmp_path / "tiny", b"\x00\x00"))


@needs_fashion
def test_mismatched_image_label_counts():
    images = fashion_path("t10k-images-idx3-ubyte.gz")
    labels = fashion_path("train-labels-idx1-ubyte.gz")
    with pytest.raises(DataFormatError, match="10000 images but 60000 labels") as info:
        load_idx_pair(images, labels)
    assert images in str(info.value) and labels in str(info.value)


def test_label_checks(tmp_path):
    images = write(tmp_path / "img", idx_bytes(np.zeros((4, 2, 2))))
    for name, labels, code, match in [
            ("ten", [0, 9, 10, 1], 0x08, r"0\.\.9, found values in 0\.\.10"),
            ("neg", [0, -1, 3, 1], 0x09, r"found values in -1\.\.3"),
            ("count", [0, 1, 2], 0x08, "4 images but 3 labels"),
            ("2d", [[0, 1], [2, 3]], 0x08, "should be 1-D")]:
        path = write(tmp_path / name, idx_bytes(labels, code))
        with pytest.raises(DataFormatError, match=match) as info:
            load_idx_pair(images, path)
        assert str(images) in str(info.value) and str(path) in str(info.value)
    ok = write(tmp_path / "ok", idx_bytes([0, 9, 3, 1]))
    x, y = load_idx_pair(images, ok)
    assert x.shape == (4, 2, 2) and list(y) == [0, 9, 3, 1]


def test_mnist_rejects_wrong_shapes(isolated, tmp_path):
    root = tmp_path / "root"
    write(root / "mnist" / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((4, 28, 28))))
    write(root / "mnist" / "t10k-labels-idx1-ubyte", idx_bytes([0, 1, 2, 3]))
    with pytest.raises(DataFormatError, match=r"shape \(10000, 28, 28\)"):
        mnist(root=root, train=False, download=False)


@needs_fashion
def test_raw_files_in_named_subdir(isolated, tmp_path, fashion_test):
    """Uncompressed files in <root>/fashion-mnist/ load to the same dataset."""
    for stem in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
        raw = gzip.decompress(open(fashion_path(stem + ".gz"), "rb").read())
        write(tmp_path / "root" / "fashion-mnist" / stem, raw)
    data = fashion_mnist(root=tmp_path / "root", train=False, download=False)
    for a, b in zip(data.arrays, fashion_test.arrays):
        assert a.dtype == b.dtype and np.array_equal(a, b)


# ---- lookup order -----------------------------------------------------------------

def _touch_split(directory, train=False, gz=True):
    stems = ds._SPLITS[train]
    for stem in stems:
        write(directory / (stem + (".gz" if gz else "")), b"")
    return tuple(str(directory / (s + (".gz" if gz else ""))) for s in stems)


def test_lookup_order(isolated, tmp_path, monkeypatch):
    root, env, system = tmp_path / "root", tmp_path / "env", tmp_path / "system"
    cache = isolated / ".cache" / "minidl"
    monkeypatch.setenv("MINIDL_DATA", str(env))
    monkeypatch.setattr(ds, "SYSTEM_DIRS", {"fashion-mnist": [str(system)]})
    assert search_dirs("fashion-mnist", root) == [str(root), str(env), str(cache), str(system)]
    assert search_dirs("mnist") == [str(env), str(cache)]

    assert find_files("fashion-mnist", False, root) is None
    expect_system = _touch_split(system)
    assert find_files("fashion-mnist", False, root) == expect_system
    assert find_files("mnist", False, root) is None  # system dir is Fashion-MNIST only
    expect_cache = _touch_split(cache / "fashion-mnist", gz=False)
    assert find_files("fashion-mnist", False, root) == expect_cache
    expect_env = _touch_split(env)
    assert find_files("fashion-mnist", False, root) == expect_env
    # <dir>/<name>/ beats <dir>/ within one base directory.
    expect_env_named = _touch_split(env / "fashion-mnist")
    assert find_files("fashion-mnist", False, root) == expect_env_named
    # A directory with only one of the two files does not count.
    write(root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", b"")
    assert find_files("fashion-mnist", False, root) == expect_env_named
    expect_root = _touch_split(root / "fashion-mnist")
    assert find_files("fashion-mnist", False, root) == expect_root
    # The .gz wins over an uncompressed copy in the same directory; splits are separate.
    _touch_split(root / "fashion-mnist", gz=False)
    assert find_files("fashion-mnist", False, root) == expect_root
    assert find_files("fashion-mnist", True, root) is None
    assert find_files("fashion-mnist", False) == expect_env_named  # no root given


def test_not_found_without_download(isolated, tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        mnist(root=tmp_path / "r", train=True, download=False)
    msg = str(info.value)
    for text in [str(tmp_path / "r" / "mnist"), str(isolated / ".cache" / "minidl"),
                 "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"]:
        assert text in msg
    with pytest.raises(ValueError, match="unknown dataset"):
        find_files("kmnist")


# ---- download against a local HTTP server -----------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves good/ (the real Debian .gz files), upstream/ (the published files,
    rebuilt from Debian's) and corrupt/ (damaged copies) on 127.0.0.1."""
    if not HAVE_FASHION:
        pytest.skip(f"real Fashion-MNIST not installed in {FASHION_DIR}")
    served = tmp_path_factory.mktemp("served")
    for sub in ["good", "upstream", "corrupt"]:
        (served / sub).mkdir()
    for stem, mtime in [("t10k-images-idx3-ubyte", 1504176627),
                        ("t10k-labels-idx1-ubyte", 1504176627)]:
        data = open(fashion_path(stem + ".gz"), "rb").read()
        (served / "good" / (stem + ".gz")).write_bytes(data)
        (served / "upstream" / (stem + ".gz")).write_bytes(
            b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + stem.encode()
            + b"\x00" + data[10:])
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x01
        (served / "corrupt" / (stem + ".gz")).write_bytes(bytes(bad))
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield {"good": base + "/good/", "upstream": base + "/upstream/",
           "corrupt": base + "/corrupt/", "missing": base + "/nothing-here/",
           "served": served}
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/"


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_download_good(isolated, server, fashion_test):
    data = fashion_mnist(train=False, mirrors=[server["good"]])
    dest = isolated / ".cache" / "minidl" / "fashion-mnist"
    assert sorted(os.listdir(dest)) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    for name in os.listdir(dest):
        assert _sha256(dest / name) == _sha256(server["served"] / "good" / name)
        assert os.stat(dest / name).st_mode & 0o044  # not mkstemp's private 0600
    for a, b in zip(data.arrays, fashion_test.arrays):
        assert np.array_equal(a, b)
    # Found on disk the second time: no server needed.
    again = fashion_mnist(train=False, mirrors=["http://127.0.0.1:9/unused/"])
    assert np.array_equal(again.arrays[1], fashion_test.arrays[1])


def test_download_published_files_match_table(isolated, server, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(ds.MIRRORS, "fashion-mnist", [server["upstream"]])
    fashion_mnist(train=False)  # mirrors=None: the module-level table
    dest = tmp_path / "env" / "fashion-mnist"
    for name in ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
        info = ds.FILES["fashion-mnist"][name]
        assert _sha256(dest / name) == info.sha256
        assert os.path.getsize(dest / name) == info.size


def test_download_corrupt_is_rejected(isolated, server, tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist(root=tmp_path / "r", train=False, mirrors=[server["corrupt"]])
    msg = str(info.value)
    url = server["corrupt"] + "t10k-images-idx3-ubyte.gz"
    bad = _sha256(server["served"] / "corrupt" / "t10k-images-idx3-ubyte.gz")
    info_images = ds.FILES["fashion-mnist"]["t10k-images-idx3-ubyte.gz"]
    assert "SHA-256 mismatch" in msg and url in msg
    assert info_images.sha256 in msg and bad in msg
    # Downloads go to root/<name> when root is given; nothing may be left there, not
    # even the folders the download created.
    assert not (tmp_path / "r").exists()


def test_download_wrong_dataset_is_rejected(isolated, server):
    """Fashion-MNIST files served where MNIST is expected fail the size cap (images:
    larger than the published file) or the checksum (labels)."""
    with pytest.raises(DatasetNotFoundError, match="SHA-256 mismatch|the published file has"):
        mnist(train=False, mirrors=[server["good"]])
    assert not (isolated / ".cache").exists()


def test_download_tries_mirrors_in_order(isolated, server, dead_url):
    data = fashion_mnist(train=False, mirrors=[dead_url, server["missing"],
                                               server["corrupt"], server["good"]])
    assert len(data) == 10000


def test_download_offline_error(isolated, dead_url, server):
    with pytest.raises(DatasetNotFoundError) as info:
        fashion_mnist(train=False, mirrors=[dead_url, server["missing"]])
    msg = str(info.value)
    cache = isolated / ".cache" / "minidl"
    for text in ["Searched, in order", str(cache / "fashion-mnist"), str(cache),
                 "Download failed", dead_url + "t10k-images-idx3-ubyte.gz", "404",
                 "To fix this", "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz",
                 "apt-get install dataset-fashion-mnist",
                 "fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels"]:
        assert text in msg, text
    assert not (isolated / ".cache").exists()  # no empty dataset folder left behind


# ---- CIFAR-10 ---------------------------------------------------------------------

def _cifar_batch(path, n, seed, labels=None):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = list(rng.integers(0, 10, size=n)) if labels is None else labels
    batch = {b"batch_label": b"x", b"data": data, b"labels": [int(v) for v in labels],
             b"filenames": [b"f"] * n}
    write(path, pickle.dumps(batch, protocol=2))
    return data, np.asarray(labels)


def test_cifar10(isolated, tmp_path):
    base = tmp_path / "root" / "cifar-10-batches-py"
    parts = [_cifar_batch(base / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    test_part = _cifar_batch(base / "test_batch", 2, 9)
    train = cifar10(root=tmp_path / "root")
    x, y = train.arrays
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    raw = np.concatenate([p[0] for p in parts])
    assert np.array_equal(x, raw.reshape(15, 3, 32, 32) / np.float32(255))
    assert np.array_equal(y, np.concatenate([p[1] for p in parts]))
    test = cifar10(root=base, train=False)  # the batches directory itself also works
    assert np.array_equal(test.arrays[1], test_part[1])


def test_cifar10_errors(isolated, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cifar-10-python.tar.gz") as info:
        cifar10(root=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in str(info.value)
    base = tmp_path / "r" / "cifar-10-batches-py"
    _cifar_batch(base / "test_batch", 2, 0, labels=[3, 10])
    with pytest.raises(DataFormatError, match="0..9"):
        cifar10(root=tmp_path / "r", train=False)
    write(base / "test_batch", pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                             b"labels": [0, 1]}))
    with pytest.raises(DataFormatError, match=r"\(n, 3072\)"):
        cifar10(root=tmp_path / "r", train=False)
    write(base / "test_batch", b"garbage")
    with pytest.raises(DataFormatError, match="not a readable CIFAR-10 batch"):
        cifar10(root=tmp_path / "r", train=False)


# ---- Dataset / TensorDataset --------------------------------------------------------

def test_tensor_dataset():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.arange(6)
    d = TensorDataset(minidl.tensor(x), y)
    assert len(d) == 6 and d.arrays[0] is x
    xi, yi = d[2]
    assert np.array_equal(xi, [4, 5]) and yi == 2
    with pytest.raises(ValueError, match=r"\(6, 2\), \(5,\)"):
        TensorDataset(x, np.arange(5))
    with pytest.raises(ValueError):
        TensorDataset()


# ---- DataLoader -------------------------------------------------------------------

def _toy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return TensorDataset(x, np.arange(n, dtype=np.int64))


def _labels(batches):
    return [b[1].data.tolist() for b in batches]


def test_loader_sequential_batches():
    loader = DataLoader(_toy(10), batch_size=3)
    batches = list(loader)
    assert len(loader) == 4 and len(batches) == 4
    assert _labels(batches) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    xb, yb = batches[0]
    assert isinstance(xb, minidl.Tensor) and isinstance(yb, minidl.Tensor)
    assert xb.data.dtype == np.float32 and yb.data.dtype == np.int64
    assert np.array_equal(xb.data, [[0, 1], [2, 3], [4, 5]])
    xb.data[:] = -1  # batches are copies: the dataset is untouched
    assert loader.dataset.arrays[0][0, 0] == 0


@pytest.mark.parametrize("n,bs", [(10, 3), (9, 3), (1, 5), (5, 1), (0, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_len_and_drop_last(n, bs, drop_last):
    loader = DataLoader(_toy(n), batch_size=bs, shuffle=True, drop_last=drop_last, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == (n // bs if drop_last else -(-n // bs))
    sizes = [len(b[1].data) for b in batches]
    assert all(s == bs for s in sizes[:-1])
    if drop_last:
        assert all(s == bs for s in sizes)
    assert sum(sizes) == (n - n % bs if drop_last else n)


def test_loader_bad_args():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(_toy(), batch_size=0)
    with pytest.raises(ValueError, match="either generator or seed"):
        DataLoader(_toy(), shuffle=True, seed=1, generator=np.random.default_rng(1))


def test_loader_shuffle_determinism_and_reshuffle():
    def epochs(loader, k):
        return [_labels(list(loader)) for _ in range(k)]

    a = epochs(DataLoader(_toy(20), batch_size=4, shuffle=True, seed=5), 3)
    b = epochs(DataLoader(_toy(20), batch_size=4, shuffle=True, seed=5), 3)
    c = epochs(DataLoader(_toy(20), batch_size=4, shuffle=True, seed=6), 3)
    assert a == b and a != c
    flat = [sorted(sum(e, [])) for e in a]
    assert all(f == list(range(20)) for f in flat)  # each epoch is a permutation
    assert a[0] != a[1] != a[2]                       # reshuffled every epoch
    assert a[0] != [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15],
                    [16, 17, 18, 19]]
    # An explicit generator is used as given.
    g = np.random.default_rng(5)
    d = epochs(DataLoader(_toy(20), batch_size=4, shuffle=True, generator=g), 3)
    assert d == a


def test_loader_default_seed_from_global_generator():
    minidl.manual_seed(123)
    a = _labels(list(DataLoader(_toy(30), batch_size=7, shuffle=True)))
    minidl.manual_seed(123)
    b = _labels(list(DataLoader(_toy(30), batch_size=7, shuffle=True)))
    minidl.manual_seed(124)
    c = _labels(list(DataLoader(_toy(30), batch_size=7, shuffle=True)))
    assert a == b and a != c


def test_loader_break_resumes_unfinished_epoch():
    loader = DataLoader(_toy(10), batch_size=2, shuffle=True, seed=1)
    ref = _labels(list(DataLoader(_toy(10), batch_size=2, shuffle=True, seed=1)))
    got = []
    for _xb, yb in loader:
        got.append(yb.data.tolist())
        if len(got) == 2:
            break
    got += _labels(list(loader))
    assert got == ref and loader.epoch == 1


@pytest.mark.parametrize("shuffle,drop_last", [(True, False), (True, True), (False, False)])
def test_loader_state_dict_resume(tmp_path, shuffle, drop_last):
    """Stopping after any batch, checkpointing (through minidl.save/load) and resuming
    into a fresh loader gives exactly the batches of an uninterrupted run."""
    n, bs, n_epochs = 11, 3, 3

    def make(seed):
        return DataLoader(_toy(n), batch_size=bs, shuffle=shuffle, drop_last=drop_last,
                          seed=seed if shuffle else None)

    ref = make(7)
    full = [yb.data.tolist() for _ in range(n_epochs) for _, yb in ref]
    per_epoch = len(ref)
    for stop in range(len(full) + 1):
        loader, got = make(7), []
        while len(got) < stop:
            for _, yb in loader:
                got.append(yb.data.tolist())
                if len(got) == stop:
                    break
        path = tmp_path / "ckpt.npz"
        save({"loader": loader.state_dict()}, path)
        resumed = make(99)
        resumed.load_state_dict(load(path)["loader"])
        while len(got) < len(full):
            got += [yb.data.tolist() for _, yb in resumed]
        assert got == full, f"resumed after batch {stop}"
        if stop < len(full):
            assert resumed.epoch == n_epochs == len(full) // per_epoch


def test_loader_state_dict_mismatch():
    state = DataLoader(_toy(10), batch_size=2).state_dict()
    with pytest.raises(ValueError, match="batch_size=2"):
        DataLoader(_toy(10), batch_size=3).load_state_dict(state)
    with pytest.raises(ValueError, match="dataset_len=10"):
        DataLoader(_toy(12), batch_size=2).load_state_dict(state)


class _ItemDataset(Dataset):
    """A dataset without `arrays`: the loader collates item by item."""

    def __init__(self, base):
        self.base = base

    def __getitem__(self, i):
        x, y = self.base[i]
        return minidl.tensor(x), int(y)

    def __len__(self):
        return len(self.base)


class _SingleDataset(Dataset):
    def __getitem__(self, i):
        return np.full(3, i, dtype=np.float64)

    def __len__(self):
        return 5


def test_loader_generic_dataset_matches_fast_path():
    base = _toy(13)
    fast = list(DataLoader(base, batch_size=4, shuffle=True, seed=3))
    slow = list(DataLoader(_ItemDataset(base), batch_size=4, shuffle=True, seed=3))
    assert len(fast) == len(slow) == 4
    for (xf, yf), (xs, ys) in zip(fast, slow):
        assert np.array_equal(xf.data, xs.data) and xs.data.dtype == np.float32
        assert np.array_equal(yf.data, ys.data)
    single = list(DataLoader(_SingleDataset(), batch_size=2))
    assert isinstance(single[0], minidl.Tensor) and single[0].data.shape == (2, 3)
    assert single[2].data.tolist() == [[4.0, 4.0, 4.0]]


def test_loader_resume_with_shared_generator():
    """The generator may also feed other draws (dropout, ...). A resumed loader must
    rebuild the epoch's order and leave the generator exactly where it was."""
    def run(loader, gen, batches_before_ckpt=None):
        out = []
        for _ in range(2):
            for _, yb in loader:
                out.append(yb.data.tolist())
                gen.random(2)  # interleaved use of the same generator
                if len(out) == batches_before_ckpt:
                    return out, loader.state_dict(), gen.bit_generator.state
        return out, None, None

    g = np.random.default_rng(11)
    full, _, _ = run(DataLoader(_toy(9), batch_size=2, shuffle=True, generator=g), g)
    g1 = np.random.default_rng(11)
    first, state, gstate = run(DataLoader(_toy(9), batch_size=2, shuffle=True, generator=g1),
                               g1, batches_before_ckpt=3)
    g2 = np.random.default_rng(0)
    resumed = DataLoader(_toy(9), batch_size=2, shuffle=True, generator=g2)
    resumed.load_state_dict(state)
    assert g2.bit_generator.state == gstate
    rest = []
    for _, yb in resumed:
        rest.append(yb.data.tolist())
        g2.random(2)
    for _, yb in resumed:
        rest.append(yb.data.tolist())
        g2.random(2)
    assert first + rest == full
