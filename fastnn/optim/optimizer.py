"""Optimizers over ONE flat parameter buffer.

Building an optimizer copies the parameters (and their gradients) into one
contiguous buffer each and turns every ``Parameter.data``/``.grad`` into a view
of it, so a step over the whole model is one fused kernel pass
(``ops.optim_step``): param, grad and state are read once and written once.
Parameter groups (different lr / weight decay) become segments of the buffer
with their own hyperparameter row, so a step has no Python loop over tensors.
Consecutive parameters with the same settings share one segment.

Options on every optimizer: ``weight_decay`` (L2), ``l1`` (elastic net with
both), ``max_norm`` (per unit, after the update; per group), ``clip_grad_norm``
(global-norm gradient clipping, fused into the update as a gradient scale).

- ``weight_decay`` adds ``weight_decay * p`` to the gradient, i.e. it is the
  gradient of ``0.5 * weight_decay * ||W||^2``: the notes' L2 term
  ``lambda * ||W||^2`` is ``weight_decay = 2 * lambda`` (PyTorch's convention).
  AdamW decays ``p *= 1 - lr * weight_decay`` instead (decoupled).
- ``l1`` adds ``l1 * sign(p)`` (the gradient of ``l1 * |W|_1``).
- ``max_norm=c`` (Srivastava et al. 2014; the notes' "max norm constraints"):
  after each step every unit's incoming weight vector w is rescaled to
  ``w * min(1, c / ||w||_2)``. A unit is a column of a Linear/Maxout/DropConnect
  weight (in, out) (norm over ``in``; Maxout: each piece), and a filter of a
  Conv2d weight (F, C, KH, KW) (norm over its C*KH*KW weights). In general a
  2-D parameter is (fan_in, units) and a parameter of 3 or more dimensions is
  (units, ...). 1-D parameters (biases, BatchNorm gamma/beta, PReLU slopes) are
  never constrained.

Frozen parameters (``trainable`` False, e.g. after ``module.freeze()``) are
untouched by every path: the update, weight decay, l1, and max_norm.

Devices: the flat buffers (parameters, gradients, state) live where the
parameters live, NumPy on the CPU or CuPy on the GPU (all parameters on one
device, else a ValueError: move the model with ``model.to("cuda")`` BEFORE
building the optimizer). The hyperparameter table and segment bounds stay
NumPy: the kernel reads them on the host. ``state_dict()`` returns NumPy
arrays whatever the device; ``load_state_dict`` copies onto the device.

Hyperparameter names and defaults are PyTorch's; formulas in csrc/ops/optim.h.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from .. import ops
from ..backend import cuda as cuda_backend
from ..backend.codes import HYPER_FIELDS
from ..backend.cuda import device_of, to_host
from ..nn.module import Parameter

_FIELD = {name: i for i, name in enumerate(HYPER_FIELDS)}


class Optimizer:
    """Base of the fused optimizers: ``step()`` updates every trainable parameter
    from its ``.grad`` in one kernel pass over the flat buffer.

    ``weight_decay`` is PyTorch's: g += weight_decay * p, the gradient of
    0.5 * weight_decay * ||W||^2, so the notes' L2 penalty lambda * ||W||^2 is
    ``weight_decay = 2 * lambda``. ``l1``: g += l1 * sign(p). ``max_norm``: each
    unit's incoming weights rescaled to norm <= max_norm after the step (see the
    module doc for what a unit is). Frozen parameters are skipped."""

    rule = "sgd"
    n_state = 0
    defaults: dict = {}

    def __init__(self, params, clip_grad_norm=None, **hyper):
        self.defaults = {**type(self).defaults, "max_norm": None,
                         **{k: v for k, v in hyper.items() if v is not None}}
        self.clip_grad_norm = None if clip_grad_norm is None else V.real(clip_grad_norm, "clip_grad_norm", low=0.0,
                                                                             low_open=True)
        self.last_grad_norm = None
        self.param_groups = self._groups(params)
        for g in self.param_groups:
            self._check_group(g)
            g.setdefault("initial_lr", g["lr"])
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._group_of = np.array([gi for gi, g in enumerate(self.param_groups) for _ in g["params"]], np.int64)
        self._flatten()
        self._seg_key = None
        self._max_norm_blocks = self._max_norm_table()
        self._segments()
        self.t = 0

    # --- construction ----------------------------------------------------------
    def _groups(self, params):
        if isinstance(params, Parameter):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError("params must not be empty")
        if isinstance(params[0], dict):
            groups = []
            for i, g in enumerate(params):
                if not isinstance(g, dict) or "params" not in g:
                    raise TypeError(f"params[{i}] must be a dict with a 'params' entry")
                unknown = set(g) - set(self.defaults) - {"params", "initial_lr"}
                if unknown:
                    raise ValueError(f"params[{i}] has unknown options {sorted(unknown)}")
                groups.append({**self.defaults, **g, "params": list(g["params"])})
        else:
            groups = [{**self.defaults, "params": params}]
        seen = set()
        for gi, g in enumerate(groups):
            for p in g["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"param_groups[{gi}] holds a {type(p).__name__}, not a fastnn Parameter")
                if id(p) in seen:
                    raise ValueError(f"parameter {p.name!r} appears in more than one group")
                seen.add(id(p))
        return groups

    def _check_group(self, g):
        V.real(g["lr"], "lr", low=0.0)
        for key in ("weight_decay", "l1", "momentum"):
            if key in g:
                V.real(g[key], key, low=0.0)
        if "eps" in g:
            V.real(g["eps"], "eps", low=0.0, low_open=True)
        if g.get("max_norm") is not None:
            V.real(g["max_norm"], "max_norm", low=0.0, low_open=True)

    def _flatten(self):
        dtypes = {p.data.dtype for p in self._params}
        if len(dtypes) != 1:
            raise TypeError(f"all parameters must share one dtype, got {sorted(map(str, dtypes))}")
        dt = dtypes.pop()
        devices = {}
        for p in self._params:
            for what, a in (("data", p.data), ("grad", p.grad)):
                devices.setdefault(device_of(a), f"{p.name or 'parameter'}.{what}")
        if len(devices) != 1:
            raise ValueError("all parameters must be on one device, got " +
                             ", ".join(f"{d} ({first} is there)" for d, first in sorted(devices.items())) +
                             ": move the whole model with model.to('cuda') (or 'cpu') before building the optimizer")
        self.device = devices.popitem()[0]
        xp = V.array_module(self._params[0].data)
        sizes = [p.data.size for p in self._params]
        self.seg_begin = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.seg_begin[-1])
        self.flat_param = xp.empty(total, dt)
        self.flat_grad = xp.zeros(total, dt)
        for p, b, e in zip(self._params, self.seg_begin[:-1], self.seg_begin[1:]):
            b, e = int(b), int(e)
            self.flat_param[b:e] = xp.asarray(p.data).reshape(-1)
            self.flat_grad[b:e] = xp.asarray(p.grad).reshape(-1)
            p.data = self.flat_param[b:e].reshape(p.data.shape)
            p.grad = self.flat_grad[b:e].reshape(p.grad.shape)
        self.state = [xp.zeros(total, dt) for _ in range(self.n_state)]

    def _segments(self):
        """Runs of consecutive parameters with the same group and trainable flag.

        Also (re)selects the max-norm blocks of the trainable parameters, so a
        parameter frozen (or unfrozen) between steps is skipped (or constrained)."""
        key = tuple(p.trainable for p in self._params)
        if key != self._seg_key:
            begin, group, frozen = [0], [], []
            for i, p in enumerate(self._params):
                gi = int(self._group_of[i])
                if group and group[-1] == gi and frozen[-1] == (not p.trainable):
                    begin[-1] = int(self.seg_begin[i + 1])
                    continue
                begin.append(int(self.seg_begin[i + 1]))
                group.append(gi)
                frozen.append(not p.trainable)
            self._segment_begin = np.array(begin, np.int64)
            self._segment_group = np.array(group, np.int64)
            self._segment_frozen = np.array(frozen, bool)
            self.hyper = np.zeros((len(group), len(HYPER_FIELDS)), np.float64)
            blocks = [b for i, bs in self._max_norm_blocks.items() if key[i] for b in bs]
            self._max_norm = None
            if blocks:
                off, r, c, lim = zip(*blocks)
                self._max_norm = (np.array(off, np.int64), np.array(r, np.int64), np.array(c, np.int64),
                                  np.array(lim, np.float64))
            self._seg_key = key
        return self._segment_begin

    def _max_norm_table(self) -> dict:
        """{param index: [(offset, rows, cols, limit), ...]} for the parameters of
        groups with max_norm: the blocks whose COLUMNS ``ops.max_norm`` caps.

        A 2-D weight (fan_in, units) is one (fan_in, units) block: one column per
        unit. A weight of 3+ dimensions (units, ...), e.g. a Conv2d filter bank
        (F, C, KH, KW), stores unit f contiguously at offset + f*K (K = C*KH*KW),
        so each unit is its own (K, 1) block whose single column is the filter."""
        table = {}
        for i, p in enumerate(self._params):
            limit = self.param_groups[self._group_of[i]].get("max_norm")
            if limit is None or p.data.ndim < 2:
                continue
            base, limit = int(self.seg_begin[i]), float(limit)
            if p.data.ndim == 2:
                table[i] = [(base, int(p.data.shape[0]), int(p.data.shape[1]), limit)]
            else:
                units, k = int(p.data.shape[0]), int(np.prod(p.data.shape[1:]))
                table[i] = [(base + f * k, k, 1, limit) for f in range(units)]
        return table

    # --- stepping -------------------------------------------------------------
    def _group_row(self, g) -> list[float]:
        row = [0.0] * len(HYPER_FIELDS)
        row[_FIELD["lr"]] = g["lr"]
        row[_FIELD["weight_decay"]] = g.get("weight_decay", 0.0)
        row[_FIELD["l1"]] = g.get("l1", 0.0)
        row[_FIELD["momentum"]] = g.get("momentum", 0.0)
        row[_FIELD["alpha"]] = g.get("alpha", 0.0)
        b1, b2 = g.get("betas", (0.0, 0.0))
        row[_FIELD["beta1"]], row[_FIELD["beta2"]] = b1, b2
        row[_FIELD["eps"]] = g.get("eps", 0.0)
        row[_FIELD["bias_correction1"]] = 1.0 - b1 ** self.t if "betas" in g else 1.0
        row[_FIELD["bias_correction2"]] = 1.0 - b2 ** self.t if "betas" in g else 1.0
        row[_FIELD["grad_scale"]] = 1.0
        return row

    def _trainable_runs(self):
        """[(first segment, end segment)] of the maximal runs of trainable segments."""
        runs, start = [], None
        for k, is_frozen in enumerate(self._segment_frozen.tolist() + [True]):
            if not is_frozen and start is None:
                start = k
            elif is_frozen and start is not None:
                runs.append((start, k))
                start = None
        return runs

    def step(self, check_finite: bool = False) -> bool:
        """One update of every trainable parameter from its current .grad. With
        ``check_finite``, a NaN/Inf gradient (one dot product over the flat
        buffer, shared with global-norm clipping) skips the update, leaving
        parameters and state untouched, and returns False.

        Frozen parameters (``trainable`` False) are skipped entirely, as PyTorch
        skips parameters without a gradient: their values and optimizer state
        stay as they are, and their gradients count neither in the clipping
        norm nor in the finite check."""
        return self._step(check_finite, None)

    def _runs(self):
        """(seg_begin, [(a, b)]): the segment table and the runs of trainable segments."""
        seg_begin = self._segments()
        frozen = self._segment_frozen
        return seg_begin, (self._trainable_runs() if frozen.any() else [(0, len(frozen))])

    def _step(self, check_finite: bool, sq) -> bool:
        """``step`` with ||g||^2 given (``sq``, a float) or, when None, computed here if needed."""
        seg_begin, runs = self._runs()
        if sq is None and (check_finite or self.clip_grad_norm is not None):
            sq = self._grad_sq_norm(runs, seg_begin)
        if check_finite and not math.isfinite(sq):
            return False
        self.t += 1
        table = np.array([self._group_row(g) for g in self.param_groups], np.float64)
        np.take(table, self._segment_group, axis=0, out=self.hyper)
        if self.clip_grad_norm is not None:
            self.last_grad_norm = math.sqrt(sq) if sq >= 0 else float("nan")
            # PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1.
            self.hyper[:, _FIELD["grad_scale"]] = min(1.0, self.clip_grad_norm / (self.last_grad_norm + 1e-6))
        for a, b in runs:
            lo, hi = int(seg_begin[a]), int(seg_begin[b])
            s1 = self.state[0][lo:hi] if self.n_state > 0 else None
            s2 = self.state[1][lo:hi] if self.n_state > 1 else None
            ops.optim_step(self.rule, self.flat_param[lo:hi], self.flat_grad[lo:hi], s1, s2,
                           seg_begin[a:b + 1] - lo, self.hyper[a:b])
        if self._max_norm is not None:
            ops.max_norm(self.flat_param, *self._max_norm)
        return True

    def _grad_sq_norm(self, runs, seg_begin) -> float:
        """||g||^2 over the trainable runs: NaN or Inf anywhere (or a norm beyond
        float range) gives a non-finite value. On the GPU one device reduction per
        run and a single transfer to the host."""
        if isinstance(self.flat_grad, np.ndarray):
            sq = 0.0
            for a, b in runs:
                g = self.flat_grad[seg_begin[a]:seg_begin[b]]
                # einsum's own loop, not BLAS: OpenBLAS's threaded ddot wakes a
                # thread pool that then fights the kernels' OpenMP team for the
                # cores (float64 training ran 5-10x slower on 2 cores).
                sq += float(np.einsum("i,i->", g, g))
            return sq
        out = self._grad_sq_norm_on_device(runs, seg_begin)
        return 0.0 if out is None else float(out.get()[0])

    def _grad_sq_norm_on_device(self, runs=None, seg_begin=None, out=None):
        """The GPU's ||g||^2 over the trainable runs as a float64 (1,) CuPy array
        (``out`` when given), not read: our own deterministic reduction, one launch
        pair per run and no synchronization (cupy.dot on a vector costs ~80 us of
        host time and waits for the GPU). With nothing trainable: ``out`` set to 0,
        or None when no ``out`` was given."""
        if runs is None:
            seg_begin, runs = self._runs()
        parts = [self.flat_grad[int(seg_begin[a]):int(seg_begin[b])] for a, b in runs]
        if not parts:
            if out is not None:
                out.fill(0)
            return out
        out = cuda_backend.sum_squares(parts[0], out)
        for g in parts[1:]:
            out += cuda_backend.sum_squares(g)
        return out

    def zero_grad(self):
        """Set every gradient to 0 (one fill of the flat gradient buffer).

        Not needed with fastnn's layers, whose ``backward`` overwrites
        ``.grad``; for code that accumulates into ``.grad``."""
        self.flat_grad[...] = 0

    def parameters(self) -> list[Parameter]:
        """The parameters this optimizer updates, in flat-buffer order (a fresh list)."""
        return list(self._params)

    def flat_ranges(self) -> list[tuple[Parameter, int, int]]:
        """[(parameter, begin, end)]: its ``.data``/``.grad`` are
        ``flat_param[begin:end]``/``flat_grad[begin:end]`` (reshaped)."""
        return [(p, int(b), int(e)) for p, b, e in zip(self._params, self.seg_begin[:-1], self.seg_begin[1:])]

    # --- learning rate -----------------------------------------------------------
    @property
    def lr(self) -> float:
        """The first parameter group's current learning rate (``set_lr`` sets it)."""
        return float(self.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        """Set the first group's lr; other groups keep their ratio to it."""
        base = self.param_groups[0]["initial_lr"]
        for g in self.param_groups:
            g["lr"] = lr * (g["initial_lr"] / base) if base else lr

    # --- checkpointing --------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state as ``{name: ndarray}``: the step count ``t``,
        the rule, its state buffers (momentum, squared-gradient sums ...) and
        every group's hyperparameters; ``load_state_dict`` restores it."""
        out = {"t": np.array(self.t), "rule": np.array(self.rule)}
        for i, s in enumerate(self.state):
            out[f"state{i}"] = to_host(s, copy=True)
        for gi, g in enumerate(self.param_groups):
            for k, v in g.items():
                if k != "params" and v is not None:
                    out[f"group{gi}/{k}"] = np.array(v)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()``; everything is checked before anything changes."""
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state).__name__}")
        rule = str(np.asarray(state["rule"])) if "rule" in state else None
        if rule != self.rule:
            raise ValueError(f"state_dict is for rule {rule!r}, this optimizer is {self.rule!r}")
        missing = [k for k in ["t"] + [f"state{i}" for i in range(len(self.state))] if k not in state]
        if missing:
            raise ValueError(f"state_dict[{missing[0]!r}] is missing (a {self.rule} state_dict has 't' and "
                             f"{len(self.state)} state array(s))")
        t = np.asarray(state["t"])
        if t.shape != () or t.dtype.kind not in "iu" or int(t) < 0:
            raise ValueError(f"state_dict['t'] must be a non-negative integer step count, got {t!r}")
        sources = []
        for i, s in enumerate(self.state):
            src = to_host(state[f"state{i}"])
            if src.dtype.kind not in "biuf":
                raise TypeError(f"state_dict['state{i}'] must hold numbers, got dtype {src.dtype}")
            if src.shape != s.shape:
                raise ValueError(f"state_dict['state{i}'] has shape {src.shape}, expected {s.shape}")
            sources.append(src)
        for s, src in zip(self.state, sources):
            if isinstance(s, np.ndarray):
                s[...] = src
            else:   # on the GPU: one host-to-device copy into the existing buffer
                xp = V.array_module(s)
                xp.copyto(s, xp.asarray(src.astype(s.dtype, copy=False)))
        self.t = int(t)
        for gi, g in enumerate(self.param_groups):
            for k in list(g):
                key = f"group{gi}/{k}"
                if k != "params" and key in state:
                    v = np.asarray(state[key])
                    g[k] = tuple(float(x) for x in v) if v.ndim else float(v)


# The parameters every update rule takes, documented once and put into each
# optimizer's docstring.
_COMMON_PARAMETERS = """params : iterable of Parameter, or list of dict
        ``model.parameters()``, or parameter groups: dicts with ``"params"``
        and any per-group option (``lr``, ``weight_decay``, ``l1``,
        ``max_norm``, ...), e.g. no decay on biases or a smaller lr for a
        pretrained body::

            [{"params": body.parameters(), "lr": 1e-4},
             {"params": head.parameters()}]

    weight_decay : float, default 0.0
        L2: ``g += weight_decay * p``, the gradient of
        ``0.5 * weight_decay * ||W||^2``. The notes' L2 term
        ``lambda * ||W||^2`` is ``weight_decay = 2 * lambda``.
    l1 : float, default 0.0
        L1: ``g += l1 * sign(p)``, the gradient of ``l1 * |W|_1``; with
        weight_decay too, the elastic net.
    max_norm : float, optional
        Max-norm constraint: after each step every unit's incoming weight
        vector (a column of a Linear weight, a Conv2d filter) is rescaled to
        ``w * min(1, max_norm / ||w||_2)``; 1-D parameters are untouched.
    clip_grad_norm : float, optional
        Scale the whole gradient by ``min(1, clip_grad_norm / ||g||_2)`` (the
        global norm over every parameter) before the update."""

_with_common_parameters = V.fill_doc(common_parameters=_COMMON_PARAMETERS)


@_with_common_parameters
class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum or Nesterov momentum.

    - plain: ``p -= lr * g``
    - momentum mu: ``v = mu * v + g; p -= lr * v``
    - Nesterov: ``v = mu * v + g; p -= lr * (g + mu * v)``

    (PyTorch's forms. The notes write momentum as ``v = mu*v - lr*g; p += v``:
    the same trajectory for a constant lr.)

    Parameters
    ----------
    %(common_parameters)s
    lr : float, default 1e-2
        Learning rate.
    momentum : float, default 0.0
        mu, typically 0.9.
    nesterov : bool, default False
        Nesterov accelerated gradient (needs momentum > 0).
    """

    defaults = {"lr": 1e-2, "momentum": 0.0, "weight_decay": 0.0, "l1": 0.0}

    def __init__(self, params, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0, l1=0.0, max_norm=None,
                 clip_grad_norm=None):
        if nesterov and not momentum:
            raise ValueError("nesterov=True needs momentum > 0")
        self.rule = "nesterov" if nesterov else ("momentum" if momentum else "sgd")
        self.n_state = 0 if self.rule == "sgd" else 1
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm)


