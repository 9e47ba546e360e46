"""Argument checks shared by the Python API: each failure names the argument."""
from __future__ import annotations

import math
import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def array_module(x):
    """numpy, or cupy for CuPy arrays."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    return np


def float_array(x, name: str, ndim=None, dtype=None, contiguous: bool = True):
    """x if it is a float32/float64 ndarray of the given rank (int or tuple of ints)."""
    if not isinstance(x, np.ndarray) and not type(x).__module__.startswith("cupy"):
        if hasattr(x, "__cuda_array_interface__"):
            raise TypeError(f"{name} is a GPU array ({type(x).__module__}.{type(x).__name__}); fastnn takes NumPy "
                            "arrays on the CPU and CuPy arrays on the GPU: convert it with cupy.asarray() "
                            "or copy it to the host first")
        raise TypeError(f"{name} must be a numpy.ndarray (float32 or float64), got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} (matching the other inputs), got {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if contiguous and not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (pass numpy.ascontiguousarray({name}))")
    return x


def shape_is(x, name: str, shape: tuple) -> None:
    if len(x.shape) != len(shape) or any(s is not None and s != g for s, g in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def labels(y, name: str, n: int, num_classes: int | None = None):
    """y as a contiguous int64 vector of length n with values in [0, num_classes)."""
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array of class labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) to match the {n} rows of scores, got {tuple(y.shape)}")
    xp = array_module(y)
    y = xp.ascontiguousarray(y, dtype=xp.int64)
    if num_classes is not None and n > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must be in [0, {num_classes}), got values in [{lo}, {hi}]")
    return y


def finite(x, name: str) -> None:
    xp = array_module(x)
    if not bool(xp.isfinite(x).all()):
        bad = int((~xp.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")


def positive_int(v, name: str, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return int(v)


def real(v, name: str, low=None, high=None, low_open=False, high_open=False) -> float:
    """v as a float: a finite real number (not NaN, not +-inf) within the bounds."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if v != v:
        raise ValueError(f"{name} must not be NaN")
    if v in (math.inf, -math.inf):
        raise ValueError(f"{name} must be finite, got {v}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def uint64(v, name: str) -> int:
    """v as a Python int: an integer in [0, 2**64) (a Philox seed or offset)."""
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if not 0 <= int(v) < 2**64:
        raise ValueError(f"{name} must be in [0, 2**64), got {v}")
    return int(v)


def seed(v, name: str = "seed") -> int:
    """A Philox seed: an int in [0, 2**64)."""
    return uint64(v, name)


def pair(v, name: str, minimum: int = 0) -> tuple[int, int]:
    """(height, width) from an int (used for both) or a pair of ints, each >= minimum."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair (height, width) of ints, got {v!r}")
        return (positive_int(v[0], name, minimum), positive_int(v[1], name, minimum))
    v = positive_int(v, name, minimum)
    return (v, v)


def batch(x, name: str, ndim=None, allow_empty: bool = False, contiguous: bool = False):
    """x if it is a batch: a float32/float64 array with the batch axis N first
    and the features after it (at least 2-D, or ``ndim`` dimensions), with at
    least one row unless ``allow_empty``. The one "X is a batch" check of the
    package; callers that need a C-contiguous array copy or pass contiguous=True."""
    float_array(x, name, ndim=ndim, contiguous=contiguous)
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (N, ...): a batch axis, then the features, got shape "
                         f"{tuple(x.shape)}")
    if not allow_empty and x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    return x


PLOT_HINT = 'pip install "fastnn-train[plot]" (from a clone: pip install ".[plot]")'


def pyplot(what: str):
    """matplotlib.pyplot (the Agg backend unless one is already chosen), or an
    ImportError saying that `what` needs matplotlib and how to install it. The
    one plotting guard of the package (matplotlib is an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"{what} needs matplotlib, which is not installed: pip install matplotlib "
                          f"or {PLOT_HINT}") from exc
    return plt


def fill_doc(**parts):
    """Decorator: replace each ``%(name)s`` marker in the docstring of a
    function or class by ``parts[name]``, so a parameter description shared by
    several public names is written once. A part's lines after the first carry
    their own indentation (the marker sits where its first line goes)."""
    def apply(obj):
        doc = obj.__doc__
        for name, text in parts.items():
            doc = doc.replace(f"%({name})s", text)
        obj.__doc__ = doc
        return obj
    return apply
