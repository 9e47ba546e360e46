"""Functional forward/backward pairs over the backend registry.

Every function validates its arguments once (dtype, rank, shape, contiguity),
picks the kernel from ``fastnn.backend`` (the current CPU backend for NumPy
arrays, ``cuda`` for CuPy arrays) and returns fresh outputs unless ``out=``
buffers are given. What a forward keeps for its backward is a named tuple.

Shapes: x (N, D), weight (D, M), bias (M,), y (N, M); scores (N, C).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _validate as V
from .backend import registry
from .backend.codes import ACT_CODE, ACTIVATIONS, RULE_CODE, SAVES_PREACTIVATION

DEFAULT_ALPHA = {"leaky_relu": 0.01, "elu": 1.0, "prelu": 0.25}


def _kernel(op: str, *arrays):
    for a in arrays:
        if a is not None and type(a).__module__.startswith("cupy"):
            return registry.lookup(op, "cuda")
    return registry.lookup(op)


def activation_code(act, alpha=None) -> tuple[int, float]:
    """(code, alpha) of an activation name; alpha defaults per activation."""
    name = "identity" if act is None else act
    if name not in ACT_CODE:
        raise ValueError(f"act must be one of {list(ACTIVATIONS)}, got {act!r}")
    a = DEFAULT_ALPHA.get(name, 0.0) if alpha is None else V.real(alpha, "alpha")
    if name == "leaky_relu" and a < 0:
        raise ValueError(f"alpha (leaky_relu negative slope) must be >= 0, got {a}")
    if name == "elu" and a <= 0:
        raise ValueError(f"alpha (elu) must be > 0, got {a}")
    return ACT_CODE[name], a


def _out(buf, name, shape, dtype):
    if buf is None:
        return np.empty(shape, dtype)
    V.float_array(buf, name, ndim=len(shape), dtype=dtype)
    V.shape_is(buf, name, shape)
    return buf


# --- GEMM ---------------------------------------------------------------------

def gemm(a, b, *, trans_a=False, trans_b=False, out=None, beta=0.0):
    """C = op(a) @ op(b) (+ C when beta == 1); op transposes when asked."""
    V.float_array(a, "a", ndim=2)
    V.float_array(b, "b", ndim=2, dtype=a.dtype)
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if kb != k:
        raise ValueError(f"a and b have mismatched inner dimensions: op(a) is ({m}, {k}), op(b) is ({kb}, {n})")
    c = _out(out, "out", (m, n), a.dtype)
    _kernel("gemm", a)(a, b, c, bool(trans_a), bool(trans_b), float(beta))
    return c


# --- Linear + activation --------------------------------------------------------

class LinearActSaved(NamedTuple):
    """What linear_act's forward keeps for backward."""
    x: np.ndarray          # (N, D) input
    weight: np.ndarray     # (D, M)
    y: np.ndarray          # (N, M) output act(z)
    z: np.ndarray | None   # (N, M) pre-activation, kept only when act' needs it
    act: int
    alpha: float


def linear_act(x, weight, bias=None, act="identity", alpha=None, *, out=None, z_out=None):
    """y = act(x @ weight + bias) in one fused pass. Returns (y, saved)."""
    V.float_array(x, "x", ndim=2)
    V.float_array(weight, "weight", ndim=2, dtype=x.dtype)
    n, d = x.shape
    if weight.shape[0] != d:
        raise ValueError(f"weight must have shape ({d}, *) to match x of shape {x.shape}, got {weight.shape}")
    m = weight.shape[1]
    if bias is not None:
        V.float_array(bias, "bias", ndim=1, dtype=x.dtype)
        V.shape_is(bias, "bias", (m,))
    code, a = activation_code(act, alpha)
    y = _out(out, "out", (n, m), x.dtype)
    z = _out(z_out, "z_out", (n, m), x.dtype) if ACTIVATIONS[code] in SAVES_PREACTIVATION else None
    _kernel("linear_act_forward", x)(x, weight, bias, y, z, code, a)
    return y, LinearActSaved(x, weight, y, z, code, a)


