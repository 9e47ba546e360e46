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
    # divergence_factor=None: lr=50 makes the loss explode, which would stop the run
    # (TrainingDiverged) before the monitor's end-of-epoch warning this test is about.
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, callbacks=[mon], seed=0, divergence_factor=None).fit(
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
    for layer, act in model.steps():           # linear outputs of every layer: variance ~1
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


# --- issue 16: gradient_check on float32 models, misuse messages ----------------------

class _HalfWrongLinear(fnn.nn.Linear):
    """A Linear whose weight gradient is 1.5x too large (a backward bug to catch)."""

    def backward_fused(self, dout):
        dx, dalpha = super().backward_fused(dout)
        self.weight.grad[...] *= 1.5
        return dx, dalpha


def test_gradient_check_on_a_float32_model_runs_in_float64_on_a_copy(digits):
    X, y = digits
    X, y = X[:12], y[:12]
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 16, activation="tanh", rng=0), fnn.nn.BatchNorm1d(16),
                              fnn.nn.Dropout(0.3, seed=1), fnn.nn.Linear(16, 10, rng=1))
    model.train()
    loss = fnn.losses.SoftmaxCrossEntropy()
    before = model.state_dict()
    # In float32 itself, eps=1e-6 is below the loss's resolution: every error reads ~1, and the result says why.
    own = D.gradient_check(model, loss, X, y, dtype=None)
    assert own["dtype"] == "float32" and not own["converted"] and not own["ok"] and own["max_error"] > 0.5
    assert "float64" in own["hint"] and "dtype=np.float64" in own["hint"]
    for training in (False, True):              # eval mode, and training mode with the dropout mask held fixed
        res = D.gradient_check(model, loss, X, y, training=training)
        assert res["ok"] and res["max_error"] < 1e-6, res
        assert res["dtype"] == "float64" and res["converted"] and res["hint"] == ""
        assert set(res["errors"]) == {f"{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    # The model itself is untouched: still float32, same weights/buffers/streams, still in training mode.
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert model.training and model[1].running_mean.dtype == np.float32
    # The copy runs the model's own code, so a wrong backward in a float32 model is caught.
    broken = fnn.nn.Sequential(fnn.nn.Linear(64, 16, activation="tanh", rng=0), _HalfWrongLinear(16, 10, rng=1))
    res = D.gradient_check(broken, loss, X, y)
    assert not res["ok"] and res["errors"]["1.weight"] > 0.1 and res["errors"]["0.weight"] < 1e-6


def test_gradient_check_holds_every_stochastic_layer_fixed_in_training_mode():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 2, 6, 6))
    y = rng.integers(0, 3, 6)
    block = fnn.nn.Sequential(fnn.nn.Conv2d(2, 2, 3, padding=1, activation="tanh", dtype=np.float64, rng=1))
    model = fnn.nn.Sequential(fnn.nn.Residual(block, survival_prob=0.7, seed=2),
                              fnn.nn.FractionalMaxPool2d(output_size=4, seed=3), fnn.nn.Flatten(),
                              fnn.nn.DropConnect(32, 3, p=0.3, dtype=np.float64, rng=4, seed=5))
    states = [m.get_rng_state() for m in model.modules() if getattr(m, "stochastic", False)]
    res = D.gradient_check(model, fnn.losses.SoftmaxCrossEntropy(), X, y, training=True, n_checks=6)
    assert res["ok"] and res["max_error"] < 1e-6, res
    after = [m.get_rng_state() for m in model.modules() if getattr(m, "stochastic", False)]
    assert repr(after) == repr(states)          # streams left where they were


def test_diagnostics_say_what_to_pass_when_misused(digits):
    X, y = digits
    loss = fnn.losses.SoftmaxCrossEntropy()
    model = _mlp(0)
    with pytest.raises(TypeError, match=r"overfit_small needs build, a function returning a fresh model "
                                        r"\(e\.g\. lambda: make_model\(\)\), got a Sequential"):
        D.overfit_small(model, X, y)
    with pytest.raises(TypeError, match="overfit_small needs build.*got int"):
        D.overfit_small(3, X, y)
    with pytest.raises(TypeError, match="build\\(\\) must return a fastnn Module, got NoneType"):
        D.overfit_small(lambda: None, X, y, epochs=1)
    # The other diagnostics take the model itself: a factory gets the message the other way round.
    for call, usage in [(lambda m: D.check_initial_loss(m, loss, X, y), "check_initial_loss(model, loss, X, y)"),
                        (lambda m: D.gradient_check(m, loss, X, y), "gradient_check(model, loss, X, y)"),
                        (lambda m: D.gradient_stats(m, X, y, loss), "gradient_stats(model, X, y, loss)"),
                        (lambda m: D.activation_stats(m, X), "activation_stats(model, X)"),
                        (lambda m: D.dead_relu_fraction(m, X), "dead_relu_fraction(model, X)")]:
        with pytest.raises(TypeError, match="needs model, a fastnn Module \\(the model itself\\), got a function "
                                            "\\(_mlp\\): call it") as exc:
            call(_mlp)
        assert usage in str(exc.value)
        with pytest.raises(TypeError, match="got the class Sequential: build the model first"):
            call(fnn.nn.Sequential)
    # A loss class instead of an instance, and arguments in another diagnostic's order.
    with pytest.raises(TypeError, match="an instance, with parentheses"):
        D.check_initial_loss(model, fnn.losses.SoftmaxCrossEntropy, X, y)
    with pytest.raises(TypeError, match=r"X must be a numpy.ndarray .*got SoftmaxCrossEntropy; the arguments are "
                                        r"gradient_stats\(model, X, y, loss\)"):
        D.gradient_stats(model, loss, X, y)
    with pytest.raises(TypeError, match=r"needs loss, a loss object .*got ndarray; the arguments are "
                                        r"gradient_check\(model, loss, X, y\)"):
        D.gradient_check(model, X, y, loss)


