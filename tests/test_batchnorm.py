import threading

import numpy as np
import pytest

import fastnn as fnn
from fastnn.nn import batchnorm as bn_module

from conftest import off_kinks, rel_err
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
    x64 = x.astype(np.float64)
    z = (x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    dy = off_kinks("relu", dy, z, 1.0)  # where the backends may round z to either side of 0
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


# --- the kernels split at their reductions (ops.batchnorm_stats ... _backward_elemt) ---------

SPLIT_SHAPES = [(5, 1), (7, 3), (9, 131), (2, 1, 1, 1), (4, 2, 1, 1), (3, 1, 2, 2), (3, 5, 7, 11), (1, 3, 5, 3)]


def _act_grad(y, act):
    return {"identity": np.ones_like(y), "relu": (y > 0).astype(np.float64), "tanh": 1 - y * y}[act]


def _split_tol(dtype):
    return 2e-6 if dtype == np.float32 else 1e-13


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
def test_stats_and_gather_stats_match_float64_reference(backend, rng, dtype, shape):
    """batchnorm_stats: float64 sums of x - shift and its squares; batchnorm_gather_stats:
    mean (hi + lo), 1/sqrt(biased var + eps) and the momentum update (unbiased var)."""
    c = shape[1]
    tol = _split_tol(dtype)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    shift = (5 + rng.standard_normal(c)).astype(dtype)
    sums = fnn.ops.batchnorm_stats(x, shift)
    assert sums.shape == (2, c) and sums.dtype == np.float64
    x3 = x.astype(np.float64).reshape(shape[0], c, -1)
    d = x3 - shift.astype(np.float64)[None, :, None]
    scale = np.abs(d).sum(axis=(0, 2))
    assert np.all(np.abs(sums[0] - d.sum(axis=(0, 2))) <= tol * scale)
    assert np.all(np.abs(sums[1] - (d * d).sum(axis=(0, 2))) <= 2 * tol * (d * d).sum(axis=(0, 2)))

    count = x.size // c
    rm = rng.standard_normal(c).astype(dtype)
    rv = rng.uniform(0.5, 2, c).astype(dtype)
    rm_ref, rv_ref = rm.astype(np.float64), rv.astype(np.float64)
    mean, invstd = fnn.ops.batchnorm_gather_stats(sums, count, shift, rm, rv, momentum=0.3, eps=1e-3)
    assert mean.shape == (2, c) and mean.dtype == dtype and invstd.dtype == dtype
    mean_ref, var_ref = x3.mean(axis=(0, 2)), x3.var(axis=(0, 2))
    got_mean = mean[0].astype(np.float64) + mean[1].astype(np.float64)
    np.testing.assert_allclose(got_mean, mean_ref, rtol=tol * 10, atol=tol * 10)
    # hi carries the mean rounded to the dtype, lo the rest (smaller than half an ulp of hi)
    assert np.all(np.abs(mean[1]) <= np.spacing(np.abs(mean[0])))
    np.testing.assert_allclose(invstd, 1 / np.sqrt(var_ref + 1e-3), rtol=tol * 1e3 if count < 4 else tol * 100)
    np.testing.assert_allclose(rm, 0.7 * rm_ref + 0.3 * mean_ref, rtol=tol * 10, atol=tol * 10)
    np.testing.assert_allclose(rv, 0.7 * rv_ref + 0.3 * var_ref * count / (count - 1), rtol=tol * 1e3,
                               atol=tol * 1e3)


def test_stats_of_an_empty_shard_are_zero(backend):
    """A rank may hold no rows: its sums are zero (the allreduce adds nothing)."""
    sums = fnn.ops.batchnorm_stats(np.empty((0, 3, 2, 2), np.float32), np.ones(3, np.float32))
    np.testing.assert_array_equal(sums, np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SPLIT_SHAPES)
@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])
def test_elemt_and_backward_kernels_match_float64_reference(backend, rng, dtype, shape, act):
    """batchnorm_elemt: act((x - mean) * invstd * gamma + beta) with the given mean
    (hi + lo) and invstd; batchnorm_backward_reduce: float64 sum(dz), sum(dz * xhat)
    (and dbeta, dgamma); batchnorm_backward_elemt: dx from given channel means, or
    the eval form when they are None."""
    c = shape[1]
    tol = _split_tol(dtype)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    mean = np.stack([rng.standard_normal(c) + 3, rng.standard_normal(c) * 1e-8]).astype(dtype)
    invstd = rng.uniform(0.3, 2, c).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    y, saved = fnn.ops.batchnorm_elemt(x, gamma, beta, mean, invstd, act=act)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    m64 = (mean[0].astype(np.float64) + mean[1].astype(np.float64)).reshape(bshape)
    inv64, g64 = invstd.astype(np.float64).reshape(bshape), gamma.astype(np.float64).reshape(bshape)
    xhat = (x.astype(np.float64) - m64) * inv64
    pre = xhat * g64 + beta.astype(np.float64).reshape(bshape)
    y_ref = {"identity": pre, "relu": np.maximum(pre, 0), "tanh": np.tanh(pre)}[act]
    np.testing.assert_allclose(y, y_ref, rtol=tol * 10, atol=tol * 10)

    dy = rng.standard_normal(shape).astype(dtype)
    dgamma, dbeta = np.empty(c, dtype), np.empty(c, dtype)
    sums = fnn.ops.batchnorm_backward_reduce(dy, saved, dgamma=dgamma, dbeta=dbeta)
    dz = dy.astype(np.float64) * _act_grad(y.astype(np.float64), act)
    axes = (0,) + tuple(range(2, x.ndim))
    # dz is rounded in the dtype from act'(y) (1 - y*y cancels near |y| = 1): error ~ eps |dy|
    dy_abs = np.abs(dy.astype(np.float64))
    assert np.all(np.abs(sums[0] - dz.sum(axis=axes)) <= tol * 10 * dy_abs.sum(axis=axes))
    bound = tol * 10 * (dy_abs * (1 + np.abs(xhat))).sum(axis=axes)
    assert np.all(np.abs(sums[1] - (dz * xhat).sum(axis=axes)) <= bound)
    np.testing.assert_array_equal(dbeta, sums[0].astype(dtype))
    np.testing.assert_array_equal(dgamma, sums[1].astype(dtype))

    mean_dz, mean_dz_xhat = rng.standard_normal(c), rng.standard_normal(c)
    dx = fnn.ops.batchnorm_backward_elemt(dy, saved, gamma, mean_dz, mean_dz_xhat)
    dx_ref = g64 * inv64 * (dz - mean_dz.reshape(bshape) - xhat * mean_dz_xhat.reshape(bshape))
    np.testing.assert_allclose(dx, dx_ref, rtol=tol * 100, atol=tol * 100)
    dx_eval = fnn.ops.batchnorm_backward_elemt(dy, saved, None, None, None)
    np.testing.assert_allclose(dx_eval, inv64 * dz, rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 3), (9, 131), (3, 5, 7, 11), (2, 1, 1, 1)])
