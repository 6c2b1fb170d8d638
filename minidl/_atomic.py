"""Atomic file replacement, shared by checkpoints, downloads and metrics files: write a
temp file in the destination's directory, flush and fsync it, then os.replace it over
the destination. A crash at any point leaves either the old file or the new one, never
half of one; an exception inside the block deletes the temp file."""
from __future__ import annotations

import contextlib
import os
import tempfile


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _umask_mode()  # what a plain open() would give (mkstemp makes 0600 files)


def fsync_directory(directory: str) -> None:
    """Make a rename durable; not possible on every platform or filesystem."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", suffix: str = ".tmp"):
    """`with atomic_write(path) as (f, tmp_path): f.write(...)`; `path` is replaced only
    if the block finishes without an exception."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                               suffix=suffix)
    try:
        with os.fdopen(fd, mode) as f:
            os.fchmod(f.fileno(), FILE_MODE)
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
