"""
Data augmentation
=================

Label-preserving transforms of the training images (the lectures'
"data augmentation" regularizer). Every transform takes an NCHW batch and a
seed or generator, so the same seed gives the same images. Each row below is
one transform applied to the same eight digits.
"""
import matplotlib.pyplot as plt

import fastnn as fnn
from fastnn import augment as A

X, y = fnn.data.load_digits(flatten=False)          # (1797, 1, 8, 8) float32 in [0, 1]
batch = X[:8]
transforms = {
    "original": None,
    "RandomTranslate(1)": A.RandomTranslate(1),
    "RandomRotate(20)": A.RandomRotate(20),
    "RandomScale((0.8, 1.2))": A.RandomScale((0.8, 1.2)),
    "RandomShear(0.3)": A.RandomShear(0.3),
    "GaussianBlur((0.5, 1))": A.GaussianBlur((0.5, 1.0)),
    "GaussianNoise(0.1)": A.GaussianNoise(0.1),
    "Cutout(3)": A.Cutout(3),
}
fig, axes = plt.subplots(len(transforms), 8, figsize=(8, len(transforms) * 1.1))
for row, (name, t) in zip(axes, transforms.items()):
    out = batch if t is None else t(batch, rng=0)
    for ax, img in zip(row, out):
        ax.imshow(img[0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
fig.tight_layout()

# %%
# Training with augmentation: pass the transform to the Trainer, which applies
# it to every training batch (never to validation or test data).
(Xtr, ytr), (Xva, yva), _ = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=0)
for aug in (None, A.Compose([A.RandomTranslate(1), A.RandomRotate(10)])):
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Flatten(), fnn.nn.Linear(64, 256, activation="relu"), fnn.nn.Linear(256, 10))
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=2e-3),
                          augment=aug, seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=10, batch_size=64, val=(Xva, yva), progress=False)
    print(f"augment={'none' if aug is None else 'translate+rotate'}: train acc {hist.train_acc[-1]:.3f}, "
          f"val acc {hist.val_acc[-1]:.3f}")
