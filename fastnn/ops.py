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


def _xp(x):
    """The array module of x: numpy for a NumPy array (one type check, the CPU
    path's only cost), cupy for a CuPy array."""
    return np if type(x) is np.ndarray else V.array_module(x)


def _empty(like, shape, dtype):
    """An uninitialized array on the device of ``like`` (NumPy or CuPy)."""
    return _xp(like).empty(shape, dtype)


def _zeros(like, shape, dtype):
    """A zero-filled array on the device of ``like`` (NumPy or CuPy)."""
    return _xp(like).zeros(shape, dtype)


def _out(buf, name, shape, dtype, like):
    """``buf`` checked, or a fresh array on the device of ``like``."""
    if buf is None:
        return _empty(like, shape, dtype)
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
    c = _out(out, "out", (m, n), a.dtype, a)
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
    y = _out(out, "out", (n, m), x.dtype, x)
    z = _out(z_out, "z_out", (n, m), x.dtype, x) if ACTIVATIONS[code] in SAVES_PREACTIVATION else None
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
    dw = _out(dweight, "dweight", (d, m), x.dtype, x)
    db = _out(dbias, "dbias", (m,), x.dtype, x) if need_dbias else None
    dxx = _out(dx, "dx", (n, d), x.dtype, x) if need_dx else None
    work = _out(dz_work, "dz_work", (n, m), x.dtype, x)
    dalpha = _zeros(x, 1, x.dtype) if ACTIVATIONS[saved.act] == "prelu" else None
    _kernel("linear_act_backward", dy)(dy, x, weight, y, saved.z, work, dxx, dw, db, dalpha,
                                       saved.act, saved.alpha)
    return dxx, dw, db, (float(dalpha[0]) if dalpha is not None else None)


# --- elementwise activations ----------------------------------------------------

def activation(x, act, alpha=None, *, out=None):
    """y = act(x), elementwise, any shape."""
    V.float_array(x, "x")
    code, a = activation_code(act, alpha)
    y = _out(out, "out", x.shape, x.dtype, x)
    _kernel("act_forward", x)(x, y, code, a)
    return y


def activation_backward(dy, x, y, act, alpha=None, *, out=None):
    """dx = dy * act'(x) given forward's x and y. Returns (dx, dalpha or None)."""
    V.float_array(dy, "dy", dtype=x.dtype)
    V.shape_is(dy, "dy", x.shape)
    code, a = activation_code(act, alpha)
    dx = _out(out, "out", x.shape, x.dtype, x)
    dalpha = _zeros(x, 1, x.dtype) if ACTIVATIONS[code] == "prelu" else None
    _kernel("act_backward", dy)(dy, x, y, dx, dalpha, code, a)
    return dx, (float(dalpha[0]) if dalpha is not None else None)


# --- softmax cross-entropy ------------------------------------------------------

def softmax(scores):
    """Row-wise softmax of scores (N, C), computed in float64 by the
    softmax-cross-entropy kernel (csrc/ops/softmax.h: the row maximum is
    subtracted before exp), the one softmax of the package. Returns (N, C)
    float64 probabilities."""
    s = _xp(scores).ascontiguousarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {tuple(s.shape)}")
    if s.shape[1] < 1:
        raise ValueError("scores must have at least one class column")
    probs = _empty(s, s.shape, s.dtype)
    _kernel("softmax_xent_forward", s)(s, None, None, probs)
    return probs


class SoftmaxXentSaved(NamedTuple):
    probs: np.ndarray            # (N, C) softmax of the scores
    labels: np.ndarray | None    # (N,) int64 hard labels, or None
    targets: np.ndarray | None   # (N, C) soft targets (scores' dtype), or None


def _dtype_kind(v) -> str:
    """The dtype kind of an array (NumPy or CuPy) or of what np.asarray makes of anything else."""
    return v.dtype.kind if hasattr(v, "dtype") else np.asarray(v).dtype.kind


def _xent_scores(scores, probs_out):
    """(N, C, probs): the checked (N, C) scores' shape and the softmax buffer
    (``probs_out`` checked, or a fresh array on the scores' device)."""
    V.float_array(scores, "scores", ndim=2)
    n, c = scores.shape
    if c < 1:
        raise ValueError("scores must have at least one class column")
    return n, c, _out(probs_out, "probs_out", (n, c), scores.dtype, scores)


