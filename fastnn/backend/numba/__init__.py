"""The Numba backend: the CPU fallback of every kernel in csrc/kernels.h.

One module per kernel family, named like csrc/cpu's files (gemm, softmax_xent,
optim, batchnorm, dropout, conv) plus activation (csrc/ops/activation.h's
functions, shared by the fused epilogues) and runtime (the numba import, the
threading layer, the thread count and the parallel threshold). The kernels are
registered under the names of csrc/kernels.h with the argument order of the
fastnn._C bindings. GEMMs call NumPy's matmul; everything around them is a
parallel Numba loop whose scalar math restates csrc/ops/*.h -- the one
permitted second copy -- tested against the same float64 oracle.
"""
from __future__ import annotations

from .. import registry
from .runtime import numba

if numba is not None:
    from .activation import act_backward, act_forward
    from .batchnorm import batchnorm_backward, batchnorm_forward
    from .conv import conv2d_backward, conv2d_forward
    from .dropout import dropout
    from .gemm import gemm, linear_act_backward, linear_act_forward
    from .optim import max_norm, optim_step
    from .softmax_xent import softmax_xent_backward, softmax_xent_forward

    for _name, _kernel in (("gemm", gemm), ("linear_act_forward", linear_act_forward),
                           ("linear_act_backward", linear_act_backward), ("act_forward", act_forward),
                           ("act_backward", act_backward), ("softmax_xent_forward", softmax_xent_forward),
                           ("softmax_xent_backward", softmax_xent_backward), ("optim_step", optim_step),
                           ("batchnorm_forward", batchnorm_forward), ("batchnorm_backward", batchnorm_backward),
                           ("dropout", dropout), ("max_norm", max_norm),
                           ("conv2d_forward", conv2d_forward), ("conv2d_backward", conv2d_backward)):
        registry.register("numba", _name, _kernel)
    registry.mark_loaded("numba")
