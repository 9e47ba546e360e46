import numpy as np
import pytest

import fastnn as fnn
import oracle
from conftest import rel_err

CASES = [
    ("sgd", fnn.optim.SGD, dict(lr=0.1)),
    ("sgd", fnn.optim.SGD, dict(lr=0.1, weight_decay=0.01, l1=0.001)),
    ("momentum", fnn.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("nesterov", fnn.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adagrad", fnn.optim.Adagrad, dict(lr=0.1)),
    ("rmsprop", fnn.optim.RMSProp, dict(lr=0.01, alpha=0.9)),
    ("adam", fnn.optim.Adam, dict(lr=0.01)),
    ("adam", fnn.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1)),
    ("adamw", fnn.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
]


def _params(rng, dtype, shapes=((7, 3), (3,), (1,), (13, 17))):
    return [fnn.nn.Parameter(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(shapes)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule,cls,hyper", CASES)
def test_golden_trajectory(backend, rng, dtype, rule, cls, hyper):
    params = _params(rng, dtype)
    start = np.concatenate([p.data.ravel() for p in params]).astype(np.float64)
    opt = cls(params, **hyper)
    grads = [rng.standard_normal(start.size) for _ in range(6)]
    h = {k: v for k, v in hyper.items() if k not in ("lr", "nesterov")}
    ref = oracle.optim_reference(rule, start, grads, hyper["lr"], **h)
    for g, want in zip(grads, ref):
        opt.flat_grad[...] = g
        opt.step()
        got = np.concatenate([p.data.ravel() for p in params])
        assert rel_err(got, want) < (1e-5 if dtype == np.float32 else 1e-12), rule


def test_parameters_become_views_of_the_flat_buffer(rng):
    params = _params(rng, np.float32)
    before = [p.data.copy() for p in params]
    opt = fnn.optim.SGD(params, lr=1.0)
    for p, b in zip(params, before):
        assert np.shares_memory(p.data, opt.flat_param) and np.shares_memory(p.grad, opt.flat_grad)
        np.testing.assert_array_equal(p.data, b)
        p.grad[...] = 1.0
    opt.step()
    for p, b in zip(params, before):
        np.testing.assert_allclose(p.data, b - 1.0, rtol=1e-6)


def test_parameter_groups_and_frozen_parameters(rng):
    params = _params(rng, np.float64)
    opt = fnn.optim.SGD([{"params": params[:2], "lr": 0.1}, {"params": params[2:], "lr": 0.01, "weight_decay": 0.5}])
    params[0].trainable = False
    before = [p.data.copy() for p in params]
    for p in params:
        p.grad[...] = 1.0
    opt.step()
    np.testing.assert_array_equal(params[0].data, before[0])
    np.testing.assert_allclose(params[1].data, before[1] - 0.1)
    for p, b in zip(params[2:], before[2:]):
        np.testing.assert_allclose(p.data, b - 0.01 * (1.0 + 0.5 * b))


def test_state_dict_resumes_exactly(rng):
    params = _params(rng, np.float64)
    opt = fnn.optim.Adam(params, lr=0.01)
    grads = [rng.standard_normal(opt.flat_grad.size) for _ in range(4)]
    for g in grads[:2]:
        opt.flat_grad[...] = g
        opt.step()
    saved_state, saved_params = opt.state_dict(), opt.flat_param.copy()
    for g in grads[2:]:
        opt.flat_grad[...] = g
        opt.step()
    want = opt.flat_param.copy()
    params2 = [fnn.nn.Parameter(p.data.copy()) for p in params]
    opt2 = fnn.optim.Adam(params2, lr=0.01)
    opt2.flat_param[...] = saved_params
    opt2.load_state_dict(saved_state)
    for g in grads[2:]:
        opt2.flat_grad[...] = g
        opt2.step()
    np.testing.assert_array_equal(opt2.flat_param, want)


def test_bad_hyperparameters(rng):
    params = _params(rng, np.float32)
    with pytest.raises(ValueError, match="lr"):
        fnn.optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="lr"):
        fnn.optim.Adam(_params(rng, np.float32), lr=float("nan"))
    with pytest.raises(ValueError, match="betas"):
        fnn.optim.Adam(_params(rng, np.float32), betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov"):
        fnn.optim.SGD(_params(rng, np.float32), nesterov=True)
    mixed = [fnn.nn.Parameter(np.zeros(3, np.float32)), fnn.nn.Parameter(np.zeros(3, np.float64))]
    with pytest.raises(TypeError, match="dtype"):
        fnn.optim.SGD(mixed)


@pytest.mark.parametrize("sched,values", [
    (fnn.schedules.StepDecay(step_size=2, gamma=0.5), [1, 1, 0.5, 0.5, 0.25]),
    (fnn.schedules.ExponentialDecay(k=0.5), [np.exp(-0.5 * t) for t in range(5)]),
    (fnn.schedules.InverseTimeDecay(k=1.0), [1 / (1 + t) for t in range(5)]),
    (fnn.schedules.CosineAnnealing(t_max=4), [1, (1 + np.cos(np.pi / 4)) / 2, 0.5, (1 + np.cos(3 * np.pi / 4)) / 2, 0]),
    (fnn.schedules.CyclicLR(0.0, 1.0, step_size=2), [0, 0.5, 1, 0.5, 0]),
    (fnn.schedules.Warmup(fnn.schedules.Constant(), steps=2, start_factor=0.5), [0.5, 0.75, 1, 1, 1]),
    (fnn.schedules.CosineWarmRestarts(t_0=2), [1, 0.5, 1, 0.5, 1]),
])
def test_schedules(sched, values):
    np.testing.assert_allclose([sched(t, 1.0) for t in range(5)], values, atol=1e-12)


def test_reduce_on_plateau():
    s = fnn.schedules.ReduceOnPlateau(factor=0.5, patience=1)
    for metric in [1.0, 0.9, 0.95, 0.96, 0.97]:
        s.observe(metric)
    assert s(0, 1.0) == 0.5
