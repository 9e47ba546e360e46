"""Weight initialization (lecture "Training Neural Networks I").

Every initializer is ``fn(shape, rng=None, dtype=np.float32) -> ndarray``.
Fans: a Linear weight (in, out) has fan_in = in, fan_out = out; a conv weight
(F, C, kh, kw) has fan_in = C*kh*kw and fan_out = F*kh*kw.

- ``small_random(std=0.01)``: N(0, std^2); activations shrink layer by layer.
- ``xavier_normal`` / ``xavier_uniform``: Glorot & Bengio (2010), variance
  2 / (fan_in + fan_out); ``mode="fan_in"`` gives the 1/fan_in form.
- ``he_normal`` / ``he_uniform``: He et al. (2015), variance 2 / fan_in, for ReLU.
- ``lecun_normal``: variance 1 / fan_in, for SELU (Klambauer et al. 2017).
- ``"auto"`` (a layer's default): He for the ReLU family, LeCun for SELU,
  Xavier otherwise, from the layer's own ``activation=`` or, inside a
  ``Sequential``, from the activation layer that follows it.
- ``orthogonal``: Saxe et al. (2014), a (scaled) orthogonal matrix.
- ``lsuv(model, x)``: data-driven (Mishkin & Matas 2016), applied to a built model.
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from ._random import generator


# The shape and rng parameters of every initializer, documented once.
_SHAPE_RNG = """shape : tuple of int
        Weight shape: ``(in, out)`` for Linear, ``(F, C, kh, kw)`` for Conv2d.
    rng : numpy.random.Generator or int, optional
        Random source or seed; None uses fastnn's global generator
        (``fastnn.manual_seed``)."""
_with_shape_rng = V.fill_doc(shape_rng=_SHAPE_RNG)


def fans(shape) -> tuple[int, int]:
    """Fan-in and fan-out of a weight shape.

    Parameters
    ----------
    shape : tuple of int
        ``(n,)``, ``(in, out)`` (Linear) or ``(F, C, kh, kw)`` (Conv2d).

    Returns
    -------
    (fan_in, fan_out) : tuple of int
        ``(in, out)`` for 2-D; ``(C*kh*kw, F*kh*kw)`` for 4-D; ``(n, n)`` for 1-D.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    raise ValueError(f"shape must be 1-D, 2-D (in, out) or 4-D (F, C, kh, kw), got {shape}")


def _fan(shape, mode: str) -> float:
    fan_in, fan_out = fans(shape)
    if mode == "fan_in":
        return fan_in
    if mode == "fan_out":
        return fan_out
    if mode == "fan_avg":
        return (fan_in + fan_out) / 2.0
    raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")


@_with_shape_rng
def zeros(shape, rng=None, dtype=np.float32):
    """All zeros (the usual bias init; for weights it breaks symmetry-breaking:
    every unit of a layer then computes the same thing).

    Parameters
    ----------
    %(shape_rng)s
    dtype : numpy dtype, default float32

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return np.zeros(shape, dtype)


@_with_shape_rng
def constant(shape, value=0.0, rng=None, dtype=np.float32):
    """Every entry equal to ``value``.

    Parameters
    ----------
    %(shape_rng)s
    value : float
        The fill value.
    dtype : numpy dtype, default float32

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return np.full(shape, V.real(value, "value"), dtype)


@_with_shape_rng
def normal(shape, std=1.0, rng=None, dtype=np.float32):
    """Gaussian init, ``W ~ N(0, std^2)``.

    Parameters
    ----------
    %(shape_rng)s
    std : float, default 1.0
        Standard deviation (>= 0).
    dtype : numpy dtype, default float32

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return (generator(rng).standard_normal(shape) * V.real(std, "std", low=0.0)).astype(dtype)


@_with_shape_rng
def small_random(shape, std=0.01, rng=None, dtype=np.float32):
    """The lecture's "small random numbers", ``W = 0.01 * randn(shape)``.

    Fine for small networks; in deep ones the activations shrink towards zero
    layer after layer (see the activation-statistics example), and so do the
    gradients.

    Parameters
    ----------
    %(shape_rng)s
    std : float, default 0.01
    dtype : numpy dtype, default float32

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return normal(shape, std, rng, dtype)


