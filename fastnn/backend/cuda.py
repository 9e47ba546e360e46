"""The CUDA backend: CuPy arrays in, fastnn._cuda kernels launched on CuPy's
current stream (the bindings fetch it). Loaded only when the extension was
built, CuPy imports and a GPU is present; otherwise ``reason`` says why not.

fastnn._cuda's bindings have the names, argument order and argument names of
fastnn._C's (csrc/bindings.cpp), so each op registers as it is: ``fastnn.ops``
looks up the same name under ``"cuda"`` when its inputs are CuPy arrays.
Host-side arguments stay NumPy exactly as on the CPU (optim_step's seg_begin and
hyper, max_norm's offset/rows/cols/limit); everything else is a CuPy array.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import registry
from .cpp import OPS as CPP_OPS
from .codes import ACTIVATIONS

# The ops fastnn._cuda provides: the C++ backend's, by the same names and argument order.
OPS = CPP_OPS
# And two of its own, which leave their results on the device for the Trainer to
# read in one transfer per step: the loss with its label check, and the gradients'
# sum of squares (NaN/Inf check, clipping norm).
DEVICE_OPS = ("softmax_xent_forward_device", "sum_squares")

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
        try:
            count = _cuda.device_count()
        except Exception as exc:  # a broken driver: say so instead of failing the import of fastnn
            count, reason = 0, f"the CUDA runtime failed to count devices ({exc})"
        if reason is None and count < 1:
            reason = "no CUDA device visible"
        missing = [op for op in OPS + DEVICE_OPS if not hasattr(_cuda, op)] if reason is None else []
        if missing:
            reason = (f"fastnn._cuda lacks kernels {', '.join(missing)} (built from older sources: "
                      "rebuild with pip install .)")


def is_cuda_array(x) -> bool:
    """True when x is a CuPy array (then ops dispatch to the ``cuda`` backend)."""
    return cp is not None and isinstance(x, cp.ndarray)


def _require(what: str) -> None:
    if reason is not None:
        raise RuntimeError(f"{what} needs the CUDA backend, which is unavailable: {reason}")


def to_host(a, copy: bool = False):
    """a as a NumPy array: a CuPy array is copied to the host (on the current
    stream, waiting for it); a NumPy array passes (copied with ``copy``);
    anything else goes through ``numpy.asarray``."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.array(a, copy=True) if copy else np.asarray(a)


def to_device(a):
    """a (NumPy, or anything numpy.asarray takes) as a CuPy array on the current
    device, copied on CuPy's current stream; a CuPy array passes unchanged.
    RuntimeError with ``reason`` when CUDA is unavailable."""
    _require("moving arrays to cuda")
    return cp.asarray(a)


def device_of(a) -> str:
    """"cuda" for a CuPy array, else "cpu"."""
    return "cuda" if type(a).__module__.startswith("cupy") else "cpu"


def sum_squares(x, out=None):
    """sum(x ** 2) of a 1-D float32/float64 CuPy array into ``out`` (a float64
    CuPy array of shape (1,), fresh when None), returned, without synchronizing:
    accumulated in double in an order fixed by ``len(x)`` (the same bits every
    run), then rounded to x's dtype, so a float32 sum beyond float32's range is
    inf as NumPy's would be. NaN or Inf in x gives a NaN or Inf sum."""
    _require("sum_squares")
    if out is None:
        out = cp.empty(1, np.float64)
    _cuda.sum_squares(x, out)
    return out


def set_allow_tf32(on: bool) -> None:
    """Let float32 matmuls (GEMM, Linear, Conv2d) use TF32 tensor cores: about
    8x the float32 throughput on Ampere and later, with a 10-bit mantissa in the
    products (PyTorch's ``torch.backends.cuda.matmul.allow_tf32``). Off by
    default: float32 results then match the CPU's to float32 rounding."""
    if not isinstance(on, bool):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    _require("set_allow_tf32")
    _cuda.set_allow_tf32(on)


def allow_tf32() -> bool:
    """Whether float32 matmuls may use TF32 (``set_allow_tf32``); False when CUDA is unavailable."""
    return bool(_cuda.allow_tf32()) if reason is None else False


def _version(v: int) -> str:
    """A CUDA version integer (1000 * major + 10 * minor) as "major.minor"."""
    v = int(v)
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_info(device: int = 0) -> dict:
    """fastnn._cuda.device_info(device): name, compute_capability, multiprocessors,
    memory_bytes, l2_bytes, driver_version, runtime_version."""
    _require("device_info")
    return dict(_cuda.device_info(int(device)))


def device_summary() -> list[str]:
    """One line per visible GPU for ``fastnn doctor``: name, compute capability,
    memory, multiprocessors, CUDA driver and runtime versions, cuBLASLt version.
    Empty when CUDA is unavailable (``reason`` says why)."""
    if reason is not None:
        return []
    try:
        blaslt = _cuda.cublaslt_version()
    except Exception as exc:  # cuBLASLt loads lazily: a missing library is reported, not raised
        blaslt = f"unavailable ({exc})"
    lines = []
    for d in range(_cuda.device_count()):
        info = _cuda.device_info(d)
        major, minor = info["compute_capability"]
        lines.append(f"gpu {d}: {info['name']} (compute capability {major}.{minor}, "
                     f"{info['memory_bytes'] / 2**30:.1f} GiB, {info['multiprocessors']} SMs); "
                     f"driver {_version(info['driver_version'])}, runtime {_version(info['runtime_version'])}, "
                     f"cuBLASLt {blaslt}, TF32 {'on' if allow_tf32() else 'off'}")
    return lines


if reason is None:
    for _op in OPS + DEVICE_OPS:
        registry.register("cuda", _op, getattr(_cuda, _op))
    registry.mark_loaded("cuda")
else:
    registry.mark_failed("cuda", reason)

__all__ = ["is_cuda_array", "reason", "ACTIVATIONS", "sum_squares", "set_allow_tf32", "allow_tf32", "device_info",
           "device_summary", "OPS", "to_host", "to_device", "device_of"]
