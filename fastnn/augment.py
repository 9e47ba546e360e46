"""Data augmentation on whole NCHW batches, seeded and vectorized.

Every transform is a callable ``t(x, rng=None)``: x is a C-contiguous float32 or
float64 batch (N, C, H, W); ``rng`` is a ``numpy.random.Generator`` or an int
seed (None: fastnn's global generator, see ``fastnn.manual_seed``). The same
seed gives the same output. Random parameters are drawn per image as arrays,
never in a per-image Python loop; the output is a new array with the input's
dtype (and shape, except ``RandomCrop`` to a smaller ``size``).

Geometry (crop, translate, scale, stretch, shear, rotate) is one kernel, ``warp_affine``: output
pixel (i, j) of image n reads the input at

    (sy, sx) = (t0*i + t1*j + t2,  t3*i + t4*j + t5),   theta[n] = (t0..t5),

with nearest or bilinear interpolation and ``fill`` outside the image (each of
the four bilinear neighbours that falls outside reads ``fill``). Pixel centres
are integers, the image centre is ((H-1)/2, (W-1)/2); positive angles rotate
counter-clockwise as displayed (row 0 at the top), like ``np.rot90``.

``Mixup`` (Zhang et al. 2018) mixes labels too: it is called ``t(x, rng,
y=labels)`` and returns ``(x_mixed, y_soft)`` with y_soft (N, num_classes);
``SoftmaxCrossEntropy`` accepts such soft targets and ``Trainer`` passes the
labels to any augmentation whose ``uses_labels`` is true.
"""
from __future__ import annotations

import math

import numpy as np

from . import _validate as V
from ._random import generator
# numba as the Numba backend's runtime sets it up (threading layer chosen before
# the first parallel compile); None when numba failed to import.
from .backend.numba.runtime import JIT as _JIT, njit, numba, prange

if numba is None:  # pragma: no cover - numba is a dependency; without it only the geometric transforms fail
    def njit(*args, **kwargs):
        def unavailable(*a, **k):
            raise RuntimeError("fastnn.augment: the geometric transforms need numba, which failed to import")
        return lambda fn: unavailable
    prange = range

# --- kernels --------------------------------------------------------------------


@njit(**_JIT)
def _shift_rows(x, out, n, row_step, row0, col_step, col0, fill):
    """Image n when the grid is a whole-pixel shift with optional mirroring:
    sy = row_step*i + row0, sx = col_step*j + col0 (steps are +-1): row copies."""
    channels, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = out.shape[2], out.shape[3]
    if col_step == 1:
        j0, j1 = max(0, -col0), min(wo, w - col0)
    else:
        j0, j1 = max(0, col0 - w + 1), min(wo, col0 + 1)
    j1 = max(j0, j1)
    for c in range(channels):
        for i in range(ho):
            sy = row_step * i + row0
            if sy < 0 or sy >= h:
                for j in range(wo):
                    out[n, c, i, j] = fill
                continue
            for j in range(j0):
                out[n, c, i, j] = fill
            if col_step == 1:
                for j in range(j0, j1):
                    out[n, c, i, j] = x[n, c, sy, j + col0]
            else:
                for j in range(j0, j1):
                    out[n, c, i, j] = x[n, c, sy, col0 - j]
            for j in range(j1, wo):
                out[n, c, i, j] = fill


