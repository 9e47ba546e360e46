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

import functools

import numpy as np

from ..codes import ACT_CODE
from .activation import act_grad, act_value
from .runtime import JIT, njit, prange, threads_for

# Channels per task when S == 1 (BatchNorm1d): each task walks the rows of its
# block of channels, so memory is read row-contiguously and each channel's sums
# keep one order whatever the thread count (csrc/cpu/batchnorm.cpp kChannelBlock).
_CHANNEL_BLOCK = 128
# Lanes of the per-channel sums when S > 1: element j of a run adds into lane
# j % _LANES, the lanes are summed in order at the end. Independent lanes let
# LLVM vectorize the float64 sums without fastmath (a single running sum is a
# dependency chain it may not reorder), and the order stays fixed.
_LANES = 256


@njit(inline="always", **JIT)
def _lane_total(lanes):
    total = 0.0
    for j in range(lanes.size):
        total += lanes[j]
    return total


@njit(parallel=True, **JIT)
def _bn_moments(x3, shift, s1, s2):
    """Per-channel sums of (x - shift) and (x - shift)^2 in float64, x3 (N, C, S)."""
    n, c, s = x3.shape
    if s == 1:
        x2 = x3.reshape(n, c)
        nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
        for b in prange(nb):
            c0 = b * _CHANNEL_BLOCK
            c1 = min(c, c0 + _CHANNEL_BLOCK)
            k = shift[c0:c1]
            a1 = np.zeros(c1 - c0)
            a2 = np.zeros(c1 - c0)
            for i in range(n):
                row = x2[i, c0:c1]
                for j in range(c1 - c0):
                    d = np.float64(row[j] - k[j])
                    a1[j] += d
                    a2[j] += d * d
            s1[c0:c1] = a1
            s2[c0:c1] = a2
    else:
        for ch in prange(c):
            k = shift[ch]
            a1 = np.zeros(_LANES)
            a2 = np.zeros(_LANES)
            for i in range(n):
                run = x3[i, ch]
                for j0 in range(0, s, _LANES):
                    for j in range(min(_LANES, s - j0)):
                        d = np.float64(run[j0 + j] - k)
                        a1[j] += d
                        a2[j] += d * d
            s1[ch] = _lane_total(a1)
            s2[ch] = _lane_total(a2)


