"""Batch normalization with a fused activation (csrc/cpu/batchnorm.cpp; formulas
csrc/ops/batchnorm.h, whose header gives them in full).

Shapes: x, y, dy, dx (N, C, S) (S = H*W; 1 for BatchNorm1d on (N, C)); gamma,
beta, running_mean, running_var, save_invstd (C,); save_mean (2, C) the mean as
hi + lo rows. Statistics per channel over the m = N*S values, accumulated in
float64 as sums shifted by one sample of the channel; normalization
y = act(((x - hi) - lo) * invstd * gamma + beta); backward with dz = dy * act'(y)
  dbeta = sum dz,  dgamma = sum dz * xhat,  dx = gamma * invstd * (dz - dbeta/m - xhat * dgamma/m).
Only activations whose derivative reads y are fused (ops.batchnorm checks).
"""
from __future__ import annotations

import numpy as np

from ..codes import ACT_CODE
from .activation import act_grad, act_value
from .runtime import JIT, njit, prange, threads_for

# Channels per task when S == 1 (BatchNorm1d): each task walks the rows of its
# block of channels, so memory is read row-contiguously and each channel's sums
# keep one order whatever the thread count.
_CHANNEL_BLOCK = 128


@njit(parallel=True, **JIT)
def _bn_moments(x3, shift, s1, s2):
    """Per-channel sums of (x - shift) and (x - shift)^2 in float64, x3 (N, C, S)."""
    n, c, s = x3.shape
    if s == 1:
        nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
        for b in prange(nb):
            c0 = b * _CHANNEL_BLOCK
            c1 = min(c, c0 + _CHANNEL_BLOCK)
            a1 = np.zeros(c1 - c0)
            a2 = np.zeros(c1 - c0)
            for i in range(n):
                for ch in range(c0, c1):
                    d = np.float64(x3[i, ch, 0] - shift[ch])
                    a1[ch - c0] += d
                    a2[ch - c0] += d * d
            s1[c0:c1] = a1
            s2[c0:c1] = a2
    else:
        for ch in prange(c):
            k = shift[ch]
            a1 = 0.0
            a2 = 0.0
            for i in range(n):
                for j in range(s):
                    d = np.float64(x3[i, ch, j] - k)
                    a1 += d
                    a2 += d * d
            s1[ch] = a1
            s2[ch] = a2


@njit(parallel=True, **JIT)
def _bn_normalize(x3, y3, mean, scale, beta, code, alpha):
    n, c, s = x3.shape
    for r in prange(n * c):
        i = r // c
        ch = r % c
        m, lo, sc, b = mean[0, ch], mean[1, ch], scale[ch], beta[ch]
        for j in range(s):
            y3[i, ch, j] = act_value(((x3[i, ch, j] - m) - lo) * sc + b, code, alpha)


@njit(parallel=True, **JIT)
def _bn_backward_sums(dy3, x3, y3, mean, code, alpha, s1, s2):
    n, c, s = x3.shape
    if s == 1:
        nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
        for b in prange(nb):
            c0 = b * _CHANNEL_BLOCK
            c1 = min(c, c0 + _CHANNEL_BLOCK)
            a1 = np.zeros(c1 - c0)
            a2 = np.zeros(c1 - c0)
            for i in range(n):
                for ch in range(c0, c1):
                    dz = dy3[i, ch, 0] * act_grad(0.0, y3[i, ch, 0], code, alpha)
                    a1[ch - c0] += dz
                    a2[ch - c0] += dz * np.float64((x3[i, ch, 0] - mean[0, ch]) - mean[1, ch])
            s1[c0:c1] = a1
            s2[c0:c1] = a2
    else:
        for ch in prange(c):
            m = mean[0, ch]
            lo = mean[1, ch]
            a1 = 0.0
            a2 = 0.0
            for i in range(n):
                for j in range(s):
                    dz = dy3[i, ch, j] * act_grad(0.0, y3[i, ch, j], code, alpha)
                    a1 += dz
                    a2 += dz * np.float64((x3[i, ch, j] - m) - lo)
            s1[ch] = a1
            s2[ch] = a2


