"""The Numba runtime: the one place the Numba backend imports numba, picks its
threading layer, keeps fastnn's thread count and decides when a kernel runs in
parallel (``threads_for``, the one home of the parallel threshold).

Every kernel module of this package, and fastnn.augment / fastnn.data.loader,
import numba from here, so the threading layer is chosen before the first
parallel kernel compiles or the first ``numba.set_num_threads`` starts the pool.
"""
from __future__ import annotations

import numpy as np

from .. import registry

try:
    import numba
    from numba import njit, prange
    from numba.core import types as nbtypes
    from numba.extending import overload
except ImportError as exc:  # pragma: no cover - numba is a hard dependency
    registry.mark_failed("numba", f"numba failed to import: {exc}")
    numba = njit = prange = nbtypes = overload = None

if numba is not None and numba.config.THREADING_LAYER == "default":
    # One OpenMP runtime in the process: the C++ kernels use GNU libgomp and so
    # does Numba's "omp" layer (workqueue where omp is unavailable).
    numba.config.THREADING_LAYER = "omp"

# Options of every kernel: compiled once and cached on disk, GIL released, IEEE
# arithmetic (no fastmath, so the loops round like csrc/), NumPy's error model.
JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

# Below this many elements a parallel region costs more than it saves (and its
# idle OpenMP workers would fight NumPy's BLAS threads for the cores).
_PARALLEL_MIN = 1 << 16

# Numba's thread count is per calling thread; fastnn's is one number for the
# process (set_num_threads), applied on each call by threads_for so that a
# kernel runs on the same team size, and rounds the same way, from whichever
# thread calls it. 0: not set, use all of Numba's threads.
_THREADS = [0]


def set_num_threads(n: int) -> None:
    """fastnn's thread count for the Numba kernels (capped at Numba's pool size)."""
    _THREADS[0] = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_THREADS[0])


def get_num_threads() -> int:
    """The team size of a parallel Numba kernel: fastnn's count, else Numba's pool size."""
    return _THREADS[0] or int(numba.config.NUMBA_NUM_THREADS)


class threads_for:
    """``with threads_for(work):`` runs the enclosed Numba kernels on fastnn's
    thread count, or on 1 thread when ``work`` (elements touched) is below the
    parallel threshold."""

    __slots__ = ("want", "saved")

    def __init__(self, work: int):
        self.want = 1 if work < _PARALLEL_MIN else get_num_threads()

    def __enter__(self):
        self.saved = numba.get_num_threads()
        if self.saved != self.want:
            numba.set_num_threads(self.want)

    def __exit__(self, *exc):
        if self.saved != self.want:
            numba.set_num_threads(self.saved)


def quiet_fp():
    """NumPy's floating-point warnings silenced: overflow to inf is the caller's
    business (the Trainer stops on a non-finite loss), exactly as in the C++ kernels."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")
