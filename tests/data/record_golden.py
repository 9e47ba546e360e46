"""Record golden optimizer trajectories and learning-rate sequences from
``torch.optim`` into tests/data/, for tests/test_golden.py.

The golden files are the reference the optimizer tests replay against: they
come from PyTorch, a peer written by other people, not from an oracle written
by fastnn's own authors. They are recorded once, committed, and re-recorded
only on purpose (a new configuration, or a new pinned torch version). The tests
never import torch.

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install numpy torch==2.13.0
    /tmp/torchvenv/bin/python tests/data/record_golden.py

Writes (plain arrays only, readable with ``allow_pickle=False``; each file has a
``meta`` entry, a one-element string array holding JSON: the torch and NumPy
versions and every configuration's settings):

- ``golden_optim.npz``: fixed seeded parameters ``init/<i>`` of odd shapes and
  a fixed gradient sequence ``grads/<i>`` (steps, *shape), fed step by step to
  SGD / Adagrad / RMSprop / Adam / AdamW; ``traj/<config>/<i>`` (steps + 1,
  *shape) is parameter i before the first step and after each step. All float64.
- ``golden_lbfgs.npz``: an L2-regularized softmax regression on fixed data
  (``X``, ``y``, ``l2``; loss = mean cross-entropy + l2/2 ||W||^2, bias not
  penalized) minimized by LBFGS from ``W0``, ``b0``; per configuration the
  parameters after each ``step(closure)`` call, the loss each call returned,
  and torch's cumulative ``func_evals`` and ``n_iter`` after each call.
- ``golden_schedules.npz``: ``lr/<config>`` the lr at t = 0, 1, ... of a torch
  scheduler (``get_last_lr()`` after t calls of ``step()``); for
  ReduceLROnPlateau, ``metrics/<config>`` the metric sequence fed to
  ``step(metric)``, so lr[k + 1] is the lr after observing metrics[:k + 1].
"""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import torch

PINNED_TORCH = "2.13.0"
HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = [(7,), (3, 5), (1,)]
STEPS = 8
SEED = 17

# name -> (torch optimizer, its keyword arguments, extras). Extras:
# "clip_grad_norm": torch.nn.utils.clip_grad_norm_ before each step;
# "groups": parameter groups, [{"params": [indices], **overrides}, ...].
# foreach=False pins torch's single-tensor reference loop (the same math as its
# foreach path, fixed so re-recording cannot switch implementations).
OPTIM_CONFIGS = {
    "sgd": ("SGD", {"lr": 0.1}, {}),
    "sgd_weight_decay": ("SGD", {"lr": 0.1, "weight_decay": 0.05}, {}),
    "sgd_momentum": ("SGD", {"lr": 0.1, "momentum": 0.9}, {}),
    "sgd_momentum_weight_decay": ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.05}, {}),
    "sgd_nesterov": ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}, {}),
    "sgd_nesterov_weight_decay": ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05}, {}),
    "sgd_momentum_clip": ("SGD", {"lr": 0.1, "momentum": 0.9}, {"clip_grad_norm": 1.0}),
    "adagrad": ("Adagrad", {"lr": 0.1}, {}),
    "adagrad_weight_decay": ("Adagrad", {"lr": 0.1, "weight_decay": 0.05, "eps": 1e-6}, {}),
    "rmsprop": ("RMSprop", {"lr": 0.01, "alpha": 0.99}, {}),
    "rmsprop_alpha_weight_decay": ("RMSprop", {"lr": 0.01, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.05}, {}),
    "adam": ("Adam", {"lr": 0.01}, {}),
    "adam_betas_eps": ("Adam", {"lr": 0.02, "betas": [0.8, 0.99], "eps": 1e-6}, {}),
    "adam_weight_decay": ("Adam", {"lr": 0.01, "weight_decay": 0.05}, {}),
    "adam_clip": ("Adam", {"lr": 0.01}, {"clip_grad_norm": 2.0}),
    "adam_groups": ("Adam", {"lr": 0.01, "weight_decay": 0.05},
                    {"groups": [{"params": [0, 1]}, {"params": [2], "lr": 0.05, "weight_decay": 0.0}]}),
    "adamw": ("AdamW", {"lr": 0.01}, {}),
    "adamw_weight_decay": ("AdamW", {"lr": 0.02, "weight_decay": 0.1}, {}),
}

