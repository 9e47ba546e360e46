"""Babysitting the learning process (lecture "Training Neural Networks I").

The checks to run before and while training, each one measured, not guessed:

- ``check_initial_loss``: an untrained softmax classifier over C classes should
  score about ln C; far above means the initial weights are too large (or a
  regularization term sneaked into the loss), far below means something leaks.
- ``overfit_small``: a model that cannot reach 100% on 20 examples has a bug.
- ``gradient_check``: analytic ``.grad`` vs central differences (CS231n's
  relative error), per parameter; runs in float64 (a float32 model is checked
  on a float64 copy).
- ``gradient_stats`` (+ ``plot_gradient_stats``): mean, std, largest value and
  histogram of every parameter's gradient over one batch: vanishing or
  exploding gradients, layer by layer.
- ``activation_stats`` (+ ``plot_activation_stats``) and
  ``dead_relu_fraction``: mean, std, saturation and dead units of every
  nonlinearity's output, layer by layer (Sequential's fused Linear+activation
  steps included).
- ``UpdateRatioMonitor``: ||update|| / ||W|| per parameter per step; about 1e-3
  is healthy.
- ``init_experiment``: the lecture's 10-layer weight-initialization experiment.

Shapes: X (N, D) or (N, C, H, W); a layer's output (N, M) or (N, C, H, W);
"units" are axis 1 (features or channels).
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from . import _validate as V
from . import losses, optim
from ._random import generator
from .callbacks import Callback
from .nn.layers import Activation, Linear, Sequential
from .nn.module import Module
from .train import Trainer

# Activations whose output is exactly 0 for every negative input ("dead" units).
ZERO_FLOOR = frozenset({"relu"})
# Activations for which a count of exact zeros is reported (0 for the leaky ones: they never die).
RELU_FAMILY = frozenset({"relu", "leaky_relu", "prelu"})


# --- walking a model step by step (Module.walk / forward_step / preserving_state) ---

def _nonlinearity(layer, act) -> str:
    """The name of the nonlinearity a step applies ('identity' for none)."""
    if act is not None:
        return act.name
    if isinstance(layer, Activation):
        return layer.name
    return getattr(layer, "activation", "identity") or "identity"


def _trace(model, X, training=False):
    """[(label, activation name, output array)] for every step of the forward pass."""
    out = []
    with model.preserving_state(training):
        x = X
        for label, layer, act in model.walk():
            x = layer.forward_step(x, act)
            out.append((label, _nonlinearity(layer, act), np.asarray(x)))
    return out


def _check_x(X, name="X", usage=None):
    if usage is not None and not hasattr(X, "dtype"):
        raise TypeError(f"{name} must be a numpy.ndarray (float32 or float64), got {type(X).__name__}; "
                        f"the arguments are {usage}")
    return np.ascontiguousarray(V.batch(X, name))


def _check_model(model, usage):
    """model itself, a fastnn Module; a function or a class gets a message saying
    what to pass instead (overfit_small is the one diagnostic taking a factory)."""
    where = usage.split("(")[0]
    if isinstance(model, Module):
        return model
    if isinstance(model, type):
        raise TypeError(f"{where} needs model, a fastnn Module instance, got the class {model.__name__}: "
                        f"build the model first ({model.__name__}(...)); the arguments are {usage}")
    if callable(model):
        name = getattr(model, "__name__", type(model).__name__)
        raise TypeError(f"{where} needs model, a fastnn Module (the model itself), got a function ({name}): "
                        "call it and pass the model it returns (only overfit_small takes a function that "
                        f"builds a fresh model); the arguments are {usage}")
    raise TypeError(f"{where} needs model, a fastnn Module, got {type(model).__name__}; the arguments are {usage}")


def _check_loss(loss, usage):
    """loss, an object with forward(scores, y) and backward() (an instance, not a class)."""
    where = usage.split("(")[0]
    if isinstance(loss, type):
        raise TypeError(f"{where} needs loss, a loss object such as fnn.losses.SoftmaxCrossEntropy() (an "
                        f"instance, with parentheses), got the class {loss.__name__}")
    if isinstance(loss, Module) or not (callable(getattr(loss, "forward", None))
                                        and callable(getattr(loss, "backward", None))):
        raise TypeError(f"{where} needs loss, a loss object with forward(scores, y) and backward() such as "
                        f"fnn.losses.SoftmaxCrossEntropy(), got {type(loss).__name__}; the arguments are {usage}")
    return loss


# --- initial loss ----------------------------------------------------------------

def check_initial_loss(model, loss, X, y, rtol=0.1, atol=0.05) -> dict:
    """The loss of the (untrained) model on (X, y) against its expected value.

    For softmax cross-entropy over C classes the expected value is ln C
    (``loss.expected_initial(C)``): all scores near 0 give uniform
    probabilities. ``ok`` when ``|loss - expected| <= max(atol, rtol * expected)``;
    the default tolerance (10%) passes the usual He/Xavier initializations of
    an MLP (their scores have std ~0.5, loss ~1.05 ln C) and flags weights a
    few times too large. Runs in eval mode and leaves the model unchanged.

    Returns {'loss', 'expected', 'ok', 'score_std', 'hint'} (hint is '' when ok).

    Takes the model itself (unlike ``overfit_small``, which takes a function
    building a fresh one): ``check_initial_loss(make_model(), loss, X, y)``."""
    usage = "check_initial_loss(model, loss, X, y)"
    _check_model(model, usage)
    _check_loss(loss, usage)
    X = _check_x(X, usage=usage)
    with model.preserving_state(training=False):
        scores = np.asarray(model.forward(X))
        value = float(loss.forward(scores, y))
    if scores.ndim != 2:
        raise ValueError(f"the model must output scores (N, C), got shape {scores.shape}")
    expected = loss.expected_initial(scores.shape[1])
    score_std = float(np.std(scores))
    result = {"loss": value, "expected": expected, "ok": None, "score_std": score_std, "hint": ""}
    if expected is None:
        result["hint"] = f"{type(loss).__name__} has no known initial value; nothing to compare"
        return result
    tol = max(atol, rtol * abs(expected))
    result["ok"] = bool(math.isfinite(value) and abs(value - expected) <= tol)
    if not math.isfinite(value):
        result["hint"] = "the initial loss is not finite: check the data and the initial weights"
    elif value > expected + tol:
        result["hint"] = (f"initial loss {value:.4g} is above the expected {expected:.4g} (scores have std "
                          f"{score_std:.3g}, want them near 0): initial weights too large? use a smaller or "
                          "Xavier/He init; or is a regularization term included in the loss?")
    elif value < expected - tol:
        result["hint"] = (f"initial loss {value:.4g} is below the expected {expected:.4g} for an untrained "
                          "model: are the labels leaking into the inputs, or the classes very unbalanced?")
    return result


# --- overfit a tiny subset ----------------------------------------------------------

def overfit_small(build, X, y, epochs=200, n=20, lr=1e-2, seed=0, loss=None) -> dict:
    """Train a fresh ``build()`` model on n examples (Adam, full batch, no weight
    decay, dropout switched off) for ``epochs`` steps. A correct model and
    training loop drive the training accuracy to 1.0 and the loss near 0.

    ``build`` is a function returning a fresh model (``lambda: make_model()``),
    not a model: the check must start from untrained weights, and a model
    trained by an earlier call would pass it for the wrong reason.

    Returns {'train_acc', 'final_loss', 'ok', 'model', 'history'}."""
    if isinstance(build, Module):
        raise TypeError("overfit_small needs build, a function returning a fresh model (e.g. lambda: "
                        f"make_model()), got a {type(build).__name__}: the check trains from untrained weights "
                        "(check_initial_loss, gradient_check and the others take the model itself)")
    if not callable(build):
        raise TypeError("overfit_small needs build, a function returning a fresh model (e.g. lambda: "
                        f"make_model()), got {type(build).__name__}")
    if loss is not None:
        _check_loss(loss, "overfit_small(build, X, y, epochs=200, ..., loss=None)")
    X = _check_x(X, usage="overfit_small(build, X, y, epochs=200)")
    n = V.positive_int(n, "n")
    if n > len(X):
        raise ValueError(f"n={n} is larger than the {len(X)} examples given")
    idx = generator(seed).choice(len(X), n, replace=False)
    xs, ys = np.ascontiguousarray(X[idx]), np.asarray(y)[idx]
    model = build()
    if not isinstance(model, Module):
        raise TypeError(f"overfit_small needs build, a function returning a fresh model: build() must return a "
                        f"fastnn Module, got {type(model).__name__}")
    for m in model.modules():       # no regularization: this checks capacity, not generalization
        if hasattr(m, "p") and hasattr(m, "offset"):
            m.p = 0.0
    loss = loss if loss is not None else losses.SoftmaxCrossEntropy()
    trainer = Trainer(model, loss, optim.Adam(model.parameters(), lr=lr), seed=seed)
    hist = trainer.fit(xs, ys, epochs=epochs, batch_size=n, progress=False, eval_train_size=n)
    ev = trainer.evaluate(xs, ys)
    return {"train_acc": ev["accuracy"], "final_loss": ev["loss"], "ok": ev["accuracy"] == 1.0,
            "model": model, "history": hist}


# --- gradient check ----------------------------------------------------------------

def _relative_error(analytic, numeric):
    """CS231n: |a - n| / max(|a| + |n|, 1e-8), elementwise."""
    return np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8)


def _converted_copy(model, dtype):
    """A deep copy of ``model`` whose float parameters and buffers are ``dtype``
    (the layers take their dtype from their weights, so the copy computes in
    ``dtype`` end to end); the model itself is not touched."""
    clone = copy.deepcopy(model)
    for _, p in clone.named_parameters():
        if p.data.dtype != dtype:
            p.data = p.data.astype(dtype)
            p.grad = np.zeros_like(p.data)
    for m in clone.modules():
        for name, buf in list(m.named_buffers()):
            if "." not in name and getattr(buf, "dtype", None) is not None and buf.dtype.kind == "f":
                setattr(m, name, buf.astype(dtype))
    return clone


def gradient_check(model, loss, X, y, eps=1e-6, n_checks=10, seed=0, tol=None, training=False,
                   dtype=np.float64) -> dict:
    """Analytic gradients (``model.backward`` into each ``.grad``) against
    central differences (L(w + eps) - L(w - eps)) / 2 eps at ``n_checks``
    random entries of every trainable parameter (all entries of small ones).

    The check runs in ``dtype`` (float64 by default): float32 round-off swamps
    a difference of eps = 1e-6 (the loss moves by ~1e-6 * grad, below float32's
    resolution, so every relative error reads ~1). A model of another dtype is
    checked on a converted deep copy (same weights, buffers, random streams and
    code); the result says so in ``dtype`` and ``converted``. Pass
    ``dtype=None`` to check in the model's own dtype (for float32, with eps
    ~1e-3, expect errors ~1e-2). Use a few rows of X. Relative errors below
    1e-7 are right; up to ~1e-5 can come from ReLU kinks. ``tol`` (default
    1e-5 for float64, 2e-2 for float32) decides ``ok``. training=True checks
    the training-mode function (the random draws of Dropout, DropConnect,
    FractionalMaxPool2d and Residual are held fixed; BN running statistics are
    restored afterwards).

    Returns {'errors': {name: max relative error}, 'max_error', 'ok', 'dtype'
    (the dtype the check ran in), 'converted' (whether a converted copy was
    checked), 'hint' ('' unless a float32 check looks swamped by round-off)};
    the model's weights are left unchanged."""
    usage = "gradient_check(model, loss, X, y)"
    _check_model(model, usage)
    _check_loss(loss, usage)
    X = _check_x(X, usage=usage)
    eps = V.real(eps, "eps", low=0.0, low_open=True)
    n_checks = V.positive_int(n_checks, "n_checks")
    params = [(name, p) for name, p in model.named_parameters() if p.trainable]
    if not params:
        raise ValueError("the model has no trainable parameters to check")
    if dtype is None:
        dtype = params[0][1].data.dtype
    dtype = np.dtype(dtype)
    if dtype not in V.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float64 or None (the model's own), got {dtype}")
    converted = any(p.data.dtype != dtype for _, p in model.named_parameters())
    if converted:
        model = _converted_copy(model, dtype)
        params = [(name, p) for name, p in model.named_parameters() if p.trainable]
    X = X.astype(dtype, copy=False)
    if tol is None:
        tol = 1e-5 if dtype == np.float64 else 2e-2
    rng = generator(seed)
    streams = model.rng_states()

    def loss_at():
        model.set_rng_states(streams)        # the same random draws (dropout masks...) for every evaluation
        return float(loss.forward(model.forward(X), y))

    errors = {}
    with model.preserving_state(training):
        loss_at()
        was_input_grad = model.input_grad
        model.set_input_grad(False)
        try:
            model.backward(loss.backward())
        finally:
            model.set_input_grad(was_input_grad)
        analytic = {name: np.array(p.grad, np.float64, copy=True) for name, p in params}
        for name, p in params:
            size = p.data.size
            picks = np.arange(size) if size <= n_checks else rng.choice(size, n_checks, replace=False)
            numeric = np.empty(len(picks))
            for k, i in enumerate(picks):
                old = p.data.flat[i]
                p.data.flat[i] = old + eps
                plus = loss_at()
                p.data.flat[i] = old - eps
                minus = loss_at()
                p.data.flat[i] = old
                numeric[k] = (plus - minus) / (2 * eps)
            errors[name] = float(np.max(_relative_error(analytic[name].reshape(-1)[picks], numeric)))
    worst = max(errors.values())
    hint = ""
    if dtype == np.float32 and worst > tol:
        hint = (f"checked in float32 with eps={eps:g}: round-off swamps the central differences; gradient checks "
                "need float64: use dtype=np.float64 (the default; a float64 copy of the model is checked) or "
                "build the model with dtype=np.float64")
    return {"errors": errors, "max_error": worst, "ok": bool(worst <= tol), "dtype": dtype.name,
            "converted": converted, "hint": hint}


# --- activation statistics --------------------------------------------------------------

def _layer_stats(label, act, y, bins=50) -> dict:
    # saturated: within 1% of a bound of the squashing nonlinearities (tanh +-1, sigmoid 0 and 1)
    y64 = y.astype(np.float64, copy=False)
    saturated = dead = None
    if act == "tanh":
        saturated = float(np.mean(np.abs(y64) > 0.99))
    elif act == "sigmoid":
        saturated = float(np.mean((y64 < 0.01) | (y64 > 0.99)))
    if act in RELU_FAMILY:
        dead = float(np.mean(y64 == 0.0))
    finite = y64[np.isfinite(y64)]
    if finite.size:
        counts, edges = np.histogram(finite, bins=bins)
    else:
        counts, edges = np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
    return {"name": label, "activation": act, "mean": float(np.mean(y64)), "std": float(np.std(y64)),
            "saturated": saturated, "dead": dead, "hist": (counts, edges)}


def activation_stats(model, X, training=False) -> list[dict]:
    """One dict per step that applies a nonlinearity (an activation layer, a
    Linear/Conv2d with ``activation=``, or a Sequential-fused Linear+activation),
    in order: ``name``, ``activation``, ``mean``, ``std`` of its output,
    ``saturated`` (tanh: fraction with ``|y| > 0.99``; sigmoid: y < 0.01 or
    y > 0.99; None otherwise), ``dead`` (fraction of exact zeros for relu,
    leaky_relu and prelu; None otherwise) and ``hist`` (counts, edges) for
    plotting. Eval mode unless ``training``; the model is left unchanged."""
    usage = "activation_stats(model, X)"
    _check_model(model, usage)
    X = _check_x(X, usage=usage)
    return [_layer_stats(label, act, y) for label, act, y in _trace(model, X, training) if act != "identity"]


def dead_relu_fraction(model, X) -> dict:
    """{layer name: fraction of its units (axis 1) that output exactly 0 for
    every example of X} for every ReLU step: units that no longer learn."""
    usage = "dead_relu_fraction(model, X)"
    _check_model(model, usage)
    X = _check_x(X, usage=usage)
    out = {}
    for label, act, y in _trace(model, X):
        if act in ZERO_FLOOR:
            axes = tuple(a for a in range(y.ndim) if a != 1)
            out[label] = float(np.mean(np.all(y == 0, axis=axes)))
    return out


_pyplot = V.pyplot


def plot_activation_stats(stats, X=None, path=None, max_layers=12):
    """Histograms of every nonlinearity's output (one panel per layer) and the
    mean/std per layer. ``stats`` is activation_stats' list or a model (then X
    is required). Needs matplotlib."""
    plt = _pyplot("plot_activation_stats")
    if isinstance(stats, Module):
        if X is None:
            raise ValueError("plot_activation_stats(model, X, path): X is required when given a model")
        stats = activation_stats(stats, X)
    if not isinstance(stats, (list, tuple)):
        raise TypeError(f"stats must be activation_stats' list or a fastnn Module, got {type(stats).__name__}")
    stats = list(stats)
    if not stats:
        raise ValueError("no layer applies a nonlinearity: nothing to plot")
    shown = stats[:max_layers]
    cols = min(len(shown), 6)
    rows = 1 + math.ceil(len(shown) / cols)
    fig = plt.figure(figsize=(2.4 * cols + 1, 2.3 * rows))
    ax = fig.add_subplot(rows, 1, 1)
    layers = np.arange(1, len(stats) + 1)
    ax.plot(layers, [s["mean"] for s in stats], "o-", label="mean")
    ax.plot(layers, [s["std"] for s in stats], "s-", label="std")
    ax.set_xlabel("layer")
    ax.set_xticks(layers)
    ax.legend()
    ax.set_title("activation mean / std per layer")
    return _histogram_panels(plt, fig, rows, cols, [(f"{k + 1}: {s['activation']}\nstd {s['std']:.3g}", s["hist"])
                                               for k, s in enumerate(shown)], path)


def _histogram_panels(plt, fig, rows, cols, panels, path):
    """One histogram per (title, (counts, edges)) in the grid's rows after the
    first; then the figure is laid out, saved to path (if given) and returned."""
    for k, (title, (counts, edges)) in enumerate(panels):
        a = fig.add_subplot(rows, cols, cols + k + 1)
        a.stairs(counts, edges, fill=True)
        a.set_title(title, fontsize=8)
        a.tick_params(labelsize=7)
        a.set_yticks([])
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


# --- gradient statistics -------------------------------------------------------------

def _grad_stats(p, bins) -> dict:
    g = np.asarray(p.grad, np.float64).reshape(-1)
    w = np.asarray(p.data, np.float64).reshape(-1)
    finite = g[np.isfinite(g)]
    if finite.size:
        counts, edges = np.histogram(finite, bins=bins)
    else:
        counts, edges = np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1)
    norm, weight_norm = float(np.linalg.norm(g)), float(np.linalg.norm(w))
    return {"shape": tuple(p.data.shape), "trainable": bool(p.trainable), "mean": float(np.mean(g)),
            "std": float(np.std(g)), "abs_max": float(np.max(np.abs(g))), "norm": norm,
            "ratio": norm / weight_norm if weight_norm > 0 else None,
            "nonfinite": int(g.size - finite.size), "hist": (counts, edges)}


