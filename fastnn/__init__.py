"""fastnn: train neural networks fast.

Compiled kernels (C++ SIMD + OpenMP; CUDA for CuPy arrays; Numba as the CPU
fallback) under a small Python API::

    import fastnn as fnn
    X, y = fnn.data.load_digits()
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 256, activation="relu"), fnn.nn.Linear(256, 10))
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
    hist = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt).fit(X, y, epochs=20)
"""
from __future__ import annotations

__version__ = "0.1.0"

import os as _os

# GNU OpenMP workers spin ~300k iterations after each parallel region by
# default; on a 2-core machine that starves NumPy's BLAS threads and the next
# kernel. A short spin keeps back-to-back kernels fast without the fight. Only
# takes effect if libgomp was not loaded before fastnn; the user's value wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from . import backend
from ._random import manual_seed
from ._threads import get_num_threads, set_num_threads
from . import ops, init, losses, schedules, data, nn, optim
from . import preprocessing, augment
from .callbacks import BestCheckpoint, Callback, EarlyStopping, History
from .train import Trainer, TrainingDiverged
from . import diagnostics, search, ensemble, distributed
from . import export, interop


__all__ = ["backend", "ops", "init", "losses", "schedules", "data", "nn", "optim", "preprocessing", "augment",
           "Trainer", "History", "Callback", "TrainingDiverged", "manual_seed", "set_num_threads",
           "get_num_threads", "__version__", "EarlyStopping", "BestCheckpoint", "diagnostics", "search", "ensemble",
           "distributed", "export", "interop"]