# LBFGS on the softmax regression: (keyword arguments, number of step() calls).
LBFGS_N, LBFGS_D, LBFGS_C, LBFGS_L2 = 40, 4, 3, 1e-2
LBFGS_CONFIGS = {
    "fixed": ({"max_iter": 5}, 4),
    "fixed_history3": ({"max_iter": 8, "history_size": 3}, 3),
    "fixed_lr": ({"lr": 0.5, "max_iter": 6}, 3),
    "strong_wolfe": ({"max_iter": 4, "line_search_fn": "strong_wolfe"}, 3),
    "strong_wolfe_history3": ({"max_iter": 6, "history_size": 3, "line_search_fn": "strong_wolfe"}, 3),
    "strong_wolfe_converged": ({"line_search_fn": "strong_wolfe"}, 3),
}

# name -> (torch scheduler, keyword arguments, base lr, number of lrs).
# CosineAnnealingLR is recorded up to T_max only (see UNMAPPED).
SCHEDULE_CONFIGS = {
    "step": ("StepLR", {"step_size": 3, "gamma": 0.5}, 0.1, 12),
    "exponential": ("ExponentialLR", {"gamma": 0.9}, 0.1, 15),
    "cosine": ("CosineAnnealingLR", {"T_max": 10, "eta_min": 1e-3}, 0.1, 11),
    "cosine_zero_floor": ("CosineAnnealingLR", {"T_max": 7}, 0.1, 8),
    "warm_restarts": ("CosineAnnealingWarmRestarts", {"T_0": 4, "eta_min": 1e-3}, 0.1, 14),
    "warm_restarts_mult": ("CosineAnnealingWarmRestarts", {"T_0": 3, "T_mult": 2, "eta_min": 1e-3}, 0.1, 25),
    "cyclic": ("CyclicLR", {"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "mode": "triangular",
                            "cycle_momentum": False}, 0.01, 20),
    "linear_warmup": ("LinearLR", {"start_factor": 0.1, "end_factor": 1.0, "total_iters": 5}, 0.1, 10),
    # SequentialLR's kwargs name its schedulers as [class, kwargs] pairs
    "warmup_cosine": ("SequentialLR", {"schedulers": [["LinearLR", {"start_factor": 0.1, "total_iters": 4}],
                                                      ["CosineAnnealingLR", {"T_max": 8, "eta_min": 1e-3}]],
                                       "milestones": [4]}, 0.1, 13),
    "warmup_step": ("SequentialLR", {"schedulers": [["LinearLR", {"start_factor": 0.25, "total_iters": 3}],
                                                    ["StepLR", {"step_size": 2, "gamma": 0.7}]],
                                     "milestones": [3]}, 0.1, 12),
    "plateau_min": ("ReduceLROnPlateau", {"mode": "min", "factor": 0.5, "patience": 2, "threshold": 1e-4}, 0.1, None),
    "plateau_max_min_lr": ("ReduceLROnPlateau", {"mode": "max", "factor": 0.3, "patience": 1, "threshold": 1e-3,
                                                 "min_lr": 0.005}, 0.1, None),
    "plateau_patience0": ("ReduceLROnPlateau", {"mode": "min", "factor": 0.5, "patience": 0}, 0.1, None),
}
# Loss-like metric with plateaus, improvements just under and just over the
# 1e-4 relative threshold, and a late improvement; and an accuracy-like one.
PLATEAU_METRICS = {
    "min": [1.0, 0.9, 0.8, 0.8, 0.79995, 0.81, 0.7, 0.7, 0.69995, 0.6999, 0.71, 0.72, 0.5, 0.5, 0.5, 0.5, 0.5,
            0.49, 0.5, 0.5, 0.5],
    "max": [0.1, 0.3, 0.3, 0.3001, 0.35, 0.35, 0.35, 0.36, 0.36, 0.36, 0.36, 0.37, 0.37, 0.37, 0.37, 0.37],
}

