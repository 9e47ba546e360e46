"""Where the milliseconds of one training step go (issue 10).

The reference MLP (784-1024-1024-10, BatchNorm1d + ReLU + Dropout(0.5) after
each hidden Linear, softmax cross-entropy, Adam) at batch 256 and 1024: each
stage of the Sequential's fusion plan timed in forward and backward, then the
loss and the fused optimizer step (with its gradient check); what is left of the
whole step is Python overhead. The GEMM floor is the step's GEMM FLOPs at the
GEMM rate measured on the same shapes in the same run. Medians of many steps.

    python bench/profile_step.py
"""
from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402
from bench_train_step import C, D, H, fastnn_model  # noqa: E402

import fastnn as fnn  # noqa: E402


def profile(batch, steps=40):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, D)).astype(np.float32)
    y = rng.integers(0, C, batch)
    model = fastnn_model()
    lossf = fnn.losses.SoftmaxCrossEntropy()
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
    trainer = fnn.Trainer(model, lossf, opt)
    model.set_input_grad(False)
    for _ in range(5):
        trainer.train_step(x, y)
    walk = model.walk()
    names = [label for label, _, _ in walk]
    rows = {f"fwd {n}": [] for n in names}
    rows.update({"loss fwd+bwd": []})
    rows.update({f"bwd {n}": [] for n in reversed(names)})
    rows.update({"optimizer step": [], "whole train_step": []})
    clock = time.perf_counter
    for _ in range(steps):
        harness.time_plan_step(walk, lossf, opt, x, y, rows, loss_key="loss fwd+bwd")
        t = clock()
        trainer.train_step(x, y)
        rows["whole train_step"].append(clock() - t)
    med = {k: float(np.median(v)) for k, v in rows.items()}
    parts = sum(v for k, v in med.items() if k != "whole train_step")
    med["python overhead (whole - parts)"] = max(0.0, med["whole train_step"] - parts)

    # GEMM floor: forward x W^T, backward dW and dx for each Linear, at the rate fastnn's GEMM gets here.
    shapes = [(batch, D, H), (batch, H, H), (batch, H, C)]
    flops = sum(2 * m * k * n * (3 if i else 2) for i, (m, k, n) in enumerate(shapes))  # first layer: no dx
    a = rng.standard_normal((batch, H)).astype(np.float32)
    b = rng.standard_normal((H, H)).astype(np.float32)
    out = np.empty((batch, H), np.float32)
    for _ in range(3):
        fnn.ops.gemm(a, b, out=out)
    ts = []
    for _ in range(20):
        t = clock()
        fnn.ops.gemm(a, b, out=out)
        ts.append(clock() - t)
    rate = 2 * batch * H * H / float(np.median(ts))
    med["GEMM floor (FLOPs / GEMM rate)"] = flops / rate

    # Steady state allocates nothing: NumPy buffers are reported to tracemalloc.
    tracemalloc.start()
    for _ in range(20):
        trainer.train_step(x, y)
    t0 = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        trainer.train_step(x, y)
    growth = tracemalloc.get_traced_memory()[0] - t0
    tracemalloc.stop()
    return med, rate, growth


def main():
    results = {"machine": harness.machine(), "cases": {}}
    table = [f"Step profile, MLP {D}-{H}-{H}-{C} + BN + ReLU + Dropout(0.5), Adam, fastnn "
             f"{fnn.backend.current()}, {harness.machine()['threads']} threads (median ms per step)", ""]
    for batch in (256, 1024):
        med, rate, growth = profile(batch)
        whole = med["whole train_step"]
        results["cases"][batch] = {"ms": {k: v * 1e3 for k, v in med.items()}, "gemm_gflops": rate / 1e9,
                                   "traced_growth_bytes_1000_steps": growth}
        table += [f"Batch {batch}: {batch / whole:,.0f} samples/s; GEMM rate {rate / 1e9:.0f} GFLOP/s; "
                  f"traced memory growth over 1,000 steps: {growth} bytes", "",
                  "| stage | ms | share of the step |", "|---|---|---|"]
        for k, v in med.items():
            table.append(f"| {k} | {v * 1e3:.3f} | {100 * v / whole:.1f}% |")
        table.append("")
    harness.write("profile_step", results, table)


if __name__ == "__main__":
    main()
