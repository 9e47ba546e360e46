"""A VGG-style ConvNet on CIFAR-10 (the files you downloaded; nothing is fetched here).

    [Conv 3x3 pad 1 + BatchNorm2d + ReLU] x2, 32 channels  (conv, then BN with the ReLU fused into it)
    MaxPool 2                                              32x32 -> 16x16
    [Conv 3x3 pad 1 + BatchNorm2d + ReLU] x2, 64 channels
    MaxPool 2                                              16x16 -> 8x8
    Flatten -> Linear 4096->256 + ReLU -> Dropout(0.5) -> Linear 256->10
    He init; Adam with weight decay; linear warm-up then cosine decay;
    random crops (pad 4) and left-right flips; per-channel standardization.

Get the data: download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html
and extract it (tar xzf cifar-10-binary.tar.gz), giving a cifar-10-batches-bin folder.

Run: python examples/cifar_convnet.py PATH [--epochs 20] [--limit 5000] [--backend numba]
     (PATH: the cifar-10-batches-bin folder or the folder holding it)
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fastnn as fnn

HINT = ("download cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, "
        "and pass the cifar-10-batches-bin folder (or the folder holding it)")


def build_convnet(shape=(3, 32, 32), classes=10, dtype=np.float32):
    """The ConvNet for images of shape (C, H, W); each 2x2 pool halves H and W."""
    c, h, w = shape
    return fnn.nn.Sequential(
        fnn.nn.Conv2d(c, 32, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(32, dtype=dtype),
        fnn.nn.ReLU(),
        fnn.nn.Conv2d(32, 32, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(32, dtype=dtype),
        fnn.nn.ReLU(),
        fnn.nn.MaxPool2d(2),
        fnn.nn.Conv2d(32, 64, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(64, dtype=dtype),
        fnn.nn.ReLU(),
        fnn.nn.Conv2d(64, 64, 3, padding=1, init="he_normal", dtype=dtype), fnn.nn.BatchNorm2d(64, dtype=dtype),
        fnn.nn.ReLU(),
        fnn.nn.MaxPool2d(2), fnn.nn.Flatten(),
        fnn.nn.Linear(64 * (h // 4) * (w // 4), 256, init="he_normal", dtype=dtype), fnn.nn.ReLU(),
        fnn.nn.Dropout(0.5),
        fnn.nn.Linear(256, classes, dtype=dtype))


def load(path, limit=None, seed=0):
    """((Xtr, ytr), (Xva, yva), (Xte, yte)) as float32 NCHW standardized per channel with the training
    split's statistics; the last 10% of the (shuffled) training files is the validation split.
    limit: keep only that many training images (a quick run). Raises SystemExit with a hint when the
    files are missing or damaged."""
    try:
        x_train, y_train, x_test, y_test = fnn.data.load_cifar10(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cifar_convnet: cannot read CIFAR-10 from {path!r}: {exc}\n{HINT}") from None
    (xtr, ytr), (xva, yva) = fnn.data.split(x_train, y_train, (0.9, 0.1), seed=seed)
    if limit is not None:
        xtr, ytr = xtr[:limit], ytr[:limit]
    xtr, xva, x_test = (images.astype(np.float32) / np.float32(255) for images in (xtr, xva, x_test))
    scale = fnn.preprocessing.ChannelStandardize().fit(xtr)
    return (scale.transform(xtr), ytr), (scale.transform(xva), yva), (scale.transform(x_test), y_test)


def train(path, epochs=20, batch_size=64, lr=2e-3, limit=None, seed=0, quiet=False):
    """Train on the CIFAR-10 files in ``path``; returns epochs, seconds, val and test accuracy."""
    fnn.manual_seed(seed)
    (Xtr, ytr), (Xva, yva), (Xte, yte) = load(path, limit, seed)
    model = build_convnet(Xtr.shape[1:], int(ytr.max()) + 1)
    opt = fnn.optim.Adam(model.parameters(), lr=lr, weight_decay=5e-4)
    # Linear warm-up over the first epoch's steps, then cosine decay over the rest (per step).
    steps_per_epoch = -(-len(Xtr) // batch_size)
    warm = steps_per_epoch
    schedule = fnn.schedules.Warmup(
        fnn.schedules.CosineAnnealing(t_max=max(1, epochs * steps_per_epoch - warm), per="step"), steps=warm)
    h, w = Xtr.shape[2:]
    augment = fnn.augment.Compose([fnn.augment.RandomCrop((h, w), padding=4), fnn.augment.RandomFlip()])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, schedule=schedule, augment=augment,
                          seed=seed)
    t0 = time.perf_counter()
    hist = trainer.fit(Xtr, ytr, epochs=epochs, batch_size=batch_size, val=(Xva, yva), progress=not quiet)
    seconds = time.perf_counter() - t0
    test = trainer.evaluate(Xte, yte)
    return {"epochs": epochs, "train_images": len(Xtr), "seconds": seconds, "val_accuracy": hist.val_acc[-1],
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "model": model}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="the cifar-10-batches-bin folder (or the folder holding it)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT training images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=["cpp", "numba"], default=None)
    args = parser.parse_args(argv)
    if args.backend:
        fnn.backend.use(args.backend)
    r = train(args.path, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, limit=args.limit,
              seed=args.seed)
    print(f"ConvNet on CIFAR-10 ({fnn.backend.current()}, {fnn.get_num_threads()} threads): {r['train_images']} "
          f"training images, {r['epochs']} epochs in {r['seconds']:.1f} s, val accuracy {r['val_accuracy']:.4f}, "
          f"test accuracy {r['test_accuracy']:.4f}")


if __name__ == "__main__":
    sys.exit(main())
