"""GEMM and Linear + activation (csrc/cpu/gemm.cpp; formulas csrc/ops/epilogue.h).

Shapes: x (N, D), weight (D, M), bias (M,), y and z (N, M).
  forward   z = x @ weight + bias,  y = act(z)   (z kept only for the
            activations in codes.SAVES_PREACTIVATION)
  backward  dz = dy * act'(z or y),  dweight = x^T dz,  dbias = column sums of dz,
            dx = dz weight^T,  dalpha (prelu) = sum of dy * z over z <= 0
The matrix products are NumPy's OpenBLAS (runtime.matmul: called single-threaded
from a parallel Numba region, so no OpenBLAS worker is left spinning in the way
of the next kernel; np.matmul where NumPy has another BLAS); the bias + activation
epilogue and the derivative with the bias-gradient reduction are Numba loops
over activation.py's functions, parallel only for large outputs (see
_EPILOGUE_PARALLEL_MIN).
"""
from __future__ import annotations

import functools

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from .activation import PRELU, act_grad, act_value
from .runtime import JIT, matmul, njit, prange, threads_for

# The epilogues run between NumPy matmuls, whose OpenBLAS threads want both
# cores next: as a parallel region, an epilogue leaves libgomp's workers spinning
# (GOMP_SPINCOUNT) in their way. On a 2-core Xeon, Linear+ReLU (256, 1024, 1024)
# fwd+bwd ran 15.2 ms with 2-thread epilogues in a process started on the C++
# backend (spin count 100000) and 6.7 ms with them on one thread (C++ 6.1). So
# they run on one thread below this many elements (a pass of 16 MiB of float32).
_EPILOGUE_PARALLEL_MIN = 1 << 22

# Columns per task of the dz / dbias pass: each task owns its columns' bias sums,
# so the reduction order (and the result) does not depend on the thread count.
_COLUMN_BLOCK = 256


@functools.cache
def _epilogue_kernels(code):
    """(bias_act_rows, dz_and_bias_grad) compiled for one activation code as a
    constant, as csrc/cpu/gemm.cpp's visit_act picks one template instance. With
    the code a runtime argument every element went through act_value's /
    act_grad's switch and 2-D indexing with Numba's negative-index wraparound,
    and neither pass vectorized (3 and 7 ms of a 40 ms Linear+ReLU step at
    (256, 1024, 1024)); with it constant, and the loops over contiguous row runs
    from 0, each run vectorizes. Same expressions per element, so the same bits."""

    @njit(parallel=True, **JIT)
    def bias_act_rows(y, z, bias, has_bias, save_z, alpha):
        """y <- act(y + bias) in place, row by row; z <- the pre-activation when kept."""
        n, m = y.shape
        a = alpha
        for i in prange(n):
            yi = y[i]
            if has_bias:
                for j in range(m):
                    yi[j] += bias[j]
            if save_z:
                zi = z[i]
                for j in range(m):
                    zi[j] = yi[j]
            for j in range(m):
                yi[j] = act_value(yi[j], code, a)

    @njit(parallel=True, **JIT)
    def dz_and_bias_grad(dy, y, z, dz, dbias, alpha):
        """dz = dy * act'(.), dbias = column sums (each column's rows in order, in
        the dtype of dy); returns d loss / d alpha (prelu)."""
        n, m = dy.shape
        a = alpha
        nblocks = (m + _COLUMN_BLOCK - 1) // _COLUMN_BLOCK
        alpha_parts = np.zeros(nblocks, np.float64)
        for b in prange(nblocks):
            j0 = b * _COLUMN_BLOCK
            j1 = min(m, j0 + _COLUMN_BLOCK)
            acc = np.zeros(j1 - j0, dy.dtype)
            asum = 0.0
            for i in range(n):
                dyi, yi, zi, dzi = dy[i, j0:j1], y[i, j0:j1], z[i, j0:j1], dz[i, j0:j1]
                for j in range(j1 - j0):
                    d = dyi[j] * act_grad(zi[j], yi[j], code, a)
                    dzi[j] = d
                    acc[j] += d
                if code == PRELU:
                    for j in range(j1 - j0):
                        if not zi[j] > 0:
                            asum += dyi[j] * zi[j]
            for j in range(j1 - j0):
                dbias[j0 + j] = acc[j]
            alpha_parts[b] = asum
        total = 0.0
        for b in range(nblocks):
            total += alpha_parts[b]
        return total

    return bias_act_rows, dz_and_bias_grad


def gemm(a, b, c, trans_a=False, trans_b=False, beta=0.0):
    matmul(a, b, c, trans_a, trans_b, 1.0 if beta else 0.0)


def linear_act_forward(x, weight, bias, y, z, act, alpha):
    matmul(x, weight, y)
    save_z = ACTIVATIONS[act] in SAVES_PREACTIVATION
    with threads_for(y.size, _EPILOGUE_PARALLEL_MIN):
        _epilogue_kernels(act)[0](y, z if save_z else np.empty((0, 0), y.dtype),
                                  bias if bias is not None else np.empty(0, y.dtype), bias is not None, save_z, alpha)


def linear_act_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, act, alpha):
    zz = z if z is not None else y
    db = dbias if dbias is not None else np.empty(dy.shape[1], dy.dtype)
    with threads_for(dy.size, _EPILOGUE_PARALLEL_MIN):
        total = _epilogue_kernels(act)[1](dy, y, zz, dz_work, db, alpha)
    if dalpha is not None:
        dalpha[0] = total
    matmul(x, dz_work, dweight, trans_a=True)
    if dx is not None:
        matmul(dz_work, weight, dx, trans_b=True)