@functools.cache
def _bn_kernels(code):
    """(normalize, backward_sums, dx) compiled for one activation code as a
    constant, as csrc/cpu/batchnorm.cpp's visit_act picks one template instance:
    no per-element branch on the code, so the loops vectorize. T is the array
    dtype; each formula is evaluated in T as in csrc/ops/batchnorm.h."""

    @njit(parallel=True, **JIT)
    def normalize(x3, y3, mean, scale, beta, alpha):
        """y = act(batchnorm_affine(x)) = act(((x - hi) - lo) * scale + beta)."""
        n, c, s = x3.shape
        T = x3.dtype.type
        if s == 1:
            x2 = x3.reshape(n, c)
            y2 = y3.reshape(n, c)
            for i in prange(n):
                x = x2[i]
                y = y2[i]
                for ch in range(c):
                    y[ch] = T(act_value(((x[ch] - mean[0, ch]) - mean[1, ch]) * scale[ch] + beta[ch], code, alpha))
        else:
            x2 = x3.reshape(n * c, s)
            y2 = y3.reshape(n * c, s)
            for r in prange(n * c):
                ch = r % c
                m, lo, sc, b = mean[0, ch], mean[1, ch], scale[ch], beta[ch]
                x = x2[r]
                y = y2[r]
                for j in range(s):
                    y[j] = T(act_value(((x[j] - m) - lo) * sc + b, code, alpha))

    @njit(parallel=True, **JIT)
    def backward_sums(dy3, x3, y3, mean, alpha, s1, s2):
        """Per channel, in float64: sum dz and sum dz * (x - mean), dz = dy * act'(y)."""
        n, c, s = x3.shape
        T = x3.dtype.type
        if s == 1:
            dy2, x2, y2 = dy3.reshape(n, c), x3.reshape(n, c), y3.reshape(n, c)
            nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
            for b in prange(nb):
                c0 = b * _CHANNEL_BLOCK
                c1 = min(c, c0 + _CHANNEL_BLOCK)
                hi = mean[0, c0:c1]
                lo = mean[1, c0:c1]
                a1 = np.zeros(c1 - c0)
                a2 = np.zeros(c1 - c0)
                for i in range(n):
                    dy, x, y = dy2[i, c0:c1], x2[i, c0:c1], y2[i, c0:c1]
                    for j in range(c1 - c0):
                        dz = dy[j] * T(act_grad(T(0), y[j], code, alpha))
                        a1[j] += dz
                        a2[j] += np.float64(dz) * np.float64((x[j] - hi[j]) - lo[j])
                s1[c0:c1] = a1
                s2[c0:c1] = a2
        else:
            for ch in prange(c):
                m = mean[0, ch]
                lo = mean[1, ch]
                a1 = np.zeros(_LANES)
                a2 = np.zeros(_LANES)
                for i in range(n):
                    dy, x, y = dy3[i, ch], x3[i, ch], y3[i, ch]
                    for j0 in range(0, s, _LANES):
                        for j in range(min(_LANES, s - j0)):
                            dz = dy[j0 + j] * T(act_grad(T(0), y[j0 + j], code, alpha))
                            a1[j] += dz
                            a2[j] += np.float64(dz) * np.float64((x[j0 + j] - m) - lo)
                s1[ch] = _lane_total(a1)
                s2[ch] = _lane_total(a2)

    @njit(parallel=True, **JIT)
    def dx(dy3, x3, y3, mean, invstd, scale, mean_dz, mean_dz_xhat, alpha, dx3):
        """dx = batchnorm_dx(dz, xhat) = scale * (dz - mean_dz - xhat * mean_dz_xhat)."""
        n, c, s = x3.shape
        T = x3.dtype.type
        if s == 1:
            dy2, x2, y2, dx2 = dy3.reshape(n, c), x3.reshape(n, c), y3.reshape(n, c), dx3.reshape(n, c)
            for i in prange(n):
                dy, x, y, out = dy2[i], x2[i], y2[i], dx2[i]
                for ch in range(c):
                    dz = dy[ch] * T(act_grad(T(0), y[ch], code, alpha))
                    xhat = ((x[ch] - mean[0, ch]) - mean[1, ch]) * invstd[ch]
                    out[ch] = scale[ch] * (dz - mean_dz[ch] - xhat * mean_dz_xhat[ch])
        else:
            dy2, x2, y2, dx2 = (dy3.reshape(n * c, s), x3.reshape(n * c, s), y3.reshape(n * c, s),
                                dx3.reshape(n * c, s))
            for r in prange(n * c):
                ch = r % c
                m, lo, inv, sc = mean[0, ch], mean[1, ch], invstd[ch], scale[ch]
                mdz, mdx = mean_dz[ch], mean_dz_xhat[ch]
                dy, x, y, out = dy2[r], x2[r], y2[r], dx2[r]
                for j in range(s):
                    dz = dy[j] * T(act_grad(T(0), y[j], code, alpha))
                    out[j] = sc * (dz - mdz - ((x[j] - m) - lo) * inv * mdx)

    return normalize, backward_sums, dx


def _ncs(x):
    """(N, C, *spatial) viewed as (N, C, S)."""
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, c, -1) if x.size else x.reshape(n, c, 1)


def batchnorm_stats(x, shift, sum, sumsq):
    """Per channel, sum (x - shift) and sum (x - shift)**2 in float64 (the local reduction)."""
    with threads_for(x.size):
        _bn_moments(_ncs(x), shift, sum, sumsq)


def batchnorm_gather_stats(sum, sumsq, count, shift, running_mean, running_var, save_mean, save_invstd,
                           momentum, eps):
    """save_mean (hi + lo), save_invstd and the running statistics from the channel sums
    (batchnorm_mean_var, batchnorm_invstd, batchnorm_update_running)."""
    dt = shift.dtype
    t = dt.type
    m = sum / count
    var = np.maximum(sumsq / count - m * m, 0.0).astype(dt)
    a = shift.astype(np.float64)
    mean64 = a + m
    bb = mean64 - a
    err = (a - (mean64 - bb)) + (m - bb)          # TwoSum, as in csrc/ops/batchnorm.h
    save_mean[0] = mean64
    save_mean[1] = (mean64 - save_mean[0].astype(np.float64)) + err
    save_invstd[...] = t(1) / np.sqrt(var + t(eps))
    if running_mean is not None and running_var is not None:
        mean = save_mean[0] + save_mean[1]
        unbiased = (var.astype(np.float64) * count / (count - 1.0)).astype(dt) if count > 1 else var
        running_mean[...] = (t(1) - t(momentum)) * running_mean + t(momentum) * mean
        running_var[...] = (t(1) - t(momentum)) * running_var + t(momentum) * unbiased


