"""fastnn.augment: each transform's defining property, against float64 NumPy
references written from the formulas; seeding; dtype/shape; Mixup with the loss
and the Trainer."""
import math

import numpy as np
import pytest

import fastnn as fnn

from conftest import rel_err
from oracle import numerical_grad

A = fnn.augment
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}
LUMA = np.array([0.299, 0.587, 0.114])


def images(rng, n=8, c=3, h=9, w=7, dtype=np.float64):
    return (rng.standard_normal((n, c, h, w)) + 2.0).astype(dtype)


def warp_reference(x, theta, out_hw, bilinear, fill):
    """out[n, :, i, j] = x[n] sampled at (t0 i + t1 j + t2, t3 i + t4 j + t5); outside reads fill."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    i, j = np.meshgrid(np.arange(out_hw[0]), np.arange(out_hw[1]), indexing="ij")
    out = np.empty((n, c) + tuple(out_hw))

    def at(img, yy, xx):
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        vals = img[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        return np.where(inside, vals, fill)

    for k in range(n):
        t = theta[k]
        sy = t[0] * i + t[1] * j + t[2]
        sx = t[3] * i + t[4] * j + t[5]
        if bilinear:
            y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
            wy, wx = sy - y0, sx - x0
            out[k] = ((1 - wy) * ((1 - wx) * at(x[k], y0, x0) + wx * at(x[k], y0, x0 + 1))
                      + wy * ((1 - wx) * at(x[k], y0 + 1, x0) + wx * at(x[k], y0 + 1, x0 + 1)))
        else:
            out[k] = at(x[k], np.floor(sy + 0.5).astype(int), np.floor(sx + 0.5).astype(int))
    return out


def per_image_factor(b, a):
    """Least-squares f per image with b ~ f * a."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return np.sum(a * b, axis=1) / np.sum(a * a, axis=1)


ALL = [A.RandomFlip(), A.RandomFlip(horizontal=False, vertical=True), A.RandomCrop(6, padding=2),
       A.RandomCrop((9, 7), padding=3), A.RandomScale(), A.ColorJitter(0.2, 0.3, 0.4, 0.1), A.RandomTranslate(2),
       A.RandomRotate(20), A.GaussianNoise(0.1), A.Cutout(3, n_holes=2), A.RandomShear(), A.RandomStretch(),
       A.GaussianBlur(),
       A.Compose([A.RandomFlip(), A.RandomCrop((9, 7), 1), A.Cutout(2)])]