def softmax_cross_entropy(scores, labels, *, probs_out=None):
    """Mean over the batch of the cross-entropy of softmax(scores), fused
    (stable log-sum-exp). Returns (loss, saved).

    scores: (N, C) float32/float64. labels: (N,) int class labels, giving
    -(1/N) sum_i log softmax(s_i)[y_i]; or (N, C) float soft targets t (rows
    are distributions: one-hot, Mixup, label smoothing), giving
    -(1/N) sum_i sum_k t_ik log softmax(s_i)_k (classes with t_ik = 0 add 0)."""
    n, c, probs = _xent_scores(scores, probs_out)
    if getattr(labels, "ndim", 1) == 2 and _dtype_kind(labels) == "f":
        targets = _xp(scores).ascontiguousarray(labels, dtype=scores.dtype)
        V.shape_is(targets, "labels", (n, c))
        V.finite(targets, "labels")
        loss = _kernel("softmax_xent_forward", scores)(scores, None, targets, probs)
        return float(loss), SoftmaxXentSaved(probs, None, targets)
    # On the GPU the kernel checks the label range itself (a device flag read back
    # with the loss, the same ValueError): a host-side min/max would cost two more
    # synchronizations per step.
    lab = V.labels(labels, "labels", n, c if isinstance(scores, np.ndarray) else None)
    loss = _kernel("softmax_xent_forward", scores)(scores, lab, None, probs)
    return float(loss), SoftmaxXentSaved(probs, lab, None)


def _softmax_cross_entropy_on_device(scores, labels, result):
    """softmax_cross_entropy for CuPy scores and hard int64 labels with the loss
    left on the GPU (no synchronization): ``result`` (a CuPy int64 (2,) array)
    receives the mean loss's float64 bits and the first row whose label is outside
    [0, C) (or -1); ``_softmax_cross_entropy_result`` reads them. For the
    Trainer's step, which reads them with the gradient norm in one transfer.
    Returns the saved tuple for the backward."""
    n, _, probs = _xent_scores(scores, None)
    lab = V.labels(labels, "labels", n, None)
    registry.lookup("softmax_xent_forward_device", "cuda")(scores, lab, probs, result)
    return SoftmaxXentSaved(probs, lab, None)


def _softmax_cross_entropy_result(words, saved: SoftmaxXentSaved) -> float:
    """The loss from the two int64 words ``_softmax_cross_entropy_on_device`` wrote
    (read to the host), rounded to the scores' dtype as softmax_cross_entropy's is;
    the ValueError softmax_cross_entropy raises when a label was out of range."""
    words = np.asarray(words, np.int64)
    row = int(words[1])
    if row != -1:
        c = saved.probs.shape[1]
        label = int(saved.labels[row])
        raise ValueError(f"labels must be in [0, {c}), got labels[{row}] = {label}")
    return float(saved.probs.dtype.type(words[:1].view(np.float64)[0]))


def softmax_cross_entropy_backward(saved: SoftmaxXentSaved, dloss=1.0, *, out=None):
    """dscores = (softmax - onehot(labels) or targets) * dloss / N, (N, C)."""
    n = saved.probs.shape[0]
    d = _out(out, "out", saved.probs.shape, saved.probs.dtype, saved.probs)
    _kernel("softmax_xent_backward", saved.probs)(saved.probs, saved.labels, saved.targets, d,
                                                  float(dloss) / max(n, 1))
    return d


# --- fused optimizer step -------------------------------------------------------

def optim_step(rule, param, grad, state1, state2, seg_begin, hyper):
    """One fused update of the flat buffer ``param`` (see csrc/ops/optim.h).

    seg_begin (S+1,) int64 splits param into segments; hyper (S, len(HYPER_FIELDS))
    float64 holds one row of codes.HYPER_FIELDS per segment (lr ... grad_scale)."""
    if rule not in RULE_CODE:
        raise ValueError(f"rule must be one of {list(RULE_CODE)}, got {rule!r}")
    V.float_array(param, "param", ndim=1)
    V.float_array(grad, "grad", ndim=1, dtype=param.dtype)
    V.shape_is(grad, "grad", param.shape)
    _kernel("optim_step", param)(RULE_CODE[rule], param, grad, state1, state2, seg_begin, hyper)


# --- batch normalization -------------------------------------------------------

class BatchNormSaved(NamedTuple):
    """What batchnorm's forward keeps for backward."""
    x: np.ndarray          # (N, C, *) input
    y: np.ndarray          # (N, C, *) output (read by backward when an activation is fused)
    mean: np.ndarray       # (2, C) mean used, as hi + lo rows: batch (train) or running (eval)
    invstd: np.ndarray     # (C,) 1 / sqrt(var + eps)
    training: bool
    act: int
    alpha: float


