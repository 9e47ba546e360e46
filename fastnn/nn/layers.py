"""Layers: Linear (with a fused activation), activation layers, Flatten, Sequential.

Shapes: x (N, D) -> Linear -> (N, M). Linear.weight is (in_features, out_features).
Sequential runs a Linear followed by an activation layer as ONE fused
linear_act kernel (GEMM with the bias + activation in its epilogue).
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

from .. import _validate as V
from .. import init as initializers
from .. import ops
from .._random import generator
from ..backend.codes import SAVES_PREACTIVATION
from .module import Module, Parameter, as_model_input


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in V.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _check_features(x, layer: str, in_features: int, dtype) -> None:
    """x is (N, in_features) of the layer's dtype, C-contiguous; the feature
    count is checked before the layout, so a column slice of the wrong width is
    blamed for its width, not for its strides."""
    V.float_array(x, "x", dtype=dtype, contiguous=False)
    if x.ndim != 2 or x.shape[1] != in_features:
        hint = ""
        if x.ndim == 1 and x.shape[0] == in_features:
            hint = " (one sample? use x[None, :])"
        elif x.ndim > 2 and int(np.prod(x.shape[1:])) == in_features:
            hint = " (put a fastnn.nn.Flatten() before it)"
        raise ValueError(f"{layer}: expected x with {in_features} input features (shape (N, {in_features})), "
                         f"got shape {tuple(x.shape)}{hint}")
    V.float_array(x, "x")


class _WeightedActivation(Module):
    """The shared part of Linear and Conv2d: weight/bias/prelu-alpha creation, the
    activation they may fuse, and the fusion protocol Sequential uses
    (fuses / forward_fused / backward_fused)."""

    def _init_weights(self, shape, units, activation, alpha, init, bias, dtype, rng, bias_init=0.0):
        self.activation = "identity" if activation is None else activation
        _, self._alpha = ops.activation_code(self.activation, alpha)
        dt = _dtype(dtype)
        bias_init = V.real(bias_init, "bias_init")
        if not bias and bias_init != 0.0:
            raise ValueError(f"bias_init={bias_init!r} needs a bias: drop bias_init or pass bias=True")
        fn = initializers.resolve(init, self.activation)
        rng = generator(rng)
        # init="auto" with no activation of its own: a Sequential may find the
        # activation layer that follows and redraw with its initializer. The
        # generator state before the draw is kept so the redraw takes the very
        # numbers this draw took (auto initializers all draw standard normals),
        # as if the layer had been built with activation=... (same weights, same
        # consumption of fastnn's global generator under manual_seed).
        self._auto_replay = None
        if (init is None or (isinstance(init, str) and init == "auto")) and self.activation == "identity":
            self._auto_replay = (type(rng.bit_generator), rng.bit_generator.state)
        w = np.ascontiguousarray(fn(shape, rng=rng, dtype=dt))
        self.weight = Parameter(w, "weight")
        self._auto_for = initializers.auto_name(self.activation)
        self._auto_crc = zlib.crc32(w) if self._auto_replay is not None else None
        self.bias = Parameter(np.full(units, bias_init, dt), "bias") if bias else None
        if self.activation == "prelu":
            self.alpha = Parameter(np.full(1, self._alpha, dt), "alpha")
        self._saved = None

    def resolve_auto_init(self, activation) -> bool:
        """init="auto" decided by the activation that follows this layer (called
        by Sequential): redraw the weights with ``fastnn.init.auto_name(activation)``
        (He for the ReLU family, LeCun for SELU, Xavier otherwise) from the
        generator state of the first draw, in place. The first Sequential that
        holds the layer decides, once: a later one (a slice ``model[:k]``, a
        Sequential wrapping it again) never redraws. Does nothing (returns
        False) when the layer was built with an explicit init or its own
        activation=, or when its weights changed since they were drawn
        (trained, loaded, set by hand). Returns True when the weights were
        redrawn."""
        if self._auto_replay is None:
            return False
        bit_generator, state = self._auto_replay
        self._auto_replay = None
        name = initializers.auto_name(activation)
        w = self.weight.data
        if name == self._auto_for or zlib.crc32(np.ascontiguousarray(w)) != self._auto_crc:
            return False
        replay = bit_generator()
        replay.state = state
        w[...] = initializers.INITIALIZERS[name](w.shape, rng=np.random.Generator(replay), dtype=w.dtype)
        self._auto_for = name
        return True

    def fuses(self, act) -> bool:
        """Whether a following activation layer can run inside this layer's kernel."""
        return self.activation == "identity"

    def _act_alpha(self):
        return float(self.alpha.data[0]) if self.activation == "prelu" else self._alpha

    def forward(self, x):
        """``y = act(x @ weight + bias)`` for Linear (x ``(N, in)`` -> y ``(N, out)``),
        ``y = act(conv(x, weight) + bias)`` for Conv2d (x ``(N, C, H, W)`` -> y
        ``(N, F, OH, OW)``), in one fused kernel; float32 or float64.
        """
        return self.forward_fused(x, self.activation, self._act_alpha())

    def backward(self, dout):
        """Backward of ``forward``: ``dz = dout * act'(.)``; writes ``weight.grad``
        (Linear: ``x.T @ dz``), ``bias.grad`` (``dz`` summed over the batch) and, for
        PReLU, ``alpha.grad``; returns ``dx`` (Linear: ``dz @ weight.T``), the shape of x.
        """
        dx, dalpha = self.backward_fused(dout)
        if dalpha is not None:
            self.alpha.grad[0] = dalpha
        return dx


