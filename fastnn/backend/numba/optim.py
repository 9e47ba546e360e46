"""Fused optimizer step and max-norm rescale (csrc/cpu/optim.cpp; update rules
csrc/ops/optim.h).

optim_step: one pass over the flat buffers param, grad, state1, state2 (n,),
split into segments (parameter groups): segment s is [seg_begin[s],
seg_begin[s + 1]) and uses hyper[s], one row of codes.HYPER_FIELDS. Each element
is updated by ``optim_update``, csrc/ops/optim.h's optim_update restated
statement by statement (the rules are PyTorch's torch.optim formulas, listed in
optim.h's header). As in the C++, the row is first cast to the parameter dtype
T (OptimHyper<T>), so float32 parameters are updated in float32 arithmetic.

max_norm: for each matrix k (rows[k], cols[k]) at param[offset[k]:], every
column whose L2 norm exceeds limit[k] is rescaled to norm limit[k] (norms in
float64).
"""
from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy as np

from ..codes import HYPER_FIELDS, RULE_CODE
from .runtime import JIT, njit, prange, threads_for

# csrc/ops/optim.h's OptimHyper<T>: h.lr, h.weight_decay, ..., h.grad_scale.
OptimHyper = namedtuple("OptimHyper", HYPER_FIELDS)

SGD = RULE_CODE["sgd"]
MOMENTUM = RULE_CODE["momentum"]
NESTEROV = RULE_CODE["nesterov"]
ADAGRAD = RULE_CODE["adagrad"]
RMSPROP = RULE_CODE["rmsprop"]
ADAM = RULE_CODE["adam"]
ADAMW = RULE_CODE["adamw"]


@njit(inline="always", **JIT)
def optim_update(p, g, s1, s2, h, rule, T):
    """Mirrors csrc/ops/optim.h optim_update statement by statement: keep the two
    in step. C++ updates p, s1, s2 by reference; here they are returned. T is the
    parameter dtype (the C++ template parameter)."""
    g *= h.grad_scale
    if rule == ADAMW:
        p *= T(1) - h.lr * h.weight_decay
    else:
        g += h.weight_decay * p
    g += h.l1 * (T(p > T(0)) - T(p < T(0)))  # C++'s T((p > 0) - (p < 0)), cast per bool so Numba vectorizes it

    if rule == SGD:
        p -= h.lr * g
    elif rule == MOMENTUM:
        s1 = h.momentum * s1 + g
        p -= h.lr * s1
    elif rule == NESTEROV:
        s1 = h.momentum * s1 + g
        p -= h.lr * (g + h.momentum * s1)
    elif rule == ADAGRAD:
        s1 += g * g
        p -= h.lr * g / (math.sqrt(s1) + h.eps)
    elif rule == RMSPROP:
        s1 = h.alpha * s1 + (T(1) - h.alpha) * g * g
        p -= h.lr * g / (math.sqrt(s1) + h.eps)
    else:  # adam, adamw
        s1 = h.beta1 * s1 + (T(1) - h.beta1) * g
        s2 = h.beta2 * s2 + (T(1) - h.beta2) * g * g
        denom = math.sqrt(s2) / math.sqrt(h.bias_correction2) + h.eps
        p -= (h.lr / h.bias_correction1) * s1 / denom
    return p, s1, s2


@functools.cache
def _optim_loop(rule):
    """csrc/cpu/optim.cpp optim_loop<R>: optim_update over [b, e), compiled with
    the rule as a constant (the C++ template parameter), so no per-element branch
    on it remains; made on a rule's first use (the compiled code is cached on
    disk). s1 / s2 are empty when the rule has no such state (the C++ null
    pointers); each element's unused state then starts at 0 and is dropped."""

    @njit(parallel=True, **JIT)
    def loop(p, g, s1, s2, b, e, h):
        T = p.dtype.type
        if s1.size and s2.size:
            for i in prange(b, e):
                p[i], s1[i], s2[i] = optim_update(p[i], g[i], s1[i], s2[i], h, rule, T)
        elif s1.size:
            for i in prange(b, e):
                p[i], s1[i], _ = optim_update(p[i], g[i], s1[i], T(0), h, rule, T)
        else:
            for i in prange(b, e):
                p[i], _, _ = optim_update(p[i], g[i], T(0), T(0), h, rule, T)

    return loop


@njit(inline="always", **JIT)
def max_norm_scale(norm, max_norm):
    """csrc/ops/optim.h max_norm_scale: the factor bringing a column of L2 norm
    ``norm`` back onto the ball of radius ``max_norm``, 1 inside it (float64)."""
    return max_norm / norm if norm > max_norm else 1.0


@njit(parallel=True, **JIT)
def _max_norm(param, offset, rows, cols, limit):
    for k in prange(offset.shape[0]):
        o, r, c = offset[k], rows[k], cols[k]
        norm = np.zeros(c)
        for i in range(r):
            for j in range(c):
                v = np.float64(param[o + i * c + j])
                norm[j] += v * v
        for j in range(c):
            norm[j] = max_norm_scale(math.sqrt(norm[j]), limit[k])
        for i in range(r):
            for j in range(c):
                param[o + i * c + j] = np.float64(param[o + i * c + j]) * norm[j]


def optim_step(rule, param, grad, state1, state2, seg_begin, hyper):
    """Segment by segment, like csrc/cpu/optim.cpp; the state a rule does not use is not touched."""
    t = param.dtype.type
    needs1 = rule != SGD
    needs2 = rule == ADAM or rule == ADAMW
    s1 = state1 if needs1 and state1 is not None else param[:0]
    s2 = state2 if needs2 and state2 is not None else param[:0]
    with threads_for(param.size):
        for s in range(hyper.shape[0]):
            b, e = int(seg_begin[s]), int(seg_begin[s + 1])
            if e <= b:
                continue
            h = OptimHyper(*(t(v) for v in hyper[s]))
            _optim_loop(rule)(param, grad, s1, s2, b, e, h)


def max_norm(param, offset, rows, cols, limit):
    with threads_for(param.size):
        _max_norm(param, offset, rows, cols, limit)
