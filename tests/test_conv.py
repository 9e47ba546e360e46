"""Conv2d, pooling, residual/stochastic depth and a small CNN, on every backend,
against float64 NumPy references written from the formulas."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastnn as fnn
from fastnn import ops
from fastnn.backend import cpp

import oracle
from conftest import TOL, off_kinks, rel_err, well_separated
from oracle import numerical_grad

DTYPES = [np.float32, np.float64]


# --- references (float64, direct from the definitions) -----------------------------

def conv_ref(x, w, b, stride, pad):
    """y[n,f,i,j] = b[f] + sum_{c,ki,kj} w[f,c,ki,kj] xpad[n,c,i*sh+ki,j*sw+kj]."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (ph, pw) = stride, pad
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = np.einsum("nckl,fckl->nf", patch, w)
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv_grad_ref(dz, x, w, stride, pad):
    """(dx, dw, db) of conv_ref given dz = dL/d(pre-activation)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    (sh, sw), (ph, pw) = stride, pad
    n, c, h, wd = x.shape
    f, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    oh, ow = dz.shape[2:]
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            dw += np.einsum("nf,nckl->fckl", dz[:, :, i, j], patch)
            dxp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += np.einsum("nf,fckl->nckl", dz[:, :, i, j], w)
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, dz.sum(axis=(0, 2, 3))


def maxpool_ref(x, k, s):
    n, c, h, w = x.shape
    oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = x[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]].max(axis=(2, 3))
    return y


# (N, C, H, W, F, KH, KW, stride, padding): odd and prime sizes, 1x1 kernels,
# kernels larger than the stride, strides 1-3, paddings 0-2, batch 1.
CASES = [
    (1, 1, 5, 5, 1, 1, 1, (1, 1), (0, 0)),
    (2, 3, 7, 5, 4, 3, 3, (1, 1), (1, 1)),
    (3, 2, 9, 8, 5, 3, 2, (2, 2), (0, 0)),
    (1, 3, 11, 7, 2, 5, 5, (3, 3), (2, 2)),
    (5, 4, 6, 7, 3, 4, 4, (2, 1), (1, 2)),
    (2, 3, 5, 5, 7, 1, 1, (2, 2), (1, 1)),
    (7, 2, 3, 3, 3, 3, 3, (1, 1), (0, 0)),
    (1, 13, 13, 11, 17, 3, 3, (3, 2), (2, 1)),
]
# Larger shapes that take the batch-parallel path (the last one with im2col in
# several row chunks, the final one partial) and the per-image-parallel path.
BIG = [(11, 8, 13, 13, 16, 3, 3, (1, 1), (1, 1)), (1, 16, 24, 23, 32, 3, 3, (1, 1), (1, 1)),
       (3, 32, 24, 23, 8, 3, 3, (1, 1), (1, 1))]


def _check_case(case, act, dtype, rng, bias=True):
    n, c, h, w, f, kh, kw, stride, pad = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((f, c, kh, kw)) / np.sqrt(c * kh * kw)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype) if bias else None
    y, saved = ops.conv2d(x, wt, b, stride, pad, act)
    z_ref = conv_ref(x, wt, b, stride, pad)
    alpha = ops.DEFAULT_ALPHA.get(act, 0.0)
    tol = TOL[dtype] * 10
    assert y.dtype == dtype and y.shape == z_ref.shape
    assert rel_err(y, oracle.act(act, z_ref, alpha)) < tol, (case, act)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy = off_kinks(act, dy, z_ref, conv_ref(np.abs(x), np.abs(wt), None if b is None else np.abs(b), stride, pad))
    dx, dw, db, _ = ops.conv2d_backward(dy, saved, need_dbias=bias)
    dz = dy.astype(np.float64) * oracle.act_grad(act, z_ref, alpha)
    dx_ref, dw_ref, db_ref = conv_grad_ref(dz, x, wt, stride, pad)
    assert rel_err(dx, dx_ref) < tol, (case, act, "dx")
    assert rel_err(dw, dw_ref) < tol, (case, act, "dw")
    if bias:
        assert rel_err(db, db_ref) < tol, (case, act, "db")
    dx2, dw2, _, _ = ops.conv2d_backward(dy, saved, need_dx=False, need_dbias=False)
    assert dx2 is None and np.array_equal(dw2, dw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_matches_reference(backend, rng, dtype):
    for k, case in enumerate(CASES):
        _check_case(case, ("identity", "relu", "gelu", "tanh")[k % 4], dtype, rng, bias=k % 3 != 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_large_shapes_both_thread_paths(backend, rng, dtype):
    for case in BIG:
        _check_case(case, "relu", dtype, rng)


def test_conv2d_prelu_alpha_gradient(backend, rng):
    x = rng.standard_normal((2, 2, 5, 5))
    w = rng.standard_normal((3, 2, 3, 3))
    r = rng.standard_normal((2, 3, 5, 5))
    y, saved = ops.conv2d(x, w, None, 1, 1, "prelu", 0.2)
    _, _, _, dalpha = ops.conv2d_backward(r, saved)
    z = conv_ref(x, w, None, (1, 1), (1, 1))
    assert abs(dalpha - float((r * np.minimum(z, 0)).sum())) < 1e-9 * max(1.0, abs(dalpha))


def test_conv2d_numerical_gradients(backend, rng):
    """Central differences of L = sum(R * conv(x)) for x, W and b (float64, tanh)."""
    x = rng.standard_normal((2, 2, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3)) * 0.3
    b = rng.standard_normal(3)
    r = rng.standard_normal(ops.conv2d(x, w, b, 2, 1, "tanh")[0].shape)

    def loss():
        return float((ops.conv2d(x, w, b, 2, 1, "tanh")[0] * r).sum())

    _, saved = ops.conv2d(x, w, b, 2, 1, "tanh")
    dx, dw, db, _ = ops.conv2d_backward(r, saved)
    for analytic, arr in ((dx, x), (dw, w), (db, b)):
        assert rel_err(analytic, numerical_grad(loss, arr)) < 1e-7


def test_conv2d_rejects_bad_input(backend):
    x = np.zeros((2, 3, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="weight"):
        ops.conv2d(x, np.zeros((4, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match="weight"):
        ops.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        ops.conv2d(x.astype(np.int32), w)
    with pytest.raises(ValueError, match="x must be 4-D"):
        ops.conv2d(x[0], w)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.conv2d(x[:, :, ::2], w)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ops.conv2d(np.zeros((1, 3, 2, 2), np.float32), w)
    with pytest.raises(ValueError, match="bias"):
        ops.conv2d(x, w, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="padding"):
        ops.conv2d(x, w, padding=-1)
    y, saved = ops.conv2d(x, w, None, 1, 1)
    with pytest.raises(ValueError, match="dy"):
        ops.conv2d_backward(np.zeros((2, 4, 5, 6), np.float32), saved)
    with pytest.raises(ValueError, match="Conv2d|channels"):
        fnn.nn.Conv2d(2, 4, 3).forward(x)


@pytest.mark.skipif(cpp._C is None, reason="C++ backend not built")
def test_conv2d_binding_checks_arguments():
    x = np.zeros((2, 3, 6, 6), np.float32)
    y = np.zeros((2, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="weight must have shape"):
        cpp._C.conv2d_forward(x, np.zeros((4, 2, 3, 3), np.float32), None, y, None, 1, 1, 0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        cpp._C.conv2d_forward(x, np.zeros((4, 3, 7, 7), np.float32), None, y, None, 1, 1, 0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="y must have shape"):
        cpp._C.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), None, y[:, :, :3].copy(), None, 1, 1, 0, 0,
                              0, 0.0)
    with pytest.raises(ValueError, match="stride"):
        cpp._C.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), None, y, None, 0, 1, 0, 0, 0, 0.0)


# --- pooling --------------------------------------------------------------------------

@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((2, 3), (1, 2)), ((3, 3), (3, 3))])
def test_max_pool_matches_reference_and_gradient(rng, k, s):
    x = well_separated(rng, (3, 2, 9, 7))
    layer = fnn.nn.MaxPool2d(k, s)
    y = layer.forward(x)
    assert np.array_equal(y, maxpool_ref(x, k, s))
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    num = numerical_grad(lambda: float((ops.max_pool2d(x, k, s)[0] * r).sum()), x)
    assert rel_err(dx, num) < 1e-7
    y32 = fnn.nn.MaxPool2d(k, s).forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and np.allclose(y32, y, atol=1e-6)


def test_fractional_max_pool(rng):
    x = rng.standard_normal((2, 3, 11, 9))
    pool = fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=3)
    y = pool.forward(x)
    assert y.shape == (2, 3, 7, 6)
    assert fnn.nn.FractionalMaxPool2d(output_size=(5, 4)).forward(x).shape == (2, 3, 5, 4)
    # The regions tile each axis: disjoint, in order, covering every row/column.
    for n_in, n_out in ((11, 7), (9, 6), (25, 17), (10, 10), (10, 1)):
        for u in (0.0, 0.3, 0.999):
            seq = ops.fractional_pool_sequence(n_in, n_out, u)
            starts, ends = seq[:, 0], seq[:, -1] + 1
            assert starts[0] == 0 and ends[-1] == n_in and np.all(starts[1:] == ends[:-1])
            assert np.all(ends - starts >= 1)
    # Same seed, same sequence of pooling regions; regions change between calls.
    other = fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=3)
    assert np.array_equal(other.forward(x), y)
    outs = [pool.forward(x) for _ in range(6)]
    assert any(not np.array_equal(o, outs[0]) for o in outs[1:])
    # Eval: deterministic, and values are maxima of x (each window's max).
    pool.eval()
    e1, e2 = pool.forward(x), pool.forward(x)
    assert np.array_equal(e1, e2) and np.isin(e1, x).all()
    # Gradient (random regions fixed by re-seeding before each evaluation).
    pool.train()
    r = rng.standard_normal(y.shape)

    def loss():
        return float((fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=9).forward(x) * r).sum())

    p2 = fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=9)
    p2.forward(x)
    assert rel_err(p2.backward(r), numerical_grad(loss, x)) < 1e-7


def test_global_avg_pool_and_flatten(rng):
    x = rng.standard_normal((3, 4, 5, 6))
    net = fnn.nn.Sequential(fnn.nn.GlobalAvgPool2d(), fnn.nn.Flatten())
    y = net.forward(x)
    assert np.allclose(y, x.mean(axis=(2, 3)))
    r = rng.standard_normal(y.shape)
    dx = net.backward(r)
    assert rel_err(dx, numerical_grad(lambda: float((x.mean(axis=(2, 3)) * r).sum()), x)) < 1e-7
    seq = fnn.nn.Sequential(fnn.nn.MaxPool2d(2), fnn.nn.Flatten())
    out = seq.forward(x)
    assert out.shape == (3, 4 * 2 * 3) and out.flags.c_contiguous
    assert seq.backward(np.ones_like(out)).shape == x.shape


# --- residual and stochastic depth ---------------------------------------------------

def _block(c, rng):
    return fnn.nn.Sequential(fnn.nn.Conv2d(c, c, 3, padding=1, dtype=np.float64, rng=rng), fnn.nn.Tanh())


def test_residual_plain_when_survival_is_one(backend, rng):
    x = rng.standard_normal((2, 3, 5, 5))
    res = fnn.nn.Residual(_block(3, 1), survival_prob=1.0)
    ref = _block(3, 1)
    y = res.forward(x)
    assert np.allclose(y, x + ref.forward(x))
    r = rng.standard_normal(y.shape)
    dx = res.backward(r)
    assert np.allclose(dx, r + ref.backward(r))
    res.eval()
    assert np.allclose(res.forward(x), y)
    # Numerical gradient through the residual.
    res.train()
    assert rel_err(dx, numerical_grad(lambda: float((res.forward(x) * r).sum()), x)) < 1e-7


def test_stochastic_depth_expectation_and_backward(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    p = 0.6
    res = fnn.nn.Residual(_block(3, 2), survival_prob=p, seed=11)
    fx = _block(3, 2).forward(x)
    trials, ran, mean = 600, 0, np.zeros_like(x)
    r = rng.standard_normal(x.shape)
    for _ in range(trials):
        y = res.forward(x)
        mean += y / trials
        dx = res.backward(r)
        if res._ran:
            ran += 1
            assert np.allclose(y, x + fx)
        else:
            assert np.array_equal(y, x) and np.array_equal(dx, r)
            assert all(not p_.grad.any() for p_ in res.parameters())
    res.eval()
    ev = res.forward(x)
    assert np.allclose(ev, x + p * fx)
    # mean of training outputs = x + (ran/trials) f(x); ran/trials ~ p within 4 sigma.
    assert abs(ran / trials - p) < 4 * np.sqrt(p * (1 - p) / trials)
    assert np.max(np.abs(mean - ev)) <= 4 * np.sqrt(p * (1 - p) / trials) * np.max(np.abs(fx)) + 1e-12
    # Eval backward: d/dx [x + p f(x)].
    ev_dx = res.backward(r)
    num = numerical_grad(lambda: float((res.forward(x) * r).sum()), x)
    assert rel_err(ev_dx, num) < 1e-7
    # Same seed, same skip pattern.
    a = fnn.nn.Residual(_block(3, 2), survival_prob=p, seed=5)
    b = fnn.nn.Residual(_block(3, 2), survival_prob=p, seed=5)
    assert all(np.array_equal(a.forward(x), b.forward(x)) for _ in range(20))


def test_stochastic_depth_probs():
    probs = fnn.nn.stochastic_depth_probs(4, p_last=0.5)
    assert np.allclose(probs, [0.875, 0.75, 0.625, 0.5])
    assert fnn.nn.stochastic_depth_probs(1, 0.8) == [0.8]
    with pytest.raises(ValueError):
        fnn.nn.Residual(fnn.nn.ReLU(), survival_prob=0.0)


# --- Sequential: fusion, BatchNorm2d, save/load ---------------------------------------

def test_sequential_fuses_conv_and_activation(backend, rng):
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)
    fused = fnn.nn.Sequential(fnn.nn.Conv2d(2, 4, 3, padding=1, rng=0, init="he_normal"), fnn.nn.ReLU(),
                              fnn.nn.Conv2d(4, 5, 3, stride=2, rng=1), fnn.nn.BatchNorm2d(5), fnn.nn.ReLU(),
                              fnn.nn.MaxPool2d(2), fnn.nn.Flatten(), fnn.nn.Linear(5, 3, rng=2))
    assert fused.steps()[0].activation is fused.layers[1]          # conv + relu: one kernel
    plain = fnn.nn.Sequential(fnn.nn.Conv2d(2, 4, 3, padding=1, rng=0, activation="relu", init="he_normal"),
                              fnn.nn.Conv2d(4, 5, 3, stride=2, rng=1), fnn.nn.BatchNorm2d(5), fnn.nn.ReLU(),
                              fnn.nn.MaxPool2d(2), fnn.nn.Flatten(), fnn.nn.Linear(5, 3, rng=2))
    y1, y2 = fused.forward(x), plain.forward(x)
    assert y1.shape == (3, 3) and np.allclose(y1, y2, atol=1e-5)
    r = rng.standard_normal(y1.shape).astype(np.float32)
    fused.backward(r)
    plain.backward(r)
    for (n1, p1), (_, p2) in zip(fused.named_parameters(), plain.named_parameters()):
        assert np.allclose(p1.grad, p2.grad, atol=1e-4), n1


def test_cnn_gradient_check_with_batchnorm(backend, rng):
    net = fnn.nn.Sequential(fnn.nn.Conv2d(1, 3, 3, padding=1, dtype=np.float64, rng=0), fnn.nn.BatchNorm2d(
        3, dtype=np.float64), fnn.nn.Tanh(), fnn.nn.Conv2d(3, 2, 2, stride=2, dtype=np.float64, rng=1),
        fnn.nn.Flatten())
    x = rng.standard_normal((3, 1, 5, 5))
    r = rng.standard_normal(net.forward(x).shape)
    net.forward(x)
    dx = net.backward(r)
    assert rel_err(dx, numerical_grad(lambda: float((net.forward(x) * r).sum()), x)) < 1e-6
    conv = net.layers[0]
    net.forward(x)
    net.backward(r)
    analytic = conv.weight.grad.copy()
    assert rel_err(analytic, numerical_grad(lambda: float((net.forward(x) * r).sum()), conv.weight.data)) < 1e-6


def test_cnn_save_load_roundtrip(tmp_path, rng):
    net = fnn.nn.Sequential(fnn.nn.Conv2d(1, 4, 3, padding=1, activation="relu"), fnn.nn.MaxPool2d(2),
                            fnn.nn.Residual(fnn.nn.Conv2d(4, 4, 3, padding=1), survival_prob=0.8),
                            fnn.nn.FractionalMaxPool2d(output_size=3, seed=1), fnn.nn.GlobalAvgPool2d(),
                            fnn.nn.Linear(4, 2))
    net.eval()
    x = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    net.save(tmp_path / "cnn.npz")
    back = fnn.nn.load(tmp_path / "cnn.npz")
    back.eval()
    assert np.allclose(back.forward(x), net.forward(x))


# --- a small CNN on the shipped digits -------------------------------------------------

def test_cnn_digits_accuracy():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "cnn_digits.py"
    spec = importlib.util.spec_from_file_location("cnn_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The accuracy is under test, not the speed: one thread keeps this quick on a
    # shared, oversubscribed machine (two-thread kernels then wait on each other).
    threads = fnn.get_num_threads()
    fnn.set_num_threads(1)
    try:
        result = module.train(epochs=8, seed=0, quiet=True)
    finally:
        fnn.set_num_threads(threads)
    assert result["test_accuracy"] >= 0.97, result


def test_cli_train_cnn(capsys):
    from fastnn import cli
    threads = fnn.get_num_threads()
    try:
        assert cli.main(["train", "--model", "cnn", "--epochs", "1", "--quiet", "--threads", "1"]) == 0
    finally:
        fnn.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "CNN 1x8x8" in out and "test accuracy" in out


def _bits_at_one_and_two_threads(x, w, b, dy):
    """Asserts conv2d forward and backward give the same bits at 1 and 2 threads
    (adaptive threading off, so the count asked for is the count used)."""
    saved_threads = fnn.get_num_threads()
    adaptive = cpp._C.adaptive_threads() if cpp._C is not None else None
    results = []
    try:
        if cpp._C is not None:
            cpp._C.set_adaptive_threads(False)
        for n in (1, 2):
            fnn.set_num_threads(n)
            y, saved = fnn.ops.conv2d(x, w, b, padding=1, act="relu")
            dx, dw, db, _ = fnn.ops.conv2d_backward(dy, saved)
            results.append((y.copy(), dx.copy(), dw.copy(), db.copy()))
    finally:
        fnn.set_num_threads(saved_threads)
        if cpp._C is not None:
            cpp._C.set_adaptive_threads(adaptive)
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_conv2d_backward_bits_do_not_depend_on_the_thread_count(backend, rng):
    """Fixed batch groups for the weight gradient: 1 and 2 threads give the same bits."""
    x = rng.standard_normal((13, 5, 11, 9)).astype(np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    dy = rng.standard_normal((13, 7, 11, 9)).astype(np.float32)
    _bits_at_one_and_two_threads(x, w, b, dy)


# --- Winograd F(2x2, 3x3) (3x3 stride-1 convolutions) ---------------------------------------

@contextlib.contextmanager
def conv_algorithm(name):
    """Both CPU backends' algorithm for 3x3 stride-1 convolutions, for the duration."""
    from fastnn.backend.numba import conv_winograd
    old = conv_winograd._ALGORITHM[0]
    conv_winograd.set_algorithm(name)
    if cpp._C is not None:
        cpp._C.set_conv_algorithm(name)
    try:
        yield
    finally:
        conv_winograd.set_algorithm(old)
        if cpp._C is not None:
            cpp._C.set_conv_algorithm(old)