# fastnn has these settings' torch counterparts in no clean form; not recorded.
UNMAPPED = [
    "SGD dampening != 0, maximize=True (fastnn SGD has neither)",
    "RMSprop momentum > 0 and centered=True (fastnn RMSProp has neither)",
    "Adagrad lr_decay != 0 and initial_accumulator_value != 0 (fastnn Adagrad has neither)",
    "Adam/AdamW amsgrad=True, maximize=True (fastnn has neither)",
    "fastnn l1= and max_norm= (torch.optim has no such option)",
    "CosineAnnealingLR for t > T_max: torch continues the cosine (lr rises back to base at 2 T_max); "
    "fastnn CosineAnnealing stays at eta_min",
    "CyclicLR modes triangular2/exp_range, step_size_down != step_size_up, cycle_momentum (fastnn: triangular only)",
    "ReduceLROnPlateau cooldown > 0, threshold_mode='abs', eps (fastnn ReduceOnPlateau has neither)",
    "LinearLR end_factor != 1 (fastnn Warmup always ends at the base lr)",
    "InverseTimeDecay: torch has no built-in scheduler for it (only LambdaLR with a user lambda)",
    "LBFGS in float32: torch computes in the parameters' dtype, fastnn always in float64",
]


def _meta(extra):
    meta = {"torch_version": torch.__version__, "numpy_version": np.__version__,
            "python": sys.version.split()[0], "seed": SEED, "recorded_by": "tests/data/record_golden.py",
            "unmapped": UNMAPPED, **extra}
    return np.array([json.dumps(meta, sort_keys=True)])


def _save(name, arrays):
    path = os.path.join(HERE, name)
    np.savez_compressed(path, **arrays)
    with np.load(path, allow_pickle=False) as check:
        assert set(check.files) == set(arrays)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(arrays)} arrays)")


def record_optim():
    rng = np.random.default_rng(SEED)
    init = [rng.standard_normal(s) for s in SHAPES]
    grads = [rng.standard_normal((STEPS, *s)) for s in SHAPES]
    arrays = {"meta": None}
    for i in range(len(SHAPES)):
        arrays[f"init/{i}"] = init[i]
        arrays[f"grads/{i}"] = grads[i]
    for name, (cls, kwargs, extra) in OPTIM_CONFIGS.items():
        params = [torch.tensor(a, dtype=torch.float64) for a in init]
        kw = {k: tuple(v) if k == "betas" else v for k, v in kwargs.items()}
        if "groups" in extra:
            groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params[j] for j in g["params"]]}
                      for g in extra["groups"]]
        else:
            groups = params
        opt = getattr(torch.optim, cls)(groups, foreach=False, **kw)
        traj = [[p.detach().numpy().copy()] for p in params]
        for t in range(STEPS):
            for p, g in zip(params, grads):
                p.grad = torch.tensor(g[t], dtype=torch.float64)
            if "clip_grad_norm" in extra:
                torch.nn.utils.clip_grad_norm_(params, extra["clip_grad_norm"], foreach=False)
            opt.step()
            for i, p in enumerate(params):
                traj[i].append(p.detach().numpy().copy())
        for i, tr in enumerate(traj):
            arrays[f"traj/{name}/{i}"] = np.stack(tr)
            assert np.all(np.isfinite(arrays[f"traj/{name}/{i}"]))
    settings = {name: {"optimizer": cls, "kwargs": kwargs, **extra}
                for name, (cls, kwargs, extra) in OPTIM_CONFIGS.items()}
    arrays["meta"] = _meta({"steps": STEPS, "shapes": SHAPES, "configs": settings, "foreach": False})
    _save("golden_optim.npz", arrays)