class Linear(_WeightedActivation):
    """y = act(x @ weight + bias).

    Shapes: x (N, in_features), weight (in_features, out_features), bias
    (out_features,), y (N, out_features).

    activation: None or an activation name (relu, leaky_relu, prelu, elu, selu,
    sigmoid, tanh, gelu, gelu_tanh, swish); alpha its parameter (leaky slope,
    elu alpha, prelu's initial slope). init: an initializer name or callable;
    "auto" picks He (std sqrt(2 / fan_in)) for the ReLU family, LeCun
    (sqrt(1 / fan_in)) for SELU, Xavier (sqrt(2 / (fan_in + fan_out)))
    otherwise, from ``activation=``, or, when the layer has none, from the
    activation layer that follows it in a Sequential (``Sequential(Linear(500,
    500), ReLU())`` gets He; see ``resolve_auto_init``). An explicit init is
    never changed.

    bias_init: the value every bias starts at (a number, 0 by default); the
    notes' "slightly positive bias (0.01) for ReLU units", so that every unit
    fires at the start: ``Linear(64, 256, bias_init=0.01)``. rng: an int seed,
    a numpy Generator, or None for fastnn's global generator (``manual_seed``)."""

    def __init__(self, in_features, out_features, activation=None, alpha=None, init="auto",
                 bias=True, dtype=np.float32, rng=None, bias_init=0.0):
        super().__init__()
        self.in_features = V.positive_int(in_features, "in_features")
        self.out_features = V.positive_int(out_features, "out_features")
        self._init_weights((self.in_features, self.out_features), self.out_features, activation, alpha, init,
                           bias, dtype, rng, bias_init)

    def forward_fused(self, x, act, alpha):
        """Forward with an activation taken from a following layer."""
        _check_features(x, f"Linear({self.in_features}, {self.out_features})", self.in_features,
                        self.weight.data.dtype)
        shape, dt = (x.shape[0], self.out_features), self.weight.data.dtype
        y, self._saved = ops.linear_act(x, self.weight.data, self.bias.data if self.bias else None, act, alpha,
                                        out=self._buf("y", shape, dt),
                                        z_out=self._buf("z", shape, dt, True) if act in SAVES_PREACTIVATION else None)
        return y

    def backward_fused(self, dout):
        """Gradients into weight.grad / bias.grad; returns (dx or None, dalpha or None)."""
        if self._saved is None:
            raise RuntimeError("Linear.backward called before forward")
        x = self._saved.x
        dx, _, _, dalpha = ops.linear_act_backward(
            dout, self._saved, need_dx=self.input_grad, dweight=self.weight.grad,
            dbias=self.bias.grad if self.bias else None, need_dbias=self.bias is not None,
            dx=self._buf("dx", x.shape, x.dtype) if self.input_grad else None,
            dz_work=self._buf("dz", dout.shape, x.dtype, True))
        return dx, dalpha


