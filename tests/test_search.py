"""Hyperparameter search: samplers, seeding, ordering, parallel trials, and a
real search on the digits."""
import math
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn.search import choice, coarse_to_fine, grid_search, loguniform, random_search, uniform


def quadratic(params):
    """Peak 0 at lr = 1e-2 (in log space), kind = 'b'."""
    return -(math.log10(params["lr"]) + 2.0) ** 2 - (0.0 if params.get("kind", "b") == "b" else 1.0)


def failing_when_large(params):
    if params["lr"] > 0.1:
        raise fnn.TrainingDiverged("loss became nan")
    return -params["lr"]


_DIGITS = None


def digits_objective(params, epochs=6):
    """Validation accuracy of a small MLP on the digits (a module-level function: picklable)."""
    global _DIGITS
    if _DIGITS is None:
        X, y = fnn.data.load_digits()
        _DIGITS = fnn.data.split(X, y, (0.7, 0.3), seed=0)
    (Xtr, ytr), (Xva, yva) = _DIGITS
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 64, activation="relu", rng=1), fnn.nn.Linear(64, 10, rng=2))
    opt = fnn.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=64, val=(Xva, yva), progress=False)
    return hist.val_acc[-1]


def test_samplers_cover_their_ranges_in_the_right_space():
    rng = np.random.default_rng(0)
    lr = np.array([loguniform(1e-5, 1e-1).sample(rng) for _ in range(4000)])
    assert lr.min() >= 1e-5 and lr.max() <= 1e-1
    decades = np.histogram(np.log10(lr), bins=4, range=(-5, -1))[0]
    assert decades.min() > 800                     # every decade equally likely
    u = np.array([uniform(0.2, 0.6).sample(rng) for _ in range(4000)])
    assert 0.2 <= u.min() and u.max() <= 0.6 and abs(u.mean() - 0.4) < 0.01
    c = [choice(["a", "b", 3]).sample(rng) for _ in range(300)]
    assert set(c) == {"a", "b", 3}
    with pytest.raises(ValueError, match="loguniform"):
        loguniform(0, 1)
    with pytest.raises(TypeError, match="space"):
        random_search(quadratic, {"lr": (1e-4, 1)}, 3)


def test_random_search_is_seeded_and_sorted_best_first():
    space = {"lr": loguniform(1e-4, 1.0), "kind": choice(["a", "b"])}
    r1 = random_search(quadratic, space, trials=25, seed=3)
    r2 = random_search(quadratic, space, trials=25, seed=3)
    r3 = random_search(quadratic, space, trials=25, seed=4)
    assert [t.params for t in r1] == [t.params for t in r2]
    assert [t.params for t in r1] != [t.params for t in r3]
    scores = [t.score for t in r1]
    assert scores == sorted(scores, reverse=True) and r1.best.score == max(scores) == r1[0].score
    assert r1.best.params["kind"] == "b" and 1e-3 < r1.best.params["lr"] < 1e-1
    assert len(r1) == 25
    table = r1.table()
    assert table.splitlines()[0].split() == ["rank", "score", "lr", "kind", "seconds"]
    assert len(table.splitlines()) == 27
    imp = r1.importance()
    assert imp["lr"] > 0.3


def test_failed_trials_sort_last_and_all_failing_raises():
    res = random_search(failing_when_large, {"lr": loguniform(1e-3, 1.0)}, trials=12, seed=0)
    failed = [t for t in res if not t.ok]
    assert failed and all(math.isnan(t.score) and "TrainingDiverged" in t.error for t in failed)
    assert all(t.ok for t in res.trials[:len(res) - len(failed)])
    assert "failed" in res.table()
    with pytest.raises(RuntimeError, match="every trial failed"):
        random_search(failing_when_large, {"lr": loguniform(0.2, 1.0)}, trials=3, seed=0)


def test_grid_search_tries_every_combination():
    res = grid_search(quadratic, {"lr": [1e-3, 1e-2, 1e-1], "kind": ["a", "b"]})
    assert len(res) == 6
    assert res.best.params == {"lr": 1e-2, "kind": "b"} and res.best.score == 0.0
    assert {(t.params["lr"], t.params["kind"]) for t in res} == {(a, b) for a in (1e-3, 1e-2, 1e-1) for b in "ab"}


def test_coarse_to_fine_narrows_in_log_space_around_the_best():
    space = {"lr": loguniform(1e-6, 1.0), "kind": choice(["a", "b"])}
    res = coarse_to_fine(quadratic, space, rounds=3, trials=12, shrink=0.3, top_k=2, seed=0)
    assert len(res) == 36 and {t.round for t in res} == {0, 1, 2}
    widths = [math.log10(s["lr"].high / s["lr"].low) for s in res.spaces]
    assert widths[0] == pytest.approx(6) and widths[1] < 0.8 * widths[0] and widths[2] <= widths[1]
    last = res.spaces[-1]["lr"]
    assert last.low < 1.5e-2 and last.high > 0.7e-2           # the optimum stays inside
    fine = [t for t in res if t.round == 2]
    coarse = [t for t in res if t.round == 0]
    assert np.median([t.score for t in fine]) > np.median([t.score for t in coarse])


def test_parallel_trials_match_serial_ones():
    space = {"lr": loguniform(1e-4, 1.0), "kind": choice(["a", "b"])}
    serial = random_search(quadratic, space, trials=6, seed=1)
    parallel = random_search(quadratic, space, trials=6, seed=1, n_jobs=2)
    assert [(t.params, t.score) for t in serial] == [(t.params, t.score) for t in parallel]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as ex:
        threaded = random_search(lambda p: quadratic(p), space, trials=6, seed=1, executor=ex)
    assert [t.score for t in threaded] == [t.score for t in serial]
    with pytest.raises(TypeError, match="picklable"):
        random_search(lambda p: 0.0, space, trials=2, n_jobs=2)


def test_random_search_on_digits_finds_95_percent():
    space = {"lr": loguniform(1e-4, 1e-1), "weight_decay": loguniform(1e-6, 1e-2)}
    res = random_search(digits_objective, space, trials=4, seed=0)
    assert res.best.score >= 0.95, res.table()
    assert 1e-4 <= res.best.params["lr"] <= 1e-1


def test_search_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra")
    space = {"lr": loguniform(1e-4, 1.0), "kind": choice(["a", "b"]), "noise": uniform(0, 1)}
    res = random_search(quadratic, space, trials=10, seed=0)
    fig = res.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert fig.axes[0].get_xscale() == "log"              # lr is the most important and loguniform


def test_cli_search_prints_a_table():
    out = subprocess.run([sys.executable, "-m", "fastnn.cli", "search", "--trials", "3", "--epochs", "4"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.split()[:3] == ["rank", "score", "lr"] for line in lines)
    assert lines[-1].startswith("best:")
