"""Softmax cross-entropy (csrc/cpu/softmax_xent.cpp; formula csrc/ops/softmax.h).

Shapes: scores and probs (N, C); hard labels (N,) int64, or soft targets (N, C)
(distributions), or neither (probs only).
  forward   probs = softmax(scores) per row (max-shifted), lse = log(sum exp(scores - max));
            loss = mean over rows of lse - (scores[label] - max)  (hard)
                   or of -sum_k t_k (scores[k] - max - lse), t_k = 0 terms skipped  (soft)
  backward  dscores = (probs - onehot(label) or t) * scale  (scale = dloss / N)
"""
from __future__ import annotations

import math

import numpy as np

from .runtime import JIT, njit, prange, threads_for

_PROBS, _HARD, _SOFT = 0, 1, 2


@njit(parallel=True, **JIT)
def _softmax_xent_forward(scores, labels, targets, probs, kind):
    n, c = scores.shape
    losses = np.empty(n, np.float64)
    for i in prange(n):
        mx = scores[i, 0]
        for j in range(1, c):
            mx = max(mx, scores[i, j])
        s = 0.0
        for j in range(c):
            e = math.exp(scores[i, j] - mx)
            probs[i, j] = e
            s += e
        inv = 1 / s
        for j in range(c):
            probs[i, j] *= inv
        lse = math.log(s)
        if kind == _HARD:
            losses[i] = lse - (scores[i, labels[i]] - mx)
        elif kind == _SOFT:
            loss = 0.0
            for j in range(c):
                if targets[i, j] != 0:
                    loss -= targets[i, j] * (scores[i, j] - mx - lse)
            losses[i] = loss
        else:
            losses[i] = 0.0
    # Summed in row order, so that the loss does not depend on the thread count.
    total = 0.0
    for i in range(n):
        total += losses[i]
    return total / n if n > 0 else 0.0


@njit(parallel=True, **JIT)
def _softmax_xent_backward(probs, labels, targets, dscores, scale, kind):
    n, c = probs.shape
    s = scale
    for i in prange(n):
        if kind == _HARD:
            for j in range(c):
                dscores[i, j] = probs[i, j] * s
            dscores[i, labels[i]] -= s
        else:
            for j in range(c):
                dscores[i, j] = (probs[i, j] - targets[i, j]) * s


def _kind(labels, targets, probs):
    """(kind, labels, targets) with typed stand-ins for the absent ones."""
    if labels is not None and targets is not None:
        raise ValueError("give labels or targets, not both")
    if labels is not None:
        return _HARD, labels, probs[:0]
    if targets is not None:
        return _SOFT, np.zeros(1, np.int64), targets
    return _PROBS, np.zeros(1, np.int64), probs[:0]


def softmax_xent_forward(scores, labels, targets, probs):
    kind, labels, targets = _kind(labels, targets, probs)
    with threads_for(scores.size):
        return float(_softmax_xent_forward(scores, labels, targets, probs, kind))


def softmax_xent_backward(probs, labels, targets, dscores, scale):
    if labels is None and targets is None:
        raise ValueError("labels or targets is required")
    kind, labels, targets = _kind(labels, targets, probs)
    with threads_for(probs.size):
        _softmax_xent_backward(probs, labels, targets, dscores, scale, kind)