@_with_shape_rng
def xavier_normal(shape, rng=None, dtype=np.float32, mode="fan_avg", gain=1.0):
    """Xavier/Glorot normal init (Glorot & Bengio 2010), ``W ~ N(0, gain^2 / fan)``.

    With the default ``mode="fan_avg"`` the variance is ``2 / (fan_in + fan_out)``
    (the paper's form). The lecture notes write Xavier as
    ``W = randn(fan_in, fan_out) / sqrt(fan_in)``: that is ``mode="fan_in"``.

    Parameters
    ----------
    %(shape_rng)s
    dtype : numpy dtype, default float32
    mode : {"fan_avg", "fan_in", "fan_out"}, default "fan_avg"
        Which fan sets the variance.
    gain : float, default 1.0
        Multiplies the standard deviation.

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return normal(shape, V.real(gain, "gain", low=0.0) / math.sqrt(_fan(shape, mode)), rng, dtype)


@_with_shape_rng
def xavier_uniform(shape, rng=None, dtype=np.float32, mode="fan_avg", gain=1.0):
    """Xavier/Glorot uniform init, ``W ~ U(-b, b)`` with ``b = gain * sqrt(3 / fan)``.

    The variance ``b^2 / 3 = gain^2 / fan`` matches :func:`xavier_normal`;
    ``fan = (fan_in + fan_out) / 2`` by default, ``fan_in`` with
    ``mode="fan_in"`` (the lecture notes' 1/sqrt(fan_in) form).

    Parameters
    ----------
    %(shape_rng)s
    dtype : numpy dtype, default float32
    mode : {"fan_avg", "fan_in", "fan_out"}, default "fan_avg"
    gain : float, default 1.0

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    bound = V.real(gain, "gain", low=0.0) * math.sqrt(3.0 / _fan(shape, mode))
    return generator(rng).uniform(-bound, bound, shape).astype(dtype)


@_with_shape_rng
def he_normal(shape, rng=None, dtype=np.float32, mode="fan_in"):
    """He/Kaiming normal init (He et al. 2015), ``W ~ N(0, 2 / fan_in)``.

    The lecture's init for ReLU networks, ``W = randn(fan_in, fan_out) *
    sqrt(2 / fan_in)``: the factor 2 makes up for ReLU zeroing half its inputs,
    so the activation variance stays constant with depth.

    Parameters
    ----------
    %(shape_rng)s
    dtype : numpy dtype, default float32
    mode : {"fan_in", "fan_out", "fan_avg"}, default "fan_in"

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    return normal(shape, math.sqrt(2.0 / _fan(shape, mode)), rng, dtype)


@_with_shape_rng
def he_uniform(shape, rng=None, dtype=np.float32, mode="fan_in"):
    """He/Kaiming uniform init, ``W ~ U(-b, b)`` with ``b = sqrt(6 / fan_in)``
    (variance ``2 / fan_in``, as :func:`he_normal`).

    Parameters
    ----------
    %(shape_rng)s
    dtype : numpy dtype, default float32
    mode : {"fan_in", "fan_out", "fan_avg"}, default "fan_in"

    Returns
    -------
    ndarray of ``shape``, ``dtype``.
    """
    bound = math.sqrt(6.0 / _fan(shape, mode))
    return generator(rng).uniform(-bound, bound, shape).astype(dtype)


def lecun_normal(shape, rng=None, dtype=np.float32):
    """LeCun normal, N(0, 1 / fan_in) (LeCun et al. 1998; Klambauer et al. 2017
    for SELU): xavier_normal with mode="fan_in", gain 1."""
    return normal(shape, 1.0 / math.sqrt(_fan(shape, "fan_in")), rng, dtype)


def orthogonal(shape, rng=None, dtype=np.float32, gain=1.0):
    """Rows or columns orthonormal (whichever are fewer), times gain."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"orthogonal needs a shape of at least 2 dimensions, got {shape}")
    rows = shape[0] if len(shape) == 2 else shape[0]
    cols = int(np.prod(shape[1:]))
    a = generator(rng).standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (V.real(gain, "gain", low=0.0) * q[:rows, :cols]).reshape(shape).astype(dtype)


def lsuv(model, x, tol=0.1, max_iter=10, rng=None):
    """Layer-sequential unit-variance init (Mishkin & Matas 2016, "All you need
    is a good init"): every weight layer (Linear, Conv2d: a ``weight`` of 2+
    dimensions) gets an orthogonal matrix, then, layer by layer from the input,
    its weight is divided by sqrt(Var(output)) until ``|Var - 1| < tol`` (at most
    max_iter passes). The variance is that of the layer's linear output (before
    its activation, the paper's conv/fc blob), measured on the batch x in eval
    mode. Biases are left as they are. Returns the model (changed in place)."""
    if not callable(getattr(model, "walk", None)):
        raise TypeError(f"lsuv needs model, a fastnn Module, got {type(model).__name__}")
    x = np.ascontiguousarray(V.batch(x, "x"))
    rng = generator(rng)
    with model.preserving_state(training=False):
        h = x
        for _, layer, act in model.walk():
            w = getattr(layer, "weight", None)
            if w is not None and w.data.ndim >= 2 and hasattr(layer, "forward_fused"):
                w.data[...] = orthogonal(w.data.shape, rng=rng, dtype=w.data.dtype)
                for _ in range(int(max_iter)):
                    var = float(np.var(np.asarray(layer.forward_fused(h, "identity", None)), dtype=np.float64))
                    if not np.isfinite(var) or var <= 0.0 or abs(var - 1.0) < tol:
                        break
                    w.data[...] /= np.sqrt(var).astype(w.data.dtype)
            h = layer.forward_step(h, act)
    return model


INITIALIZERS = {
    "zeros": zeros, "constant": constant, "normal": normal, "small_random": small_random,
    "xavier_normal": xavier_normal, "xavier_uniform": xavier_uniform,
    "he_normal": he_normal, "he_uniform": he_uniform, "lecun_normal": lecun_normal, "orthogonal": orthogonal,
}

# init="auto": the initializer for a layer whose output goes through each
# activation. He (variance 2 / fan_in) for the ReLU family, whose negative half
# is (nearly) cut; LeCun (1 / fan_in) for SELU, as its paper prescribes;
# Xavier (2 / (fan_in + fan_out)) for the rest (tanh, sigmoid, identity: a
# last layer). All three draw standard normals, the same number of them.
AUTO = {"relu": "he_normal", "leaky_relu": "he_normal", "prelu": "he_normal", "elu": "he_normal",
        "gelu": "he_normal", "gelu_tanh": "he_normal", "swish": "he_normal", "selu": "lecun_normal"}


def auto_name(activation=None) -> str:
    """The name of the initializer init="auto" picks for a layer followed by
    ``activation`` (a name; None or "identity" for none): "he_normal",
    "lecun_normal" or "xavier_normal"."""
    return AUTO.get(activation, "xavier_normal")


def resolve(init, activation=None):
    """An initializer function from a name, a callable, or "auto" (He for the
    ReLU family, LeCun normal for SELU, Xavier otherwise: ``auto_name``)."""
    if callable(init):
        return init
    if init in (None, "auto"):
        return INITIALIZERS[auto_name(activation)]
    if init not in INITIALIZERS:
        raise ValueError(f"init must be one of {sorted(INITIALIZERS)} or a callable, got {init!r}")
    return INITIALIZERS[init]
