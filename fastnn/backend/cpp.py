"""The compiled C++ backend: registers fastnn._C's kernels in the dispatch table."""
from __future__ import annotations

from . import registry

OPS = (
    "gemm", "linear_act_forward", "linear_act_backward", "act_forward", "act_backward",
    "softmax_xent_forward", "softmax_xent_backward", "optim_step",
    "batchnorm_forward", "batchnorm_backward", "dropout", "max_norm",
    "conv2d_forward", "conv2d_backward",
)

try:
    from .. import _C
except ImportError as exc:  # the extension was not built or cannot load here
    _C = None
    registry.mark_failed("cpp", f"fastnn._C failed to import: {exc}")
else:
    for _op in OPS:
        registry.register("cpp", _op, getattr(_C, _op))
    registry.mark_loaded("cpp")