@_with_common_parameters
class Adagrad(Optimizer):
    """AdaGrad (Duchi et al. 2011): a per-parameter step size that shrinks with
    the sum of squared gradients.

    ``s += g^2; p -= lr * g / (sqrt(s) + eps)``

    Parameters
    ----------
    %(common_parameters)s
    lr : float, default 1e-2
    eps : float, default 1e-10
    """

    rule, n_state = "adagrad", 1
    defaults = {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0, "l1": 0.0}

    def __init__(self, params, lr=1e-2, eps=1e-10, weight_decay=0.0, l1=0.0, max_norm=None, clip_grad_norm=None):
        super().__init__(params, lr=lr, eps=eps, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm)


@_with_common_parameters
class RMSProp(Optimizer):
    """RMSProp (Tieleman & Hinton 2012): AdaGrad with a leaky (decaying) sum.

    ``s = alpha * s + (1 - alpha) * g^2; p -= lr * g / (sqrt(s) + eps)``
    (the notes' ``decay_rate`` is alpha).

    Parameters
    ----------
    %(common_parameters)s
    lr : float, default 1e-2
    alpha : float, default 0.99
        Decay rate of the squared-gradient average.
    eps : float, default 1e-8
    """

    rule, n_state = "rmsprop", 1
    defaults = {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "l1": 0.0}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, l1=0.0, max_norm=None,
                 clip_grad_norm=None):
        V.real(alpha, "alpha", low=0.0, high=1.0)
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm)