class Maxout(Module):
    """y[:, j] = max_k (x @ weight + bias)[:, j * pieces + k]  (Goodfellow et al. 2013).

    Shapes: x (N, in), weight (in, out * pieces), bias (out * pieces,), y (N, out).
    The pieces of unit j are the adjacent columns j*pieces .. j*pieces + pieces-1,
    so one GEMM (linear_act with the identity) computes every piece at once;
    backward routes each dy to the piece that won the max (the first on ties)
    and runs linear_act's backward on that sparse dz."""

    def __init__(self, in_features, out_features, pieces=2, init="auto", bias=True, dtype=np.float32,
                 rng=None):
        super().__init__()
        self.in_features = V.positive_int(in_features, "in_features")
        self.out_features = V.positive_int(out_features, "out_features")
        self.pieces = V.positive_int(pieces, "pieces")
        dt = _dtype(dtype)
        cols = self.out_features * self.pieces
        fn = initializers.resolve(init, "identity")
        self.weight = Parameter(np.ascontiguousarray(fn((self.in_features, cols), rng=generator(rng), dtype=dt)),
                                "weight")
        self.bias = Parameter(np.zeros(cols, dt), "bias") if bias else None
        self._saved = None
        self._argmax = None

    def forward(self, x):
        """Maxout forward: ``x (N, in) -> y (N, out)``, the max over ``pieces``
        linear functions per unit; saves the winning piece for ``backward``.
        """
        _check_features(x, f"Maxout({self.in_features}, {self.out_features})", self.in_features,
                        self.weight.data.dtype)
        z, self._saved = ops.linear_act(x, self.weight.data, self.bias.data if self.bias else None)
        pieces = z.reshape(z.shape[0], self.out_features, self.pieces)
        self._argmax = pieces.argmax(axis=2)[:, :, None]
        return V.array_module(z).take_along_axis(pieces, self._argmax, axis=2)[:, :, 0]

    def backward(self, dout):
        """``dout (N, out) -> dx (N, in)``; writes ``weight.grad`` and ``bias.grad``
        (only the winning piece of each unit gets gradient).
        """
        if self._saved is None:
            raise RuntimeError("Maxout.backward called before forward")
        n = self._saved.x.shape[0]
        V.float_array(dout, "dout", ndim=2, dtype=self.weight.data.dtype)
        V.shape_is(dout, "dout", (n, self.out_features))
        if isinstance(dout, np.ndarray):
            dz = np.zeros((n, self.out_features, self.pieces), dout.dtype)
            np.put_along_axis(dz, self._argmax, dout[:, :, None], axis=2)
        else:   # CuPy has no put_along_axis: the same scatter as a one-hot mask of the winning pieces
            xp = V.array_module(dout)
            won = self._argmax == xp.arange(self.pieces).reshape(1, 1, -1)
            dz = xp.where(won, dout[:, :, None], xp.zeros((), dout.dtype)).astype(dout.dtype, copy=False)
        dx, _, _, _ = ops.linear_act_backward(
            dz.reshape(n, -1), self._saved, need_dx=self.input_grad, dweight=self.weight.grad,
            dbias=self.bias.grad if self.bias else None, need_dbias=self.bias is not None)
        return dx


class Activation(Module):
    """An elementwise activation layer (the base of ReLU, Tanh, ...)."""

    name = "identity"
    # Whether a preceding Linear/Conv2d/BatchNorm may apply this activation in
    # its kernel's epilogue (Sequential's fused steps): the kernels take one
    # scalar alpha.
    fusable = True

    def __init__(self, alpha=None):
        super().__init__()
        _, self._alpha = ops.activation_code(self.name, alpha)
        self._x = self._y = None

    @property
    def alpha_value(self) -> float:
        """The activation's scalar parameter (leaky slope, ELU alpha; unused by the others)."""
        return self._alpha

    def forward(self, x):
        """``y = f(x)`` elementwise; ``x`` any shape, float32 or float64; ``y`` the same
        shape and dtype. Saves x and y for ``backward``.
        """
        self._x = x
        self._y = ops.activation(x, self.name, self.alpha_value, out=self._buf("y", x.shape, x.dtype))
        return self._y

    def backward(self, dout):
        """``dx = dout * f'(x)`` elementwise, the shape of x (for PReLU also writes
        ``alpha.grad``).
        """
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dalpha = ops.activation_backward(dout, self._x, self._y, self.name, self.alpha_value,
                                             out=self._buf("dx", dout.shape, dout.dtype))
        self._accumulate_alpha(dalpha)
        return dx

    def _accumulate_alpha(self, dalpha):
        pass


