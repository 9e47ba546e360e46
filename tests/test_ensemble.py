"""Ensembles, snapshot ensembles, EMA and the early-stopping / checkpoint callbacks."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.ensemble import Ensemble, SnapshotEnsemble, softmax


@pytest.fixture(scope="module")
def digits():
    X, y = fnn.data.load_digits()
    return fnn.data.split(X, y, seed=0)


def _mlp(seed, hidden=64, dropout=0.0):
    layers = [fnn.nn.Linear(64, hidden, activation="relu", rng=seed)]
    if dropout:
        layers.append(fnn.nn.Dropout(dropout, seed=seed))
    return fnn.nn.Sequential(*layers, fnn.nn.Linear(hidden, 10, rng=seed + 1))


def test_ensemble_averages_softmax_probabilities(digits):
    (Xtr, ytr), _, (Xte, yte) = digits
    models = []
    for seed in range(3):
        m = _mlp(seed)
        fnn.Trainer(m, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(m.parameters(), lr=1e-2), seed=seed).fit(
            Xtr, ytr, epochs=3, batch_size=64, progress=False)
        models.append(m)
    ens = Ensemble(models)
    probs = [softmax(m.eval().forward(Xte)) for m in models]
    np.testing.assert_allclose(ens.predict(Xte), np.mean(probs, axis=0), rtol=1e-10)
    ev = ens.evaluate(Xte, yte)
    assert ev["accuracy"] == np.mean(np.argmax(np.mean(probs, axis=0), axis=1) == yte)
    members = ens.evaluate_members(Xte, yte)
    assert ev["loss"] <= np.mean([m["loss"] for m in members])    # -log is convex
    assert ev["accuracy"] >= np.mean([m["accuracy"] for m in members])
    weighted = Ensemble(models, weights=[1, 0, 0]).predict(Xte)
    np.testing.assert_allclose(weighted, probs[0], rtol=1e-10)


def test_snapshot_ensemble_beats_its_members_on_average(digits):
    (Xtr, ytr), _, (Xte, yte) = digits
    model = _mlp(0, hidden=128, dropout=0.3)
    snap = SnapshotEnsemble()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=3e-2),
                          schedule=fnn.schedules.CosineWarmRestarts(t_0=5), callbacks=[snap], seed=0)
    trainer.fit(Xtr, ytr, epochs=20, batch_size=64, progress=False)
    assert snap.snapshot_times == [5, 10, 15, 20] and len(snap) == 4
    np.testing.assert_array_equal(snap.models[-1].state_dict()["0.weight"], model[0].weight.data)
    members = snap.evaluate_members(Xte, yte)
    ens = snap.evaluate(Xte, yte)
    mean_acc = np.mean([m["accuracy"] for m in members])
    # Measured (seed 0, cpp and numba alike): members 0.967, 0.978, 0.981, 0.981 (mean 0.976), ensemble 0.983.
    # Over init seeds 0-5 the ensemble beat the members' mean every time, the best member only in 2 of 6,
    # so the claim asserted is "beats its members on average"; the loss bound holds by convexity of -log.
    assert ens["accuracy"] >= mean_acc
    assert ens["loss"] < np.mean([m["loss"] for m in members])


def test_snapshot_ensemble_per_step_cycles_and_needs_warm_restarts(digits):
    (Xtr, ytr), _, _ = digits
    model = _mlp(0)
    snap = SnapshotEnsemble(max_snapshots=2)
    sched = fnn.schedules.CosineWarmRestarts(t_0=10, t_mult=2, per="step")
    fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.1),
                schedule=sched, callbacks=[snap], seed=0).fit(Xtr[:640], ytr[:640], epochs=8, batch_size=64,
                                                              progress=False)
    assert snap.snapshot_times == [30, 70]         # cycles end at steps 10, 30, 70; two kept
    with pytest.raises(TypeError, match="CosineWarmRestarts"):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()),
                    callbacks=[SnapshotEnsemble()]).fit(Xtr, ytr, epochs=1, progress=False)


def test_ema_matches_hand_computed_average():
    rng = np.random.default_rng(0)
    model = _mlp(0, hidden=8)
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)           # moves params into the flat buffer
    ema = fnn.optim.EMA(model, decay=0.9)
    ref = {n: p.data.astype(np.float64) for n, p in model.named_parameters()}
    for _ in range(5):
        for n, p in model.named_parameters():
            p.data[...] += rng.standard_normal(p.data.shape).astype(p.data.dtype)
            ref[n] = 0.9 * ref[n] + 0.1 * p.data.astype(np.float64)
        ema.update()
    assert ema.num_updates == 5
    current = {n: p.data.copy() for n, p in model.named_parameters()}
    with ema.swapped():
        for n, p in model.named_parameters():
            np.testing.assert_allclose(p.data, ref[n], rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, current[n])
    assert np.shares_memory(model[0].weight.data, opt.flat_param)


def test_ema_as_a_callback_evaluates_at_least_as_well(digits):
    (Xtr, ytr), (Xva, yva), _ = digits
    model = _mlp(0)
    ema = fnn.optim.EMA(model.parameters(), decay=0.95)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.3),
                          callbacks=[ema], seed=0)
    trainer.fit(Xtr, ytr, epochs=5, batch_size=32, progress=False)
    assert ema.num_updates == 5 * int(np.ceil(len(Xtr) / 32))
    raw = trainer.evaluate(Xva, yva)
    with ema.swapped():
        averaged = trainer.evaluate(Xva, yva)
    assert averaged["loss"] < raw["loss"]


def test_early_stopping_restores_the_best_weights(digits, tmp_path):
    (Xtr, ytr), (Xva, yva), _ = digits
    model = _mlp(0)
    stop = fnn.EarlyStopping(monitor="val_loss", patience=2)
    ckpt = fnn.BestCheckpoint(tmp_path / "best.npz", monitor="val_loss")
    # A large lr makes the validation loss bounce, so the best epoch is not the last.
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=5e-2),
                          callbacks=[stop, ckpt], seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=60, batch_size=32, val=(Xva, yva), progress=False)
    assert hist.stopped_early and hist.epochs == stop.stopped_epoch + 1 < 60
    assert hist.epochs == stop.best_epoch + 1 + 3                     # patience 2: stops on the 3rd bad epoch
    assert stop.best == min(hist.val_loss) and "early stopping" in hist.message
    assert trainer.evaluate(Xva, yva)["loss"] == pytest.approx(stop.best, rel=1e-6)
    saved = fnn.nn.load(tmp_path / "best.npz")
    assert ckpt.best == stop.best
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(saved.state_dict()[k], v)
    with pytest.raises(ValueError, match="val="):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()),
                    callbacks=[fnn.EarlyStopping()]).fit(Xtr, ytr, epochs=1, progress=False)
    with pytest.raises(ValueError, match="monitor"):
        fnn.EarlyStopping(monitor="val_f1")
