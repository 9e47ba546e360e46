"""Property-based tests (hypothesis) of every public op and layer.

Each property draws shapes (size 1 and empty batches included), a dtype
(float32/float64), a memory layout per array argument and a kind of values, and
runs the op on the backend selected by the ``backend`` fixture (every C++ code
path and Numba), checking it against a float64 NumPy reference:

- layouts: contiguous, misaligned (a C-contiguous view one element into a larger
  buffer, so not 64-byte aligned), strided (every other element) and Fortran
  order. A non-C-contiguous array must be refused with a ValueError naming the
  argument; a misaligned one must work.
- values: normal, tiny (subnormals), huge (1e30 scale) and special (NaN, +-inf,
  signed zeros and subnormals mixed into normal values). Where the reference is
  NaN the result must be NaN, where it is +-inf the same infinity, elsewhere
  close. Activations at +-inf are compared with their limits (gelu(-inf) = 0).
- empty batches: every op returns an empty result (and zero weight gradients)
  except batchnorm in training mode, which raises a ValueError naming x.

Both backends are compared with the same reference, so they agree with each
other; dropout masks are also compared bit for bit across backends. Examples are
derandomized (the "ci" profile in conftest.py) so a failure reproduces.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastnn as fnn
import oracle
from fastnn import ops
from fastnn.backend.codes import ACTIVATIONS
from test_dropout import philox_py

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FEW, SOME = 40, 80   # examples per property per backend: the file runs in well under 90 s per backend

DTYPES = st.sampled_from([np.float32, np.float64])
LAYOUTS = st.sampled_from(["contiguous", "misaligned", "strided", "fortran"])
KINDS = st.sampled_from(["normal", "tiny", "huge", "special"])
SEEDS = st.integers(0, 2**32 - 1)
ACTS = st.sampled_from(ACTIVATIONS)
# float32 results against a float64 reference: a few ulps of the inputs' scale.
RTOL = {np.float32: 2e-5, np.float64: 1e-12}


# --- inputs -------------------------------------------------------------------------

def values(rng, shape, kind, dtype):
    """Random values of one kind, in float64 (cast by the caller)."""
    x = rng.standard_normal(shape) * 2.0
    if kind == "tiny":
        x *= float(np.finfo(dtype).tiny)            # subnormals and the smallest normals
    elif kind == "huge":
        x *= 1e30
    elif kind == "special":
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, float(np.finfo(dtype).tiny) / 8, 1e30])
        pick = rng.random(shape) < 0.25
        x = np.where(pick, specials[rng.integers(0, len(specials), shape)], x)
    return x


def place(a, layout):
    """A copy of a (values equal) in the given memory layout."""
    a = np.asarray(a)
    if layout == "misaligned":
        buf = np.empty(a.size + 1, a.dtype)
        v = buf[1:].reshape(a.shape)
    elif layout == "strided":
        v = np.empty(a.shape + (2,), a.dtype)[..., 0]
    elif layout == "fortran":
        v = np.empty(a.shape, a.dtype, order="F")
    else:
        v = np.empty(a.shape, a.dtype)
    v[...] = a
    return v


def first_not_contiguous(**arrays):
    """The name of the first array (in the op's checking order) that is not C-contiguous."""
    for name, a in arrays.items():
        if a is not None and not a.flags.c_contiguous:
            return name
    return None


@contextlib.contextmanager
def refused_if_not_contiguous(**arrays):
    """Expect a ValueError naming the first non-C-contiguous argument, if any;
    yields True when the op is expected to run."""
    bad = first_not_contiguous(**arrays)
    if bad is None:
        yield True
    else:
        with pytest.raises(ValueError, match=f"{bad} must be C-contiguous"):
            yield False


# --- comparison ---------------------------------------------------------------------

def cast(ref, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(ref, np.float64).astype(dtype)


def assert_matches(got, ref, dtype, bound=None, rtol=None, what="result"):
    """got (dtype) against ref (float64): NaN where ref is NaN, the same infinity
    where ref rounds to +-inf, and |got - ref| <= bound elsewhere (default
    rtol * |ref| + a few smallest normals)."""
    got = np.asarray(got)
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}, expected {np.dtype(dtype)}"
    ref64 = np.asarray(ref, np.float64)
    assert got.shape == ref64.shape, f"{what}: shape {got.shape}, expected {ref64.shape}"
    r = cast(ref64, dtype)
    nan = np.isnan(r)
    bad_nan = np.isnan(got) != nan
    assert not bad_nan.any(), (f"{what}: NaN mismatch at {np.argwhere(bad_nan)[:5].tolist()}: "
                               f"got {got[bad_nan][:5]}, expected {r[bad_nan][:5]}")
    inf = np.isinf(r)
    assert np.array_equal(got[inf], r[inf]), f"{what}: infinities differ: got {got[inf][:5]}, expected {r[inf][:5]}"
    fin = ~(nan | inf)
    if bound is None:
        tol = RTOL[dtype] if rtol is None else rtol
        bound = tol * np.abs(ref64) + 8 * float(np.finfo(dtype).tiny)
    bound = np.broadcast_to(bound, ref64.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got.astype(np.float64) - ref64)
    worst = np.where(fin, err - bound, -1.0)
    assert not (worst > 0).any() and np.isfinite(got[fin]).all(), (
        f"{what}: max excess {worst.max():.3g} at {np.unravel_index(np.argmax(worst), worst.shape)}: "
        f"got {got[fin][:4]}, expected {ref64[fin][:4]}")


def act_ref(name, z, alpha):
    """oracle.act with its limits at +-inf (gelu(-inf) = 0, relu(inf) = inf)."""
    z = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):
        r = oracle.act(name, np.where(np.isinf(z), np.sign(z) * 1e150, z), alpha)
        return np.where(np.isinf(z) & (np.abs(r) > 1e100), np.sign(r) * np.inf, r)


