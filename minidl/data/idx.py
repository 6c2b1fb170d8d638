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
import math
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


# Deflate cannot expand data by more than about 1032:1; a gzip whose IDX header claims
# more than this many bytes per compressed byte is refused before decompressing.
_MAX_GZIP_RATIO = 1100
_TRAILING_PROBE = 1 << 20  # trailing bytes counted up to this much, then "more than"


def _read_exact(f, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path, expected_shape=None):
    """Read an IDX file (gzipped or raw) into a native-endian, writable ndarray.

    Bounded work whatever the file holds: the header is read and checked first (against
    `expected_shape` if given, and for a gzip against what its compressed size can
    possibly expand to), then exactly the payload it announces is decompressed,
    streamed into the result array, and at most a little more to detect trailing bytes.
    A decompression bomb is refused after a few bytes, not after filling memory."""
    path = os.fspath(path)
    with open(path, "rb") as raw:
        file_size = os.fstat(raw.fileno()).st_size
        gz = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        try:
            return _read_idx_stream(f, path, gz, file_size, expected_shape)
        except (OSError, EOFError, zlib.error) as e:
            if not gz:
                raise
            # OSError covers BadGzipFile (bad header or CRC); EOFError a cut-off stream.
            raise DataFormatError(f"{path}: corrupt gzip data ({e}); "
                                  f"delete the file and download it again") from None


def _read_idx_stream(f, path, gz, file_size, expected_shape):
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise DataFormatError(f"{path}: {len(head)} bytes is too short for an IDX header")
    zero0, zero1, code, ndim = head
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES or ndim == 0:
        raise DataFormatError(
            f"{path}: not an IDX file (magic number {head.hex(' ')}; expected "
            f"00 00 <dtype code in {sorted(hex(c) for c in IDX_DTYPES)}> <ndim >= 1>)")
    header = 4 + 4 * ndim
    dims = _read_exact(f, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataFormatError(f"{path}: truncated header: expected {header} bytes, "
                              f"found {4 + len(dims)}")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    if expected_shape is not None and shape != tuple(expected_shape):
        raise DataFormatError(f"{path}: the header says shape {shape}, expected shape "
                              f"{tuple(expected_shape)}")
    dtype = IDX_DTYPES[code]
    payload = math.prod(shape) * dtype.itemsize
    expected = header + payload
    if gz and payload > _MAX_GZIP_RATIO * file_size:
        raise DataFormatError(f"{path}: the header says shape {shape} ({expected} bytes), "
                              f"more than a gzip of {file_size} bytes can hold: not a "
                              f"genuine IDX file (decompression bomb?)")
    if not gz and file_size != expected:
        what = "truncated" if file_size < expected else "trailing bytes after the data"
        raise DataFormatError(
            f"{path}: {what}: header says shape {shape} of {dtype.str[1:]}, so the "
            f"file should be {expected} bytes, but it is {file_size} bytes")
    out = np.empty(shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    got = 0
    while got < payload:
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    extra = 0 if got < payload else len(f.read(_TRAILING_PROBE))
    if got < payload or extra:
        what = "truncated" if got < payload else "trailing bytes after the data"
        if got < payload:
            size = f"{header + got}"
        elif extra < _TRAILING_PROBE:
            size = f"{expected + extra}"
        else:
            size = f"more than {expected + extra}"
        raise DataFormatError(
            f"{path}: {what}: header says shape {shape} of {dtype.str[1:]}, so the "
            f"(decompressed) file should be {expected} bytes, but it is {size} bytes")
    # astype: native byte order, writable.
    return out.astype(dtype.newbyteorder("="), copy=not dtype.isnative)


def load_idx_pair(images_path, labels_path, num_classes=10, images_shape=None):
    """Read matching image and label IDX files; check counts and label range.
    `images_shape` (e.g. (60000, 28, 28)): what the images file must hold, checked
    from its header before its body is read (the labels must then hold as many)."""
    images = read_idx(images_path, expected_shape=images_shape)
    labels = read_idx(labels_path, expected_shape=None if images_shape is None
                      else images_shape[:1])
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
