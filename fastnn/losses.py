"""Losses: ``loss.forward(scores, y) -> float`` (mean over the batch) and
``loss.backward() -> dscores``.

Shapes: scores (N, C), y (N,) integer class labels (whole floats such as 2.0
are taken as labels too; targets (N, C) for MSE). ``SoftmaxCrossEntropy`` also
takes (N, C) class probabilities: one-hot rows, or soft targets from
``fastnn.augment.Mixup`` or label smoothing. ``loss.check_targets(y,
num_classes)`` validates a whole data set's targets up front (Trainer does).
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from . import ops
from .backend import cuda


def _is_array(y) -> bool:
    """A NumPy or CuPy array (the array kinds whose values the checks below read)."""
    return isinstance(y, np.ndarray) or type(y).__module__.startswith("cupy")


def _same_device(scores, y, name: str) -> None:
    """TypeError when scores and the targets ``y`` are on different devices
    (never a silent copy between host and GPU)."""
    if isinstance(scores, np.ndarray) != isinstance(y, np.ndarray) and _is_array(scores) and _is_array(y):
        where = {True: "cpu (numpy)", False: "cuda (cupy)"}
        raise TypeError(f"{name} is on {where[isinstance(y, np.ndarray)]} but the scores are on "
                        f"{where[isinstance(scores, np.ndarray)]}: move {name} to the scores' device "
                        "(cupy.asarray / .get())")


def class_labels(y, name: str = "y", num_classes: int | None = None):
    """1-D class labels as int64: an integer array, or floats that are all whole
    numbers (np.array([0., 2., 1.]), as read from a CSV); anything else gets a
    message naming ``name``. num_classes (when known): labels must be in
    [0, num_classes)."""
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    is_array = _is_array(y)
    if is_array and y.ndim == 1 and y.dtype.kind == "f":
        xp = V.array_module(y)
        whole = xp.isfinite(y) & (y == xp.round(y))
        if not bool(whole.all()):
            bad = y[int(xp.flatnonzero(~whole)[0])].item()
            raise ValueError(f"{name} must hold integer class labels, got {y.dtype} values such as {bad!r} "
                             f"(for class probabilities pass {name} with shape (N, C), one row per sample)")
        y = y.astype(np.int64)
    if is_array and y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class labels (N,), got dtype {y.dtype}")
    if is_array and y.ndim != 1:
        raise ValueError(f"{name} must be (N,) integer class labels, got shape {tuple(y.shape)}")
    if num_classes is not None and is_array and y.size:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name}: labels must be in [0, {num_classes}) for a model with {num_classes} "
                             f"outputs, got values in [{lo}, {hi}]")
    return y


def class_probabilities(y, name: str = "y", num_classes: int | None = None):
    """(N, C) target distributions (one-hot or soft rows) as a float array:
    non-negative, finite, rows summing to 1 (within 1e-3); C must equal
    num_classes when it is known. Integer or bool one-hot rows become float32."""
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if y.dtype.kind in "biu":
        y = y.astype(np.float32)
    if y.dtype.kind != "f":
        raise TypeError(f"{name} must hold class probabilities (floats), got dtype {y.dtype}")
    if y.ndim != 2 or (num_classes is not None and y.shape[1] != num_classes):
        c = "C" if num_classes is None else num_classes
        raise ValueError(f"{name} as class probabilities must have shape (N, {c}), one column per model output, "
                         f"got shape {tuple(y.shape)}")
    V.finite(y, name)
    xp = V.array_module(y)
    if y.size and (float(y.min()) < 0 or float(xp.abs(y.sum(axis=1, dtype=np.float64) - 1.0).max()) > 1e-3):
        raise ValueError(f"{name} as class probabilities must be distributions: non-negative rows that sum to 1 "
                         "(one-hot or soft labels)")
    return y


class Loss:
    """Base class of the losses: ``loss.forward(scores, y) -> float`` (the mean
    over the batch) then ``loss.backward() -> dscores`` (same shape as scores).
    Calling ``loss(scores, y)`` is ``loss.forward(scores, y)``.
    """
    def __call__(self, scores, y):
        return self.forward(scores, y)

    def check_targets(self, y, num_classes: int | None = None, name: str = "y"):
        """The targets of a whole data set checked (and converted, e.g. whole
        floats to int64 labels) before training starts, so a mistake is named
        before the first step instead of after an epoch. num_classes: the
        model's number of outputs, None when unknown. Trainer calls this once
        per fit/evaluate; the default accepts anything."""
        return y

    def expected_initial(self, num_classes: int) -> float | None:
        """The loss of an untrained network with small random weights."""
        return None


def _soft_cross_entropy(scores, target):
    """Cross-entropy against (N, C) target distributions: the checks, then the
    fused kernel's soft-target path (ops.softmax_cross_entropy)."""
    V.float_array(scores, "scores", ndim=2, contiguous=False)
    n, c = scores.shape
    if target.ndim != 2 or target.shape != scores.shape:
        raise ValueError(f"y as class probabilities must have the shape of scores ({n}, {c}), one column per "
                         f"class, got {tuple(target.shape)}")
    _same_device(scores, target, "y")
    V.finite(target, "y")
    xp = V.array_module(scores)
    if n and (float(target.min()) < 0 or float(xp.abs(target.sum(axis=1, dtype=np.float64) - 1.0).max()) > 1e-3):
        raise ValueError("y as class probabilities must be distributions: non-negative rows that sum to 1 "
                         "(one-hot or soft labels)")
    return ops.softmax_cross_entropy(xp.ascontiguousarray(scores), xp.asarray(target, dtype=scores.dtype))