def gradient_stats(model, X, y, loss, bins=50) -> dict:
    """The distribution of every parameter's gradient over one forward/backward
    pass on the batch (X, y), like ``activation_stats`` for the backward pass.

    The lecture's point: look at the gradients layer by layer. Their scale
    should stay comparable from the last layer to the first; a std that shrinks
    by orders of magnitude towards the input is a vanishing gradient (saturated
    tanh/sigmoid, a too-small init, dead ReLUs: the early layers stop
    learning), one that grows is exploding (a too-large init, a too-high
    learning rate; clip or re-initialize). ``ratio`` = ||grad|| / ||W|| puts
    each layer on the same footing (times the learning rate it is about the
    update/weight ratio that UpdateRatioMonitor tracks, healthy near 1e-3).

    Shapes: X (N, ...) a batch, y its labels (or targets) as ``loss`` takes
    them. The pass runs in training mode (Dropout and BatchNorm as in a
    training step); the model is left exactly as found: weights, ``.grad``
    arrays, modes, BN running statistics and random streams.

    Returns {parameter name (``model.named_parameters()``, in order):
    {'shape', 'trainable', 'mean', 'std', 'abs_max', 'norm' (||grad||),
    'ratio' (||grad|| / ||W||, None when W is all zeros), 'nonfinite' (count
    of NaN/Inf entries, left out of the histogram), 'hist' (counts, bin
    edges) with ``bins`` bins}}. Plot with ``plot_gradient_stats``."""
    usage = "gradient_stats(model, X, y, loss)"
    _check_model(model, usage)
    X = _check_x(X, usage=usage)
    _check_loss(loss, usage)
    bins = V.positive_int(bins, "bins")
    params = list(model.named_parameters())
    if not params:
        raise ValueError("the model has no parameters: no gradients to describe")
    grads_before = [(p, np.array(p.grad, copy=True)) for _, p in params]
    try:
        with model.preserving_state(training=True):
            loss.forward(model.forward(X), y)
            was_input_grad = model.input_grad
            model.set_input_grad(False)
            try:
                model.backward(loss.backward())
            finally:
                model.set_input_grad(was_input_grad)
            return {name: _grad_stats(p, bins) for name, p in params}
    finally:
        for p, g in grads_before:
            p.grad[...] = g


