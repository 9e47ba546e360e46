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
# kernel. The C++ kernels run region after region with only Python between
# them, so they keep a longer spin (a quiet 2-core Xeon: the MLP step 10% slower
# at 30000 than at 100000). The Numba backend alternates its regions with
# NumPy's OpenBLAS calls, whose threads the spinning workers starve: there a
# short spin (10000) ran the 32-channel conv 1.45x and the MLP step 2.1x faster.
# So the short spin where Numba is the backend from the start (FASTNN_BACKEND=
# numba). Only takes effect if libgomp was not loaded before fastnn; the user's
# value wins.
_os.environ.setdefault("GOMP_SPINCOUNT",
                       "10000" if _os.environ.get("FASTNN_BACKEND", "").strip().lower() == "numba" else "100000")

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
