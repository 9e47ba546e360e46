"""What a newcomer tries in the first hour (issue 16): one-hot and float
labels, empty or mis-shaped inputs, arrays in any layout, replacing the head of
a trained model, an optimizer built for another model, seeding. Each either
just works or is refused before training with a message naming the argument."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastnn as fnn
from fastnn.nn.layers import Step

N_TRAIN = 400


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.data.load_digits()
    return X[:N_TRAIN], y[:N_TRAIN]


def _model(seed=0, hidden=32):
    return fnn.nn.Sequential(fnn.nn.Linear(64, hidden, rng=seed), fnn.nn.ReLU(),
                             fnn.nn.Linear(hidden, 10, rng=seed + 1))


def _trainer(model, lr=1e-2, seed=0, **kw):
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=lr),
                       seed=seed, **kw)


def _weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def _assert_untouched(model, before):
    after = model.state_dict()
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v, err_msg=f"{k} changed: training started before the check")


class _CountSteps(fnn.Callback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, trainer, step, loss):
        self.steps += 1


# --- 1. one-hot / soft labels --------------------------------------------------------------

def test_one_hot_labels_train_end_to_end_like_integer_labels(digits):
    X, y = digits
    onehot = np.eye(10, dtype=np.float32)[y]
    a, b = _model(), _model()
    hist_int = _trainer(a).fit(X, y, epochs=3, batch_size=64, val=(X, y), progress=False)
    trainer_hot = _trainer(b)
    hist_hot = trainer_hot.fit(X, onehot, epochs=3, batch_size=64, val=(X, onehot), progress=False)
    # One-hot rows give the same loss and gradients as their labels: the same run.
    np.testing.assert_allclose(hist_hot.loss, hist_int.loss, rtol=1e-4)
    assert hist_hot.train_acc[-1] > 0.7 and hist_hot.val_acc == pytest.approx(hist_int.val_acc)
    ev_hot, ev_int = trainer_hot.evaluate(X, onehot), trainer_hot.evaluate(X, y)
    assert ev_hot["accuracy"] == ev_int["accuracy"] > 0.7
    assert ev_hot["loss"] == pytest.approx(ev_int["loss"], rel=1e-5)
    # Integer one-hot rows are class probabilities too.
    assert trainer_hot.evaluate(X, onehot.astype(np.int64))["accuracy"] == ev_int["accuracy"]


def test_soft_labels_accuracy_uses_the_argmax_of_each_row(digits):
    X, y = digits
    model = _model()
    trainer = _trainer(model)
    trainer.fit(X, y, epochs=2, batch_size=64, progress=False)
    smooth = np.full((len(y), 10), 0.01, np.float32)
    smooth[np.arange(len(y)), y] = 0.91
    scores = trainer.predict(X)
    ev = trainer.evaluate(X, smooth)
    assert ev["accuracy"] == pytest.approx(float(np.mean(scores.argmax(1) == y)))
    shifted = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
    expected_loss = float(np.mean(-(smooth * (scores - shifted[:, None])).sum(1)))
    assert ev["loss"] == pytest.approx(expected_loss, rel=1e-4)


@pytest.mark.parametrize("bad, match", [
    (lambda y: np.eye(9, dtype=np.float32)[y % 9], r"y as class probabilities must have shape \(N, 10\)"),
    (lambda y: 2 * np.eye(10, dtype=np.float32)[y], r"y as class probabilities must be distributions"),
    (lambda y: np.eye(10, dtype=np.float32)[y][:, :, None], r"y must be \(N,\) integer class labels or \(N, C\)"),
    (lambda y: np.where(np.arange(len(y)) == len(y) - 1, 10, y), r"y: labels must be in \[0, 10\)"),
    (lambda y: np.where(np.arange(len(y)) == len(y) - 1, -1, y), r"y: labels must be in \[0, 10\)"),
])
def test_bad_labels_are_refused_before_the_first_step(digits, bad, match):
    X, y = digits
    model = _model()
    steps = _CountSteps()
    trainer = _trainer(model, callbacks=[steps])
    before = _weights(model)
    with pytest.raises(ValueError, match=match):
        trainer.fit(X, bad(y), epochs=1, batch_size=64, progress=False)
    assert steps.steps == 0
    _assert_untouched(model, before)


def test_bad_validation_labels_are_refused_before_the_first_step(digits):
    X, y = digits
    model = _model()
    steps = _CountSteps()
    with pytest.raises(ValueError, match=r"val\[1\] as class probabilities must have shape \(N, 10\)"):
        _trainer(model, callbacks=[steps]).fit(X, y, epochs=1, val=(X, np.eye(5)[y % 5]), progress=False)
    assert steps.steps == 0
    with pytest.raises(ValueError, match=r"the model cannot take val\[0\] of shape \(400, 60\)"):
        _trainer(model, callbacks=[steps]).fit(X, y, epochs=1, val=(X[:, :60], y), progress=False)
    assert steps.steps == 0


# --- 2. float labels ------------------------------------------------------------------------

def test_whole_float_labels_are_class_labels(digits):
    X, y = digits
    a, b = _model(), _model()
    hist_int = _trainer(a).fit(X, y, epochs=2, batch_size=64, progress=False)
    hist_float = _trainer(b).fit(X, y.astype(np.float64), epochs=2, batch_size=64, progress=False)
    assert hist_float.loss == hist_int.loss            # the very same run
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert _trainer(b).evaluate(X, y.astype(np.float32)) == _trainer(b).evaluate(X, y)
    scores = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for loss in (fnn.losses.SoftmaxCrossEntropy(), fnn.losses.MulticlassHinge()):
        assert loss.forward(scores, np.array([0.0, 3.0, 1.0])) == loss.forward(scores, np.array([0, 3, 1]))


def test_fractional_float_labels_get_a_message_naming_y(digits):
    X, y = digits
    model = _model()
    before = _weights(model)
    with pytest.raises(ValueError, match=r"y must hold integer class labels, got float64 values such as 0\.5"):
        _trainer(model).fit(X, y + 0.5, epochs=1, progress=False)
    _assert_untouched(model, before)
    with pytest.raises(ValueError, match=r"y must hold integer class labels, got float64 values such as nan"):
        _trainer(model).evaluate(X, np.where(y == y[0], np.nan, y.astype(np.float64)))
    scores = np.zeros((2, 3), np.float32)
    for loss in (fnn.losses.SoftmaxCrossEntropy(), fnn.losses.MulticlassHinge()):
        with pytest.raises(ValueError, match=r"y must hold integer class labels, got float32 values such as 1\.5"):
            loss.forward(scores, np.array([0.0, 1.5], np.float32))
    with pytest.raises(ValueError, match=r"MulticlassHinge takes \(N,\) integer class labels.*argmax"):
        fnn.Trainer(model, fnn.losses.MulticlassHinge(), fnn.optim.SGD(model.parameters())).fit(
            X, np.eye(10)[y], epochs=1, progress=False)


# --- 3. empty X, X/y length ----------------------------------------------------------------

@pytest.mark.parametrize("call", ["fit", "evaluate", "predict", "model", "forward"])
def test_empty_x_is_a_clear_error_without_warnings(digits, call):
    X, y = digits
    model = _model()
    trainer = _trainer(model)
    run = {"fit": lambda: trainer.fit(X[:0], y[:0], epochs=1, progress=False),
           "evaluate": lambda: trainer.evaluate(X[:0], y[:0]),
           "predict": lambda: trainer.predict(X[:0]),
           "model": lambda: model(X[:0]),
           "forward": lambda: model.forward(X[:0])}[call]
    name = "x" if call in ("model", "forward") else "X"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^{name} has no rows \(shape \(0, 64\)\)"):
            run()


def test_x_y_length_mismatch_names_both(digits):
    X, y = digits
    trainer = _trainer(_model())
    for call in (lambda: trainer.fit(X, y[:-3], epochs=1, progress=False), lambda: trainer.evaluate(X, y[:-3])):
        with pytest.raises(ValueError, match=r"y must have one entry per row of X: X has 400 rows, y has 397"):
            call()
    with pytest.raises(ValueError, match=r"val\[1\] must have one entry per row of val\[0\]"):
        trainer.fit(X, y, epochs=1, val=(X, y[:5]), progress=False)


# --- 4. wrong number of features / channels --------------------------------------------------

def test_wrong_feature_count_is_named_before_the_layout(digits):
    X, _ = digits
    model = _model()
    message = r"Linear\(64, 32\): expected x with 64 input features \(shape \(N, 64\)\), got shape \(10, 63\)"
    for x in (X[:10, :63], np.ascontiguousarray(X[:10, :63])):
        with pytest.raises(ValueError, match=message):
            model(x)
        with pytest.raises(ValueError, match=message):
            model[0].forward(x)                  # the layer itself, strided or not
    with pytest.raises(ValueError, match=r"got shape \(64,\) \(one sample\? use x\[None, :\]\)"):
        model(X[0])
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 8, 8\) \(put a fastnn.nn.Flatten\(\) before it\)"):
        model(X[:2].reshape(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"Maxout\(64, 5\): expected x with 64 input features"):
        fnn.nn.Maxout(64, 5)(X[:4, :10])
    trainer = _trainer(model)
    with pytest.raises(ValueError, match=r"the model cannot take X of shape \(400, 63\): Linear\(64, 32\)"):
        trainer.fit(X[:, :63], digits[1], epochs=1, progress=False)


def test_conv2d_wrong_channel_count_is_named_before_the_layout():
    conv = fnn.nn.Conv2d(3, 4, 3, rng=0)
    x = np.zeros((2, 5, 8, 8), np.float32)
    message = r"Conv2d\(3, 4\): x must have 3 channels \(shape \(N, 3, H, W\)\), got shape \(2, 2, 8, 8\)"
    for bad in (x[:, ::2][:, :2], np.ascontiguousarray(x[:, :2])):
        with pytest.raises(ValueError, match=message):
            conv.forward(bad)
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\) \(one image\? use x\[None\]\)"):
        conv(x[0, :3])


# --- 5. layouts and dtypes at the API boundary -----------------------------------------------

def test_model_and_trainer_take_any_layout_and_float_dtype(digits):
    X, y = digits
    model = _model()
    trainer = _trainer(model)
    trainer.fit(X, y, epochs=1, progress=False)
    model.eval()
    ref = model(X[:50])
    wide = np.zeros((50, 128), np.float32)
    wide[:, ::2] = X[:50]
    for x in (np.asfortranarray(X[:50]), wide[:, ::2], X[:50].astype(np.float64),
              np.asfortranarray(X[:50], dtype=np.float64)):
        assert not (x.flags.c_contiguous and x.dtype == np.float32)
        out = model(x)
        assert out.dtype == np.float32 and out.flags.c_contiguous
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(model.forward(x), ref)   # the top-level forward is the boundary too
        np.testing.assert_array_equal(model[0](x), model[0](X[:50]))
    model.train()
    np.testing.assert_array_equal(trainer.predict(np.asfortranarray(X)), trainer.predict(X))
    assert trainer.evaluate(X.astype(np.float64), y) == trainer.evaluate(X, y)
    # The kernels and the layers' own forward still refuse silently-copied layouts.
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fnn.ops.linear_act(np.asfortranarray(X[:50]), model[0].weight.data)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        model[0].forward(np.asfortranarray(X[:50]))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        model[0].forward(X[:50].astype(np.float64))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        model(X[:50].astype(np.int64))          # integers are not cast: say so


def test_fit_on_float64_or_fortran_data_is_the_float32_run(digits):
    X, y = digits
    runs = []
    for x in (X, X.astype(np.float64), np.asfortranarray(X)):
        model = _model()
        runs.append((_trainer(model).fit(x, y, epochs=2, batch_size=64, progress=False).loss, model.state_dict()))
    for loss, state in runs[1:]:
        assert loss == runs[0][0]
        for k, v in runs[0][1].items():
            np.testing.assert_array_equal(state[k], v)


# --- 6. Sequential: indexing, replacing a layer, steps() ---------------------------------------

def test_sequential_indexing_and_read_only_layers():
    model = _model()
    assert len(model) == 3 and list(model) == list(model.layers) and model[-1] is model.layers[2]
    assert isinstance(model.layers, tuple)
    with pytest.raises(TypeError, match=r"Sequential.layers is read-only: replace a layer with model\[2\] = layer"):
        model.layers[2] = fnn.nn.Linear(32, 5)
    with pytest.raises(TypeError, match="read-only"):
        model.layers = [fnn.nn.ReLU()]
    with pytest.raises(IndexError, match="layer index 3 out of range for a Sequential of 3 layers"):
        model[3] = fnn.nn.ReLU()
    with pytest.raises(TypeError, match=r"model\[1\] must be set to a fastnn Module, got str"):
        model[1] = "relu"
    with pytest.raises(TypeError, match="integers"):
        model["0"]
    head = model[1:]
    assert isinstance(head, fnn.nn.Sequential) and head[1] is model[2] and len(head) == 2
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    np.testing.assert_array_equal(head(x), model[2](model[1](x)))


def test_steps_are_the_fused_execution_plan():
    model = fnn.nn.Sequential(fnn.nn.Linear(6, 5, rng=0), fnn.nn.Tanh(), fnn.nn.Linear(5, 4, activation="relu", rng=1),
                              fnn.nn.ReLU(), fnn.nn.Dropout(0.1), fnn.nn.Linear(4, 3, rng=2))
    steps = model.steps()
    assert steps == [Step(model[0], model[1]), Step(model[2], None), Step(model[3], None), Step(model[4], None),
                     Step(model[5], None)]
    assert steps[0].layer is model[0] and steps[0].activation is model[1]
    steps.clear()
    assert len(model.steps()) == 5                      # a copy: the model is unchanged
    model[1] = fnn.nn.Dropout(0.1)                      # no activation left to fuse
    assert model.steps()[:2] == [Step(model[0], None), Step(model[1], None)]
    model[1] = fnn.nn.Sigmoid()
    assert model.steps()[0] == Step(model[0], model[1])
    model.eval()
    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32)
    h = 1 / (1 + np.exp(-(x.astype(np.float64) @ model[0].weight.data + model[0].bias.data)))
    h = np.maximum(h @ model[2].weight.data + model[2].bias.data, 0)
    np.testing.assert_allclose(model(x), h @ model[5].weight.data + model[5].bias.data, rtol=1e-4, atol=1e-5)


def test_replacing_the_head_of_a_trained_model(digits, tmp_path):
    X, y = digits
    model = _model()
    old_trainer = _trainer(model)
    old_trainer.fit(X, y, epochs=2, progress=False)
    old_head = model[2]
    body = {k: v for k, v in model.state_dict().items() if k.startswith("0.")}
    model.eval()
    new_head = fnn.nn.Linear(32, 3, rng=7)
    model[2] = new_head                                  # the transfer-learning move
    assert model[2] is new_head and model.layers[2] is new_head and not new_head.training
    assert model(X[:5]).shape == (5, 3)
    ids = {id(p) for p in model.parameters()}
    assert id(new_head.weight) in ids and id(old_head.weight) not in ids
    assert dict(model.named_parameters())["2.weight"] is new_head.weight
    assert model.steps()[-1] == Step(new_head, None)
    # The old optimizer holds the old head: refused, not silently training nothing.
    with pytest.raises(ValueError, match=r"optimizer does not hold 2 of the model's 4 trainable parameters "
                                         r"\(2.weight, 2.bias\)"):
        old_trainer.fit(X, y % 3, epochs=1, progress=False)
    model[0].freeze()
    model.train()
    w_head = new_head.weight.data.copy()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                          fnn.optim.Adam([p for p in model.parameters() if p.trainable], lr=5e-3), seed=0)
    hist = trainer.fit(X, y % 3, epochs=3, progress=False)
    assert not np.array_equal(new_head.weight.data, w_head)          # the new head trains
    for k, v in body.items():                                         # the frozen body does not
        np.testing.assert_array_equal(model.state_dict()[k], v)
    assert hist.train_acc[-1] > 0.5
    path = tmp_path / "new_head.npz"
    model.save(path)
    loaded = fnn.nn.load(path)
    assert isinstance(loaded[2], fnn.nn.Linear) and loaded[2].out_features == 3
    model.eval()
    np.testing.assert_array_equal(loaded.eval()(X[:20]), model(X[:20]))


# --- 7. optimizer and model must match ---------------------------------------------------------

def test_optimizer_of_another_model_is_refused(digits):
    X, y = digits
    model, other = _model(0), _model(1)
    loss = fnn.losses.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"optimizer does not hold 4 of the model's 4 trainable parameters "
                                         r"\(0.weight, 0.bias, 2.weight, 2.bias\)"):
        fnn.Trainer(model, loss, fnn.optim.SGD(other.parameters()))
    with pytest.raises(ValueError, match=r"optimizer does not hold 2 of the model's 4 trainable parameters "
                                         r"\(2.weight, 2.bias\)"):
        fnn.Trainer(model, loss, fnn.optim.SGD(model[0].parameters()))
    with pytest.raises(ValueError, match=r"optimizer holds 2 parameter\(s\) that are not in the model"):
        fnn.Trainer(model, loss, fnn.optim.SGD(model.parameters() + other[2].parameters()))
    # Frozen parameters may be left out; unfreezing them later is caught at fit.
    model[0].freeze()
    trainer = fnn.Trainer(model, loss, fnn.optim.SGD(model[2].parameters(), lr=0.1))
    trainer.fit(X, y, epochs=1, progress=False)
    model[0].unfreeze()
    with pytest.raises(ValueError, match=r"optimizer does not hold 2 of the model's 4 trainable parameters "
                                         r"\(0.weight, 0.bias\)"):
        trainer.fit(X, y, epochs=1, progress=False)


# --- 8. seeding ---------------------------------------------------------------------------------

def _unseeded_model():
    return fnn.nn.Sequential(fnn.nn.Linear(64, 32), fnn.nn.ReLU(), fnn.nn.Dropout(0.2), fnn.nn.Linear(32, 10))


def test_manual_seed_before_building_makes_init_and_training_reproducible(digits):
    X, y = digits
    runs = []
    for _ in range(2):
        fnn.manual_seed(0)
        model = _unseeded_model()
        init = _weights(model)
        hist = _trainer(model, seed=3).fit(X, y, epochs=2, batch_size=64, progress=False)
        runs.append((init, hist.loss))
    for k, v in runs[0][0].items():                       # weights and the Dropout seed
        np.testing.assert_array_equal(runs[1][0][k], v)
    assert runs[0][1] == runs[1][1]
    fnn.manual_seed(1)
    assert not np.array_equal(_unseeded_model()[0].weight.data, runs[0][0]["0.weight"])


def test_trainer_seed_does_not_claim_to_seed_the_weights():
    doc = fnn.Trainer.__doc__
    assert "does NOT seed weight initialization" in doc and "fnn.manual_seed(0)" in doc
    assert "shuffles the batches" in doc
    assert "Seed before building the model" in fnn.manual_seed.__doc__