@njit(parallel=True, **_JIT)
def _warp_affine_kernel(x, out, theta, bilinear, fill):
    """out[n, c, i, j] = x[n, c] at (t0*i + t1*j + t2, t3*i + t4*j + t5); x (N, C, H, W),
    out (N, C, Ho, Wo), theta (N, 6) float64; outside the image reads fill.

    The sample position and weights are computed once per output pixel and used
    for every channel. Whole-pixel shifts and mirrors (crop, translate) take
    the row-copy path, which gives the same values as the general one."""
    n_img, channels, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    for n in prange(n_img):
        t0, t1, t2 = theta[n, 0], theta[n, 1], theta[n, 2]
        t3, t4, t5 = theta[n, 3], theta[n, 4], theta[n, 5]
        if (t1 == 0.0 and t3 == 0.0 and abs(t0) == 1.0 and abs(t4) == 1.0
                and t2 == math.floor(t2) and t5 == math.floor(t5) and abs(t2) < 1e9 and abs(t5) < 1e9):
            _shift_rows(x, out, n, int(t0), int(t2), int(t4), int(t5), fill)
            continue
        for i in range(ho):
            for j in range(wo):
                sy = t0 * i + t1 * j + t2
                sx = t3 * i + t4 * j + t5
                if bilinear:
                    fy = math.floor(sy)
                    fx = math.floor(sx)
                    wy = sy - fy
                    wx = sx - fx
                    y0 = int(fy)
                    x0 = int(fx)
                    top = 0 <= y0 < h
                    bottom = 0 <= y0 + 1 < h
                    left = 0 <= x0 < w
                    right = 0 <= x0 + 1 < w
                    for c in range(channels):
                        v00 = x[n, c, y0, x0] if top and left else fill
                        v01 = x[n, c, y0, x0 + 1] if top and right else fill
                        v10 = x[n, c, y0 + 1, x0] if bottom and left else fill
                        v11 = x[n, c, y0 + 1, x0 + 1] if bottom and right else fill
                        out[n, c, i, j] = ((1.0 - wy) * ((1.0 - wx) * v00 + wx * v01)
                                           + wy * ((1.0 - wx) * v10 + wx * v11))
                else:
                    yi = int(math.floor(sy + 0.5))
                    xi = int(math.floor(sx + 0.5))
                    inside = 0 <= yi < h and 0 <= xi < w
                    for c in range(channels):
                        out[n, c, i, j] = x[n, c, yi, xi] if inside else fill


def warp_affine(x, theta, out_size=None, interpolation: str = "bilinear", fill: float = 0.0):
    """Resample each image of x (N, C, H, W) on its own affine grid theta (N, 6) (see the module doc).

    out_size: (Ho, Wo), default (H, W). interpolation: "bilinear" or "nearest"."""
    V.batch(x, "x", ndim=4, allow_empty=True, contiguous=True)
    theta = np.ascontiguousarray(theta, dtype=np.float64)
    V.shape_is(theta, "theta", (x.shape[0], 6))
    V.finite(theta, "theta")
    _interpolation(interpolation)
    ho, wo = (x.shape[2], x.shape[3]) if out_size is None else out_size
    out = np.empty((x.shape[0], x.shape[1], int(ho), int(wo)), x.dtype)
    if out.size:
        _warp_affine_kernel(x, out, theta, interpolation == "bilinear", float(fill))
    return out


# --- argument checks --------------------------------------------------------------

def _range(v, name, low=None):
    """(lo, hi) from a pair."""
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise ValueError(f"{name} must be a pair (low, high), got {v!r}")
    lo, hi = V.real(v[0], name, low=low), V.real(v[1], name, low=low)
    if lo > hi:
        raise ValueError(f"{name} must have low <= high, got {v!r}")
    return lo, hi


def _interpolation(v):
    if v not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {v!r}")
    return v


def _centre(h, w):
    return (h - 1) / 2.0, (w - 1) / 2.0


# --- transforms -------------------------------------------------------------------