def act_grad_ref(name, z, alpha):
    z = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):
        return oracle.act_grad(name, np.where(np.isinf(z), np.sign(z) * 1e150, z), alpha)


def alpha_for(name, draw_alpha):
    if name == "leaky_relu":
        return abs(draw_alpha)
    if name == "elu":
        return abs(draw_alpha) + 0.1
    if name == "prelu":
        return draw_alpha
    return None


def product_sum(a, b):
    """a @ b in float64 with IEEE semantics for inf and NaN (no BLAS shortcuts)."""
    with np.errstate(all="ignore"):
        return (np.asarray(a, np.float64)[:, :, None] * np.asarray(b, np.float64)[None, :, :]).sum(axis=1)


# --- GEMM -----------------------------------------------------------------------------

@settings(max_examples=SOME, **SETTINGS)
@given(m=st.integers(0, 20), n=st.integers(0, 20), k=st.integers(0, 40), trans_a=st.booleans(),
       trans_b=st.booleans(), beta=st.sampled_from([0.0, 1.0]), dtype=DTYPES, la=LAYOUTS, lb=LAYOUTS,
       kind=st.sampled_from(["normal", "tiny", "special"]), seed=SEEDS)
def test_gemm(backend, m, n, k, trans_a, trans_b, beta, dtype, la, lb, kind, seed):
    rng = np.random.default_rng(seed)
    a64 = values(rng, (m, k), kind, dtype)
    b64 = rng.standard_normal((k, n))
    a = place(cast(a64.T if trans_a else a64, dtype), la)
    b = place(cast(b64.T if trans_b else b64, dtype), lb)
    # beta = 0 must overwrite out, even where it holds NaN (never 0 * NaN).
    c0 = rng.standard_normal((m, n)) if beta else np.full((m, n), np.nan)
    out = cast(c0, dtype)
    with refused_if_not_contiguous(a=a, b=b) as runs:
        c = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, out=out, beta=beta)
    if runs:
        a_, b_ = cast(a64, dtype), cast(b64, dtype)
        ref = product_sum(a_, b_) + (c0 if beta else 0.0)
        scale = product_sum(np.abs(np.nan_to_num(a_, posinf=0, neginf=0)), np.abs(b_)) + (np.abs(c0) if beta else 0)
        assert_matches(c, ref, dtype, bound=RTOL[dtype] * (4 + k) * scale + 1e-30, what="gemm")
        assert c is out


# --- linear_act -----------------------------------------------------------------------

@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 12), d=st.integers(1, 24), m=st.integers(1, 24), act=ACTS, alpha=st.floats(-0.5, 0.5),
       use_bias=st.booleans(), dtype=DTYPES, lx=LAYOUTS, lw=LAYOUTS, kind=KINDS, seed=SEEDS)
def test_linear_act_forward(backend, n, d, m, act, alpha, use_bias, dtype, lx, lw, kind, seed):
    rng = np.random.default_rng(seed)
    alpha = alpha_for(act, alpha)
    x64 = values(rng, (n, d), kind, dtype)
    w64 = rng.standard_normal((d, m)) / np.sqrt(d)
    b64 = rng.standard_normal(m) if use_bias else None
    x, w = place(cast(x64, dtype), lx), place(cast(w64, dtype), lw)
    b = cast(b64, dtype) if use_bias else None
    with refused_if_not_contiguous(x=x, weight=w) as runs:
        y, saved = ops.linear_act(x, w, b, act, alpha)
    if not runs:
        return
    a = ops.activation_code(act, alpha)[1]
    x_, w_ = cast(x64, dtype), cast(w64, dtype)
    z = product_sum(x_, w_) + (cast(b64, dtype) if use_bias else 0.0)
    ref = act_ref(act, z, a)
    # The pre-activation carries the GEMM's rounding: bound by |x| @ |w| times act's slope.
    slope = np.maximum(1.0, np.abs(np.nan_to_num(act_grad_ref(act, z, a))))
    scale = product_sum(np.abs(np.nan_to_num(x_, posinf=0, neginf=0)), np.abs(w_)) + 1.0
    assert_matches(y, ref, dtype, bound=RTOL[dtype] * (4 + d) * scale * slope + RTOL[dtype] * np.abs(
        np.nan_to_num(ref)) + 1e-30, what="y")
    assert y.shape == (n, m)


