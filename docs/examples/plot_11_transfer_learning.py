"""
Transfer learning with a frozen body
====================================

The lecture's recipe when the task at hand has very little data: take a
network trained on a related task with plenty of data, freeze its body (the
feature extractor), replace its last layer with a fresh one for the new
classes, and train only that layer.

Here the "big" task is telling apart the digits 0-4 (all ~540 training
images), the new task the digits 5-9 from only a few labelled images each. The
network is a small CNN on the 8x8 images. ``body.freeze()``
(:meth:`fastnn.nn.Module.freeze`) marks every parameter of the body as not
trainable, and ``model[1] = fnn.nn.Linear(...)`` replaces the head (Sequential
supports item assignment). The comparison is the same CNN trained from scratch
on the same few images.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn

X, y = fnn.data.load_digits()
X = X.reshape(-1, 1, 8, 8)                                  # (N, C, H, W) images
(Xtr, ytr), _, (Xte, yte) = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)
loss = fnn.losses.SoftmaxCrossEntropy()
FEATURES = 32 * 4 * 4


def make_body():
    return fnn.nn.Sequential(fnn.nn.Conv2d(1, 16, 3, padding=1, activation="relu"), fnn.nn.MaxPool2d(2),
                             fnn.nn.Conv2d(16, 32, 3, padding=1, activation="relu"), fnn.nn.Flatten())


def fit(model, X, y, epochs, batch_size, lr):
    trainer = fnn.Trainer(model, loss, fnn.optim.Adam(model.parameters(), lr=lr), seed=0)
    trainer.fit(X, y, epochs=epochs, batch_size=batch_size, progress=False)
    return trainer


# Pretrain on the digits 0-4.
fnn.manual_seed(0)
body = make_body()
model = fnn.nn.Sequential(body, fnn.nn.Linear(FEATURES, 5))
src, src_te = ytr < 5, yte < 5
trainer = fit(model, Xtr[src], ytr[src], epochs=10, batch_size=32, lr=2e-3)
print(f"pretrained on {src.sum()} images of 0-4: test accuracy on 0-4 "
      f"{trainer.evaluate(Xte[src_te], yte[src_te])['accuracy']:.3f}")

# Freeze the body; from now on only a new head is trained.
body.freeze()
frozen = {name: p.data.copy() for name, p in body.named_parameters()}
print(model)

# %%
# The new task: the digits 5-9 (labels 0-4 for the new head), with ``k``
# training images per class, k = 1, 2, 5, 10. For each k, five random draws
# of the few images; each draw trains (a) a fresh head on the frozen body and
# (b) the whole CNN from scratch, full batch, 100 Adam steps each. Both are
# scored on all the test images of 5-9.
new_te = yte >= 5
shots = [1, 2, 5, 10]
accuracy = {"frozen pretrained body + new head": [], "from scratch": []}
for k in shots:
    acc_transfer, acc_scratch = [], []
    for draw in range(5):
        rng = np.random.default_rng(draw)
        idx = np.concatenate([rng.permutation(np.flatnonzero(ytr == c))[:k] for c in range(5, 10)])
        Xs, ys = Xtr[idx], ytr[idx] - 5

        fnn.manual_seed(1)
        model[1] = fnn.nn.Linear(FEATURES, 5)              # a fresh head
        t = fit(model, Xs, ys, epochs=100, batch_size=len(Xs), lr=1e-2)
        acc_transfer.append(t.evaluate(Xte[new_te], yte[new_te] - 5)["accuracy"])

        fnn.manual_seed(1)
        scratch = fnn.nn.Sequential(make_body(), fnn.nn.Linear(FEATURES, 5))
        t = fit(scratch, Xs, ys, epochs=100, batch_size=len(Xs), lr=1e-2)
        acc_scratch.append(t.evaluate(Xte[new_te], yte[new_te] - 5)["accuracy"])
    accuracy["frozen pretrained body + new head"].append(acc_transfer)
    accuracy["from scratch"].append(acc_scratch)
    print(f"{k:2d} per class ({5 * k:2d} images): frozen body + new head {np.mean(acc_transfer):.3f}, "
          f"from scratch {np.mean(acc_scratch):.3f}")

unchanged = all(np.array_equal(p.data, frozen[name]) for name, p in body.named_parameters())
trainable = sum(p.data.size for p in model.parameters() if p.trainable)
print(f"body unchanged by the head's training: {unchanged}; trainable parameters "
      f"{trainable} of {sum(p.data.size for p in model.parameters())}")

# %%
# Test accuracy on the digits 5-9 against the number of labelled images per
# class (line: mean of the five draws; band: lowest to highest). The frozen
# body, which never saw a 5-9, still gives features good enough for a linear
# classifier trained on a handful of images, and it beats training the whole
# network on those images, by one to two and a half points at every k, while
# fitting only the head's 2,565 weights instead of all 7,365. The gap is
# smallest at 10 images per class: the more data the new task has, the less a
# pretrained body adds, and the more it pays to train more of the layers
# (the lecture's table: little data and a similar task, a linear classifier on
# top; more data, fine-tune more layers, e.g. after ``body.unfreeze()``).
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, runs in accuracy.items():
    runs = np.array(runs)
    line, = ax.plot(shots, runs.mean(1), "o-", label=name)
    ax.fill_between(shots, runs.min(1), runs.max(1), color=line.get_color(), alpha=0.2)
ax.set_xscale("log")
ax.set_xticks(shots, [str(k) for k in shots])
ax.set_xlabel("labelled training images per class (digits 5-9)")
ax.set_ylabel("test accuracy on 5-9")
ax.legend()
fig.tight_layout()
