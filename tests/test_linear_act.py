import numpy as np
import pytest

import fastnn as fnn
from fastnn.backend.codes import ACTIVATIONS

import oracle
from conftest import KINKED, TOL, draw_clear_of_kinks, off_kinks, rel_err
from oracle import numerical_grad

ALPHA = {"leaky_relu": 0.1, "prelu": -0.3, "elu": 0.7}
SHAPES = [(1, 1, 1), (3, 5, 7), (17, 31, 13), (64, 100, 37), (130, 67, 259)]


def _inputs(rng, n, d, m, dtype, scale=1.0):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((d, m)) * scale / np.sqrt(d)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype) * 0.5
    return x, w, b.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_forward_matches_reference(backend, rng, act, dtype):
    alpha = ALPHA.get(act)
    for n, d, m in SHAPES:
        x, w, b = _inputs(rng, n, d, m, dtype, scale=2.0)
        y, saved = fnn.ops.linear_act(x, w, b, act, alpha)
        z_ref = x.astype(np.float64) @ w + b
        assert y.dtype == dtype and y.shape == (n, m)
        assert rel_err(y, oracle.act(act, z_ref, alpha if alpha is not None else 0.0)) < TOL[dtype] * 10
        if saved.z is not None:
            assert rel_err(saved.z, z_ref) < TOL[dtype] * 10


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_backward_numerical_gradient(backend, rng, act):
    """Central differences in float64 on L = sum(G * y) for x, W, b (and alpha)."""
    alpha = ALPHA.get(act, 0.0)
    n, d, m = 4, 5, 6
    x, w, b = draw_clear_of_kinks(lambda: _inputs(rng, n, d, m, np.float64, scale=2.0),
                                  lambda xwb: np.min(np.abs(xwb[0] @ xwb[1] + xwb[2])) if act in KINKED else np.inf)
    g = rng.standard_normal((n, m))

    def loss(x_, w_, b_, a_):
        return float((g * fnn.ops.linear_act(x_, w_, b_, act, a_)[0]).sum())

    y, saved = fnn.ops.linear_act(x, w, b, act, alpha)
    dx, dw, db, dalpha = fnn.ops.linear_act_backward(g, saved)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel_err(grad, numerical_grad(lambda: loss(x, w, b, alpha), arr)) < 1e-6, act
    if act == "prelu":
        a = np.array([alpha])
        num = numerical_grad(lambda: loss(x, w, b, float(a[0])), a)[0]
        assert abs(dalpha - num) < 1e-6 * max(1.0, abs(num))
    else:
        assert dalpha is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_backward_matches_reference(backend, rng, act, dtype):
    alpha = ALPHA.get(act, 0.0)
    for n, d, m in SHAPES:
        x, w, b = _inputs(rng, n, d, m, dtype)
        dy = rng.standard_normal((n, m)).astype(dtype)
        y, saved = fnn.ops.linear_act(x, w, b, act, alpha)
        z = x.astype(np.float64) @ w + b
        dy = off_kinks(act, dy, z, np.abs(x) @ np.abs(w) + np.abs(b))
        dx, dw, db, _ = fnn.ops.linear_act_backward(dy, saved)
        dz = dy * oracle.act_grad(act, z, alpha)
        tol = TOL[dtype] * 10
        assert rel_err(db, dz.sum(0)) < tol
        assert rel_err(dw, x.T.astype(np.float64) @ dz) < tol
        assert rel_err(dx, dz @ w.T.astype(np.float64)) < tol


def test_backward_without_input_gradient(backend, rng):
    x, w, b = _inputs(rng, 9, 11, 5, np.float32)
    _, saved = fnn.ops.linear_act(x, w, b, "relu")
    dx, dw, db, _ = fnn.ops.linear_act_backward(np.ones((9, 5), np.float32), saved, need_dx=False)
    assert dx is None and dw.shape == (11, 5) and db.shape == (5,)