@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 12), d=st.integers(1, 16), m=st.integers(1, 16), act=ACTS, alpha=st.floats(-0.5, 0.5),
       use_bias=st.booleans(), need_dx=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_linear_act_backward(backend, n, d, m, act, alpha, use_bias, need_dx, dtype, seed):
    rng = np.random.default_rng(seed)
    alpha = alpha_for(act, alpha)
    x = cast(rng.standard_normal((n, d)), dtype)
    w = cast(rng.standard_normal((d, m)) / np.sqrt(d), dtype)
    b = cast(rng.standard_normal(m), dtype) if use_bias else None
    dy = place(cast(rng.standard_normal((n, m)), dtype), "misaligned")
    y, saved = ops.linear_act(x, w, b, act, alpha)
    dx, dw, db, dalpha = ops.linear_act_backward(dy, saved, need_dx=need_dx, need_dbias=use_bias)
    a = ops.activation_code(act, alpha)[1]
    z = x.astype(np.float64) @ w + (b if use_bias else 0.0)
    dz = dy * act_grad_ref(act, z, a)
    tol = RTOL[dtype] * 20
    big = 1.0 + np.abs(dz).sum()
    assert_matches(dw, x.astype(np.float64).T @ dz, dtype, bound=tol * big, what="dweight")
    if use_bias:
        assert_matches(db, dz.sum(0), dtype, bound=tol * big, what="dbias")
    else:
        assert db is None
    if need_dx:
        assert_matches(dx, dz @ w.astype(np.float64).T, dtype, bound=tol * big, what="dx")
    else:
        assert dx is None
    if act == "prelu":
        ref = float((dy * np.where(z > 0, 0.0, z)).sum())
        assert abs(dalpha - ref) <= tol * (1 + np.abs(dy * z).sum())
    else:
        assert dalpha is None


# --- elementwise activations ------------------------------------------------------------

SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


@settings(max_examples=SOME, **SETTINGS)
@given(shape=SHAPES, act=ACTS, alpha=st.floats(-0.5, 0.5), dtype=DTYPES, layout=LAYOUTS, kind=KINDS,
       out_layout=st.sampled_from(["none", "contiguous", "strided"]), seed=SEEDS)
def test_activation_forward(backend, shape, act, alpha, dtype, layout, kind, out_layout, seed):
    rng = np.random.default_rng(seed)
    alpha = alpha_for(act, alpha)
    x64 = values(rng, shape, kind, dtype)
    x = place(cast(x64, dtype), layout)
    out = None if out_layout == "none" else place(np.full(shape, np.nan, dtype), out_layout)
    with refused_if_not_contiguous(x=x, out=out) as runs:
        y = ops.activation(x, act, alpha, out=out)
    if runs:
        a = ops.activation_code(act, alpha)[1]
        assert_matches(y, act_ref(act, cast(x64, dtype), a), dtype, rtol=RTOL[dtype] * 5, what=act)
        assert out is None or y is out


@settings(max_examples=SOME, **SETTINGS)
@given(shape=SHAPES, act=ACTS, alpha=st.floats(-0.5, 0.5), dtype=DTYPES, layout=LAYOUTS, kind=KINDS, seed=SEEDS)
def test_activation_backward(backend, shape, act, alpha, dtype, layout, kind, seed):
    rng = np.random.default_rng(seed)
    alpha = alpha_for(act, alpha)
    x = cast(values(rng, shape, kind, dtype), dtype)
    y = ops.activation(x, act, alpha)
    dy = place(cast(rng.standard_normal(shape), dtype), layout)
    with refused_if_not_contiguous(dy=dy) as runs:
        dx, dalpha = ops.activation_backward(dy, x, y, act, alpha)
    if not runs:
        return
    a = ops.activation_code(act, alpha)[1]
    g = act_grad_ref(act, x, a)
    # Derivatives read from the rounded output y (tanh' = 1 - y^2) carry an error
    # of a few ulps of |dy|, not of |dy * g|, where g is small.
    bound = RTOL[dtype] * 20 * np.abs(dy) * (1 + np.abs(np.nan_to_num(g))) + 8 * float(np.finfo(dtype).tiny)
    assert_matches(dx, dy * g, dtype, bound=bound, what=f"d {act}")
    if act == "prelu":
        with np.errstate(all="ignore"):
            terms = dy * np.where(x > 0, 0.0, x.astype(np.float64))
            ref = terms.sum()
        if np.isfinite(ref):
            assert abs(dalpha - ref) <= RTOL[dtype] * 10 * (1 + np.abs(terms).sum())
        else:
            assert not np.isfinite(dalpha)
    else:
        assert dalpha is None


# --- softmax cross-entropy -----------------------------------------------------------------

@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 10), c=st.integers(1, 12), dtype=DTYPES, layout=LAYOUTS, kind=KINDS,
       label_dtype=st.sampled_from([np.int64, np.int32, np.uint8]), seed=SEEDS)