def batchnorm(x, gamma, beta, running_mean, running_var, training=True, momentum=0.1, eps=1e-5,
              act="identity", alpha=None, *, out=None):
    """Batch normalization over ``(N, C)`` or ``(N, C, *spatial)``, statistics per channel.

    Train: batch statistics (biased variance to normalize) and running statistics
    updated in place (unbiased variance, PyTorch's rule); eval: running statistics.
    An activation whose derivative reads its output may be fused (act=).
    Returns (y, saved)."""
    V.float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            V.float_array(v, name, ndim=1, dtype=x.dtype)
            V.shape_is(v, name, (c,))
    momentum = V.real(momentum, "momentum", low=0.0, high=1.0)
    eps = V.real(eps, "eps", low=0.0, low_open=True)
    code, a = activation_code(act, alpha)
    if ACTIVATIONS[code] in SAVES_PREACTIVATION:
        raise ValueError(f"act {ACTIVATIONS[code]!r} cannot be fused into batchnorm (its derivative needs the input)")
    if training:
        per_channel = x.shape[0] * (x.size // max(1, x.shape[0] * c))
        if per_channel < 2:
            raise ValueError(f"x: expected more than 1 value per channel when training, got input of shape {x.shape}")
    elif running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required in eval mode")
    y = _out(out, "out", x.shape, x.dtype, x)
    mean = _empty(x, (2, c), x.dtype)
    invstd = _empty(x, c, x.dtype)
    _kernel("batchnorm_forward", x)(x, gamma, beta, running_mean, running_var, mean, invstd, y, bool(training),
                                    momentum, eps, code, a)
    return y, BatchNormSaved(x, y, mean, invstd, bool(training), code, a)


def batchnorm_backward(dy, saved: BatchNormSaved, gamma=None, *, need_dx=True, dgamma=None, dbeta=None,
                       out=None):
    """Returns (dx or None, dgamma, dbeta) by the fused two-reduction formula."""
    x = saved.x
    V.float_array(dy, "dy", dtype=x.dtype)
    V.shape_is(dy, "dy", x.shape)
    c = x.shape[1]
    dg = _out(dgamma, "dgamma", (c,), x.dtype, x)
    db = _out(dbeta, "dbeta", (c,), x.dtype, x)
    dx = _out(out, "out", x.shape, x.dtype, x) if need_dx else None
    _kernel("batchnorm_backward", dy)(dy, x, saved.y, gamma, saved.mean, saved.invstd, dx, dg, db,
                                      saved.training, saved.act, saved.alpha)
    return dx, dg, db


# The batchnorm kernels split at their reductions (synchronized BatchNorm allreduces
# the float64 sums in each gap, as PyTorch's SyncBatchNorm): forward =
# batchnorm_stats -> batchnorm_gather_stats -> batchnorm_elemt, backward =
# batchnorm_backward_reduce -> batchnorm_backward_elemt.

def _is_array_like(v, like) -> bool:
    """Whether v is an array of the kind of ``like``: NumPy for NumPy, CuPy for CuPy."""
    if type(like) is np.ndarray or isinstance(like, np.ndarray):
        return isinstance(v, np.ndarray)
    return type(v).__module__.startswith("cupy") and hasattr(v, "__cuda_array_interface__")


def _kind_name(like) -> str:
    return "numpy.ndarray" if isinstance(like, np.ndarray) else "cupy.ndarray (on the GPU, as the other inputs)"


def _check_f64(v, name, like) -> None:
    """TypeError unless v is a float64 array on the device of ``like``."""
    if not _is_array_like(v, like) or v.dtype != np.float64:
        raise TypeError(f"{name} must be a float64 {_kind_name(like)}, got "
                        f"{getattr(v, 'dtype', '')} {type(v).__module__}.{type(v).__name__}")


def _f64_out(buf, name, shape, like):
    """The float64 sums buffer ``buf`` checked, or a fresh one on the device of ``like``."""
    if buf is None:
        return _empty(like, shape, np.float64)
    _check_f64(buf, name, like)
    V.shape_is(buf, name, shape)
    if not buf.flags.c_contiguous or not getattr(buf.flags, "writeable", True):
        raise ValueError(f"{name} must be C-contiguous and writable")
    return buf


def _f64_in(v, name, c, like):
    _check_f64(v, name, like)
    V.shape_is(v, name, (c,))
    return _xp(v).ascontiguousarray(v)


def batchnorm_stats(x, shift, *, out=None):
    """Per-channel sums of ``x - shift`` and ``(x - shift)**2`` over ``(N, C, *)`` in float64.

    Returns ``out`` (2, C) float64: row 0 the sums, row 1 the sums of squares.
    ``shift`` (C,) (x's dtype) should be near the data and the same on every
    rank whose sums are added; N may be 0 (all zeros)."""
    V.float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    V.float_array(shift, "shift", ndim=1, dtype=x.dtype)
    V.shape_is(shift, "shift", (c,))
    sums = _f64_out(out, "out", (2, c), x)
    _kernel("batchnorm_stats", x)(x, shift, sums[0], sums[1])
    return sums


def batchnorm_gather_stats(sums, count, shift, running_mean=None, running_var=None, momentum=0.1, eps=1e-5):
    """Mean and invstd from the (2, C) float64 ``sums`` of ``batchnorm_stats`` over
    ``count`` values per channel (added over ranks): returns ``(mean (2, C) as hi + lo
    rows, invstd (C,))`` in shift's dtype, the variance biased; running_mean and
    running_var, when given, move by ``momentum`` (running_var unbiased, count/(count-1))."""
    V.float_array(shift, "shift", ndim=1)
    c = shift.shape[0]
    _check_f64(sums, "sums", shift)
    V.shape_is(sums, "sums", (2, c))
    count = V.real(count, "count")
    if not count > 1:
        raise ValueError(f"count: expected more than 1 value per channel over all ranks when training, got {count:g}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        if v is not None:
            V.float_array(v, name, ndim=1, dtype=shift.dtype)
            V.shape_is(v, name, (c,))
    momentum = V.real(momentum, "momentum", low=0.0, high=1.0)
    eps = V.real(eps, "eps", low=0.0, low_open=True)
    mean = _empty(shift, (2, c), shift.dtype)
    invstd = _empty(shift, c, shift.dtype)
    sums = _xp(sums).ascontiguousarray(sums)
    _kernel("batchnorm_gather_stats", shift)(sums[0], sums[1], count, shift, running_mean, running_var, mean,
                                             invstd, momentum, eps)
    return mean, invstd


def batchnorm_elemt(x, gamma, beta, mean, invstd, act="identity", alpha=None, *, out=None):
    """``y = act(((x - mean[0]) - mean[1]) * invstd * gamma + beta)`` with given statistics
    (``batchnorm_gather_stats``'s). Returns (y, saved) as ``batchnorm`` in training mode."""
    V.float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must be (N, C) or (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    for name, v in (("gamma", gamma), ("beta", beta), ("invstd", invstd)):
        if v is not None:
            V.float_array(v, name, ndim=1, dtype=x.dtype)
            V.shape_is(v, name, (c,))
    if invstd is None:
        raise ValueError("invstd must be an array of shape (C,), got None")
    V.float_array(mean, "mean", ndim=2, dtype=x.dtype)
    V.shape_is(mean, "mean", (2, c))
    code, a = activation_code(act, alpha)
    if ACTIVATIONS[code] in SAVES_PREACTIVATION:
        raise ValueError(f"act {ACTIVATIONS[code]!r} cannot be fused into batchnorm (its derivative needs the input)")
    y = _out(out, "out", x.shape, x.dtype, x)
    _kernel("batchnorm_elemt", x)(x, gamma, beta, mean, invstd, y, code, a)
    return y, BatchNormSaved(x, y, mean, invstd, True, code, a)


def batchnorm_backward_reduce(dy, saved: BatchNormSaved, *, dgamma=None, dbeta=None, out=None):
    """Per-channel float64 ``sum(dz)`` and ``sum(dz * xhat)``, dz = dy * act'(y): returns
    ``out`` (2, C) with those rows. dgamma and dbeta, when given, receive them in x's dtype."""
    x = saved.x
    V.float_array(dy, "dy", dtype=x.dtype)
    V.shape_is(dy, "dy", x.shape)
    c = x.shape[1]
    for name, v in (("dgamma", dgamma), ("dbeta", dbeta)):
        if v is not None:
            _out(v, name, (c,), x.dtype, x)
    sums = _f64_out(out, "out", (2, c), x)
    _kernel("batchnorm_backward_reduce", dy)(dy, x, saved.y, saved.mean, saved.invstd, sums[0], sums[1], dgamma,
                                             dbeta, saved.act, saved.alpha)
    return sums


def batchnorm_backward_elemt(dy, saved: BatchNormSaved, gamma, mean_dz, mean_dz_xhat, *, out=None):
    """``dx = gamma * invstd * (dz - mean_dz - xhat * mean_dz_xhat)`` with the given (C,)
    float64 channel means of dz and dz * xhat (the global sums over the global count);
    both None: the eval form ``gamma * invstd * dz``."""
    x = saved.x
    V.float_array(dy, "dy", dtype=x.dtype)
    V.shape_is(dy, "dy", x.shape)
    c = x.shape[1]
    if gamma is not None:
        V.float_array(gamma, "gamma", ndim=1, dtype=x.dtype)
        V.shape_is(gamma, "gamma", (c,))
    if (mean_dz is None) != (mean_dz_xhat is None):
        raise ValueError("mean_dz and mean_dz_xhat must both be given (training) or both be None (eval)")
    if mean_dz is not None:
        mean_dz, mean_dz_xhat = _f64_in(mean_dz, "mean_dz", c, x), _f64_in(mean_dz_xhat, "mean_dz_xhat", c, x)
    dx = _out(out, "out", x.shape, x.dtype, x)
    _kernel("batchnorm_backward_elemt", dy)(dy, x, saved.y, gamma, saved.mean, saved.invstd, mean_dz, mean_dz_xhat,
                                            dx, saved.act, saved.alpha)
    return dx


# --- dropout ---------------------------------------------------------------------

def dropout_threshold(p) -> tuple[int, float]:
    """(threshold, scale) of dropout with drop probability p: an element is kept
    iff its Philox word < threshold = floor((1 - p) * 2**32); kept values are
    scaled by 1 / (1 - p) (csrc/ops/dropout.h)."""
    p = V.real(p, "p", low=0.0, high=1.0, high_open=True)
    keep = 1.0 - p
    return min(2**32, int(np.floor(keep * 2.0**32))), 1.0 / keep


def _seed_offset(seed, offset):
    return V.uint64(seed, "seed"), V.uint64(offset, "offset")


def dropout(x, p, seed, offset=0, *, out=None):
    """Inverted dropout: zero each element with probability p, scale the rest by
    1/(1-p). Element i uses Philox4x32-10(seed, offset + i): the same (seed,
    offset) gives the same mask on every backend, and backward regenerates it."""
    V.float_array(x, "x")
    threshold, scale = dropout_threshold(p)
    seed, offset = _seed_offset(seed, offset)
    y = _out(out, "out", x.shape, x.dtype, x)
    _kernel("dropout", x)(x, y, seed, offset, threshold, scale)
    return y


def dropout_backward(dy, p, seed, offset=0, *, out=None):
    """dx = dy * mask / (1 - p), the mask regenerated from (seed, offset)."""
    V.float_array(dy, "dy")
    threshold, scale = dropout_threshold(p)
    seed, offset = _seed_offset(seed, offset)
    dx = _out(out, "out", dy.shape, dy.dtype, dy)
    _kernel("dropout", dy)(dy, dx, seed, offset, threshold, scale)
    return dx


def max_norm(param, offset, rows, cols, limit):
    """Rescale every column of the (rows[k], cols[k]) matrices stored in the flat
    buffer ``param`` at offset[k] to L2 norm <= limit[k] (in place)."""
    V.float_array(param, "param", ndim=1)
    arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in (offset, rows, cols)]
    lim = np.ascontiguousarray(limit, dtype=np.float64)
    # Checked here, not only in _C, so every backend refuses the same input.
    for name, a in zip(("offset", "rows", "cols", "max_norm"), arrays + [lim]):
        if a.ndim != 1 or a.shape != arrays[0].shape:
            raise ValueError(f"{name} must be 1-D with one entry per matrix ({arrays[0].shape}), got {a.shape}")
    off, r, c = arrays
    outside = (off < 0) | (r < 0) | (c < 0) | (off + r * c > param.shape[0])
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise ValueError(f"matrix {k} (offset, rows, cols) lies outside param")
    if not (lim > 0).all() or not np.isfinite(lim).all():
        raise ValueError(f"max_norm must be > 0 and finite, got {lim}")
    _kernel("max_norm", param)(param, *arrays, lim)


# --- 2-D convolution -------------------------------------------------------------
# Shapes: x (N, C, H, W), weight (F, C, KH, KW), bias (F,), y (N, F, OH, OW) with
# OH = (H + 2*PH - KH) // SH + 1 and OW likewise (cross-correlation, NCHW).

def conv_output_size(h, w, kernel, stride, padding):
    """(OH, OW) of a convolution or pooling window over an (h, w) input."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


class Conv2dSaved(NamedTuple):
    """What conv2d's forward keeps for backward (the im2col columns are rebuilt
    in backward, not stored)."""
    x: np.ndarray          # (N, C, H, W) input
    weight: np.ndarray     # (F, C, KH, KW)
    y: np.ndarray          # (N, F, OH, OW) output act(z)
    z: np.ndarray | None   # (N, F, OH, OW) pre-activation, kept only when act' needs it
    stride: tuple
    padding: tuple
    act: int
    alpha: float


def conv2d(x, weight, bias=None, stride=1, padding=0, act="identity", alpha=None, *, out=None, z_out=None):
    """y = act(conv(x, weight) + bias): im2col + GEMM with the bias and activation
    in the GEMM epilogue. stride and padding are ints or (h, w) pairs.
    Returns (y, saved)."""
    V.float_array(x, "x", ndim=4)
    V.float_array(weight, "weight", ndim=4, dtype=x.dtype)
    n, c, h, w = x.shape
    f, wc, kh, kw = weight.shape
    if wc != c:
        raise ValueError(f"weight must have shape (F, {c}, KH, KW) to match the {c} channels of x "
                         f"(shape {x.shape}), got {weight.shape}")
    if min(f, c, kh, kw) < 1:
        raise ValueError(f"weight must have a nonzero shape, got {weight.shape}")
    sh, sw = V.pair(stride, "stride", 1)
    ph, pw = V.pair(padding, "padding", 0)
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"kernel ({kh}, {kw}) is larger than the padded input ({h + 2 * ph}, {w + 2 * pw}) "
                         f"of x with shape {x.shape} and padding ({ph}, {pw})")
    if bias is not None:
        V.float_array(bias, "bias", ndim=1, dtype=x.dtype)
        V.shape_is(bias, "bias", (f,))
    code, a = activation_code(act, alpha)
    oh, ow = conv_output_size(h, w, (kh, kw), (sh, sw), (ph, pw))
    y = _out(out, "out", (n, f, oh, ow), x.dtype, x)
    z = _out(z_out, "z_out", (n, f, oh, ow), x.dtype, x) if ACTIVATIONS[code] in SAVES_PREACTIVATION else None
    _kernel("conv2d_forward", x)(x, weight, bias, y, z, sh, sw, ph, pw, code, a)
    return y, Conv2dSaved(x, weight, y, z, (sh, sw), (ph, pw), code, a)


def conv2d_backward(dy, saved: Conv2dSaved, need_dx=True, *, dweight=None, dbias=None, need_dbias=True, dx=None,
                    dz_work=None):
    """Gradients of conv2d: dz = dy * act'(.), dbias = dz summed over N, OH, OW,
    dweight = sum_n dz_n @ im2col(x_n)^T, dx = col2im(weight^T @ dz_n).
    Returns (dx or None, dweight, dbias or None, dalpha or None)."""
    x, weight, y = saved.x, saved.weight, saved.y
    V.float_array(dy, "dy", ndim=4, dtype=x.dtype)
    V.shape_is(dy, "dy", y.shape)
    dw = _out(dweight, "dweight", weight.shape, x.dtype, x)
    db = _out(dbias, "dbias", (weight.shape[0],), x.dtype, x) if need_dbias else None
    dxx = _out(dx, "dx", x.shape, x.dtype, x) if need_dx else None
    work = _out(dz_work, "dz_work", y.shape, x.dtype, x)
    dalpha = _zeros(x, 1, x.dtype) if ACTIVATIONS[saved.act] == "prelu" else None
    (sh, sw), (ph, pw) = saved.stride, saved.padding
    _kernel("conv2d_backward", dy)(dy, x, weight, y, saved.z, work, dxx, dw, db, dalpha, sh, sw, ph, pw,
                                   saved.act, saved.alpha)
    return dxx, dw, db, (float(dalpha[0]) if dalpha is not None else None)


# --- pooling ---------------------------------------------------------------------
# Shapes: x (N, C, H, W), y (N, C, OH, OW), OH = (H + 2*PH - KH) // SH + 1 (OW
# likewise, PyTorch's floor rule). A window never reads padding (csrc/ops/pool.h):
# max pooling pads with -inf, average pooling with zeros that count_include_pad
# counts in the divisor (True, PyTorch's default) or not. Max pooling keeps the
# in-plane position of each window's maximum (the first in row-major window
# order on ties, as PyTorch; a NaN wins), so backward routes dy to exactly that
# input element; overlapping windows add up.

class MaxPoolSaved(NamedTuple):
    """What max pooling's forward keeps for backward."""
    x_shape: tuple         # (N, C, H, W)
    index: np.ndarray      # (N, C, OH, OW) int32: in-plane position ih * W + iw of each maximum


def _pool_geometry(x, kernel_size, stride, padding):
    """((kh, kw), (sh, sw), (ph, pw), (oh, ow)) of a pooling window over x (N, C, H, W), checked:
    stride defaults to the window; padding at most half the window (PyTorch's rule, so
    no window lies wholly in the padding); the window no larger than the padded input."""
    kh, kw = V.pair(kernel_size, "kernel_size", 1)
    sh, sw = V.pair((kh, kw) if stride is None else stride, "stride", 1)
    ph, pw = V.pair(padding, "padding", 0)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding must be at most half of kernel_size ({kh}, {kw}), got ({ph}, {pw})")
    h, w = x.shape[2:]
    if kh > h + 2 * ph or kw > w + 2 * pw:
        padded = f" padded by ({ph}, {pw})" if ph or pw else ""
        raise ValueError(f"kernel_size ({kh}, {kw}) is larger than the input ({h}, {w}){padded} of x with "
                         f"shape {x.shape}")
    return (kh, kw), (sh, sw), (ph, pw), conv_output_size(h, w, (kh, kw), (sh, sw), (ph, pw))


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling over (kh, kw) windows (an int: square), stride defaulting to the
    window, padding (never a window's maximum). Returns (y, saved)."""
    V.float_array(x, "x", ndim=4)
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _pool_geometry(x, kernel_size, stride, padding)
    n, c = x.shape[:2]
    y = _empty(x, (n, c, oh, ow), x.dtype)
    index = _empty(x, (n, c, oh, ow), np.int32)
    _kernel("max_pool2d_forward", x)(x, y, index, kh, kw, sh, sw, ph, pw)
    return y, MaxPoolSaved(x.shape, index)


def _host(v):
    """v as a host (NumPy) value: a CuPy array is copied to the host (small
    index vectors checked there), anything else passes unchanged."""
    return v.get() if type(v).__module__.startswith("cupy") else v


def _region_bounds(bounds, n_in, n_out, name):
    b = np.ascontiguousarray(bounds, dtype=np.int64)
    if b.shape != (n_out + 1,):
        raise ValueError(f"{name} must have shape ({n_out + 1},) (region boundaries), got {b.shape}")
    if b[0] != 0 or b[-1] != n_in or (n_out and not (np.diff(b) >= 1).all()):
        raise ValueError(f"{name} must increase strictly from 0 to {n_in}, got {b.tolist()}")
    return b


def _region_bounds_on(bounds, like):
    """(begin, end) of checked host boundaries on the device of ``like``: NumPy
    views for NumPy, CuPy int64 copies for CuPy (the kernel reads them there)."""
    if type(like) is np.ndarray:
        return bounds[:-1], bounds[1:]
    xp = V.array_module(like)
    return xp.asarray(bounds[:-1]), xp.asarray(bounds[1:])


def max_pool_regions(x, row_bounds, col_bounds):
    """Max over the disjoint regions rows [row_bounds[i], row_bounds[i+1]) x columns
    [col_bounds[j], col_bounds[j+1]) of each (H, W) plane of x (fractional max
    pooling's grid): row_bounds (OH + 1,) and col_bounds (OW + 1,) int, strictly
    increasing from 0 to H (W). Returns (y (N, C, OH, OW), saved)."""
    V.float_array(x, "x", ndim=4)
    n, c, h, w = x.shape
    rows = _region_bounds(_host(row_bounds), h, len(row_bounds) - 1, "row_bounds")
    cols = _region_bounds(_host(col_bounds), w, len(col_bounds) - 1, "col_bounds")
    oh, ow = len(rows) - 1, len(cols) - 1
    y = _empty(x, (n, c, oh, ow), x.dtype)
    index = _empty(x, (n, c, oh, ow), np.int32)
    _kernel("max_pool2d_regions_forward", x)(x, y, index, *_region_bounds_on(rows, x), *_region_bounds_on(cols, x))
    return y, MaxPoolSaved(x.shape, index)


def max_pool2d_backward(dy, saved: MaxPoolSaved):
    """dx: each dy element added to the input element that was its window's max."""
    V.float_array(dy, "dy", ndim=4, contiguous=False)
    V.shape_is(dy, "dy", saved.index.shape)
    dx = _empty(dy, saved.x_shape, dy.dtype)
    _kernel("max_pool2d_backward", dy)(_xp(dy).ascontiguousarray(dy), saved.index, dx)
    return dx


class AvgPoolSaved(NamedTuple):
    """What average pooling's forward keeps for backward: the geometry only."""
    x_shape: tuple         # (N, C, H, W)
    kernel_size: tuple     # (kh, kw)
    stride: tuple          # (sh, sw)
    padding: tuple         # (ph, pw)
    count_include_pad: bool


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Average pooling over (kh, kw) windows, stride defaulting to the window, zero
    padding counted in the divisor kh*kw (count_include_pad=True) or not (the
    divisor is then the number of input elements in the window). Returns (y, saved)."""
    V.float_array(x, "x", ndim=4)
    if not isinstance(count_include_pad, (bool, np.bool_)):
        raise TypeError(f"count_include_pad must be a bool, got {type(count_include_pad).__name__}")
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = _pool_geometry(x, kernel_size, stride, padding)
    n, c = x.shape[:2]
    y = _empty(x, (n, c, oh, ow), x.dtype)
    _kernel("avg_pool2d_forward", x)(x, y, kh, kw, sh, sw, ph, pw, bool(count_include_pad))
    return y, AvgPoolSaved(x.shape, (kh, kw), (sh, sw), (ph, pw), bool(count_include_pad))


def avg_pool2d_backward(dy, saved: AvgPoolSaved):
    """dx: each dy element spread evenly (dy / divisor) over the inputs of its window."""
    (kh, kw), (sh, sw), (ph, pw) = saved.kernel_size, saved.stride, saved.padding
    n, c, h, w = saved.x_shape
    V.float_array(dy, "dy", ndim=4, contiguous=False)
    V.shape_is(dy, "dy", (n, c) + conv_output_size(h, w, (kh, kw), (sh, sw), (ph, pw)))
    dx = _empty(dy, saved.x_shape, dy.dtype)
    _kernel("avg_pool2d_backward", dy)(_xp(dy).ascontiguousarray(dy), dx, kh, kw, sh, sw, ph, pw,
                                       saved.count_include_pad)
    return dx


def global_avg_pool2d(x):
    """(N, C, H, W) -> (N, C): the mean of each channel plane (Lin et al. 2013)."""
    V.float_array(x, "x", ndim=4)
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"x must have a non-empty (H, W) plane, got shape {x.shape}")
    y = _empty(x, x.shape[:2], x.dtype)
    _kernel("global_avg_pool2d_forward", x)(x, y)
    return y


def global_avg_pool2d_backward(dy, x_shape):
    """dx (x_shape) with dx[n, c, :, :] = dy[n, c] / (H*W)."""
    x_shape = tuple(int(d) for d in x_shape)
    V.float_array(dy, "dy", ndim=2, contiguous=False)
    V.shape_is(dy, "dy", x_shape[:2])
    dx = _empty(dy, x_shape, dy.dtype)
    _kernel("global_avg_pool2d_backward", dy)(_xp(dy).ascontiguousarray(dy), dx)
    return dx


def fractional_pool_bounds(n_in, n_out, u):
    """Graham (2014) pseudo-random disjoint pooling intervals as boundaries
    a (n_out + 1,) int64: a_i = ceil(alpha (i + u)) - ceil(alpha u), a_{n_out} = n_in,
    alpha = n_in / n_out, u in [0, 1); interval i is [a_i, a_{i+1})."""
    alpha = n_in / n_out
    i = np.arange(n_out + 1, dtype=np.float64)
    a = np.ceil(alpha * (i + u)) - np.ceil(alpha * u)
    a = a.astype(np.int64)
    a[-1] = n_in
    return np.minimum(a, n_in)


def fractional_pool_sequence(n_in, n_out, u):
    """Graham (2014) pseudo-random disjoint pooling intervals: boundaries
    a_i = ceil(alpha (i + u)) - ceil(alpha u), a_{n_out} = n_in, alpha = n_in / n_out,
    u in [0, 1) (fractional_pool_bounds). Returns (n_out, K) int64 coordinates, each
    interval [a_i, a_{i+1}) padded to the longest length K by repeating its last
    coordinate (the form the ONNX export gathers with)."""
    a = fractional_pool_bounds(n_in, n_out, u)
    lengths = np.diff(a)
    k = int(lengths.max())
    t = np.arange(k)[None, :]
    return a[:-1, None] + np.minimum(t, lengths[:, None] - 1)
