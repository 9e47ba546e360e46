"""Data preprocessing, fit on the training split only, then applied to every split.

The transforms of the lectures ("Training Neural Networks I", data preprocessing;
CS231n notes "Setting up the data and the model"), with scikit-learn's interface:
``fit(X_train)``, ``transform(X)``, ``fit_transform(X_train)`` and, where the map
is invertible, ``inverse_transform(Z)``.

Shapes: N samples, D features (a flattened image), C channels, H x W pixels.

- ``MeanImage``: subtract the mean training image (AlexNet), any shape (N, ...).
- ``ChannelStandardize(scale=True)``: per-channel mean (and std) over N, H, W
  of NCHW data (VGG / ResNet style).
- ``Standardize``: per-feature zero mean, unit variance of (N, D) data.
- ``PCA(n_components | variance)``: rotate the centred data onto the leading
  eigenvectors U of its covariance ``cov = Xc.T @ Xc / N`` (SVD of cov, so
  ``cov = U diag(S) U.T``) and keep k of them.
- ``PCAWhitening(eps)``: ``Xc @ U_k / sqrt(S_k + eps * S_max)``: white, k dimensions.
- ``ZCAWhitening(eps)``: ``Xc @ U diag(1/sqrt(S + eps * S_max)) U.T``: white and,
  of all whitening maps, the one closest to the input (Bell & Sejnowski 1997).

The whitening ``eps`` is relative to the largest eigenvalue S_max of the
covariance (the notes' ``Xrot / sqrt(S + 1e-5)`` adds an absolute 1e-5, which
depends on the data's units: pixels in [0, 1] and in [0, 255] would whiten
differently). Scaling X by any factor therefore leaves the whitened output
unchanged, and a direction is damped only when its variance is comparable to
``eps * S_max`` or smaller. The absolute value used is the fitted ``eps_``.

All statistics are accumulated in float64 in row chunks (no float64 copy of a
large training set); outputs keep the input dtype (float32 or float64).
``state_dict()`` returns plain NumPy arrays, so a fitted transform can be saved
in an .npz next to the model and restored with ``load_state_dict``.
"""
from __future__ import annotations

import os

import numpy as np

from . import _validate as V
from ._io import load_npz

_CHUNK_ROWS = 4096
_STATE_FILE = "a fastnn preprocessing state (.npz of state_dict())"


class NotFittedError(ValueError, AttributeError):
    """transform/inverse_transform called before fit (or load_state_dict)."""


def _check_input(x, name: str, ndim=None, min_rows: int = 0):
    V.float_array(x, name, ndim=ndim, contiguous=False)
    if x.ndim < 2:
        raise ValueError(f"{name} must have a sample axis and features, got shape {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} sample(s) to fit, got {x.shape[0]}")
    V.finite(x, name)
    return x


def _chunks(x):
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        yield x[start:start + _CHUNK_ROWS]


def _mean64(x, axes=0):
    return np.mean(x, axis=axes, dtype=np.float64)


def _var64(x, mean, axes=0):
    """Biased variance around ``mean`` (two-pass, float64), chunked over rows."""
    total = np.zeros(np.shape(mean), np.float64)
    count = 0
    keep = np.expand_dims(mean, axes) if axes != 0 else mean
    for chunk in _chunks(x):
        d = chunk.astype(np.float64) - keep
        total += np.sum(d * d, axis=axes)
        count += d.size // max(total.size, 1)
    return total / max(count, 1)


def _safe_scale(std):
    """std with (near-)constant features mapped to 1 so they pass through as 0, not NaN."""
    std = np.asarray(std, np.float64).copy()
    std[~(std > 1e-12 * max(1.0, float(np.max(std, initial=0.0))))] = 1.0
    return std