def test_softmax_cross_entropy(backend, n, c, dtype, layout, kind, label_dtype, seed):
    rng = np.random.default_rng(seed)
    s64 = values(rng, (n, c), kind, dtype)
    scores = place(cast(s64, dtype), layout)
    labels = rng.integers(0, c, n).astype(label_dtype)[::-1]          # a negative-stride view: converted
    with refused_if_not_contiguous(scores=scores) as runs:
        loss, saved = ops.softmax_cross_entropy(scores, labels)
    if not runs:
        return
    d = ops.softmax_cross_entropy_backward(saved)
    assert d.shape == (n, c) and d.dtype == dtype
    s_ = cast(s64, dtype).astype(np.float64)
    if n == 0:
        assert loss == 0.0      # an empty batch: zero loss (the mean over no rows is taken as 0)
        return
    if not np.isfinite(s_).all():
        # A NaN or infinite score must not vanish into a finite loss.
        assert not np.isfinite(loss) or np.isinf(s_).any() and not np.isnan(s_).any()
        return
    ref_loss, ref_d = oracle.softmax_xent(s_, labels.astype(np.int64))
    assert abs(loss - ref_loss) <= RTOL[dtype] * 10 * max(1.0, abs(ref_loss))
    assert_matches(d, ref_d, dtype, bound=RTOL[dtype] * 10 / n + 1e-30, what="dscores")


# --- batch normalization ----------------------------------------------------------------------

def bn_ref(x, gamma, beta, rm, rv, training, momentum, eps, dy):
    x = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    if training:
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        new_rm = (1 - momentum) * rm + momentum * mean
        new_rv = (1 - momentum) * rv + momentum * var * m / (m - 1)
    else:
        mean, var, new_rm, new_rv = rm, rv, rm, rv
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    y = xhat * gamma.reshape(shape) + beta.reshape(shape)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    k = (gamma * invstd).reshape(shape)
    if training:
        dx = k / m * (m * dy - dbeta.reshape(shape) - xhat * dgamma.reshape(shape))
    else:
        dx = k * dy
    return y, new_rm, new_rv, dx, dgamma, dbeta


@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 6), c=st.integers(1, 5), spatial=st.sampled_from([(), (1, 1), (2, 3), (4, 1)]),
       training=st.booleans(), momentum=st.floats(0, 1), eps=st.floats(1e-6, 1e-1), dtype=DTYPES,
       layout=LAYOUTS, seed=SEEDS)
def test_batchnorm(backend, n, c, spatial, training, momentum, eps, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c) + spatial
    x = place(cast(rng.standard_normal(shape) * 3 + 1, dtype), layout)
    gamma, beta = cast(rng.uniform(0.5, 2, c), dtype), cast(rng.standard_normal(c), dtype)
    rm0, rv0 = rng.standard_normal(c) * 0.1, rng.uniform(0.5, 2, c)
    rm, rv = cast(rm0, dtype), cast(rv0, dtype)
    per_channel = n * int(np.prod(spatial))
    bad = first_not_contiguous(x=x)
    if bad is None and training and per_channel < 2:
        with pytest.raises(ValueError, match="x: expected more than 1 value per channel"):
            ops.batchnorm(x, gamma, beta, rm, rv, training=training, momentum=momentum, eps=eps)
        return
    with refused_if_not_contiguous(x=x) as runs:
        y, saved = ops.batchnorm(x, gamma, beta, rm, rv, training=training, momentum=momentum, eps=eps)
    if not runs:
        return
    dy = cast(rng.standard_normal(shape), dtype)
    dx, dgamma, dbeta = ops.batchnorm_backward(dy, saved, gamma)
    ref = bn_ref(x, gamma.astype(np.float64), beta.astype(np.float64), cast(rm0, dtype).astype(np.float64),
                 cast(rv0, dtype).astype(np.float64), training, momentum, eps, dy.astype(np.float64))
    tol = RTOL[dtype] * 50
    big = 1.0 + np.abs(ref[3]).max(initial=0) + np.abs(dy).sum() / max(1, per_channel)
    for got, want, name, bound in ((y, ref[0], "y", tol * (1 + np.abs(ref[0]))), (rm, ref[1], "running_mean", tol),
                                   (rv, ref[2], "running_var", tol), (dx, ref[3], "dx", tol * big),
                                   (dgamma, ref[4], "dgamma", tol * (1 + np.abs(dy).sum())),
                                   (dbeta, ref[5], "dbeta", tol * (1 + np.abs(dy).sum()))):
        assert_matches(got, want, dtype, bound=bound, what=name)


# --- dropout ----------------------------------------------------------------------------------

def philox_mask(n, p, seed, offset):
    threshold, _ = ops.dropout_threshold(p)
    keep = np.empty(n, bool)
    for i in range(n):
        block, j = divmod(offset + i, 4)
        word = philox_py((block & 0xFFFFFFFF, block >> 32, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))[j]
        keep[i] = word < threshold
    return keep


@settings(max_examples=SOME, **SETTINGS)
@given(shape=st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple), p=st.floats(0, 0.95),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 200), dtype=DTYPES, layout=LAYOUTS, kind=KINDS,
       data_seed=SEEDS)
