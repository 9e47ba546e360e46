"""Layers: Linear (with a fused activation), activation layers, Flatten, Sequential.

Shapes: x (N, D) -> Linear -> (N, M). Linear.weight is (in_features, out_features).
Sequential runs a Linear followed by an activation layer as ONE fused
linear_act kernel (GEMM with the bias + activation in its epilogue).
"""
from __future__ import annotations

import numpy as np

from .. import _validate as V
from .. import init as initializers
from .. import ops
from .._random import generator
from ..backend.codes import SAVES_PREACTIVATION
from .module import Module, Parameter


def _dtype(dtype):
    dt = np.dtype(dtype)
    if dt not in V.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


class _WeightedActivation(Module):
    """The shared part of Linear and Conv2d: weight/bias/prelu-alpha creation, the
    activation they may fuse, and the fusion protocol Sequential uses
    (fuses / forward_fused / backward_fused)."""

    def _init_weights(self, shape, units, activation, alpha, init, bias, dtype, rng):
        self.activation = "identity" if activation is None else activation
        _, self._alpha = ops.activation_code(self.activation, alpha)
        dt = _dtype(dtype)
        fn = initializers.resolve(init, self.activation)
        self.weight = Parameter(np.ascontiguousarray(fn(shape, rng=generator(rng), dtype=dt)), "weight")
        self.bias = Parameter(np.zeros(units, dt), "bias") if bias else None
        if self.activation == "prelu":
            self.alpha = Parameter(np.full(1, self._alpha, dt), "alpha")
        self._saved = None

    def fuses(self, act) -> bool:
        """Whether a following activation layer can run inside this layer's kernel."""
        return self.activation == "identity"

    def _act_alpha(self):
        return float(self.alpha.data[0]) if self.activation == "prelu" else self._alpha

    def forward(self, x):
        return self.forward_fused(x, self.activation, self._act_alpha())

    def backward(self, dout):
        dx, dalpha = self.backward_fused(dout)
        if dalpha is not None:
            self.alpha.grad[0] = dalpha
        return dx


class Linear(_WeightedActivation):
    """y = act(x @ weight + bias).

    activation: None or a name from DESIGN (relu, leaky_relu, prelu, elu, selu,
    sigmoid, tanh, gelu, gelu_tanh, swish); alpha its parameter (leaky slope,
    elu alpha, prelu's initial slope). init: an initializer name or callable;
    "auto" picks He for the ReLU family, LeCun for SELU, Xavier otherwise."""

    def __init__(self, in_features, out_features, activation=None, alpha=None, init="auto",
                 bias=True, dtype=np.float32, rng=None):
        super().__init__()
        self.in_features = V.positive_int(in_features, "in_features")
        self.out_features = V.positive_int(out_features, "out_features")
        self._init_weights((self.in_features, self.out_features), self.out_features, activation, alpha, init,
                           bias, dtype, rng)

    def forward_fused(self, x, act, alpha):
        """Forward with an activation taken from a following layer."""
        V.float_array(x, "x", ndim=2, dtype=self.weight.data.dtype)
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
        V.float_array(x, "x", ndim=2, dtype=self.weight.data.dtype)
        z, self._saved = ops.linear_act(x, self.weight.data, self.bias.data if self.bias else None)
        pieces = z.reshape(z.shape[0], self.out_features, self.pieces)
        self._argmax = pieces.argmax(axis=2)[:, :, None]
        return np.take_along_axis(pieces, self._argmax, axis=2)[:, :, 0]

    def backward(self, dout):
        if self._saved is None:
            raise RuntimeError("Maxout.backward called before forward")
        n = self._saved.x.shape[0]
        V.float_array(dout, "dout", ndim=2, dtype=self.weight.data.dtype)
        V.shape_is(dout, "dout", (n, self.out_features))
        dz = np.zeros((n, self.out_features, self.pieces), dout.dtype)
        np.put_along_axis(dz, self._argmax, dout[:, :, None], axis=2)
        dx, _, _, _ = ops.linear_act_backward(
            dz.reshape(n, -1), self._saved, need_dx=self.input_grad, dweight=self.weight.grad,
            dbias=self.bias.grad if self.bias else None, need_dbias=self.bias is not None)
        return dx


