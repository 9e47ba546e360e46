"""Numerical safety (issue 12): where the math is finite the kernels are too.

Softmax cross-entropy with logits near the float range, every activation and
its derivative far out in both tails, BatchNorm with tiny variance, zero
variance and huge means: no inf/NaN, and agreement with float64 references
computed from the formulas (tests/oracle.py) on every backend and CPU path."""
from __future__ import annotations

import numpy as np
import pytest

import oracle
import fastnn as fnn
from fastnn import ops
from fastnn.backend.codes import ACTIVATIONS

DTYPES = [np.float32, np.float64]
_ALPHA = {"leaky_relu": 0.01, "prelu": 0.25, "elu": 1.0}


def _tails(dtype):
    big = 1e4 if dtype == np.float32 else 1e6
    return np.array([-big, -1e3, -200.0, -100.0, -88.5, -50.0, -30.0, -17.0, -1e-30, 0.0, 1e-30, 17.0, 30.0,
                     50.0, 88.5, 100.0, 200.0, 1e3, big], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
# The piecewise-linear ones (identity, relu, leaky_relu, prelu) have no tail to lose.
@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a not in ("identity", "relu", "leaky_relu", "prelu")])
def test_activations_are_finite_in_both_tails(backend, act, dtype):
    x = _tails(dtype)
    alpha = _ALPHA.get(act)
    y = ops.activation(x, act, alpha)
    assert np.isfinite(y).all(), dict(zip(x, y))
    ref = oracle.act(act, x.astype(np.float64), alpha or 0.0)
    # Relative to max(|ref|, 1): the saturated tails must land on their limits.
    np.testing.assert_allclose(y, ref, rtol=2e-6 if dtype == np.float32 else 1e-12,
                               atol=2e-6 if dtype == np.float32 else 1e-12)
    dy = np.ones_like(x)
    dx, _ = ops.activation_backward(dy, x, y, act, alpha)
    assert np.isfinite(dx).all(), dict(zip(x, dx))
    gref = oracle.act_grad(act, x.astype(np.float64), alpha or 0.0)
    np.testing.assert_allclose(dx, gref, rtol=5e-5 if dtype == np.float32 else 1e-10,
                               atol=5e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_with_huge_logits(backend, dtype):
    scores = np.array([[1e30, -1e30, 0.0],
                       [-1e30, -1e30, -1e30],      # all equal and hugely negative: uniform
                       [3e37, 3e37, -3e37],
                       [88.0, 89.0, 90.0],
                       [-1e4, 1e4, 0.0],
                       [0.0, 0.0, 1e-30]], dtype)
    labels = np.array([0, 2, 1, 0, 0, 2])
    loss, saved = ops.softmax_cross_entropy(scores, labels)
    ref_loss, ref_grad = oracle.softmax_xent(scores, labels)
    assert np.isfinite(loss) and np.isfinite(ref_loss)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(saved.probs.sum(axis=1), 1.0, rtol=1e-6)
    grad = ops.softmax_cross_entropy_backward(saved)
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, ref_grad, atol=1e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_log_of_a_vanishing_probability(backend, dtype):
    """The true class is 1e4 below the best: log-softmax, not log(softmax),
    so the loss is 1e4 and not inf."""
    scores = np.zeros((4, 7), dtype)
    scores[:, 3] = 1e4
    loss, _ = ops.softmax_cross_entropy(scores, np.array([0, 1, 2, 4]))
    np.testing.assert_allclose(loss, 1e4, rtol=1e-6)


def _bn_reference(x, eps):
    """Shifted by one sample per channel first: x - x0 is exact for values this
    close, so the reference's mean is not off by an ulp of the huge mean."""
    x64 = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    d = x64 - x64[(slice(0, 1), slice(None)) + (slice(0, 1),) * (x.ndim - 2)]
    d = d - d.mean(axis=axes, keepdims=True)
    var = (d * d).mean(axis=axes, keepdims=True)
    return d / np.sqrt(var + eps)


# (mean, spread) pairs whose ratio float32 can still resolve (<= 1e6) and whose
# variance it can hold (< 3e38); beyond that, float64 only.
_BN_CASES = [(dt, m, s) for dt in DTYPES for m, s in [(1e4, 1.0), (1e6, 1.0), (0.0, 1e-4), (3.0, 1e-3), (1e15, 1e13)]]
_BN_CASES += [(np.float64, 1e9, 1e-2), (np.float64, 1e30, 1e28)]


@pytest.mark.parametrize("dtype,mean,spread", _BN_CASES)
@pytest.mark.parametrize("shape", [(257, 5), (6, 3, 7, 5)])
def test_batchnorm_huge_means_and_tiny_variance(backend, dtype, shape, mean, spread, rng):
    x = (mean + spread * rng.standard_normal(shape)).astype(dtype)
    c = shape[1]
    gamma, beta = np.ones(c, dtype), np.zeros(c, dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    eps = 1e-5 * spread ** 2     # keep eps below the variance so the output is unit scale
    y, saved = ops.batchnorm(x, gamma, beta, rm, rv, training=True, eps=eps)
    assert np.isfinite(y).all() and np.isfinite(rm).all() and np.isfinite(rv).all()
    np.testing.assert_allclose(y, _bn_reference(x, eps), atol=2e-3 if dtype == np.float32 else 1e-8)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = ops.batchnorm_backward(dy, saved, gamma)
    assert np.isfinite(dx).all() and np.isfinite(dgamma).all() and np.isfinite(dbeta).all()
    # dx is orthogonal to the constant and to xhat in every channel (the BN Jacobian's null space).
    axes = (0,) + tuple(range(2, x.ndim))
    xhat = _bn_reference(x, eps)
    scale = np.sqrt(np.mean(dx.astype(np.float64) ** 2)) * np.prod([shape[a] for a in axes])
    assert np.all(np.abs(dx.astype(np.float64).sum(axis=axes)) < 1e-3 * scale + 1e-30)
    assert np.all(np.abs((dx * xhat).sum(axis=axes)) < 1e-3 * scale + 1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_of_a_constant_channel_is_beta(backend, dtype):
    """Zero variance: xhat = 0, so y = beta exactly and dx = 0, never NaN."""
    x = np.full((33, 4), 7.25, dtype)
    x[:, 1] = -1e6
    beta = np.array([0.5, -1.0, 2.0, 0.0], dtype)
    y, saved = ops.batchnorm(x, np.ones(4, dtype), beta, np.zeros(4, dtype), np.ones(4, dtype), training=True)
    np.testing.assert_array_equal(y, np.broadcast_to(beta, x.shape))
    dx, dgamma, dbeta = ops.batchnorm_backward(np.ones_like(x), saved, np.ones(4, dtype))
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx, 0.0, atol=1e-6)
    np.testing.assert_allclose(dbeta, 33.0)


def _activation_inputs(rng):
    # The vector forms' branch points (tanh's polynomial below 0.625, expm1's
    # below 0.5, the exp flush below -87.34), the saturated tails, tiny values
    # and the specials, over more elements than one block so both the vector
    # body and the scalar tail of every loop run.
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-30, -1e-30, 0.625, -0.625, 0.62499994, -0.5, -0.49999997,
                -87.3, -87.4, -88.0, -104.0, 88.0, 1e4, -1e4]
    return np.concatenate([rng.standard_normal(6000) * 3, rng.uniform(-100, 100, 2000),
                           rng.uniform(-1e-3, 1e-3, 2000), np.linspace(-1, 1, 1001), specials]).astype(np.float32)


@pytest.mark.parametrize("act", [a for a in ACTIVATIONS if a not in ("identity", "relu", "leaky_relu", "prelu")])
def test_activation_vector_forms_match_float64(backend, act, rng):
    """float32 forward and backward within 1e-6 (forward) / 1e-5 (backward) of
    the float64 formula, relative to max(|ref|, 1), on every CPU path: the
    vectorized exp/tanh/erfc of csrc/cpu/vec_math.h and the scalar tail alike.
    NaN stays NaN, and the signs of zeros follow the formula (tanh(-0) = -0)."""
    x = _activation_inputs(rng)
    alpha = _ALPHA.get(act)
    y = ops.activation(x, act, alpha)
    with np.errstate(all="ignore"):
        ref = oracle.act(act, x.astype(np.float64), alpha or 0.0)
    # The oracle's -inf * 0 for the gated forms is NaN; the kernels' limit is 0
    # (mul_vanishing), which test_activations_are_finite_in_both_tails covers.
    ok = ~np.isnan(ref) | np.isnan(x)
    assert np.array_equal(np.isnan(y[ok]), np.isnan(ref[ok])), act
    inf = ok & np.isinf(ref)
    assert np.array_equal(y[inf], ref[inf]), act
    fin = ok & np.isfinite(ref)
    err = np.abs(y[fin].astype(np.float64) - ref[fin]) / np.maximum(np.abs(ref[fin]), 1.0)
    assert err.max() <= 1e-6, (act, float(x[fin][err.argmax()]), float(err.max()))
    if act == "tanh":
        zero = np.array([-0.0, 0.0], np.float32)
        assert np.array_equal(np.signbit(ops.activation(np.tile(zero, 16), act, alpha)),
                              np.signbit(oracle.act(act, np.tile(zero, 16).astype(np.float64), alpha or 0.0)))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, _ = ops.activation_backward(dy, x, y, act, alpha)
    with np.errstate(all="ignore"):
        gref = dy.astype(np.float64) * oracle.act_grad(act, x.astype(np.float64), alpha or 0.0)
    fin = np.isfinite(gref) & np.isfinite(x)
    gerr = np.abs(dx[fin].astype(np.float64) - gref[fin]) / np.maximum(np.abs(gref[fin]), 1.0)
    assert gerr.max() <= 1e-5, (act, float(x[fin][gerr.argmax()]), float(gerr.max()))
    assert np.isnan(dx[np.isnan(x)]).all(), act


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_bits_do_not_depend_on_the_length(backend, act, rng):
    """An element's activation (and gradient) has the same bits whether it sits
    in a whole vector or in an array's last partial one: a prefix of an array
    gives the prefix of the result."""
    x = (rng.standard_normal(1000) * 3).astype(np.float32)
    dy = rng.standard_normal(1000).astype(np.float32)
    alpha = _ALPHA.get(act)
    y = ops.activation(x, act, alpha)
    dx, _ = ops.activation_backward(dy, x, y, act, alpha)
    for k in (1, 7, 37, 997):
        assert np.array_equal(ops.activation(x[:k], act, alpha), y[:k]), (act, k)
        dxk, _ = ops.activation_backward(dy[:k], x[:k], y[:k], act, alpha)
        assert np.array_equal(dxk, dx[:k]), (act, k)


@pytest.mark.parametrize("act", ["tanh", "gelu", "swish", "sigmoid", "elu"])
def test_fused_linear_activation_rows_do_not_depend_on_the_batch(act, rng):
    """The C++ GEMM computes each row in the same order whatever the batch, and
    the fused epilogue takes one formula at every column, so the first rows of a
    batch are the rows of a smaller batch bit for bit (a model predicts the same
    in batches of any size)."""
    if "cpp" not in fnn.backend.available():
        pytest.skip("the C++ extension is not built")
    x = rng.standard_normal((67, 53)).astype(np.float32)
    w = (rng.standard_normal((53, 75)) * 0.2).astype(np.float32)
    b = rng.standard_normal(75).astype(np.float32)
    with fnn.backend.using("cpp"):
        y, _ = ops.linear_act(x, w, b, act, _ALPHA.get(act))
        for k in (1, 9, 40):
            yk, _ = ops.linear_act(x[:k], w, b, act, _ALPHA.get(act))
            assert np.array_equal(yk, y[:k]), (act, k)
