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
    # C++'s T((p > 0) - (p < 0)) (0 for NaN) as selects: with 512-bit vectors the
    # bool-to-float casts of the earlier T(p > 0) - T(p < 0) made the Adam step
    # 1.6x slower (9.8 against 6.1 ms for 10M float32); the selects vectorize at both widths.
    g += h.l1 * (T(1) if p > T(0) else (T(-1) if p < T(0) else T(0)))

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


# Elements per task of an optimizer step's one parallel region.
_CHUNK = 1 << 14

assert len(HYPER_FIELDS) == 11, "hyper_row lists the 11 fields of OptimHyper"


@njit(inline="always", **JIT)
def hyper_row(table, s):
    """Row s of the hyperparameter table (already cast to the parameter dtype T,
    as the C++ binding fills OptimHyper<T>) as an OptimHyper, fields in HYPER_FIELDS order."""
    r = table[s]
    return OptimHyper(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


@functools.cache
def _optim_loop(rule):
    """csrc/cpu/optim.cpp optim_loop<R>: optim_update on every element, compiled
    with the rule as a constant (the C++ template parameter), so no per-element
    branch on it remains; made on a rule's first use (the compiled code is cached
    on disk). s1 / s2 are empty when the rule has no such state (the C++ null
    pointers); each element's unused state then starts at 0 and is dropped."""

    @njit(parallel=True, **JIT)
    def loop(p, g, s1, s2, seg_begin, table):
        """One parallel region for the whole step: fixed chunks of the flat
        buffer, each updated segment piece by segment piece with its segment's
        row. (The C++ opens a region per segment; a Numba region costs far more
        to open -- 20 segments made the step 3-8x slower on a loaded machine --
        and every element gets the same update either way.)

        Each piece is the body of the C++'s `omp parallel for simd`, indexed by
        an unsigned k: with a signed index Numba emits its negative-index
        wraparound (k < 0 ? k + size : k) on every access, which LLVM cannot
        drop when the start is a runtime value, and the loop stayed scalar
        (vmovss / vmulss, one element per iteration); unsigned, it vectorizes.
        Same operations per element, so the same bits. (The pieces are inline:
        a jitted helper captured here would make the on-disk cache miss in
        every new process.)"""
        T = p.dtype.type
        n = seg_begin[seg_begin.size - 1]
        for c in prange((n + _CHUNK - 1) // _CHUNK):
            b = c * _CHUNK
            end = min(n, b + _CHUNK)
            s = np.searchsorted(seg_begin, b, side="right") - 1   # the segment holding element b
            while b < end:
                e = min(end, seg_begin[s + 1])
                h = hyper_row(table, s)
                if s1.size and s2.size:
                    for i in range(b, e):
                        k = np.uint64(i)
                        p[k], s1[k], s2[k] = optim_update(p[k], g[k], s1[k], s2[k], h, rule, T)
                elif s1.size:
                    for i in range(b, e):
                        k = np.uint64(i)
                        p[k], s1[k], _ = optim_update(p[k], g[k], s1[k], T(0), h, rule, T)
                else:
                    for i in range(b, e):
                        k = np.uint64(i)
                        p[k], _, _ = optim_update(p[k], g[k], T(0), T(0), h, rule, T)
                b = e
                s += 1

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
    """Every segment with its row of hyper, like csrc/cpu/optim.cpp (in one parallel
    region, see _optim_loop); the state a rule does not use is not touched."""
    t = param.dtype.type
    needs1 = rule != SGD
    needs2 = rule == ADAM or rule == ADAMW
    s1 = state1 if needs1 and state1 is not None else param[:0]
    s2 = state2 if needs2 and state2 is not None else param[:0]
    if hyper.ndim != 2 or hyper.shape[1] != len(HYPER_FIELDS):
        raise ValueError(f"hyper must have shape (segments, {len(HYPER_FIELDS)}), got {hyper.shape}")
    segments = hyper.shape[0]
    if seg_begin.shape != (segments + 1,):
        raise ValueError(f"seg_begin must have shape ({segments + 1},) (one more than hyper's rows), "
                         f"got {seg_begin.shape}")
    if seg_begin[0] != 0 or seg_begin[-1] != param.size or np.any(np.diff(seg_begin) < 0):
        # Memory safety (the C++ binding's check): Numba does not bound-check.
        raise ValueError(f"seg_begin must be non-decreasing from 0 to len(param) = {param.size}, "
                         f"got {seg_begin.tolist() if seg_begin.size <= 8 else seg_begin}")
    with threads_for(param.size):
        _optim_loop(rule)(param, grad, s1, s2, np.ascontiguousarray(seg_begin, np.int64),
                          np.ascontiguousarray(hyper, t))   # OptimHyper<T>: the row cast to T


def max_norm(param, offset, rows, cols, limit):
    with threads_for(param.size):
        _max_norm(param, offset, rows, cols, limit)