class Preprocessor:
    """Base class: fitted state lives in the attributes named by ``_state``."""

    _state: tuple[str, ...] = ()

    def fit(self, X):
        """Compute the statistics from the training data only (then apply the same
        transform to validation and test data: the lectures' rule).

        Parameters
        ----------
        X : (N, ...) float32 or float64
            Training data.

        Returns
        -------
        self
        """
        raise NotImplementedError

    def transform(self, X):
        """Apply the fitted transform.

        Parameters
        ----------
        X : (N, ...) float32 or float64, the layout ``fit`` saw

        Returns
        -------
        array, float, the transformed data
        """
        raise NotImplementedError

    def fit_transform(self, X):
        """``fit(X)`` then ``transform(X)``: for the training set."""
        return self.fit(X).transform(X)

    @property
    def fitted(self) -> bool:
        """True once ``fit`` (or ``load_state_dict``) has set the statistics."""
        return all(getattr(self, k, None) is not None for k in self._state)

    def _require_fitted(self):
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(X_train) (or load_state_dict) "
                                 "before transform")

    def _config(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        """{name: numpy array}: the fitted statistics and the settings, for np.savez."""
        self._require_fitted()
        out = {k: np.array(getattr(self, k)) for k in self._state}
        # Settings that are None are left out: an object array would need pickle to load.
        out.update({k: np.array(v) for k, v in self._config().items() if v is not None})
        return out

    def load_state_dict(self, state):
        """Restore from ``state_dict()``, or from the path of an .npz holding it
        (read with ``fastnn._io.load_npz``: no pickle, headers checked before
        any data, at most ``fastnn._io.MAX_NPZ_BYTES`` = 2**32 bytes of arrays;
        errors name the file)."""
        if isinstance(state, (str, os.PathLike)):
            path = os.fspath(state)
            arrays = load_npz(path, what=_STATE_FILE)
            try:
                return self.load_state_dict(arrays)
            except (ValueError, TypeError) as exc:   # name the file, keep the type
                raise type(exc)(f"preprocessing state file {path}: {exc}") from exc
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"state must be a mapping of names to arrays, got {type(state).__name__}")
        missing = [k for k in self._state if k not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: missing {missing}")
        arrays = {}
        for k in self._state:
            v = np.asarray(state[k])
            if v.dtype.kind not in "biuf":
                raise TypeError(f"state[{k!r}] must hold numbers, got dtype {v.dtype}")
            v = np.array(v, dtype=np.float64)
            if not np.isfinite(v).all():
                raise ValueError(f"state[{k!r}] contains NaN or infinite values")
            arrays[k] = v
        self._check_state(arrays)
        for k, v in arrays.items():
            setattr(self, k, v)
        for k in self._config():
            setattr(self, k, np.asarray(state[k]).item() if k in state else None)
        self._after_load()
        return self

    def _check_state(self, arrays):
        """Shapes of the loaded arrays agree with each other (ValueError naming the key)."""
        ref = arrays["mean_"]
        for k, v in arrays.items():
            if k != "mean_" and k in ("std_", "scale_") and v.shape != ref.shape:
                raise ValueError(f"state[{k!r}] has shape {v.shape}, but mean_ has shape {ref.shape}")

    def _after_load(self):
        pass

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config().items())
        return f"{type(self).__name__}({args})"


def _cast(z, like):
    return np.ascontiguousarray(z, dtype=like.dtype)


def _affine(x, matrix, subtract=None, add=None):
    """(x - subtract) @ matrix + add, in x's dtype (fitted in float64, applied without a float64 copy)."""
    dt = x.dtype
    if subtract is not None:
        x = x - subtract.astype(dt)
    z = x @ matrix.astype(dt)
    if add is not None:
        z += add.astype(dt)
    return np.ascontiguousarray(z)


class MeanImage(Preprocessor):
    """Subtract the mean training sample (AlexNet's mean image). X: (N, ...)."""

    _state = ("mean_",)

    def __init__(self):
        self.mean_ = None

    def fit(self, X):
        """Store ``mean_ = X.mean(axis=0)``, the mean image ``(...)``, from X ``(N, ...)``. Returns self."""
        _check_input(X, "X", min_rows=1)
        self.mean_ = _mean64(X)
        return self

    def _check(self, X, name="X"):
        self._require_fitted()
        _check_input(X, name)
        if X.shape[1:] != self.mean_.shape:
            raise ValueError(f"{name} must have sample shape {self.mean_.shape} (as fitted), got {X.shape[1:]}")

    def transform(self, X):
        """``X - mean_``, X ``(N, ...)`` as fitted."""
        self._check(X)
        return _cast(X - self.mean_.astype(X.dtype), X)

    def inverse_transform(self, Z):
        """``Z + mean_``: back to the input space."""
        self._check(Z, "Z")
        return _cast(Z + self.mean_.astype(Z.dtype), Z)