class Identity(Activation):
    """The identity, ``y = x`` (a no-op activation layer)."""
    name = "identity"

    def __init__(self):
        super().__init__()


class ReLU(Activation):
    """Rectified linear unit, ``y = max(0, x)``.

    The lectures' default. Units whose input is negative for every example
    get no gradient ("dead ReLUs": see ``fastnn.diagnostics.dead_relu_fraction``).
    After a Linear/Conv2d/BatchNorm in a Sequential it runs fused in that
    layer's kernel.
    """
    name = "relu"

    def __init__(self):
        super().__init__()


class LeakyReLU(Activation):
    """Leaky ReLU, ``y = x if x > 0 else alpha * x``.

    Parameters
    ----------
    alpha : float, default 0.01
        The slope for negative inputs.
    """
    name = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__(alpha)


class ELU(Activation):
    """Exponential linear unit (Clevert et al. 2015),
    ``y = x if x > 0 else alpha * (exp(x) - 1)``.

    Parameters
    ----------
    alpha : float, default 1.0
    """
    name = "elu"

    def __init__(self, alpha=1.0):
        super().__init__(alpha)


class SELU(Activation):
    """Scaled ELU (Klambauer et al. 2017), ``y = scale * (x if x > 0 else
    alpha * (exp(x) - 1))`` with alpha = 1.6733, scale = 1.0507; self-normalizing
    with LeCun-normal init (what ``init="auto"`` picks for it).
    """
    name = "selu"

    def __init__(self):
        super().__init__()


class Sigmoid(Activation):
    """Logistic sigmoid, ``y = 1 / (1 + exp(-x))``.

    The lectures' three problems: saturated units kill gradients, outputs are
    not zero-centered, exp is costly. Kept for completeness and gates.
    """
    name = "sigmoid"

    def __init__(self):
        super().__init__()


class Tanh(Activation):
    """Hyperbolic tangent, ``y = tanh(x)``: zero-centered, but saturates like the
    sigmoid (see the activation-statistics example).
    """
    name = "tanh"

    def __init__(self):
        super().__init__()


class Swish(Activation):
    """Swish / SiLU (Ramachandran et al. 2017), ``y = x * sigmoid(x)``."""
    name = "swish"

    def __init__(self):
        super().__init__()


class GELU(Activation):
    """GELU, exact (erf) by default; approximate="tanh" for the tanh form."""

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        object.__setattr__(self, "name", "gelu" if approximate == "none" else "gelu_tanh")
        super().__init__()