def batchnorm_elemt(x, gamma, beta, save_mean, save_invstd, y, act, alpha):
    """y = act(((x - hi) - lo) * invstd * gamma + beta)."""
    c = x.shape[1]
    scale = save_invstd * (gamma if gamma is not None else x.dtype.type(1))
    b = beta if beta is not None else np.zeros(c, x.dtype)
    with threads_for(x.size):
        _bn_kernels(act)[0](_ncs(x), _ncs(y), save_mean, scale.astype(x.dtype), b, alpha)


def _grad_source(dy3, y, act):
    return _ncs(y) if (y is not None and act != ACT_CODE["identity"]) else dy3


def batchnorm_backward_reduce(dy, x, y, save_mean, save_invstd, sum_dz, sum_dz_xhat, dgamma, dbeta, act, alpha):
    """Per channel, sum dz and sum dz * xhat in float64; dbeta, dgamma (if given) the same in T."""
    dy3 = _ncs(dy)
    with threads_for(x.size):
        _bn_kernels(act)[1](dy3, _ncs(x), _grad_source(dy3, y, act), save_mean, alpha, sum_dz, sum_dz_xhat)
    sum_dz_xhat *= save_invstd.astype(np.float64)
    if dbeta is not None:
        dbeta[...] = sum_dz
    if dgamma is not None:
        dgamma[...] = sum_dz_xhat


def batchnorm_backward_elemt(dy, x, y, gamma, save_mean, save_invstd, mean_dz, mean_dz_xhat, dx, act, alpha):
    """dx = gamma * invstd * (dz - mean_dz - xhat * mean_dz_xhat); mean_dz, mean_dz_xhat None: eval form."""
    dy3 = _ncs(dy)
    c = dy3.shape[1]
    scale = (save_invstd * (gamma if gamma is not None else 1)).astype(x.dtype)
    if mean_dz is not None and mean_dz_xhat is not None:
        mdz, mdx = mean_dz.astype(x.dtype), mean_dz_xhat.astype(x.dtype)
    else:
        mdz = mdx = np.zeros(c, x.dtype)
    with threads_for(x.size):
        _bn_kernels(act)[2](dy3, _ncs(x), _grad_source(dy3, y, act), save_mean, save_invstd, scale, mdz, mdx,
                            alpha, _ncs(dx))


def batchnorm_forward(x, gamma, beta, running_mean, running_var, save_mean, save_invstd, y, training,
                      momentum, eps, act, alpha):
    """batchnorm_stats + batchnorm_gather_stats (train) + batchnorm_elemt, the C++ kernel's passes."""
    c = x.shape[1]
    t = x.dtype.type
    if training:
        shift = _ncs(x)[0, :, 0].copy()
        s1, s2 = np.empty(c), np.empty(c)
        batchnorm_stats(x, shift, s1, s2)
        batchnorm_gather_stats(s1, s2, float(x.size // c), shift, running_mean, running_var, save_mean,
                               save_invstd, momentum, eps)
    else:
        save_mean[0] = running_mean
        save_mean[1] = 0
        save_invstd[...] = t(1) / np.sqrt(running_var + t(eps))
    batchnorm_elemt(x, gamma, beta, save_mean, save_invstd, y, act, alpha)


def batchnorm_backward(dy, x, y, gamma, save_mean, save_invstd, dx, dgamma, dbeta, training, act, alpha):
    """batchnorm_backward_reduce + batchnorm_backward_elemt over this batch."""
    c = x.shape[1]
    s1, s2 = np.empty(c), np.empty(c)
    batchnorm_backward_reduce(dy, x, y, save_mean, save_invstd, s1, s2, dgamma, dbeta, act, alpha)
    if dx is None:
        return
    count = float(x.size // c)
    batchnorm_backward_elemt(dy, x, y, gamma, save_mean, save_invstd, s1 / count if training else None,
                             s2 / count if training else None, dx, act, alpha)
