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


OPTIONS = [dict(), dict(weight_decay=0.05), dict(l1=0.01), dict(weight_decay=0.05, l1=0.01),
           dict(clip_grad_norm=1.0), dict(max_norm=0.8)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("rule,cls,hyper", [
    ("sgd", fnn.optim.SGD, dict(lr=0.05)), ("momentum", fnn.optim.SGD, dict(lr=0.02, momentum=0.9)),
    ("nesterov", fnn.optim.SGD, dict(lr=0.02, momentum=0.9, nesterov=True)),
    ("adagrad", fnn.optim.Adagrad, dict(lr=0.05)), ("rmsprop", fnn.optim.RMSProp, dict(lr=0.005)),
    ("adam", fnn.optim.Adam, dict(lr=0.01)), ("adamw", fnn.optim.AdamW, dict(lr=0.01))])
def test_forty_step_golden_trajectories(backend, rng, dtype, options, rule, cls, hyper):
    shapes = ((7, 3), (3,), (1,), (13, 17), (5, 1))
    params = _params(rng, dtype, shapes)
    start = np.concatenate([p.data.ravel() for p in params]).astype(np.float64)
    opt = cls(params, **hyper, **options)
    grads = [rng.standard_normal(start.size) * 0.5 for _ in range(40)]
    h = {k: v for k, v in {**hyper, **options}.items() if k not in ("lr", "nesterov", "clip_grad_norm", "max_norm")}
    if rule == "adamw" and "weight_decay" not in options:
        h["weight_decay"] = 1e-2
    offsets = np.concatenate([[0], np.cumsum([int(np.prod(s)) for s in shapes])])
    matrices = [(offsets[i], s[0], s[1]) for i, s in enumerate(shapes) if len(s) == 2]
    ref = oracle.optim_reference(rule, start, grads, hyper["lr"], clip=options.get("clip_grad_norm"),
                                 max_norm=options.get("max_norm"), matrices=matrices, **h)
    worst = 0.0
    for g, want in zip(grads, ref):
        opt.flat_grad[...] = g
        opt.step()
        worst = max(worst, rel_err(opt.flat_param, want))
    assert worst < (2e-5 if dtype == np.float32 else 1e-11), (rule, options, worst)
    if "max_norm" in options:
        for off, r, c in matrices:
            w = opt.flat_param[off:off + r * c].reshape(r, c).astype(np.float64)
            assert np.sqrt((w * w).sum(0)).max() <= 0.8 * (1 + 1e-5)


def test_segments_merge_groups_and_frozen_runs(rng):
    params = _params(rng, np.float32, ((3, 2), (2,), (2, 2), (2,)))
    opt = fnn.optim.SGD([{"params": params[:2]}, {"params": params[2:], "lr": 0.1}], lr=0.01)
    assert opt._segments().tolist() == [0, 8, 14]
    params[1].trainable = False
    assert opt._segments().tolist() == [0, 6, 8, 14]


def test_lbfgs_minimizes_rosenbrock():
    xy = fnn.nn.Parameter(np.array([-1.5, 2.0]), "xy")
    opt = fnn.optim.LBFGS([xy], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        x, y = xy.data
        xy.grad[...] = [-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)]
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2

    opt.step(closure)
    np.testing.assert_allclose(xy.data, [1.0, 1.0], atol=1e-6)
    assert opt.n_evals < 400


def test_lbfgs_fits_a_model_full_batch(rng):
    X, y = fnn.data.make_spiral(40, 3, seed=0)
    X = X.astype(np.float64)
    model = fnn.nn.Sequential(fnn.nn.Linear(2, 32, activation="tanh", dtype=np.float64, rng=0),
                              fnn.nn.Linear(32, 3, dtype=np.float64, rng=1))
    loss_fn = fnn.losses.SoftmaxCrossEntropy()
    opt = fnn.optim.LBFGS(model.parameters(), max_iter=100)

    def closure():
        loss = loss_fn.forward(model.forward(X), y)
        model.backward(loss_fn.backward())
        return loss

    first = opt.step(closure)
    final = loss_fn.forward(model.forward(X), y)
    assert final < 0.5 * first


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
    with pytest.raises(ValueError, match="eps"):
        fnn.optim.Adam(_params(rng, np.float32), eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        fnn.optim.RMSProp(_params(rng, np.float32), eps=-1e-8)
    with pytest.raises(ValueError, match="betas"):
        fnn.optim.Adam(_params(rng, np.float32), betas=(-0.1, 0.9))
    with pytest.raises(ValueError, match="max_norm"):
        fnn.optim.SGD(_params(rng, np.float32), max_norm=0.0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        fnn.optim.Adam(_params(rng, np.float32), clip_grad_norm=-1.0)
    with pytest.raises(ValueError, match="unknown options"):
        fnn.optim.SGD([{"params": _params(rng, np.float32), "betas": (0.9, 0.9)}])
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
