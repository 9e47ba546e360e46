import numpy as np
import pytest

import fastnn as fnn

import oracle
from conftest import TOL, draw_clear_of_kinks, rel_err
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
    def hinge_kink_distance(drawn):   # each margin s_j - s_y + 1 is at a kink when 0
        s, labels = drawn
        margin = s - s[np.arange(6), labels][:, None] + 1
        margin[np.arange(6), labels] = 1.0
        return np.min(np.abs(margin))

    scores, y = draw_clear_of_kinks(lambda: (rng.standard_normal((6, 4)), rng.integers(0, 4, 6)), hinge_kink_distance)
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
    """ops.softmax (the kernel's softmax, the one of the package): rows sum to
    1, huge scores do not overflow, and it agrees with the probabilities the
    fused cross-entropy kernel saves."""
    scores = rng.standard_normal((7, 5)) * 3
    p = fnn.ops.softmax(scores)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), rtol=1e-15)
    _, saved = fnn.ops.softmax_cross_entropy(scores, rng.integers(0, 5, 7))
    np.testing.assert_allclose(p, saved.probs, rtol=1e-12)
    big = np.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_array_equal(fnn.ops.softmax(big), [[1.0, 0.0, 0.0]])
    assert fnn.ensemble.softmax is fnn.ops.softmax
    with pytest.raises(ValueError, match=r"scores must be 2-D \(N, C\)"):
        fnn.ops.softmax(np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c", [(1, 1), (5, 3), (13, 7), (64, 10)])
def test_soft_targets_take_the_fused_kernel(backend, rng, dtype, n, c):
    """Soft targets (rows are distributions; zeros where softmax underflows
    included): loss -(1/N) sum t log p and dscores (p - t)/N against float64."""
    scores = (rng.standard_normal((n, c)) * 4).astype(dtype)
    scores[0, 0] = 800.0 if c > 1 else scores[0, 0]        # p underflows to 0 elsewhere in row 0
    t = rng.random((n, c))
    t[0, 1:] = 0.0
    t /= t.sum(axis=1, keepdims=True)
    loss, saved = fnn.ops.softmax_cross_entropy(scores, t.astype(dtype))
    s = scores.astype(np.float64)
    logp = s - s.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    want = -(np.where(t > 0, t * logp, 0.0)).sum() / n
    tol = TOL[dtype]
    assert abs(loss - want) <= tol * max(1.0, abs(want))
    d = fnn.ops.softmax_cross_entropy_backward(saved)
    assert rel_err(d, (np.exp(logp) - t.astype(dtype).astype(np.float64)) / n) < tol
    lossfn = fnn.losses.SoftmaxCrossEntropy()
    assert abs(lossfn.forward(scores, t.astype(dtype)) - loss) <= tol * max(1.0, abs(loss))
    np.testing.assert_array_equal(lossfn.backward(), d)


def test_soft_targets_gradient_is_the_numerical_one(rng):
    scores = rng.standard_normal((4, 5))
    t = rng.random((4, 5))
    t /= t.sum(axis=1, keepdims=True)
    _, saved = fnn.ops.softmax_cross_entropy(scores.copy(), t)
    num = numerical_grad(lambda: fnn.ops.softmax_cross_entropy(scores, t)[0], scores)
    assert rel_err(fnn.ops.softmax_cross_entropy_backward(saved), num) < 1e-7


def test_labels_and_targets_are_exclusive_in_every_kernel(backend):
    x = np.zeros((2, 3))
    impl = fnn.backend.lookup("softmax_xent_forward", backend)
    with pytest.raises(ValueError, match="labels or targets"):
        impl(x, np.array([0, 1]), np.full((2, 3), 1 / 3), np.empty((2, 3)))
