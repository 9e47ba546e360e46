"""Hyperparameter search ("Training Neural Networks I": random search beats
grid search; coarse to fine; learning rate and regularization in log space)::

    space = {"lr": loguniform(1e-4, 1e-1), "weight_decay": loguniform(1e-6, 1e-2),
             "hidden": choice([64, 128, 256])}
    result = random_search(objective, space, trials=20, seed=0)
    print(result.table()); result.best.params

``objective(params: dict) -> float`` returns a score, higher is better (e.g.
the validation accuracy). A trial whose objective raises (a diverging lr, say)
or returns NaN is kept with score NaN and its error, and sorts last; if every
trial fails the first error is raised.

Parallel trials: ``n_jobs > 1`` runs them in a ``ProcessPoolExecutor`` of
n_jobs "spawn" processes (fork is unsafe once OpenMP threads exist), each
with cpu_count / n_jobs kernel threads. The objective is pickled to the
workers, so it must be a module-level function (or a functools.partial of
one), not a lambda, closure or a function defined in ``__main__`` of an
interactive session. Each worker imports the script that started the search,
so a script must run the search under ``if __name__ == "__main__":`` (without
the guard the workers die at start-up, and the search says so).
``executor=`` takes any ``concurrent.futures.Executor`` (a Dask
``distributed.Client`` too, e.g. ``Client("tcp://scheduler:8786")``)
instead; the search does not shut it down. Results come back as trials finish
(``callback=`` sees each one); a trial whose future fails (its worker died,
its objective could not be sent) is recorded as failed like one that raised.
"""
from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import itertools
import math
import multiprocessing
import os
import pickle
import re
import sys
import time
import warnings

import numpy as np

from . import _validate as V
from ._threads import set_num_threads

# --- samplers ----------------------------------------------------------------

class Sampler:
    """Base of the search-space distributions (``loguniform``, ``uniform``, ``choice``)."""

    def sample(self, rng: np.random.Generator):
        """One random value from the distribution, drawn with ``rng`` (a numpy Generator)."""
        raise NotImplementedError

    def narrow(self, values, shrink: float, widen: bool = False) -> "Sampler":
        """A smaller range around values (the best trials' values, best first);
        with ``widen``, extended past an edge the best value sits at."""
        raise NotImplementedError


class Uniform(Sampler):
    """Uniform on [low, high]: ``uniform(a, b)`` builds one. For a hyperparameter
    whose scale matters additively (dropout p); use ``loguniform`` for learning
    rates and regularization strengths.
    """
    log = False

    def __init__(self, low, high):
        self.low = V.real(low, "low")
        self.high = V.real(high, "high", low=self.low)

    def _to(self, v):
        return v

    def _from(self, u):
        return u

    def sample(self, rng):
        """One value ``uniform(low, high)`` (``exp(uniform(log low, log high))`` for LogUniform)."""
        return float(self._from(rng.uniform(self._to(self.low), self._to(self.high))))

    # The best value within this fraction of the width (in the sampling space)
    # of an edge "sits at the edge": the optimum may lie beyond it.
    EDGE = 0.1

    def narrow(self, values, shrink, widen=False):
        """A range ``shrink`` times as wide (on the log scale for LogUniform)
        around the best values (coarse-to-fine search); with ``widen``, moved
        past an edge the best value sits at."""
        lo, hi = self._to(self.low), self._to(self.high)
        width = hi - lo
        pts = [self._to(v) for v in values]
        half = shrink * width / 2
        # Centered on the best, wide enough to hold the other good trials, inside the old range.
        a = max(lo, min(pts[0] - half, min(pts)))
        b = min(hi, max(pts[0] + half, max(pts)))
        if widen and width > 0:
            # The notes: a best value at the edge of the range means the range
            # was wrong; search past that edge by half the old width. "At the
            # edge": within EDGE of the width, or close enough that the window
            # around the best would be cut off by the edge.
            zone = max(self.EDGE * width, half)
            if pts[0] - lo < zone:
                a = self._limit(lo - width / 2, lo)
            if hi - pts[0] < zone:
                b = self._limit(hi + width / 2, hi)
        return type(self)(float(self._from(a)), float(self._from(b)))

    def _limit(self, extended, edge):
        """A plain uniform range never widens across zero (a probability or a
        momentum stays non-negative; a negative range stays negative)."""
        if edge >= 0 > extended or edge <= 0 < extended:
            return 0.0
        return extended

    def __repr__(self):
        return f"{type(self).__name__.lower()}({self.low:.4g}, {self.high:.4g})"


