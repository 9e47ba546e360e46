"""Issue 18, the layer and Trainer items: each technique of the "Training Neural
Networks" lectures run the way the notes use it.

Item 3 (resume bit for bit with stochastic depth and fractional pooling),
4 (L-BFGS through Trainer), 5 (init="auto" through Sequential), 6 (bias_init),
7 (exploding loss), 8 (regularization penalty reported), 14 (a frozen
BatchNorm keeps its statistics), 17 (per-channel PReLU), and Step exported.
Run on every backend: FASTNN_BACKEND=numba pytest tests/test_lectures.py too.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn.train import regularization_loss


@pytest.fixture(scope="module")
def digits():
    return fnn.data.load_digits()


def _mlp(seed=0, hidden=64, dropout=0.0, dtype=np.float32):
    fnn.manual_seed(seed)
    layers = [fnn.nn.Linear(64, hidden, dtype=dtype), fnn.nn.ReLU()]
    if dropout:
        layers.append(fnn.nn.Dropout(dropout))
    return fnn.nn.Sequential(*layers, fnn.nn.Linear(hidden, 10, dtype=dtype))


# --- item 3: resume is bit-exact for every random layer ------------------------------------

def _stochastic_convnet():
    block = fnn.nn.Sequential(fnn.nn.Conv2d(4, 4, 3, padding=1, rng=2), fnn.nn.ReLU())
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(1, 4, 3, padding=1, rng=1), fnn.nn.ReLU(),
        fnn.nn.Residual(block, survival_prob=0.5, seed=3),
        fnn.nn.FractionalMaxPool2d(output_size=5, seed=4),
        fnn.nn.Flatten(), fnn.nn.Linear(100, 10, rng=5))


def _convnet_trainer(model):
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=3e-3), seed=0)


def test_resume_is_bit_exact_with_stochastic_depth_and_fractional_pooling(tmp_path):
    X, y = fnn.data.load_digits(flatten=False)
    X, y = X[:320], y[:320]
    whole = _convnet_trainer(_stochastic_convnet())
    full = whole.fit(X, y, epochs=4, batch_size=32, progress=False)

    first = _convnet_trainer(_stochastic_convnet())
    first.fit(X, y, epochs=2, batch_size=32, progress=False)
    first.save_checkpoint(tmp_path / "ckpt.npz")
    state = first.model.state_dict()
    assert {"2.rng_state", "3.rng_state"} <= set(state)   # the streams are part of the state

    resumed = _convnet_trainer(_stochastic_convnet())
    resumed.load_checkpoint(tmp_path / "ckpt.npz")
    for name in ("2.rng_state", "3.rng_state"):
        np.testing.assert_array_equal(resumed.model.state_dict()[name], state[name])
    again = resumed.fit(X, y, epochs=4, batch_size=32, progress=False)
    assert again.loss == full.loss
    for name, value in whole.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[name], value, err_msg=name)

    # The streams mattered: blocks were skipped and kept, and a resume that restarts
    # the two streams from their seeds (the old behaviour) does not match.
    res, pool = resumed.model[2], resumed.model[3]
    assert res.survival_prob == 0.5
    control = _convnet_trainer(_stochastic_convnet())
    control.load_checkpoint(tmp_path / "ckpt.npz")
    control.model[2].reseed(3)
    control.model[3].reseed(4)
    control.fit(X, y, epochs=4, batch_size=32, progress=False)
    assert control.history.loss[:len(full.loss) // 2] == full.loss[:len(full.loss) // 2]
    assert control.history.loss != full.loss
    assert isinstance(pool.last_offsets, tuple)


def test_stream_state_survives_save_and_load(tmp_path):
    res = fnn.nn.Residual(fnn.nn.Sequential(fnn.nn.Linear(4, 4, rng=0)), survival_prob=0.5, seed=7)
    pool = fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=8)
    x = np.random.default_rng(0).standard_normal((2, 1, 10, 10)).astype(np.float32)
    for _ in range(3):
        res.forward(np.ones((2, 4), np.float32))
        pool.forward(x)
    model = fnn.nn.Sequential(res, fnn.nn.Flatten())
    model.save(tmp_path / "m.npz")
    back = fnn.nn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back[0].rng_state, res.rng_state)
    # Same stream: the next draws agree (PCG64 seeded by default_rng(seed), as before).
    expected = np.random.default_rng(7).random(4)[3]
    assert back[0]._random() == expected == res._random()
    p2 = fnn.nn.FractionalMaxPool2d(output_ratio=0.7, seed=1)
    p2.load_state_dict(pool.state_dict())
    np.testing.assert_array_equal(p2.forward(x), pool.forward(x))
    assert p2.last_offsets == pool.last_offsets


# --- item 4: L-BFGS through Trainer ---------------------------------------------------------

def test_lbfgs_through_trainer_fits_logistic_regression_full_batch(digits):
    X, y = digits
    X = X.astype(np.float64)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 10, dtype=np.float64, rng=0))
    opt = fnn.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    hist = trainer.fit(X, y, epochs=5, batch_size=len(X), progress=False)
    assert len(hist.loss) == 5 and trainer.step_count == 5
    # One L-BFGS step (up to 20 iterations) per epoch: the loss at the start of each.
    assert all(b <= a for a, b in zip(hist.loss, hist.loss[1:])) and hist.loss[1] < 0.1 * hist.loss[0]
    assert hist.loss[0] == pytest.approx(np.log(10), rel=0.2)
    assert trainer.evaluate(X, y)["loss"] < 1e-3 and hist.train_acc[-1] == 1.0     # digits are separable
    assert opt.n_evals > 5                                                 # the closure was called many times

    # The same as driving LBFGS by hand with the closure of the notes.
    ref = fnn.nn.Sequential(fnn.nn.Linear(64, 10, dtype=np.float64, rng=0))
    ref_opt = fnn.optim.LBFGS(ref.parameters(), line_search_fn="strong_wolfe")
    loss_fn = fnn.losses.SoftmaxCrossEntropy()

    def closure():
        loss = loss_fn.forward(ref.forward(X), y)
        ref.backward(loss_fn.backward())
        return loss

    by_hand = [ref_opt.step(closure) for _ in range(5)]
    np.testing.assert_allclose(hist.loss, by_hand, rtol=1e-12)
    for a, b in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-9, atol=1e-12)


def test_lbfgs_refuses_mini_batches_and_stops_on_nan(digits):
    X, y = digits
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 10, rng=0))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.LBFGS(model.parameters()))
    with pytest.raises(ValueError, match=r"batch_size \(128\) is smaller than X \(1797 rows\).*full-batch"):
        trainer.fit(X, y, epochs=1, progress=False)

    class NaNAfter(fnn.losses.SoftmaxCrossEntropy):
        """Softmax cross-entropy whose 4th and later evaluations are NaN."""
        calls = 0

        def forward(self, scores, y):
            NaNAfter.calls += 1
            loss = super().forward(scores, y)
            return float("nan") if NaNAfter.calls >= 4 else loss

    start = model.state_dict()
    trainer = fnn.Trainer(model, NaNAfter(), fnn.optim.LBFGS(model.parameters()), divergence_factor=None)
    with pytest.raises(fnn.TrainingDiverged, match=r"loss became nan at epoch 1, step 1.*restored"):
        trainer.fit(X, y, epochs=3, batch_size=len(X), progress=False)
    assert NaNAfter.calls == 4                   # inside the first L-BFGS step
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, start[name])


# --- item 5: init="auto" through Sequential -------------------------------------------------

def _deep(act, n=10, width=500, **kw):
    layers = []
    for _ in range(n):
        layers += [fnn.nn.Linear(width, width, **kw), act()]
    return fnn.nn.Sequential(*layers)


def test_auto_init_through_sequential_keeps_relu_activations_alive():
    x = np.random.default_rng(0).standard_normal((200, 500)).astype(np.float32)
    fnn.manual_seed(0)
    relu_net = _deep(fnn.nn.ReLU)
    assert float(relu_net(x).std()) > 0.3            # Xavier collapses to ~0.03 after 10 layers
    for layer in relu_net.layers[::2]:
        assert abs(layer.weight.data.std() - np.sqrt(2 / 500)) < 0.03 * np.sqrt(2 / 500)
    fnn.manual_seed(0)
    xavier_net = _deep(fnn.nn.ReLU, init="xavier_normal")   # an explicit init is never overridden
    assert float(xavier_net(x).std()) < 0.1
    assert abs(xavier_net[0].weight.data.std() - np.sqrt(1 / 500)) < 0.03 * np.sqrt(1 / 500)
    fnn.manual_seed(0)
    tanh_net = _deep(fnn.nn.Tanh, n=2)                 # tanh keeps Xavier
    assert abs(tanh_net[0].weight.data.std() - np.sqrt(1 / 500)) < 0.03 * np.sqrt(1 / 500)


def test_auto_init_matches_the_layers_own_activation_and_is_reproducible():
    for act, kw in [(fnn.nn.ReLU, "relu"), (fnn.nn.LeakyReLU, "leaky_relu"), (fnn.nn.ELU, "elu"),
                    (fnn.nn.GELU, "gelu"), (fnn.nn.Swish, "swish"), (fnn.nn.SELU, "selu"),
                    (fnn.nn.Tanh, "tanh"), (fnn.nn.Sigmoid, "sigmoid")]:
        fnn.manual_seed(3)
        seq = fnn.nn.Sequential(fnn.nn.Linear(40, 30), act(), fnn.nn.Linear(30, 5))
        after = fnn._random.generator().integers(2**62)
        fnn.manual_seed(3)
        own = fnn.nn.Linear(40, 30, activation=kw)
        last = fnn.nn.Linear(30, 5)
        assert fnn._random.generator().integers(2**62) == after         # the global stream moved the same way
        np.testing.assert_array_equal(seq[0].weight.data, own.weight.data, err_msg=kw)
        np.testing.assert_array_equal(seq[2].weight.data, last.weight.data)   # last layer: Xavier
    # SELU: LeCun normal, std 1/sqrt(fan_in).
    w = fnn.nn.Sequential(fnn.nn.Linear(400, 300, rng=0), fnn.nn.SELU())[0].weight.data
    assert abs(w.std() - np.sqrt(1 / 400)) < 0.02 * np.sqrt(1 / 400)
    # Looking past BatchNorm and Dropout; a Conv2d; an int seed.
    seq = fnn.nn.Sequential(fnn.nn.Linear(40, 30, rng=1), fnn.nn.BatchNorm1d(30), fnn.nn.Dropout(0.1),
                            fnn.nn.ReLU())
    np.testing.assert_array_equal(seq[0].weight.data, fnn.init.he_normal((40, 30), rng=1))
    conv = fnn.nn.Sequential(fnn.nn.Conv2d(3, 8, 3, rng=2), fnn.nn.ReLU())[0]
    np.testing.assert_array_equal(conv.weight.data, fnn.init.he_normal((8, 3, 3, 3), rng=2))
    # A saved model rebuilds with the same architecture and weights.
    fnn.manual_seed(5)
    net = fnn.nn.Sequential(fnn.nn.Linear(8, 6), fnn.nn.ReLU(), fnn.nn.Linear(6, 2))
    fnn.manual_seed(5)
    twin = fnn.nn.Sequential(fnn.nn.Linear(8, 6), fnn.nn.ReLU(), fnn.nn.Linear(6, 2))
    for a, b in zip(net.parameters(), twin.parameters()):
        np.testing.assert_array_equal(a.data, b.data)


def test_auto_init_never_touches_weights_set_or_trained_or_already_placed():
    layer = fnn.nn.Linear(20, 10, rng=0)
    layer.weight.data[...] = 0.5                     # set by hand: kept
    fnn.nn.Sequential(layer, fnn.nn.ReLU())
    assert (layer.weight.data == 0.5).all()
    net = fnn.nn.Sequential(fnn.nn.Linear(20, 10, rng=0), fnn.nn.ReLU(), fnn.nn.Linear(10, 3, rng=1))
    w = net[0].weight.data.copy()
    head = net[:1]                                    # a slice (no ReLU after it) does not redraw the shared layer
    np.testing.assert_array_equal(head[0].weight.data, w)
    np.testing.assert_array_equal(w, fnn.init.he_normal((20, 10), rng=0))
    explicit = fnn.nn.Sequential(fnn.nn.Linear(20, 10, init="xavier_normal", rng=0), fnn.nn.ReLU())
    np.testing.assert_array_equal(explicit[0].weight.data, fnn.init.xavier_normal((20, 10), rng=0))


# --- item 6: bias_init ------------------------------------------------------------------------

def test_bias_init_linear_and_conv_kept_by_save_and_load(tmp_path):
    lin = fnn.nn.Linear(5, 4, activation="relu", bias_init=0.01)
    assert lin.bias.data.dtype == np.float32 and (lin.bias.data == np.float32(0.01)).all()
    conv = fnn.nn.Conv2d(2, 3, 3, bias_init=-0.5, dtype=np.float64)
    np.testing.assert_array_equal(conv.bias.data, np.full(3, -0.5))
    assert (fnn.nn.Linear(5, 4).bias.data == 0).all() and (fnn.nn.Conv2d(2, 3, 3).bias.data == 0).all()
    model = fnn.nn.Sequential(fnn.nn.Linear(5, 4, bias_init=0.01), fnn.nn.ReLU(), fnn.nn.Linear(4, 2))
    model.save(tmp_path / "m.npz")
    assert fnn.nn.load(tmp_path / "m.npz")[0].get_config()["kwargs"]["bias_init"] == 0.01
    fresh = fnn.nn.from_config(model.get_config())
    assert (fresh[0].bias.data == np.float32(0.01)).all() and (fresh[2].bias.data == 0).all()
    # The notes' point: with bias 0.01 every ReLU unit is active on a zero input.
    hidden = fnn.nn.Sequential(fnn.nn.Linear(5, 4, bias_init=0.01), fnn.nn.ReLU())
    assert (hidden(np.zeros((1, 5), np.float32)) == np.float32(0.01)).all()
    with pytest.raises(ValueError, match="bias_init=0.01 needs a bias"):
        fnn.nn.Linear(5, 4, bias=False, bias_init=0.01)
    with pytest.raises(TypeError, match="bias_init"):
        fnn.nn.Linear(5, 4, bias_init="small")


# --- item 7: exploding loss -------------------------------------------------------------------

def test_exploding_finite_loss_raises_and_restores(digits):
    X, y = digits
    model = _mlp(0)
    start = model.state_dict()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=1e6),
                          seed=0)
    with pytest.raises(fnn.TrainingDiverged, match=r"loss exploded .* divergence_factor \(3\)"):
        trainer.fit(X, y, epochs=3, batch_size=32, progress=False)
    losses = trainer.history.loss
    assert np.isfinite(losses).all() and losses[-1] > 3 * trainer.initial_loss
    assert trainer.smoothed_loss is None                     # reset for a next fit
    assert trainer.history.stopped_early and "restored" in trainer.history.message
    for name, value in model.state_dict().items():           # back to the state before the first step
        np.testing.assert_array_equal(value, start[name])
    # A factor of None turns the check off: the same run goes on with an enormous
    # finite loss (what happened before the check existed); the factor is checked.
    model = _mlp(0)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=1e6),
                          seed=0, divergence_factor=None)
    hist = trainer.fit(X, y, epochs=1, batch_size=32, progress=False)
    assert max(hist.loss) > 1e6 and np.isfinite(hist.loss).all() and not hist.stopped_early
    with pytest.raises(ValueError, match="divergence_factor"):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()), divergence_factor=1.0)


@pytest.mark.parametrize("opt_name, lr, batch_size", [("adam", 1e-3, 16), ("adam", 1e-2, 16), ("sgd", 1e-2, 16),
                                                      ("sgd", 1e-1, 32)])
def test_healthy_runs_never_trip_the_divergence_check(digits, opt_name, lr, batch_size):
    X, y = digits
    model = _mlp(1, dropout=0.3)
    if opt_name == "adam":
        opt = fnn.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = fnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ratios = []

    class Watch(fnn.callbacks.Callback):
        def on_step_end(self, trainer, step, loss):
            ratios.append(trainer.smoothed_loss / trainer.initial_loss)

    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0, callbacks=[Watch()],
                          augment=fnn.augment.GaussianNoise(0.1))
    hist = trainer.fit(X, y, epochs=4, batch_size=batch_size, progress=False)
    assert not hist.stopped_early and hist.train_acc[-1] > 0.8
    assert trainer.initial_loss == pytest.approx(np.log(10), rel=0.25)
    assert max(ratios) < 1.5                                      # far from the factor 3


def test_divergence_check_leaves_the_run_unchanged_and_fine_tuning_passes(digits):
    X, y = digits
    runs = []
    for factor in (3.0, None):
        model = _mlp(2, dropout=0.2)
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                              seed=0, divergence_factor=factor)
        runs.append((trainer.fit(X, y, epochs=3, batch_size=32, progress=False).loss, model.state_dict()))
    assert runs[0][0] == runs[1][0]                                # the reference pass moves no stream
    for name, value in runs[0][1].items():
        np.testing.assert_array_equal(value, runs[1][1][name])
    # Fine-tuning the trained model with a fresh Trainer and Adam restarting: the loss
    # starts near 0 and rises briefly, which is no explosion.
    model = _mlp(2, dropout=0.2)
    model.load_state_dict(runs[0][1])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                          seed=1)
    hist = trainer.fit(X, y, epochs=3, batch_size=32, progress=False)
    assert not hist.stopped_early and hist.loss[0] < 0.5


# --- item 8: the regularization penalty is reported ---------------------------------------------

def _penalty(params, weight_decay=0.0, l1=0.0):
    w = [np.asarray(p.data, np.float64) for p in params if p.trainable]
    return sum(0.5 * weight_decay * float((v * v).sum()) + l1 * float(np.abs(v).sum()) for v in w)


def test_reg_loss_equals_the_penalty_and_grows_with_weight_decay(digits):
    X, y = digits
    values = []
    for wd in (0.0, 1e-3, 1e-2):
        model = _mlp(0)
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                              fnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=wd), seed=0)
        before = trainer.evaluate(X, y)["reg_loss"]
        assert before == pytest.approx(_penalty(model.parameters(), wd), rel=1e-12)
        hist = trainer.fit(X, y, epochs=2, batch_size=64, progress=False)
        assert len(hist.reg_loss) == 2
        assert hist.reg_loss[-1] == pytest.approx(_penalty(model.parameters(), wd), rel=1e-12)
        assert trainer.evaluate(X, y)["reg_loss"] == hist.reg_loss[-1]
        values.append(before)
    assert values[0] == 0.0 < values[1] < values[2]
    assert values[2] == pytest.approx(10 * values[1], rel=1e-12)   # same initial weights, 10x the decay


def test_reg_loss_follows_groups_l1_frozen_and_adamw():
    model = _mlp(0)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = fnn.optim.Adam([{"params": weights, "weight_decay": 2e-3, "l1": 1e-4}, {"params": biases}])
    expected = _penalty(weights, 2e-3, 1e-4)
    assert regularization_loss(opt) == pytest.approx(expected, rel=1e-12)
    model[0].freeze()                                        # frozen: not regularized, not counted
    assert regularization_loss(opt) == pytest.approx(_penalty([model[2].weight], 2e-3, 1e-4), rel=1e-12)
    model[0].unfreeze()
    adamw = fnn.optim.AdamW(_mlp(0).parameters(), weight_decay=0.05)
    assert regularization_loss(adamw) == pytest.approx(_penalty(_mlp(0).parameters(), 0.05), rel=1e-6)
    assert regularization_loss(fnn.optim.SGD(_mlp(0).parameters())) == 0.0
    assert "reg_loss" in fnn.callbacks.History().as_dict()


# --- item 14: a frozen BatchNorm keeps its statistics ------------------------------------------

def test_frozen_block_keeps_batchnorm_statistics_through_fit(digits):
    X, y = digits
    fnn.manual_seed(0)
    block = fnn.nn.Sequential(fnn.nn.Linear(64, 32), fnn.nn.BatchNorm1d(32), fnn.nn.ReLU())
    head = fnn.nn.Linear(32, 10)
    model = fnn.nn.Sequential(block, head)
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                seed=0).fit(X, y, epochs=1, batch_size=64, progress=False)
    bn = block[1]
    pretrained = {k: v.copy() for k, v in block.state_dict().items()}
    assert not np.allclose(bn.running_mean, 0)               # pretrained statistics

    block.freeze()
    assert not bn.training and block.training               # only BatchNorm switches to eval
    model.train()
    assert not bn.training and model.training
    Xs = 1.7 * X + 0.3                                        # new data with other statistics
    head_before = head.weight.data.copy()
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(head.parameters(), lr=1e-2),
                seed=1).fit(Xs, y, epochs=2, batch_size=64, progress=False)
    for name, value in block.state_dict().items():            # weights and running_mean/var: bit for bit
        np.testing.assert_array_equal(value, pretrained[name], err_msg=name)
    assert not np.array_equal(head.weight.data, head_before)

    block.unfreeze()                                          # normal behaviour again
    assert bn.training and all(p.trainable for p in block.parameters())
    model.eval()
    assert not bn.training
    model.train()
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-3),
                seed=2).fit(Xs, y, epochs=1, batch_size=64, progress=False)
    assert not np.array_equal(bn.running_mean, pretrained["1.running_mean"])


# --- item 17: per-channel PReLU ------------------------------------------------------------------

def _prelu_reference(x, alpha, dy):
    """PyTorch's PReLU in float64: slope per channel (axis 1)."""
    a = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
    y = np.where(x > 0, x, a * x)
    dx = np.where(x > 0, dy, a * dy)
    axes = (0,) + tuple(range(2, x.ndim))
    dalpha = np.sum(dy * np.where(x > 0, 0.0, x), axis=axes)
    return y, dx, dalpha


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5, 6), (2, 3, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_channel_prelu_matches_the_float64_reference(backend, rng, shape, dtype):
    c = shape[1]
    layer = fnn.nn.PReLU(num_parameters=c, dtype=dtype)
    assert layer.alpha.data.shape == (c,) and (layer.alpha.data == dtype(0.25)).all()
    layer.alpha.data[...] = rng.uniform(-0.5, 0.8, c)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = layer.forward(x)
    dx = layer.backward(dy)
    ry, rdx, rda = _prelu_reference(x.astype(np.float64), layer.alpha.data.astype(np.float64), dy.astype(np.float64))
    tol = 1e-6 if dtype == np.float32 else 1e-14
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ry, rtol=tol, atol=tol)
    np.testing.assert_allclose(dx, rdx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.alpha.grad, rda, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=tol)


