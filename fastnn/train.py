"""Trainer, History and callbacks: the training loop of the lectures, with the
babysitting built in (per-step loss, per-epoch accuracies, lr, time; a clean
stop with the last good weights when the loss turns NaN/Inf)."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from . import _validate as V
from ._io import load_npz, save_npz_atomic
from ._random import generator
from .data import batches
from .nn.module import as_model_input

_CHECKPOINT_FILE = "a fastnn trainer checkpoint (.npz written by Trainer.save_checkpoint)"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the model holds the last good weights."""


class History:
    """Per-step ``loss`` and per-epoch ``train_acc``, ``val_acc``, ``val_loss``,
    ``lr`` and ``seconds`` (lists)."""

    def __init__(self):
        self.loss: list[float] = []
        self.epoch_loss: list[float] = []
        self.train_acc: list[float] = []
        self.val_acc: list[float] = []
        self.val_loss: list[float] = []
        self.lr: list[float] = []
        self.seconds: list[float] = []
        self.stopped_early = False
        self.message = ""

    @property
    def epochs(self) -> int:
        return len(self.train_acc)

    def as_dict(self) -> dict:
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
    """Hooks called by Trainer.fit; return True from on_epoch_end to stop."""

    def on_train_begin(self, trainer): ...
    def on_step_end(self, trainer, step: int, loss: float): ...
    def on_epoch_end(self, trainer, epoch: int, history: History): ...
    def on_train_end(self, trainer, history: History): ...


def _check_x(x, dtype, name_x="X"):
    """x at the API boundary: float32/float64 with at least one row, copied once
    into the model's dtype and a C-contiguous layout when it is not already."""
    x = as_model_input(x, dtype, name_x)
    V.float_array(x, name_x, contiguous=False)
    if x.ndim < 2:
        raise ValueError(f"{name_x} must have a batch axis and features, got shape {x.shape}")
    return x


def _check_xy(x, y, dtype, name_x="X", name_y="y"):
    x = _check_x(x, dtype, name_x)
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(x):
        got = "a scalar" if y.ndim == 0 else f"{len(y)} entries"
        raise ValueError(f"{name_y} must have one entry per row of {name_x}: {name_x} has {len(x)} rows, "
                         f"{name_y} has {got}")
    V.finite(x, name_x)
    return x, y


def _accuracy(scores, y) -> float:
    """Fraction of rows whose top score is the label (the argmax of the row for
    (N, C) class probabilities); NaN for targets that are not classes."""
    if y.ndim == 2:
        return float(np.mean(np.argmax(scores, axis=1) == np.argmax(y, axis=1)))
    if y.dtype.kind in "iu":
        return float(np.mean(np.argmax(scores, axis=1) == y))
    return float("nan")