def test_dropout(backend, shape, p, seed, offset, dtype, layout, kind, data_seed):
    rng = np.random.default_rng(data_seed)
    x64 = values(rng, shape, kind, dtype)
    x = place(cast(x64, dtype), layout)
    with refused_if_not_contiguous(x=x) as runs:
        y = ops.dropout(x, p, seed, offset)
    if not runs:
        return
    keep = philox_mask(int(np.prod(shape)), p, seed, offset).reshape(shape)
    scale = 1.0 / (1.0 - p)
    ref = np.where(keep, cast(x64, dtype).astype(np.float64) * scale, 0.0)
    assert_matches(y, ref, dtype, rtol=RTOL[dtype], what="dropout")
    dy = cast(rng.standard_normal(shape), dtype)
    dx = ops.dropout_backward(dy, p, seed, offset)
    assert_matches(dx, np.where(keep, dy.astype(np.float64) * scale, 0.0), dtype, what="dropout backward")
    # Every backend draws the same mask (bit for bit).
    for other in fnn.backend.available():
        with fnn.backend.using(other):
            np.testing.assert_array_equal(ops.dropout(np.ascontiguousarray(x), p, seed, offset), y)


# --- optimizers (the fused optim_step kernel) and max_norm ------------------------------------------

OPTIMIZERS = {
    "sgd": lambda ps, h: fnn.optim.SGD(ps, lr=h["lr"], weight_decay=h["weight_decay"], l1=h["l1"]),
    "momentum": lambda ps, h: fnn.optim.SGD(ps, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"]),
    "nesterov": lambda ps, h: fnn.optim.SGD(ps, lr=h["lr"], momentum=h["momentum"], nesterov=True),
    "adagrad": lambda ps, h: fnn.optim.Adagrad(ps, lr=h["lr"], eps=h["eps"], weight_decay=h["weight_decay"]),
    "rmsprop": lambda ps, h: fnn.optim.RMSProp(ps, lr=h["lr"], alpha=h["alpha"], eps=h["eps"], l1=h["l1"]),
    "adam": lambda ps, h: fnn.optim.Adam(ps, lr=h["lr"], betas=h["betas"], eps=h["eps"],
                                         weight_decay=h["weight_decay"]),
    "adamw": lambda ps, h: fnn.optim.AdamW(ps, lr=h["lr"], betas=h["betas"], eps=h["eps"],
                                           weight_decay=h["weight_decay"]),
}
HYPER_USED = {"sgd": ("weight_decay", "l1"), "momentum": ("momentum", "weight_decay"), "nesterov": ("momentum",),
              "adagrad": ("eps", "weight_decay"), "rmsprop": ("alpha", "eps", "l1"),
              "adam": ("betas", "eps", "weight_decay"), "adamw": ("betas", "eps", "weight_decay")}


@settings(max_examples=SOME, **SETTINGS)
@given(rule=st.sampled_from(sorted(OPTIMIZERS)), shapes=st.lists(st.sampled_from([(0,), (1,), (5,), (3, 4), (0, 3),
                                                                                  (2, 1, 2, 2), (17,)]),
                                                                 min_size=1, max_size=4),
       lr=st.floats(1e-4, 0.5), weight_decay=st.floats(0, 0.1), l1=st.floats(0, 0.01), momentum=st.floats(0.01, 0.99),
       alpha=st.floats(0.5, 0.999), eps=st.floats(1e-10, 1e-3), b1=st.floats(0, 0.99), b2=st.floats(0.5, 0.999),
       steps=st.integers(1, 3), grad_kind=st.sampled_from(["normal", "tiny", "huge"]), dtype=DTYPES, seed=SEEDS)
def test_optimizer_step(backend, rule, shapes, lr, weight_decay, l1, momentum, alpha, eps, b1, b2, steps, grad_kind,
                        dtype, seed):
    rng = np.random.default_rng(seed)
    h = {"lr": lr, "weight_decay": weight_decay, "l1": l1, "momentum": momentum, "alpha": alpha, "eps": eps,
         "betas": (b1, b2)}
    params = [fnn.nn.Parameter(cast(rng.standard_normal(s), dtype)) for s in shapes]
    p0 = np.concatenate([p.data.reshape(-1) for p in params]).astype(np.float64)
    opt = OPTIMIZERS[rule](params, h)
    grads = []
    for _ in range(steps):
        g = cast(values(rng, p0.shape, grad_kind, dtype) * (1e-8 if grad_kind == "huge" else 1), dtype)
        grads.append(g.astype(np.float64))
        off = 0
        for p in params:
            p.grad[...] = g[off:off + p.size].reshape(p.shape)
            off += p.size
        opt.step()
    used = {k: h[k] for k in HYPER_USED[rule]}
    # The state is stored in the parameter's dtype (PyTorch's choice): a float32
    # "huge" gradient squares past float32's range, the state holds inf and that
    # element's step is zero, in the kernels and in the reference alike.
    ref = oracle.optim_reference(rule, p0, grads, lr, state_dtype=dtype, **used)[-1]
    got = np.concatenate([p.data.reshape(-1) for p in params])
    # Adam-family steps divide by sqrt(v) + eps: a float32 v rounds, so allow lr-sized slack per step there.
    slack = lr * steps * (1e-3 if dtype == np.float32 else 1e-9)
    assert_matches(got, ref, dtype, bound=RTOL[dtype] * 50 * (1 + np.abs(ref)) + slack, what=rule)


@settings(max_examples=FEW, **SETTINGS)
@given(mats=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=3),
       limit=st.floats(0.1, 5), gap=st.integers(0, 3), dtype=DTYPES, seed=SEEDS)
