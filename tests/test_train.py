import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn


def _digits_model(seed=0):
    return fnn.nn.Sequential(fnn.nn.Linear(64, 128, rng=seed), fnn.nn.ReLU(), fnn.nn.Linear(128, 10, rng=seed + 1))


def test_digits_mlp_reaches_95_percent(backend):
    X, y = fnn.data.load_digits()
    (Xtr, ytr), (Xva, yva), (Xte, yte) = fnn.data.split(X, y, seed=0)
    model = _digits_model()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=2e-3),
                          schedule=fnn.schedules.StepDecay(10, 0.5), seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=25, batch_size=64, val=(Xva, yva), progress=False)
    assert trainer.evaluate(Xte, yte)["accuracy"] >= 0.95
    assert len(hist.loss) == 25 * int(np.ceil(len(Xtr) / 64))
    assert len(hist.train_acc) == len(hist.val_acc) == len(hist.lr) == len(hist.seconds) == 25
    assert hist.lr[0] == 2e-3 and hist.lr[-1] == 2e-3 * 0.25
    assert hist.loss[-1] < hist.loss[0]


def test_nan_loss_stops_and_restores_last_good_state():
    X, y = fnn.data.load_digits()
    model = _digits_model()
    opt = fnn.optim.SGD(model.parameters(), lr=1e30)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    start = model.state_dict()
    with pytest.raises(fnn.TrainingDiverged, match="restored"):
        trainer.fit(X, y, epochs=50, batch_size=32, progress=False)
    for p in model.parameters():
        assert np.isfinite(p.data).all()
    if trainer.epoch == 0:
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, start[k])


def test_fit_rejects_bad_data():
    model = _digits_model()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()))
    X, y = fnn.data.load_digits()
    bad = X.copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="X contains 1 NaN"):
        trainer.fit(bad, y, epochs=1, progress=False)
    with pytest.raises(TypeError, match="X must have dtype"):
        trainer.fit(X.astype(np.float16), y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels must be in"):
        trainer.fit(X, y + 5, epochs=1, progress=False)
    with pytest.raises(ValueError, match="one entry per row"):
        trainer.fit(X, y[:-1], epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        trainer.fit(X, y, epochs=0, progress=False)


def test_history_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    h = fnn.History()
    h.loss = list(np.linspace(2, 0.1, 100))
    h.train_acc, h.val_acc = [0.5, 0.8], [0.4, 0.7]
    h.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_cli_train_and_doctor():
    out = subprocess.run([sys.executable, "-m", "fastnn.cli", "train", "--quiet", "--epochs", "15"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    acc = float(out.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1])
    assert acc >= 0.95
    doc = subprocess.run([sys.executable, "-m", "fastnn.cli", "doctor"], capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0 and "backends available" in doc.stdout and "cuda" in doc.stdout


def test_data_loaders():
    X, y = fnn.data.load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and 0 <= X.min() and X.max() <= 1
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    Xi, _ = fnn.data.load_digits(flatten=False)
    assert Xi.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(Xi.reshape(1797, 64), X)
    S, t = fnn.data.make_spiral(50, 4, seed=1)
    assert S.shape == (200, 2) and np.bincount(t).tolist() == [50] * 4
    parts = fnn.data.split(X, y, (0.5, 0.5), seed=0)
    assert sum(len(p[0]) for p in parts) == 1797
    seen = np.concatenate([b[1] for b in fnn.data.batches(X, y, 100, rng=0)])
    assert sorted(seen.tolist()) == sorted(y.tolist())


def _resume_setup(seed=0):
    fnn.manual_seed(seed)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 48), fnn.nn.BatchNorm1d(48), fnn.nn.ReLU(), fnn.nn.Dropout(0.3),
                              fnn.nn.Linear(48, 10))
    opt = fnn.optim.Adam(model.parameters(), lr=2e-3)
    sched = fnn.schedules.Warmup(fnn.schedules.ReduceOnPlateau(factor=0.5, patience=0), steps=1)
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, schedule=sched, seed=1)


def test_resumed_run_matches_uninterrupted_bit_for_bit(tmp_path):
    X, y = fnn.data.load_digits()
    (Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, seed=0)
    straight = _resume_setup()
    h1 = straight.fit(Xtr, ytr, epochs=4, batch_size=64, val=(Xva, yva), progress=False)
    first = _resume_setup()
    first.fit(Xtr, ytr, epochs=2, batch_size=64, val=(Xva, yva), progress=False)
    first.save_checkpoint(tmp_path / "ckpt.npz")
    resumed = _resume_setup(seed=123)  # different init: everything must come from the checkpoint
    resumed.load_checkpoint(tmp_path / "ckpt.npz")
    h2 = resumed.fit(Xtr, ytr, epochs=4, batch_size=64, val=(Xva, yva), progress=False)
    for k, v in straight.model.state_dict().items():
        np.testing.assert_array_equal(resumed.model.state_dict()[k], v, err_msg=k)
    assert h2.loss == h1.loss and h2.val_acc == h1.val_acc and h2.lr == h1.lr


def test_checkpoint_errors(tmp_path):
    trainer = _resume_setup()
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.npz"):
        trainer.load_checkpoint(bad)
    model_only = tmp_path / "m.npz"
    trainer.model.save(model_only)
    with pytest.raises(ValueError, match="not a fastnn trainer checkpoint"):
        trainer.load_checkpoint(model_only)
