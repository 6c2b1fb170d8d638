"""Errors a user can make at the command line, and how `minidl` reports them.

Every user mistake is reported as ONE line on stderr, with no traceback:

    minidl train: error: --steps must be >= 1, got 0

and the exit status says what kind of mistake it was:

    2   the arguments are wrong (argparse's errors, `UsageError`): nothing was done
    1   anything else: a missing or corrupt file, a folder in use, a full disk, a
        diverged run, ...
    130 interrupted (Ctrl-C)

`minidl --debug ...` (the flag may appear anywhere on the line) or the environment
variable MINIDL_DEBUG=1 shows the full traceback instead.

`UsageError` and `RunError` are SystemExit subclasses: code that calls an experiment's
`run(args)` directly (outside `minidl.cli.main`) still stops with the message alone.
"""
from __future__ import annotations

import os

__all__ = ["UsageError", "RunError", "debug_requested", "one_line"]

DEBUG_ENV = "MINIDL_DEBUG"


class UsageError(SystemExit):
    """A mistake in a command's arguments, found before any work is done (exit status 2)."""
    exit_status = 2


class RunError(SystemExit):
    """A user-facing failure that is not about the arguments (exit status 1)."""
    exit_status = 1


def debug_requested(argv=()) -> bool:
    """True if `--debug` is among the arguments or MINIDL_DEBUG is set to a true value."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env not in ("", "0", "false", "no", "off")


def one_line(text: str) -> str:
    """`text` with its line breaks and runs of blanks collapsed to single spaces."""
    return " ".join(str(text).split())