# (N, C, H, W, F, padding): sizes that leave half tiles (odd OH/OW), 1x1 and 1xN
# outputs, every padding Winograd takes (0..2, also mixed), 1 and prime channel
# counts, batch 1, and blocks of tile rows that span images.
WINO_CASES = [
    (1, 1, 3, 3, 1, (0, 0)),
    (2, 3, 7, 5, 4, (1, 1)),
    (1, 5, 4, 9, 7, (0, 2)),
    (3, 2, 1, 6, 3, (1, 0)),
    (2, 13, 8, 11, 17, (2, 1)),
    (1, 17, 5, 5, 19, (2, 2)),
    (4, 16, 12, 13, 16, (1, 1)),
    (3, 37, 9, 7, 41, (1, 1)),
    # Maps up to 32 wide, where the AVX-512 transforms take up to 16 tiles per
    # register (two tile rows of a map at most 16 wide with at most 8 tiles per
    # row, else one tile row): 16, 14, 8 and 3 wide (pairs), 28, 31 and 30 wide
    # (single rows, odd tile counts), every padding, odd heights (a last tile row
    # alone, pairs that would cross images), 16/32-wide dY and outputs from an
    # unpadded 18/34-wide input, and 32 output columns from a 30-wide input.
    (3, 5, 16, 16, 7, (1, 1)),
    (2, 4, 13, 16, 6, (1, 1)),
    (2, 3, 9, 18, 5, (0, 0)),
    (1, 16, 16, 16, 16, (2, 1)),
    (2, 3, 9, 32, 5, (1, 1)),
    (1, 4, 7, 34, 3, (0, 0)),
    (2, 6, 6, 32, 17, (2, 1)),
    (2, 3, 14, 14, 5, (1, 1)),
    (1, 4, 7, 13, 3, (0, 2)),
    (3, 2, 8, 8, 3, (1, 1)),
    (2, 4, 5, 3, 3, (1, 1)),
    (2, 5, 9, 28, 6, (1, 1)),
    (1, 3, 5, 31, 4, (2, 0)),
    (1, 2, 6, 30, 2, (2, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_winograd_matches_reference(backend, rng, dtype):
    with conv_algorithm("winograd"):
        for k, (n, c, h, w, f, pad) in enumerate(WINO_CASES):
            _check_case((n, c, h, w, f, 3, 3, (1, 1), pad), ("relu", "identity", "tanh", "gelu")[k % 4], dtype, rng,
                        bias=k % 3 != 1)


def test_conv2d_winograd_deeper_than_one_k_block(backend, rng):
    """More input channels (dx: output channels) than one K block of the micro-kernel
    (384 fp32, 256 fp64 with AVX-512): the products accumulate across blocks."""
    with conv_algorithm("winograd"):
        _check_case((1, 390, 4, 5, 17, 3, 3, (1, 1), (1, 1)), "identity", np.float32, rng)
        _check_case((1, 19, 3, 4, 263, 3, 3, (1, 1), (0, 1)), "relu", np.float64, rng)


def test_conv2d_winograd_and_im2col_agree(backend, rng):
    """The two algorithms agree; 'auto' is Winograd at C, F >= 16 on both backends."""
    x = rng.standard_normal((5, 16, 12, 10)).astype(np.float32)
    w = (rng.standard_normal((24, 16, 3, 3)) / 12).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    dy = rng.standard_normal((5, 24, 12, 10)).astype(np.float32)
    # The two algorithms round z differently; where z is that close to leaky_relu's
    # kink they may take different slopes.
    dy = off_kinks("leaky_relu", dy, conv_ref(x, w, b, (1, 1), (1, 1)),
                   conv_ref(np.abs(x), np.abs(w), np.abs(b), (1, 1), (1, 1)))
    out = {}
    for algo in ("im2col", "winograd", "auto"):
        with conv_algorithm(algo):
            y, saved = ops.conv2d(x, w, b, 1, 1, "leaky_relu")
            out[algo] = (y, *ops.conv2d_backward(dy, saved)[:3])
    for a, b_ in zip(out["im2col"], out["winograd"]):
        assert rel_err(a, b_) < 1e-5
    for a, b_ in zip(out["auto"], out["winograd"]):
        np.testing.assert_array_equal(a, b_)


def test_conv2d_winograd_in_bands_of_tile_rows(backend, rng, monkeypatch):
    """The Numba path works on a map in bands of whole tile rows (as many as fit its
    L2 budget): with a budget of one tile row per band, every band edge and the last,
    shorter band are exercised, and the results are those of one band per map."""
    from fastnn.backend.numba import conv_winograd
    cases = [(2, 5, 9, 7, 6, (1, 1)), (1, 3, 13, 10, 4, (2, 0)), (3, 4, 8, 17, 5, (0, 2))]
    with conv_algorithm("winograd"):
        whole = []
        for n, c, h, w, f, pad in cases:
            x = rng.standard_normal((n, c, h, w))
            wt = rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)
            b = rng.standard_normal(f)
            y, saved = ops.conv2d(x, wt, b, 1, pad, "tanh")
            dy = rng.standard_normal(y.shape)
            whole.append(((x, wt, b, pad, dy), (y, *ops.conv2d_backward(dy, saved)[:3])))
        monkeypatch.setattr(conv_winograd, "_BAND_BYTES", 1)
        assert len(conv_winograd.bands(2, 13, 10, 3, 4, 8)) == 14
        for k, (n, c, h, w, f, pad) in enumerate(cases):
            _check_case((n, c, h, w, f, 3, 3, (1, 1), pad), "relu", np.float64, rng)
            (x, wt, b, pad, dy), want = whole[k]
            y, saved = ops.conv2d(x, wt, b, 1, pad, "tanh")
            got = (y, *ops.conv2d_backward(dy, saved)[:3])
            for a, b_ in zip(got, want):
                np.testing.assert_allclose(a, b_, rtol=1e-12, atol=1e-12)


def test_numba_winograd_falls_back_to_im2col_without_openblas_gemm(rng, monkeypatch):
    """The Numba Winograd kernels call NumPy's OpenBLAS ?gemm from compiled code; with a
    NumPy whose BLAS offers none (runtime.blas_gemm None) 3x3 convs take im2col + GEMM,
    with the same results."""
    from fastnn.backend.numba import conv_winograd, runtime
    case = (2, 17, 9, 11, 16, 3, 3, (1, 1), (1, 1))
    with fnn.backend.using("numba"), conv_algorithm("winograd"):
        assert conv_winograd.applies(3, 3, 1, 1, 1, 1, 9, 11, 17, 16, np.float32) == (
            runtime.blas_gemm(np.float32) is not None)
        monkeypatch.setattr(runtime, "_GEMMS", {})
        assert not conv_winograd.applies(3, 3, 1, 1, 1, 1, 9, 11, 17, 16, np.float32)
        _check_case(case, "relu", np.float32, rng)
        _check_case(case, "tanh", np.float64, rng)


def test_numba_im2col_tasks_without_openblas_gemm(rng, monkeypatch):
    """Where NumPy's BLAS offers no ?gemm to call from Numba (runtime.blas_gemm None),
    the Numba im2col path runs its steps as Python-thread tasks around np.matmul: the
    same reference results, every case (1x1, strided, padded, batch 1) and dtype, and
    the same bits at 1 and 2 threads."""
    from fastnn.backend.numba import runtime
    monkeypatch.setattr(runtime, "_GEMMS", {})
    with fnn.backend.using("numba"):
        for k, case in enumerate(CASES + BIG[:1]):
            for dtype in DTYPES:
                _check_case(case, ("identity", "relu", "prelu", "tanh")[k % 4], dtype, rng, bias=k % 3 != 2)
        x = rng.standard_normal((9, 4, 10, 9)).astype(np.float32)
        w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
        _bits_at_one_and_two_threads(x, w, rng.standard_normal(6).astype(np.float32),
                                     rng.standard_normal((9, 6, 10, 9)).astype(np.float32))


def test_conv2d_winograd_numerical_gradients(backend, rng):
    """Central differences of L = sum(R * conv(x)) through the Winograd path (float64)."""
    x = rng.standard_normal((2, 3, 5, 6))
    w = rng.standard_normal((4, 3, 3, 3)) * 0.3
    b = rng.standard_normal(4)
    with conv_algorithm("winograd"):
        r = rng.standard_normal(ops.conv2d(x, w, b, 1, (2, 1), "tanh")[0].shape)

        def loss():
            return float((ops.conv2d(x, w, b, 1, (2, 1), "tanh")[0] * r).sum())

        _, saved = ops.conv2d(x, w, b, 1, (2, 1), "tanh")
        dx, dw, db, _ = ops.conv2d_backward(r, saved)
        for analytic, arr in ((dx, x), (dw, w), (db, b)):
            assert rel_err(analytic, numerical_grad(loss, arr)) < 1e-7


def test_conv2d_winograd_nonfinite_stay_local(backend, rng):
    """A NaN input pixel makes NaN only the outputs whose 3x3 window holds it, as a direct
    convolution: the transforms never mix a tile's other pixels into those outputs."""
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    x[0, 3, 4, 5] = np.nan
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    with conv_algorithm("winograd"):
        y, _ = ops.conv2d(x, w, None, 1, 1, "identity")
    expect = np.zeros((8, 8), bool)
    expect[3:6, 4:7] = True
    for f in range(16):
        np.testing.assert_array_equal(np.isnan(y[0, f]), expect)


def test_conv2d_winograd_bits_do_not_depend_on_the_thread_count(backend, rng):
    """Winograd's weight gradient is summed over the same fixed batch groups: 1 and 2 threads agree bit for bit."""
    x = rng.standard_normal((13, 17, 11, 9)).astype(np.float32)
    w = rng.standard_normal((19, 17, 3, 3)).astype(np.float32)
    b = rng.standard_normal(19).astype(np.float32)
    dy = rng.standard_normal((13, 19, 11, 9)).astype(np.float32)
    # Maps up to 32 wide: the up-to-16-tiles-per-register transforms (odd heights: lone rows).
    with conv_algorithm("winograd"):
        _bits_at_one_and_two_threads(x, w, b, dy)
        for h, wd in ((15, 16), (7, 32), (9, 14), (5, 28)):
            xw = rng.standard_normal((7, 17, h, wd)).astype(np.float32)
            dyw = rng.standard_normal((7, 19, h, wd)).astype(np.float32)
            _bits_at_one_and_two_threads(xw, w, b, dyw)


def test_set_conv_algorithm_rejects_unknown_names():
    from fastnn.backend.numba import conv_winograd
    with pytest.raises(ValueError, match="algorithm"):
        conv_winograd.set_algorithm("fft")
    if cpp._C is not None:
        with pytest.raises(ValueError, match="algorithm"):
            cpp._C.set_conv_algorithm("fft")
        assert cpp._C.get_conv_algorithm() == "auto"
