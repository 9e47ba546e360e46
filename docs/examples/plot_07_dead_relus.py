"""
Dead ReLUs at a too-high learning rate
======================================

The lecture's warning about ReLU: a unit whose pre-activation is negative for
every input outputs 0 everywhere, gets a zero gradient, and never recovers: it
is "dead". A bad initialization can cause it, and so can a learning rate that
is too high: one large update knocks the weights to where the unit never fires
again.

The same ReLU MLP, from the same initial weights and batches, is trained with
SGD + momentum at a good learning rate (0.05) and a too-high one (0.5).
:func:`fastnn.diagnostics.dead_relu_fraction` gives, for every ReLU step of
the model, the fraction of its units that output exactly 0 for every example
of a batch. ``divergence_factor=None`` lets the bad run go on instead of being
stopped when its loss explodes.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn
from fastnn.diagnostics import activation_stats, dead_relu_fraction

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)
probe = Xtr[:500]                     # the examples the dead units are counted on


def relu_mlp(width=128, depth=3):
    fnn.manual_seed(0)
    layers, d = [], 64
    for _ in range(depth):
        layers += [fnn.nn.Linear(d, width), fnn.nn.ReLU()]
        d = width
    return fnn.nn.Sequential(*layers, fnn.nn.Linear(d, 10))


class DeadTracker(fnn.Callback):
    """Records dead_relu_fraction(model, probe) every ``every`` steps."""

    def __init__(self, every=5):
        self.every, self.steps, self.fractions = every, [], []

    def on_step_end(self, trainer, step, loss):
        if step % self.every == 0:
            self.steps.append(step)
            self.fractions.append(list(dead_relu_fraction(trainer.model, probe).values()))


learning_rates = {"good (lr=0.05)": 0.05, "too high (lr=0.5)": 0.5}
models, trackers = {}, {}
for name, lr in learning_rates.items():
    model = relu_mlp()
    print(f"{name}: dead before training {dead_relu_fraction(model, probe)}")
    tracker = DeadTracker()
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                          fnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
                          callbacks=[tracker], seed=0, divergence_factor=None)
    hist = trainer.fit(Xtr, ytr, epochs=5, batch_size=32, val=(Xva, yva), progress=False)
    models[name], trackers[name] = model, tracker
    dead = dead_relu_fraction(model, probe)
    print(f"{name}: val acc {hist.val_acc[-1]:.3f}, dead after training "
          + ", ".join(f"{k}: {v:.2f}" for k, v in dead.items()))

# %%
# Dead units per layer after training, and how they die during training. A
# few units are dead from the start (the digits' pixels are non-negative and
# many are always 0, so some random units never fire), and at the good
# learning rate it stays that way; at the high one a handful of steps kill
# nearly every unit of every layer, and the network is stuck at chance level
# (10% accuracy): no gradient flows through a dead layer.
layer_names = list(dead_relu_fraction(models["good (lr=0.05)"], probe))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
width = 0.38
for k, name in enumerate(learning_rates):
    fractions = list(dead_relu_fraction(models[name], probe).values())
    ax1.bar(np.arange(len(fractions)) + (k - 0.5) * width, fractions, width, label=name)
    tracker = trackers[name]
    curves = np.array(tracker.fractions)
    for layer in range(curves.shape[1]):
        ax2.plot(tracker.steps, curves[:, layer], "-" if k == 0 else "--", color=f"C{layer}",
                 label=f"{name}, ReLU {layer + 1}")
ax1.set_xticks(range(len(layer_names)), [f"ReLU {i + 1}" for i in range(len(layer_names))])
ax1.set_ylabel("fraction of dead units")
ax1.set_ylim(0, 1.05)
ax1.set_title("dead_relu_fraction after 5 epochs")
ax1.legend()
ax2.set_xscale("symlog", linthresh=10)
ax2.set_xlabel("step")
ax2.set_ylabel("fraction of dead units")
ax2.set_title("during training")
ax2.legend(fontsize=7)
fig.tight_layout()

# %%
# Histograms of every ReLU's output on the probe batch
# (:func:`fastnn.diagnostics.activation_stats`). After a good run the outputs
# spread over positive values; after the bad one they collapse into a spike at
# 0. ``dead`` in these statistics is the fraction of zero *outputs* (a healthy
# ReLU layer has many), ``dead_relu_fraction`` the fraction of units that are
# zero for *every* input.
fig, axes = plt.subplots(2, len(layer_names), figsize=(11, 5))
for row, name in zip(axes, learning_rates):
    for ax, s in zip(row, activation_stats(models[name], probe)):
        counts, edges = s["hist"]
        ax.stairs(counts, edges, fill=True)
        ax.set_yscale("log")
        ax.set_title(f"{name}\n{s['name']}: zeros {s['dead']:.2f}", fontsize=8)
        ax.tick_params(labelsize=7)
fig.tight_layout()