def test_split_kernels_compose_to_the_fused_kernels_bit_for_bit(backend, rng, dtype, shape):
    """stats -> gather_stats -> elemt with the fused kernel's shift (the channel's
    first value) and reduce -> elemt with the local means are exactly
    batchnorm/batchnorm_backward: the fused kernels are these passes."""
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 100).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 2, c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    y, saved = fnn.ops.batchnorm(x, gamma, beta, rm, rv, training=True, act="tanh")
    dx, dgamma, dbeta = fnn.ops.batchnorm_backward(dy, saved, gamma)

    rm2, rv2 = np.zeros(c, dtype), np.ones(c, dtype)
    shift = np.ascontiguousarray(x.reshape(shape[0], c, -1)[0, :, 0])
    sums = fnn.ops.batchnorm_stats(x, shift)
    mean, invstd = fnn.ops.batchnorm_gather_stats(sums, x.size // c, shift, rm2, rv2)
    y2, saved2 = fnn.ops.batchnorm_elemt(x, gamma, beta, mean, invstd, act="tanh")
    for got, ref in ((mean, saved.mean), (invstd, saved.invstd), (y2, y), (rm2, rm), (rv2, rv)):
        np.testing.assert_array_equal(got, ref)
    dg2, db2 = np.empty(c, dtype), np.empty(c, dtype)
    bsums = fnn.ops.batchnorm_backward_reduce(dy, saved2, dgamma=dg2, dbeta=db2)
    means = bsums / (x.size // c)
    dx2 = fnn.ops.batchnorm_backward_elemt(dy, saved2, gamma, means[0], means[1])
    for got, ref in ((dx2, dx), (dg2, dgamma), (db2, dbeta)):
        np.testing.assert_array_equal(got, ref)


def test_split_kernels_reject_bad_arguments(backend):
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="shift must have dtype float32"):
        fnn.ops.batchnorm_stats(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"shift must have shape \(3,\), got \(2,\)"):
        fnn.ops.batchnorm_stats(x, np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="out must be a float64"):
        fnn.ops.batchnorm_stats(x, np.zeros(3, np.float32), out=np.zeros((2, 3), np.float32))
    sums = fnn.ops.batchnorm_stats(x, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="count: expected more than 1 value per channel .* got 1"):
        fnn.ops.batchnorm_gather_stats(sums, 1, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match=r"sums must have shape \(2, 3\), got \(6,\)"):
        fnn.ops.batchnorm_gather_stats(sums.reshape(-1), 4, np.zeros(3, np.float32))
    mean, invstd = fnn.ops.batchnorm_gather_stats(sums, 4, np.zeros(3, np.float32))
    _, saved = fnn.ops.batchnorm_elemt(x, None, None, mean, invstd)
    with pytest.raises(ValueError, match="mean_dz and mean_dz_xhat must both be given"):
        fnn.ops.batchnorm_backward_elemt(x, saved, None, np.zeros(3), None)
    with pytest.raises(TypeError, match="mean_dz must be a float64"):
        fnn.ops.batchnorm_backward_elemt(x, saved, None, np.zeros(3, np.float32), np.zeros(3))
    with pytest.raises(ValueError, match=r"mean must have shape \(2, 3\)"):
        fnn.ops.batchnorm_elemt(x, None, None, mean[:, :2].copy(), invstd)
