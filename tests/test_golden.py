"""fastnn's optimizers and learning-rate schedules replayed against golden
trajectories recorded from ``torch.optim`` (torch 2.13.0, pinned).

The golden files in tests/data/ were written once by tests/data/record_golden.py
(see its docstring for the files' layout and how to re-record); this file never
imports torch. The fused optimizers run on every backend (and every CPU ISA of
the C++ backend) and must agree with PyTorch to 1e-12 relative in float64; in
float32 they must track the float64 trajectory to 1e-5. LBFGS and the
schedules are pure NumPy/Python in fastnn (no kernel dispatch), so they run
once.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import fastnn as fnn

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PINNED_TORCH = "2.13.0"
RTOL64, RTOL32 = 1e-12, 1e-5


def _load(name):
    with np.load(os.path.join(DATA, name), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads(str(arrays["meta"][0]))


OPTIM, OPTIM_META = _load("golden_optim.npz")
LBFGS, LBFGS_META = _load("golden_lbfgs.npz")
SCHEDULES, SCHEDULES_META = _load("golden_schedules.npz")

# torch.optim class name -> fastnn optimizer; the keyword names are the same.
OPTIMIZERS = {"SGD": fnn.optim.SGD, "Adagrad": fnn.optim.Adagrad, "RMSprop": fnn.optim.RMSProp,
              "Adam": fnn.optim.Adam, "AdamW": fnn.optim.AdamW}

# torch.optim.lr_scheduler class name -> fastnn schedule built from torch's arguments.
SCHEDULES_FROM_TORCH = {
    "StepLR": lambda a: fnn.schedules.StepDecay(a["step_size"], a.get("gamma", 0.1)),
    "ExponentialLR": lambda a: fnn.schedules.ExponentialDecay(k=-math.log(a["gamma"])),
    "CosineAnnealingLR": lambda a: fnn.schedules.CosineAnnealing(a["T_max"], a.get("eta_min", 0.0)),
    "CosineAnnealingWarmRestarts": lambda a: fnn.schedules.CosineWarmRestarts(a["T_0"], a.get("T_mult", 1),
                                                                            a.get("eta_min", 0.0)),
    "CyclicLR": lambda a: fnn.schedules.CyclicLR(a["base_lr"], a["max_lr"], a["step_size_up"]),
    "LinearLR": lambda a: fnn.schedules.Warmup(fnn.schedules.Constant(), steps=a["total_iters"],
                                               start_factor=a["start_factor"]),
    "ReduceLROnPlateau": lambda a: fnn.schedules.ReduceOnPlateau(
        factor=a.get("factor", 0.1), patience=a.get("patience", 10), mode=a.get("mode", "min"),
        threshold=a.get("threshold", 1e-4), min_lr=a.get("min_lr", 0.0)),
    "SequentialLR": lambda a: _warmup_then(a),
}


def _warmup_then(a):
    """SequentialLR([LinearLR(start_factor, total_iters), X], milestones=[total_iters])
    is fastnn's Warmup(X, steps=total_iters, start_factor)."""
    (first, warm), (then, after) = a["schedulers"]
    assert first == "LinearLR" and warm.get("end_factor", 1.0) == 1.0
    assert a["milestones"] == [warm["total_iters"]]
    return fnn.schedules.Warmup(SCHEDULES_FROM_TORCH[then](after), steps=warm["total_iters"],
                                start_factor=warm["start_factor"])


