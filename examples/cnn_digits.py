"""A small CNN on the 8x8 digits that ship with fastnn (nothing downloaded).

    Conv 1->16 3x3 pad 1 + ReLU        (fused: one im2col + GEMM + bias + ReLU kernel)
    Conv 16->32 3x3 pad 1 + BN + ReLU  (BatchNorm2d with the ReLU fused into it)
    MaxPool 2 -> Flatten -> Linear 512->10, Adam, cosine schedule

Run: python examples/cnn_digits.py [--epochs 8] [--backend numba]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastnn as fnn


def build_cnn(classes=10, dtype=np.float32):
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(1, 16, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.ReLU(),
        fnn.nn.Conv2d(16, 32, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(32, dtype=dtype),
        fnn.nn.ReLU(),
        fnn.nn.MaxPool2d(2), fnn.nn.Flatten(),
        fnn.nn.Linear(32 * 4 * 4, classes, dtype=dtype))


def train(epochs=8, batch_size=64, lr=3e-3, seed=0, quiet=False):
    fnn.manual_seed(seed)
    X, y = fnn.data.load_digits(flatten=False)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = fnn.data.split(X, y, (0.6, 0.2, 0.2), seed=seed)
    model = build_cnn(int(y.max()) + 1)
    opt = fnn.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt,
                          schedule=fnn.schedules.CosineAnnealing(t_max=epochs), seed=seed)
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=batch_size, val=(Xva, yva), progress=not quiet)
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(Xte, yte)
    return {"epochs": epochs, "seconds": seconds, "val_accuracy": hist.val_acc[-1],
            "test_accuracy": test["accuracy"], "test_loss": test["loss"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["cpp", "numba"], default=None)
    args = parser.parse_args()
    if args.backend:
        fnn.backend.use(args.backend)
    r = train(epochs=args.epochs, seed=args.seed)
    print(f"CNN on digits ({fnn.backend.current()}): {r['epochs']} epochs in {r['seconds']:.1f} s, "
          f"val accuracy {r['val_accuracy']:.4f}, test accuracy {r['test_accuracy']:.4f}")


if __name__ == "__main__":
    main()
