import threading

import numpy as np
import pytest

import fastnn as fnn
from fastnn.nn import batchnorm as bn_module

from conftest import rel_err
from oracle import numerical_grad


def bn_reference(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5, act=None):
    """PyTorch's BatchNorm semantics in float64: returns (y, new_rm, new_rv)."""
    x = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    if training:
        mean = x.mean(axis=axes)
        var = x.var(axis=axes)
        rm = (1 - momentum) * rm + momentum * mean
        rv = (1 - momentum) * rv + momentum * var * m / (m - 1)
    else:
        mean, var = rm, rv
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)
    if act == "relu":
        y = np.maximum(y, 0)
    return y, rm, rv


SHAPES = [(2, 1), (7, 3), (64, 129), (300, 5), (2, 3, 1, 1), (3, 5, 7, 11), (8, 16, 4, 4), (1, 4, 3, 5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_train_steps_then_eval_match_reference(backend, rng, dtype, shape):
    c = shape[1]
    gamma = rng.uniform(0.5, 2, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    rm_ref, rv_ref = np.zeros(c), np.ones(c)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    for _ in range(3):
        x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
        y, _ = fnn.ops.batchnorm(x, gamma, beta, rm, rv, training=True, momentum=0.1)
        y_ref, rm_ref, rv_ref = bn_reference(x, gamma, beta, rm_ref, rv_ref, True)
        assert rel_err(y, y_ref) < tol * 10
        assert rel_err(rm, rm_ref) < tol and rel_err(rv, rv_ref) < tol
    x = rng.standard_normal(shape).astype(dtype)
    y, _ = fnn.ops.batchnorm(x, gamma, beta, rm, rv, training=False)
    assert rel_err(y, bn_reference(x, gamma, beta, rm_ref, rv_ref, False)[0]) < tol * 10


def test_running_var_is_unbiased_and_normalization_biased(backend):
    x = np.array([[1.0], [3.0]])  # mean 2, biased var 1, unbiased var 2
    rm, rv = np.zeros(1), np.ones(1)
    y, saved = fnn.ops.batchnorm(x, None, None, rm, rv, training=True, momentum=1.0, eps=0.0 + 1e-12)
    np.testing.assert_allclose(y.ravel(), [-1.0, 1.0], rtol=1e-9)
    np.testing.assert_allclose(rv, [2.0])
    np.testing.assert_allclose(rm, [2.0])


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 3, 5), (1, 3, 2, 2)])
@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])
@pytest.mark.parametrize("training", [True, False])
def test_gradient_check(backend, rng, shape, act, training):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    g = rng.standard_normal(shape)

    def loss(x_, gamma_, beta_):
        y, _ = fnn.ops.batchnorm(x_, gamma_, beta_, rm.copy(), rv.copy(), training=training, act=act)
        return float((g * y).sum())

    y, saved = fnn.ops.batchnorm(x, gamma, beta, rm.copy(), rv.copy(), training=training, act=act)
    dx, dgamma, dbeta = fnn.ops.batchnorm_backward(g, saved, gamma)
    for arr, grad in ((x, dx), (gamma, dgamma), (beta, dbeta)):
        assert rel_err(grad, numerical_grad(lambda: loss(x, gamma, beta), arr)) < 1e-5


def test_large_mean_is_stable(backend, rng):
    x = (1e4 + rng.standard_normal((4096, 8))).astype(np.float32)
    c = 8
    y, _ = fnn.ops.batchnorm(x, None, None, np.zeros(c, np.float32), np.ones(c, np.float32), training=True)
    ref, _, _ = bn_reference(x, np.ones(c), np.zeros(c), np.zeros(c), np.ones(c), True)
    assert rel_err(y, ref) < 1e-4
    x4 = (1e4 + rng.standard_normal((16, 3, 8, 8))).astype(np.float32)
    y4, _ = fnn.ops.batchnorm(x4, None, None, np.zeros(3, np.float32), np.ones(3, np.float32), training=True)
    assert rel_err(y4, bn_reference(x4, np.ones(3), np.zeros(3), np.zeros(3), np.ones(3), True)[0]) < 1e-4