class PReLU(Activation):
    """Leaky ReLU with learned slopes (He et al. 2015, "Delving Deep into
    Rectifiers"): y = x if x > 0 else a_c * x, init a = 0.25.

    num_parameters (PyTorch's name): 1 (default), one slope shared by every
    unit; or C, one slope per channel, the channel being axis 1: x (N, C) has
    one slope per feature, x (N, C, H, W) one per channel plane (N, C, L too).
    ``alpha`` is the Parameter (num_parameters,). Gradients (PyTorch's):

        dx = dy if x > 0 else a_c * dy
        d alpha_c = sum over every position i that uses a_c of dy_i * (0 if x_i > 0 else x_i)

    A scalar PReLU after a Linear/Conv2d/BatchNorm runs fused in its kernel; a
    per-channel one runs as its own step (NumPy, in the dtype of x, the slope
    gradient summed in float64). ``init`` comes first (fastnn's order since
    PReLU(0.25)): ``PReLU(64)`` is refused as the likely PyTorch spelling of
    ``PReLU(num_parameters=64)``."""

    name = "prelu"

    def __init__(self, init=0.25, dtype=np.float32, num_parameters=1):
        if isinstance(init, (int, np.integer)) and not isinstance(init, bool) and init >= 2:
            raise ValueError(f"PReLU's first argument is init, the initial slope, got {init!r}: for one slope "
                             f"per channel write PReLU(num_parameters={init}) (PyTorch's PReLU({init}))")
        super().__init__(init)
        self.num_parameters = V.positive_int(num_parameters, "num_parameters")
        self.alpha = Parameter(np.full(self.num_parameters, V.real(init, "init"), _dtype(dtype)), "alpha")

    @property
    def fusable(self) -> bool:
        """True for one shared slope (runs fused in the previous layer's kernel), False for per-channel slopes."""
        return self.num_parameters == 1

    @property
    def alpha_value(self) -> float:
        """The shared slope as a float (only for ``num_parameters=1``)."""
        if self.num_parameters != 1:
            raise RuntimeError(f"PReLU(num_parameters={self.num_parameters}) has one slope per channel, not one "
                               "alpha_value: read PReLU.alpha.data")
        return float(self.alpha.data[0])

    def _accumulate_alpha(self, dalpha):
        self.alpha.grad[0] = dalpha

    def _slopes(self, x):
        """alpha as an array that broadcasts against x (1, C, 1, ...), in x's dtype."""
        c = self.num_parameters
        if not hasattr(x, "ndim") or not hasattr(x, "shape") or x.ndim < 2 or x.shape[1] != c:
            shape = tuple(getattr(x, "shape", ()))
            raise ValueError(f"PReLU(num_parameters={c}) needs x with {c} channels on axis 1 (shape (N, {c}) or "
                             f"(N, {c}, H, W)), got shape {shape}")
        V.float_array(x, "x", contiguous=False)
        return self.alpha.data.astype(x.dtype, copy=False).reshape((1, c) + (1,) * (x.ndim - 2))

    def forward(self, x):
        """``y = x if x > 0 else a_c * x``; x ``(N, C)`` or ``(N, C, H, W)`` (any shape
        for one shared slope), float32 or float64.
        """
        if self.num_parameters == 1:
            return super().forward(x)
        a = self._slopes(x)
        self._x = x
        xp = V.array_module(x)
        y = xp.multiply(x, a, out=self._buf("y", x.shape, x.dtype))
        xp.copyto(y, x, where=x > 0)
        self._y = y
        return y

    def backward(self, dout):
        """``dx = dout if x > 0 else a_c * dout``; writes ``alpha.grad``
        (``sum dout * x`` over the positions where x <= 0, per slope).
        """
        if self.num_parameters == 1:
            return super().backward(dout)
        if self._x is None:
            raise RuntimeError("PReLU.backward called before forward")
        x = self._x
        V.float_array(dout, "dout", dtype=x.dtype, contiguous=False)
        V.shape_is(dout, "dout", x.shape)
        a = self._slopes(x)
        xp = V.array_module(x)
        positive = x > 0
        axes = (0,) + tuple(range(2, x.ndim))
        self.alpha.grad[...] = xp.sum(dout * xp.where(positive, 0, x), axis=axes, dtype=np.float64)
        dx = xp.multiply(dout, a, out=self._buf("dx", dout.shape, dout.dtype))
        xp.copyto(dx, dout, where=positive)
        return dx


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        """``(N, C, H, W) -> (N, C*H*W)`` (any ``(N, ...)`` to ``(N, -1)``), a view."""
        self._shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))   # not -1: an empty batch has no size to infer

    def backward(self, dout):
        """Reshape ``dout (N, C*H*W)`` back to the input shape."""
        return dout.reshape(self._shape)


class Step(NamedTuple):
    """One kernel call of a Sequential's forward: ``layer`` runs alone
    (``activation`` is None), or a Linear/Conv2d runs with the following
    activation layer fused into its GEMM epilogue (``activation`` is that layer,
    which then has no call of its own). Backward walks the steps in reverse."""
    layer: Module
    activation: Activation | None


class _Layers(tuple):
    """Sequential.layers: a read-only tuple. Assigning into it would change
    nothing the model runs (the fused steps and parameters() would keep the
    old layer), so it says where replacing a layer is done instead."""

    def __setitem__(self, i, layer):
        raise TypeError(f"Sequential.layers is read-only: replace a layer with model[{i!r}] = layer (that also "
                        "rebuilds the fused steps and parameters())")

    def __delitem__(self, i):
        raise TypeError("Sequential.layers is read-only: build a new Sequential(*layers) without the layer")


