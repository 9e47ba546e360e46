"""The Numba backend: the CPU fallback of every kernel in csrc/kernels.h.

One module per kernel family, named like csrc/cpu's files (gemm, softmax_xent,
optim, batchnorm, dropout, conv, pool) plus activation (csrc/ops/activation.h's
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
    from . import activation, batchnorm, conv, dropout, gemm, optim, pool, softmax_xent

    for _kernel in (gemm.gemm, gemm.linear_act_forward, gemm.linear_act_backward,
                    activation.act_forward, activation.act_backward,
                    softmax_xent.softmax_xent_forward, softmax_xent.softmax_xent_backward,
                    optim.optim_step, batchnorm.batchnorm_forward, batchnorm.batchnorm_backward,
                    batchnorm.batchnorm_stats, batchnorm.batchnorm_gather_stats, batchnorm.batchnorm_elemt,
                    batchnorm.batchnorm_backward_reduce, batchnorm.batchnorm_backward_elemt,
                    dropout.dropout, optim.max_norm, conv.conv2d_forward, conv.conv2d_backward,
                    pool.max_pool2d_forward, pool.max_pool2d_regions_forward, pool.max_pool2d_backward,
                    pool.avg_pool2d_forward, pool.avg_pool2d_backward, pool.global_avg_pool2d_forward,
                    pool.global_avg_pool2d_backward):
        registry.register("numba", _kernel.__name__, _kernel)
    registry.mark_loaded("numba")