def record_lbfgs():
    rng = np.random.default_rng(SEED + 1)
    X = rng.standard_normal((LBFGS_N, LBFGS_D))
    y = rng.integers(0, LBFGS_C, LBFGS_N)
    X[:, 0] += y * 0.8   # some class signal, so the minimum is not at W = 0
    W0 = 0.5 * rng.standard_normal((LBFGS_D, LBFGS_C))
    b0 = 0.5 * rng.standard_normal(LBFGS_C)
    arrays = {"meta": None, "X": X, "y": y.astype(np.int64), "l2": np.array(LBFGS_L2), "W0": W0, "b0": b0}
    Xt, yt = torch.tensor(X), torch.tensor(y)
    for name, (kwargs, calls) in LBFGS_CONFIGS.items():
        W = torch.tensor(W0, requires_grad=True)
        b = torch.tensor(b0, requires_grad=True)
        opt = torch.optim.LBFGS([W, b], **kwargs)

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(Xt @ W + b, yt) + 0.5 * LBFGS_L2 * (W * W).sum()
            loss.backward()
            return loss

        Ws, bs, losses, evals, iters = [], [], [], [], []
        for _ in range(calls):
            losses.append(float(opt.step(closure).detach()))
            Ws.append(W.detach().numpy().copy())
            bs.append(b.detach().numpy().copy())
            st = opt.state[opt._params[0]]
            evals.append(st["func_evals"])
            iters.append(st["n_iter"])
        arrays[f"W/{name}"] = np.stack(Ws)
        arrays[f"b/{name}"] = np.stack(bs)
        arrays[f"loss/{name}"] = np.array(losses)
        arrays[f"func_evals/{name}"] = np.array(evals, np.int64)
        arrays[f"n_iter/{name}"] = np.array(iters, np.int64)
        assert losses == sorted(losses, reverse=True), (name, losses)
    settings = {name: {"kwargs": kwargs, "calls": calls} for name, (kwargs, calls) in LBFGS_CONFIGS.items()}
    arrays["meta"] = _meta({"configs": settings, "loss": "mean softmax cross-entropy of X @ W + b, "
                                                         "plus l2/2 * sum(W**2)"})
    _save("golden_lbfgs.npz", arrays)


def record_schedules():
    arrays = {"meta": None}
    settings = {}
    for name, (cls, kwargs, base_lr, n) in SCHEDULE_CONFIGS.items():
        param = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([param], lr=base_lr)
        if cls == "SequentialLR":
            parts = [getattr(torch.optim.lr_scheduler, c)(opt, **kw) for c, kw in kwargs["schedulers"]]
            sched = torch.optim.lr_scheduler.SequentialLR(opt, parts, milestones=kwargs["milestones"])
        else:
            sched = getattr(torch.optim.lr_scheduler, cls)(opt, **kwargs)
        settings[name] = {"scheduler": cls, "kwargs": kwargs, "base_lr": base_lr}
        with warnings.catch_warnings():
            # stepping a scheduler with no optimizer.step() in between warns; harmless here
            warnings.simplefilter("ignore")
            if cls == "ReduceLROnPlateau":
                metrics = PLATEAU_METRICS[kwargs["mode"]]
                lrs = [opt.param_groups[0]["lr"]]
                for m in metrics:
                    sched.step(m)
                    lrs.append(opt.param_groups[0]["lr"])
                arrays[f"metrics/{name}"] = np.array(metrics)
            else:
                lrs = []
                for _ in range(n):
                    lrs.append(sched.get_last_lr()[0])
                    opt.step()
                    sched.step()
        arrays[f"lr/{name}"] = np.array(lrs, np.float64)
    arrays["meta"] = _meta({"configs": settings})
    _save("golden_schedules.npz", arrays)


def main():
    if torch.__version__.split("+")[0] != PINNED_TORCH:
        sys.exit(f"record with torch=={PINNED_TORCH} (pinned), got {torch.__version__}")
    torch.set_default_dtype(torch.float64)
    record_optim()
    record_lbfgs()
    record_schedules()


if __name__ == "__main__":
    main()
