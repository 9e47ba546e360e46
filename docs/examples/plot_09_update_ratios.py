"""
Update/weight ratios: is the learning rate in the right range?
==============================================================

The lecture's rule of thumb for babysitting a run: track, for every weight
matrix, the ratio of the size of an update to the size of the weights,
``||W_after - W_before|| / ||W_before||``. Around 1e-3 is healthy; much lower
and the learning rate is too low (the weights barely move), much higher and it
is too high.

:class:`fastnn.diagnostics.UpdateRatioMonitor` is a Trainer callback that
records the ratio of every parameter after every step (``monitor.ratios``,
name -> list per step) and warns when an epoch's median ratio of a weight
leaves ``[low, high]`` (defaults 1e-5 and 1e-1; here the tighter band 1e-4
to 1e-2, shaded in the figure). The same MLP, initial weights and batches,
trained with SGD + momentum at three learning rates. The runs are passed
``divergence_factor=None`` so the Trainer never stops the bad one early.
"""
import warnings

import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn
from fastnn.diagnostics import UpdateRatioMonitor

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)

learning_rates = {"too low": 1e-4, "good": 1e-2, "too high": 0.3}
monitors = {}
for name, lr in learning_rates.items():
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 128, activation="relu"),
                              fnn.nn.Linear(128, 128, activation="relu"),
                              fnn.nn.Linear(128, 10))
    monitor = UpdateRatioMonitor(low=1e-4, high=1e-2)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                          fnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                          callbacks=[monitor], seed=0, divergence_factor=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hist = trainer.fit(Xtr, ytr, epochs=5, batch_size=32, val=(Xva, yva), progress=False)
    monitors[name] = monitor
    medians = {k: np.nanmedian(v) for k, v in monitor.ratios.items() if k.endswith("weight")}
    print(f"{name:8s} lr={lr:<6g} val acc {hist.val_acc[-1]:.3f}  median ratio "
          + "  ".join(f"{k} {v:.1e}" for k, v in medians.items()))
    for w in caught:
        print("    warning:", w.message)

# %%
# The median ratio of each weight matrix over the run (left), and the ratio
# of the first layer's weights step by step (right). The good learning rate
# sits near 1e-3 in every layer and reaches the best accuracy in 5 epochs; at
# 1e-4 the updates are ~30 times too small and the network has hardly started
# learning; at 0.3 every step changes each layer by a few percent and the run
# is noisy and worse. The output layer's ratio is the largest at every
# learning rate: its gradient is the most direct, so it is the first to go out
# of range.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for k, (name, monitor) in enumerate(monitors.items()):
    weights = [n for n in monitor.ratios if n.endswith("weight")]
    medians = [np.nanmedian(monitor.ratios[n]) for n in weights]
    ax1.semilogy(range(1, len(weights) + 1), medians, "o-", color=f"C{k}",
                 label=f"{name} (lr={learning_rates[name]:g})")
    ratio = np.asarray(monitor.ratios[weights[0]])
    smooth = np.convolve(ratio, np.ones(5) / 5, mode="valid")
    ax2.semilogy(ratio, color=f"C{k}", alpha=0.3)
    ax2.semilogy(np.arange(2, 2 + len(smooth)), smooth, color=f"C{k}", label=name)
for ax in (ax1, ax2):
    ax.axhline(1e-3, color="k", ls="--", lw=0.8, label="~1e-3 target")
    ax.axhspan(1e-4, 1e-2, color="0.9", zorder=0)
ax1.set_xticks(range(1, len(weights) + 1), weights)
ax1.set_xlabel("layer")
ax1.set_ylabel("median ||update|| / ||W||")
ax1.set_title("per layer, median over the run")
ax1.legend(fontsize=8)
ax2.set_xlabel("step")
ax2.set_ylabel("||update|| / ||W||")
ax2.set_title(f"{weights[0]} step by step (5-step average)")
ax2.legend(fontsize=8)
fig.tight_layout()
