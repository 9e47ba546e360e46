"""Learning-rate schedules: ``schedule(t, base_lr) -> lr``.

t counts epochs (``per="epoch"``, the default) or optimizer steps
(``per="step"``), from 0. The Trainer applies the schedule to the optimizer and
records the lr in History.
"""
from __future__ import annotations

import math

from . import _validate as V


class Schedule:
    """Base class of the learning-rate schedules: ``schedule(t, base_lr) -> lr``.

    Pass one as ``Trainer(..., schedule=...)``; the Trainer sets the
    optimizer's lr from it every epoch (``per="epoch"``) or every step
    (``per="step"``), and records it in ``History.lr``. Subclass it and define
    ``__call__`` for a custom schedule.

    Parameters
    ----------
    per : {"epoch", "step"}, default "epoch"
        What t counts."""

    def __init__(self, per: str = "epoch"):
        if per not in ("epoch", "step"):
            raise ValueError(f"per must be 'epoch' or 'step', got {per!r}")
        self.per = per

    def __call__(self, t: int, base_lr: float) -> float:
        """The learning rate at epoch (or step) ``t``, from 0, given the optimizer's initial lr."""
        raise NotImplementedError

    def observe(self, metric: float) -> None:
        """Told the monitored metric once per epoch (ReduceOnPlateau uses it)."""


class Constant(Schedule):
    """No decay: ``lr = base_lr`` for every t."""

    def __call__(self, t, base_lr):
        return base_lr


class StepDecay(Schedule):
    """lr = base * gamma ** (t // step_size)."""

    def __init__(self, step_size, gamma=0.1, per="epoch"):
        super().__init__(per)
        self.step_size = V.positive_int(step_size, "step_size")
        self.gamma = V.real(gamma, "gamma", low=0.0)

    def __call__(self, t, base_lr):
        return base_lr * self.gamma ** (t // self.step_size)


class ExponentialDecay(Schedule):
    """lr = base * exp(-k t)."""

    def __init__(self, k, per="epoch"):
        super().__init__(per)
        self.k = V.real(k, "k", low=0.0)

    def __call__(self, t, base_lr):
        return base_lr * math.exp(-self.k * t)


class InverseTimeDecay(Schedule):
    """lr = base / (1 + k t)."""

    def __init__(self, k, per="epoch"):
        super().__init__(per)
        self.k = V.real(k, "k", low=0.0)

    def __call__(self, t, base_lr):
        return base_lr / (1.0 + self.k * t)


class CosineAnnealing(Schedule):
    """lr = eta_min + (base - eta_min) (1 + cos(pi t / t_max)) / 2, flat after t_max."""

    def __init__(self, t_max, eta_min=0.0, per="epoch"):
        super().__init__(per)
        self.t_max = V.positive_int(t_max, "t_max")
        self.eta_min = V.real(eta_min, "eta_min", low=0.0)

    def __call__(self, t, base_lr):
        t = min(t, self.t_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.t_max)) / 2


class CosineWarmRestarts(Schedule):
    """SGDR (Loshchilov & Hutter 2017): cosine from base to eta_min over t_0,
    then restart, each period t_mult times longer."""

    def __init__(self, t_0, t_mult=1, eta_min=0.0, per="epoch"):
        super().__init__(per)
        self.t_0 = V.positive_int(t_0, "t_0")
        self.t_mult = V.positive_int(t_mult, "t_mult")
        self.eta_min = V.real(eta_min, "eta_min", low=0.0)

    def __call__(self, t, base_lr):
        period, start = self.t_0, 0
        while t >= start + period:
            start += period
            period *= self.t_mult
        frac = (t - start) / period
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * frac)) / 2


class CyclicLR(Schedule):
    """Triangular cyclical lr (Smith 2017) between base_lr and max_lr, half-cycle step_size."""

    def __init__(self, base_lr, max_lr, step_size, per="step"):
        super().__init__(per)
        self.base_lr = V.real(base_lr, "base_lr", low=0.0)
        self.max_lr = V.real(max_lr, "max_lr", low=self.base_lr)
        self.step_size = V.positive_int(step_size, "step_size")

    def __call__(self, t, base_lr):
        cycle = t // (2 * self.step_size)
        x = abs(t / self.step_size - 2 * cycle - 1)
        return self.base_lr + (self.max_lr - self.base_lr) * max(0.0, 1 - x)


class Warmup(Schedule):
    """Linear warm-up from start_factor * lr over `steps`, then `after` (shifted)."""

    def __init__(self, after=None, steps=5, start_factor=0.1, per=None):
        after = after or Constant()
        super().__init__(per or after.per)
        self.after = after
        self.steps = V.positive_int(steps, "steps")
        self.start_factor = V.real(start_factor, "start_factor", low=0.0, high=1.0)

    def __call__(self, t, base_lr):
        if t < self.steps:
            return base_lr * (self.start_factor + (1 - self.start_factor) * t / self.steps)
        return self.after(t - self.steps, base_lr)

    def observe(self, metric):
        """Pass the metric on to the wrapped ``after`` schedule."""
        self.after.observe(metric)


class ReduceOnPlateau(Schedule):
    """Multiply lr by factor after `patience` epochs without improvement of the
    observed metric (validation loss by default; mode="max" for accuracy)."""

    def __init__(self, factor=0.1, patience=10, mode="min", threshold=1e-4, min_lr=0.0):
        super().__init__("epoch")
        self.factor = V.real(factor, "factor", low=0.0, high=1.0, high_open=True)
        self.patience = V.positive_int(patience, "patience", minimum=0)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.threshold = V.real(threshold, "threshold", low=0.0)
        self.min_lr = V.real(min_lr, "min_lr", low=0.0)
        self.scale = 1.0
        self.best = None
        self.bad_epochs = 0

    def observe(self, metric):
        """Record this epoch's metric; after ``patience`` epochs without improvement (by more than ``threshold``,
        relative) multiply the lr by ``factor``."""
        m = float(metric)
        better = self.best is None or (m < self.best * (1 - self.threshold) if self.mode == "min"
                                       else m > self.best * (1 + self.threshold))
        if better:
            self.best, self.bad_epochs = m, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0

    def __call__(self, t, base_lr):
        return max(self.min_lr, base_lr * self.scale)