def plot_gradient_stats(stats, X=None, y=None, loss=None, path=None, max_params=12):
    """The std and largest ``|gradient|`` per parameter (log scale: vanishing or
    exploding gradients show as a slope across layers) and a histogram of each
    parameter's gradient. ``stats`` is gradient_stats' dict or a model (then X,
    y and loss are required). Needs matplotlib."""
    plt = _pyplot("plot_gradient_stats")
    if isinstance(stats, Module):
        if X is None or y is None or loss is None:
            raise ValueError("plot_gradient_stats(model, X, y, loss, path): X, y and loss are required when "
                             "given a model")
        stats = gradient_stats(stats, X, y, loss)
    if not isinstance(stats, dict):
        raise TypeError(f"stats must be gradient_stats' dict or a fastnn Module, got {type(stats).__name__}")
    if not stats:
        raise ValueError("stats is empty: nothing to plot")
    names = list(stats)
    shown = names[:max_params]
    cols = min(len(shown), 6)
    rows = 1 + math.ceil(len(shown) / cols)
    fig = plt.figure(figsize=(2.4 * cols + 1, 2.3 * rows))
    ax = fig.add_subplot(rows, 1, 1)
    where = np.arange(1, len(names) + 1)
    tiny = np.finfo(np.float64).tiny        # keep zeros on a log axis
    ax.semilogy(where, [max(stats[n]["std"], tiny) for n in names], "o-", label="std")
    ax.semilogy(where, [max(stats[n]["abs_max"], tiny) for n in names], "s-", label="max |grad|")
    ax.set_xticks(where)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    ax.legend()
    ax.set_title("gradient scale per parameter (input side on the left)")
    return _histogram_panels(plt, fig, rows, cols, [(f"{name}\nstd {stats[name]['std']:.3g}", stats[name]["hist"])
                                               for name in shown], path)


