"""Datasets and batching.

``load_digits`` ships inside the package (nothing is downloaded): the 8x8
handwritten digits of the UCI ML repository ("Optical Recognition of
Handwritten Digits", Alpaydin & Kaynak 1998, CC BY 4.0), 1,797 images with 16
grey levels, as distributed with scikit-learn (BSD-3-Clause). Stored in
``fastnn/data/_data/digits.npz`` (uint8 images (1797, 8, 8), uint8 targets).

``load_cifar10(path)`` and ``load_mnist(path)`` read the original binary files
you already have (see ``files.py``); ``DataLoader`` batches with background
prefetching and augmentation (see ``loader.py``).
"""
from __future__ import annotations

import os

import numpy as np

from .. import _validate as V
from .._io import load_npz
from .._random import generator
from .files import load_cifar10, load_mnist, read_cifar10_batch, read_idx
from .loader import DataLoader

_DATA = os.path.join(os.path.dirname(__file__), "_data")


def load_digits(flatten: bool = True):
    """(X, y): X float32 in [0, 1], (1797, 64) or (1797, 1, 8, 8); y int64 in 0..9."""
    arrays = load_npz(os.path.join(_DATA, "digits.npz"))
    images, target = arrays["images"], arrays["target"]
    x = images.astype(np.float32) / np.float32(16.0)
    x = x.reshape(len(x), 64) if flatten else x.reshape(len(x), 1, 8, 8)
    return np.ascontiguousarray(x), target.astype(np.int64)


def make_spiral(n_per_class: int = 100, classes: int = 3, noise: float = 0.2, seed=None):
    """The CS231n spiral: `classes` interleaved arms in 2-D. Returns (X float32 (N, 2), y int64)."""
    n = V.positive_int(n_per_class, "n_per_class")
    k = V.positive_int(classes, "classes")
    rng = generator(seed)
    xs, ys = [], []
    for c in range(k):
        r = np.linspace(0.0, 1.0, n)
        t = np.linspace(c * 4.0, (c + 1) * 4.0, n) + rng.standard_normal(n) * noise
        xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
        ys.append(np.full(n, c))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


def split(x, y, fractions=(0.6, 0.2, 0.2), seed=None, stratify: bool = True):
    """Shuffle and split into len(fractions) (X, y) parts, class-balanced when stratify."""
    fractions = np.asarray(fractions, np.float64)
    if fractions.ndim != 1 or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fractions.tolist()}")
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    rng = generator(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if stratify else [np.arange(len(y))]
    parts = [[] for _ in fractions]
    for idx in groups:
        idx = rng.permutation(idx)
        bounds = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for i, chunk in enumerate(np.split(idx, bounds[:-1])):
            parts[i].append(chunk)
    out = []
    for chunks in parts:
        idx = rng.permutation(np.concatenate(chunks))
        out.append((np.ascontiguousarray(x[idx]), np.ascontiguousarray(y[idx])))
    return out


def kfold(n, k, seed=None):
    """k-fold cross-validation: k (train_idx, val_idx) pairs of int64 index
    arrays over range(n). The k validation folds are disjoint, together cover
    every index once, and their sizes differ by at most 1 (the first n % k
    folds hold one more); train_idx is the rest. seed None keeps the order
    (fold j is a contiguous block); an int or a Generator shuffles first.
    Returns a list, so the folds can be reused by every trial of a search.

    Cross-validation in a hyperparameter search: the objective averages the
    validation score over the folds (k times the cost of one split; worth it
    when the data set is small, as the lecture says)::

        X, y = fnn.data.load_digits()
        folds = fnn.data.kfold(len(X), 5, seed=0)

        def objective(params):
            scores = []
            for train_idx, val_idx in folds:
                model = fnn.nn.Sequential(fnn.nn.Linear(64, 64, activation="relu"), fnn.nn.Linear(64, 10))
                trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                                      fnn.optim.Adam(model.parameters(), lr=params["lr"]), seed=0)
                trainer.fit(X[train_idx], y[train_idx], epochs=5, progress=False)
                scores.append(trainer.evaluate(X[val_idx], y[val_idx])["accuracy"])
            return float(np.mean(scores))

        result = fnn.search.random_search(objective, {"lr": fnn.search.loguniform(1e-4, 1e-1)},
                                          trials=8, seed=0)
        result.best.params
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, the number of examples (e.g. len(X)), got {type(n).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, the number of folds, got {type(k).__name__}")
    n, k = int(n), int(k)
    if k < 2:
        raise ValueError(f"k must be at least 2 (one fold to validate on, the rest to train on), got k={k}")
    if k > n:
        raise ValueError(f"k must be at most n (every fold needs at least one example), got k={k} and n={n}")
    order = np.arange(n, dtype=np.int64) if seed is None else generator(seed).permutation(n).astype(np.int64)
    folds = np.array_split(order, k)
    return [(np.concatenate(folds[:j] + folds[j + 1:]), folds[j].copy()) for j in range(k)]


def batches(x, y, batch_size: int, shuffle: bool = True, rng=None, drop_last: bool = False):
    """Yield (x_batch, y_batch), contiguous copies, in a (seeded) shuffled order."""
    n = len(x)
    batch_size = V.positive_int(batch_size, "batch_size")
    order = generator(rng).permutation(n) if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield np.ascontiguousarray(x[idx]), (None if y is None else np.ascontiguousarray(y[idx]))


__all__ = ["load_digits", "make_spiral", "split", "kfold", "batches", "load_cifar10", "load_mnist",
           "read_cifar10_batch", "read_idx", "DataLoader"]
