"""Babysitting tools: each test fails if the diagnostic lies (a broken model
must be flagged, a healthy one must pass).

Diagnostics only compose the ops (they never branch on the backend), so these
tests run once, on the default backend; the suite is repeated with
FASTNN_BACKEND=numba."""
import math

import numpy as np
import pytest

import fastnn as fnn
from fastnn import diagnostics as D


def _mlp(seed=0, dtype=np.float32, act="relu", hidden=32, init="auto"):
    return fnn.nn.Sequential(fnn.nn.Linear(64, hidden, activation=act, init=init, dtype=dtype, rng=seed),
                             fnn.nn.Linear(hidden, 10, init=init, dtype=dtype, rng=seed + 1))


@pytest.fixture(scope="module")
def digits():
    return fnn.data.load_digits()


def test_check_initial_loss_passes_sane_init_and_flags_huge_weights(digits):
    X, y = digits
    loss = fnn.losses.SoftmaxCrossEntropy()
    good = D.check_initial_loss(_mlp(0), loss, X, y)
    assert good["expected"] == pytest.approx(math.log(10))
    assert good["ok"] and good["hint"] == ""
    big = _mlp(0, init=lambda shape, rng=None, dtype=np.float32: fnn.init.normal(shape, 1.0, rng, dtype))
    before = big.state_dict()
    bad = D.check_initial_loss(big, loss, X, y)
    assert not bad["ok"] and bad["loss"] > 3 * math.log(10)
    assert "too large" in bad["hint"] and "regularization" in bad["hint"]
    for k, v in big.state_dict().items():      # evaluated without changing the model
        np.testing.assert_array_equal(v, before[k])
    assert big.training


def test_check_initial_loss_flags_a_loss_below_chance(digits):
    X, y = digits
    model = _mlp(0)
    model[-1].weight.data[...] = 0
    model[-1].bias.data[...] = -20.0
    model[-1].bias.data[0] = 20.0               # "knows" the answer is class 0 ...
    res = D.check_initial_loss(model, fnn.losses.SoftmaxCrossEntropy(), X[y == 0], y[y == 0])
    assert not res["ok"] and res["loss"] < 0.1 and "below" in res["hint"]


def test_overfit_small_reaches_100_percent_and_catches_a_frozen_model(digits):
    X, y = digits
    res = D.overfit_small(lambda: _mlp(0, hidden=64), X, y, epochs=100, n=20)
    assert res["train_acc"] == 1.0 and res["ok"] and res["final_loss"] < 0.05
    # A "model" that cannot learn (all weights frozen) must fail the check.
    res = D.overfit_small(lambda: _mlp(0, hidden=64).freeze(), X, y, epochs=50, n=20)
    assert not res["ok"] and res["train_acc"] < 0.5


