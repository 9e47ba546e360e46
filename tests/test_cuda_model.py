"""The Python side of the cuda backend on a real GPU: ops on CuPy arrays,
``Module.to("cuda")``, optimizers and the Trainer, each against the same
computation on the CPU (float64, so only summation order differs). Skipped
without CuPy or a GPU (tests/test_device.py checks what a CPU machine can)."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn import ops
from fastnn.backend import cuda

cp = pytest.importorskip("cupy")
if cuda.reason is not None:
    pytest.skip(f"cuda unavailable: {cuda.reason}", allow_module_level=True)

RTOL, ATOL = 1e-9, 1e-11     # float64: reductions in another order, nothing else


def _close(gpu, cpu, what=""):
    assert isinstance(gpu, cp.ndarray), f"{what}: expected a cupy array, got {type(gpu)}"
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=RTOL, atol=ATOL, err_msg=what)


def test_ops_on_cupy_arrays_return_cupy_arrays_matching_the_cpu():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(37, 19)), rng.normal(size=(19, 23)), rng.normal(size=23)
    y_cpu, saved_cpu = ops.linear_act(x, w, b, "gelu")
    y_gpu, saved_gpu = ops.linear_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), "gelu")
    _close(y_gpu, y_cpu, "linear_act")
    dy = rng.normal(size=y_cpu.shape)
    for g, c, name in zip(ops.linear_act_backward(cp.asarray(dy), saved_gpu), ops.linear_act_backward(dy, saved_cpu),
                          ("dx", "dweight", "dbias")):
        _close(g, c, name)
    xi = rng.normal(size=(4, 3, 9, 7))
    yp, sp = ops.max_pool2d(cp.asarray(xi), 3, 2, 1)
    yc, sc = ops.max_pool2d(xi, 3, 2, 1)
    _close(yp, yc, "max_pool2d")
    assert sp.index.dtype == np.int32 and isinstance(sp.index, cp.ndarray)
    _close(ops.max_pool2d_backward(cp.asarray(np.ones_like(yc)), sp), ops.max_pool2d_backward(np.ones_like(yc), sc))
    rows, cols = ops.fractional_pool_bounds(9, 5, 0.3), ops.fractional_pool_bounds(7, 4, 0.6)
    _close(ops.max_pool_regions(cp.asarray(xi), rows, cols)[0], ops.max_pool_regions(xi, rows, cols)[0])
    sums = ops.batchnorm_stats(cp.asarray(xi), cp.zeros(3))
    assert isinstance(sums, cp.ndarray) and sums.dtype == np.float64
    _close(sums, ops.batchnorm_stats(xi, np.zeros(3)), "batchnorm_stats")
    loss_gpu, _ = ops.softmax_cross_entropy(cp.asarray(y_cpu), cp.asarray(rng.integers(0, 23, 37)))
    assert isinstance(loss_gpu, float)


def test_mixing_numpy_and_cupy_arguments_is_a_type_error_naming_the_argument():
    x = cp.ones((4, 3))
    with pytest.raises(TypeError, match="weight"):
        ops.linear_act(x, np.ones((3, 2)))
    with pytest.raises(TypeError, match="labels"):
        ops.softmax_cross_entropy(cp.ones((4, 3)), np.zeros(4, np.int64))


def _model(seed=0):
    fnn.manual_seed(seed)
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(2, 4, 3, padding=1, dtype=np.float64), fnn.nn.BatchNorm2d(4, dtype=np.float64), fnn.nn.ReLU(),
        fnn.nn.MaxPool2d(2), fnn.nn.Residual(fnn.nn.Sequential(fnn.nn.Conv2d(4, 4, 3, padding=1, dtype=np.float64),
                                                               fnn.nn.PReLU(dtype=np.float64, num_parameters=4))),
        fnn.nn.AvgPool2d(2, 1), fnn.nn.Dropout(0.3, seed=5), fnn.nn.Flatten(),
        fnn.nn.Linear(4 * 3 * 3, 8, dtype=np.float64), fnn.nn.BatchNorm1d(8, dtype=np.float64),
        fnn.nn.PReLU(dtype=np.float64), fnn.nn.Maxout(8, 5, dtype=np.float64), fnn.nn.Linear(5, 3, dtype=np.float64))


def test_a_model_on_the_gpu_computes_what_it_computes_on_the_cpu():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(6, 2, 8, 8)), rng.integers(0, 3, 6)
    cpu, gpu = _model(), _model().to("cuda")
    assert all(isinstance(p.data, cp.ndarray) and isinstance(p.grad, cp.ndarray) for p in gpu.parameters())
    assert isinstance(gpu[1].running_mean, cp.ndarray)
    assert isinstance(gpu[6].rng_state, np.ndarray)       # (seed, offset) stays on the host
    for step in range(2):
        loss_c, loss_g = fnn.losses.SoftmaxCrossEntropy(), fnn.losses.SoftmaxCrossEntropy()
        out_c, out_g = cpu.forward(x), gpu.forward(cp.asarray(x))
        _close(out_g, out_c, f"forward {step}")
        np.testing.assert_allclose(loss_g.forward(out_g, cp.asarray(y)), loss_c.forward(out_c, y), rtol=1e-12)
        cpu.backward(loss_c.backward())
        gpu.backward(loss_g.backward())
        for (name, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
            _close(pg.grad, pc.grad, f"{name}.grad step {step}")
    state = gpu.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    for k, v in cpu.state_dict().items():
        np.testing.assert_allclose(state[k], v, rtol=RTOL, atol=ATOL, err_msg=k)
    gpu.eval()
    cpu.eval()
    _close(gpu.forward(cp.asarray(x)), cpu.forward(x), "eval forward")
    with pytest.raises(TypeError, match=r"cupy.asarray\(x\)"):
        gpu(x)      # a NumPy batch into a GPU model: never a silent copy
    back = gpu.to("cpu")
    assert all(type(p.data) is np.ndarray for p in back.parameters())
    np.testing.assert_allclose(back.forward(x), cpu.forward(x), rtol=RTOL, atol=ATOL)


def test_save_and_load_state_of_a_gpu_model(tmp_path):
    gpu = _model().to("cuda")
    gpu.save(tmp_path / "m.npz")
    loaded = fnn.nn.load(tmp_path / "m.npz")
    for k, v in gpu.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
    other = _model(seed=3).to("cuda")
    other.load_state_dict(loaded.state_dict())
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, loaded.state_dict()[k])


@pytest.mark.parametrize("make", [
    lambda ps: fnn.optim.Adam(ps, lr=1e-2, weight_decay=1e-3, clip_grad_norm=0.5, max_norm=1.0),
    lambda ps: fnn.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True, l1=1e-4),
])
def test_optimizer_steps_on_the_gpu_match_the_cpu(make):
    rng = np.random.default_rng(2)
    cpu, gpu = _model(), _model().to("cuda")
    oc, og = make(cpu.parameters()), make(gpu.parameters())
    assert og.device == "cuda" and isinstance(og.flat_param, cp.ndarray) and type(og.hyper) is np.ndarray
    for _ in range(3):
        g = rng.normal(size=oc.flat_grad.shape)
        oc.flat_grad[...] = g
        og.flat_grad[...] = cp.asarray(g)
        assert oc.step(check_finite=True) and og.step(check_finite=True)
        _close(og.flat_param, oc.flat_param, "flat_param")
        if oc.last_grad_norm is not None:
            assert og.last_grad_norm == pytest.approx(oc.last_grad_norm, rel=1e-12)
    og.flat_grad[0] = cp.nan
    before = og.flat_param.copy()
    assert not og.step(check_finite=True)
    assert bool((og.flat_param == before).all())
    state = og.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    og2 = make(_model().to("cuda").parameters())
    og2.load_state_dict(state)
    for a, b in zip(og2.state, og.state):
        assert isinstance(a, cp.ndarray) and bool((a == b).all())


def test_lbfgs_says_it_runs_on_the_cpu_only():
    with pytest.raises(NotImplementedError, match="LBFGS runs on the CPU only"):
        fnn.optim.LBFGS(_model().to("cuda").parameters())


def test_trainer_fits_a_gpu_model_from_numpy_data(tmp_path):
    X, y = fnn.data.load_digits()
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 64), fnn.nn.BatchNorm1d(64), fnn.nn.ReLU(), fnn.nn.Dropout(0.1),
                              fnn.nn.Linear(64, 10)).to("cuda")
    opt = fnn.optim.Adam(model.parameters(), lr=3e-3)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    assert trainer.device == "cuda"
    hist = trainer.fit(X[:1500], y[:1500], epochs=5, batch_size=64, val=(X[1500:], y[1500:]), progress=False)
    assert hist.val_acc[-1] > 0.85, hist.val_acc
    scores = trainer.predict(X[1500:])
    assert type(scores) is np.ndarray and scores.shape == (len(X) - 1500, 10)
    ev = trainer.evaluate(X[1500:], y[1500:])
    assert ev["accuracy"] == pytest.approx(hist.val_acc[-1])
    trainer.save_checkpoint(tmp_path / "c.npz")
    resumed = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    resumed.load_checkpoint(tmp_path / "c.npz")
    assert resumed.epochs_done == 5


def _mlp(seed):
    fnn.manual_seed(seed)
    return fnn.nn.Sequential(fnn.nn.Linear(12, 16, activation="relu", dtype=np.float64),
                             fnn.nn.Linear(16, 5, dtype=np.float64))


def _trainers(make_opt, check_gradients=True, seed=4):
    """The same float64 MLP, optimizer and loss on the CPU and on the GPU."""
    cpu, gpu = _mlp(seed), _mlp(seed).to("cuda")
    tc = fnn.Trainer(cpu, fnn.losses.SoftmaxCrossEntropy(), make_opt(cpu.parameters()),
                     check_gradients=check_gradients)
    tg = fnn.Trainer(gpu, fnn.losses.SoftmaxCrossEntropy(), make_opt(gpu.parameters()),
                     check_gradients=check_gradients)
    return tc, tg


@pytest.mark.parametrize("check_gradients", [True, False])
@pytest.mark.parametrize("make", [
    lambda ps: fnn.optim.Adam(ps, lr=1e-2),
    lambda ps: fnn.optim.Adam(ps, lr=1e-2, clip_grad_norm=0.05, max_norm=1.0),
    lambda ps: fnn.optim.SGD(ps, lr=1e-1, momentum=0.9),
])
def test_train_step_on_the_gpu_matches_the_cpu(make, check_gradients):
    """The GPU step reads its loss, label check and gradient norm in one transfer
    (Trainer._one_sync_step): the same losses, parameters and clipping norms as
    the CPU's step, whose loss and norm are read separately."""
    rng = np.random.default_rng(5)
    tc, tg = _trainers(make, check_gradients)
    for step in range(4):
        x = rng.normal(size=(29, 12))
        y = rng.integers(0, 5, 29)
        lc, lg = tc.train_step(x, y), tg.train_step(x, y)
        assert isinstance(lg, float) and lg == pytest.approx(lc, rel=1e-12), step
        assert tg.nonfinite is None and tc.nonfinite is None
        _close(tg.optimizer.flat_param, tc.optimizer.flat_param, f"flat_param after step {step}")
        if tc.optimizer.last_grad_norm is not None:
            assert tg.optimizer.last_grad_norm == pytest.approx(tc.optimizer.last_grad_norm, rel=1e-12)
    assert tg.optimizer.t == tc.optimizer.t == 4