class ChannelStandardize(Preprocessor):
    """Per-channel mean (and std when ``scale``) over N, H, W of NCHW data.

    Any (N, C, ...) works; statistics are taken over every axis but 1."""

    _state = ("mean_", "std_")

    def __init__(self, scale: bool = True):
        self.scale = bool(scale)
        self.mean_ = None
        self.std_ = None

    def _config(self):
        return {"scale": self.scale}

    @staticmethod
    def _axes(x):
        return (0,) + tuple(range(2, x.ndim))

    def fit(self, X):
        """Per-channel mean ``(C,)`` (and std with ``scale``) over every axis but 1 of X ``(N, C, ...)``.
        Returns self."""
        _check_input(X, "X", min_rows=1)
        axes = self._axes(X)
        self.mean_ = _mean64(X, axes)
        if self.scale:
            self.std_ = _safe_scale(np.sqrt(_var64(X, self.mean_, axes)))
        else:
            self.std_ = np.ones_like(self.mean_)
        return self

    def _broadcast(self, X, name):
        self._require_fitted()
        _check_input(X, name)
        if X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"{name} must have {self.mean_.shape[0]} channels on axis 1 (as fitted), "
                             f"got shape {tuple(X.shape)}")
        shape = (1, -1) + (1,) * (X.ndim - 2)
        return self.mean_.reshape(shape).astype(X.dtype), self.std_.reshape(shape).astype(X.dtype)

    def transform(self, X):
        """``(X - mean_c) / std_c`` per channel (no division without ``scale``)."""
        mean, std = self._broadcast(X, "X")
        return _cast((X - mean) / std, X)

    def inverse_transform(self, Z):
        """``Z * std_c + mean_c``: back to the input space."""
        mean, std = self._broadcast(Z, "Z")
        return _cast(Z * std + mean, Z)


class Standardize(Preprocessor):
    """Per-feature zero mean and unit variance of (N, D) data.

    A constant feature gets scale 1 (it maps to 0, never NaN), as in scikit-learn."""

    _state = ("mean_", "scale_")

    def __init__(self):
        self.mean_ = None
        self.scale_ = None

    def fit(self, X):
        """Per-feature mean and std ``(D,)`` of X ``(N, D)``. Returns self."""
        _check_input(X, "X", ndim=2, min_rows=1)
        self.mean_ = _mean64(X)
        self.scale_ = _safe_scale(np.sqrt(_var64(X, self.mean_)))
        return self

    def _check(self, X, name):
        self._require_fitted()
        _check_input(X, name, ndim=2)
        if X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"{name} must have {self.mean_.shape[0]} features (as fitted), got shape "
                             f"{tuple(X.shape)}")

    def transform(self, X):
        """``(X - mean) / std`` per feature, X ``(N, D)``."""
        self._check(X, "X")
        return _cast((X - self.mean_.astype(X.dtype)) / self.scale_.astype(X.dtype), X)

    def inverse_transform(self, Z):
        """``Z * std + mean``: back to the input space."""
        self._check(Z, "Z")
        return _cast(Z * self.scale_.astype(Z.dtype) + self.mean_.astype(Z.dtype), Z)


def _covariance_eig(X):
    """(mean (D,), U (D, D), S (D,)): SVD of cov = Xc.T @ Xc / N, float64, row chunks.

    Each eigenvector's sign is fixed (largest-magnitude entry positive) so a fit
    is reproducible across LAPACK builds."""
    mean = _mean64(X)
    d = X.shape[1]
    cov = np.zeros((d, d), np.float64)
    for chunk in _chunks(X):
        c = chunk.astype(np.float64) - mean
        cov += c.T @ c
    cov /= X.shape[0]
    U, S, _ = np.linalg.svd(cov, hermitian=True)
    signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(d)])
    signs[signs == 0] = 1.0
    return mean, U * signs, np.maximum(S, 0.0)