class SoftmaxCrossEntropy(Loss):
    """-log softmax(scores)[y], averaged; stable log-sum-exp, fused backward.

    y: integer labels (N,) (the fused kernel), or a float target distribution
    (N, C): loss -sum_c y_c log softmax(s)_c averaged, dscores (softmax - y)/N."""

    def __init__(self):
        self._saved = None

    def forward(self, scores, y):
        """Softmax cross-entropy, ``L = -(1/N) sum_i log softmax(s_i)[y_i]``.

        Parameters
        ----------
        scores : (N, C) float32 or float64
            Unnormalized class scores (logits).
        y : (N,) int64 labels, or (N, C) float class probabilities
            With probabilities (one-hot, Mixup or smoothed labels) the loss is
            ``-(1/N) sum_i sum_c y_ic log softmax(s_i)_c``.

        Returns
        -------
        float
            The mean loss; about ``ln C`` for an untrained network.
        """
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if y.ndim == 2:
            loss, self._saved = _soft_cross_entropy(scores, y if y.dtype.kind == "f" else y.astype(np.float64))
        else:
            if y.dtype.kind == "f":
                y = class_labels(y, "y")     # whole floats are labels; others get a message naming y
            loss, self._saved = ops.softmax_cross_entropy(scores, y)
        return loss

    def _forward_on_device(self, scores, y, result) -> bool:
        """The Trainer's GPU step: ``forward`` with the loss and the label check
        left in ``result`` (a CuPy int64 (2,) array) instead of read back, so the
        step reads them with the gradient norm in one transfer; ``_loss_from``
        turns the words read into the loss. Returns False, doing nothing, unless
        the scores and y are CuPy arrays, y (N,) integer class labels."""
        if not (cuda.is_cuda_array(scores) and cuda.is_cuda_array(y)) or y.ndim != 1 or y.dtype.kind not in "iu":
            return False
        self._saved = ops._softmax_cross_entropy_on_device(scores, y, result)
        return True

    def _loss_from(self, words) -> float:
        """The loss of the last ``_forward_on_device`` from its two words read to
        the host; the ValueError ``forward`` raises for a label outside [0, C)."""
        return ops._softmax_cross_entropy_result(words, self._saved)

    def check_targets(self, y, num_classes=None, name="y"):
        """(N,) class labels (integers, or whole floats: returned as int64) or
        (N, C) class probabilities (one-hot or soft rows)."""
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if y.ndim == 2:
            return class_probabilities(y, name, num_classes)
        if y.ndim != 1:
            raise ValueError(f"{name} must be (N,) integer class labels or (N, C) class probabilities, got shape "
                             f"{tuple(y.shape)}")
        return class_labels(y, name, num_classes)

    def backward(self):
        """Gradient of the last ``forward``'s loss with respect to the scores,
        ``(softmax(s) - onehot(y)) / N`` (soft targets: ``(softmax(s) - y) / N``).

        Returns
        -------
        (N, C) array, the dtype of the scores.
        """
        if self._saved is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward called before forward")
        return ops.softmax_cross_entropy_backward(self._saved)

    @property
    def probs(self):
        """The (N, C) softmax probabilities of the last ``forward`` (None before any)."""
        return None if self._saved is None else self._saved.probs

    def expected_initial(self, num_classes: int) -> float:
        """``ln(num_classes)``: the loss when all C classes get equal probability
        (the lectures' initial-loss sanity check)."""
        return math.log(num_classes)


