"""
Learning rates: too low, good, too high
=======================================

The lecture's loss-curve picture: with a learning rate that is too low the
loss decreases almost linearly and slowly; a good one gives the fast
exponential-looking drop; a high one drops fast and then stalls at a worse
value; a far too high one explodes. fastnn stops an exploding run with
:class:`fastnn.TrainingDiverged` (the notes' "cost > 3x the original: break
out early") and restores the last good weights.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn

X, y = fnn.data.load_digits()
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)


def run(lr, epochs=15):
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 128, activation="relu"), fnn.nn.Linear(128, 10))
    opt = fnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0)
    try:
        hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=64, val=(Xva, yva), progress=False)
    except fnn.TrainingDiverged as exc:
        print(f"lr={lr:g}: {exc}")
        hist = trainer.history
    return hist


fig, ax = plt.subplots(figsize=(7, 4.5))
for lr, label in [(1e-4, "too low"), (3e-2, "good"), (1.0, "high"), (5.0, "far too high")]:
    hist = run(lr)
    loss = np.asarray(hist.loss)
    smooth = np.convolve(loss, np.ones(10) / 10, mode="valid") if len(loss) >= 10 else loss
    ax.plot(smooth, label=f"lr={lr:g} ({label})")
    print(f"lr={lr:g}: final val acc {hist.val_acc[-1] if hist.val_acc else float('nan'):.3f}")
ax.set_xlabel("step")
ax.set_ylabel("training loss (10-step average)")
ax.set_yscale("log")
ax.legend()
ax.set_title("Loss curves for four learning rates")
fig.tight_layout()
