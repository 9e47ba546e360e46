"""Peak resident memory of a training run, fastnn vs PyTorch (issue 10).

Each run is a fresh process (so peaks don't mix) that trains the reference MLP
(784-1024-1024-10, BatchNorm1d + ReLU + Dropout(0.5), Adam) for 100 steps on
one random batch, and reports its peak RSS (VmHWM), its RSS after the
imports (the libraries themselves) and after the model is built, and its RSS
growth from step 10 to step 100 (steady state: should be 0). Runs alternate
between the libraries, three of each; medians.

    python bench/bench_memory.py
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

_CHILD = r"""
import json, sys, os
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
lib, batch = sys.argv[1], int(sys.argv[2])
import numpy as np
D, H, C = 784, 1024, 10
rng = np.random.default_rng(0)
x = rng.standard_normal((batch, D)).astype(np.float32)
y = rng.integers(0, C, batch)
if lib == "fastnn":
    import fastnn as fnn
    base = rss()
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(
        fnn.nn.Linear(D, H), fnn.nn.BatchNorm1d(H), fnn.nn.ReLU(), fnn.nn.Dropout(0.5),
        fnn.nn.Linear(H, H), fnn.nn.BatchNorm1d(H), fnn.nn.ReLU(), fnn.nn.Dropout(0.5), fnn.nn.Linear(H, C))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=1e-3))
    object.__setattr__(model, "input_grad", False)
    step = lambda: trainer.train_step(x, y)
else:
    import torch
    torch.set_num_threads(2)
    base = rss()
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Dropout(0.5), nn.Linear(H, C))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    lossf = nn.CrossEntropyLoss()
    def step():
        opt.zero_grad(set_to_none=True)
        lossf(model(tx), ty).backward()
        opt.step()
built = rss()
for _ in range(10):
    step()
warm = rss()
for _ in range(90):
    step()
end = rss()
# VmHWM, not ru_maxrss: the latter keeps the forking parent's RSS across exec.
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
print(json.dumps({"after_import": base, "after_build": built, "peak": peak, "growth_10_100": end - warm}))
"""


def run(lib, batch):
    out = subprocess.run([sys.executable, "-c", _CHILD, lib, str(batch)], capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())  # not the repo root: import the installed fastnn
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    libs = ["fastnn"] + (["torch"] if harness.have_torch() is not None else [])
    results = {"machine": harness.machine(), "cases": {}}
    table = ["Peak resident memory of a training run (100 steps of the reference MLP 784-1024-1024-10 "
             "with BN + ReLU + Dropout, Adam, float32), fresh process per run, median of 3, MiB", "",
             "| batch | library | after imports | after building the model | peak | peak minus imports "
             "| RSS growth steps 10-100 |", "|---|---|---|---|---|---|---|"]
    for batch in (256, 1024):
        samples = {lib: [] for lib in libs}
        for _ in range(3):
            for lib in libs:
                samples[lib].append(run(lib, batch))
        results["cases"][batch] = {}
        for lib in libs:
            med = {k: statistics.median(s[k] for s in samples[lib]) for k in samples[lib][0]}
            results["cases"][batch][lib] = med
            table.append(f"| {batch} | {lib} | {med['after_import']:.0f} | {med['after_build']:.0f} | "
                         f"{med['peak']:.0f} | {med['peak'] - med['after_import']:.0f} | "
                         f"{med['growth_10_100']:.1f} |")
    harness.write("memory", results, table)


if __name__ == "__main__":
    main()