def test_no_bias(backend, rng):
    x, w, _ = _inputs(rng, 7, 3, 4, np.float64)
    y, _ = fnn.ops.linear_act(x, w, None, "tanh")
    assert rel_err(y, np.tanh(x @ w)) < 1e-12


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_backends_agree(rng, act):
    x, w, b = _inputs(rng, 33, 70, 21, np.float32, scale=2.0)
    dy = rng.standard_normal((33, 21)).astype(np.float32)
    dy = off_kinks(act, dy, x.astype(np.float64) @ w + b, np.abs(x) @ np.abs(w) + np.abs(b))
    results = []
    for name in fnn.backend.available():
        with fnn.backend.using(name):
            y, saved = fnn.ops.linear_act(x, w, b, act, ALPHA.get(act))
            results.append((y,) + fnn.ops.linear_act_backward(dy, saved)[:3])
    for other in results[1:]:
        for a, b_ in zip(other, results[0]):
            assert rel_err(a, b_) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_elementwise_activation(backend, rng, act, dtype):
    alpha = ALPHA.get(act, 0.0)
    x = (rng.standard_normal((3, 7, 11)) * 3).astype(dtype)
    y = fnn.ops.activation(x, act, alpha)
    assert rel_err(y, oracle.act(act, x.astype(np.float64), alpha)) < TOL[dtype] * 10
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx, dalpha = fnn.ops.activation_backward(dy, x, y, act, alpha)
    x64 = x.astype(np.float64)
    assert rel_err(dx, dy * oracle.act_grad(act, x64, alpha)) < TOL[dtype] * 10
    if act == "prelu":
        assert abs(dalpha - float((dy * np.where(x64 > 0, 0, x64)).sum())) < 1e-3 * max(1, abs(dalpha))


def test_activations_are_stable_at_extremes(backend):
    x = np.array([[-1e4, -100.0, -1e-30, 0.0, 1e-30, 100.0, 1e4]], np.float32)
    for act in ACTIVATIONS:
        y = fnn.ops.activation(x, act, ALPHA.get(act))
        assert np.isfinite(y).all(), act


# Shapes that cross the GEMM engine's block boundaries on every code path:
# several K blocks (D > KC), several column blocks per thread (M > 2 * NCL2),
# several row blocks (N or D > MCB = 256 * MR), too few column panels to split
# (then threads split rows), and edges that are not multiples of MR or NR.
BLOCK_SHAPES = [(37, 801, 1100), (2101, 19, 45), (29, 2099, 40), (300, 70, 9), (2, 1000, 3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["relu", "gelu", "prelu"])
def test_block_boundaries(backend, rng, act, dtype):
    alpha = ALPHA.get(act, 0.0)
    for n, d, m in BLOCK_SHAPES:
        x, w, b = _inputs(rng, n, d, m, dtype, scale=2.0)
        dy = rng.standard_normal((n, m)).astype(dtype)
        y, saved = fnn.ops.linear_act(x, w, b, act, alpha)
        z = x.astype(np.float64) @ w + b
        tol = TOL[dtype] * 10
        assert rel_err(y, oracle.act(act, z, alpha)) < tol, (n, d, m)
        dx, dw, db, dalpha = fnn.ops.linear_act_backward(dy, saved)
        # Where rounding moves z across the kink, float32 and float64 disagree on act'.
        near = np.abs(z) < 1e-4 * (np.abs(x) @ np.abs(w) + np.abs(b))
        dz = np.where(near, 0, dy * oracle.act_grad(act, z, alpha))
        if near.any():
            dy = np.where(near, 0, dy).astype(dtype)
            dx, dw, db, dalpha = fnn.ops.linear_act_backward(dy, saved)
        assert rel_err(db, dz.sum(0)) < tol * np.sqrt(n), (n, d, m)
        assert rel_err(dw, x.T.astype(np.float64) @ dz) < tol * np.sqrt(n), (n, d, m)
        assert rel_err(dx, dz @ w.T.astype(np.float64)) < tol * np.sqrt(m), (n, d, m)
        if act == "prelu":
            ref = float((dy * np.where(z > 0, 0, z)).sum())
            assert abs(dalpha - ref) < tol * np.sqrt(n * m) * max(1.0, np.abs(dy * z).sum() / np.sqrt(n * m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(backend, rng, dtype):
    """The GEMM tiles and the dbias / dalpha sums have a fixed order: 1 and 2
    threads give bit-identical outputs and gradients."""
    x, w, b = _inputs(rng, 301, 517, 263, dtype)
    dy = rng.standard_normal((301, 263)).astype(dtype)
    outs = []
    before = fnn.get_num_threads()
    try:
        for threads in (1, 2):
            fnn.set_num_threads(threads)
            y, saved = fnn.ops.linear_act(x, w, b, "prelu", 0.2)
            outs.append((y,) + fnn.ops.linear_act_backward(dy, saved))
    finally:
        fnn.set_num_threads(before)
    for a, b_ in zip(*outs):
        np.testing.assert_array_equal(a, b_)
