"""Losses: ``loss.forward(scores, y) -> float`` (mean over the batch) and
``loss.backward() -> dscores``.

Shapes: scores (N, C), y (N,) integer class labels (targets (N, C) for MSE;
``SoftmaxCrossEntropy`` also takes a float (N, C) target distribution, e.g. from
``fastnn.augment.Mixup`` or label smoothing).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import _validate as V
from . import ops


class Loss:
    def __call__(self, scores, y):
        return self.forward(scores, y)

    def expected_initial(self, num_classes: int) -> float | None:
        """The loss of an untrained network with small random weights."""
        return None


class SoftTargetSaved(NamedTuple):
    probs: np.ndarray    # (N, C) softmax of the scores
    target: np.ndarray   # (N, C) target distribution, rows sum to 1


def _soft_cross_entropy(scores, target):
    """-sum_c t_c log softmax(s)_c, mean over N; NumPy (the fused kernel takes integer labels)."""
    V.float_array(scores, "scores", ndim=2, contiguous=False)
    n, c = scores.shape
    if target.ndim != 2 or target.shape != scores.shape:
        raise ValueError(f"soft targets y must have the shape of scores ({n}, {c}), got {tuple(target.shape)}")
    V.finite(target, "y")
    if n and (target.min() < 0 or np.abs(target.sum(axis=1, dtype=np.float64) - 1.0).max() > 1e-3):
        raise ValueError("soft targets y must be distributions: non-negative rows that sum to 1")
    shifted = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = float(-(target * log_probs).sum() / max(n, 1))
    probs = np.exp(log_probs).astype(scores.dtype)
    return loss, SoftTargetSaved(probs, np.ascontiguousarray(target, dtype=scores.dtype))


class SoftmaxCrossEntropy(Loss):
    """-log softmax(scores)[y], averaged; stable log-sum-exp, fused backward.

    y: integer labels (N,) (the fused kernel), or a float target distribution
    (N, C): loss -sum_c y_c log softmax(s)_c averaged, dscores (softmax - y)/N."""

    def __init__(self):
        self._saved = None

    def forward(self, scores, y):
        if getattr(y, "dtype", None) is not None and y.dtype.kind == "f":
            loss, self._saved = _soft_cross_entropy(scores, y)
        else:
            loss, self._saved = ops.softmax_cross_entropy(scores, y)
        return loss

    def backward(self):
        if self._saved is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        if isinstance(self._saved, SoftTargetSaved):
            n = self._saved.probs.shape[0]
            return (self._saved.probs - self._saved.target) / self._saved.probs.dtype.type(max(n, 1))
        return ops.softmax_cross_entropy_backward(self._saved)

    @property
    def probs(self):
        return None if self._saved is None else self._saved.probs

    def expected_initial(self, num_classes: int) -> float:
        return math.log(num_classes)


class MulticlassHinge(Loss):
    """The multiclass SVM loss sum_{j != y} max(0, s_j - s_y + margin), averaged."""

    def __init__(self, margin=1.0):
        self.margin = V.real(margin, "margin", low=0.0)
        self._saved = None

    def forward(self, scores, y):
        V.float_array(scores, "scores", ndim=2, contiguous=False)
        n, c = scores.shape
        y = V.labels(y, "y", n, c)
        rows = np.arange(n)
        margins = np.maximum(0.0, scores - scores[rows, y][:, None] + self.margin)
        margins[rows, y] = 0.0
        self._saved = (margins, y, scores.dtype)
        return float(margins.sum() / max(n, 1))

    def backward(self):
        if self._saved is None:
            raise RuntimeError("MulticlassHinge.backward called before forward")
        margins, y, dtype = self._saved
        n = margins.shape[0]
        d = (margins > 0).astype(dtype)
        d[np.arange(n), y] = -d.sum(axis=1)
        return d / max(n, 1)

    def expected_initial(self, num_classes: int) -> float:
        return (num_classes - 1) * self.margin


class MSE(Loss):
    """Mean squared error over all elements (PyTorch's MSELoss, reduction="mean")."""

    def __init__(self):
        self._saved = None

    def forward(self, scores, target):
        V.float_array(scores, "scores", contiguous=False)
        target = np.asarray(target, dtype=scores.dtype)
        if target.shape != scores.shape:
            if target.ndim == 1 and scores.ndim == 2 and scores.shape[1] == 1 and target.shape[0] == scores.shape[0]:
                target = target[:, None]
            else:
                raise ValueError(f"target must have the shape of scores {scores.shape}, got {target.shape}")
        diff = scores - target
        self._saved = diff
        return float(np.mean(diff.astype(np.float64) ** 2)) if diff.size else 0.0

    def backward(self):
        if self._saved is None:
            raise RuntimeError("MSE.backward called before forward")
        return (2.0 / max(self._saved.size, 1)) * self._saved
