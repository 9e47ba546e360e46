"""fastnn's global random state: one seedable numpy Generator for initializers,
shuffling and (later) dropout seeds. ``fastnn.manual_seed(s)`` resets it."""
from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed every fastnn random draw that is not given its own generator:
    weight initialization, each Dropout/DropConnect's Philox seed (drawn when
    the layer is built), and the shuffling of a Trainer built without ``seed=``.

    Seed before building the model: ``fnn.manual_seed(0)`` then
    ``model = fnn.nn.Sequential(...)`` gives the same initial weights every
    time. ``Trainer(seed=...)`` cannot do this for you, because the model
    already exists when the Trainer is made; it seeds only the Trainer's own
    shuffling and augmentation."""
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
