"""Reader for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the
values in C order, big-endian:

    0x00 0x00 <dtype code> <ndim>   dim_0 ... dim_{ndim-1}   payload

The files are usually distributed gzipped. We detect gzip by its magic bytes
(1f 8b) rather than by the file name, because renamed or re-compressed copies are
common, and we check every size so that a truncated download fails loudly here
instead of as a confusing reshape error later.
"""

import gzip
import os
import zlib

import numpy as np

__all__ = ["DataFormatError", "read_idx", "load_idx_pair", "IDX_DTYPES"]

# dtype code -> big-endian NumPy dtype (the IDX spec's whole table).
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(ValueError):
    """A data file exists but its contents are not what they should be."""


def _read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # OSError covers BadGzipFile (bad header or CRC); EOFError a cut-off stream.
        raise DataFormatError(f"{path}: corrupt gzip data ({e}); "
                              f"delete the file and download it again") from None


def read_idx(path):
    """Read an IDX file (gzipped or raw) into a native-endian, writable ndarray."""
    path = os.fspath(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataFormatError(f"{path}: {len(buf)} bytes is too short for an IDX header")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataFormatError(
            f"{path}: not an IDX file (magic number {buf[:4].hex(' ')}; expected "
            f"00 00 <dtype code in {sorted(hex(c) for c in IDX_DTYPES)}> <ndim >= 1>)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFormatError(f"{path}: truncated header: expected {header} bytes, "
                              f"found {len(buf)}")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "trailing bytes after the data"
        raise DataFormatError(
            f"{path}: {what}: header says shape {shape} of {dtype.str[1:]}, so the "
            f"(decompressed) file should be {expected} bytes, but it is {len(buf)} bytes")
    data = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    # astype copies: the result is writable and does not pin the decompressed buffer.
    return data.astype(dtype.newbyteorder("="))


def load_idx_pair(images_path, labels_path, num_classes=10):
    """Read matching image and label IDX files; check counts and label range."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    names = f"images {os.fspath(images_path)!r}, labels {os.fspath(labels_path)!r}"
    if labels.ndim != 1:
        raise DataFormatError(f"labels file should be 1-D, got shape {labels.shape} ({names})")
    if images.shape[0] != labels.shape[0]:
        raise DataFormatError(f"{images.shape[0]} images but {labels.shape[0]} labels ({names})")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise DataFormatError(f"labels must lie in 0..{num_classes - 1}, found values "
                                  f"in {lo}..{hi} ({names})")
    return images, labels