@njit(parallel=True, **JIT)
def _bn_dx(dy3, x3, y3, mean, invstd, scale, mean_dz, mean_dz_xhat, code, alpha, dx3):
    n, c, s = x3.shape
    for r in prange(n * c):
        i = r // c
        ch = r % c
        for j in range(s):
            dz = dy3[i, ch, j] * act_grad(0.0, y3[i, ch, j], code, alpha)
            xhat = ((x3[i, ch, j] - mean[0, ch]) - mean[1, ch]) * invstd[ch]
            dx3[i, ch, j] = scale[ch] * (dz - mean_dz[ch] - xhat * mean_dz_xhat[ch])


def _ncs(x):
    """(N, C, *spatial) viewed as (N, C, S)."""
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, c, -1) if x.size else x.reshape(n, c, 1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, save_mean, save_invstd, y, training,
                      momentum, eps, act, alpha):
    x3, y3 = _ncs(x), _ncs(y)
    n, c, s = x3.shape
    count = float(n) * float(s)
    t = x.dtype.type
    if training:
        shift = x3[0, :, 0].copy()
        s1, s2 = np.empty(c), np.empty(c)
        with threads_for(x.size):
            _bn_moments(x3, shift, s1, s2)
        m = s1 / count
        var = np.maximum(s2 / count - m * m, 0.0).astype(x.dtype)
        a = shift.astype(np.float64)
        mean64 = a + m
        bb = mean64 - a
        err = (a - (mean64 - bb)) + (m - bb)          # TwoSum, as in csrc/ops/batchnorm.h
        save_mean[0] = mean64
        save_mean[1] = (mean64 - save_mean[0].astype(np.float64)) + err
        mean = save_mean[0] + save_mean[1]
        save_invstd[...] = t(1) / np.sqrt(var + t(eps))
        if running_mean is not None and running_var is not None:
            unbiased = (var.astype(np.float64) * count / (count - 1.0)).astype(x.dtype) if count > 1 else var
            running_mean[...] = (t(1) - t(momentum)) * running_mean + t(momentum) * mean
            running_var[...] = (t(1) - t(momentum)) * running_var + t(momentum) * unbiased
    else:
        save_mean[0] = running_mean
        save_mean[1] = 0
        save_invstd[...] = t(1) / np.sqrt(running_var + t(eps))
    scale = save_invstd * (gamma if gamma is not None else t(1))
    b = beta if beta is not None else np.zeros(c, x.dtype)
    with threads_for(x.size):
        _bn_normalize(x3, y3, save_mean, scale.astype(x.dtype), b, act, alpha)


def batchnorm_backward(dy, x, y, gamma, save_mean, save_invstd, dx, dgamma, dbeta, training, act, alpha):
    dy3, x3 = _ncs(dy), _ncs(x)
    y3 = _ncs(y) if (y is not None and act != ACT_CODE["identity"]) else dy3
    n, c, s = x3.shape
    count = float(n) * float(s)
    s1, s2 = np.empty(c), np.empty(c)
    with threads_for(x.size):
        _bn_backward_sums(dy3, x3, y3, save_mean, act, alpha, s1, s2)
    inv = save_invstd.astype(np.float64)
    if dbeta is not None:
        dbeta[...] = s1
    if dgamma is not None:
        dgamma[...] = s2 * inv
    if dx is None:
        return
    scale = (save_invstd * (gamma if gamma is not None else 1)).astype(x.dtype)
    if training:
        mean_dz = (s1 / count).astype(x.dtype)
        mean_dz_xhat = (s2 * inv / count).astype(x.dtype)
    else:
        mean_dz = mean_dz_xhat = np.zeros(c, x.dtype)
    with threads_for(x.size):
        _bn_dx(dy3, x3, y3, save_mean, save_invstd, scale, mean_dz, mean_dz_xhat, act, alpha, _ncs(dx))