def test_gradient_check_passes_correct_backward_and_catches_a_broken_one(digits, monkeypatch):
    X, y = digits
    X, y = X[:12].astype(np.float64), y[:12]
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 16, activation="tanh", dtype=np.float64, rng=0),
                              fnn.nn.Linear(16, 12, dtype=np.float64, rng=1), fnn.nn.Sigmoid(),
                              fnn.nn.Linear(12, 10, dtype=np.float64, rng=2))
    loss = fnn.losses.SoftmaxCrossEntropy()
    res = D.gradient_check(model, loss, X, y, n_checks=8)
    assert res["ok"], res
    assert set(res["errors"]) == {f"{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    assert res["max_error"] < 1e-6
    before = model.state_dict()
    # Break the weight gradient of the middle (fused Linear+Sigmoid) layer only.
    middle = model[1]
    original = middle.backward_fused

    def broken(dout):
        dx, dalpha = original(dout)
        middle.weight.grad[...] *= 1.5
        return dx, dalpha

    monkeypatch.setattr(middle, "backward_fused", broken)
    res = D.gradient_check(model, loss, X, y, n_checks=8)
    assert not res["ok"]
    assert res["errors"]["1.weight"] > 0.1
    assert res["errors"]["0.weight"] < 1e-6 and res["errors"]["3.weight"] < 1e-6
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_activation_stats_per_plan_step_dead_and_saturated(digits):
    X, _ = digits
    model = fnn.nn.Sequential(
        fnn.nn.Linear(64, 32, rng=0), fnn.nn.ReLU(),                 # fused by Sequential
        fnn.nn.Linear(32, 32, activation="tanh", rng=1),             # own activation
        fnn.nn.Linear(32, 32, rng=2), fnn.nn.Dropout(0.5),           # no nonlinearity: not reported
        fnn.nn.Sigmoid(),                                            # standalone activation layer
        fnn.nn.Linear(32, 10, rng=3))
    stats = D.activation_stats(model, X)
    assert [s["activation"] for s in stats] == ["relu", "tanh", "sigmoid"]
    assert stats[0]["name"] == "0-1:Linear+ReLU"
    # Same numbers as a hand-run forward pass.
    z = X @ model[0].weight.data + model[0].bias.data
    h = np.maximum(z, 0)
    assert stats[0]["mean"] == pytest.approx(h.mean(), rel=1e-4)
    assert stats[0]["std"] == pytest.approx(h.std(), rel=1e-4)
    assert stats[0]["dead"] == pytest.approx(np.mean(h == 0), abs=1e-3)
    t = np.tanh(h @ model[2].weight.data)
    assert stats[1]["saturated"] == pytest.approx(np.mean(np.abs(t) > 0.99), abs=1e-3)
    assert stats[1]["dead"] is None and stats[0]["saturated"] is None
    # A large negative bias kills the ReLU; large biases saturate tanh and sigmoid.
    model[0].bias.data[...] = -100.0
    model[2].bias.data[...] = 5.0
    model[3].bias.data[...] = 50.0
    stats = D.activation_stats(model, X)
    assert stats[0]["dead"] == 1.0 and stats[0]["std"] == 0.0
    assert stats[1]["saturated"] == 1.0
    assert stats[2]["saturated"] == 1.0
    assert D.dead_relu_fraction(model, X) == {"0-1:Linear+ReLU": 1.0}


def test_dead_relu_fraction_counts_units_dead_for_every_example(digits):
    X, _ = digits
    model = _mlp(0, hidden=40)
    frac = D.dead_relu_fraction(model, X)
    assert list(frac) == ["0:Linear"] and frac["0:Linear"] < 0.2
    model[0].bias.data[:10] = -1000.0           # exactly 10 of 40 units dead
    assert D.dead_relu_fraction(model, X)["0:Linear"] == pytest.approx(10 / 40)


def test_plot_activation_stats(tmp_path, digits):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    X, _ = digits
    model = _mlp(0, act="tanh")
    D.plot_activation_stats(model, X[:200], tmp_path / "a.png")
    D.plot_activation_stats(D.activation_stats(model, X[:200]), path=tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def _fit_with_monitor(opt_factory, epochs=2, **kw):
    X, y = fnn.data.load_digits()
    model = _mlp(0)
    opt = opt_factory(model)
    mon = D.UpdateRatioMonitor(**kw)
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, callbacks=[mon], seed=0).fit(
        X[:512], y[:512], epochs=epochs, batch_size=128, progress=False)
    return model, mon


def test_update_ratio_monitor_matches_hand_computed_sgd_step():
    X, y = fnn.data.load_digits()
    model = _mlp(0)
    w0 = model[0].weight.data.copy()
    loss = fnn.losses.SoftmaxCrossEntropy()
    # The SGD update is lr * grad: recompute the first step's gradient by hand.
    loss.forward(model.forward(X[:64]), y[:64])
    model.backward(loss.backward())
    expected = 0.05 * np.linalg.norm(model[0].weight.grad) / np.linalg.norm(w0)
    mon = D.UpdateRatioMonitor()
    trainer = fnn.Trainer(model, loss, fnn.optim.SGD(model.parameters(), lr=0.05), callbacks=[mon])
    mon.on_train_begin(trainer)
    trainer.train_step(X[:64], y[:64])
    mon.on_step_end(trainer, 1, 0.0)
    assert mon.ratios["0.weight"][0] == pytest.approx(expected, rel=1e-4)
    assert set(mon.ratios) == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_update_ratio_monitor_warns_for_bad_learning_rates_only():
    _, mon = _fit_with_monitor(lambda m: fnn.optim.Adam(m.parameters(), lr=1e-3))
    ratios = mon.summary()
    assert 1e-4 < ratios["0.weight"] < 1e-1 and not mon.warned
    assert all(len(v) == 2 * 4 for v in mon.ratios.values())
    with pytest.warns(RuntimeWarning, match="too large"):
        _, mon = _fit_with_monitor(lambda m: fnn.optim.SGD(m.parameters(), lr=50.0), epochs=1)
    assert mon.warned
    with pytest.warns(RuntimeWarning, match="too small") as rec:
        _, mon = _fit_with_monitor(lambda m: fnn.optim.SGD(m.parameters(), lr=1e-7), epochs=3)
    assert mon.warned == {"0.weight", "1.weight"} and len(rec) == 2     # once per parameter


@pytest.mark.parametrize("init, act, check", [
    ("small_random", "tanh", lambda s: s[-1] < 1e-4),                   # collapses to 0
    ("normal", "tanh", lambda s: s[-1] > 0.95),                         # saturated at +-1
    ("xavier_normal", "tanh", lambda s: 0.15 < s[-1] < 0.6 and s[-1] < s[0]),
    ("he_normal", "relu", lambda s: 0.5 < s[-1] < 1.5),
    ("xavier_normal", "relu", lambda s: s[-1] < 0.1),                   # Xavier halves ReLU variance per layer
])
def test_init_experiment_reproduces_the_lecture(init, act, check):
    stds = D.init_experiment(init, act, layers=10, width=200, n=300)
    assert len(stds) == 10 and check(stds), stds


def test_lsuv_gives_unit_variance_outputs(digits):
    X, _ = digits
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 64, activation="tanh", init="small_random", rng=0),
                              fnn.nn.Linear(64, 64, init="small_random", rng=1), fnn.nn.ReLU(),
                              fnn.nn.Linear(64, 10, init="small_random", rng=2))
    fnn.init.lsuv(model, X[:500], tol=0.05)
    x = X[:500]
    for layer, act in model._plan:             # linear outputs of every layer: variance ~1
        z = x @ layer.weight.data + layer.bias.data
        assert abs(z.var() - 1.0) < 0.05
        x = layer.forward_fused(x, act.name, act.alpha_value) if act else layer.forward(x)
    w = model[0].weight.data                   # orthogonal up to scale
    gram = w.T @ w
    np.testing.assert_allclose(gram / gram[0, 0], np.eye(64), atol=1e-4)


def test_transfer_learning_example_runs():
    import os
    import subprocess
    import sys
    path = os.path.join(os.path.dirname(__file__), "..", "examples", "transfer_learning.py")
    out = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fine-tuned" in out.stdout and "from scratch" in out.stdout