def test_per_channel_prelu_numerical_gradient_and_no_fusion(backend, rng):
    x = rng.standard_normal((6, 4, 3, 3))
    model = fnn.nn.Sequential(fnn.nn.Conv2d(4, 3, 3, padding=1, dtype=np.float64, rng=0),
                              fnn.nn.PReLU(num_parameters=3, dtype=np.float64), fnn.nn.Flatten(),
                              fnn.nn.Linear(27, 5, dtype=np.float64, rng=1), fnn.nn.PReLU(num_parameters=5,
                                                                                           dtype=np.float64))
    steps = model.steps()
    assert all(s.activation is None for s in steps) and len(steps) == 5     # per-channel PReLU is its own step
    model[1].alpha.data[...] = [0.1, -0.2, 0.4]
    y = rng.integers(0, 5, 6)
    loss = fnn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    for prelu in (model[1], model[4]):
        analytic = prelu.alpha.grad.copy()
        numeric = np.zeros_like(analytic)
        for c in range(len(analytic)):
            old = prelu.alpha.data[c]
            prelu.alpha.data[c] = old + 1e-6
            up = loss.forward(model.forward(x), y)
            prelu.alpha.data[c] = old - 1e-6
            down = loss.forward(model.forward(x), y)
            prelu.alpha.data[c] = old
            numeric[c] = (up - down) / 2e-6
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)
    # A scalar PReLU still fuses into the Linear before it.
    fused = fnn.nn.Sequential(fnn.nn.Linear(4, 3), fnn.nn.PReLU())
    assert fused.steps()[0].activation is fused[1]
    res = fnn.diagnostics.gradient_check(model, loss, x, y, n_checks=8)
    assert res["ok"], res