class LogUniform(Uniform):
    """exp(uniform(log a, log b)): every decade equally likely."""

    log = True

    def __init__(self, low, high):
        super().__init__(low, high)
        if self.low <= 0:
            raise ValueError(f"loguniform needs 0 < low <= high, got ({low}, {high})")

    def _to(self, v):
        return math.log(v)

    def _from(self, u):
        return math.exp(u)

    def _limit(self, extended, edge):
        return extended           # log space: any width stays positive


class Choice(Sampler):
    """One of a list of options, each equally likely: ``choice([...])`` builds one."""
    log = False

    def __init__(self, options):
        self.options = list(options)
        if not self.options:
            raise ValueError("choice needs at least one option")

    def sample(self, rng):
        """One of the options, uniformly at random."""
        return self.options[int(rng.integers(len(self.options)))]

    def narrow(self, values, shrink, widen=False):
        """The options that appear among the best values (all of them if none does)."""
        keep = [o for o in self.options if any(_same(o, v) for v in values)]
        return Choice(keep or self.options)

    def __repr__(self):
        return f"choice({self.options!r})"


def _same(a, b):
    try:
        return bool(a == b)
    except Exception:
        return a is b


def loguniform(a, b) -> LogUniform:
    """Log-uniform on [a, b] (0 < a <= b): learning rates, weight decay."""
    return LogUniform(a, b)


def uniform(a, b) -> Uniform:
    """Uniform on [a, b]: dropout probability, momentum."""
    return Uniform(a, b)


def choice(options) -> Choice:
    """One of the given options, equally likely."""
    return Choice(options)


def _check_space(space):
    if not isinstance(space, dict) or not space:
        raise TypeError("space must be a non-empty dict mapping names to loguniform/uniform/choice")
    for k, s in space.items():
        if not isinstance(s, Sampler):
            raise TypeError(f"space[{k!r}] must be loguniform(a, b), uniform(a, b) or choice([...]), "
                            f"got {type(s).__name__}")
    return space


# --- results -------------------------------------------------------------------

class Trial:
    """One evaluated point: ``params``, ``score`` (NaN if it failed), ``error``
    (the exception text or None), ``index`` (order of sampling), ``round``,
    ``seconds``, ``budget`` (what ``coarse_to_fine(budgets=...)`` passed, else None)."""

    __slots__ = ("params", "score", "error", "index", "round", "seconds", "budget")

    def __init__(self, params, score, error=None, index=0, round=0, seconds=0.0, budget=None):
        self.params, self.score, self.error = params, score, error
        self.index, self.round, self.seconds = index, round, seconds
        self.budget = budget

    @property
    def ok(self) -> bool:
        """True when the trial ran without error and its score is finite."""
        return self.error is None and math.isfinite(self.score)

    def __repr__(self):
        return f"Trial(score={self.score:.4g}, params={self.params})"


def _sort_key(t: Trial):
    return (0, -t.score, t.index) if t.ok else (1, 0.0, t.index)


