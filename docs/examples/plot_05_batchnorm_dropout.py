"""
BatchNorm allows a high learning rate; dropout at train vs test time
====================================================================

Two lecture points on one deep MLP. With plain SGD at a high learning rate,
the network without batch normalization diverges or learns slowly; with
``BatchNorm1d`` after each hidden Linear it trains fast.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)


def mlp(batchnorm, depth=6, width=128, dropout=0.0):
    layers, d = [], 64
    for _ in range(depth):
        layers.append(fnn.nn.Linear(d, width))
        if batchnorm:
            layers.append(fnn.nn.BatchNorm1d(width))
        layers.append(fnn.nn.ReLU())
        if dropout:
            layers.append(fnn.nn.Dropout(dropout))
        d = width
    return fnn.nn.Sequential(*layers, fnn.nn.Linear(d, 10))


fig, ax = plt.subplots(figsize=(7, 4))
for bn in (False, True):
    for lr in (0.05, 0.5):
        fnn.manual_seed(0)
        model = mlp(bn)
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(),
                              fnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9), seed=0)
        try:
            hist = trainer.fit(Xtr, ytr, epochs=10, batch_size=64, val=(Xva, yva), progress=False)
            acc = hist.val_acc
        except fnn.TrainingDiverged as exc:
            print(f"BatchNorm={bn} lr={lr}: diverged ({str(exc).split(':')[0]})")
            acc = trainer.history.val_acc
        ax.plot(range(1, len(acc) + 1), acc, "o-" if bn else "s--", label=f"BatchNorm={bn}, lr={lr}")
        print(f"BatchNorm={bn} lr={lr}: val acc per epoch {np.round(acc, 3).tolist()}")
ax.set_xlabel("epoch")
ax.set_ylabel("validation accuracy")
ax.set_ylim(0, 1)
ax.legend()
fig.tight_layout()

# %%
# Dropout at train and test time. In training mode each forward zeroes a
# random fraction ``p`` of the units and scales the rest by ``1 / (1 - p)``
# (inverted dropout: fastnn's ``p`` is the DROP probability); in eval mode the
# layer is the identity, so predictions are deterministic and need no
# rescaling. Averaging many training-mode passes (Monte-Carlo dropout,
# :func:`fastnn.ensemble.mc_predict`) approaches the eval-mode output.
fnn.manual_seed(0)
model = mlp(False, depth=2, dropout=0.5)
trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=2e-3), seed=0)
hist = trainer.fit(Xtr, ytr, epochs=20, batch_size=64, val=(Xva, yva), progress=False)
drop = model[2]                                      # Linear, ReLU, Dropout, ...
x = np.ones((1, 128), np.float32)
drop.train()
print("train mode, one pass over ones:", np.round(drop.forward(x)[0, :12], 1))
drop.eval()
print("eval mode:                     ", np.round(drop.forward(x)[0, :12], 1))
model.eval()
mc = fnn.ensemble.mc_predict(model, Xva, samples=16, seed=0)
print("eval-mode accuracy", trainer.evaluate(Xva, yva)["accuracy"],
      " MC-dropout accuracy", float((mc.argmax(1) == yva).mean()))
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(hist.train_acc, label="train (dropout on)")
ax.plot(hist.val_acc, label="validation (dropout off)")
ax.set_xlabel("epoch")
ax.set_ylabel("accuracy")
ax.legend()
fig.tight_layout()