def assert_close(got, want, rtol, what):
    """|got - want| <= rtol * max(1, max|want|) entrywise: relative to the array's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))))
    err = float(np.max(np.abs(got - want))) / scale
    assert err <= rtol, f"{what}: relative error {err:.3e} to torch's > {rtol:.0e}"


# --- the files themselves ------------------------------------------------------

def test_golden_files_come_from_the_pinned_torch_and_cover_every_config():
    for arrays, meta in ((OPTIM, OPTIM_META), (LBFGS, LBFGS_META), (SCHEDULES, SCHEDULES_META)):
        assert meta["torch_version"].split("+")[0] == PINNED_TORCH
        assert meta["recorded_by"] == "tests/data/record_golden.py"
        assert meta["configs"]
    n = len(OPTIM_META["shapes"])
    for name, cfg in OPTIM_META["configs"].items():
        assert cfg["optimizer"] in OPTIMIZERS, name
        for i in range(n):
            traj = OPTIM[f"traj/{name}/{i}"]
            assert traj.shape == (OPTIM_META["steps"] + 1, *OPTIM_META["shapes"][i])
            assert np.array_equal(traj[0], OPTIM[f"init/{i}"])
            # every parameter really moves, so agreement is not agreement on "nothing happened"
            assert np.min(np.abs(np.diff(traj, axis=0)).sum(axis=0)) > 1e-2, (name, i)
    for name in LBFGS_META["configs"]:
        assert LBFGS[f"loss/{name}"][0] > LBFGS[f"loss/{name}"][-1] + 0.1, name
    for name, cfg in SCHEDULES_META["configs"].items():
        assert cfg["scheduler"] in SCHEDULES_FROM_TORCH, name
        assert len(set(SCHEDULES[f"lr/{name}"].tolist())) > 2, name


# --- fused optimizers (every backend) ---------------------------------------------

def _replay(name, dtype):
    """fastnn's trajectory of config ``name`` over the recorded gradients: a list,
    per parameter, of (steps + 1, *shape) float64 arrays."""
    cfg = OPTIM_META["configs"][name]
    n = len(OPTIM_META["shapes"])
    params = [fnn.nn.Parameter(OPTIM[f"init/{i}"].astype(dtype), f"p{i}") for i in range(n)]
    kwargs = {k: tuple(v) if k == "betas" else v for k, v in cfg["kwargs"].items()}
    if "clip_grad_norm" in cfg:
        kwargs["clip_grad_norm"] = cfg["clip_grad_norm"]
    groups = params
    if "groups" in cfg:
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[j] for j in g["params"]]}
                  for g in cfg["groups"]]
    opt = OPTIMIZERS[cfg["optimizer"]](groups, **kwargs)
    traj = [[p.data.astype(np.float64)] for p in params]
    for t in range(OPTIM_META["steps"]):
        for i, p in enumerate(params):
            p.grad[...] = OPTIM[f"grads/{i}"][t]
        assert opt.step() is True
        for i, p in enumerate(params):
            traj[i].append(p.data.astype(np.float64))
    return [np.stack(tr) for tr in traj]


@pytest.mark.parametrize("name", sorted(OPTIM_META["configs"]))
def test_optimizer_trajectory_matches_torch_float64(backend, name):
    for i, traj in enumerate(_replay(name, np.float64)):
        assert_close(traj, OPTIM[f"traj/{name}/{i}"], RTOL64, f"{name} ({backend}) parameter {i}")


@pytest.mark.parametrize("name", sorted(OPTIM_META["configs"]))
def test_optimizer_trajectory_tracks_torch_float32(backend, name):
    for i, traj in enumerate(_replay(name, np.float32)):
        assert_close(traj, OPTIM[f"traj/{name}/{i}"], RTOL32, f"{name} float32 ({backend}) parameter {i}")


# --- LBFGS ------------------------------------------------------------------------

def _softmax_regression(W, b):
    """(loss, dW, db) of mean softmax cross-entropy of X @ W + b plus l2/2 ||W||^2."""
    X, y, l2 = LBFGS["X"], LBFGS["y"], float(LBFGS["l2"])
    z = X @ W + b
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = X.shape[0]
    loss = -log_p[np.arange(n), y].mean() + 0.5 * l2 * float(np.sum(W * W))
    dz = np.exp(log_p)
    dz[np.arange(n), y] -= 1.0
    dz /= n
    return loss, X.T @ dz + l2 * W, dz.sum(axis=0)


def test_softmax_regression_gradient_is_the_gradient_of_its_loss():
    # the closure below stands in for torch's autograd: check it numerically
    rng = np.random.default_rng(0)
    W, b = LBFGS["W0"], LBFGS["b0"]
    _, dW, db = _softmax_regression(W, b)
    for _ in range(6):
        i, j = rng.integers(W.shape[0]), rng.integers(W.shape[1])
        h = 1e-6
        Wp, Wm = W.copy(), W.copy()
        Wp[i, j] += h
        Wm[i, j] -= h
        numeric = (_softmax_regression(Wp, b)[0] - _softmax_regression(Wm, b)[0]) / (2 * h)
        assert abs(numeric - dW[i, j]) < 1e-8
        bp, bm = b.copy(), b.copy()
        bp[j] += h
        bm[j] -= h
        numeric = (_softmax_regression(W, bp)[0] - _softmax_regression(W, bm)[0]) / (2 * h)
        assert abs(numeric - db[j]) < 1e-8


@pytest.mark.parametrize("name", sorted(LBFGS_META["configs"]))
def test_lbfgs_matches_torch(name):
    cfg = LBFGS_META["configs"][name]
    W = fnn.nn.Parameter(LBFGS["W0"].copy(), "W")
    b = fnn.nn.Parameter(LBFGS["b0"].copy(), "b")
    opt = fnn.optim.LBFGS([W, b], **cfg["kwargs"])

    def closure():
        loss, dW, db = _softmax_regression(W.data, b.data)
        W.grad[...] = dW
        b.grad[...] = db
        return loss

    for call in range(cfg["calls"]):
        loss = opt.step(closure)
        what = f"LBFGS {name} after step call {call}"
        assert_close(loss, LBFGS[f"loss/{name}"][call], RTOL64, f"{what}: returned loss")
        assert_close(W.data, LBFGS[f"W/{name}"][call], RTOL64, f"{what}: W")
        assert_close(b.data, LBFGS[f"b/{name}"][call], RTOL64, f"{what}: b")
        assert opt.t == LBFGS[f"n_iter/{name}"][call], f"{what}: iterations"
        assert opt.n_evals == LBFGS[f"func_evals/{name}"][call], f"{what}: closure evaluations"


# --- learning-rate schedules -------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCHEDULES_META["configs"]))
def test_schedule_matches_torch(name):
    cfg = SCHEDULES_META["configs"][name]
    schedule = SCHEDULES_FROM_TORCH[cfg["scheduler"]](cfg["kwargs"])
    want = SCHEDULES[f"lr/{name}"]
    base = cfg["base_lr"]
    if cfg["scheduler"] == "ReduceLROnPlateau":
        # lr[k + 1] is the lr after observing metrics[:k + 1] (once per epoch, as the Trainer does)
        got = [schedule(0, base)]
        for t, m in enumerate(SCHEDULES[f"metrics/{name}"], start=1):
            schedule.observe(m)
            got.append(schedule(t, base))
    else:
        got = [schedule(t, base) for t in range(len(want))]
    assert_close(got, want, RTOL64, f"schedule {name} ({cfg['scheduler']})")
