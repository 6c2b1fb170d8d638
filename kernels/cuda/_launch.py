"""Launch geometry shared by the CUDA kernels.

Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) every CUDA thread is a Python
thread, so blocks and grids stay tiny there; on a GPU they are sized for occupancy.
The kernels use grid-stride loops, so any grid covers any size."""
from __future__ import annotations

import os

from numba.cuda.core import config as _config

SIMULATOR = bool(_config.ENABLE_CUDASIM)
# Grids are sized to the data (grid1d): a small tensor gets a small grid on purpose.
# numba-cuda warns at every launch of fewer than 128 blocks, which buried a training
# run's output on a GPU (and costs a warning per launch); it stays on where asked for.
if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
    _config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
if SIMULATOR:  # a race in the simulator's shared arrays: see _simulator.py
    from ._simulator import patch_shared_arrays
    patch_shared_arrays()
THREADS = 8 if SIMULATOR else 256         # threads per block (a power of two)
MAX_BLOCKS = 2 if SIMULATOR else 4096     # grid-stride loops cover the rest
REDUCE_BLOCKS = 2 if SIMULATOR else 32768  # blocks of one-block-per-output reductions
TILE = 4 if SIMULATOR else 16             # GEMM tile edge (TILE x TILE threads)


def grid1d(n: int) -> tuple:
    """(blocks, threads) for a 1-D grid-stride kernel over n items."""
    blocks = max(1, min(MAX_BLOCKS, (n + THREADS - 1) // THREADS))
    return blocks, THREADS