class PCA(Preprocessor):
    """Project centred (N, D) data on the top-k eigenvectors of its covariance.

    Give ``n_components`` (k) or ``variance`` (keep the fewest components whose
    share of the total variance reaches it, e.g. 0.99); neither keeps all D.
    Fitted: ``mean_`` (D,), ``components_`` (k, D) rows = eigenvectors,
    ``explained_variance_`` (k,), ``explained_variance_ratio_`` (k,)."""

    _state = ("mean_", "components_", "explained_variance_", "total_variance_")

    def __init__(self, n_components: int | None = None, variance: float | None = None):
        if n_components is not None and variance is not None:
            raise ValueError("give n_components or variance, not both")
        self.n_components = None if n_components is None else V.positive_int(n_components, "n_components")
        self.variance = None if variance is None else V.real(variance, "variance", 0.0, 1.0, low_open=True)
        self.mean_ = self.components_ = self.explained_variance_ = self.total_variance_ = None

    def _config(self):
        return {"n_components": self.n_components, "variance": self.variance}

    @property
    def explained_variance_ratio_(self):
        """``(k,)``: the fraction of the total variance each kept component explains."""
        self._require_fitted()
        return self.explained_variance_ / max(float(self.total_variance_), 1e-300)

    def _keep(self, S) -> int:
        if self.n_components is not None:
            if self.n_components > S.shape[0]:
                raise ValueError(f"n_components={self.n_components} exceeds the {S.shape[0]} features of X")
            return self.n_components
        if self.variance is not None:
            total = S.sum()
            if total <= 0:
                return 1
            frac = np.cumsum(S) / total
            return int(min(np.searchsorted(frac, self.variance - 1e-12) + 1, S.shape[0]))
        return S.shape[0]

    def fit(self, X):
        """Eigendecomposition of the covariance ``X_c^T X_c / N`` of the centred
        training data X ``(N, D)``; keeps k components (``n_components``, or the
        fewest explaining ``variance``). Returns self.
        """
        _check_input(X, "X", ndim=2, min_rows=1)
        mean, U, S = _covariance_eig(X)
        k = self._keep(S)
        self.mean_ = mean
        self.components_ = np.ascontiguousarray(U[:, :k].T)
        self.explained_variance_ = S[:k].copy()
        self.total_variance_ = np.float64(S.sum())
        self._after_load()
        return self

    def _check_state(self, arrays):
        d = arrays["mean_"].shape
        comp, var = arrays["components_"], arrays["explained_variance_"]
        if len(d) != 1:
            raise ValueError(f"state['mean_'] must be 1-D (D,), got shape {d}")
        if comp.ndim != 2 or comp.shape[1] != d[0]:
            raise ValueError(f"state['components_'] must have shape (k, {d[0]}), got {comp.shape}")
        if var.shape != comp.shape[:1]:
            raise ValueError(f"state['explained_variance_'] must have shape ({comp.shape[0]},), got {var.shape}")
        if arrays["total_variance_"].shape != ():
            raise ValueError(f"state['total_variance_'] must be a scalar, got shape {arrays['total_variance_'].shape}")

    def _check(self, X, name, inverse=False):
        """X of the fitted input width, or of the output width for ``inverse``."""
        self._require_fitted()
        _check_input(X, name, ndim=2)
        width = self.components_.shape[0] if inverse else self.mean_.shape[0]
        if X.shape[1] != width:
            raise ValueError(f"{name} must have {width} features (as fitted), got shape {tuple(X.shape)}")

    def transform(self, X):
        """``(X - mean) @ U[:, :k]``: X ``(N, D)`` -> ``(N, k)``, the decorrelated coordinates."""
        self._check(X, "X")
        return _affine(X, self.components_.T, subtract=self.mean_)

    def inverse_transform(self, Z):
        """Back to the D input features (exact when every component is kept)."""
        self._check(Z, "Z", inverse=True)
        return _affine(Z, self.components_, add=self.mean_)

    def report(self) -> str:
        """One line: dimensions kept and the variance they explain."""
        ratio = self.explained_variance_ratio_
        head = ", ".join(f"{100 * r:.1f}%" for r in ratio[:5])
        more = ", ..." if ratio.shape[0] > 5 else ""
        return (f"{type(self).__name__}: {self.mean_.shape[0]} -> {ratio.shape[0]} components keep "
                f"{100 * ratio.sum():.2f}% of the variance (per component: {head}{more})")


