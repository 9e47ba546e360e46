import numpy as np
import pytest

import fastnn as fnn

import oracle
from conftest import TOL, rel_err
from oracle import numerical_grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c", [(1, 1), (1, 10), (7, 3), (129, 10), (50, 1000)])
def test_matches_reference(backend, rng, dtype, n, c):
    scores = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    loss, saved = fnn.ops.softmax_cross_entropy(scores, labels)
    ref_loss, ref_d = oracle.softmax_xent(scores, labels)
    assert abs(loss - ref_loss) < TOL[dtype] * max(1, abs(ref_loss))
    d = fnn.ops.softmax_cross_entropy_backward(saved)
    assert rel_err(d, ref_d) < TOL[dtype]


def test_stable_for_huge_scores(backend):
    scores = np.array([[1e4, 0.0, -1e4], [3e4, 3e4, 3e4]], np.float32)
    loss, saved = fnn.ops.softmax_cross_entropy(scores, np.array([1, 2]))
    assert np.isfinite(loss) and abs(loss - (1e4 + np.log(3)) / 2) < 1.0
    assert np.isfinite(fnn.ops.softmax_cross_entropy_backward(saved)).all()


def test_numerical_gradient(backend, rng):
    scores = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    _, saved = fnn.ops.softmax_cross_entropy(scores, labels)
    d = fnn.ops.softmax_cross_entropy_backward(saved)
    num = numerical_grad(lambda: fnn.ops.softmax_cross_entropy(scores, labels)[0], scores)
    assert rel_err(d, num) < 1e-6


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0, 99]])
def test_labels_out_of_range(backend, labels):
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="labels"):
        fnn.ops.softmax_cross_entropy(scores, np.array(labels))


def test_hinge_and_mse_losses(rng):
    scores = rng.standard_normal((6, 4))
    y = rng.integers(0, 4, 6)
    hinge = fnn.losses.MulticlassHinge()
    loss = hinge.forward(scores, y)
    margins = np.maximum(0, scores - scores[np.arange(6), y][:, None] + 1)
    margins[np.arange(6), y] = 0
    assert abs(loss - margins.sum() / 6) < 1e-12
    d = hinge.backward()
    num = numerical_grad(lambda: fnn.losses.MulticlassHinge().forward(scores, y), scores)
    assert rel_err(d, num) < 1e-5
    t = rng.standard_normal((6, 4))
    mse = fnn.losses.MSE()
    assert abs(mse.forward(scores, t) - np.mean((scores - t) ** 2)) < 1e-12
    assert rel_err(mse.backward(), 2 * (scores - t) / scores.size) < 1e-12


def test_softmax_is_stable_and_matches_the_kernel(backend, rng):
    """ops.softmax (the package's one NumPy softmax): rows sum to 1, huge scores
    do not overflow, log=True is finite where softmax underflows, and it agrees
    with the probabilities the fused cross-entropy kernel saves."""
    scores = rng.standard_normal((7, 5)) * 3
    p = fnn.ops.softmax(scores)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-15)
    _, saved = fnn.ops.softmax_cross_entropy(scores, rng.integers(0, 5, 7))
    np.testing.assert_allclose(p, saved.probs, rtol=1e-12)
    big = np.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_array_equal(fnn.ops.softmax(big), [[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(fnn.ops.softmax(big, log=True), [[0.0, -1000.0, -2000.0]])
    assert fnn.ensemble.softmax is fnn.ops.softmax
    with pytest.raises(ValueError, match=r"scores must be 2-D \(N, C\)"):
        fnn.ops.softmax(np.ones(3))