class Transform:
    """Base: ``t(x, rng=None)`` checks x and draws from ``generator(rng)``."""

    uses_labels = False
    spatial = True

    def __call__(self, x, rng=None):
        V.batch(x, "x", ndim=4 if self.spatial else None, allow_empty=True, contiguous=True)
        return self._apply(x, generator(rng))

    def _apply(self, x, rng):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose:
    """Apply transforms in order with one generator: ``Compose([...])(x, rng, y=None)``.

    With ``y`` (needed when a transform, e.g. Mixup, uses labels) returns (x, y)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise TypeError(f"transforms[{i}] must be callable t(x, rng=None), got {type(t).__name__}")

    @property
    def uses_labels(self) -> bool:
        """True when a transform needs the labels (e.g. Mixup): the Trainer then calls ``t(x, rng, y=labels)``
        and takes back ``(x, y)``."""
        return any(getattr(t, "uses_labels", False) for t in self.transforms)

    def __call__(self, x, rng=None, *, y=None):
        rng = generator(rng)
        for t in self.transforms:
            if getattr(t, "uses_labels", False):
                if y is None:
                    raise ValueError(f"{type(t).__name__} mixes labels: call Compose(...)(x, rng, y=labels)")
                x, y = t(x, rng=rng, y=y)
            else:
                x = t(x, rng=rng)
        return x if y is None else (x, y)

    def __repr__(self):
        return "Compose([" + ", ".join(map(repr, self.transforms)) + "])"


class RandomFlip(Transform):
    """Mirror each image left-right (and/or up-down) with probability p, independently."""

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5):
        self.horizontal = bool(horizontal)
        self.vertical = bool(vertical)
        self.p = V.real(p, "p", 0.0, 1.0)

    def _apply(self, x, rng):
        # Fancy indexing beats the warp kernel here: a mirrored row has no vector load.
        out = x.copy()
        n = x.shape[0]
        if self.horizontal:
            idx = np.flatnonzero(rng.random(n) < self.p)
            out[idx] = out[idx, :, :, ::-1]
        if self.vertical:
            idx = np.flatnonzero(rng.random(n) < self.p)
            out[idx] = out[idx, :, ::-1, :]
        return out


class RandomCrop(Transform):
    """Zero-pad each side by ``padding``, then crop a random size (h, w) window per image."""

    def __init__(self, size, padding: int = 0, fill: float = 0.0):
        self.size = V.pair(size, "size", 1)
        self.padding = V.positive_int(padding, "padding", 0)
        self.fill = V.real(fill, "fill")

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        ch, cw = self.size
        p = self.padding
        if ch > h + 2 * p or cw > w + 2 * p:
            raise ValueError(f"crop size {self.size} is larger than the padded image "
                             f"({h + 2 * p}, {w + 2 * p}) of x with shape {tuple(x.shape)}")
        theta = np.zeros((n, 6))
        theta[:, 0] = theta[:, 4] = 1.0
        theta[:, 2] = rng.integers(0, h + 2 * p - ch + 1, n) - p
        theta[:, 5] = rng.integers(0, w + 2 * p - cw + 1, n) - p
        return warp_affine(x, theta, (ch, cw), "nearest", self.fill)


class RandomTranslate(Transform):
    """Shift each image by whole pixels, dy, dx uniform in [-max_shift, max_shift]; fill the gap."""

    def __init__(self, max_shift, fill: float = 0.0):
        self.max_shift = V.pair(max_shift, "max_shift", 0)
        self.fill = V.real(fill, "fill")

    def _apply(self, x, rng):
        n = x.shape[0]
        my, mx = self.max_shift
        theta = np.zeros((n, 6))
        theta[:, 0] = theta[:, 4] = 1.0
        theta[:, 2] = -rng.integers(-my, my + 1, n)
        theta[:, 5] = -rng.integers(-mx, mx + 1, n)
        return warp_affine(x, theta, None, "nearest", self.fill)


class RandomScale(Transform):
    """Zoom each image about its centre by s ~ U(scale), bilinear; the size stays (H, W):
    s > 1 crops the border away, s < 1 pads it with ``fill``."""

    def __init__(self, scale=(0.9, 1.1), fill: float = 0.0, interpolation: str = "bilinear"):
        self.scale = _range(scale, "scale", low=1e-6)
        self.fill = V.real(fill, "fill")
        self.interpolation = _interpolation(interpolation)

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        inv = 1.0 / rng.uniform(self.scale[0], self.scale[1], n)
        cy, cx = _centre(h, w)
        theta = np.zeros((n, 6))
        theta[:, 0] = theta[:, 4] = inv
        theta[:, 2] = cy * (1.0 - inv)
        theta[:, 5] = cx * (1.0 - inv)
        return warp_affine(x, theta, None, self.interpolation, self.fill)


class RandomRotate(Transform):
    """Rotate each image about its centre by an angle ~ U(-max_degrees, max_degrees),
    counter-clockwise positive, bilinear, corners filled with ``fill``."""

    def __init__(self, max_degrees: float, fill: float = 0.0, interpolation: str = "bilinear"):
        self.max_degrees = V.real(max_degrees, "max_degrees", low=0.0)
        self.fill = V.real(fill, "fill")
        self.interpolation = _interpolation(interpolation)

    @staticmethod
    def theta(degrees, h, w):
        """(N, 6) sampling grid for rotations by ``degrees`` (N,) of (h, w) images."""
        a = np.deg2rad(np.asarray(degrees, np.float64))
        cos, sin = np.cos(a), np.sin(a)
        cy, cx = _centre(h, w)
        # source = R(-angle) (out - centre) + centre, rows pointing down
        return np.stack([cos, sin, cy - cos * cy - sin * cx,
                         -sin, cos, cx + sin * cy - cos * cx], axis=1)

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        degrees = rng.uniform(-self.max_degrees, self.max_degrees, n)
        return warp_affine(x, self.theta(degrees, h, w), None, self.interpolation, self.fill)


def _about_centre(a, b, c, d, h, w):
    """(N, 6) grid theta for the linear source map [[a, b], [c, d]] (each (N,))
    applied about the image centre: source - centre = M (out - centre)."""
    cy, cx = _centre(h, w)
    return np.stack([a, b, cy - a * cy - b * cx, c, d, cx - c * cy - d * cx], axis=1)


class RandomShear(Transform):
    """Shear each image about its centre, bilinear, corners filled with ``fill``.

    Per image, k_x ~ U(-max_shear, max_shear) (when ``horizontal``) and
    k_y ~ U(-max_shear, max_shear) (when ``vertical``); a pixel at (row, col),
    taken relative to the centre, moves to

        (row, col) -> (row + k_y * col', col') with col' = col + k_x * row,

    i.e. a horizontal shear (rows slide sideways in proportion to their height)
    then a vertical one. k = tan(shear angle): 0.2 is about 11 degrees. The map
    has determinant 1 (areas are kept). x (N, C, H, W) -> (N, C, H, W).
    ``max_shear=0`` is the identity."""

    def __init__(self, max_shear: float = 0.2, horizontal: bool = True, vertical: bool = True, fill: float = 0.0,
                 interpolation: str = "bilinear"):
        self.max_shear = V.real(max_shear, "max_shear", low=0.0)
        self.horizontal = bool(horizontal)
        self.vertical = bool(vertical)
        self.fill = V.real(fill, "fill")
        self.interpolation = _interpolation(interpolation)

    @staticmethod
    def theta(kx, ky, h, w):
        """(N, 6) sampling grid for shears (kx, ky) (each (N,)) of (h, w) images."""
        kx, ky = np.asarray(kx, np.float64), np.asarray(ky, np.float64)
        # forward F = V(ky) H(kx) with H = [[1, 0], [kx, 1]] and V = [[1, ky], [0, 1]] in
        # (row, col); the grid samples the source at F^-1 (out - centre) + centre.
        one = np.ones_like(kx)
        return _about_centre(one, -ky, -kx, one + kx * ky, h, w)

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        m = self.max_shear
        kx = rng.uniform(-m, m, n) if self.horizontal else np.zeros(n)
        ky = rng.uniform(-m, m, n) if self.vertical else np.zeros(n)
        return warp_affine(x, self.theta(kx, ky, h, w), None, self.interpolation, self.fill)


class RandomStretch(Transform):
    """Stretch each image about its centre by independent factors: width by
    s_x ~ U(x_scale), height by s_y ~ U(y_scale) (an aspect-ratio change;
    ``RandomScale`` zooms both axes by one factor). Bilinear; the size stays
    (H, W): a factor > 1 crops that axis' border, < 1 pads it with ``fill``.
    x (N, C, H, W) -> (N, C, H, W). ``x_scale = y_scale = (1, 1)`` is the identity."""

    def __init__(self, x_scale=(0.8, 1.2), y_scale=(0.8, 1.2), fill: float = 0.0,
                 interpolation: str = "bilinear"):
        self.x_scale = _range(x_scale, "x_scale", low=1e-6)
        self.y_scale = _range(y_scale, "y_scale", low=1e-6)
        self.fill = V.real(fill, "fill")
        self.interpolation = _interpolation(interpolation)

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        sx = rng.uniform(self.x_scale[0], self.x_scale[1], n)
        sy = rng.uniform(self.y_scale[0], self.y_scale[1], n)
        zero = np.zeros(n)
        return warp_affine(x, _about_centre(1.0 / sy, zero, zero, 1.0 / sx, h, w), None, self.interpolation,
                           self.fill)


def gaussian_kernel(sigma, radius: int):
    """(N, 2*radius + 1) float64 rows exp(-k^2 / (2 sigma_n^2)), k = -radius..radius,
    each normalized to sum 1 (sigma_n = 0 gives the unit impulse)."""
    sigma = np.asarray(sigma, np.float64).reshape(-1, 1)
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.exp(-0.5 * (k / sigma) ** 2)
    weights = np.where(sigma > 0, weights, (k == 0).astype(np.float64))
    return weights / weights.sum(axis=1, keepdims=True)


class GaussianBlur(Transform):
    """Blur each image with a Gaussian of its own sigma ~ U(sigma) (a number: fixed).

        out[n, c] = G_sigma_n * x[n, c],   G(i, j) ~ exp(-(i^2 + j^2) / (2 sigma^2)),

    separable (a row pass then a column pass), truncated at radius
    ceil(truncate * sigma) and normalized to sum 1, with the image reflected at
    its border (like torchvision's GaussianBlur); so a constant image stays
    constant and the mean is kept. x (N, C, H, W) -> (N, C, H, W), in x's dtype.
    ``sigma=0`` is the identity."""

    def __init__(self, sigma=(0.5, 1.5), truncate: float = 3.0):
        if isinstance(sigma, (tuple, list)):
            self.sigma = _range(sigma, "sigma", low=0.0)
        else:
            s = V.real(sigma, "sigma", low=0.0)
            self.sigma = (s, s)
        self.truncate = V.real(truncate, "truncate", low=0.0, low_open=True)

    def _apply(self, x, rng):
        n, c, h, w = x.shape
        lo, hi = self.sigma
        sigma = rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)
        radius = int(math.ceil(self.truncate * hi))
        if radius == 0:
            return x.copy()
        taps = gaussian_kernel(sigma, radius).astype(x.dtype)[:, :, None, None, None]   # (N, K, 1, 1, 1)
        size = 2 * radius + 1
        padded = np.pad(x, ((0, 0), (0, 0), (0, 0), (radius, radius)), mode="reflect")
        rows = taps[:, 0] * padded[..., 0:w]
        for k in range(1, size):
            rows += taps[:, k] * padded[..., k:k + w]
        padded = np.pad(rows, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="reflect")
        out = taps[:, 0] * padded[:, :, 0:h]
        for k in range(1, size):
            out += taps[:, k] * padded[:, :, k:k + h]
        return np.ascontiguousarray(out)


class GaussianNoise(Transform):
    """Add N(0, std^2) noise to every element. Works on any batch (N, ...)."""

    spatial = False

    def __init__(self, std: float):
        self.std = V.real(std, "std", low=0.0)

    def _apply(self, x, rng):
        noise = rng.standard_normal(x.shape, dtype=x.dtype)
        noise *= x.dtype.type(self.std)
        noise += x
        return noise


class Cutout(Transform):
    """Set ``n_holes`` size x size squares per image to ``fill`` (DeVries & Taylor 2017).

    Square centres are uniform over the image, so a square may be clipped by the border."""

    def __init__(self, size: int, n_holes: int = 1, fill: float = 0.0):
        self.size = V.positive_int(size, "size")
        self.n_holes = V.positive_int(n_holes, "n_holes")
        self.fill = V.real(fill, "fill")

    def _apply(self, x, rng):
        n, _, h, w = x.shape
        top = rng.integers(0, h, (n, self.n_holes)) - self.size // 2
        left = rng.integers(0, w, (n, self.n_holes)) - self.size // 2
        rows = np.arange(h)
        cols = np.arange(w)
        in_rows = (rows >= top[..., None]) & (rows < top[..., None] + self.size)      # (N, holes, H)
        in_cols = (cols >= left[..., None]) & (cols < left[..., None] + self.size)    # (N, holes, W)
        mask = (in_rows[:, :, :, None] & in_cols[:, :, None, :]).any(axis=1)            # (N, H, W)
        return np.where(mask[:, None], x.dtype.type(self.fill), x)


# ITU-R BT.601 luma and the YIQ basis (hue is a rotation of the I/Q chroma plane).
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


class ColorJitter(Transform):
    """Random brightness, contrast, saturation and hue, one draw of each per image.

    In this order, each an affine map of the pixel colours (so all four are one
    (C x C) matrix and an offset per image, applied in one batched matmul):

    - brightness b: add delta ~ U(-b, b) (a shift in the data's own units);
    - contrast c: scale by f ~ U(max(0, 1-c), 1+c) about the image's mean grey;
    - saturation s: blend each pixel with its grey (luma) by f ~ U(max(0, 1-s), 1+s);
    - hue h (<= 0.5): rotate the YIQ chroma plane by a turn fraction ~ U(-h, h).

    Saturation and hue need 3 (RGB) channels; on 1-channel images only brightness
    and contrast apply. ``clip=(lo, hi)`` clamps the result (e.g. (0, 1))."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0, clip=None):
        self.brightness = V.real(brightness, "brightness", low=0.0)
        self.contrast = V.real(contrast, "contrast", low=0.0)
        self.saturation = V.real(saturation, "saturation", low=0.0)
        self.hue = V.real(hue, "hue", 0.0, 0.5)
        self.clip = None if clip is None else _range(clip, "clip")

    def _factor(self, rng, amount, n):
        return rng.uniform(max(0.0, 1.0 - amount), 1.0 + amount, n)

    def _apply(self, x, rng):
        n, c, h, w = x.shape
        colour = c == 3
        if c != 3 and c != 1 and (self.saturation or self.hue):
            raise ValueError(f"ColorJitter saturation/hue need 3 (RGB) or 1 channel(s), got x shape {tuple(x.shape)}")
        delta = rng.uniform(-self.brightness, self.brightness, n) if self.brightness else np.zeros(n)
        contrast = self._factor(rng, self.contrast, n) if self.contrast else np.ones(n)
        matrix = np.broadcast_to(np.eye(c), (n, c, c)) * contrast[:, None, None]
        if colour and self.saturation:
            s = self._factor(rng, self.saturation, n)[:, None, None]
            sat = s * np.eye(3) + (1.0 - s) * np.outer(np.ones(3), _LUMA)
            matrix = sat @ matrix
        if colour and self.hue:
            turn = rng.uniform(-self.hue, self.hue, n) * (2.0 * np.pi)
            rot = np.zeros((n, 3, 3))
            rot[:, 0, 0] = 1.0
            rot[:, 1, 1] = rot[:, 2, 2] = np.cos(turn)
            rot[:, 1, 2] = -np.sin(turn)
            rot[:, 2, 1] = np.sin(turn)
            matrix = (_YIQ_TO_RGB @ rot @ _RGB_TO_YIQ) @ matrix
        flat = x.reshape(n, c, h * w)
        if self.contrast:
            weights = _LUMA if colour else np.full(c, 1.0 / c)
            grey_mean = np.einsum("c,nc->n", weights, flat.mean(axis=2, dtype=np.float64))
        else:
            grey_mean = np.zeros(n)
        # Saturation and hue keep grey pixels grey (matrix @ 1 == contrast * 1), so
        # the contrast pivot and the brightness shift pass through them unchanged.
        offset = (1.0 - contrast) * grey_mean + delta
        out = np.matmul(matrix.astype(x.dtype), flat)
        out += offset.astype(x.dtype)[:, None, None]
        if self.clip is not None:
            np.clip(out, self.clip[0], self.clip[1], out=out)
        return out.reshape(x.shape)


class Mixup(Transform):
    """Mix each batch with a shuffled copy of itself (Zhang et al. 2018, "mixup").

    lambda ~ Beta(alpha, alpha), one per batch; x' = lambda x + (1 - lambda) x[perm]
    and y' = lambda onehot(y) + (1 - lambda) onehot(y[perm]). Called
    ``t(x, rng, y=labels)`` with integer labels (N,) or soft ones (N, num_classes);
    returns (x', y') with y' (N, num_classes) in x's dtype. Any batch shape (N, ...)."""

    uses_labels = True
    spatial = False

    def __init__(self, alpha: float = 0.2, num_classes: int | None = None):
        self.alpha = V.real(alpha, "alpha", low=0.0, low_open=True)
        self.num_classes = None if num_classes is None else V.positive_int(num_classes, "num_classes")

    def __call__(self, x, rng=None, *, y=None):
        V.batch(x, "x", allow_empty=True, contiguous=True)
        if y is None:
            raise ValueError("Mixup mixes labels too: call mixup(x, rng, y=labels); it returns (x, y_soft)")
        targets = self._targets(x, y)
        rng = generator(rng)
        lam = rng.beta(self.alpha, self.alpha)
        perm = rng.permutation(x.shape[0])
        lam_x = x.dtype.type(lam)
        out = x * lam_x
        out += x[perm] * (x.dtype.type(1.0) - lam_x)
        y_soft = lam * targets + (1.0 - lam) * targets[perm]
        return out, np.ascontiguousarray(y_soft, dtype=x.dtype)

    def _targets(self, x, y):
        n = x.shape[0]
        if not hasattr(y, "dtype"):
            y = np.asarray(y)
        if y.dtype.kind == "f":
            if y.ndim != 2 or y.shape[0] != n or (self.num_classes is not None and y.shape[1] != self.num_classes):
                want = f"({n}, {self.num_classes if self.num_classes else 'C'})"
                raise ValueError(f"soft labels y must have shape {want}, got {tuple(y.shape)}")
            return y.astype(np.float64)
        if self.num_classes is None:
            raise ValueError("Mixup needs num_classes to turn integer labels into one-hot targets")
        labels = V.labels(y, "y", n, self.num_classes)
        onehot = np.zeros((n, self.num_classes))
        onehot[np.arange(n), labels] = 1.0
        return onehot


__all__ = ["Transform", "Compose", "RandomFlip", "RandomCrop", "RandomScale", "RandomStretch", "RandomShear",
           "ColorJitter", "RandomTranslate", "RandomRotate", "GaussianBlur", "GaussianNoise", "Cutout", "Mixup",
           "warp_affine", "gaussian_kernel"]
