"""
Sanity checks before training: the initial loss and overfitting 20 examples
============================================================================

Two checks the lecture asks for before any long run.

1. **The initial loss.** An untrained softmax classifier over C classes should
   give every class about the same probability, so its cross-entropy loss is
   about ln C: ln 10 = 2.303 for the ten digits.
   :func:`fastnn.diagnostics.check_initial_loss` measures it (in eval mode,
   leaving the model unchanged) and says what is wrong when it is off.
2. **Overfit a tiny subset.** A model and a training loop that work drive the
   training loss of 20 examples to about 0 and their accuracy to 100%, with no
   regularization. :func:`fastnn.diagnostics.overfit_small` trains a fresh
   model from ``build()`` (a function, so that it starts from untrained
   weights) with Adam on the full batch.
"""
import math

import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn
from fastnn.diagnostics import check_initial_loss, overfit_small

X, y = fnn.data.load_digits()
(Xtr, ytr), _, _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)
Xc = fnn.preprocessing.MeanImage().fit_transform(Xtr)     # zero-centered pixels
loss = fnn.losses.SoftmaxCrossEntropy()


def build(init="auto", width=128):
    return fnn.nn.Sequential(fnn.nn.Linear(64, width, activation="relu", init=init),
                             fnn.nn.Linear(width, width, activation="relu", init=init),
                             fnn.nn.Linear(width, 10, init=init))


print(f"expected initial loss for 10 classes: ln(10) = {math.log(10):.4f}")
inits = ["small_random", "xavier_normal", "auto", "normal"]      # "auto": He for the ReLU layers
inputs = {"raw pixels": Xtr, "zero-centered": Xc}
results = {}
for data, Xs in inputs.items():
    for init in inits:
        fnn.manual_seed(0)
        r = results[data, init] = check_initial_loss(build(init), loss, Xs, ytr)
        print(f"{data:13s} init={init:13s} loss {r['loss']:8.4f}  score std {r['score_std']:7.3f}  ok={r['ok']}")
        if r["hint"]:
            print("    hint:", r["hint"])

fig, ax = plt.subplots(figsize=(7, 3.8))
width = 0.38
for k, data in enumerate(inputs):
    values = [results[data, i]["loss"] for i in inits]
    bars = ax.bar(np.arange(len(inits)) + (k - 0.5) * width, values, width, label=data,
                  color=f"C{k}", edgecolor=["k" if results[data, i]["ok"] else "C3" for i in inits], linewidth=2)
    ax.bar_label(bars, ["ok" if results[data, i]["ok"] else "off" for i in inits], fontsize=8)
ax.axhline(math.log(10), color="k", ls="--", lw=0.8, label="ln(10)")
ax.set_xticks(range(len(inits)), inits)
ax.set_yscale("log")
ax.set_ylabel("initial loss")
ax.set_title("check_initial_loss")
ax.legend()
fig.tight_layout()

# %%
# Weights drawn with std 1 (``init="normal"``) give scores with a huge
# spread: the softmax is confident and wrong, and the initial loss is orders
# of magnitude above ln 10. Subtler: He initialization (fastnn's ``"auto"``
# for ReLU layers) on the raw pixels, which are all non-negative, starts at
# about 2.6, outside the 10% tolerance: inputs that are not zero-centered
# push every pre-activation the same way and inflate the scores. Subtracting
# the mean image (:class:`fastnn.preprocessing.MeanImage`, the lecture's
# first preprocessing step) brings it back near ln 10. A tiny initialization
# passes this check (its scores are ~0), though it fails others: its signal
# vanishes layer by layer.
#
# Now the second check: overfit the first 20 training examples. With a
# reasonable learning rate the loss falls to ~0 within a hundred full-batch
# steps. With a learning rate that is far too low the loss barely moves: the
# lecture's first suspect when "the loss is not going down".
fig, ax = plt.subplots(figsize=(6, 4))
for lr in (1e-2, 1e-5):
    fnn.manual_seed(0)
    r = overfit_small(build, Xc[:20], ytr[:20], epochs=150, lr=lr)
    print(f"overfit_small lr={lr:g}: train acc {r['train_acc']:.2f}, final loss {r['final_loss']:.2e}, ok={r['ok']}")
    ax.semilogy(r["history"].loss, label=f"lr={lr:g} (train acc {r['train_acc']:.2f})")
ax.axhline(math.log(10), color="k", ls="--", lw=0.8, label="ln(10)")
ax.set_xlabel("step (full batch of 20 examples)")
ax.set_ylabel("training loss")
ax.set_title("overfit_small: 20 examples, no regularization")
ax.legend()
fig.tight_layout()