class Activation(Module):
    """An elementwise activation layer (the base of ReLU, Tanh, ...)."""

    name = "identity"

    def __init__(self, alpha=None):
        super().__init__()
        _, self._alpha = ops.activation_code(self.name, alpha)
        self._x = self._y = None

    @property
    def alpha_value(self) -> float:
        return self._alpha

    def forward(self, x):
        self._x = x
        self._y = ops.activation(x, self.name, self.alpha_value, out=self._buf("y", x.shape, x.dtype))
        return self._y

    def backward(self, dout):
        if self._x is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        dx, dalpha = ops.activation_backward(dout, self._x, self._y, self.name, self.alpha_value,
                                             out=self._buf("dx", dout.shape, dout.dtype))
        self._accumulate_alpha(dalpha)
        return dx

    def _accumulate_alpha(self, dalpha):
        pass


class Identity(Activation):
    name = "identity"

    def __init__(self):
        super().__init__()


class ReLU(Activation):
    name = "relu"

    def __init__(self):
        super().__init__()


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__(alpha)


class ELU(Activation):
    name = "elu"

    def __init__(self, alpha=1.0):
        super().__init__(alpha)


class SELU(Activation):
    name = "selu"

    def __init__(self):
        super().__init__()


class Sigmoid(Activation):
    name = "sigmoid"

    def __init__(self):
        super().__init__()


class Tanh(Activation):
    name = "tanh"

    def __init__(self):
        super().__init__()


class Swish(Activation):
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
    """Leaky ReLU with a learned slope (He et al. 2015), one scalar, init 0.25."""

    name = "prelu"

    def __init__(self, init=0.25, dtype=np.float32):
        super().__init__(init)
        self.alpha = Parameter(np.full(1, V.real(init, "init"), _dtype(dtype)), "alpha")

    @property
    def alpha_value(self) -> float:
        return float(self.alpha.data[0])

    def _accumulate_alpha(self, dalpha):
        self.alpha.grad[0] = dalpha


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))   # not -1: an empty batch has no size to infer

    def backward(self, dout):
        return dout.reshape(self._shape)


class Sequential(Module):
    """Layers applied in order; backward in reverse.

    A Linear without its own activation followed by an activation layer runs as
    one fused linear_act step (the activation's PReLU slope gets its gradient)."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}] must be a fastnn Module, got {type(layer).__name__}")
            setattr(self, str(i), layer)
        self.layers = list(layers)
        for layer in self.layers:
            object.__setattr__(layer, "reuse_buffers", True)
        self._plan = self._make_plan()
        self._ran = []
        # fastnn.distributed.DataParallel(bucket_mb=...) sets this during a step: called
        # with k after the k-th plan step of backward, when that step's gradients are final.
        self._after_backward_step = None

    def _make_plan(self):
        plan, i = [], 0
        while i < len(self.layers):
            layer = self.layers[i]
            nxt = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(nxt, Activation) and getattr(layer, "fuses", None) and layer.fuses(nxt):
                plan.append((layer, nxt))
                i += 2
            else:
                plan.append((layer, None))
                i += 1
        return plan

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def forward(self, x):
        for layer, act in self._plan:
            if act is None:
                x = layer.forward(x)
            else:
                x = layer.forward_fused(x, act.name, act.alpha_value)
        # Children reuse their buffers; a top-level Sequential hands out a copy.
        return x if self.reuse_buffers else np.array(x, copy=True)

    def backward(self, dout):
        hook = self._after_backward_step
        for k, (layer, act) in enumerate(reversed(self._plan)):
            first = k == len(self._plan) - 1
            object.__setattr__(layer, "input_grad", self.input_grad or not first)
            if act is None:
                dout = layer.backward(dout)
            else:
                dout, dalpha = layer.backward_fused(dout)
                act._accumulate_alpha(dalpha)
            if hook is not None:
                hook(k)
        return dout if (self.reuse_buffers or dout is None) else np.array(dout, copy=True)
