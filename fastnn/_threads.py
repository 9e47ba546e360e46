"""``fastnn.set_num_threads`` / ``fastnn.get_num_threads`` (layer L0): one
thread count for the CPU kernels of every backend, C++ OpenMP and Numba.

Here rather than in the package ``__init__`` so the modules that need it
(``fastnn.search`` sets it in its worker processes) import it from below.
"""
from __future__ import annotations

from . import _validate
from .backend import cpp
from .backend.numba import runtime as numba_runtime


def set_num_threads(n: int) -> None:
    """Threads for the CPU kernels of every backend (C++ OpenMP and Numba)."""
    n = _validate.positive_int(n, "n")
    if cpp._C is not None:
        cpp._C.set_num_threads(n)
    if numba_runtime.numba is not None:
        numba_runtime.set_num_threads(n)


def get_num_threads() -> int:
    """The thread count of the CPU kernels (the C++ one when fastnn._C loaded)."""
    if cpp._C is not None:
        return int(cpp._C.get_num_threads())
    return numba_runtime.get_num_threads()