def test_max_norm(backend, mats, limit, gap, dtype, seed):
    rng = np.random.default_rng(seed)
    offsets, off = [], gap
    for r, c in mats:
        offsets.append(off)
        off += r * c + gap
    param = cast(rng.standard_normal(off) * 3, dtype)
    ref = param.astype(np.float64)
    for o, (r, c) in zip(offsets, mats):
        w = ref[o:o + r * c].reshape(r, c)
        norms = np.sqrt((w * w).sum(axis=0))
        w *= np.where(norms > limit, limit / np.maximum(norms, 1e-300), 1.0)
    rows, cols = [r for r, _ in mats], [c for _, c in mats]
    ops.max_norm(param, offsets, rows, cols, [limit] * len(mats))
    assert_matches(param, ref, dtype, rtol=RTOL[dtype] * 10, what="max_norm")


# --- convolution ----------------------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad):
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    f, c, kh, kw = w.shape
    oh = (x.shape[2] - kh) // stride[0] + 1
    ow = (x.shape[3] - kw) // stride[1] + 1
    y = np.zeros((x.shape[0], f, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride[0] * oh:stride[0], j:j + stride[1] * ow:stride[1]]
            y += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j].astype(np.float64))
    return y + (0.0 if b is None else b.astype(np.float64)[None, :, None, None])


def conv_backward_ref(x, w, dz, stride, pad):
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    f, c, kh, kw = w.shape
    oh, ow = dz.shape[2:]
    for i in range(kh):
        for j in range(kw):
            sl = (slice(None), slice(None), slice(i, i + stride[0] * oh, stride[0]), slice(j, j + stride[1] * ow,
                                                                                             stride[1]))
            dw[:, :, i, j] = np.einsum("nfhw,nchw->fc", dz, xp[sl])
            dxp[sl] += np.einsum("nfhw,fc->nchw", dz, w[:, :, i, j].astype(np.float64))
    dx = dxp[:, :, pad[0]:pad[0] + x.shape[2], pad[1]:pad[1] + x.shape[3]]
    return dx, dw, dz.sum(axis=(0, 2, 3))


@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 3), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), f=st.integers(1, 4),
       kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2),
       pw=st.integers(0, 2), act=ACTS, use_bias=st.booleans(), dtype=DTYPES, lx=LAYOUTS, lw=LAYOUTS, seed=SEEDS)
def test_conv2d(backend, n, c, h, w, f, kh, kw, sh, sw, ph, pw, act, use_bias, dtype, lx, lw, seed):
    rng = np.random.default_rng(seed)
    x = place(cast(rng.standard_normal((n, c, h, w)), dtype), lx)
    wt = place(cast(rng.standard_normal((f, c, kh, kw)) / np.sqrt(c * kh * kw), dtype), lw)
    b = cast(rng.standard_normal(f), dtype) if use_bias else None
    if kh > h + 2 * ph or kw > w + 2 * pw:
        with pytest.raises(ValueError, match="kernel .* is larger than the padded input"):
            ops.conv2d(np.ascontiguousarray(x), np.ascontiguousarray(wt), b, (sh, sw), (ph, pw), act)
        return
    with refused_if_not_contiguous(x=x, weight=wt) as runs:
        y, saved = ops.conv2d(x, wt, b, (sh, sw), (ph, pw), act)
    if not runs:
        return
    a = saved.alpha
    z = conv_ref(x, wt, b, (sh, sw), (ph, pw))
    tol = RTOL[dtype] * 20
    assert_matches(y, act_ref(act, z, a), dtype, bound=tol * (1 + np.abs(z)), what="conv2d y")
    dy = cast(rng.standard_normal(y.shape), dtype)
    dx, dw, db, dalpha = ops.conv2d_backward(dy, saved, need_dbias=use_bias)
    dz = dy * act_grad_ref(act, z, a)
    rdx, rdw, rdb = conv_backward_ref(x, wt, dz, (sh, sw), (ph, pw))
    big = 1 + np.abs(dz).sum()
    assert_matches(dx, rdx, dtype, bound=tol * big, what="conv2d dx")
    assert_matches(dw, rdw, dtype, bound=tol * big, what="conv2d dweight")
    if use_bias:
        assert_matches(db, rdb, dtype, bound=tol * big, what="conv2d dbias")


# --- pooling -------------------------------------------------------------------------------------------