@pytest.mark.parametrize("t", ALL, ids=lambda t: repr(t).split("(")[0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dtype_shape_and_seeding(rng, t, dtype):
    x = images(rng, n=16, dtype=dtype)
    before = x.copy()
    out = t(x, rng=5)
    crop = getattr(t, "size", None) if isinstance(t, A.RandomCrop) else None
    assert out.dtype == dtype and out.flags.c_contiguous
    assert out.shape == (x.shape[:2] + crop if crop else x.shape)
    np.testing.assert_array_equal(x, before)                       # input untouched
    np.testing.assert_array_equal(t(x, rng=5), out)                # same seed, same output
    np.testing.assert_array_equal(t(x, rng=np.random.default_rng(5)), out)
    assert not np.array_equal(t(x, rng=6), out)                    # another seed, another output
    fnn.manual_seed(11)
    first = t(x)
    fnn.manual_seed(11)
    np.testing.assert_array_equal(t(x), first)                     # the global generator is seedable too


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bilinear", [True, False])
def test_warp_affine_matches_reference(rng, dtype, bilinear):
    x = images(rng, n=5, c=2, h=11, w=8, dtype=dtype)
    theta = np.c_[rng.uniform(0.5, 1.5, (5, 2)), rng.uniform(-3, 3, 5),
                  rng.uniform(-0.5, 0.5, (5, 2)), rng.uniform(-3, 3, 5)]
    out = A.warp_affine(x, theta, (7, 10), "bilinear" if bilinear else "nearest", fill=-1.5)
    assert out.shape == (5, 2, 7, 10) and out.dtype == dtype
    assert rel_err(out, warp_reference(x, theta, (7, 10), bilinear, -1.5)) < TOL[dtype]
    # Whole-pixel shifts and mirrors take the kernel's row-copy path: same values.
    shifts = np.array([[1, 0, 2, 0, 1, -3], [-1, 0, 10, 0, 1, 0], [1, 0, -4, 0, -1, 7], [-1, 0, 12, 0, -1, 9],
                       [1, 0, 0, 0, 1, 0]], np.float64)
    out = A.warp_affine(x, shifts, (9, 12), "bilinear" if bilinear else "nearest", fill=2.5)
    assert rel_err(out, warp_reference(x, shifts, (9, 12), bilinear, 2.5)) < TOL[dtype]
    np.testing.assert_array_equal(A.warp_affine(x, np.tile([1.0, 0, 0, 0, -1, 7], (5, 1))), x[..., ::-1])


def test_flip(rng):
    x = images(rng, n=32)
    for t in (A.RandomFlip(), A.RandomFlip(horizontal=True, vertical=True, p=0.3)):
        np.testing.assert_array_equal(t(t(x, rng=3), rng=3), x)    # the same flips twice: identity
    np.testing.assert_array_equal(A.RandomFlip(p=1.0)(x, rng=0), x[:, :, :, ::-1])
    np.testing.assert_array_equal(A.RandomFlip(horizontal=False, vertical=True, p=1.0)(x, rng=0), x[:, :, ::-1])
    np.testing.assert_array_equal(A.RandomFlip(p=0.0)(x, rng=0), x)
    out = A.RandomFlip()(x, rng=1)
    flipped = np.all(out == x[:, :, :, ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(out == x, axis=(1, 2, 3))) and 0 < flipped.sum() < 32


def test_crop(rng):
    x = images(rng, n=12)
    np.testing.assert_array_equal(A.RandomCrop((9, 7), padding=0)(x, rng=0), x)
    pad = 2
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = A.RandomCrop((5, 6), padding=pad)(x, rng=4)
    offsets = set()
    for k in range(len(x)):      # each crop is one window of the zero-padded image
        hits = [(oy, ox) for oy in range(9 + 2 * pad - 5 + 1) for ox in range(7 + 2 * pad - 6 + 1)
                if np.array_equal(out[k], padded[k, :, oy:oy + 5, ox:ox + 6])]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 1


def test_translate(rng):
    x = images(rng, n=12)
    np.testing.assert_array_equal(A.RandomTranslate(0)(x, rng=0), x)
    out = A.RandomTranslate((2, 3), fill=-7.0)(x, rng=2)
    for k in range(len(x)):
        hits = []
        for dy in range(-2, 3):
            for dx in range(-3, 4):
                ref = np.full_like(x[k], -7.0)
                ref[:, max(dy, 0):9 + min(dy, 0), max(dx, 0):7 + min(dx, 0)] = \
                    x[k, :, max(-dy, 0):9 - max(dy, 0), max(-dx, 0):7 - max(dx, 0)]
                if np.array_equal(out[k], ref):
                    hits.append((dy, dx))
        assert hits


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate(rng, dtype):
    x = images(rng, n=6, h=8, w=8, dtype=dtype)
    np.testing.assert_array_equal(A.RandomRotate(0)(x, rng=0), x)
    ninety = A.warp_affine(x, A.RandomRotate.theta(np.full(6, 90.0), 8, 8))
    assert rel_err(ninety, np.rot90(x, 1, axes=(2, 3))) < TOL[dtype]          # counter-clockwise, like rot90
    minus = A.warp_affine(x, A.RandomRotate.theta(np.full(6, -90.0), 8, 8))
    assert rel_err(minus, np.rot90(x, -1, axes=(2, 3))) < TOL[dtype]
    # A random rotation is bilinear sampling on the rotated grid about the centre.
    degrees = rng.uniform(-30, 30, 6)
    a = np.deg2rad(degrees)
    c = 3.5
    theta = np.stack([np.cos(a), np.sin(a), c - c * np.cos(a) - c * np.sin(a),
                      -np.sin(a), np.cos(a), c + c * np.sin(a) - c * np.cos(a)], axis=1)
    assert rel_err(A.warp_affine(x, A.RandomRotate.theta(degrees, 8, 8)), warp_reference(x, theta, (8, 8), True, 0.0)) \
        < TOL[dtype]
    out = A.RandomRotate(10)(x, rng=1)
    assert np.isfinite(out).all() and not np.array_equal(out, x)


def test_scale(rng):
    x = images(rng, n=4, h=9, w=9)
    np.testing.assert_array_equal(A.RandomScale((1.0, 1.0))(x, rng=0), x)
    zoom = A.RandomScale((2.0, 2.0))(x, rng=0)          # source = (out - 4) / 2 + 4
    np.testing.assert_allclose(zoom[:, :, ::2, ::2], x[:, :, 2:7, 2:7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(zoom[:, :, 1, 4], (x[:, :, 2, 4] + x[:, :, 3, 4]) / 2, rtol=0, atol=1e-12)
    shrink = A.RandomScale((0.5, 0.5), fill=-3.0)(x, rng=0)   # source = 2 * out - 4
    np.testing.assert_allclose(shrink[:, :, 2:7, 2:7], x[:, :, ::2, ::2], rtol=0, atol=1e-12)
    assert np.all(shrink[:, :, :2] == -3.0) and np.all(shrink[:, :, :, 7:] == -3.0)
    out = A.RandomScale((0.8, 1.2))(x, rng=3)
    assert out.shape == x.shape and np.all(out[:, :, 4, 4] == x[:, :, 4, 4])   # the centre is fixed


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter_brightness_and_contrast(rng, dtype):
    x = images(rng, n=20, dtype=dtype)
    shift = A.ColorJitter(brightness=0.4)(x, rng=0).astype(np.float64) - x
    per_image = shift.reshape(20, -1)
    assert np.ptp(per_image, axis=1).max() < TOL[dtype] * 10                 # one shift per image
    assert np.abs(per_image[:, 0]).max() <= 0.4 and np.ptp(per_image[:, 0]) > 0.05
    out = A.ColorJitter(contrast=0.5)(x, rng=0).astype(np.float64)
    x64 = x.astype(np.float64)
    grey = np.einsum("c,nchw->n", LUMA, x64) / (9 * 7)
    assert np.abs(np.einsum("c,nchw->n", LUMA, out) / (9 * 7) - grey).max() < TOL[dtype] * 10
    centred = x64 - grey[:, None, None, None]
    f = per_image_factor(out - grey[:, None, None, None], centred)
    assert np.all((f >= 0.5 - 1e-6) & (f <= 1.5 + 1e-6)) and np.ptp(f) > 0.05
    assert rel_err(out, grey[:, None, None, None] + f[:, None, None, None] * centred) < TOL[dtype] * 10
    one = x[:, :1].copy()                     # 1 channel: brightness and contrast only
    np.testing.assert_array_equal(A.ColorJitter(saturation=0.5, hue=0.3)(one, rng=0), one)
    assert np.ptp(A.ColorJitter(brightness=0.3)(one, rng=0) - one, axis=(1, 2, 3)).max() < TOL[dtype] * 10
    clipped = A.ColorJitter(brightness=5.0, clip=(0.0, 1.0))(x, rng=0)
    assert clipped.min() >= 0 and clipped.max() <= 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_color_jitter_saturation_and_hue(rng, dtype):
    x = images(rng, n=10, dtype=dtype)
    x64 = x.astype(np.float64)
    luma = np.einsum("c,nchw->nhw", LUMA, x64)
    sat = A.ColorJitter(saturation=0.8)(x, rng=1).astype(np.float64)
    assert np.abs(np.einsum("c,nchw->nhw", LUMA, sat) - luma).max() < TOL[dtype] * 10   # luma per pixel kept
    f = per_image_factor(sat - luma[:, None], x64 - luma[:, None])    # a blend with grey, one factor per image
    assert rel_err(sat, luma[:, None] + f[:, None, None, None] * (x64 - luma[:, None])) < TOL[dtype] * 10
    assert np.all((f >= 0.2 - 1e-6) & (f <= 1.8 + 1e-6))
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    hue = A.ColorJitter(hue=0.5)(x, rng=2).astype(np.float64)
    before, after = np.einsum("kc,nchw->nkhw", yiq, x64), np.einsum("kc,nchw->nkhw", yiq, hue)
    assert np.abs(after[:, 0] - before[:, 0]).max() < TOL[dtype] * 10                    # Y kept
    chroma = np.hypot(before[:, 1], before[:, 2])
    assert np.abs(np.hypot(after[:, 1], after[:, 2]) - chroma).max() < TOL[dtype] * 10   # I/Q rotated
    assert np.abs(hue - x64).max() > 0.1
    grey = np.repeat(x[:, :1], 3, axis=1)                # grey stays grey under saturation and hue
    assert rel_err(A.ColorJitter(saturation=0.9, hue=0.4)(grey, rng=0), grey) < TOL[dtype] * 10


def test_gaussian_noise(rng):
    x = images(rng, n=64, h=16, w=16, dtype=np.float32)
    np.testing.assert_array_equal(A.GaussianNoise(0.0)(x, rng=0), x)
    noise = (A.GaussianNoise(0.25)(x, rng=0) - x).astype(np.float64)
    assert abs(noise.mean()) < 0.01 and abs(noise.std() - 0.25) < 0.01
    flat = rng.standard_normal((10, 5))
    assert A.GaussianNoise(0.1)(flat, rng=0).shape == (10, 5)


def test_cutout(rng):
    size = 4
    x = rng.uniform(1, 2, (200, 2, 20, 20))
    out = A.Cutout(size, fill=0.0)(x, rng=0)
    interior = 0
    for k in range(len(x)):
        holes = np.all(out[k] == 0, axis=0)
        assert np.array_equal(out[k][:, ~holes], x[k][:, ~holes]) and np.all(out[k][:, holes] == 0)
        rows, cols = np.flatnonzero(holes.any(1)), np.flatnonzero(holes.any(0))
        assert 0 < holes.sum() <= size * size
        if rows[0] > 0 and cols[0] > 0 and rows[-1] < 19 and cols[-1] < 19:   # not clipped by the border
            interior += 1
            assert holes.sum() == size * size and np.ptp(rows) == size - 1 and np.ptp(cols) == size - 1
    assert interior > 100
    two = A.Cutout(3, n_holes=2, fill=-1.0)(x, rng=1)
    assert np.all(np.sum(np.all(two == -1.0, axis=1), axis=(1, 2)) <= 18)


def test_mixup_conserves_label_mass_and_convex_combines(rng):
    n, classes = 12, 12
    x = images(rng, n=n)
    y = np.arange(n)                         # distinct labels reveal the partner of each image
    out, y_soft = A.Mixup(alpha=1.0, num_classes=classes)(x, rng=3, y=y)
    assert out.shape == x.shape and y_soft.shape == (n, classes) and y_soft.dtype == np.float64
    assert np.abs(y_soft.sum(axis=1) - 1).max() < 1e-12 and y_soft.min() >= 0
    lam = y_soft[np.arange(n), y]
    partners = []
    for i in range(n):
        others = np.flatnonzero((y_soft[i] > 0) & (np.arange(classes) != i))
        j = int(others[0]) if others.size else i
        partners.append(j)
        ref = lam[i] * x[i] + (1 - lam[i]) * x[j] if j != i else x[i]
        assert rel_err(out[i], ref) < 1e-12
    assert sorted(partners) == list(range(n))              # a permutation of the batch
    lam_batch = lam[np.array(partners) != np.arange(n)]
    assert np.ptp(lam_batch) < 1e-12 and 0 <= lam_batch[0] <= 1   # one lambda per batch
    soft_again, y2 = A.Mixup(0.4)(x.astype(np.float32), rng=0, y=y_soft)   # soft labels in, soft out
    assert soft_again.dtype == np.float32 and y2.dtype == np.float32
    assert np.abs(y2.sum(axis=1) - 1).max() < 1e-6
    with pytest.raises(ValueError, match="labels"):
        A.Mixup(0.2, 10)(x, rng=0)
    with pytest.raises(ValueError, match="num_classes"):
        A.Mixup(0.2)(x, rng=0, y=y)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        A.Mixup(0.2, 5)(x, rng=0, y=y)


def test_compose_threads_one_generator_and_labels(rng):
    x = images(rng, n=10)
    y = rng.integers(0, 3, 10)
    pipe = A.Compose([A.RandomFlip(), A.GaussianNoise(0.1), A.Mixup(0.3, 3)])
    assert pipe.uses_labels and not A.Compose([A.RandomFlip()]).uses_labels
    out, y_soft = pipe(x, rng=7, y=y)
    g = np.random.default_rng(7)
    step = A.GaussianNoise(0.1)(A.RandomFlip()(x, rng=g), rng=g)
    ref, ref_y = A.Mixup(0.3, 3)(step, rng=g, y=y)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(y_soft, ref_y)
    with pytest.raises(ValueError, match="labels"):
        pipe(x, rng=0)


def test_soft_target_cross_entropy(backend, rng):
    scores = rng.standard_normal((6, 4)) * 2
    labels = rng.integers(0, 4, 6)
    onehot = np.eye(4)[labels]
    loss = fnn.losses.SoftmaxCrossEntropy()
    hard, d_hard = loss.forward(scores, labels), loss.backward()
    soft, d_soft = loss.forward(scores, onehot), loss.backward()
    assert abs(hard - soft) < 1e-12 and rel_err(d_soft, d_hard) < 1e-12
    target = rng.dirichlet(np.ones(4), 6)
    value = loss.forward(scores, target)
    log_softmax = scores - np.log(np.exp(scores).sum(1, keepdims=True))
    assert abs(value - (-(target * log_softmax).sum() / 6)) < 1e-12
    grad = loss.backward()
    num = numerical_grad(lambda: loss.forward(scores, target), scores)
    assert rel_err(grad, num) < 1e-6
    f32 = loss.forward(scores.astype(np.float32), target.astype(np.float32))
    assert abs(f32 - value) < 1e-5 and loss.backward().dtype == np.float32
    with pytest.raises(ValueError, match="distributions"):
        loss.forward(scores, target * 2)
    with pytest.raises(ValueError, match="shape"):
        loss.forward(scores, target[:, :3])


def test_trainer_with_mixup_and_augmentation():
    X, y = fnn.data.load_digits()
    (Xtr, ytr), (Xte, yte) = fnn.data.split(X, y, (0.8, 0.2), seed=0)
    fnn.manual_seed(0)
    model = fnn.nn.Sequential(fnn.nn.Linear(64, 64, activation="relu"), fnn.nn.Linear(64, 10))
    augment = A.Compose([A.GaussianNoise(0.02), A.Mixup(0.2, num_classes=10)])
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=3e-3),
                          augment=augment, seed=0)
    hist = trainer.fit(Xtr, ytr, epochs=5, batch_size=64, val=(Xte, yte), progress=False)
    assert all(math.isfinite(v) for v in hist.loss)
    assert hist.val_acc[-1] > 0.85


def test_bad_input(rng):
    x = images(rng, n=2)
    with pytest.raises(ValueError, match="4-D"):
        A.RandomFlip()(x[0], rng=0)
    with pytest.raises(TypeError, match="dtype"):
        A.RandomCrop(4)(x.astype(np.uint8), rng=0)
    with pytest.raises(ValueError, match="C-contiguous"):
        A.RandomRotate(5)(x[:, :, :, ::-1], rng=0)
    with pytest.raises(ValueError, match="larger than the padded"):
        A.RandomCrop(12, padding=1)(x, rng=0)
    with pytest.raises(TypeError, match="rng"):
        A.Cutout(2)(x, rng="seed")
    with pytest.raises(ValueError, match="saturation/hue"):
        A.ColorJitter(saturation=0.2)(images(rng, n=2, c=4), rng=0)
    with pytest.raises(ValueError, match="p must be"):
        A.RandomFlip(p=2)
    with pytest.raises(ValueError, match="interpolation"):
        A.RandomRotate(5, interpolation="cubic")
    with pytest.raises(TypeError, match="callable"):
        A.Compose([A.RandomFlip(), 3])


# --- issue 18: shear, stretch, Gaussian blur ----------------------------------------------

@pytest.mark.parametrize("t", [A.RandomShear(), A.RandomStretch(), A.GaussianBlur()],
                         ids=lambda t: type(t).__name__)
def test_new_transforms_change_an_image_with_defaults(rng, t):
    x = images(rng, n=6, c=3, h=12, w=10, dtype=np.float32)
    out = t(x, rng=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    changed = np.abs(out - x).reshape(6, -1).max(axis=1)
    assert (changed > 1e-3).all()                                  # every image of the batch
    images_differ = [not np.array_equal(out[0], out[k]) for k in range(1, 6)]
    assert any(images_differ)


@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_at_zero_strength(rng, dtype):
    x = images(rng, n=5, dtype=dtype)
    np.testing.assert_array_equal(A.RandomShear(0.0)(x, rng=0), x)
    np.testing.assert_array_equal(A.RandomShear(0.5, horizontal=False, vertical=False)(x, rng=0), x)
    np.testing.assert_array_equal(A.RandomStretch((1.0, 1.0), (1.0, 1.0))(x, rng=0), x)
    np.testing.assert_array_equal(A.GaussianBlur(0.0)(x, rng=0), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shear(rng, dtype):
    x = images(rng, n=4, c=2, h=9, w=7, dtype=dtype)           # centre (4, 3)
    # k_x = 1: row i slides right by (i - 4) pixels; k_y = 1: column j slides down by (j - 3).
    one, zero = np.ones(4), np.zeros(4)
    horizontal = A.warp_affine(x, A.RandomShear.theta(one, zero, 9, 7), fill=-7.0)
    vertical = A.warp_affine(x, A.RandomShear.theta(zero, one, 9, 7), fill=-7.0)
    for i in range(9):
        for j in range(7):
            src = j - (i - 4)
            want = x[:, :, i, src] if 0 <= src < 7 else -7.0
            np.testing.assert_array_equal(horizontal[:, :, i, j], want)
            src = i - (j - 3)
            want = x[:, :, src, j] if 0 <= src < 9 else -7.0
            np.testing.assert_array_equal(vertical[:, :, i, j], want)
    # The general grid is the inverse of "shear x, then shear y" about the centre.
    kx, ky = rng.uniform(-0.4, 0.4, 4), rng.uniform(-0.4, 0.4, 4)
    theta = A.RandomShear.theta(kx, ky, 9, 7)
    for n in range(4):
        forward = np.array([[1, ky[n]], [0, 1]]) @ np.array([[1, 0], [kx[n], 1]])
        inverse = np.linalg.inv(forward)
        np.testing.assert_allclose(theta[n, [0, 1, 3, 4]], inverse.ravel(), atol=1e-15)
        np.testing.assert_allclose(inverse @ [-4, -3] + [4, 3], theta[n, [2, 5]], atol=1e-12)   # centre fixed
    # Random horizontal shears keep the centre row, vertical ones the centre column.
    tol = TOL[dtype] * 10
    np.testing.assert_allclose(A.RandomShear(0.3, vertical=False)(x, rng=1)[:, :, 4], x[:, :, 4], rtol=0, atol=tol)
    np.testing.assert_allclose(A.RandomShear(0.3, horizontal=False)(x, rng=1)[:, :, :, 3], x[:, :, :, 3], rtol=0,
                               atol=tol)


def test_stretch(rng):
    x = images(rng, n=4, h=9, w=9)
    wide = A.RandomStretch(x_scale=(2.0, 2.0), y_scale=(1.0, 1.0))(x, rng=0)     # source col = (j - 4) / 2 + 4
    np.testing.assert_allclose(wide[..., ::2], x[..., 2:7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(wide[..., 1], (x[..., 2] + x[..., 3]) / 2, rtol=0, atol=1e-12)
    tall = A.RandomStretch(x_scale=(1.0, 1.0), y_scale=(0.5, 0.5), fill=-3.0)(x, rng=0)   # source row = 2 i - 4
    np.testing.assert_allclose(tall[:, :, 2:7], x[:, :, ::2], rtol=0, atol=1e-12)
    assert np.all(tall[:, :, :2] == -3.0) and np.all(tall[:, :, 7:] == -3.0)
    # Independent factors per axis and per image, drawn from their ranges, about the centre.
    out = A.RandomStretch((0.7, 1.3), (0.7, 1.3))(x, rng=3)
    assert np.all(out[:, :, 4, 4] == x[:, :, 4, 4])
    r = np.random.default_rng(3)
    sx, sy = r.uniform(0.7, 1.3, 4), r.uniform(0.7, 1.3, 4)
    theta = np.stack([1 / sy, 0 * sx, 4 - 4 / sy, 0 * sx, 1 / sx, 4 - 4 / sx], axis=1)
    assert rel_err(out, warp_reference(x, theta, (9, 9), True, 0.0)) < 1e-12


def blur_reference(x, sigma, truncate=3.0):
    """2-D convolution with the normalized, truncated Gaussian, reflected borders, float64."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    _, _, h, w = x.shape
    for n, s in enumerate(sigma):
        r = int(np.ceil(truncate * max(sigma)))
        k = np.arange(-r, r + 1)
        g = np.exp(-(k[:, None] ** 2 + k[None, :] ** 2) / (2 * s * s))
        g /= g.sum()
        padded = np.pad(x[n], ((0, 0), (r, r), (r, r)), mode="reflect")
        out[n] = sum(g[a, b] * padded[:, a:a + h, b:b + w] for a in range(2 * r + 1) for b in range(2 * r + 1))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_blur(rng, dtype):
    x = images(rng, n=5, c=2, h=10, w=8, dtype=dtype)
    out = A.GaussianBlur(sigma=(0.4, 1.6))(x, rng=2)
    sigma = np.random.default_rng(2).uniform(0.4, 1.6, 5)
    assert rel_err(out, blur_reference(x, sigma)) < TOL[dtype] * 10
    fixed = A.GaussianBlur(sigma=1.0)(x, rng=0)
    assert rel_err(fixed, blur_reference(x, np.ones(5))) < TOL[dtype] * 10
    # A constant image stays constant (so its mean is kept), borders included.
    flat = np.full((3, 3, 6, 5), 0.37, dtype)
    np.testing.assert_allclose(A.GaussianBlur()(flat, rng=1), flat, rtol=0, atol=TOL[dtype] * 10)
    # Noise loses variance; the mean of the batch stays (up to the border reflection).
    noise = rng.standard_normal((16, 1, 32, 32)).astype(dtype) + 2.0
    blurred = A.GaussianBlur()(noise, rng=4)
    assert blurred.var() < 0.5 * noise.var()
    assert abs(blurred.mean() - noise.mean()) < 0.02
    # A larger sigma blurs more.
    var = [A.GaussianBlur(s)(noise, rng=0).var() for s in (0.5, 1.0, 2.0)]
    assert var[0] > var[1] > var[2]


def test_new_transforms_bad_arguments():
    with pytest.raises(ValueError, match="max_shear"):
        A.RandomShear(-0.1)
    with pytest.raises(ValueError, match="x_scale"):
        A.RandomStretch(x_scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="y_scale"):
        A.RandomStretch(y_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="sigma"):
        A.GaussianBlur(sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="sigma"):
        A.GaussianBlur(sigma=-1.0)
    with pytest.raises(ValueError, match="x"):
        A.GaussianBlur()(np.zeros((2, 3, 4)))
