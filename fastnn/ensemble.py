"""Model ensembles ("Training Neural Networks II"): average the softmax
probabilities of several models; snapshot ensembles take those models from
ONE training run, at the end of every cycle of a cosine schedule with warm
restarts (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free").

Shapes: X (N, ...), probabilities (N, C), y (N,) integer labels.
"""
from __future__ import annotations


import numpy as np

from . import _validate as V
from .data import batches
from .nn.module import Module, from_config
from .schedules import CosineWarmRestarts
from .train import Callback


def softmax(scores):
    """Row-wise softmax, stable (max subtracted), float64."""
    s = np.asarray(scores, np.float64)
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _model_probs(model, X, batch_size):
    was = model.training
    model.eval()
    try:
        return np.concatenate([softmax(model.forward(xb)) for xb, _ in batches(X, None, batch_size, shuffle=False)])
    finally:
        model.train(was)


def _scores(probs, y) -> dict:
    y = np.asarray(y)
    if len(y) != len(probs):
        raise ValueError(f"y must have one entry per row of X: {len(y)} != {len(probs)}")
    picked = probs[np.arange(len(y)), y]
    return {"loss": float(-np.mean(np.log(np.maximum(picked, 1e-300)))),
            "accuracy": float(np.mean(np.argmax(probs, axis=1) == y))}


class Ensemble:
    """Averages the softmax probabilities of ``models`` (optionally weighted).

    ``predict(X)`` -> averaged probabilities (N, C); ``evaluate(X, y)`` ->
    {'loss': NLL of the averaged probabilities, 'accuracy'};
    ``evaluate_members(X, y)`` -> the same for each model alone."""

    def __init__(self, models, weights=None):
        self._models = list(models)
        for i, m in enumerate(self._models):
            if not isinstance(m, Module):
                raise TypeError(f"models[{i}] must be a fastnn Module, got {type(m).__name__}")
        self.weights = None if weights is None else np.asarray(weights, np.float64)
        if self.weights is not None and (self.weights.shape != (len(self._models),) or (self.weights < 0).any()):
            raise ValueError(f"weights must be {len(self._models)} non-negative numbers")

    @property
    def models(self) -> list:
        return self._models

    def __len__(self):
        return len(self.models)

    def predict(self, X, batch_size=1024):
        V.float_array(X, "X", contiguous=False)
        models = self.models
        if not models:
            raise ValueError("the ensemble has no models")
        w = np.ones(len(models)) if self.weights is None else self.weights
        total = None
        for wi, m in zip(w, models):
            p = wi * _model_probs(m, X, batch_size)
            total = p if total is None else total + p
        return total / w.sum()

    def evaluate(self, X, y, batch_size=1024) -> dict:
        return _scores(self.predict(X, batch_size), y)

    def evaluate_members(self, X, y, batch_size=1024) -> list[dict]:
        V.float_array(X, "X", contiguous=False)
        return [_scores(_model_probs(m, X, batch_size), y) for m in self.models]


def _cycle_start(schedule: CosineWarmRestarts, t: int) -> bool:
    """Whether t (> 0) is the first epoch/step of a new cosine cycle."""
    period, start = schedule.t_0, 0
    while t > start:
        start += period
        period *= schedule.t_mult
    return t == start and t > 0


class SnapshotEnsemble(Ensemble, Callback):
    """A Trainer callback that keeps a copy of the weights at the end of every
    CosineWarmRestarts cycle (where the lr reaches its minimum, just before the
    restart), and the ensemble of those snapshots.

        snap = SnapshotEnsemble()
        Trainer(model, loss, opt, schedule=CosineWarmRestarts(t_0=10), callbacks=[snap]).fit(...)
        snap.evaluate(X_test, y_test)

    schedule: the CosineWarmRestarts in use (default: the trainer's);
    max_snapshots keeps only the most recent ones. Members are rebuilt from the
    model's config (no pickle) with the snapshot weights and buffers."""

    def __init__(self, schedule=None, max_snapshots=None):
        Ensemble.__init__(self, [])
        self.schedule = schedule
        self.max_snapshots = None if max_snapshots is None else V.positive_int(max_snapshots, "max_snapshots")
        self.snapshots: list[dict] = []
        self.snapshot_times: list[int] = []
        self._config = None
        self._built = None

    def on_train_begin(self, trainer):
        schedule = self.schedule if self.schedule is not None else trainer.schedule
        if not isinstance(schedule, CosineWarmRestarts):
            raise TypeError("SnapshotEnsemble needs a fastnn.schedules.CosineWarmRestarts schedule "
                            f"(passed to it or to the Trainer), got {type(schedule).__name__}")
        self.schedule = schedule
        self._config = trainer.model.get_config()

    def _take(self, trainer, t):
        self.snapshots.append(trainer.model.state_dict())
        self.snapshot_times.append(t)
        if self.max_snapshots is not None and len(self.snapshots) > self.max_snapshots:
            del self.snapshots[0], self.snapshot_times[0]
        self._built = None

    def on_step_end(self, trainer, step, loss):
        if self.schedule.per == "step" and _cycle_start(self.schedule, trainer.step_count):
            self._take(trainer, trainer.step_count)

    def on_epoch_end(self, trainer, epoch, history):
        if self.schedule.per == "epoch" and _cycle_start(self.schedule, epoch + 1):
            self._take(trainer, epoch + 1)
        return False

    @property
    def models(self) -> list:
        if self._built is None:
            if self._config is None:
                return []
            built = []
            for state in self.snapshots:
                m = from_config(self._config)
                m.load_state_dict(state)
                built.append(m)
            self._built = built
        return self._built


__all__ = ["Ensemble", "SnapshotEnsemble", "softmax"]