class SearchResult:
    """Trials, best first (iterate, index, len); ``best``; ``table()``; ``plot(path)``."""

    def __init__(self, trials, space=None, spaces=None):
        self.trials = sorted(trials, key=_sort_key)
        self.space = space or {}
        self.spaces = spaces or ([space] if space else [])

    def __iter__(self):
        return iter(self.trials)

    def __len__(self):
        return len(self.trials)

    def __getitem__(self, i):
        return self.trials[i]

    @property
    def best(self) -> Trial:
        """The trial with the highest score."""
        return self.trials[0]

    def _is_log(self, name) -> bool:
        return bool(getattr(self.space.get(name), "log", False))

    def importance(self) -> dict:
        """{name: 0..1}: the fraction of the score variance explained by each
        hyperparameter alone (eta squared). Choices group by option; numbers
        group into up to 5 equal-count bins of their (log, for loguniform)
        value, so a peak in the middle of a range counts as much as a slope."""
        ok = [t for t in self.trials if t.ok]
        names = list(self.space) or (list(ok[0].params) if ok else [])
        if len(ok) < 3:
            return {n: 0.0 for n in names}
        scores = np.array([t.score for t in ok])
        total = float(((scores - scores.mean()) ** 2).sum())
        out = {}
        for n in names:
            vals = [t.params.get(n) for t in ok]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals) and len(set(vals)) > 5:
                x = np.asarray(vals, np.float64)
                bins = max(2, min(5, len(ok) // 3))
                groups = np.minimum((_ranks(x) * bins / len(x)).astype(int), bins - 1)
            else:
                keys = [repr(v) for v in vals]
                groups = np.array([sorted(set(keys)).index(k) for k in keys])
            between = sum(np.sum(groups == g) * (scores[groups == g].mean() - scores.mean()) ** 2
                          for g in np.unique(groups))
            out[n] = float(between / total) if total > 0 else 0.0
        return out

    def table(self, top=None) -> str:
        """A text table of the trials, best first."""
        rows = self.trials if top is None else self.trials[:top]
        names = list(self.space) or sorted({k for t in rows for k in t.params})
        budgets = any(t.budget is not None for t in rows)
        header = ["rank", "score"] + names + (["budget"] if budgets else []) + ["seconds"]
        body = []
        for r, t in enumerate(rows, 1):
            cells = [str(r), f"{t.score:.4f}" if t.ok else "failed"]
            for n in names:
                v = t.params.get(n, "")
                cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
            if budgets:
                cells.append("" if t.budget is None else str(t.budget))
            cells.append(f"{t.seconds:.1f}")
            if t.error:
                cells[-1] += f"  ({t.error})"
            body.append(cells)
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
        fmt = lambda row: "  ".join(c.rjust(w) for c, w in zip(row, widths))  # noqa: E731
        return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])

    def __str__(self):
        return self.table()

    def plot(self, path=None):
        """Score over the two most important hyperparameters (colour = score;
        log axes for loguniform ones), or score over the only one. Needs matplotlib."""
        plt = V.pyplot("SearchResult.plot")
        ok = [t for t in self.trials if t.ok]
        if not ok:
            raise ValueError("no successful trial to plot")
        imp = self.importance()
        names = sorted(imp, key=lambda n: -imp[n])[:2]
        scores = np.array([t.score for t in ok])

        def axis_values(n):
            vals = [t.params[n] for t in ok]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                return np.asarray(vals, np.float64), None
            labels = sorted({repr(v) for v in vals})
            return np.array([labels.index(repr(v)) for v in vals], np.float64), labels

        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs, xlabels = axis_values(names[0])
        if len(names) == 1:
            ax.scatter(xs, scores, c="C0")
            ax.set_ylabel("score")
        else:
            ys, ylabels = axis_values(names[1])
            sc = ax.scatter(xs, ys, c=scores, cmap="viridis", s=60, edgecolors="k")
            best = ok[0]
            ax.scatter([xs[0]], [ys[0]], marker="*", s=300, c="red", label=f"best {best.score:.4f}")
            fig.colorbar(sc, ax=ax, label="score")
            ax.set_ylabel(f"{names[1]} (importance {imp[names[1]]:.2f})")
            if ylabels:
                ax.set_yticks(range(len(ylabels)), ylabels)
            elif self._is_log(names[1]):
                ax.set_yscale("log")
            ax.legend(loc="best")
        ax.set_xlabel(f"{names[0]} (importance {imp[names[0]]:.2f})")
        if xlabels:
            ax.set_xticks(range(len(xlabels)), xlabels)
        elif self._is_log(names[0]):
            ax.set_xscale("log")
        ax.set_title(f"{len(ok)} trials")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=110)
            plt.close(fig)
        return fig


def _ranks(a):
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(len(a))
    for v in np.unique(a):      # ties share their mean rank
        m = a == v
        r[m] = r[m].mean()
    return r


# --- running trials -------------------------------------------------------------

def _evaluate(objective, params, budget=None):
    """Runs one trial (also in worker processes): (score, error, seconds).
    ``objective(params)``, or ``objective(params, budget)`` when a budget is given."""
    t0 = time.perf_counter()
    try:
        args = (dict(params),) if budget is None else (dict(params), budget)
        score = float(objective(*args))
        error = None if math.isfinite(score) else f"objective returned {score}"
    except Exception as exc:  # a diverging trial must not end the search
        score, error = float("nan"), f"{type(exc).__name__}: {exc}"
    if error is not None:
        score = float("nan")
    return score, error, time.perf_counter() - t0


def _worker_init(threads):
    set_num_threads(threads)


def _completed(futures):
    """Futures in the order they finish: Dask futures through distributed.as_completed,
    any other through concurrent.futures.as_completed."""
    if futures and type(futures[0]).__module__.split(".")[0] == "distributed":
        from distributed import as_completed
        return as_completed(futures)
    return concurrent.futures.as_completed(futures)