def test_backends_agree(rng):
    x = rng.standard_normal((33, 17, 5, 3)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = []
    for name in fnn.backend.available():
        with fnn.backend.using(name):
            rm, rv = np.zeros(17, np.float32), np.ones(17, np.float32)
            y, saved = fnn.ops.batchnorm(x, np.ones(17, np.float32), np.zeros(17, np.float32), rm, rv, act="relu")
            out.append((y, rm, rv) + fnn.ops.batchnorm_backward(dy, saved, np.ones(17, np.float32)))
    for other in out[1:]:
        for a, b in zip(other, out[0]):
            assert rel_err(a, b) < 1e-5


def test_layers_and_edge_cases(backend, rng):
    bn = fnn.nn.BatchNorm1d(4)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn.forward(np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="4 channels"):
        bn.forward(np.ones((5, 3), np.float32))
    with pytest.raises(ValueError, match="2-D or 3-D"):
        bn.forward(np.ones((5, 4, 2, 2), np.float32))
    bn.eval()
    assert bn.forward(np.ones((1, 4), np.float32)).shape == (1, 4)  # eval accepts N=1
    bn2 = fnn.nn.BatchNorm2d(3)
    y = bn2.forward(rng.standard_normal((1, 3, 4, 4)).astype(np.float32))  # N=1 with H*W > 1
    assert y.shape == (1, 3, 4, 4) and abs(float(y.mean())) < 1e-5
    with pytest.raises(ValueError, match="4-D"):
        bn2.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="momentum"):
        fnn.nn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(TypeError, match="x must have dtype"):
        fnn.nn.BatchNorm1d(3).forward(np.ones((4, 3), np.int32))
    assert set(dict(fnn.nn.BatchNorm1d(3).named_buffers())) == {"running_mean", "running_var"}


def test_sequential_fuses_batchnorm_and_relu(rng):
    model = fnn.nn.Sequential(fnn.nn.Linear(5, 6, dtype=np.float64, rng=0), fnn.nn.BatchNorm1d(6, dtype=np.float64),
                              fnn.nn.ReLU(), fnn.nn.Linear(6, 3, dtype=np.float64, rng=1))
    assert model.steps()[1].activation is model.layers[2]
    x = rng.standard_normal((10, 5))
    y = model.forward(x)
    ref = x
    for layer in [model.layers[0]]:
        ref = layer.forward(ref)
    bn = fnn.nn.BatchNorm1d(6, dtype=np.float64)
    ref = np.maximum(bn.forward(ref), 0)
    ref = model.layers[3].forward(ref)
    assert rel_err(y, ref) < 1e-12


# --- synchronized BatchNorm: the kernel split at its reductions -------------------------

class _ThreadRanks:
    """fastnn._comm stand-in for ranks run as threads of this process: allreduce_
    sums the buffers of every rank (each waits for the others)."""

    def __init__(self, world):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.lock = threading.Lock()
        self.slots = []

    def active(self):
        return True

    def allreduce_(self, buf, op="sum"):
        with self.lock:
            self.slots.append(buf.copy())
        self.barrier.wait()
        total = np.sum(self.slots, axis=0)
        self.barrier.wait()
        with self.lock:
            self.slots.clear()
        self.barrier.wait()
        buf[...] = total
        return buf


@pytest.mark.parametrize("shape", [(12, 5), (6, 3, 4, 5)])
@pytest.mark.parametrize("act", ["identity", "tanh"])
@pytest.mark.parametrize("world", [1, 3])
def test_sync_bn_over_ranks_equals_the_kernel_on_the_global_batch(backend, rng, monkeypatch, shape, act, world):
    """sync_bn=True on `world` ranks (threads sharing an allreduce) with a shard
    each gives the outputs, running statistics (unbiased variance) and input
    gradients of plain BatchNorm (the fused kernel) on the whole batch, and each
    rank's dgamma/dbeta is its share of the global ones."""
    ranks = _ThreadRanks(world)
    monkeypatch.setattr(bn_module._comm, "active", ranks.active)
    monkeypatch.setattr(bn_module._comm, "allreduce_", ranks.allreduce_)
    cls = fnn.nn.BatchNorm1d if len(shape) == 2 else fnn.nn.BatchNorm2d
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    gamma, beta, running_mean = rng.uniform(0.5, 2, c), rng.standard_normal(c), rng.standard_normal(c)

    def build(sync):
        bn = cls(c, dtype=np.float64, sync_bn=sync)
        bn.weight.data[...], bn.bias.data[...], bn.running_mean[...] = gamma, beta, running_mean
        return bn

    whole = build(False)
    y_ref = whole.forward_fused(x, act, None)
    dx_ref, _ = whole.backward_fused(dy)

    shards = np.array_split(np.arange(shape[0]), world)
    models = [build(True) for _ in range(world)]
    out = [None] * world

    def run(r):
        rows = shards[r]
        y = models[r].forward_fused(np.ascontiguousarray(x[rows]), act, None)
        dx, _ = models[r].backward_fused(np.ascontiguousarray(dy[rows]))
        out[r] = (y, dx)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_allclose(np.concatenate([o[0] for o in out]), y_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([o[1] for o in out]), dx_ref, rtol=1e-9, atol=1e-11)
    for m in models:
        np.testing.assert_allclose(m.running_mean, whole.running_mean, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(m.running_var, whole.running_var, rtol=1e-12)
    np.testing.assert_allclose(sum(m.weight.grad for m in models), whole.weight.grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sum(m.bias.grad for m in models), whole.bias.grad, rtol=1e-10, atol=1e-12)