class Sequential(Module):
    """Layers applied in order; backward in reverse.

    A Linear (or Conv2d) without its own activation followed by an activation
    layer runs as one fused step (``steps()``; the activation's PReLU slope gets
    its gradient; a per-channel ``PReLU(num_parameters=C)`` runs as its own step).

    init="auto" is resolved here for such a Linear/Conv2d, from the activation
    layer that follows it (looking past BatchNorm, Dropout, pooling, Flatten):
    ``Sequential(Linear(500, 500), ReLU())`` gets He init like
    ``Linear(500, 500, activation="relu")``, the very same weights (see
    ``Linear.resolve_auto_init``); tanh/sigmoid or no activation (the last
    layer) keep Xavier, SELU gets LeCun.

    ``model[i]``, ``len(model)`` and ``for layer in model`` read the layers
    (``model[a:b]`` is a new Sequential sharing them); ``model[i] = layer``
    replaces one (the transfer-learning move: a new head), rebuilding the fused
    steps, so ``forward`` and ``parameters()`` use the new layer at once. Build
    the optimizer (``fnn.optim.Adam(model.parameters())``) after replacing:
    one built before still holds the old layer's parameters, and Trainer
    refuses it. ``model.layers`` is a read-only tuple.

    Called as the top-level model (``model(x)`` or ``model.forward(x)``), x is
    brought to the parameters' dtype and a C-contiguous layout with one copy
    when needed (``fastnn.nn.module.as_model_input``); layers inside keep
    refusing what their kernels cannot take."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a fastnn Module, got {type(layer).__name__}")
            setattr(self, str(i), layer)
        object.__setattr__(self, "_layers", _Layers(layers))
        for layer in self._layers:
            layer.set_reuse_buffers(True)
        self._resolve_auto_inits()
        self._plan = self._make_plan()
        self._ran = []
        # fastnn.distributed.DataParallel(bucket_mb=...) sets this during a step
        # (set_backward_hook): called with k after the k-th step of backward.
        self._after_backward_step = None

    @property
    def layers(self) -> tuple:
        """The layers in order, read-only (replace one with ``model[i] = layer``)."""
        return self._layers

    @layers.setter
    def layers(self, value):
        raise TypeError("Sequential.layers is read-only: replace a layer with model[i] = layer, or build a new "
                        "Sequential(*layers)")

    def _following_activation(self, i):
        """The activation layer whose input is layer i's output, looking past the
        layers that do not change which activation applies: BatchNorm (a layer
        with ``running_var``), and parameter-free non-activation layers (Dropout,
        pooling, Flatten); None when another weighted layer or the end comes first."""
        for nxt in self._layers[i + 1:]:
            if isinstance(nxt, Activation):
                return nxt
            if getattr(nxt, "running_var", None) is None and (nxt.parameters() or isinstance(nxt, Sequential)):
                return None
        return None

    def _resolve_auto_inits(self):
        """init="auto" of each Linear/Conv2d without its own activation, from the
        activation layer that follows it (``resolve_auto_init``): He for the
        ReLU family, LeCun for SELU, Xavier for tanh/sigmoid and for a layer
        with no activation after it (the last layer). Explicit inits, layers with
        activation=, and weights changed since their draw are left alone."""
        for i, layer in enumerate(self._layers):
            resolve = getattr(layer, "resolve_auto_init", None)
            if resolve is not None:
                act = self._following_activation(i)
                resolve(act.name if act is not None else "identity")

    def _make_plan(self):
        plan, i = [], 0
        while i < len(self._layers):
            layer = self._layers[i]
            nxt = self._layers[i + 1] if i + 1 < len(self._layers) else None
            if isinstance(nxt, Activation) and nxt.fusable and getattr(layer, "fuses", None) and layer.fuses(nxt):
                plan.append(Step(layer, nxt))
                i += 2
            else:
                plan.append(Step(layer, None))
                i += 1
        return plan

    def steps(self) -> list[Step]:
        """The execution plan: the ``Step(layer, activation)`` that forward runs,
        in order (a Linear/Conv2d with the activation layer fused into it, or one
        layer alone). A fresh list: changing it changes nothing."""
        return list(self._plan)

    def walk(self, prefix: str = "") -> list:
        """``Module.walk``: the fused steps in order as (label, layer,
        activation), nested Sequentials flattened; a label names the layer index
        (``"2:Linear"``), both indices of a fused pair (``"0-1:Linear+ReLU"``) and
        the path into a nested Sequential (``"3.0:Conv2d"``)."""
        out = []
        index = {id(layer): i for i, layer in enumerate(self._layers)}
        for layer, act in self._plan:
            i = index[id(layer)]
            if isinstance(layer, Sequential):
                out.extend(layer.walk(f"{prefix}{i}."))
            elif act is None:
                out.append((f"{prefix}{i}:{type(layer).__name__}", layer, None))
            else:
                out.append((f"{prefix}{i}-{index[id(act)]}:{type(layer).__name__}+{type(act).__name__}", layer, act))
        return out

    def set_backward_hook(self, hook) -> None:
        """``hook(k)`` is called after the k-th step of backward (k counts from
        the last step), when that step's gradients are final; None removes it.
        fastnn.distributed.DataParallel(bucket_mb=...) starts the allreduce of a
        bucket of gradients from it while backward goes on."""
        self._after_backward_step = hook

    def __len__(self):
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Sequential indices must be integers, got {type(i).__name__}")
        n = len(self._layers)
        if not -n <= i < n:
            raise IndexError(f"layer index {i} out of range for a Sequential of {n} layers")
        return int(i) % n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*self._layers[i])
        return self._layers[self._index(i)]

    def __setitem__(self, i, layer):
        """Replace layer i (negative indices count from the end); the fused
        steps are rebuilt, the new layer takes the model's train/eval mode."""
        if isinstance(i, slice):
            raise TypeError("replace layers one at a time: model[i] = layer")
        k = self._index(i)
        if not isinstance(layer, Module):
            raise TypeError(f"model[{i}] must be set to a fastnn Module, got {type(layer).__name__}")
        old = self._layers[k]
        layers = list(self._layers)
        layers[k] = layer
        setattr(self, str(k), layer)
        object.__setattr__(self, "_layers", _Layers(layers))
        object.__setattr__(self, "_config_args", (layers, {}))    # save() writes the model as it is now
        layer.set_reuse_buffers(True)
        layer.train(self.training)
        if all(m is not old for m in layers):
            old.set_reuse_buffers(False)   # standalone again: fresh outputs
        self._resolve_auto_inits()     # only weights still as drawn: never a trained layer's
        self._plan = self._make_plan()

    def forward(self, x):
        """Run the layers in order (fused steps where possible: a Linear/Conv2d/
        BatchNorm followed by an activation is one kernel call).

        Parameters
        ----------
        x : (N, ...) float32 or float64, C-contiguous

        Returns
        -------
        array
            The output of the last layer, e.g. ``(N, C)`` class scores.
        """
        x = self._forward_into_buffers(x)
        # Children reuse their buffers; a top-level Sequential hands out a copy.
        return x if self.reuse_buffers else x.copy()

    def _forward_into_buffers(self, x):
        """``forward`` without the copy of the output at the API boundary: the
        last layer's own buffer, valid until the next forward. For the Trainer's
        step, whose loss reads the scores at once (on the GPU, CuPy's copy of even
        a (256, 10) array costs tens of microseconds of host time)."""
        if not self.reuse_buffers:      # the top-level model: the API boundary
            x = as_model_input(x, self.input_dtype(), device=self.device())
        for layer, act in self._plan:
            if act is None:
                x = layer.forward(x)
            else:
                x = layer.forward_fused(x, act.name, act.alpha_value)
        return x

    def backward(self, dout):
        """Backpropagate ``dout`` (the gradient of the loss w.r.t. the output, e.g.
        ``(N, C)``) through the layers in reverse; writes every ``.grad`` and
        returns the gradient w.r.t. the input.
        """
        hook = self._after_backward_step
        for k, (layer, act) in enumerate(reversed(self._plan)):
            first = k == len(self._plan) - 1
            layer.set_input_grad(self.input_grad or not first)
            if act is None:
                dout = layer.backward(dout)
            else:
                dout, dalpha = layer.backward_fused(dout)
                act._accumulate_alpha(dalpha)
            if hook is not None:
                hook(k)
        return dout if (self.reuse_buffers or dout is None) else dout.copy()
