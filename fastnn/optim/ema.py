"""Polyak averaging of the weights: an exponential moving average (EMA).

    shadow = decay_t * shadow + (1 - decay_t) * param        (after every step)
    decay_t = min(decay, (1 + t) / (10 + t))   with warmup (the default)
    decay_t = decay                            with warmup=False

t = 0, 1, 2, ... counts the updates made before this one. The warm-up (as in
TensorFlow's ExponentialMovingAverage(num_updates=...)) makes the first updates
forget the initial weights quickly: with decay 0.999 and no warm-up the shadow
still holds ~0.999^170 = 84% of the initialization after 170 steps, so a short
run's averaged weights are mostly the random init.

The averaged weights often evaluate better than the last iterate (Polyak &
Juditsky 1992; "Training Neural Networks II", model ensembles). ``update()``
once per optimizer step (or pass the EMA to ``Trainer(callbacks=[ema])``), and
evaluate with the averaged weights inside ``with ema.swapped(): ...``.
Only parameters are averaged; buffers (BatchNorm running statistics) are not.
"""
from __future__ import annotations

import contextlib

import numpy as np

from .. import _validate as V
from ..backend.cuda import to_device, to_host
from ..callbacks import Callback
from ..nn.module import Parameter


def _parameters(model_or_params) -> list[Parameter]:
    if hasattr(model_or_params, "parameters") and callable(model_or_params.parameters):
        params = list(model_or_params.parameters())
    elif isinstance(model_or_params, Parameter):
        params = [model_or_params]
    else:
        params = list(model_or_params)
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, not a fastnn Parameter")
    if not params:
        raise ValueError("EMA needs at least one parameter")
    return params


class EMA(Callback):
    """EMA(model or params, decay=0.999, warmup=True). Holds the Parameter
    objects (not their arrays), so it keeps working after an optimizer moves
    them into its flat buffer. The shadow (one array per parameter, of its
    shape and dtype) starts as a copy of the current weights.

    ``warmup=True`` uses decay_t = min(decay, (1 + t) / (10 + t)) for update t
    (t = num_updates before it: 0.1, 0.18, 0.25, ... rising to ``decay``);
    ``warmup=False`` uses ``decay`` from the first update (the plain form)."""

    def __init__(self, model_or_params, decay=0.999, warmup=True):
        self.decay = V.real(decay, "decay", low=0.0, high=1.0)
        if not isinstance(warmup, (bool, np.bool_)):
            raise TypeError(f"warmup must be True or False, got {type(warmup).__name__}")
        self.warmup = bool(warmup)
        self.params = _parameters(model_or_params)
        self.shadow = [p.data.copy() for p in self.params]     # on the parameters' device
        self.num_updates = 0
        self._backup = None

    def current_decay(self) -> float:
        """The decay the next ``update()`` uses."""
        if not self.warmup:
            return self.decay
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    def update(self) -> None:
        """shadow = decay_t * shadow + (1 - decay_t) * param, in place."""
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params):
            s *= d
            s += (1.0 - d) * p.data
        self.num_updates += 1

    def on_step_end(self, trainer, step, loss):
        """As a Trainer callback: ``update()`` after every optimizer step."""
        self.update()

    def copy_to(self, model_or_params=None) -> None:
        """Write the averaged weights into the parameters (for good)."""
        targets = self.params if model_or_params is None else _parameters(model_or_params)
        if len(targets) != len(self.shadow):
            raise ValueError(f"EMA holds {len(self.shadow)} parameters, the target has {len(targets)}")
        for s, p in zip(self.shadow, targets):
            if p.data.shape != s.shape:
                raise ValueError(f"parameter {p.name!r} has shape {p.data.shape}, the EMA holds {s.shape}")
            p.data[...] = s

    @contextlib.contextmanager
    def swapped(self):
        """Averaged weights in the model inside the block, the trained ones after."""
        if self._backup is not None:
            raise RuntimeError("EMA.swapped() is already active")
        self._backup = [p.data.copy() for p in self.params]
        try:
            self.copy_to()
            yield self
        finally:
            for b, p in zip(self._backup, self.params):
                p.data[...] = b
            self._backup = None

    def state_dict(self) -> dict:
        """The shadow (averaged) weights and the update count, ``{name: ndarray}``, for checkpoints."""
        out = {f"shadow{i}": to_host(s, copy=True) for i, s in enumerate(self.shadow)}
        out["num_updates"] = np.array(self.num_updates)
        out["decay"] = np.array(self.decay)
        out["warmup"] = np.array(self.warmup)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore the shadow weights and update count from ``state_dict()``."""
        for i, s in enumerate(self.shadow):
            src = to_host(state[f"shadow{i}"])
            if src.shape != s.shape:
                raise ValueError(f"state_dict['shadow{i}'] has shape {src.shape}, expected {s.shape}")
            if isinstance(s, np.ndarray):
                s[...] = src
            else:   # a shadow on the GPU: copied onto it
                s[...] = to_device(src.astype(s.dtype, copy=False))
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        if "warmup" in state:
            self.warmup = bool(np.asarray(state["warmup"]))
