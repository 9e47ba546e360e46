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


# --- coarse to fine: widening past an edge, budgets (issue 18 item 9) ----------------------------

def optimum_at_2e_7(params):
    """Peak 0 at lr = 2e-7, outside the starting range [1e-6, 1e-3]."""
    return -abs(math.log10(params["lr"]) - math.log10(2e-7))


def test_coarse_to_fine_widens_past_an_edge_the_best_sits_at():
    space = {"lr": loguniform(1e-6, 1e-3)}
    with pytest.warns(UserWarning, match=r"'lr'.*lower edge.*widened range loguniform\(") as record:
        res = coarse_to_fine(optimum_at_2e_7, space, rounds=4, trials=10, seed=0)
    assert res.best.params["lr"] < 4e-7, res.table()                 # well below the starting 1e-6
    assert res.spaces[1]["lr"].low < 1e-6                             # the range extended past the edge
    first = str(record[0].message)
    assert f"loguniform({res.spaces[1]['lr'].low:.4g}" in first      # the warning names the new range
    # Without widening the range can only shrink: the best stays at the old edge.
    narrow = coarse_to_fine(optimum_at_2e_7, space, rounds=4, trials=10, seed=0, widen=False)
    assert narrow.best.params["lr"] >= 1e-6


def test_widening_extends_in_log_space_and_a_uniform_range_never_crosses_zero():
    lu = loguniform(1e-4, 1e-2).narrow([1.05e-4, 2e-3], 0.3, widen=True)
    assert lu.low == pytest.approx(1e-5) and lu.high < 1e-2          # half the old width: one decade
    u = uniform(0.0, 0.5).narrow([0.01, 0.2], 0.3, widen=True)
    assert u.low == 0.0                                               # a probability stays a probability
    u = uniform(0.1, 0.5).narrow([0.48, 0.3], 0.3, widen=True)
    assert u.high == pytest.approx(0.7) and u.low >= 0.1
    inside = loguniform(1e-4, 1e-2).narrow([1e-3], 0.3, widen=True)
    assert 1e-4 <= inside.low and inside.high <= 1e-2                 # an interior best only narrows


def test_coarse_to_fine_with_an_interior_optimum_does_not_warn():
    space = {"lr": loguniform(1e-6, 1.0), "kind": choice(["a", "b"])}
    res = coarse_to_fine(quadratic, space, rounds=3, trials=12, seed=0)     # warnings are errors here
    assert all(s["lr"].low >= 1e-6 and s["lr"].high <= 1.0 for s in res.spaces)


_BUDGET_CALLS = []


def budgeted(params, budget):
    _BUDGET_CALLS.append(budget)
    return -(math.log10(params["lr"]) + 2.0) ** 2 + 0.01 * budget


def test_coarse_to_fine_passes_one_budget_per_round_in_order():
    _BUDGET_CALLS.clear()
    space = {"lr": loguniform(1e-4, 1.0)}
    res = coarse_to_fine(budgeted, space, rounds=3, trials=[4, 3, 2], budgets=[1, 5, 20], seed=0)
    assert _BUDGET_CALLS == [1] * 4 + [5] * 3 + [20] * 2
    assert {(t.round, t.budget) for t in res} == {(0, 1), (1, 5), (2, 20)}
    assert "budget" in res.table().splitlines()[0]
    with pytest.raises(ValueError, match="one budget per round"):
        coarse_to_fine(budgeted, space, rounds=3, budgets=[1, 2])
    with pytest.raises(TypeError, match="budgets"):
        coarse_to_fine(budgeted, space, rounds=2, budgets=5)
    # Without budgets the objective still gets params only.
    res = coarse_to_fine(quadratic, space, rounds=2, trials=3, seed=0)
    assert all(t.budget is None for t in res) and "budget" not in res.table().splitlines()[0]


# --- n_jobs > 1 in a script without a __main__ guard (issue 16) ----------------------------------

_SCRIPT = '''
import math
from fastnn.search import loguniform, random_search

def objective(params):
    return -abs(math.log10(params["lr"]) + 2)

{body}
'''
_SEARCH = 'print("BEST", random_search(objective, {"lr": loguniform(1e-4, 1)}, trials=4, seed=0, n_jobs=2).best)'


def _run_script(tmp_path, body):
    script = tmp_path / "search_script.py"
    script.write_text(_SCRIPT.format(body=body))
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_parallel_search_without_a_main_guard_says_what_to_do(tmp_path):
    out = _run_script(tmp_path, _SEARCH)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: n_jobs=2 runs trials in 'spawn' worker processes"), out.stderr
    assert "search_script.py has no `if __name__ == \"__main__\":` guard" in last
    assert "or use n_jobs=1" in last and "BEST" not in out.stdout
    guarded = _run_script(tmp_path, 'if __name__ == "__main__":\n    ' + _SEARCH)
    assert guarded.returncode == 0, guarded.stderr
    assert "BEST Trial(score=" in guarded.stdout
