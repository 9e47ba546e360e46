"""Trainer callbacks: the ``Callback`` protocol, the ``History`` that
``Trainer.fit`` returns, early stopping and best-model checkpoints.

EarlyStopping and BestCheckpoint watch one History list per epoch: ``val_loss`` (default), ``val_acc``,
``train_acc`` or ``epoch_loss`` ("loss" is an alias of ``epoch_loss``).
mode="auto" maximizes accuracies and minimizes losses.
"""
from __future__ import annotations

import math
import os

import numpy as np

from . import _validate as V


class History:
    """Per-step ``loss`` and per-epoch ``epoch_loss``, ``reg_loss``,
    ``train_acc``, ``val_acc``, ``val_loss``, ``lr`` and ``seconds`` (lists).

    ``loss`` and ``epoch_loss`` are the data loss (what the loss function
    returns). ``reg_loss`` is the regularization penalty the optimizer applies,
    measured on the weights at the end of each epoch, beside it (the notes'
    full objective is data loss + penalty)::

        reg_loss = sum over regularized parameters W of
                   0.5 * weight_decay * ||W||^2 + l1 * |W|_1

    with each parameter group's own weight_decay and l1, over the trainable
    parameters (``fastnn.train.regularization_loss``). fastnn's (PyTorch's)
    ``weight_decay`` is 2 * lambda of the notes' L2 term ``lambda * ||W||^2``. For
    AdamW the same ``0.5 * weight_decay * ||W||^2`` is reported although its
    decoupled decay is not the gradient of any term of the loss."""

    def __init__(self):
        self.loss: list[float] = []
        self.epoch_loss: list[float] = []
        self.reg_loss: list[float] = []
        self.train_acc: list[float] = []
        self.val_acc: list[float] = []
        self.val_loss: list[float] = []
        self.lr: list[float] = []
        self.seconds: list[float] = []
        self.stopped_early = False
        self.message = ""

    @property
    def epochs(self) -> int:
        """Number of finished epochs (the length of ``train_acc``)."""
        return len(self.train_acc)

    def as_dict(self) -> dict:
        """Every per-step and per-epoch list as a plain dict ``{name: list}``
        (``loss``, ``epoch_loss``, ``reg_loss``, ``train_acc``, ``val_acc``,
        ``val_loss``, ``lr``, ``seconds``), e.g. for ``json.dump``.
        """
        return {k: list(v) for k, v in vars(self).items() if isinstance(v, list)}

    def plot(self, path=None, smooth: int = 20):
        """Loss per step (raw and smoothed) and train/val accuracy per epoch."""
        plt = V.pyplot("History.plot")
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        steps = np.arange(len(self.loss))
        ax1.plot(steps, self.loss, alpha=0.35, lw=0.8, label="loss (per step)")
        if len(self.loss) >= smooth > 1:
            kernel = np.ones(smooth) / smooth
            ax1.plot(steps[smooth - 1:], np.convolve(self.loss, kernel, mode="valid"), lw=1.8,
                     label=f"moving average ({smooth})")
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss")
        ax1.legend()
        epochs = np.arange(1, self.epochs + 1)
        ax2.plot(epochs, self.train_acc, "o-", label="train")
        if self.val_acc:
            ax2.plot(epochs[:len(self.val_acc)], self.val_acc, "s-", label="validation")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        ax2.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


class Callback:
    """Base class of the hooks ``Trainer.fit`` calls; subclass it and override
    the hooks you need (each does nothing by default).

    Pass instances as ``Trainer(..., callbacks=[cb])``. Stock callbacks:
    :class:`EarlyStopping`, :class:`BestCheckpoint`,
    ``fastnn.diagnostics.UpdateRatioMonitor``, ``fastnn.optim.EMA``,
    ``fastnn.ensemble.SnapshotEnsemble``. Return True from
    :meth:`on_epoch_end` to stop training."""

    def on_train_begin(self, trainer):
        """Called once at the start of ``fit``, before the first step.

        Parameters
        ----------
        trainer : fastnn.Trainer
            The trainer (``trainer.model``, ``trainer.optimizer`` ...)."""

    def on_step_end(self, trainer, step: int, loss: float):
        """Called after every optimizer step.

        Parameters
        ----------
        trainer : fastnn.Trainer
        step : int
            Global step index, counted from 0 over the whole run.
        loss : float
            The data loss of this minibatch."""

    def on_epoch_end(self, trainer, epoch: int, history: History):
        """Called after each epoch, once the history holds its numbers.

        Parameters
        ----------
        trainer : fastnn.Trainer
        epoch : int
            Epoch index, from 0.
        history : History
            The run so far.

        Returns
        -------
        bool or None
            True stops training after this epoch."""

    def on_train_end(self, trainer, history: History):
        """Called once when ``fit`` ends (also after an early stop).

        Parameters
        ----------
        trainer : fastnn.Trainer
        history : History
            The finished run."""


_ALIASES = {"loss": "epoch_loss", "acc": "train_acc", "accuracy": "train_acc", "val_accuracy": "val_acc"}


class _Monitor(Callback):
    def __init__(self, monitor="val_loss", mode="auto", min_delta=0.0):
        monitor = _ALIASES.get(monitor, monitor)
        known = [k for k, v in vars(History()).items() if isinstance(v, list)
                 and k not in ("loss", "seconds", "lr", "reg_loss")]
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
        """Forget the previous run's best value, epoch and weights."""
        self.best = self.best_epoch = self.stopped_epoch = self.best_state = None
        self._wait = 0

    def on_epoch_end(self, trainer, epoch, history):
        """Compare this epoch's ``monitor`` value with the best so far; keep the
        weights when it improved; return True (stop) after ``patience`` epochs
        without improvement, and write the reason into ``history.message``.
        """
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
        """With ``restore_best``, load the best epoch's weights and buffers back into the model."""
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
        """Forget the previous run's best value and epoch."""
        self.best = self.best_epoch = None

    def on_epoch_end(self, trainer, epoch, history):
        """Save the model to ``path`` when ``monitor`` reached a new best (rank 0 only when distributed);
        never stops training."""
        value = self._value(history)
        if self._improved(value):
            self.best, self.best_epoch = value, epoch
            if getattr(trainer, "is_main", True):     # distributed: rank 0 writes
                trainer.model.save(self.path)
            self.saves += 1
        return False


__all__ = ["EarlyStopping", "BestCheckpoint"]