@settings(max_examples=SOME, **SETTINGS)
@given(n=st.integers(0, 3), c=st.integers(1, 3), h=st.integers(1, 8), w=st.integers(1, 8), kh=st.integers(1, 3),
       kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3), ties=st.booleans(), dtype=DTYPES,
       layout=LAYOUTS, seed=SEEDS)
def test_max_pool2d(backend, n, c, h, w, kh, kw, sh, sw, ties, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x64 = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64) if ties else rng.standard_normal((n, c, h, w))
    x = place(cast(x64, dtype), layout)
    if kh > h or kw > w:
        with pytest.raises(ValueError, match="kernel_size .* is larger than the input"):
            ops.max_pool2d(np.ascontiguousarray(x), (kh, kw), (sh, sw))
        return
    with refused_if_not_contiguous(x=x) as runs:
        y, saved = ops.max_pool2d(x, (kh, kw), (sh, sw))
    if not runs:
        return
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    win = np.lib.stride_tricks.sliding_window_view(x64, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
    flat = win.reshape(n, c, oh, ow, kh * kw)
    assert_matches(y, flat.max(axis=-1), dtype, what="max_pool2d")
    dy = cast(rng.standard_normal(y.shape), dtype)
    dx = ops.max_pool2d_backward(dy, saved)
    # Backward: each dy goes to the first maximum of its window (row-major), summed where windows overlap.
    ref = np.zeros((n, c, h, w))
    arg = flat.argmax(axis=-1)
    for idx in np.ndindex(n, c, oh, ow):
        i, j = divmod(int(arg[idx]), kw)
        ref[idx[0], idx[1], idx[2] * sh + i, idx[3] * sw + j] += dy[idx]
    assert_matches(dx, ref, dtype, bound=RTOL[dtype] * 10 * (1 + np.abs(ref)), what="max_pool2d backward")


@settings(max_examples=FEW, **SETTINGS)
@given(n=st.integers(0, 2), c=st.integers(1, 2), h=st.integers(2, 9), w=st.integers(2, 9),
       ratio=st.floats(0.3, 1.0), training=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_fractional_max_pool2d(backend, n, c, h, w, ratio, training, dtype, seed):
    rng = np.random.default_rng(seed)
    x = cast(rng.standard_normal((n, c, h, w)), dtype)
    pool = fnn.nn.FractionalMaxPool2d(output_ratio=ratio, seed=seed)
    pool.train(training)
    y = pool.forward(x)
    oh, ow = max(1, int(h * ratio)), max(1, int(w * ratio))
    assert y.shape == (n, c, oh, ow) and y.dtype == dtype
    # Disjoint regions covering the plane: each output is the max of its region, so
    # the largest output of a plane is the plane's max; backward conserves the sum.
    if n:
        np.testing.assert_array_equal(y.max(axis=(2, 3)), x.max(axis=(2, 3)))
        assert np.isin(y, x).all()
    dy = cast(rng.standard_normal(y.shape), dtype)
    dx = pool.backward(dy)
    assert dx.shape == x.shape
    assert abs(float(dx.sum()) - float(dy.astype(np.float64).sum())) <= RTOL[dtype] * 10 * (1 + np.abs(dy).sum())


# --- layers ----------------------------------------------------------------------------------------------

ACT_LAYERS = {
    "relu": lambda a: fnn.nn.ReLU(), "leaky_relu": lambda a: fnn.nn.LeakyReLU(abs(a)),
    "prelu": lambda a: fnn.nn.PReLU(a, dtype=np.float64), "elu": lambda a: fnn.nn.ELU(abs(a) + 0.1),
    "selu": lambda a: fnn.nn.SELU(), "sigmoid": lambda a: fnn.nn.Sigmoid(), "tanh": lambda a: fnn.nn.Tanh(),
    "gelu": lambda a: fnn.nn.GELU(), "gelu_tanh": lambda a: fnn.nn.GELU("tanh"), "swish": lambda a: fnn.nn.Swish(),
}


def _layer(kind, rng, width, act_name, alpha):
    dt = np.float64
    seed = int(rng.integers(2**31))
    if kind == "linear":
        return fnn.nn.Linear(width, width, rng=seed, dtype=dt)
    if kind == "linear_act":
        return fnn.nn.Linear(width, width, activation=act_name, alpha=alpha_for(act_name, alpha), rng=seed, dtype=dt)
    if kind == "act":
        return ACT_LAYERS[act_name](alpha)
    if kind == "bn":
        return fnn.nn.BatchNorm1d(width, dtype=dt)
    if kind == "dropout":
        return fnn.nn.Dropout(0.3, seed=seed)
    raise ValueError(kind)


def _loss_and_grad(model, x, r):
    """L = sum(model(x) * r) and dL/dx, with every Dropout replaying offset 0."""
    for m in model.modules():
        if isinstance(m, fnn.nn.Dropout):
            m.offset = 0
    y = model.forward(x)
    return float((y * r).sum()), model.backward(np.ascontiguousarray(r))


@settings(max_examples=SOME, **SETTINGS)
@given(kinds=st.lists(st.sampled_from(["linear", "linear_act", "act", "bn", "dropout"]), min_size=1, max_size=4),
       act_name=st.sampled_from(sorted(ACT_LAYERS)), alpha=st.floats(-0.5, 0.5), n=st.integers(2, 6),
       width=st.integers(1, 6), training=st.booleans(), seed=SEEDS)
def test_sequential_gradient(backend, kinds, act_name, alpha, n, width, training, seed):
    """A random float64 Sequential: backward's dx against a central difference of
    L = sum(y * r) along a random direction; fused and unfused agree."""
    rng = np.random.default_rng(seed)
    layers = [_layer(k, rng, width, act_name, alpha) for k in kinds]
    model = fnn.nn.Sequential(*layers).train(training)
    x = rng.standard_normal((n, width))
    r = rng.standard_normal((n, width))
    _, dx = _loss_and_grad(model, x, r)
    v = rng.standard_normal(x.shape)
    eps = 1e-6
    lp, _ = _loss_and_grad(model, x + eps * v, r)
    lm, _ = _loss_and_grad(model, x - eps * v, r)
    numeric = (lp - lm) / (2 * eps)
    analytic = float((dx * v).sum())
    # Kinks (relu at 0) are hit with probability ~0; the slack covers the difference's truncation.
    assert abs(numeric - analytic) <= 1e-4 * (1 + abs(analytic)), (numeric, analytic)
    # The same layers one at a time (no fusion) give the same output.
    for m in model.modules():
        if isinstance(m, fnn.nn.Dropout):
            m.offset = 0
    fused = model.forward(x)
    for m in layers:
        if isinstance(m, fnn.nn.Dropout):
            m.offset = 0
    h = x
    for m in layers:
        h = m.forward(np.ascontiguousarray(h))
    np.testing.assert_allclose(fused, h, rtol=1e-12, atol=1e-12)


@settings(max_examples=SOME, **SETTINGS)
@given(layer=st.sampled_from(["linear", "linear_act", "act", "bn1d", "bn2d", "dropout", "conv", "pool", "flatten"]),
       act_name=st.sampled_from(sorted(ACT_LAYERS)), n=st.integers(0, 4), dtype=DTYPES, training=st.booleans(),
       layout=LAYOUTS, seed=SEEDS)
def test_layer_shapes_and_layouts(backend, layer, act_name, n, dtype, training, layout, seed):
    """Every layer on batches of 0..4 rows, in each layout: the output has the
    expected shape and dtype and equals the layer applied to a contiguous copy;
    a non-contiguous input is either used or refused with a ValueError naming x;
    an empty batch gives an empty output, or (BatchNorm in training) a ValueError
    naming x."""
    rng = np.random.default_rng(seed)
    four_d = layer in ("bn2d", "conv", "pool", "flatten")
    shape = (n, 2, 5, 4) if four_d else (n, 3)
    make = {
        "linear": lambda: fnn.nn.Linear(3, 4, dtype=dtype, rng=seed),
        "linear_act": lambda: fnn.nn.Linear(3, 4, activation=act_name, dtype=dtype, rng=seed),
        "act": lambda: ACT_LAYERS[act_name](0.2) if act_name != "prelu" else fnn.nn.PReLU(0.2, dtype=dtype),
        "bn1d": lambda: fnn.nn.BatchNorm1d(3, dtype=dtype), "bn2d": lambda: fnn.nn.BatchNorm2d(2, dtype=dtype),
        "dropout": lambda: fnn.nn.Dropout(0.5, seed=seed),
        "conv": lambda: fnn.nn.Conv2d(2, 3, 3, padding=1, dtype=dtype, rng=seed),
        "pool": lambda: fnn.nn.MaxPool2d(2), "flatten": lambda: fnn.nn.Flatten(),
    }[layer]
    out_shape = {"linear": (n, 4), "linear_act": (n, 4), "conv": (n, 3, 5, 4), "pool": (n, 2, 2, 2),
                 "flatten": (n, 40)}.get(layer, shape)
    x64 = rng.standard_normal(shape)
    x = place(cast(x64, dtype), layout)
    a, b = make().train(training), make().train(training)
    if layer.startswith("bn") and training and n * int(np.prod(shape[2:])) < 2:
        with pytest.raises(ValueError, match="x: expected more than 1 value per channel"):
            a.forward(np.ascontiguousarray(x))
        return
    ref = b.forward(np.ascontiguousarray(x))
    try:
        y = a.forward(x)
    except ValueError as exc:
        assert not x.flags.c_contiguous and "x must be C-contiguous" in str(exc), exc
        return
    assert y.shape == out_shape and y.dtype == dtype
    np.testing.assert_array_equal(y, ref)
    dy = cast(rng.standard_normal(out_shape), dtype)
    dx_a, dx_b = a.backward(dy), b.backward(dy.copy())
    assert dx_a.shape == shape
    np.testing.assert_array_equal(dx_a, dx_b)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.grad, pb.grad, err_msg=name)
        if n == 0 and name == "weight":
            assert not pa.grad.any(), "an empty batch must give zero weight gradients"