def test_per_channel_prelu_trains_saves_and_refuses_mistakes(tmp_path, digits):
    X, y = digits
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 32, rng=0), fnn.nn.PReLU(num_parameters=32), fnn.nn.Linear(32, 10))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-2),
                          seed=0)
    hist = trainer.fit(X, y, epochs=3, batch_size=64, progress=False)
    assert hist.train_acc[-1] > 0.9 and np.unique(model[1].alpha.data).size > 1   # slopes learned apart
    model.save(tmp_path / "m.npz")
    back = fnn.nn.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(back[1].alpha.data, model[1].alpha.data)
    np.testing.assert_array_equal(back.eval()(X[:5]), model.eval()(X[:5]))
    with pytest.raises(ValueError, match=r"PReLU\(num_parameters=64\)"):
        fnn.nn.PReLU(64)
    with pytest.raises(ValueError, match=r"4 channels on axis 1 .* got shape \(2, 3\)"):
        fnn.nn.PReLU(num_parameters=4).forward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="one slope per channel"):
        fnn.nn.PReLU(num_parameters=4).alpha_value
    assert fnn.nn.PReLU(0.1).alpha_value == pytest.approx(0.1)


# --- Step is public ----------------------------------------------------------------------------

def test_step_is_exported_from_fastnn_nn():
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4), fnn.nn.ReLU(), fnn.nn.Linear(4, 2))
    steps = model.steps()
    assert fnn.nn.Step is type(steps[0]) and "Step" in fnn.nn.__all__
    assert steps[0] == fnn.nn.Step(model[0], model[1]) and steps[1] == fnn.nn.Step(model[2], None)
