"""fastnn's global random state: one seedable numpy Generator for initializers,
shuffling and (later) dropout seeds. ``fastnn.manual_seed(s)`` resets it."""
from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every fastnn random draw that is not given its own generator."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator(rng=None) -> np.random.Generator:
    """``rng`` as a Generator: None -> the global one, an int -> a fresh seeded one."""
    if rng is None:
        return _rng
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}")