def _relative_eps(eps, variances):
    """eps * (largest eigenvalue): the regularizer in the data's own units. Data
    with no variance at all (S_max = 0) falls back to the absolute eps."""
    top = float(np.max(variances, initial=0.0))
    return eps * top if top > 0 else eps


class PCAWhitening(PCA):
    """PCA, then each component divided by sqrt(its variance + eps * S_max):
    ``Z = Xc @ U_k / sqrt(S_k + eps_)``, ``cov(Z) ~ I`` (k x k). X (N, D) -> Z (N, k).

    ``eps`` is relative to the largest eigenvalue S_max (see the module doc), so
    X and 255 * X whiten alike; ``eps_ = eps * S_max`` is the absolute value used."""

    def __init__(self, eps: float = 1e-5, n_components: int | None = None, variance: float | None = None):
        super().__init__(n_components, variance)
        self.eps = V.real(eps, "eps", low=0.0)
        self.eps_ = None

    def _config(self):
        return {"eps": self.eps, **super()._config()}

    def _after_load(self):
        # explained_variance_[0] is S_max: components are kept largest first.
        self.eps_ = _relative_eps(self.eps, self.explained_variance_)
        if np.any(self.explained_variance_ + self.eps_ <= 0):
            raise ValueError("PCAWhitening: a kept direction has zero variance and eps=0; use eps > 0 "
                             "or fewer components")

    def transform(self, X):
        """``(X - mean) @ U[:, :k] / sqrt(S[:k] + eps_)``: ``(N, D)`` -> ``(N, k)``, each component of unit variance."""
        self._check(X, "X")
        return _affine(X, self.components_.T / np.sqrt(self.explained_variance_ + self.eps_), subtract=self.mean_)

    def inverse_transform(self, Z):
        """Undo the scaling and the projection: ``(N, k)`` -> ``(N, D)``."""
        self._check(Z, "Z", inverse=True)
        dewhiten = np.sqrt(self.explained_variance_ + self.eps_)[:, None] * self.components_
        return _affine(Z, dewhiten, add=self.mean_)


class ZCAWhitening(PCA):
    """Whitening that rotates back: W = U diag(1/sqrt(S + eps * S_max)) U.T, so
    cov(Z) ~ I and Z stays as close to the centred input as any white signal
    can. X (N, D) -> Z (N, D).

    ``eps`` is relative to the largest eigenvalue S_max (see the module doc), so
    X and 255 * X whiten alike; ``eps_ = eps * S_max`` is the absolute value used."""

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = V.real(eps, "eps", low=0.0)
        self.eps_ = None
        self.whiten_ = self.dewhiten_ = None

    def _config(self):
        return {"eps": self.eps}

    def _after_load(self):
        U = self.components_.T
        self.eps_ = _relative_eps(self.eps, self.explained_variance_)
        root = np.sqrt(self.explained_variance_ + self.eps_)
        if np.any(root == 0):
            raise ValueError("ZCAWhitening: a zero-variance direction with eps=0; use eps > 0")
        self.whiten_ = (U / root) @ U.T
        self.dewhiten_ = (U * root) @ U.T

    def transform(self, X):
        """``(X - mean) @ W``: ``(N, D)`` -> ``(N, D)``, decorrelated, unit variance, close to the input."""
        self._check(X, "X")
        return _affine(X, self.whiten_, subtract=self.mean_)

    def inverse_transform(self, Z):
        """Undo the whitening: ``(N, D)`` -> ``(N, D)``."""
        self._check(Z, "Z", inverse=True)
        return _affine(Z, self.dewhiten_, add=self.mean_)


__all__ = ["NotFittedError", "Preprocessor", "MeanImage", "ChannelStandardize", "Standardize", "PCA",
           "PCAWhitening", "ZCAWhitening"]
