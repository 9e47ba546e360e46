"""Losses: ``loss.forward(scores, y) -> float`` (mean over the batch) and
``loss.backward() -> dscores``.

Shapes: scores (N, C), y (N,) integer class labels (targets (N, C) for MSE).
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from . import ops


class Loss:
    def __call__(self, scores, y):
        return self.forward(scores, y)

    def expected_initial(self, num_classes: int) -> float | None:
        """The loss of an untrained network with small random weights."""
        return None


class SoftmaxCrossEntropy(Loss):
    """-log softmax(scores)[y], averaged; stable log-sum-exp, fused backward."""

    def __init__(self):
        self._saved = None

    def forward(self, scores, y):
        loss, self._saved = ops.softmax_cross_entropy(scores, y)
        return loss

    def backward(self):
        if self._saved is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
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
