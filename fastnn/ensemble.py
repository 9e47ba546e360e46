"""Model ensembles ("Training Neural Networks II"): average the softmax
probabilities of several models; snapshot ensembles take those models from
ONE training run, at the end of every cycle of a cosine schedule with warm
restarts (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free").

Shapes: X (N, ...), probabilities (N, C), y (N,) integer labels.
"""
from __future__ import annotations

import warnings

import numpy as np

from . import _validate as V
from ._random import generator
from .callbacks import Callback
from .data import batches
from .nn.module import Module, from_config
from .ops import softmax
from .schedules import CosineWarmRestarts


def _forward_probs(model, X, batch_size):
    """softmax(model.forward(X)) batch by batch, in the model's current modes."""
    return np.concatenate([softmax(model.forward(xb)) for xb, _ in batches(X, None, batch_size, shuffle=False)])


def _model_probs(model, X, batch_size):
    was = model.training
    model.eval()
    try:
        return _forward_probs(model, X, batch_size)
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
        """The member models (a list of fastnn Modules)."""
        return self._models

    def __len__(self):
        return len(self.models)

    def predict(self, X, batch_size=1024):
        """Average of the members' softmax probabilities (weighted by ``weights``).

        Parameters
        ----------
        X : (N, ...) float32 or float64
        batch_size : int, default 1024

        Returns
        -------
        (N, C) float64
            Averaged class probabilities (rows sum to 1).
        """
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
        """``{'loss': mean negative log-likelihood of the averaged probabilities,
        'accuracy': fraction correct}`` of the ensemble; y ``(N,)`` int64 labels.
        """
        return _scores(self.predict(X, batch_size), y)

    def evaluate_members(self, X, y, batch_size=1024) -> list[dict]:
        """The ``evaluate`` dict of each member alone, in order (to compare with the ensemble)."""
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
        """Find the CosineWarmRestarts schedule and remember the model's architecture."""
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
        """With a per-step schedule, take a snapshot at the end of each cycle."""
        if self.schedule.per == "step" and _cycle_start(self.schedule, trainer.step_count):
            self._take(trainer, trainer.step_count)

    def on_epoch_end(self, trainer, epoch, history):
        """With a per-epoch schedule, take a snapshot at the end of each cycle; never stops training."""
        if self.schedule.per == "epoch" and _cycle_start(self.schedule, epoch + 1):
            self._take(trainer, epoch + 1)
        return False

    @property
    def models(self) -> list:
        """The snapshots as models (rebuilt from the config with each snapshot's weights), oldest first."""
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


# --- one model, many stochastic or augmented passes --------------------------------------

def _check_model_x(model, X, where):
    if not isinstance(model, Module):
        raise TypeError(f"{where} needs model, a fastnn Module, got {type(model).__name__}")
    V.batch(X, "X")


def mc_predict(model, X, samples=16, seed=None, batch_size=1024):
    """Monte-Carlo prediction: the softmax probabilities averaged over
    ``samples`` stochastic forward passes,

        p(y | x) ~ 1/S sum_s softmax(f(x; noise_s)),

    where every stochastic layer draws fresh randomness on every pass (Dropout
    and DropConnect masks: "MC dropout", Gal & Ghahramani 2016;
    FractionalMaxPool2d pooling grids: Graham 2014 averages several random
    grids at test time; Residual stochastic depth) and everything else runs
    in eval mode, BatchNorm with its running statistics. Compare with the
    eval-mode prediction, which replaces the noise by its expected value
    (dropout's identity, the fixed u = 0.5 pooling grid).

    Shapes: X (N, ...) -> (N, C) probabilities (float64).

    seed: None (fastnn's global generator, so ``fastnn.manual_seed`` makes it
    reproducible), an int or a numpy Generator ``rng``. The k-th stochastic
    layer in ``model.modules()`` order restarts its stream from
    ``rng.integers(2**63, size=K)[k]`` (K stochastic layers; ``reseed``), so
    the same seed gives the same output and different seeds differ. Passes run
    batch by batch (``batch_size`` rows). The model is left as found: every
    module's train/eval mode and every stochastic layer's random stream.
    A model without stochastic layers warns (every pass would be the same)."""
    _check_model_x(model, X, "mc_predict")
    samples = V.positive_int(samples, "samples")
    rng = generator(seed)
    layers = [m for m in model.modules() if getattr(m, "stochastic", False)]
    if not layers:
        warnings.warn(f"mc_predict: the model ({type(model).__name__}) has no stochastic layer (Dropout, "
                      "DropConnect, FractionalMaxPool2d, Residual): every pass is the eval-mode prediction",
                      UserWarning, stacklevel=2)
    seeds = rng.integers(2**63, size=len(layers))
    with model.preserving_state():
        model.eval()
        for m, s in zip(layers, seeds):
            m.reseed(int(s))
            m.training = True            # this layer only: a Residual's block stays in eval mode
        total = _forward_probs(model, X, batch_size)
        for _ in range(samples - 1):
            total += _forward_probs(model, X, batch_size)
    return total / samples


def tta_predict(model, X, augment, samples=8, seed=None, batch_size=1024):
    """Test-time augmentation: the softmax probabilities averaged over X itself
    and ``samples`` augmented copies of it,

        p(y | x) ~ 1/(S + 1) (softmax(f(x)) + sum_s softmax(f(t_s(x)))),

    the model in eval mode (the lectures' "average predictions over random
    crops/flips at test time").

    Shapes: X (N, ...) -> (N, C) probabilities (float64).

    augment: a callable ``t(x, rng)`` returning a batch of X's shape, e.g.
    ``fnn.augment.Compose([fnn.augment.RandomFlip(), fnn.augment.RandomCrop(...)])``;
    it is called ``samples`` times on the whole of X with one generator made
    from ``seed`` (None: fastnn's global generator; an int or a Generator), so
    the same seed gives the same output. The model's modes are restored."""
    _check_model_x(model, X, "tta_predict")
    if not callable(augment):
        raise TypeError(f"augment must be a callable t(x, rng) such as fnn.augment.RandomFlip(), "
                        f"got {type(augment).__name__}")
    samples = V.positive_int(samples, "samples")
    rng = generator(seed)
    with model.preserving_state():
        model.eval()
        total = _forward_probs(model, X, batch_size)
        for _ in range(samples):
            xa = augment(X, rng)
            if getattr(xa, "shape", None) is None or len(xa.shape) < 1 or xa.shape[0] != len(X):
                raise ValueError(f"augment must return a batch with the {len(X)} rows of X, got "
                                 f"{type(xa).__name__} of shape {getattr(xa, 'shape', None)}")
            total += _forward_probs(model, np.ascontiguousarray(xa, dtype=X.dtype), batch_size)
    return total / (samples + 1)


__all__ = ["Ensemble", "SnapshotEnsemble", "softmax", "mc_predict", "tta_predict"]
