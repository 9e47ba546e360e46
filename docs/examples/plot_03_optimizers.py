"""
SGD, momentum, Nesterov, AdaGrad, RMSProp and Adam on one problem
=================================================================

The same network, initial weights and batches, trained by each update rule
of the lecture with a typical learning rate for it. Plain SGD is the slowest;
momentum and Nesterov build up speed along consistent directions; the
adaptive methods (AdaGrad, RMSProp, Adam) scale each parameter's step by its
gradient history.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)

optimizers = {
    "SGD": lambda ps: fnn.optim.SGD(ps, lr=0.02),
    "SGD+momentum": lambda ps: fnn.optim.SGD(ps, lr=0.02, momentum=0.9),
    "Nesterov": lambda ps: fnn.optim.SGD(ps, lr=0.02, momentum=0.9, nesterov=True),
    "AdaGrad": lambda ps: fnn.optim.Adagrad(ps, lr=0.02),
    "RMSProp": lambda ps: fnn.optim.RMSProp(ps, lr=1e-3),
    "Adam": lambda ps: fnn.optim.Adam(ps, lr=1e-3),
}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for name, make in optimizers.items():
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 128, activation="relu"), fnn.nn.Linear(128, 10))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), make(model.parameters()), seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=10, batch_size=32, val=(Xva, yva), progress=False)
    loss = np.convolve(hist.loss, np.ones(20) / 20, mode="valid")
    ax1.plot(loss, label=name)
    ax2.plot(range(1, len(hist.val_acc) + 1), hist.val_acc, "o-", label=name)
    print(f"{name:13s} final loss {hist.epoch_loss[-1]:.4f}  val acc {hist.val_acc[-1]:.3f}")
ax1.set_yscale("log")
ax1.set_xlabel("step")
ax1.set_ylabel("training loss (20-step average)")
ax2.set_xlabel("epoch")
ax2.set_ylabel("validation accuracy")
ax1.legend()
fig.tight_layout()

# %%
# L-BFGS, a full-batch quasi-Newton method: one step per epoch over the whole
# training set (``batch_size=len(X)``); each step runs a line search.
fnn.manual_seed(0)
model = fnn.nn.Sequential(fnn.nn.Linear(64, 128, activation="relu"), fnn.nn.Linear(128, 10))
opt = fnn.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
hist = trainer.fit(Xtr, ytr, epochs=20, batch_size=len(Xtr), val=(Xva, yva), progress=False)
print(f"L-BFGS: loss {hist.loss[0]:.3f} -> {hist.loss[-1]:.4f}, val acc {hist.val_acc[-1]:.3f}")
fig, ax = plt.subplots(figsize=(6, 4))
ax.semilogy(hist.loss, "o-")
ax.set_xlabel("L-BFGS step (full batch)")
ax.set_ylabel("training loss")
ax.set_title("L-BFGS on the digits")
fig.tight_layout()
