"""Export a fastnn model to ONNX: ``to_onnx(model, path, input_shape, opset=None)``.

The ONNX graph computes the model's eval-mode forward (what ``model.eval()``
then ``model(x)`` returns), whatever mode the model is in, for a float32 input
of shape ``(batch, *input_shape)`` with a dynamic batch dimension::

    Linear / DropConnect      Gemm(x, weight (in, out), bias), its activation after it
    Conv2d                    Conv (pads = padding on both sides), its activation after it
    activations               Relu, LeakyRelu, PRelu (slopes (C, 1, ...) when per channel),
                              Elu, Selu, Sigmoid, Tanh, swish as x * Sigmoid(x); gelu and
                              gelu_tanh from Erf / Tanh (opset < 20) or Gelu (opset >= 20)
    BatchNorm1d/2d            BatchNormalization with the running statistics (eval form)
    Dropout, Identity         nothing (eval is the identity)
    MaxPool2d                 MaxPool
    GlobalAvgPool2d, Flatten  GlobalAveragePool + Flatten, Flatten
    Maxout                    Gemm, Reshape (N, out, pieces), ReduceMax over the pieces
    FractionalMaxPool2d       its eval grid (offset u = 0.5 on both axes, fixed by the
                              input size): two Gathers and a ReduceMax, as fastnn computes it
    Residual                  x + block(x), the block scaled by survival_prob (stochastic
                              depth's eval form) when survival_prob < 1
    Sequential                its fused steps (``Sequential.steps()``), nested ones inlined

A float64 model is exported with its weights rounded to float32. The graph is
built with ``onnx.helper`` and passes ``onnx.checker.check_model(full_check=True)``
(which runs strict shape inference) before the file is written atomically
(temporary file in the same folder + fsync + rename).

onnx is optional: ``pip install "fastnn-train[onnx]"`` (from a clone:
``pip install ".[onnx]"``) brings it and onnxruntime.
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from . import nn
from . import ops
from ._io import write_atomic

DEFAULT_OPSET = 17          # ONNX Runtime >= 1.11, TensorRT 8.5+, OpenVINO: the safe default
MIN_OPSET = 13              # Gemm with an optional bias, Gather/Flatten/ReduceMax as used here
GELU_OPSET = 20             # the first opset with a Gelu operator
REDUCE_AXES_INPUT_OPSET = 18  # ReduceMax takes axes as an input from here on

# FractionalMaxPool2d's eval grid (see its docstring): the offset u on both axes.
FRACTIONAL_EVAL_OFFSET = 0.5

_INSTALL = 'pip install "fastnn-train[onnx]" (from a clone: pip install ".[onnx]")'

# AvgPool2d arrives in a later wave of nn; exported when it exists.
_AvgPool2d = getattr(nn, "AvgPool2d", None)


def _require_onnx():
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ImportError(f"fastnn.export.to_onnx needs the onnx package, which is not installed: {_INSTALL}") from exc
    return onnx


class ShapeMismatch(ValueError):
    """The input shape given to ``to_onnx`` does not fit a layer of the model."""


class UnsupportedLayer(NotImplementedError, ValueError):
    """A layer (or activation) without an ONNX form; a NotImplementedError and
    a ValueError (a bad argument for this exporter), caught as either."""


class _Graph:
    """The ONNX graph under construction: nodes, initializers (weights as
    float32 constants) and a counter for unique tensor names."""

    def __init__(self, onnx, opset: int):
        self.onnx = onnx
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}#{self._count}"

    def const(self, array, hint: str, dtype=np.float32) -> str:
        name = self._name(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array, dtype), name))
        return name

    def node(self, op: str, inputs, where: str, **attrs) -> str:
        out = self._name(f"{where}/{op}")
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def reduce_max(self, x: str, axes, where: str) -> str:
        """ReduceMax over ``axes`` without keeping them, in either opset's form."""
        if self.opset >= REDUCE_AXES_INPUT_OPSET:
            return self.node("ReduceMax", [x, self.const(np.array(axes), f"{where}/axes", np.int64)], where,
                             keepdims=0)
        return self.node("ReduceMax", [x], where, axes=list(axes), keepdims=0)


def _expect(cond: bool, label: str, wanted: str, shape, note: str = "") -> None:
    if not cond:
        raise ShapeMismatch(f"{label} expects an input of shape (N, {wanted}){note}, but it gets "
                            f"(N, {', '.join(map(str, shape))}) from input_shape")


# --- activations -----------------------------------------------------------------

