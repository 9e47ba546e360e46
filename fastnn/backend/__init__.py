"""Backends: ``cpp`` (fastnn._C, the default on CPU), ``numba`` (fallback, or
chosen) and ``cuda`` (for CuPy arrays). One dispatch table, in registry.py.

    fastnn.backend.available()       # ['cpp', 'numba']
    fastnn.backend.use("numba")
    with fastnn.backend.using("cpp"): ...

The environment variable FASTNN_BACKEND sets the default.
"""
from __future__ import annotations

import warnings

from . import registry
from .registry import available, current, failures, lookup, use, using
from . import cpp as _cpp  # noqa: F401  (registers the C++ kernels)
from . import numba as _numba  # noqa: F401  (registers the Numba kernels)
from . import cuda as _cuda_backend  # noqa: F401

if "cpp" not in registry.available() and "numba" in registry.available():
    # Never silent: say why the compiled kernels are missing and how to get them.
    warnings.warn(f"fastnn: {_cpp.LOAD_PROBLEM}. Falling back to the slower Numba backend.",
                  RuntimeWarning, stacklevel=2)
elif _cpp.STALE_OPS:
    # A compiled extension older than the Python sources: say which kernels run on Numba.
    warnings.warn(f"fastnn: the compiled extension fastnn._C predates kernels {', '.join(_cpp.STALE_OPS)}, which "
                  "run on the slower Numba backend until it is rebuilt (pip install . from the clone)",
                  RuntimeWarning, stacklevel=2)

__all__ = ["available", "current", "use", "using", "lookup", "failures"]
