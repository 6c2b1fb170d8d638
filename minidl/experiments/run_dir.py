"""The output folder of a run: taken by one process at a time, and never overwritten by
mistake.

`claim(out, resume, overwrite, command)`:
* refuses a folder that already holds a run (a checkpoint or metrics) unless the user
  said `--resume` (continue it) or `--overwrite` (start over): forgetting `--resume`
  must not destroy a finished run;
* removes the temp files of atomic writes that a killed run left behind;
* takes an exclusive lock on `out/.lock` (fcntl.flock: released by the kernel when the
  process ends, however it ends), so a second run into the same folder refuses at once
  instead of interleaving metrics and overwriting checkpoints.
Keep the returned lock object alive for the whole run; `release()` or process exit frees it.
"""
from __future__ import annotations

import os
from pathlib import Path

RUN_FILES = ("checkpoint.npz", "metrics.jsonl", "result.json")


class RunDirError(SystemExit):
    """A user mistake about --out: Python prints the one-line message, exit status 1."""


def holds_a_run(out: Path) -> bool:
    return out.is_dir() and any(
        p.is_file() and p.stat().st_size > 0 for name in RUN_FILES for p in out.rglob(name))


class RunDirLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd = None

    def acquire(self, command: str) -> "RunDirLock":
        import fcntl
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(
                f"minidl {command}: {self.path.parent} is in use by another run (locked: "
                f"{self.path}); wait for it or choose another --out") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def claim(out, resume: bool, overwrite: bool, command: str) -> RunDirLock:
    out = Path(out)
    if out.exists() and not out.is_dir():
        from ..errors import UsageError
        raise UsageError(f"minidl {command}: --out {out} is a file, not a folder")
    if resume and overwrite:
        from ..errors import UsageError
        raise UsageError(f"minidl {command}: --resume and --overwrite contradict each other")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunDirLock(out / ".lock").acquire(command)
    if not resume and not overwrite and holds_a_run(out):
        lock.release()
        raise RunDirError(f"minidl {command}: {out} holds an earlier run; pass --resume to "
                          f"continue it or --overwrite to start over")
    remove_stale_temp_files(out)
    return lock


def remove_stale_temp_files(out: Path) -> list:
    """Temp files of atomic writes (`.NAME.XXXX.tmp`, see minidl/_atomic.py) that a killed
    run left behind. Only called under the folder's lock: no live writer owns them."""
    stale = [p for p in out.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