class MulticlassHinge(Loss):
    """The multiclass SVM loss sum_{j != y} max(0, s_j - s_y + margin), averaged."""

    def __init__(self, margin=1.0):
        self.margin = V.real(margin, "margin", low=0.0)
        self._saved = None

    def forward(self, scores, y):
        """Multiclass SVM (hinge) loss,
        ``L = (1/N) sum_i sum_{j != y_i} max(0, s_ij - s_iy_i + margin)``.

        Parameters
        ----------
        scores : (N, C) float32 or float64
        y : (N,) int64
            Class labels.

        Returns
        -------
        float
            The mean loss; about ``(C - 1) * margin`` for an untrained network.
        """
        V.float_array(scores, "scores", ndim=2, contiguous=False)
        n, c = scores.shape
        if getattr(y, "dtype", None) is not None and y.dtype.kind == "f" and y.ndim == 1:
            y = class_labels(y, "y")
        _same_device(scores, y, "y")
        y = V.labels(y, "y", n, c)
        xp = V.array_module(scores)
        rows = xp.arange(n)
        margins = xp.maximum(0.0, scores - scores[rows, y][:, None] + self.margin)
        margins[rows, y] = 0.0
        self._saved = (margins, y, scores.dtype)
        return float(margins.sum() / max(n, 1))

    def backward(self):
        """Gradient with respect to the scores: ``1/N`` for each j whose margin is
        positive, minus their count at the true class. Returns (N, C).
        """
        if self._saved is None:
            raise RuntimeError("MulticlassHinge.backward called before forward")
        margins, y, dtype = self._saved
        n = margins.shape[0]
        d = (margins > 0).astype(dtype)
        d[V.array_module(d).arange(n), y] = -d.sum(axis=1)
        return d / max(n, 1)

    def expected_initial(self, num_classes: int) -> float:
        """``(num_classes - 1) * margin``: the loss when all scores are about equal."""
        return (num_classes - 1) * self.margin

    def check_targets(self, y, num_classes=None, name="y"):
        """(N,) class labels (integers, or whole floats: returned as int64)."""
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if y.ndim == 2:
            raise ValueError(f"MulticlassHinge takes (N,) integer class labels, got {name} with shape "
                             f"{tuple(y.shape)}; for one-hot rows pass {name}.argmax(axis=1)")
        return class_labels(y, name, num_classes)


class MSE(Loss):
    """Mean squared error over all elements (PyTorch's MSELoss, reduction="mean")."""

    def __init__(self):
        self._saved = None

    def forward(self, scores, target):
        """Mean squared error, ``L = mean((scores - target)^2)`` over all elements.

        Parameters
        ----------
        scores : (N, C) float32 or float64
        target : (N, C) float, or (N,) when C is 1

        Returns
        -------
        float
        """
        V.float_array(scores, "scores", contiguous=False)
        _same_device(scores, target, "target")
        xp = V.array_module(scores)
        target = xp.asarray(target, dtype=scores.dtype)
        if target.shape != scores.shape:
            if target.ndim == 1 and scores.ndim == 2 and scores.shape[1] == 1 and target.shape[0] == scores.shape[0]:
                target = target[:, None]
            else:
                raise ValueError(f"target must have the shape of scores {scores.shape}, got {target.shape}")
        diff = scores - target
        self._saved = diff
        return float(xp.mean(diff.astype(np.float64) ** 2)) if diff.size else 0.0

    def check_targets(self, y, num_classes=None, name="y"):
        """Targets with the shape of the scores, (N, C) ((N,) when C is 1)."""
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{name} (MSE targets) must hold numbers, got dtype {y.dtype}")
        if num_classes is not None:
            ok = (y.ndim == 2 and y.shape[1] == num_classes) or (y.ndim == 1 and num_classes == 1)
            if not ok:
                raise ValueError(f"{name} (MSE targets) must have shape (N, {num_classes}) like the model's "
                                 f"outputs, got shape {tuple(y.shape)}")
        return y

    def backward(self):
        """Gradient ``2 * (scores - target) / scores.size``, the shape of the scores."""
        if self._saved is None:
            raise RuntimeError("MSE.backward called before forward")
        return (2.0 / max(self._saved.size, 1)) * self._saved