@_with_common_parameters
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): momentum plus RMSProp, bias-corrected.

    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    mhat = m / (1 - b1^t); vhat = v / (1 - b2^t);
    p -= lr * mhat / (sqrt(vhat) + eps)``

    The lectures' default choice (``lr = 1e-3``, betas 0.9, 0.999).
    ``weight_decay`` here is coupled L2 (added to g); for decoupled decay use
    :class:`AdamW`.

    Parameters
    ----------
    %(common_parameters)s
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        b1 (momentum) and b2 (squared-gradient decay).
    eps : float, default 1e-8
    """

    rule, n_state = "adam", 2
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "l1": 0.0}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, l1=0.0, max_norm=None,
                 clip_grad_norm=None):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = betas
        V.real(b1, "betas[0]", low=0.0, high=1.0, high_open=True)
        V.real(b2, "betas[1]", low=0.0, high=1.0, high_open=True)
        super().__init__(params, lr=lr, betas=(float(b1), float(b2)), eps=eps, weight_decay=weight_decay, l1=l1,
                         max_norm=max_norm, clip_grad_norm=clip_grad_norm)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    The Adam step of :class:`Adam`, and ``p *= 1 - lr * weight_decay``
    applied directly to the weights (not through the gradient, so not scaled
    by Adam's per-parameter step). Parameters as :class:`Adam`;
    ``weight_decay`` defaults to 1e-2.
    """

    rule = "adamw"
    defaults = {**Adam.defaults, "weight_decay": 1e-2}

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, l1=0.0, max_norm=None,
                 clip_grad_norm=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm)
