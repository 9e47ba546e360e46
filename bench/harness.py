"""Shared benchmark machinery: interleaved medians, pauses between libraries,
the machine's own ceilings, JSON + markdown output.

Protocol (DESIGN.md section 6): validate first, warm up, then run every
candidate in rotation for `rounds` rounds (so drift hits all equally), pause
between libraries so idle BLAS/OpenMP workers stop spinning, report medians.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def have_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(2)
    return torch


def interleaved(candidates: dict, rounds: int = 7, reps: int = 3, warmup: int = 2, pause: float = 0.15) -> dict:
    """{name: fn} -> {name: median seconds per call}.

    After each pause one untimed call comes before the timed ones: on this
    project's virtual machines the first call after a 0.15 s idle ran 4-7 ms
    slower whatever the library (a Conv2d forward of 5 ms measured 11-12), which
    a training loop, calling layer after layer, never sees; timing it added the
    same few ms to every candidate and pulled every ratio towards 1."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            time.sleep(pause)
            fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            samples[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(v) for name, v in samples.items()}


def time_plan_step(walk, lossf, opt, x, y, rows: dict, loss_key: str = "loss") -> None:
    """One training step of a model's fusion plan, stage by stage, appending the
    seconds of each to ``rows``: ``fwd <label>`` per step of ``walk`` (a model's
    ``walk()``: (label, layer, activation)), ``loss_key`` for the loss forward
    and backward, ``bwd <label>`` in reverse order, then ``optimizer step`` with
    the Trainer's finiteness check of the gradients inside it. The first step
    computes no input gradient, as in a Trainer step."""
    clock = time.perf_counter
    h = x
    for label, layer, act in walk:
        t = clock()
        h = layer.forward(h) if act is None else layer.forward_fused(h, act.name, act.alpha_value)
        rows[f"fwd {label}"].append(clock() - t)
    t = clock()
    lossf.forward(h, y)
    dout = lossf.backward()
    rows[loss_key].append(clock() - t)
    for k, (label, layer, act) in enumerate(reversed(walk)):
        layer.set_input_grad(k != len(walk) - 1)
        t = clock()
        if act is None:
            dout = layer.backward(dout)
        else:
            dout, dalpha = layer.backward_fused(dout)
            act._accumulate_alpha(dalpha)
        rows[f"bwd {label}"].append(clock() - t)
    t = clock()
    opt.step(check_finite=True)
    rows["optimizer step"].append(clock() - t)


def stream_bandwidth(n: int = 1 << 24) -> float:
    """GB/s of a STREAM triad a = b + s*c on float32 (3 arrays moved), fastnn's kernel."""
    from fastnn.backend import cpp
    a = np.zeros(n, np.float32)
    b = np.ones(n, np.float32)
    c = np.ones(n, np.float32)
    t = interleaved({"triad": lambda: cpp._C.stream_triad(a, b, c, 3.0)}, rounds=7, reps=3, pause=0.05)["triad"]
    assert np.all(a == 4.0)
    return 3 * 4 * n / t / 1e9


def machine() -> dict:
    import fastnn
    from fastnn.backend import cpp
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
            "fastnn": fastnn.__version__, "isa": cpp._C.cpu_isa() if cpp._C else None,
            "threads": fastnn.get_num_threads(), "date": datetime.date.today().isoformat(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}
    torch = have_torch()
    if torch is not None:
        info["torch"] = torch.__version__
    return info


def write(name: str, payload: dict, table: list[str]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(path + ".tmp", path)
    md = os.path.join(RESULTS, f"{name}.md")
    with open(md, "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"\nwritten {path} and {md}")
    return path