def _activation(g: _Graph, name: str, alpha: float, slopes, x: str, shape, where: str) -> str:
    """The activation ``name`` (a fastnn activation name) applied to x.
    ``slopes`` is PReLU's alpha array ((1,) or (C,)), None otherwise."""
    if name == "identity":
        return x
    if name == "relu":
        return g.node("Relu", [x], where)
    if name == "leaky_relu":
        return g.node("LeakyRelu", [x], where, alpha=float(alpha))
    if name == "elu":
        return g.node("Elu", [x], where, alpha=float(alpha))
    if name == "selu":       # ONNX's default alpha and gamma are Klambauer et al.'s constants
        return g.node("Selu", [x], where)
    if name == "sigmoid":
        return g.node("Sigmoid", [x], where)
    if name == "tanh":
        return g.node("Tanh", [x], where)
    if name == "swish":
        return g.node("Mul", [x, g.node("Sigmoid", [x], where)], where)
    if name == "prelu":
        slopes = np.asarray(slopes)
        if slopes.size > 1:
            _expect(len(shape) >= 1 and shape[0] == slopes.size, f"{where} (PReLU with {slopes.size} slopes)",
                    f"{slopes.size}, ...", shape)
            slopes = slopes.reshape((slopes.size,) + (1,) * (len(shape) - 1))   # broadcast over (C, H, W)
        return g.node("PRelu", [x, g.const(slopes, f"{where}/alpha")], where)
    if name in ("gelu", "gelu_tanh"):
        if g.opset >= GELU_OPSET:
            return g.node("Gelu", [x], where, approximate="none" if name == "gelu" else "tanh")
        half = g.const(np.array(0.5), f"{where}/half")
        one = g.const(np.array(1.0), f"{where}/one")
        if name == "gelu":      # 0.5 x (1 + erf(x / sqrt 2))
            inner = g.node("Erf", [g.node("Mul", [x, g.const(np.array(1 / math.sqrt(2)), f"{where}/c")], where)],
                           where)
        else:                   # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            cube = g.node("Mul", [g.node("Mul", [x, x], where), x], where)
            poly = g.node("Add", [x, g.node("Mul", [cube, g.const(np.array(0.044715), f"{where}/k")], where)],
                          where)
            inner = g.node("Tanh", [g.node("Mul", [poly, g.const(np.array(math.sqrt(2 / math.pi)),
                                                                   f"{where}/c")], where)], where)
        return g.node("Mul", [g.node("Mul", [x, half], where), g.node("Add", [one, inner], where)], where)
    raise UnsupportedLayer(f"{where}: activation {name!r} has no ONNX export")


def _layer_activation(layer) -> tuple:
    """(name, alpha, slopes) of an activation layer."""
    if isinstance(layer, nn.PReLU):
        return "prelu", 0.0, layer.alpha.data
    return layer.name, layer.alpha_value, None


def _own_activation(layer) -> tuple:
    """(name, alpha, slopes) of a Linear/Conv2d's own activation= ."""
    name = layer.activation
    return name, layer._act_alpha(), layer.alpha.data if name == "prelu" else None


# --- layers ----------------------------------------------------------------------

def _emit(g: _Graph, layer, act, x: str, shape: tuple, where: str):
    """Append ``layer`` (with the activation layer ``act`` fused into it, or
    None) to the graph; returns (output name, output shape without the batch)."""
    x, shape = _emit_layer(g, layer, x, shape, where)
    if act is not None:
        x = _activation(g, *_layer_activation(act), x, shape, where)
    return x, shape


def _emit_sequential(g: _Graph, model, x: str, shape: tuple, where: str):
    index = {id(layer): i for i, layer in enumerate(model.layers)}
    for layer, act in model.steps():
        x, shape = _emit(g, layer, act, x, shape, f"{where}{index[id(layer)]}")
    return x, shape