# --- issue 18 item 11: gradient statistics ------------------------------------------------

def test_gradient_stats_match_a_manual_backward_and_leave_the_model_as_found(digits):
    X, y = digits
    X, y = X[:64], y[:64]
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 32, rng=0), fnn.nn.BatchNorm1d(32), fnn.nn.ReLU(),
                              fnn.nn.Dropout(0.4, seed=7), fnn.nn.Linear(32, 10, rng=1))
    model.eval()
    loss = fnn.losses.SoftmaxCrossEntropy()
    for p in model.parameters():
        p.grad[...] = 123.0                     # must survive the call
    before = model.state_dict()
    stats = D.gradient_stats(model, X, y, loss, bins=20)
    assert list(stats) == [name for name, _ in model.named_parameters()]
    assert not model.training
    for k, v in model.state_dict().items():    # weights, BN running statistics, dropout stream
        np.testing.assert_array_equal(v, before[k])
    assert all((p.grad == 123.0).all() for p in model.parameters())
    # The same pass by hand, in training mode (same dropout stream position, so the same mask).
    model.train()
    loss.forward(model.forward(X), y)
    model.backward(loss.backward())
    for name, p in model.named_parameters():
        g = p.grad.astype(np.float64)
        s = stats[name]
        assert s["shape"] == p.data.shape
        assert s["mean"] == pytest.approx(g.mean(), rel=1e-6, abs=1e-12)
        assert s["std"] == pytest.approx(g.std(), rel=1e-6)
        assert s["abs_max"] == pytest.approx(np.abs(g).max(), rel=1e-6)
        assert s["norm"] == pytest.approx(np.linalg.norm(g), rel=1e-6)
        counts, edges = s["hist"]
        assert len(counts) == 20 and len(edges) == 21
        assert counts.sum() == p.data.size and s["nonfinite"] == 0
        np.testing.assert_array_equal(counts, np.histogram(g, bins=20)[0])
    w = model[4].weight
    assert stats["4.weight"]["ratio"] == pytest.approx(np.linalg.norm(w.grad) / np.linalg.norm(w.data), rel=1e-5)
    assert stats["4.bias"]["ratio"] is None    # zero-initialized biases: no ratio


def test_gradient_stats_show_vanishing_gradients_in_a_deep_tanh_net(digits):
    X, y = digits

    def stats(init):
        layers = [fnn.nn.Linear(64, 64, activation="tanh", init=init, rng=i) for i in range(6)]
        model = fnn.nn.Sequential(*layers, fnn.nn.Linear(64, 10, init=init, rng=9))
        return D.gradient_stats(model, X[:200], y[:200], fnn.losses.SoftmaxCrossEntropy())

    # The lecture's small-init tanh net: the backpropagated signal (the bias gradients, sum of dz) shrinks
    # geometrically towards the input, and every weight gradient (x.T @ dz) is tiny.
    small, xavier = stats("small_random"), stats("xavier_normal")
    small_b = [small[f"{i}.bias"]["std"] for i in range(7)]
    assert all(a < 0.2 * b for a, b in zip(small_b, small_b[1:])) and small_b[0] < 1e-6 * small_b[-1]
    xavier_b = [xavier[f"{i}.bias"]["std"] for i in range(7)]
    assert max(xavier_b) < 3 * min(xavier_b)   # Xavier keeps the gradient scale from layer to layer
    for i in range(7):
        assert small[f"{i}.weight"]["std"] < 1e-4 * xavier[f"{i}.weight"]["std"]


def test_plot_gradient_stats(tmp_path, digits, monkeypatch):
    X, y = digits
    model = _mlp(0)
    loss = fnn.losses.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="X, y and loss are required"):
        D.plot_gradient_stats(model, X[:50])
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)      # as if not installed
    with pytest.raises(ImportError, match="plot_gradient_stats needs matplotlib.*pip install matplotlib"):
        D.plot_gradient_stats(D.gradient_stats(model, X[:50], y[:50], loss), path=tmp_path / "x.png")
    monkeypatch.undo()
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    D.plot_gradient_stats(model, X[:100], y[:100], loss, path=tmp_path / "a.png")
    D.plot_gradient_stats(D.gradient_stats(model, X[:100], y[:100], loss), path=tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_plot_helpers_name_what_they_take(digits):
    X, _ = digits
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    with pytest.raises(TypeError, match="stats must be activation_stats' list or a fastnn Module, got function"):
        D.plot_activation_stats(_mlp, X)
    with pytest.raises(TypeError, match="stats must be gradient_stats' dict or a fastnn Module, got function"):
        D.plot_gradient_stats(_mlp)