def test_train_step_on_the_gpu_refuses_a_label_out_of_range_before_updating():
    rng = np.random.default_rng(6)
    _, tg = _trainers(lambda ps: fnn.optim.Adam(ps, lr=1e-2))
    before = tg.optimizer.flat_param.copy()
    y = rng.integers(0, 5, 29)
    y[11] = 7
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\), got labels\[11\] = 7"):
        tg.train_step(rng.normal(size=(29, 12)), y)
    assert bool((tg.optimizer.flat_param == before).all()) and tg.optimizer.t == 0
    y[11] = -1
    with pytest.raises(ValueError, match=r"got labels\[11\] = -1"):
        tg.train_step(rng.normal(size=(29, 12)), y)


@pytest.mark.parametrize("check_gradients", [True, False])
def test_train_step_on_the_gpu_skips_the_update_on_a_nan_loss(check_gradients):
    rng = np.random.default_rng(7)
    tc, tg = _trainers(lambda ps: fnn.optim.Adam(ps, lr=1e-2), check_gradients)
    x = rng.normal(size=(29, 12))
    x[3, 4] = np.nan
    y = rng.integers(0, 5, 29)
    before = tg.optimizer.flat_param.copy()
    lc, lg = tc.train_step(x, y), tg.train_step(x, y)
    assert np.isnan(lc) and np.isnan(lg)
    assert tg.nonfinite == tc.nonfinite == "loss"
    assert bool((tg.optimizer.flat_param == before).all()) and tg.optimizer.t == tc.optimizer.t == 0
    x[3, 4] = 0.5                                   # and the next good step goes through
    assert tg.train_step(x, y) == pytest.approx(tc.train_step(x, y), rel=1e-12)
    _close(tg.optimizer.flat_param, tc.optimizer.flat_param, "flat_param after the good step")


