"""Softmax cross-entropy (csrc/cpu/softmax_xent.cpp; formula csrc/ops/softmax.h).

Shapes: scores and probs (N, C), labels (N,) int64.
  forward   probs = softmax(scores) per row (max-shifted), loss = mean over rows
            of log(sum exp(scores - max)) - (scores[label] - max)
  backward  dscores = probs * scale - scale * onehot(label)  (scale = dloss / N)
"""
from __future__ import annotations

import math

import numpy as np

from .runtime import JIT, njit, prange, threads_for


@njit(parallel=True, **JIT)
def _softmax_xent_forward(scores, labels, probs):
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
        losses[i] = math.log(s) - (scores[i, labels[i]] - mx)
    # Summed in row order, so that the loss does not depend on the thread count.
    total = 0.0
    for i in range(n):
        total += losses[i]
    return total / n if n > 0 else 0.0


@njit(parallel=True, **JIT)
def _softmax_xent_backward(probs, labels, dscores, scale):
    n, c = probs.shape
    s = scale
    for i in prange(n):
        for j in range(c):
            dscores[i, j] = probs[i, j] * s
        dscores[i, labels[i]] -= s


def softmax_xent_forward(scores, labels, probs):
    with threads_for(scores.size):
        return float(_softmax_xent_forward(scores, labels, probs))


def softmax_xent_backward(probs, labels, dscores, scale):
    with threads_for(probs.size):
        _softmax_xent_backward(probs, labels, dscores, scale)