class Trainer:
    """Fits a model with a loss and an optimizer, batch by batch.

    schedule: a fastnn.schedules.Schedule (per epoch or per step); callbacks:
    Callback objects; augment: a callable t(x, rng) applied to each training batch
    (called t(x, rng, y=labels) when its ``uses_labels`` is true; it may return (x, y)).

    The optimizer must hold the model's parameters: every trainable one
    (frozen ones may be left out) and nothing else. One built for another model,
    or before ``model[i] = layer`` replaced a layer, would train nothing, so
    ``Trainer(...)`` and ``fit`` raise ValueError instead.

    seed: seeds the Trainer's own generator, which shuffles the batches, picks
    the ``eval_train_size`` rows scored each epoch and drives ``augment``. It
    does NOT seed weight initialization or the dropout masks: the model (its
    weights, and each Dropout's Philox seed) exists before the Trainer. For a
    fully repeatable run seed fastnn's global generator before building the
    model: ``fnn.manual_seed(0); model = ...; Trainer(model, ..., seed=0)``
    (or give each layer ``rng=``/``seed=``).

    Inputs (``fit``, ``evaluate``, ``predict``): X is float32 or float64, any
    layout; when its dtype differs from the model's, or it is not C-contiguous,
    it is copied once, up front, into the model's dtype (a float64 X into a
    float32 model is rounded to float32) and a C-contiguous layout. Targets y
    are (N,) class labels (integers, or whole floats such as 2.0) or (N, C)
    class probabilities (one-hot or soft rows; accuracy then counts the argmax
    of each row), as the loss accepts; they are checked against the model's
    number of outputs before the first step (``loss.check_targets``).

    Divergence: a NaN/Inf loss, or (with ``check_gradients``, the default) a
    NaN/Inf in the flat gradient buffer, stops ``fit`` before the optimizer
    step, restores the model and optimizer to the end of the last good epoch
    (the initial state in the first epoch) and raises ``TrainingDiverged``;
    ``history.message`` says what happened. The gradient check is one dot
    product over the gradients per step, shared with clip_grad_norm (about 1% of
    a step of the reference MLP).

    distributed=True: data-parallel over the ranks of fastnn.distributed (MPI;
    ``init()`` is called if needed). ``fit``'s batch_size is the global batch,
    which the world size must divide; each rank trains on its shard and ONE
    allreduce of the flat gradient buffer follows backward. ``bucket_mb``: reduce
    the gradients in buckets of about that many MiB during backward instead
    (overlapping communication with the rest of backward). Only rank 0 prints and
    writes checkpoints; see fastnn/distributed.py for the rest of the contract."""

    def __init__(self, model, loss, optimizer, schedule=None, callbacks=(), augment=None, seed=None,
                 check_gradients=True, distributed=False, bucket_mb=None):
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.schedule = schedule
        self.callbacks = list(callbacks)
        self.augment = augment
        self.rng = generator(seed) if seed is not None else np.random.default_rng(generator().integers(2**63))
        self.step_count = 0
        self.epoch = 0
        self.epochs_done = 0
        self._base_lr = optimizer.lr
        self._resume_history = None
        self.check_gradients = bool(check_gradients)
        self.nonfinite = None  # what went non-finite in the last train_step: None, "loss" or "gradients"
        self._check_optimizer()
        self._dp = None
        if distributed:
            from .distributed import DataParallel, broadcast_object
            self._dp = DataParallel(model, optimizer, bucket_mb=bucket_mb)
            # Every rank shuffles (and augments) the same global batches.
            self.rng.bit_generator.state = broadcast_object(self.rng.bit_generator.state)
        elif bucket_mb is not None:
            raise ValueError("bucket_mb only applies with distributed=True")

    def _check_optimizer(self) -> None:
        """The optimizer holds every trainable parameter of the model and no other."""
        groups = getattr(self.optimizer, "param_groups", None)
        parameters = getattr(self.model, "named_parameters", None)
        if groups is None or parameters is None:
            return      # a duck-typed optimizer or model: nothing to compare
        held = {id(p) for g in groups for p in g["params"]}
        named = list(parameters())
        own = {id(p) for _, p in named}
        missing = [name for name, p in named if p.trainable and id(p) not in held]
        extra = [p.name or "?" for g in groups for p in g["params"] if id(p) not in own]
        if missing:
            trainable = sum(p.trainable for _, p in named)
            raise ValueError(f"optimizer does not hold {len(missing)} of the model's {trainable} trainable "
                             f"parameters ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), so "
                             "they would never be updated: build the optimizer from this model, "
                             "e.g. fnn.optim.Adam(model.parameters()), after any model[i] = layer replacement "
                             "(freeze() the parameters you mean to keep fixed)")
        if extra:
            raise ValueError(f"optimizer holds {len(extra)} parameter(s) that are not in the model "
                             f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}): was it built for "
                             "another model, or before a layer was replaced? Build it from "
                             "model.parameters()")

    @property
    def is_main(self) -> bool:
        """True unless this is a rank other than 0 of a distributed run."""
        return self._dp is None or self._dp.rank == 0

    def _apply_schedule(self, t):
        if self.schedule is not None:
            self.optimizer.set_lr(self.schedule(t, self._base_lr))

    def train_step(self, xb, yb) -> float:
        """Forward, loss, backward, optimizer step; returns the batch loss.

        When the loss or (with ``check_gradients``) a gradient is NaN/Inf the
        optimizer step is skipped, so the parameters stay as they were, and
        ``self.nonfinite`` names the culprit."""
        self.nonfinite = None
        if self._dp is not None and self._dp.world_size > 1:
            return self._distributed_step(xb, yb)
        scores = self.model.forward(xb)
        loss = self.loss.forward(scores, yb)
        if not math.isfinite(loss):
            self.nonfinite = "loss"
            return loss
        self.model.backward(self.loss.backward())
        return self._checked_step(loss)

    def _checked_step(self, loss):
        if self.check_gradients:
            if not self.optimizer.step(check_finite=True):
                self.nonfinite = "gradients"
        else:
            self.optimizer.step()
        return loss

    def _distributed_step(self, xb, yb) -> float:
        """This rank's shard of the global batch; the returned loss is the global mean."""
        from .distributed import shard_bounds
        dp = self._dp
        lo, hi = shard_bounds(len(xb), dp.world_size, dp.rank)
        weight = (hi - lo) / len(xb)
        scores = self.model.forward(xb[lo:hi])
        loss = dp.allreduce_scalar(self.loss.forward(scores, yb[lo:hi]) * weight)
        if not math.isfinite(loss):
            self.nonfinite = "loss"
            return loss
        dp.begin_backward(weight)
        self.model.backward(self.loss.backward())
        dp.finish_backward()
        return self._checked_step(loss)   # the reduced gradients are the same on every rank

    def fit(self, X, y, epochs, batch_size=128, val=None, progress=True, eval_train_size=1000) -> History:
        """Train ``epochs`` passes over (X, y) in shuffled batches; returns the History.

        Everything is checked before the first step: X and val[0] (converted
        once as the class docstring says; no rows is an error), y and val[1]
        against the loss and the model's number of outputs (one forward pass of
        one row, in eval mode, finds it), the optimizer against the model."""
        dtype = self._input_dtype()
        X, y = _check_xy(X, y, dtype)
        epochs = V.positive_int(epochs, "epochs")
        batch_size = V.positive_int(batch_size, "batch_size")
        eval_train_size = V.positive_int(eval_train_size, "eval_train_size", minimum=0)
        if val is not None:
            if not (isinstance(val, (tuple, list)) and len(val) == 2):
                raise TypeError("val must be a tuple (X_val, y_val)")
            val = _check_xy(val[0], val[1], dtype, "val[0]", "val[1]")
        self._check_optimizer()
        num_classes = self._num_outputs(X, "X", may_differ=self.augment is not None)
        y = self._check_targets(y, num_classes, "y")
        if val is not None:
            val_classes = self._num_outputs(val[0], "val[0]")
            val = (val[0], self._check_targets(val[1], val_classes, "val[1]"))
        dp = self._dp
        if dp is not None:
            if batch_size % dp.world_size:
                raise ValueError(f"batch_size ({batch_size}) is the global batch and must be divisible by the "
                                 f"world size ({dp.world_size}) in distributed training")
            dp.rank_streams()
            progress = progress and dp.rank == 0
        history = self._resume_history or History()
        self._resume_history = None
        start_epoch = self.epochs_done if history.epochs else 0
        self.model.train()
        object.__setattr__(self.model, "input_grad", False)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        n_batches = math.ceil(len(X) / batch_size)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=epochs * n_batches, unit="step", leave=True, dynamic_ncols=True)
        good_state = self.model.state_dict()
        good_optim = self.optimizer.state_dict()
        try:
            for epoch in range(start_epoch, epochs):
                self.epoch = epoch
                t0 = time.perf_counter()
                if self.schedule is not None and self.schedule.per == "epoch":
                    self._apply_schedule(epoch)
                history.lr.append(self.optimizer.lr)
                losses = []
                for xb, yb in batches(X, y, batch_size, shuffle=True, rng=self.rng):
                    if dp is not None and len(xb) < dp.world_size:
                        continue    # a last batch smaller than the world size: some rank would get no rows
                    if self.schedule is not None and self.schedule.per == "step":
                        self._apply_schedule(self.step_count)
                    if self.augment is not None:
                        if getattr(self.augment, "uses_labels", False):   # e.g. Mixup: soft labels back
                            out = self.augment(xb, rng=self.rng, y=yb)
                        else:
                            out = self.augment(xb, rng=self.rng)
                        xb, yb = out if isinstance(out, tuple) else (out, yb)
                    loss = self.train_step(xb, yb)
                    if self.nonfinite is not None:
                        self.model.load_state_dict(good_state)
                        self.optimizer.load_state_dict(good_optim)
                        history.stopped_early = True
                        what = f"loss became {loss}" if self.nonfinite == "loss" else "gradients became NaN/Inf"
                        history.message = (f"{what} at epoch {epoch + 1}, step {self.step_count + 1}; the step was "
                                           "skipped and the model and optimizer restored to the last good epoch "
                                           "(lower the learning rate? clip gradients?)")
                        self.history = history
                        raise TrainingDiverged(history.message)
                    losses.append(loss)
                    history.loss.append(loss)
                    self.step_count += 1
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step_count, loss)
                    if bar is not None:
                        bar.update(1)
                history.epoch_loss.append(float(np.mean(losses)))
                if dp is not None:
                    dp.average_running_stats()
                if eval_train_size:
                    sub = (slice(None) if len(X) <= eval_train_size
                           else self.rng.choice(len(X), eval_train_size, replace=False))
                    history.train_acc.append(self.evaluate(X[sub], y[sub])["accuracy"])
                else:   # eval_train_size=0: no training-accuracy pass
                    history.train_acc.append(float("nan"))
                if val is not None:
                    ev = self.evaluate(val[0], val[1])
                    history.val_acc.append(ev["accuracy"])
                    history.val_loss.append(ev["loss"])
                history.seconds.append(time.perf_counter() - t0)
                good_state = self.model.state_dict()
                good_optim = self.optimizer.state_dict()
                self.epochs_done = epoch + 1
                if self.schedule is not None:
                    self.schedule.observe(history.val_loss[-1] if val is not None else history.epoch_loss[-1])
                if bar is not None:
                    post = {"loss": f"{history.epoch_loss[-1]:.4f}", "train": f"{history.train_acc[-1]:.3f}"}
                    if val is not None:
                        post["val"] = f"{history.val_acc[-1]:.3f}"
                    bar.set_postfix(post, refresh=False)
                stop = False
                for cb in self.callbacks:
                    stop = bool(cb.on_epoch_end(self, epoch, history)) or stop
                if dp is not None:
                    stop = dp.agree(stop)
                if stop:
                    history.stopped_early = True
                    break
        except TrainingDiverged:
            if bar is not None:
                bar.close()
                bar = None
            raise
        finally:
            if bar is not None:
                bar.close()
            self.model.train()
        for cb in self.callbacks:
            cb.on_train_end(self, history)
        self.history = history
        return history

    # --- checkpoints -----------------------------------------------------------
    def save_checkpoint(self, path) -> None:
        """Model, optimizer, schedule, RNG and history to one .npz (atomic, no
        pickle); ``load_checkpoint`` + ``fit`` continue the exact same run.
        Distributed: call it on every rank; rank 0 writes, the others wait for it
        (resume with the same number of ranks for the same dropout streams)."""
        if self._dp is not None and self._dp.world_size > 1:
            from .distributed import barrier
            try:
                if self._dp.rank == 0:
                    self._write_checkpoint(path)
            finally:
                barrier()       # even when rank 0 failed to write: the others must not hang
            return
        self._write_checkpoint(path)

    def _write_checkpoint(self, path) -> None:
        arrays = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in self.optimizer.state_dict().items()})
        meta = {"epochs_done": self.epochs_done, "step_count": self.step_count, "base_lr": self._base_lr,
                "rng": self.rng.bit_generator.state, "schedule": _schedule_state(self.schedule),
                "history": getattr(self, "history", History()).as_dict(),
                "world_size": 1 if self._dp is None else self._dp.world_size}
        arrays["trainer"] = np.array(json.dumps(meta))
        save_npz_atomic(path, arrays)

    def load_checkpoint(self, path) -> None:
        """Restore a ``save_checkpoint`` file. A missing file is a
        FileNotFoundError; one that is not a checkpoint is a ValueError naming it."""
        arrays = load_npz(path, what=_CHECKPOINT_FILE)
        if "trainer" not in arrays:
            raise ValueError(f"{os.fspath(path)} is not {_CHECKPOINT_FILE}: it has no 'trainer' entry"
                             + (" (it is a model file: load it with fastnn.nn.load)" if "config" in arrays else ""))
        try:
            meta = json.loads(str(arrays["trainer"]))
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)} is not {_CHECKPOINT_FILE}: its 'trainer' entry is not valid "
                             f"JSON ({exc})") from exc
        model_state = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
        optim_state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim/")}
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optim_state)
        self.epochs_done = int(meta["epochs_done"])
        self.step_count = int(meta["step_count"])
        self._base_lr = float(meta["base_lr"])
        self.rng.bit_generator.state = meta["rng"]
        _load_schedule_state(self.schedule, meta["schedule"])
        history = History()
        for k, v in meta["history"].items():
            setattr(history, k, list(v))
        self.history = self._resume_history = history

    # --- inputs ------------------------------------------------------------------
    def _input_dtype(self):
        dtype = getattr(self.model, "input_dtype", None)
        return dtype() if dtype is not None else None

    def _num_outputs(self, X, name, may_differ=False):
        """The model's number of outputs (classes), from one row of X in eval
        mode (no statistics or random streams move), or None when the output
        is not (N, C). A model that cannot take X says so here, before training;
        with ``may_differ`` (an augment may reshape the batches) it is left to
        the first step instead."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.forward(X[:1])
        except (ValueError, TypeError) as exc:
            if may_differ:
                return None
            kind = TypeError if isinstance(exc, TypeError) else ValueError
            raise kind(f"the model cannot take {name} of shape {tuple(X.shape)}: {exc}") from exc
        finally:
            self.model.train(was_training)
        return int(out.shape[1]) if getattr(out, "ndim", 0) == 2 else None

    def _check_targets(self, y, num_classes, name):
        check = getattr(self.loss, "check_targets", None)
        return y if check is None else check(y, num_classes, name)

    def predict(self, X, batch_size=1024):
        """Scores (N, C) in eval mode. X as in ``fit``: float32/float64, any
        layout, converted once to the model's dtype and a C-contiguous array."""
        X = _check_x(X, self._input_dtype())
        was_training = self.model.training
        self.model.eval()
        try:
            outs = [np.array(self.model.forward(xb), copy=True)
                    for xb, _ in batches(X, None, batch_size, shuffle=False)]
        finally:
            self.model.train(was_training)
        return np.concatenate(outs)

    def evaluate(self, X, y, batch_size=1024) -> dict:
        """{'loss': mean loss, 'accuracy': fraction correct} in eval mode. y: (N,)
        class labels or (N, C) class probabilities (accuracy counts the argmax
        of each row)."""
        X, y = _check_xy(X, y, self._input_dtype())
        scores = self.predict(X, batch_size)
        y = self._check_targets(y, int(scores.shape[1]) if scores.ndim == 2 else None, "y")
        loss = self.loss.forward(scores, y)
        return {"loss": float(loss), "accuracy": _accuracy(scores, y)}


def _schedule_state(schedule):
    if schedule is None:
        return None
    state = {k: v for k, v in vars(schedule).items() if isinstance(v, (bool, int, float, str, type(None)))}
    if hasattr(schedule, "after"):
        state["after"] = _schedule_state(schedule.after)
    return state


def _load_schedule_state(schedule, state):
    if schedule is None or state is None:
        return
    for k, v in state.items():
        if k == "after":
            _load_schedule_state(schedule.after, v)
        else:
            setattr(schedule, k, v)
