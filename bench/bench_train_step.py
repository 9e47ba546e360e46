"""End-to-end training step: the reference MLP 784-1024-1024-10 with
BatchNorm1d, ReLU and Dropout(0.5) after each hidden Linear, softmax
cross-entropy, Adam; batch 256 and 1024; fastnn (C++, Numba) vs PyTorch eager,
same process, interleaved. Reports samples/s and the ratio, and the steady-state
step's Python-side allocations (tracemalloc) for fastnn.

    python bench/bench_train_step.py
"""
from __future__ import annotations

import sys
import tracemalloc

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402

D, H, C = 784, 1024, 10


def fastnn_model(seed=0):
    fnn.manual_seed(seed)
    return fnn.nn.Sequential(
        fnn.nn.Linear(D, H), fnn.nn.BatchNorm1d(H), fnn.nn.ReLU(), fnn.nn.Dropout(0.5),
        fnn.nn.Linear(H, H), fnn.nn.BatchNorm1d(H), fnn.nn.ReLU(), fnn.nn.Dropout(0.5),
        fnn.nn.Linear(H, C))


def torch_model(torch):
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.5), nn.Linear(H, C))


def main():
    rng = np.random.default_rng(0)
    torch = harness.have_torch()
    results = {"machine": harness.machine(), "cases": {}}
    table = [f"Training step, MLP {D}-{H}-{H}-{C} + BatchNorm + ReLU + Dropout(0.5), Adam, float32, "
             f"{harness.machine()['threads']} threads", "",
             "| batch | fastnn C++ samples/s | Numba samples/s | PyTorch samples/s | C++ / PyTorch speed-up |",
             "|---|---|---|---|---|"]
    for batch in (256, 1024):
        x = rng.standard_normal((batch, D)).astype(np.float32)
        y = rng.integers(0, C, batch)
        model = fastnn_model()
        loss = fnn.losses.SoftmaxCrossEntropy()
        opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
        trainer = fnn.Trainer(model, loss, opt)
        object.__setattr__(model, "input_grad", False)
        first = trainer.train_step(x, y)
        assert abs(first - np.log(C)) < 1.5, first

        def step(name):
            with fnn.backend.using(name):
                trainer.train_step(x, y)
        cands = {"fastnn-cpp": lambda: step("cpp"), "fastnn-numba": lambda: step("numba")}
        if torch is not None:
            tm = torch_model(torch)
            topt = torch.optim.Adam(tm.parameters(), lr=1e-3)
            tx, ty = torch.from_numpy(x), torch.from_numpy(y)
            lossf = torch.nn.CrossEntropyLoss()

            def tstep():
                topt.zero_grad(set_to_none=True)
                out = lossf(tm(tx), ty)
                out.backward()
                topt.step()
            cands["torch"] = tstep
        t = harness.interleaved(cands, rounds=7, reps=5)
        # Python-side allocation growth over 200 steady-state steps
        tracemalloc.start()
        for _ in range(20):
            step("cpp")
        snap0 = tracemalloc.take_snapshot()
        for _ in range(200):
            step("cpp")
        growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
        tracemalloc.stop()
        sps = {k: batch / v for k, v in t.items()}
        results["cases"][batch] = {"seconds": t, "samples_per_s": sps, "python_alloc_growth_bytes": growth}
        tt = sps.get("torch")
        table.append(f"| {batch} | {sps['fastnn-cpp']:,.0f} | {sps['fastnn-numba']:,.0f} | "
                     f"{tt if tt else float('nan'):,.0f} | {sps['fastnn-cpp'] / tt if tt else float('nan'):.2f}x |")
    harness.write("train_step", results, table)


if __name__ == "__main__":
    main()
