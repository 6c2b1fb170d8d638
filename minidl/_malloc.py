"""Keep freed array memory in the process instead of handing it back to the OS.

A training step allocates and frees the same few hundred-kilobyte arrays (activations,
gradients) thousands of times. With glibc's defaults, freeing them trims the heap or
unmaps the chunk, and the next step page-faults the memory back in, a large share of a
small model's training step (numbers: benchmarks/DESIGN.md, _malloc.py). Raising the
mmap and trim thresholds makes glibc reuse the memory. Opt out with MINIDL_MALLOC_TUNING=0.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20    # glibc's own ceiling for its dynamic threshold (64-bit)
TRIM_THRESHOLD = 256 * 2**20

status = "not applied"


def tune() -> str:
    """Apply the thresholds on glibc (Linux); returns what happened, for `minidl info`."""
    global status
    if os.environ.get("MINIDL_MALLOC_TUNING", "1") == "0":
        status = "disabled by MINIDL_MALLOC_TUNING=0"
    elif not sys.platform.startswith("linux"):
        status = "not applicable (not Linux/glibc)"
    else:
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                  and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
            status = (f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold "
                      f"{TRIM_THRESHOLD >> 20} MiB" if ok else "mallopt refused")
        except (OSError, AttributeError):
            status = "not applicable (no glibc)"
    return status