def _collect(futures, param_list, callback, round_, start_index, budget=None):
    """Trials as their futures finish; a future that raises (a worker lost, an
    objective that cannot be sent) becomes a failed trial."""
    index = {id(f): i for i, f in enumerate(futures)}
    trials = [None] * len(futures)
    for f in _completed(futures):
        i = index[id(f)]
        try:
            score, error, seconds = f.result()
        except Exception as exc:
            score, error, seconds = float("nan"), f"{type(exc).__name__}: {exc}", 0.0
        trials[i] = Trial(param_list[i], score, error, start_index + i, round_, seconds, budget)
        if callback is not None:
            callback(trials[i])
    return trials


_GUARD = re.compile(r"""^\s*if\s+(__name__\s*==\s*['"]__main__['"]|['"]__main__['"]\s*==\s*__name__)""",
                    re.MULTILINE)


def _unguarded_main_script():
    """The path of the running script if it has no ``if __name__ == "__main__":``
    guard (so every "spawn" worker re-runs it from the top), else None."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None             # an interactive session or python -c: nothing to re-run
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            source = f.read()
    except OSError:
        return None
    return None if _GUARD.search(source) else path


def _guard_message(n_jobs, script=None):
    where = f"{script} has" if script else "the script that runs the search has"
    return (f"n_jobs={n_jobs} runs trials in 'spawn' worker processes, and each worker imports the main "
            f"script again; {where} no `if __name__ == \"__main__\":` guard, so every worker re-ran the "
            "search at start-up and died (BrokenProcessPool). Put the code that runs the search under "
            "`if __name__ == \"__main__\":` (keep the objective a module-level function), or use n_jobs=1.")


def _pool_trials(objective, param_list, n_jobs, round_, start_index, callback, budget):
    """Trials on a spawn ProcessPoolExecutor of n_jobs workers."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # We are a worker re-running an unguarded script: say why instead of
        # multiprocessing's generic bootstrapping error.
        raise RuntimeError(_guard_message(n_jobs))
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    with concurrent.futures.ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(threads,)) as pool:
        futures = [pool.submit(_evaluate, objective, p, budget) for p in param_list]
        trials = _collect(futures, param_list, callback, round_, start_index, budget)
        broken = [f for f in futures if f.done() and not f.cancelled() and isinstance(
            f.exception(), concurrent.futures.process.BrokenProcessPool)]
    if broken:
        script = _unguarded_main_script()
        if script is not None:
            raise RuntimeError(_guard_message(n_jobs, script)) from broken[0].exception()
        if not any(t.ok for t in trials):
            raise RuntimeError(
                f"every trial failed: a worker process of n_jobs={n_jobs} died (BrokenProcessPool), which "
                "kills the whole pool. Usual causes: no `if __name__ == \"__main__\":` guard around the "
                "search in the script, the machine running out of memory, or a crash in native code; run "
                "with n_jobs=1 to see the objective's own error.") from broken[0].exception()
    return trials


def _run(objective, param_list, n_jobs, executor, round_=0, start_index=0, callback=None, budget=None):
    n_jobs = V.positive_int(n_jobs, "n_jobs")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (called with each Trial as it finishes), got {callback!r}")
    if executor is not None and not callable(getattr(executor, "submit", None)):
        raise TypeError("executor must be a concurrent.futures.Executor or a dask distributed.Client "
                        f"(something with .submit), got {type(executor).__name__}")
    if executor is None and n_jobs > 1:
        try:
            pickle.dumps(objective)
        except Exception as exc:
            raise TypeError("n_jobs > 1 runs trials in other processes, so the objective must be picklable: "
                            "a module-level function (or functools.partial of one), not a lambda, closure or "
                            f"local function ({exc})") from exc
        trials = _pool_trials(objective, param_list, n_jobs, round_, start_index, callback, budget)
    elif executor is not None:
        futures = [executor.submit(_evaluate, objective, p, budget) for p in param_list]
        trials = _collect(futures, param_list, callback, round_, start_index, budget)
    else:
        trials = []
        for i, p in enumerate(param_list):
            score, error, seconds = _evaluate(objective, p, budget)
            trials.append(Trial(p, score, error, start_index + i, round_, seconds, budget))
            if callback is not None:
                callback(trials[-1])
    if trials and not any(t.ok for t in trials):
        raise RuntimeError(f"every trial failed; the first: {trials[0].error}")
    return trials


def _sample(space, trials, rng):
    return [{k: s.sample(rng) for k, s in space.items()} for _ in range(trials)]


def random_search(objective, space, trials, seed=None, n_jobs=1, executor=None, callback=None) -> SearchResult:
    """``trials`` random points of ``space`` (names -> samplers), drawn up front
    from ``seed`` (same seed, same points, whatever n_jobs), each scored by
    ``objective(params)`` (higher is better). ``callback(trial)`` is called
    with each Trial as it finishes (completion order)."""
    space = _check_space(space)
    trials = V.positive_int(trials, "trials")
    params = _sample(space, trials, np.random.default_rng(seed))
    return SearchResult(_run(objective, params, n_jobs, executor, callback=callback), space)


