"""Activation functions and their derivatives, per element, and the standalone
activation kernels (csrc/ops/activation.h; csrc/cpu's act_forward/act_backward).

``act_value(z, code, alpha)`` is activation.h's ``forward(z, alpha)`` and
``act_grad(z, y, code, alpha)`` its ``grad(z, y, alpha)``: dy/dz from the output
y, or from the pre-activation z for the activations that keep it
(codes.SAVES_PREACTIVATION). ``code`` is the Act enum value (codes.ACT_CODE);
the fused epilogues of gemm.py, batchnorm.py and conv.py call the same two
functions. Conventions are activation.h's (PyTorch's): relu'(0) = 0, gelu the
erf form, gelu_tanh Hendrycks & Gimpel's tanh approximation, selu constants from
Klambauer et al. (2017), swish = z * sigmoid(z).

act_forward: y = act(x); act_backward: dx = dy * act'(x or y) and, for prelu,
d loss / d alpha = sum of dy * x where x <= 0; x, y, dx, dy of any shape.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..codes import ACT_CODE
from .runtime import JIT, njit, prange, threads_for

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
IDENTITY = ACT_CODE["identity"]
RELU = ACT_CODE["relu"]
LEAKY_RELU = ACT_CODE["leaky_relu"]
PRELU = ACT_CODE["prelu"]
ELU = ACT_CODE["elu"]
SELU = ACT_CODE["selu"]
SIGMOID = ACT_CODE["sigmoid"]
TANH = ACT_CODE["tanh"]
GELU = ACT_CODE["gelu"]
GELU_TANH = ACT_CODE["gelu_tanh"]
SWISH = ACT_CODE["swish"]

# Elements per block of act_backward's prelu reduction: fixed, so that the sum
# (and d loss / d alpha) does not depend on the thread count.
_REDUCE_BLOCK = 4096


@njit(inline="always", **JIT)
def sigmoid(z):
    """Stable on both sides: never exponentiates a large positive number."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@njit(inline="always", **JIT)
def mul_vanishing(a, s):
    """a * s, 0 once the vanishing factor s is 0 (no inf * 0 = NaN)."""
    return s * 0.0 if s == 0 else a * s


@njit(inline="always", **JIT)
def act_value(z, code, a):
    """activation.h forward(z, alpha)."""
    if code == RELU:
        return 0.0 if z < 0 else z   # NaN and -0 pass through, as activation.h
    if code == LEAKY_RELU or code == PRELU:
        return z if z > 0 else a * z
    if code == ELU:
        return z if z > 0 else a * math.expm1(z)
    if code == SELU:
        return SELU_SCALE * z if z > 0 else (SELU_SCALE * SELU_ALPHA) * math.expm1(z)
    if code == SIGMOID:
        return sigmoid(z)
    if code == TANH:
        return math.tanh(z)
    if code == GELU:
        return mul_vanishing(0.5 * z, 1.0 + math.erf(z * 0.70710678118654752440))
    if code == GELU_TANH:
        u = 0.79788456080286535588 * (z + 0.044715 * z * z * z)
        return mul_vanishing(0.5 * z, 1.0 + math.tanh(u))
    if code == SWISH:
        return mul_vanishing(z, sigmoid(z))
    return z


@njit(inline="always", **JIT)
def act_grad(z, y, code, a):
    """activation.h grad(z, y, alpha): dy/dz from y, or z where it was kept."""
    if code == RELU:
        return 1.0 if y > 0 else 0.0
    if code == LEAKY_RELU:
        return 1.0 if y > 0 else a
    if code == PRELU:
        return 1.0 if z > 0 else a
    if code == ELU:
        return 1.0 if y > 0 else y + a
    if code == SELU:
        return SELU_SCALE if y > 0 else y + SELU_SCALE * SELU_ALPHA
    if code == SIGMOID:
        return y * (1.0 - y)
    if code == TANH:
        return 1.0 - y * y
    if code == GELU:
        cdf = 0.5 * (1.0 + math.erf(z * 0.70710678118654752440))
        return cdf + mul_vanishing(z, 0.39894228040143267794 * math.exp(-0.5 * z * z))
    if code == GELU_TANH:
        u = 0.79788456080286535588 * (z + 0.044715 * z * z * z)
        t = math.tanh(u)
        du = 0.79788456080286535588 * (1.0 + 3 * 0.044715 * z * z)
        return 0.5 * (1.0 + t) + mul_vanishing(0.5 * z * du, 1.0 - t * t)
    if code == SWISH:
        s = sigmoid(z)
        return mul_vanishing(1.0 + mul_vanishing(z, 1.0 - s), s)
    return 1.0


@functools.cache
def _act_kernels(code):
    """(forward, backward) over flat arrays, compiled for one activation code as a
    constant, as csrc/'s visit_act switch picks one template instance: the
    per-element branch on the code is gone and the loops vectorize. Made on a
    code's first use (the compiled code is cached on disk)."""

    @njit(parallel=True, **JIT)
    def forward(x, y, alpha):
        a = alpha
        for i in prange(x.size):
            y[i] = act_value(x[i], code, a)

    @njit(parallel=True, **JIT)
    def backward(dy, x, y, dx, alpha):
        """dx = dy * act'(x, y); for prelu, returns the sum of dy * x over x <= 0,
        summed per fixed block and then in block order."""
        a = alpha
        n = dy.size
        if code != PRELU:
            for i in prange(n):
                dx[i] = dy[i] * act_grad(x[i], y[i], code, a)
            return 0.0
        nblocks = (n + _REDUCE_BLOCK - 1) // _REDUCE_BLOCK
        alpha_parts = np.zeros(nblocks, np.float64)
        for b in prange(nblocks):
            asum = 0.0
            for i in range(b * _REDUCE_BLOCK, min(n, (b + 1) * _REDUCE_BLOCK)):
                dx[i] = dy[i] * act_grad(x[i], y[i], code, a)
                asum += dy[i] * x[i] if not x[i] > 0 else 0.0
            alpha_parts[b] = asum
        total = 0.0
        for b in range(nblocks):
            total += alpha_parts[b]
        return total

    return forward, backward


def act_forward(x, y, act, alpha):
    with threads_for(x.size):
        _act_kernels(act)[0](x.reshape(-1), y.reshape(-1), alpha)


def act_backward(dy, x, y, dx, dalpha, act, alpha):
    with threads_for(dy.size):
        total = _act_kernels(act)[1](dy.reshape(-1), x.reshape(-1), y.reshape(-1), dx.reshape(-1), alpha)
    if dalpha is not None:
        dalpha[0] = total
