"""Augmentation throughput on a CIFAR-shaped batch (256, 3, 32, 32) float32, in images/s.

Each fastnn transform is validated first (identity settings give the input back;
the affine-warp kernel matches a float64 NumPy reference; rotation by 90 degrees
matches np.rot90), then all candidates are timed interleaved (medians of rounds),
next to two peers where they exist:

- a per-image Python loop in NumPy (how a per-sample pipeline does crop + flip),
- torchvision.transforms.v2 on the batched tensor, if torchvision is importable
  (it draws ONE set of random parameters per call, so per-image randomness would
  cost a loop over images; we time the batched call, which flatters it).

    python bench/bench_augment.py [--rounds 7] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402

A = fnn.augment
SHAPE = (256, 3, 32, 32)


def transforms():
    return {
        "RandomFlip": A.RandomFlip(),
        "RandomCrop(32, padding=4)": A.RandomCrop(32, padding=4),
        "RandomTranslate(4)": A.RandomTranslate(4),
        "RandomScale(0.9, 1.1)": A.RandomScale((0.9, 1.1)),
        "RandomRotate(15)": A.RandomRotate(15),
        "ColorJitter(.4, .4, .4, .1)": A.ColorJitter(0.4, 0.4, 0.4, 0.1),
        "GaussianNoise(0.05)": A.GaussianNoise(0.05),
        "Cutout(8)": A.Cutout(8),
        "Mixup(0.2)": A.Mixup(0.2, num_classes=10),
        "CIFAR pipeline (crop+flip+cutout)": A.Compose([A.RandomCrop(32, padding=4), A.RandomFlip(), A.Cutout(8)]),
    }


def validate(x):
    """Fail loudly before timing anything."""
    np.testing.assert_array_equal(A.RandomCrop(32, padding=0)(x, rng=0), x)
    np.testing.assert_array_equal(A.RandomFlip(p=1.0)(x, rng=0), x[..., ::-1])
    np.testing.assert_array_equal(A.RandomRotate(0)(x, rng=0), x)
    np.testing.assert_array_equal(A.RandomScale((1.0, 1.0))(x, rng=0), x)
    rot = A.warp_affine(x[:8], A.RandomRotate.theta(np.full(8, 90.0), 32, 32))
    assert np.abs(rot - np.rot90(x[:8], 1, axes=(2, 3))).max() < 1e-5
    small = x[:4, :, :12, :12].astype(np.float64)
    rng = np.random.default_rng(0)
    theta = np.c_[rng.uniform(0.8, 1.2, (4, 2)), rng.uniform(-2, 2, 4), rng.uniform(-0.3, 0.3, (4, 2)),
                  rng.uniform(-2, 2, 4)]
    out = A.warp_affine(np.ascontiguousarray(small), theta)
    i, j = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    for n in range(4):
        sy = theta[n, 0] * i + theta[n, 1] * j + theta[n, 2]
        sx = theta[n, 3] * i + theta[n, 4] * j + theta[n, 5]
        y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
        wy, wx = sy - y0, sx - x0

        def at(yy, xx):
            ok = (yy >= 0) & (yy < 12) & (xx >= 0) & (xx < 12)
            return np.where(ok, small[n][:, np.clip(yy, 0, 11), np.clip(xx, 0, 11)], 0.0)

        ref = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)) + wy * ((1 - wx) * at(y0 + 1, x0)
                                                                              + wx * at(y0 + 1, x0 + 1))
        assert np.abs(out[n] - ref).max() < 1e-12, n


def numpy_per_image_crop_flip(x, rng, pad=4):
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.empty_like(x)
    for k in range(len(x)):
        oy, ox = rng.integers(0, 2 * pad + 1, 2)
        img = padded[k, :, oy:oy + 32, ox:ox + 32]
        out[k] = img[:, :, ::-1] if rng.random() < 0.5 else img
    return out


def torchvision_candidates(x):
    try:
        import torch
        from torchvision.transforms import v2
    except ImportError:
        return {}, None
    torch.set_num_threads(fnn.get_num_threads())
    t = torch.from_numpy(x)
    tv = {
        "RandomFlip": v2.RandomHorizontalFlip(),
        "RandomCrop(32, padding=4)": v2.RandomCrop(32, padding=4),
        "RandomRotate(15)": v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR),
        "ColorJitter(.4, .4, .4, .1)": v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
        "Cutout(8)": v2.RandomErasing(p=1.0, scale=(64 / 1024, 64 / 1024), ratio=(1, 1)),
    }
    import torchvision
    return {name: (lambda f=f: f(t)) for name, f in tv.items()}, torchvision.__version__


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: fastnn's default)")
    args = parser.parse_args(argv)
    if args.threads:
        fnn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, SHAPE).astype(np.float32)
    labels = rng.integers(0, 10, SHAPE[0])
    validate(x)
    g = np.random.default_rng(1)
    cands = {}
    for name, t in transforms().items():
        if getattr(t, "uses_labels", False):
            cands[f"fastnn {name}"] = lambda t=t: t(x, rng=g, y=labels)
        else:
            cands[f"fastnn {name}"] = lambda t=t: t(x, rng=g)
    cands["numpy per-image loop crop+flip"] = lambda: numpy_per_image_crop_flip(x, g)
    tv, tv_version = torchvision_candidates(x)
    cands.update({f"torchvision {k}": v for k, v in tv.items()})
    cands["copy (x.copy(), floor)"] = lambda: x.copy()
    seconds = harness.interleaved(cands, rounds=args.rounds, reps=3, warmup=2, pause=0.05)
    n = SHAPE[0]
    rows = {name: {"seconds": s, "images_per_s": n / s, "GB_per_s": 2 * x.nbytes / s / 1e9}
            for name, s in seconds.items()}
    info = harness.machine()
    info["torchvision"] = tv_version
    table = [f"Augmentation on a ({', '.join(map(str, SHAPE))}) float32 batch; {info['cpu']}, "
             f"{info['threads']} threads; medians of {args.rounds} interleaved rounds", "",
             "| transform | ms / batch | images/s | GB/s (read+write) |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        ms, rate, gbs = 1e3 * r["seconds"], r["images_per_s"], r["GB_per_s"]
        table.append(f"| {name} | {ms:.2f} | {rate:,.0f} | {gbs:.2f} |")
    if tv_version is None:
        table += ["", "torchvision is not installed: no peer column."]
    name = "augment" if not args.threads else f"augment_{args.threads}thread"
    harness.write(name, {"machine": info, "shape": SHAPE, "results": rows}, table)


if __name__ == "__main__":
    main()
