"""The CUDA backend: CuPy arrays in, fastnn._cuda kernels launched on CuPy's
current stream. Loaded only when the extension was built, CuPy imports and a
GPU is present; otherwise ``reason`` says why not."""
from __future__ import annotations

import importlib

from . import registry
from .codes import ACTIVATIONS

reason = None
_cuda = cp = None
try:
    _cuda = importlib.import_module("fastnn._cuda")
except ModuleNotFoundError:
    reason = ("fastnn._cuda was not built (the CUDA build needs nvcc and, with FASTNN_CUDA=AUTO, an NVIDIA "
              "driver; FASTNN_CUDA=ON pip install . builds it anyway)")
except ImportError as exc:
    reason = f"fastnn._cuda failed to load ({exc})"
if _cuda is not None:
    try:
        import cupy as cp
    except ImportError:
        reason = 'CuPy is not installed (pip install "fastnn-train[cuda]")'
    else:
        if _cuda.device_count() < 1:
            reason = "no CUDA device visible"


def is_cuda_array(x) -> bool:
    """True when x is a CuPy array (then ops dispatch to the ``cuda`` backend)."""
    return cp is not None and isinstance(x, cp.ndarray)


def act_forward(x, y, act, alpha):
    stream = cp.cuda.get_current_stream()
    _cuda.act_forward(x.data.ptr, y.data.ptr, x.size, str(x.dtype), act, alpha, stream.ptr)


def dropout(x, y, seed, offset, threshold, scale):
    stream = cp.cuda.get_current_stream()
    _cuda.dropout(x.data.ptr, y.data.ptr, x.size, str(x.dtype), seed, offset, threshold, scale, stream.ptr)


if reason is None:
    registry.register("cuda", "act_forward", act_forward)
    registry.register("cuda", "dropout", dropout)
    registry.mark_loaded("cuda")
else:
    registry.mark_failed("cuda", reason)

__all__ = ["is_cuda_array", "reason", "ACTIVATIONS"]