# --- update / weight ratio ------------------------------------------------------------

class UpdateRatioMonitor(Callback):
    """Records ||p_after - p_before|| / ||p_before|| per parameter per step
    (the lecture's "ratio of weight updates to weight magnitudes", healthy
    around 1e-3) and warns once per parameter when the median over an epoch is
    outside [low, high] (lr too small or too large).

    Works on the optimizer's flat buffer: a copy of ``optimizer.flat_param``
    before each step, per-parameter norms by segment (``seg_begin``). Warnings
    consider weights (ndim >= 2) only, since biases start at 0; frozen
    parameters are skipped. ``ratios`` maps parameter name -> list per step."""

    def __init__(self, low=1e-5, high=1e-1, every=1, warn=True):
        self.low = V.real(low, "low", low=0.0)
        self.high = V.real(high, "high", low=self.low)
        self.every = V.positive_int(every, "every")
        self.warn = bool(warn)
        self.ratios: dict[str, list[float]] = {}
        self.warned: set[str] = set()
        self._prev = None
        self._epoch_start = 0

    def on_train_begin(self, trainer):
        """Learn the parameter names and their segments of the optimizer's flat buffer; keep a copy of the weights."""
        opt = trainer.optimizer
        if not hasattr(opt, "flat_param"):
            raise TypeError("UpdateRatioMonitor needs a fastnn optimizer (one flat parameter buffer)")
        names = {id(p): name for name, p in trainer.model.named_parameters()}
        self._params = opt.parameters()
        self._names = [names.get(id(p), p.name) for p in self._params]
        for name in self._names:
            self.ratios.setdefault(name, [])
        self._starts = opt.seg_begin[:-1]
        self._prev = np.array(opt.flat_param, np.float64)
        self._prev_norm = self._segment_norms(self._prev)
        self._count = 0
        self._epoch_start = len(self.ratios[self._names[0]]) if self._names else 0

    def _segment_norms(self, flat):
        return np.sqrt(np.add.reduceat(flat * flat, self._starts))

    def on_step_end(self, trainer, step, loss):
        """Record ``||p_after - p_before|| / ||p_before||`` of every parameter for this step (every ``every`` steps)."""
        self._count += 1
        now = np.array(trainer.optimizer.flat_param, np.float64)
        if self._count % self.every == 0:
            update = self._segment_norms(now - self._prev)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(self._prev_norm > 0, update / self._prev_norm, np.nan)
            for name, r in zip(self._names, ratio):
                self.ratios[name].append(float(r))
        self._prev = now
        self._prev_norm = self._segment_norms(now)

    def on_epoch_end(self, trainer, epoch, history):
        """Warn once per weight whose median ratio over the epoch is outside [low, high]; never stops training."""
        if not self.warn:
            return
        for name, p in zip(self._names, self._params):
            if name in self.warned or p.data.ndim < 2 or not p.trainable:
                continue
            recent = np.asarray(self.ratios[name][self._epoch_start:])
            recent = recent[np.isfinite(recent)]
            if recent.size == 0:
                continue
            med = float(np.median(recent))
            if not self.low <= med <= self.high:
                self.warned.add(name)
                side = "small: raise the learning rate" if med < self.low else "large: lower the learning rate"
                warnings.warn(f"update/weight ratio of {name!r} is {med:.2e} (median over epoch {epoch + 1}), "
                              f"outside [{self.low:.0e}, {self.high:.0e}] (want ~1e-3): too {side}",
                              RuntimeWarning, stacklevel=2)
        self._epoch_start = len(self.ratios[self._names[0]]) if self._names else 0

    def summary(self) -> dict:
        """{name: median ratio over all recorded steps}."""
        return {k: float(np.nanmedian(v)) if len(v) else float("nan") for k, v in self.ratios.items()}


