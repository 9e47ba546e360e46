"""Wall-clock to 0.97 test accuracy on the shipped digits: fastnn's Trainer (the
`fastnn train` recipe) vs the equivalent PyTorch script (issue 10).

Both get the same standardized train/test split (written once by this script),
the same MLP 64-256-128-10 with ReLU and He-normal weights, Adam (lr 2e-3, L2
weight decay 1e-4), cosine annealing over 40 epochs, batch 64, a fresh shuffle
per epoch, and the test accuracy checked after every epoch until it reaches
0.97. Each run is a fresh process, timed from before the interpreter starts
(so imports count) to the epoch that reaches 0.97; the training loop alone is
timed too. Runs alternate between the libraries; medians of 5.

    python bench/bench_digits_e2e.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

TARGET, EPOCHS = 0.97, 40

_FASTNN = r"""
import sys, time, json
import numpy as np
import fastnn as fnn
t_import = time.perf_counter()
with np.load(sys.argv[1]) as f:
    Xtr, ytr, Xte, yte = f["Xtr"], f["ytr"], f["Xte"], f["yte"]
seed = int(sys.argv[2])
fnn.manual_seed(seed)
model = fnn.nn.Sequential(fnn.nn.Linear(64, 256, init="he_normal"), fnn.nn.ReLU(),
                          fnn.nn.Linear(256, 128, init="he_normal"), fnn.nn.ReLU(),
                          fnn.nn.Linear(128, 10, init="he_normal"))
opt = fnn.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
class Reached(fnn.Callback):
    epoch = None
    def on_epoch_end(self, trainer, epoch, history):
        if trainer.evaluate(Xte, yte)["accuracy"] >= TARGET:
            self.epoch = epoch + 1
            return True
cb = Reached()
trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt,
                      schedule=fnn.schedules.CosineAnnealing(t_max=EPOCHS), callbacks=[cb], seed=seed)
t0 = time.perf_counter()
trainer.fit(Xtr, ytr, epochs=EPOCHS, batch_size=64, progress=False, eval_train_size=0)
t1 = time.perf_counter()
print(json.dumps({"epochs": cb.epoch, "loop": t1 - t0, "wall": time.time(),
                  "acc": trainer.evaluate(Xte, yte)["accuracy"]}))
"""

_TORCH = r"""
import sys, time, json, math
import numpy as np
import torch
torch.set_num_threads(2)
with np.load(sys.argv[1]) as f:
    Xtr, ytr, Xte, yte = (torch.from_numpy(f[k]) for k in ("Xtr", "ytr", "Xte", "yte"))
seed = int(sys.argv[2])
torch.manual_seed(seed)
nn = torch.nn
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        nn.init.zeros_(m.bias)
opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
lossf = nn.CrossEntropyLoss()
g = torch.Generator().manual_seed(seed)
t0 = time.perf_counter()
reached = None
for epoch in range(EPOCHS):
    model.train()
    for idx in torch.randperm(len(Xtr), generator=g).split(64):
        opt.zero_grad(set_to_none=True)
        lossf(model(Xtr[idx]), ytr[idx]).backward()
        opt.step()
    sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).double().mean().item()
    if acc >= TARGET:
        reached = epoch + 1
        break
t1 = time.perf_counter()
print(json.dumps({"epochs": reached, "loop": t1 - t0, "wall": time.time(), "acc": acc}))
"""


def _run(code, data, seed):
    prelude = f"TARGET, EPOCHS = {TARGET}, {EPOCHS}\n"
    t = time.time()
    out = subprocess.run([sys.executable, "-c", prelude + code, data, str(seed)], capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["to_target"] = res.pop("wall") - t   # process launch (imports included) to the target epoch
    return res


def main():
    import numpy as np

    import fastnn as fnn
    torch = harness.have_torch()
    X, y = fnn.data.load_digits()
    (Xtr, ytr), _, (Xte, yte) = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)
    st = fnn.preprocessing.Standardize().fit(Xtr)
    libs = {"fastnn": _FASTNN}
    if torch is not None:
        libs["torch"] = _TORCH
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "digits_split.npz")
        np.savez(data, Xtr=st.transform(Xtr).astype(np.float32), ytr=ytr.astype(np.int64),
                 Xte=st.transform(Xte).astype(np.float32), yte=yte.astype(np.int64))
        samples = {k: [] for k in libs}
        for seed in range(5):
            for name, code in libs.items():
                samples[name].append(_run(code, data, seed))
    results = {"machine": harness.machine(), "target": TARGET, "runs": samples, "median": {}}
    table = [f"Digits (shipped), MLP 64-256-128-10 ReLU, Adam 2e-3, batch 64, cosine over {EPOCHS} epochs: "
             f"time to {TARGET} test accuracy, fresh process per run, median of 5 seeds", "",
             "| library | epochs to target | training loop s | launch to target s (imports included) |",
             "|---|---|---|---|"]
    for name, runs in samples.items():
        ok = [r for r in runs if r["epochs"] is not None]
        med = {"epochs": statistics.median(r["epochs"] for r in ok) if ok else None,
               "loop": statistics.median(r["loop"] for r in runs),
               "to_target": statistics.median(r["to_target"] for r in runs), "reached": f"{len(ok)}/{len(runs)}"}
        results["median"][name] = med
        table.append(f"| {name} | {med['epochs']} ({med['reached']} runs reached it) | {med['loop']:.2f} | "
                     f"{med['to_target']:.2f} |")
    if "torch" in results["median"]:
        f, t = results["median"]["fastnn"], results["median"]["torch"]
        table += ["", f"fastnn / PyTorch: training loop {f['loop'] / t['loop']:.2f}, "
                      f"launch to target {f['to_target'] / t['to_target']:.2f} (below 1: fastnn is faster)"]
    harness.write("digits_e2e", results, table)


if __name__ == "__main__":
    main()