def grid_search(objective, grid, n_jobs=1, executor=None, callback=None) -> SearchResult:
    """Every combination of ``grid`` (names -> lists of values, or choice([...]))."""
    if not isinstance(grid, dict) or not grid:
        raise TypeError("grid must be a non-empty dict mapping names to lists of values")
    axes = {}
    for k, v in grid.items():
        values = v.options if isinstance(v, Choice) else list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
        if not values:
            raise TypeError(f"grid[{k!r}] must be a non-empty list of values (or choice([...])), got {v!r}")
        axes[k] = values
    params = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    return SearchResult(_run(objective, params, n_jobs, executor, callback=callback),
                        {k: Choice(v) for k, v in axes.items()})


def coarse_to_fine(objective, space, rounds=2, trials=10, shrink=0.3, top_k=3, seed=None, n_jobs=1,
                   executor=None, callback=None, budgets=None, widen=True) -> SearchResult:
    """Random search in ``rounds``: each round after the first samples a range
    narrowed around the best trials so far (width ``shrink`` times the previous
    one, centred on the best, stretched to hold the ``top_k`` best; in log space
    for loguniform; choices keep the options of the top_k). ``trials`` is per
    round (an int or one int per round). The result holds every round's trials
    (``trial.round``) and ``spaces`` (one per round).

    Widening (``widen=True``): when the best value of a numeric parameter sits
    at an edge of its range (within 10% of the width, or within the next
    window's half-width ``shrink``/2; in log space for loguniform), the optimum
    may lie beyond it, so the next range extends past that edge by half the old
    width (a uniform range never crosses zero) and a UserWarning names the
    parameter and the new range. ``widen=False`` only narrows.

    Budgets: ``budgets=[b0, b1, ...]`` (one per round, e.g. epochs) calls
    ``objective(params, budget)`` with the round's budget, so a coarse round
    trains briefly and later rounds longer; each Trial records its ``budget``.
    Scores of different budgets are compared as they are (the best trial
    overall is usually from the longest round)."""
    space = _check_space(space)
    rounds = V.positive_int(rounds, "rounds")
    per_round = [trials] * rounds if isinstance(trials, (int, np.integer)) else list(trials)
    if len(per_round) != rounds:
        raise ValueError(f"trials must be an int or {rounds} ints, got {trials!r}")
    if budgets is not None:
        if isinstance(budgets, (str, bytes)) or not hasattr(budgets, "__len__"):
            raise TypeError(f"budgets must be a list with one budget per round ({rounds}), got {budgets!r}")
        budgets = list(budgets)
        if len(budgets) != rounds:
            raise ValueError(f"budgets must hold one budget per round ({rounds}), got {len(budgets)}: {budgets!r}")
        if any(b is None for b in budgets):
            raise ValueError(f"budgets must not contain None, got {budgets!r}")
    shrink = V.real(shrink, "shrink", low=0.0, high=1.0, low_open=True)
    top_k = V.positive_int(top_k, "top_k")
    rng = np.random.default_rng(seed)
    everything, spaces, current = [], [], dict(space)
    for r in range(rounds):
        spaces.append(current)
        params = _sample(current, V.positive_int(per_round[r], "trials"), rng)
        everything += _run(objective, params, n_jobs, executor, round_=r, start_index=len(everything),
                           callback=callback, budget=None if budgets is None else budgets[r])
        if r == rounds - 1:
            break
        good = [t for t in sorted(everything, key=_sort_key) if t.ok][:top_k]
        following = {}
        for k, s in current.items():
            following[k] = s.narrow([t.params[k] for t in good], shrink, widen=widen)
            if isinstance(s, Uniform) and (following[k].low < s.low or following[k].high > s.high):
                side = "lower" if following[k].low < s.low else "upper"
                warnings.warn(
                    f"coarse_to_fine: the best {k!r} so far ({good[0].params[k]:.4g}) sits at the {side} edge "
                    f"of round {r}'s range {s!r}; round {r + 1} searches the widened range {following[k]!r}",
                    UserWarning, stacklevel=2)
        current = following
    return SearchResult(everything, space, spaces)


__all__ = ["loguniform", "uniform", "choice", "random_search", "grid_search", "coarse_to_fine",
           "SearchResult", "Trial", "LogUniform", "Uniform", "Choice"]