# --- the weight-initialization experiment --------------------------------------------------

def init_experiment(init, activation, layers=10, width=500, n=1000, seed=0, dtype=np.float32) -> list[float]:
    """The lecture's experiment: push n unit-Gaussian inputs through ``layers``
    Linear(width, width) layers with the given ``init`` (a fastnn.init name,
    "normal" is std 1.0, or a callable) and ``activation``, zero biases;
    returns the std of every layer's output. tanh + small_random(0.01) decays
    to ~0, tanh + normal(1.0) saturates at +-1, tanh + xavier_normal and relu +
    he_normal keep a healthy spread."""
    layers = V.positive_int(layers, "layers")
    width = V.positive_int(width, "width")
    n = V.positive_int(n, "n")
    rng = generator(seed)
    model = Sequential(*[Linear(width, width, activation=activation, init=init, dtype=dtype, rng=rng)
                         for _ in range(layers)])
    X = rng.standard_normal((n, width)).astype(dtype)
    return [float(np.std(y.astype(np.float64))) for _, _, y in _trace(model, X)]


__all__ = ["check_initial_loss", "overfit_small", "gradient_check", "gradient_stats", "plot_gradient_stats",
           "activation_stats", "plot_activation_stats", "dead_relu_fraction", "UpdateRatioMonitor", "init_experiment"]
