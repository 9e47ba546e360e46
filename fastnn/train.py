"""Trainer: the training loop of the lectures, with the babysitting built in
(per-step loss, per-epoch accuracies, regularization penalty, lr, time; a
clean stop with the last good weights when the loss turns NaN/Inf or explodes). ``Callback`` and ``History`` live in
fastnn.callbacks and are importable from here too."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from tqdm.auto import tqdm

from . import _validate as V
from ._io import NpzArchive, save_npz_atomic
from ._random import generator
from .backend import cuda
from .callbacks import Callback, History  # noqa: F401  (fastnn.train.Callback stays importable)
from .data import batches
from .distributed import DataParallel, barrier, broadcast_object, shard_bounds
from .losses import SoftmaxCrossEntropy
from .nn.layers import Sequential
from .nn.module import _state_shapes, as_model_input
from .optim.lbfgs import LBFGS
from .optim.optimizer import Optimizer

_CHECKPOINT_FILE = "a fastnn trainer checkpoint (.npz written by Trainer.save_checkpoint)"
_MAX_META_BYTES = 64 << 20      # the 'trainer' JSON entry of a checkpoint

# The divergence check (Trainer(divergence_factor=...)): an EMA of the per-step
# training loss, s_t = beta s_{t-1} + (1 - beta) L_t, s_0 = the initial loss
# (beta = 0.9 averages about the last 10 steps: one noisy batch cannot trip it,
# an explosion does within a step or two), compared with the initial loss.
EXPLOSION_BETA = 0.9
EXPLOSION_REFERENCE_BATCHES = 4     # batches whose mean loss is the initial loss
EXPLOSION_REFERENCE_STEPS = 10      # recorded steps whose mean is it, after a resume


class TrainingDiverged(RuntimeError):
    """Training diverged: the loss (or a gradient) became NaN or infinite, or
    the loss exploded (its smoothed value exceeded ``divergence_factor`` times
    the initial loss, the notes' "cost > 3x the original: break out early").
    The model and optimizer hold the last good state (the end of the last good
    epoch); ``trainer.history.message`` says what happened."""


def _check_x(x, dtype, name_x="X"):
    """x at the API boundary: float32/float64 with at least one row, copied once
    into the model's dtype and a C-contiguous layout when it is not already.
    The Trainer's data lives on the host (batches go to the model's device one
    at a time): a CuPy array is copied to the host here, once."""
    return V.batch(as_model_input(cuda.to_host(x) if cuda.device_of(x) == "cuda" else x, dtype, name_x), name_x)


def _check_xy(x, y, dtype, name_x="X", name_y="y"):
    x = _check_x(x, dtype, name_x)
    if cuda.device_of(y) == "cuda":
        y = cuda.to_host(y)
    if not hasattr(y, "dtype"):
        y = np.asarray(y)
    if y.ndim == 0 or len(y) != len(x):
        got = "a scalar" if y.ndim == 0 else f"{len(y)} entries"
        raise ValueError(f"{name_y} must have one entry per row of {name_x}: {name_x} has {len(x)} rows, "
                         f"{name_y} has {got}")
    V.finite(x, name_x)
    return x, y


def _to(device, a):
    """a on ``device``: a NumPy batch goes to the GPU for "cuda" (cupy.asarray on
    CuPy's current stream); None and arrays already there pass unchanged."""
    if device != "cuda" or a is None or not isinstance(a, np.ndarray):
        return a
    return cuda.to_device(a)


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

    Exploding loss (the notes: "if the cost is ever > 3x the original cost,
    break out early"): with ``divergence_factor`` (default 3.0; None turns it
    off) ``fit`` also raises ``TrainingDiverged``, restoring the same way, when
    the smoothed training loss s_t = 0.9 s_{t-1} + 0.1 L_t (s_0 = L_0, about
    the last 10 steps) exceeds divergence_factor * L_0, however finite. L_0
    (``trainer.initial_loss``) is measured once per Trainer before its first
    update: the mean training-mode loss of up to 4 random batches (augmented
    as in training; every buffer, random stream and the shuffling left
    untouched), or the loss of an uninformed model (all-zero scores: ln C for
    softmax cross-entropy) when that is larger, so fine-tuning a model whose
    loss is already small is not stopped by a rise that is no explosion. A
    healthy run's smoothed loss stays near or below L_0; at lr=1e6 the check
    trips within a step or two. ``trainer.smoothed_loss`` holds s_t.

    L-BFGS: with ``fnn.optim.LBFGS`` each step calls ``optimizer.step(closure)``
    (the closure runs forward, loss, backward on the batch and returns the
    loss); it is a full-batch method, so ``fit(X, y, epochs,
    batch_size=len(X))`` makes one step per epoch over all of X (unshuffled),
    and a smaller batch_size is a ValueError. ``history.loss`` records the
    loss at the start of each step.

    Regularization: ``history.reg_loss`` (per epoch) and
    ``evaluate(...)["reg_loss"]`` report the optimizer's penalty
    ``0.5 * weight_decay * ||W||^2 + l1 * |W|_1`` beside the data loss
    (``regularization_loss``; ``weight_decay`` is 2 * lambda of the notes'
    ``lambda * ||W||^2``).

    distributed=True: data-parallel over the ranks of fastnn.distributed (MPI;
    ``init()`` is called if needed). ``fit``'s batch_size is the global batch,
    which the world size must divide; each rank trains on its shard and ONE
    allreduce of the flat gradient buffer follows backward. ``bucket_mb``: reduce
    the gradients in buckets of about that many MiB during backward instead
    (overlapping communication with the rest of backward). Only rank 0 prints and
    writes checkpoints; see ``fastnn.distributed`` for the rest of the contract.

    GPU: a model moved with ``model.to("cuda")`` (before its optimizer was
    built) trains on the GPU from NumPy X and y: the data stays on the host,
    shuffling and ``augment`` run there, and each batch (X and its labels) is
    copied to the GPU with ``cupy.asarray`` on CuPy's current stream before
    the forward pass. ``predict`` and ``evaluate`` return NumPy on the host;
    checkpoints are written from host copies."""

    def __init__(self, model, loss, optimizer, schedule=None, callbacks=(), augment=None, seed=None,
                 check_gradients=True, distributed=False, bucket_mb=None, divergence_factor=3.0):
        self.divergence_factor = (None if divergence_factor is None else
                                  V.real(divergence_factor, "divergence_factor", low=1.0, low_open=True))
        self.initial_loss = None      # the reference of the divergence check (see the class docstring)
        self.smoothed_loss = None     # EMA of the training loss, EXPLOSION_BETA
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
            self._dp = DataParallel(model, optimizer, bucket_mb=bucket_mb)
            # Every rank shuffles (and augments) the same global batches.
            self.rng.bit_generator.state = broadcast_object(self.rng.bit_generator.state)
        elif bucket_mb is not None:
            raise ValueError("bucket_mb only applies with distributed=True")

    @property
    def device(self) -> str:
        """Where the model's parameters live: "cuda" (CuPy) or "cpu" (NumPy, and
        for a model without parameters or a duck-typed one)."""
        device = getattr(self.model, "device", None)
        return (device() if callable(device) else None) or "cpu"

    def _check_optimizer(self) -> None:
        """The optimizer holds every trainable parameter of the model and no
        other, on the model's device."""
        opt_device = getattr(self.optimizer, "device", None)
        if isinstance(opt_device, str) and opt_device != self.device:
            raise ValueError(f"the optimizer's buffers are on {opt_device} but the model is on {self.device}: "
                             "the model was moved after the optimizer was built; call model.to(...) first, "
                             "then build the optimizer from model.parameters()")
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
        ``self.nonfinite`` names the culprit.

        With ``fnn.optim.LBFGS`` the step is ``optimizer.step(closure)``, the
        closure running forward, loss and backward on (xb, yb) and returning
        the loss (as many times as L-BFGS asks); the loss returned is the one
        at the start of the step (what ``LBFGS.step`` returns). A NaN/Inf loss
        or gradient inside the closure stops the step (``nonfinite`` set; the
        Trainer then restores the last good state)."""
        self.nonfinite = None
        device = self.device
        xb, yb = _to(device, xb), _to(device, yb)
        if isinstance(self.optimizer, LBFGS):
            return self._closure_step(xb, yb)
        if self._dp is not None and self._dp.world_size > 1:
            return self._distributed_step(xb, yb)
        scores = self._forward_for_loss(xb)
        if device == "cuda" and self._one_sync_step_applies():
            words = cuda.cp.empty(3, np.int64)
            if self.loss._forward_on_device(scores, yb, words[:2]):
                return self._one_sync_step(words)
        loss = self.loss.forward(scores, yb)
        if not math.isfinite(loss):
            self.nonfinite = "loss"
            return loss
        self.model.backward(self.loss.backward())
        return self._checked_step(loss)

    def _forward_for_loss(self, xb):
        """The model's scores for this step's loss: a Sequential's last buffer
        itself (no copy; the loss reads it at once), else ``model.forward``."""
        if isinstance(self.model, Sequential) and type(self.model).forward is Sequential.forward:
            return self.model._forward_into_buffers(xb)
        return self.model.forward(xb)

    def _one_sync_step_applies(self) -> bool:
        """The GPU step with one synchronization needs fastnn's own softmax
        cross-entropy and optimizer step (not overridden by a subclass)."""
        return (type(self.loss).forward is SoftmaxCrossEntropy.forward
                and type(self.optimizer).step is Optimizer.step)

    def _one_sync_step(self, words) -> float:
        """Backward and optimizer step after a forward whose loss and label check
        were left on the GPU in words[:2]: the gradients' sum of squares goes to
        words[2], and one transfer reads all three. So a GPU step synchronizes
        once, as PyTorch's loop with ``loss.item()`` does, where reading the loss
        after the forward and the gradient norm after the backward would wait for
        the GPU twice. The outcome is the same as the two-read step: a label out
        of range raises the loss's ValueError and a NaN/Inf loss or gradient skips
        the update (parameters untouched); only the backward, harmless, has run."""
        self.model.backward(self.loss.backward())
        self.optimizer._grad_sq_norm_on_device(out=words[2:].view(np.float64))
        host = words.get()
        loss = self.loss._loss_from(host[:2])
        if not math.isfinite(loss):
            self.nonfinite = "loss"
            return loss
        sq = float(host[2:].view(np.float64)[0])
        if not self.optimizer._step(self.check_gradients, sq):
            self.nonfinite = "gradients"
        return loss

    def _closure_step(self, xb, yb) -> float:
        """One L-BFGS step on the batch (the whole training set: see ``fit``)."""
        last = [float("nan")]

        def closure():
            if self._dp is not None and self._dp.world_size > 1:
                loss = self._distributed_forward_backward(xb, yb)
            else:
                loss = self.loss.forward(self.model.forward(xb), yb)
                if math.isfinite(loss):
                    self.model.backward(self.loss.backward())
            last[0] = loss
            if not math.isfinite(loss):
                self.nonfinite = "loss"       # LBFGS puts the parameters back and raises
                return loss
            if self.check_gradients and not np.isfinite(self.optimizer.flat_grad).all():
                self.nonfinite = "gradients"
                raise FloatingPointError("the gradients became NaN/Inf")
            return loss

        try:
            return float(self.optimizer.step(closure))
        except FloatingPointError:
            self.nonfinite = self.nonfinite or "loss"
            return last[0]

    def _checked_step(self, loss):
        if self.check_gradients:
            if not self.optimizer.step(check_finite=True):
                self.nonfinite = "gradients"
        else:
            self.optimizer.step()
        return loss

    def _distributed_step(self, xb, yb) -> float:
        """This rank's shard of the global batch; the returned loss is the global mean."""
        loss = self._distributed_forward_backward(xb, yb)
        if not math.isfinite(loss):
            self.nonfinite = "loss"
            return loss
        return self._checked_step(loss)   # the reduced gradients are the same on every rank

    def _distributed_forward_backward(self, xb, yb) -> float:
        """Forward, loss and backward of this rank's shard, the gradients
        allreduced; returns the global mean loss (no backward when it is NaN/Inf)."""
        dp = self._dp
        lo, hi = shard_bounds(len(xb), dp.world_size, dp.rank)
        weight = (hi - lo) / len(xb)
        scores = self.model.forward(xb[lo:hi])
        loss = dp.allreduce_scalar(self.loss.forward(scores, yb[lo:hi]) * weight)
        if not math.isfinite(loss):
            return loss
        dp.begin_backward(weight)
        self.model.backward(self.loss.backward())
        dp.finish_backward()
        return loss

    def fit(self, X, y, epochs, batch_size=128, val=None, progress=True, eval_train_size=1000) -> History:
        """Train ``epochs`` passes over (X, y) in shuffled batches; returns the History.

        Each step: forward, loss, backward, optimizer step, then the per-step
        schedule and callbacks; after each epoch: train accuracy on up to
        ``eval_train_size`` rows, validation loss/accuracy, the per-epoch
        schedule, callbacks (any may stop training).

        Parameters
        ----------
        X : (N, ...) float32 or float64
            Training inputs, e.g. ``(N, D)`` for an MLP, ``(N, C, H, W)`` for a
            CNN; copied once into the model's dtype when needed.
        y : (N,) int64 labels, or (N, C) float class probabilities
            Targets, as the loss accepts.
        epochs : int
            Number of passes over the data (>= 1).
        batch_size : int, default 128
            Minibatch size (the global batch when distributed). For
            ``fastnn.optim.LBFGS`` it must be ``len(X)`` (full batch).
        val : tuple (X_val, y_val), optional
            Validation data scored after every epoch (``history.val_loss``,
            ``history.val_acc``); needed by callbacks monitoring ``val_*``.
        progress : bool, default True
            Show a progress bar (tqdm) and a line per epoch.
        eval_train_size : int, default 1000
            Rows of X (drawn at random) scored for ``history.train_acc`` each
            epoch; 0 skips it.

        Returns
        -------
        History
            Per-step ``loss``; per-epoch ``epoch_loss``, ``reg_loss``,
            ``train_acc``, ``val_acc``, ``val_loss``, ``lr``, ``seconds``.

        Raises
        ------
        TrainingDiverged
            On a NaN/Inf loss or gradient, or an exploding loss (see the
            class docstring); the last good state is restored first.
        ValueError
            On bad inputs. Everything is checked before the first step: X and
            val[0] (no rows is an error), y and val[1] against the loss and the
            model's number of outputs (one forward pass of one row, in eval
            mode, finds it), the optimizer against the model."""
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
        if isinstance(self.optimizer, LBFGS) and batch_size < len(X):
            raise ValueError(f"batch_size ({batch_size}) is smaller than X ({len(X)} rows): L-BFGS is a full-batch "
                             "method (its curvature pairs and line search compare losses and gradients of one "
                             f"fixed objective), so pass batch_size=len(X) (= {len(X)}), or use a first-order "
                             "optimizer (SGD, Adam) for mini-batches")
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
        self.model.set_input_grad(False)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        n_batches = math.ceil(len(X) / batch_size)
        bar = None
        if progress:
            bar = tqdm(total=epochs * n_batches, unit="step", leave=True, dynamic_ncols=True)
        good_state = self.model.state_dict()
        good_optim = self.optimizer.state_dict()

        def diverged(message):
            self.model.load_state_dict(good_state)
            self.optimizer.load_state_dict(good_optim)
            self.smoothed_loss = None     # a new fit (lower lr?) starts the smoothing afresh
            history.stopped_early = True
            history.message = message
            self.history = history
            raise TrainingDiverged(message)

        try:
            if self.divergence_factor is not None and self.initial_loss is None:
                self._set_initial_loss(X, y, batch_size, history)
            for epoch in range(start_epoch, epochs):
                self.epoch = epoch
                t0 = time.perf_counter()
                if self.schedule is not None and self.schedule.per == "epoch":
                    self._apply_schedule(epoch)
                history.lr.append(self.optimizer.lr)
                losses = []
                full_batch = isinstance(self.optimizer, LBFGS)    # one fixed objective: no reshuffling
                for xb, yb in batches(X, y, batch_size, shuffle=not full_batch, rng=self.rng):
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
                        what = f"loss became {loss}" if self.nonfinite == "loss" else "gradients became NaN/Inf"
                        diverged(f"{what} at epoch {epoch + 1}, step {self.step_count + 1}; the step was "
                                 "skipped and the model and optimizer restored to the last good epoch "
                                 "(lower the learning rate? clip gradients?)")
                    losses.append(loss)
                    history.loss.append(loss)
                    self.step_count += 1
                    if self._exploded(loss):
                        diverged(f"loss exploded at epoch {epoch + 1}, step {self.step_count}: the smoothed "
                                 f"training loss {self.smoothed_loss:.4g} exceeds divergence_factor "
                                 f"({self.divergence_factor:g}) x the initial loss {self.initial_loss:.4g} "
                                 f"(this step's loss {loss:.4g}); the model and optimizer were restored to the "
                                 "last good epoch (lower the learning rate? divergence_factor=None turns the "
                                 "check off)")
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step_count, loss)
                    if bar is not None:
                        bar.update(1)
                history.epoch_loss.append(float(np.mean(losses)))
                history.reg_loss.append(regularization_loss(self.optimizer))
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

    # --- the divergence check ----------------------------------------------------
    def _set_initial_loss(self, X, y, batch_size, history) -> None:
        """``initial_loss``, the reference of the divergence check, once per
        Trainer, before its first update:

            L_0 = max(mean training-mode loss over up to EXPLOSION_REFERENCE_BATCHES
                      random batches of X (augmented as in training),
                      the loss of an uninformed model: the same batches scored all zero)

        with every buffer and random stream left as it was (the run itself is
        unchanged). One batch's loss would be a noisy reference (a lucky batch
        of a pretrained model can be 25x below the mean). The uninformed loss
        (ln C for softmax cross-entropy, mean(y^2) for MSE) is what a fresh
        model starts near; it keeps fine-tuning a model whose loss is already
        small (where a rise from 0.02 to 0.1 is no explosion) from tripping.
        Resumed from a checkpoint (``history.loss`` already holds steps): the
        mean of the run's first recorded losses takes the place of the measured
        one (the uninformed loss does not depend on the weights), and the
        smoothed loss is rebuilt from the recorded ones."""
        preserving_state = getattr(self.model, "preserving_state", None)
        if preserving_state is None:
            return      # a duck-typed model: the first step's loss becomes the reference (_exploded)
        rng = np.random.Generator(type(self.rng.bit_generator)())
        rng.bit_generator.state = self.rng.bit_generator.state     # a copy: the run's own draws are untouched
        rows = rng.choice(len(X), min(len(X), EXPLOSION_REFERENCE_BATCHES * batch_size), replace=False)
        losses, uninformed = [], []
        with preserving_state(training=True):
            for xb, yb in batches(X[rows], y[rows], batch_size, shuffle=False):
                if self.augment is not None:
                    if getattr(self.augment, "uses_labels", False):
                        out = self.augment(xb, rng=rng, y=yb)
                    else:
                        out = self.augment(xb, rng=rng)
                    xb, yb = out if isinstance(out, tuple) else (out, yb)
                xb, yb = _to(self.device, xb), _to(self.device, yb)
                scores = self.model.forward(xb)
                losses.append(float(self.loss.forward(scores, yb)))
                uninformed.append(float(self.loss.forward(V.array_module(scores).zeros_like(scores), yb)))
        measured = float(np.mean(history.loss[:EXPLOSION_REFERENCE_STEPS] if history.loss else losses))
        reference = max(measured, float(np.mean(uninformed)))
        if not (math.isfinite(reference) and reference > 0.0):
            return
        self.initial_loss = reference
        if history.loss:
            ema = reference
            for value in history.loss:
                ema = EXPLOSION_BETA * ema + (1.0 - EXPLOSION_BETA) * value
            self.smoothed_loss = ema

    def _exploded(self, loss) -> bool:
        """Update the smoothed loss with this step's; True when it exceeds
        ``divergence_factor * initial_loss``."""
        if self.divergence_factor is None:
            return False
        if self.initial_loss is None:
            if not (math.isfinite(loss) and loss > 0.0):
                return False        # no positive reference yet: a ratio to it means nothing
            self.initial_loss = float(loss)
        ema = self.initial_loss if self.smoothed_loss is None else self.smoothed_loss
        self.smoothed_loss = EXPLOSION_BETA * ema + (1.0 - EXPLOSION_BETA) * float(loss)
        return self.smoothed_loss > self.divergence_factor * self.initial_loss

    # --- checkpoints -----------------------------------------------------------
    def save_checkpoint(self, path) -> None:
        """Model, optimizer, schedule, RNG and history to one .npz (atomic, no
        pickle); ``load_checkpoint`` + ``fit`` continue the exact same run.
        Distributed: call it on every rank; rank 0 writes, the others wait for it
        (resume with the same number of ranks for the same dropout streams)."""
        if self._dp is not None and self._dp.world_size > 1:
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

    def load_checkpoint(self, path, max_bytes=None) -> None:
        """Restore a ``save_checkpoint`` file. A missing file is a
        FileNotFoundError; one that is not a checkpoint is a ValueError naming it.

        Untrusted files: as ``fastnn.nn.load``, every array's declared shape is
        checked (the model's against this trainer's model, the optimizer's
        state arrays against its optimizer) before any is read, the arrays may
        declare at most ``max_bytes`` in all (default ``fastnn._io.MAX_NPZ_BYTES``
        = 2**32 bytes) and none is inflated past its declared size."""
        path = os.fspath(path)
        with NpzArchive(path, _CHECKPOINT_FILE, max_bytes) as archive:
            if "trainer" not in archive.shapes:
                archive.fail("it has no 'trainer' entry" + (" (it is a model file: load it with fastnn.nn.load)"
                                                            if "config" in archive.shapes else ""))
            text = str(archive.read("trainer", max_bytes=_MAX_META_BYTES))
            try:
                meta = json.loads(text)
            except ValueError as exc:
                archive.fail(f"its 'trainer' entry is not valid JSON ({exc})")
            try:
                archive.check_shapes("model/", _state_shapes(self.model))
                archive.check_shapes("optim/", {f"state{i}": s.shape
                                                for i, s in enumerate(getattr(self.optimizer, "state", ()))},
                                     owner="the optimizer", strict=False)
            except ValueError as exc:
                raise ValueError(f"checkpoint {path}: {exc}") from exc
            model_state = {k[6:]: archive.read(k) for k in archive.shapes if k.startswith("model/")}
            optim_state = {k[6:]: archive.read(k) for k in archive.shapes if k.startswith("optim/")}
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
            out = self.model.forward(_to(self.device, X[:1]))
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
        device = self.device
        self.model.eval()
        try:
            outs = [cuda.to_host(self.model.forward(_to(device, xb)), copy=True)
                    for xb, _ in batches(X, None, batch_size, shuffle=False)]
        finally:
            self.model.train(was_training)
        return np.concatenate(outs)

    def evaluate(self, X, y, batch_size=1024) -> dict:
        """{'loss': mean loss, 'accuracy': fraction correct, 'reg_loss': the
        regularization penalty} in eval mode. y: (N,) class labels or (N, C)
        class probabilities (accuracy counts the argmax of each row).

        'loss' is the data loss alone; 'reg_loss' is the optimizer's penalty on
        the current weights, ``regularization_loss(optimizer)`` =
        ``sum 0.5 * weight_decay * ||W||^2 + l1 * |W|_1`` over the regularized
        parameters (0.0 without weight decay or l1), so the notes' objective is
        loss + reg_loss, and "crank up the regularization and the loss goes up"
        shows in reg_loss."""
        X, y = _check_xy(X, y, self._input_dtype())
        scores = self.predict(X, batch_size)
        y = self._check_targets(y, int(scores.shape[1]) if scores.ndim == 2 else None, "y")
        loss = self.loss.forward(scores, y)
        return {"loss": float(loss), "accuracy": _accuracy(scores, y),
                "reg_loss": regularization_loss(self.optimizer)}