def test_train_step_on_the_gpu_skips_the_update_on_nonfinite_gradients():
    """A finite loss whose gradients' sum of squares is inf: input feature 4 is
    1e308 and its weights are 0, so the scores ignore it, but its weight gradient
    x^T dz is about 1e307 and squares past float64's range."""
    rng = np.random.default_rng(8)
    tc, tg = _trainers(lambda ps: fnn.optim.Adam(ps, lr=1e-2))
    for t in (tc, tg):
        t.model[0].weight.data[4] = 0              # input feature 4 does not reach the scores
    x = rng.normal(size=(29, 12))
    x[:, 4] = 1e308
    y = rng.integers(0, 5, 29)
    before = tg.optimizer.flat_param.copy()
    lc, lg = tc.train_step(x, y), tg.train_step(x, y)
    assert np.isfinite(lc) and lg == pytest.approx(lc, rel=1e-12)
    assert tc.nonfinite == tg.nonfinite == "gradients"
    assert bool((tg.optimizer.flat_param == before).all()) and tg.optimizer.t == tc.optimizer.t == 0


def test_tf32_switch_and_device_summary():
    assert cuda.allow_tf32() is False          # off by default
    cuda.set_allow_tf32(True)
    try:
        assert cuda.allow_tf32() is True
    finally:
        cuda.set_allow_tf32(False)
    lines = cuda.device_summary()
    assert lines and "cuBLASLt" in lines[0] and "driver" in lines[0]
