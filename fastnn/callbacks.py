"""Trainer callbacks: early stopping and best-model checkpoints.

Both watch one History list per epoch: ``val_loss`` (default), ``val_acc``,
``train_acc`` or ``epoch_loss`` ("loss" is an alias of ``epoch_loss``).
mode="auto" maximizes accuracies and minimizes losses.
"""
from __future__ import annotations

import math
import os

from . import _validate as V
from .train import Callback, History

_ALIASES = {"loss": "epoch_loss", "acc": "train_acc", "accuracy": "train_acc", "val_accuracy": "val_acc"}


class _Monitor(Callback):
    def __init__(self, monitor="val_loss", mode="auto", min_delta=0.0):
        monitor = _ALIASES.get(monitor, monitor)
        known = [k for k, v in vars(History()).items() if isinstance(v, list) and k not in ("loss", "seconds", "lr")]
        if monitor not in known:
            raise ValueError(f"monitor must be one of {sorted(known)}, got {monitor!r}")
        if mode == "auto":
            mode = "max" if monitor.endswith("acc") else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.min_delta = V.real(min_delta, "min_delta", low=0.0)
        self.best = None
        self.best_epoch = None

    def _value(self, history) -> float:
        values = getattr(history, self.monitor)
        if not values:
            hint = " (pass val=(X_val, y_val) to fit)" if self.monitor.startswith("val") else ""
            raise ValueError(f"{type(self).__name__} monitors {self.monitor!r}, which the history does not hold{hint}")
        return float(values[-1])

    def _improved(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved (by more than min_delta) for
    ``patience`` epochs. restore_best: at the end of training, load the
    weights (and buffers) of the best epoch back into the model."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best=True):
        super().__init__(monitor, mode, min_delta)
        self.patience = V.positive_int(patience, "patience", minimum=0)
        self.restore_best = bool(restore_best)
        self.stopped_epoch = None
        self.best_state = None
        self._wait = 0

    def on_train_begin(self, trainer):
        self.best = self.best_epoch = self.stopped_epoch = self.best_state = None
        self._wait = 0

    def on_epoch_end(self, trainer, epoch, history):
        value = self._value(history)
        if self._improved(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                self.best_state = trainer.model.state_dict()
            return False
        self._wait += 1
        if self._wait > self.patience:
            self.stopped_epoch = epoch
            history.message = (f"early stopping at epoch {epoch + 1}: {self.monitor} did not improve for "
                               f"{self._wait} epochs (best {self.best:.4g} at epoch {self.best_epoch + 1})")
            return True
        return False

    def on_train_end(self, trainer, history):
        if self.restore_best and self.best_state is not None:
            trainer.model.load_state_dict(self.best_state)


class BestCheckpoint(_Monitor):
    """Write the model (``model.save``, atomic .npz) to ``path`` every time
    ``monitor`` reaches a new best; ``fastnn.nn.load(path)`` gets it back."""

    def __init__(self, path, monitor="val_loss", mode="auto", min_delta=0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = os.fspath(path)
        self.saves = 0

    def on_train_begin(self, trainer):
        self.best = self.best_epoch = None

    def on_epoch_end(self, trainer, epoch, history):
        value = self._value(history)
        if self._improved(value):
            self.best, self.best_epoch = value, epoch
            if getattr(trainer, "is_main", True):     # distributed: rank 0 writes
                trainer.model.save(self.path)
            self.saves += 1
        return False


__all__ = ["EarlyStopping", "BestCheckpoint"]