def regularization_loss(optimizer) -> float:
    """The penalty the optimizer's settings add to the objective, on the
    current weights (float64):

        R = sum over parameter groups g, over the trainable parameters W of g,
            0.5 * weight_decay_g * ||W||_2^2 + l1_g * |W|_1

    the terms whose gradients the optimizer adds (weight_decay * W and
    l1 * sign(W)). Frozen parameters are not regularized (the optimizer leaves
    them alone), so they are not counted; a group without weight_decay/l1
    adds 0.

    fastnn's (PyTorch's) ``weight_decay`` is 2 * lambda of the notes' L2 term
    lambda * ||W||^2, so R is the notes' lambda * ||W||^2 exactly. AdamW's
    decoupled decay (p *= 1 - lr * weight_decay) is not the gradient of any
    term of the loss; R reports 0.5 * weight_decay * ||W||^2 for it as well, the
    L2 penalty of the same strength, to watch the weights' size."""
    total = 0.0
    for group in getattr(optimizer, "param_groups", ()):
        decay = float(group.get("weight_decay", 0.0) or 0.0)
        l1 = float(group.get("l1", 0.0) or 0.0)
        if decay == 0.0 and l1 == 0.0:
            continue
        for p in group["params"]:
            if not p.trainable:
                continue
            xp = V.array_module(p.data)     # on the parameters' device; one float per term
            w = xp.asarray(p.data, dtype=np.float64).reshape(-1)
            if decay:
                total += 0.5 * decay * float(w @ w)
            if l1:
                total += l1 * float(xp.abs(w).sum())
    return total


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
