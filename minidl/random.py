"""minidl's global random state: one NumPy Generator that every initializer, dropout
mask and shuffling default draws from, so `manual_seed` makes a run repeatable."""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the global generator (and return it)."""
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    return _generator


def get_rng_state() -> dict:
    """The global generator's state, a JSON-friendly dict (minidl.save stores it)."""
    return _generator.bit_generator.state


def set_rng_state(state: dict) -> None:
    global _generator
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    _generator = np.random.Generator(bitgen)