def linear_act_backward(dy, saved: LinearActSaved, *, need_dx=True, dweight=None, dbias=None,
                        need_dbias=True, dx=None, dz_work=None):
    """Gradients of linear_act. Returns (dx or None, dweight, dbias or None, dalpha or None)."""
    x, weight, y = saved.x, saved.weight, saved.y
    V.float_array(dy, "dy", ndim=2, dtype=x.dtype)
    V.shape_is(dy, "dy", y.shape)
    n, d = x.shape
    m = weight.shape[1]
    dw = _out(dweight, "dweight", (d, m), x.dtype)
    db = _out(dbias, "dbias", (m,), x.dtype) if need_dbias else None
    dxx = _out(dx, "dx", (n, d), x.dtype) if need_dx else None
    work = _out(dz_work, "dz_work", (n, m), x.dtype)
    dalpha = np.zeros(1, x.dtype) if ACTIVATIONS[saved.act] == "prelu" else None
    _kernel("linear_act_backward", dy)(dy, x, weight, y, saved.z, work, dxx, dw, db, dalpha,
                                       saved.act, saved.alpha)
    return dxx, dw, db, (float(dalpha[0]) if dalpha is not None else None)


# --- elementwise activations ----------------------------------------------------

def activation(x, act, alpha=None, *, out=None):
    """y = act(x), elementwise, any shape."""
    V.float_array(x, "x")
    code, a = activation_code(act, alpha)
    y = _out(out, "out", x.shape, x.dtype)
    _kernel("act_forward", x)(x, y, code, a)
    return y


def activation_backward(dy, x, y, act, alpha=None, *, out=None):
    """dx = dy * act'(x) given forward's x and y. Returns (dx, dalpha or None)."""
    V.float_array(dy, "dy", dtype=x.dtype)
    V.shape_is(dy, "dy", x.shape)
    code, a = activation_code(act, alpha)
    dx = _out(out, "out", x.shape, x.dtype)
    dalpha = np.zeros(1, x.dtype) if ACTIVATIONS[code] == "prelu" else None
    _kernel("act_backward", dy)(dy, x, y, dx, dalpha, code, a)
    return dx, (float(dalpha[0]) if dalpha is not None else None)


# --- softmax cross-entropy ------------------------------------------------------

class SoftmaxXentSaved(NamedTuple):
    probs: np.ndarray    # (N, C) softmax of the scores
    labels: np.ndarray   # (N,) int64


def softmax_cross_entropy(scores, labels, *, probs_out=None):
    """Mean over the batch of -log softmax(scores)[label]. Returns (loss, saved)."""
    V.float_array(scores, "scores", ndim=2)
    n, c = scores.shape
    if c < 1:
        raise ValueError("scores must have at least one class column")
    lab = V.labels(labels, "labels", n, c)
    probs = _out(probs_out, "probs_out", (n, c), scores.dtype)
    loss = _kernel("softmax_xent_forward", scores)(scores, lab, probs)
    return float(loss), SoftmaxXentSaved(probs, lab)


def softmax_cross_entropy_backward(saved: SoftmaxXentSaved, dloss=1.0, *, out=None):
    """dscores = (softmax - onehot) * dloss / N."""
    n = saved.probs.shape[0]
    d = _out(out, "out", saved.probs.shape, saved.probs.dtype)
    _kernel("softmax_xent_backward", saved.probs)(saved.probs, saved.labels, d,
                                                  float(dloss) / max(n, 1))
    return d


# --- fused optimizer step -------------------------------------------------------

def optim_step(rule, param, grad, state1, state2, seg_begin, hyper):
    """One fused update of the flat buffer ``param`` (see csrc/ops/optim.h).

    seg_begin (S+1,) int64 splits param into segments; hyper (S, 10) float64 holds
    one row of codes.HYPER_FIELDS per segment."""
    if rule not in RULE_CODE:
        raise ValueError(f"rule must be one of {list(RULE_CODE)}, got {rule!r}")
    V.float_array(param, "param", ndim=1)
    V.float_array(grad, "grad", ndim=1, dtype=param.dtype)
    V.shape_is(grad, "grad", param.shape)
    _kernel("optim_step", param)(RULE_CODE[rule], param, grad, state1, state2, seg_begin, hyper)