def _emit_layer(g: _Graph, layer, x: str, shape: tuple, where: str):
    label = f"{where}:{type(layer).__name__}" if where else type(layer).__name__
    if isinstance(layer, nn.Sequential):
        return _emit_sequential(g, layer, x, shape, f"{where}." if where else "")
    if isinstance(layer, nn.Linear):           # DropConnect too: its eval form is the plain Linear
        _expect(shape == (layer.in_features,), label, str(layer.in_features), shape)
        inputs = [x, g.const(layer.weight.data, f"{label}/weight")]
        if layer.bias is not None:
            inputs.append(g.const(layer.bias.data, f"{label}/bias"))
        y = g.node("Gemm", inputs, label)
        shape = (layer.out_features,)
        return _activation(g, *_own_activation(layer), y, shape, label), shape
    if isinstance(layer, nn.Conv2d):
        c = layer.in_channels
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        _expect(len(shape) == 3 and shape[0] == c and shape[1] + 2 * ph >= kh and shape[2] + 2 * pw >= kw, label,
                f"{c}, H, W", shape, f" with H >= {kh - 2 * ph} and W >= {kw - 2 * pw}")
        inputs = [x, g.const(layer.weight.data, f"{label}/weight")]
        if layer.bias is not None:
            inputs.append(g.const(layer.bias.data, f"{label}/bias"))
        y = g.node("Conv", inputs, label, kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        shape = (layer.out_channels, (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)
        return _activation(g, *_own_activation(layer), y, shape, label), shape
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        c = layer.num_features
        ranks = (1, 2) if isinstance(layer, nn.BatchNorm1d) else (3,)
        _expect(len(shape) in ranks and shape[0] == c, label,
                f"{c}" if ranks == (1, 2) else f"{c}, H, W", shape)
        gamma = layer.weight.data if layer.affine else np.ones(c)
        beta = layer.bias.data if layer.affine else np.zeros(c)
        inputs = [x] + [g.const(a, f"{label}/{n}") for a, n in ((gamma, "weight"), (beta, "bias"),
                                                              (layer.running_mean, "running_mean"),
                                                              (layer.running_var, "running_var"))]
        return g.node("BatchNormalization", inputs, label, epsilon=float(layer.eps)), shape
    if isinstance(layer, nn.Activation):
        return _activation(g, *_layer_activation(layer), x, shape, label), shape
    if isinstance(layer, nn.Dropout):
        return x, shape
    if isinstance(layer, nn.MaxPool2d) or (_AvgPool2d is not None and isinstance(layer, _AvgPool2d)):
        return _emit_pool(g, layer, x, shape, label)
    if isinstance(layer, nn.GlobalAvgPool2d):
        _expect(len(shape) == 3, label, "C, H, W", shape)
        return g.node("Flatten", [g.node("GlobalAveragePool", [x], label)], label, axis=1), (shape[0],)
    if isinstance(layer, nn.Flatten):
        return g.node("Flatten", [x], label, axis=1), (int(np.prod(shape)),)
    if isinstance(layer, nn.Maxout):
        _expect(shape == (layer.in_features,), label, str(layer.in_features), shape)
        inputs = [x, g.const(layer.weight.data, f"{label}/weight")]
        if layer.bias is not None:
            inputs.append(g.const(layer.bias.data, f"{label}/bias"))
        pieces = g.node("Reshape", [g.node("Gemm", inputs, label),
                                    g.const(np.array([-1, layer.out_features, layer.pieces]), f"{label}/shape",
                                            np.int64)], label)
        return g.reduce_max(pieces, [2], label), (layer.out_features,)
    if isinstance(layer, nn.FractionalMaxPool2d):
        _expect(len(shape) == 3, label, "C, H, W", shape)
        c, h, w = shape
        oh, ow = layer._out_size(h, w)
        rows = ops.fractional_pool_sequence(h, oh, FRACTIONAL_EVAL_OFFSET)      # (OH, K)
        cols = ops.fractional_pool_sequence(w, ow, FRACTIONAL_EVAL_OFFSET)      # (OW, L)
        y = g.node("Gather", [x, g.const(rows, f"{label}/rows", np.int64)], label, axis=2)      # (N, C, OH, K, W)
        y = g.node("Gather", [y, g.const(cols, f"{label}/cols", np.int64)], label, axis=4)      # (N, C, OH, K, OW, L)
        return g.reduce_max(y, [3, 5], label), (c, oh, ow)
    if isinstance(layer, nn.Residual):
        fx, out_shape = _emit_layer(g, layer.block, x, shape, f"{where}.block")
        if out_shape != shape:
            raise ShapeMismatch(f"{label}: the block maps (N, {', '.join(map(str, shape))}) to "
                                f"(N, {', '.join(map(str, out_shape))}); a Residual block must keep the shape")
        if layer.survival_prob != 1.0:     # stochastic depth in eval: x + p * f(x)
            fx = g.node("Mul", [fx, g.const(np.array(layer.survival_prob), f"{label}/survival_prob")], label)
        return g.node("Add", [x, fx], label), shape
    raise UnsupportedLayer(f"to_onnx: {label} has no ONNX export; exportable layers: Linear, DropConnect, "
                              "Conv2d, the activations, BatchNorm1d/2d, Dropout, MaxPool2d, GlobalAvgPool2d, "
                              "Flatten, Maxout, FractionalMaxPool2d, Residual, Sequential")


def _emit_pool(g: _Graph, layer, x: str, shape: tuple, label: str):
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    ph, pw = getattr(layer, "padding", (0, 0))
    _expect(len(shape) == 3 and shape[1] + 2 * ph >= kh and shape[2] + 2 * pw >= kw, label,
            "C, H, W", shape, f" with H >= {kh - 2 * ph} and W >= {kw - 2 * pw}")
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
    if isinstance(layer, nn.MaxPool2d):
        y = g.node("MaxPool", [x], label, **attrs)
    else:
        y = g.node("AveragePool", [x], label, count_include_pad=int(getattr(layer, "count_include_pad", True)),
                   **attrs)
    return y, (shape[0], (shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)


# --- the entry point -------------------------------------------------------------

def _sample_shape(input_shape) -> tuple[tuple, bool]:
    """(shape of one sample, whether input_shape had an explicit batch entry
    None / -1 / a name). An int is a 1-entry shape."""
    if isinstance(input_shape, (int, np.integer)) and not isinstance(input_shape, bool):
        input_shape = (input_shape,)
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise TypeError(f"input_shape must be a tuple of positive ints (one sample's shape, e.g. (64,) or "
                        f"(1, 8, 8)), got {input_shape!r}")
    explicit_batch = input_shape[0] is None or isinstance(input_shape[0], str) or (
        isinstance(input_shape[0], (int, np.integer)) and not isinstance(input_shape[0], bool)
        and input_shape[0] == -1)
    dims = input_shape[1:] if explicit_batch else input_shape
    return tuple(V.positive_int(d, "input_shape entries") for d in dims), explicit_batch


def _build(onnx, model, shape: tuple, opset: int):
    g = _Graph(onnx, opset)
    y, out_shape = _emit_layer(g, model, "input", shape, "")
    g.nodes.append(onnx.helper.make_node("Identity", [y], ["output"], name="output"))
    return g, out_shape


def to_onnx(model, path, input_shape, opset=None):
    """Write ``model`` (a fastnn Module: a Sequential or one layer) to ``path``
    as an ONNX model of its eval-mode forward; returns the ``onnx.ModelProto``.

    input_shape: one sample's shape without the batch, e.g. ``(64,)`` for an
    MLP or ``(1, 8, 8)`` for a CNN on 8x8 images; a leading ``None`` (or -1)
    marks a batch entry, and a shape whose first entry is a batch size (the
    shape of an example batch, ``(32, 64)``) is recognised when only that
    reading fits the model. The graph has one input ``"input"``, float32 of
    shape ``(batch, *sample shape)`` with ``batch`` dynamic, and one output
    ``"output"``.

    opset: the ONNX opset (default 17, any from 13 to what the installed onnx
    knows). gelu/gelu_tanh become one Gelu node from opset 20 on, the erf/tanh
    formula before.

    Every fastnn layer is exported (see the module docstring); a layer without
    an ONNX form raises UnsupportedLayer (a NotImplementedError and a
    ValueError) naming it, an input_shape that does
    not fit the model a ValueError naming the layer. Needs the onnx package:
    ``pip install "fastnn-train[onnx]"``."""
    onnx = _require_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")
    latest = onnx.defs.onnx_opset_version()
    if opset is None:
        opset = min(DEFAULT_OPSET, latest)
    opset = V.positive_int(opset, "opset")
    if not MIN_OPSET <= opset <= latest:
        raise ValueError(f"opset must be between {MIN_OPSET} and {latest} (the newest this onnx {onnx.__version__} "
                         f"knows), got {opset}")
    shape, explicit_batch = _sample_shape(input_shape)
    try:
        g, out_shape = _build(onnx, model, shape, opset)
    except ShapeMismatch:
        if explicit_batch or len(shape) < 2:
            raise
        try:                                  # (batch, *sample) given: read it so when only that fits
            shape = shape[1:]
            g, out_shape = _build(onnx, model, shape, opset)
        except ShapeMismatch:
            pass
        else:
            return _finish(onnx, g, shape, out_shape, opset, path)
        raise
    return _finish(onnx, g, shape, out_shape, opset, path)


def _finish(onnx, g: _Graph, shape, out_shape, opset: int, path):
    helper = onnx.helper
    graph = helper.make_graph(
        g.nodes, "fastnn",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["batch", *out_shape])],
        initializer=g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    # The oldest IR version that carries this opset: runtimes older than the
    # installed onnx package still open the file.
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastnn",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    write_atomic(path, lambda f: f.write(data), suffix=".onnx")
    return proto


__all__ = ["to_onnx", "DEFAULT_OPSET", "ShapeMismatch", "UnsupportedLayer"]
