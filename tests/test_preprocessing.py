"""fastnn.preprocessing against float64 NumPy references written from the formulas."""
import numpy as np
import pytest

import fastnn as fnn
from conftest import rel_err

P = fnn.preprocessing
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-10}


def correlated(rng, n, spectrum, dtype=np.float64, shift=3.0):
    """(n, D) samples whose covariance has eigenvalues ~ spectrum (D = len(spectrum)) in a random basis."""
    d = len(spectrum)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    z = rng.standard_normal((n, d)) * np.sqrt(np.asarray(spectrum))
    return (z @ q.T + shift * rng.standard_normal(d)).astype(dtype)


def covariance(x):
    """Biased covariance Xc.T Xc / N, the one the transforms are fitted on."""
    xc = np.asarray(x, np.float64) - np.mean(x, axis=0, dtype=np.float64)
    return xc.T @ xc / len(xc)


def eig_desc(cov):
    s, u = np.linalg.eigh(cov)
    return s[::-1], u[:, ::-1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_mean_image(rng, dtype):
    train = (rng.standard_normal((40, 3, 5, 4)) + 7).astype(dtype)
    test = (rng.standard_normal((9, 3, 5, 4)) + 7).astype(dtype)
    t = P.MeanImage().fit(train)
    mean = train.astype(np.float64).mean(axis=0)
    out = t.transform(test)
    assert out.dtype == dtype and out.shape == test.shape
    assert rel_err(out, test.astype(np.float64) - mean) < TOL[dtype] * 10
    assert rel_err(t.inverse_transform(out), test) < TOL[dtype] * 10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [True, False])
def test_channel_standardize(rng, dtype, scale):
    spread, offset = np.array([2.0, 0.5, 9.0]).reshape(1, 3, 1, 1), np.array([1.0, -4.0, 30.0]).reshape(1, 3, 1, 1)
    train = (rng.standard_normal((20, 3, 6, 5)) * spread + offset).astype(dtype)
    test = (rng.standard_normal((4, 3, 6, 5)) * 3).astype(dtype)
    t = P.ChannelStandardize(scale=scale).fit(train)
    x64 = train.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    std = x64.std(axis=(0, 2, 3)).reshape(1, 3, 1, 1) if scale else 1.0
    out = t.transform(test)
    assert out.dtype == dtype
    assert rel_err(out, (test.astype(np.float64) - mean) / std) < TOL[dtype] * 10
    fitted = t.transform(train).astype(np.float64)
    assert np.abs(fitted.mean(axis=(0, 2, 3))).max() < TOL[dtype] * 100
    if scale:
        assert np.abs(fitted.std(axis=(0, 2, 3)) - 1).max() < TOL[dtype] * 100
    assert rel_err(t.inverse_transform(out), test) < TOL[dtype] * 100


@pytest.mark.parametrize("dtype", DTYPES)
def test_standardize_fits_on_train_only_and_survives_constant_features(rng, dtype):
    train = rng.standard_normal((50, 6)) * rng.uniform(0.1, 10, 6) + rng.standard_normal(6) * 5
    train[:, 2] = 4.25                                    # a constant feature (dead pixel)
    test = rng.standard_normal((7, 6)) * 3
    t = P.Standardize().fit(train.astype(dtype))
    out = t.transform(test.astype(dtype))
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[2] = 1.0
    assert np.isfinite(out).all() and out.dtype == dtype
    assert rel_err(out, (test - mean) / std) < TOL[dtype] * 10
    fitted = t.transform(train.astype(dtype))
    assert np.all(fitted[:, 2] == 0)
    keep = [0, 1, 3, 4, 5]
    assert np.abs(fitted[:, keep].astype(np.float64).std(axis=0) - 1).max() < TOL[dtype] * 100
    assert rel_err(t.inverse_transform(out), test) < TOL[dtype] * 100


@pytest.mark.parametrize("variance", [0.9, 0.99, 0.999])
def test_pca_keeps_the_variance_fraction(rng, variance):
    spectrum = [25.0, 9.0, 4.0, 1.0, 0.25, 0.05, 0.01]
    x = correlated(rng, 400, spectrum)
    pca = P.PCA(variance=variance).fit(x)
    s, u = eig_desc(covariance(x))
    frac = np.cumsum(s) / s.sum()
    k = int(np.argmax(frac >= variance)) + 1
    assert pca.components_.shape == (k, 7)
    assert rel_err(pca.explained_variance_ratio_, s[:k] / s.sum()) < 1e-10
    assert pca.explained_variance_ratio_.sum() >= variance
    # Same directions as the reference eigenvectors, up to sign.
    assert np.abs(np.abs(np.sum(pca.components_ * u[:, :k].T, axis=1)) - 1).max() < 1e-8
    z = pca.transform(x)
    assert z.shape == (400, k)
    assert rel_err(covariance(z), np.diag(s[:k])) < 1e-10
    # Mean squared reconstruction error per sample = the variance that was dropped.
    err = np.mean(np.sum((pca.inverse_transform(z) - x) ** 2, axis=1))
    assert abs(err - s[k:].sum()) < 1e-8 * s.sum()
    assert f"-> {k} components" in pca.report()


@pytest.mark.parametrize("dtype", DTYPES)
def test_pca_all_components_round_trip(rng, dtype):
    x = correlated(rng, 100, [4.0, 2.0, 1.0, 0.5, 0.1], dtype)
    for pca in (P.PCA(), P.PCA(n_components=5)):
        z = pca.fit_transform(x)
        assert z.dtype == dtype and z.shape == (100, 5)
        assert rel_err(pca.inverse_transform(z), x) < TOL[dtype] * 10
        assert abs(pca.explained_variance_ratio_.sum() - 1) < 1e-12


@pytest.mark.parametrize("cls", [P.PCAWhitening, P.ZCAWhitening])
@pytest.mark.parametrize("dtype", DTYPES)
def test_whitening_gives_identity_covariance(rng, cls, dtype):
    spectrum = [50.0, 10.0, 3.0, 1.0, 0.2, 0.05]
    x = correlated(rng, 600, spectrum, dtype)
    eps = 1e-5
    t = cls(eps=eps).fit(x)
    z = t.transform(x)
    assert z.dtype == dtype and z.shape == x.shape
    s, _ = eig_desc(covariance(x))
    # Exactly: each white direction has variance S / (S + eps * S_max) (eps is relative).
    expected = np.sort(s / (s + eps * s.max()))
    assert t.eps_ == pytest.approx(eps * s.max(), rel=1e-6)
    assert np.abs(np.sort(np.linalg.eigvalsh(covariance(z))) - expected).max() < TOL[dtype] * 100
    assert np.abs(covariance(z) - np.eye(6)).max() < eps * s.max() / s.min() + TOL[dtype] * 100
    assert rel_err(t.inverse_transform(z), x) < TOL[dtype] * 100


def test_zca_is_the_whitening_closest_to_the_input(rng):
    x = correlated(rng, 500, [30.0, 8.0, 2.0, 0.7, 0.3])
    xc = x - x.mean(axis=0)
    zca = P.ZCAWhitening(1e-6).fit_transform(x)
    pcaw = P.PCAWhitening(1e-6).fit_transform(x)
    distance = np.sum((zca - xc) ** 2)
    assert distance < np.sum((pcaw - xc) ** 2)
    for _ in range(5):   # any rotation of a white signal is white, and farther from the input
        q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
        assert distance < np.sum((zca @ q - xc) ** 2)
    w = P.ZCAWhitening(1e-6).fit(x).whiten_
    assert np.abs(w - w.T).max() < 1e-10


def test_pca_whitening_with_fewer_components(rng):
    x = correlated(rng, 300, [9.0, 4.0, 1.0, 1e-3])
    t = P.PCAWhitening(eps=1e-8, variance=0.99).fit(x)
    z = t.transform(x)
    assert z.shape == (300, 3)
    assert np.abs(covariance(z) - np.eye(3)).max() < 1e-6


@pytest.mark.parametrize("make", [P.MeanImage, P.ChannelStandardize, P.Standardize, lambda: P.PCA(n_components=2),
                                  lambda: P.PCA(variance=0.95), P.PCAWhitening, P.ZCAWhitening])
def test_state_dict_round_trips_through_npz(tmp_path, rng, make):
    x = correlated(rng, 60, [5.0, 2.0, 1.0, 0.5]).reshape(60, 4, 1, 1)
    flat = x.reshape(60, 4)
    data = x if isinstance(make(), (P.MeanImage, P.ChannelStandardize)) else flat
    fitted = make().fit(data)
    state = fitted.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    np.savez(tmp_path / "pre.npz", **state)
    with np.load(tmp_path / "pre.npz", allow_pickle=False) as f:
        restored = make().load_state_dict(dict(f))
    np.testing.assert_array_equal(restored.transform(data), fitted.transform(data))


@pytest.mark.parametrize("make", [P.MeanImage, P.ChannelStandardize, P.Standardize, P.PCA, P.PCAWhitening,
                                  P.ZCAWhitening])
def test_bad_input(make):
    x = np.random.default_rng(0).standard_normal((10, 4))
    with pytest.raises(P.NotFittedError, match="not fitted"):
        make().transform(x)
    assert issubclass(P.NotFittedError, ValueError)
    t = make().fit(x)
    with pytest.raises(ValueError, match=r"features|channels|shape"):
        t.transform(np.ones((3, 5)))
    nan = x.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make().fit(nan)
    with pytest.raises(ValueError, match="NaN"):
        t.transform(nan)
    with pytest.raises(TypeError, match="dtype"):
        make().fit(x.astype(np.int64))
    with pytest.raises(TypeError, match="dtype"):
        t.transform((x * 10).astype(np.uint8))
    with pytest.raises(TypeError, match="numpy"):
        make().fit(x.tolist())


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        P.PCA(n_components=2, variance=0.9)
    with pytest.raises(ValueError, match="variance"):
        P.PCA(variance=1.5)
    with pytest.raises(ValueError, match="exceeds"):
        P.PCA(n_components=9).fit(np.ones((5, 3)))
    with pytest.raises(ValueError, match="2-D"):
        P.Standardize().fit(np.ones((5, 3, 2)))
    with pytest.raises(ValueError, match="missing"):
        P.Standardize().load_state_dict({"mean_": np.zeros(3)})


@pytest.mark.parametrize("cls", [P.PCAWhitening, P.ZCAWhitening])
def test_whitening_eps_is_relative_to_the_largest_eigenvalue(rng, cls):
    # Pixel-like data in [0, 1]: small variances (1e-4 .. 4e-3), full rank.
    x = np.clip(correlated(rng, 4000, np.geomspace(4e-3, 1e-4, 16), shift=0.0) + 0.5, 0.0, 1.0)
    z = cls().fit_transform(x)                  # default eps=1e-5
    # An absolute eps of 1e-5 would leave the weakest direction at 1e-4 / (1e-4 + 1e-5) = 0.91.
    assert np.abs(covariance(z) - np.eye(16)).max() < 2e-3
    # Units do not matter: pixels in [0, 255] whiten to the same output.
    t255 = cls().fit(255.0 * x)
    np.testing.assert_allclose(t255.transform(255.0 * x), z, rtol=1e-7, atol=1e-7)
    assert t255.eps_ == pytest.approx(255.0 ** 2 * cls().fit(x).eps_, rel=1e-9)
    # The fitted eps_ survives a state_dict round trip.
    restored = cls().load_state_dict(t255.state_dict())
    assert restored.eps_ == t255.eps_
    np.testing.assert_array_equal(restored.transform(255.0 * x), t255.transform(255.0 * x))


def test_pca_whitening_subset_uses_the_top_eigenvalue(rng):
    x = correlated(rng, 500, [20.0, 5.0, 1.0, 0.1])
    t = P.PCAWhitening(eps=1e-2, n_components=2).fit(x)
    s, _ = eig_desc(covariance(x))
    assert t.eps_ == pytest.approx(1e-2 * s[0], rel=1e-9)
    np.testing.assert_allclose(np.diag(covariance(t.transform(x))), s[:2] / (s[:2] + 1e-2 * s[0]), rtol=1e-8)


def test_whitening_constant_data_falls_back_to_absolute_eps():
    x = np.full((10, 3), 0.25)
    z = P.ZCAWhitening().fit_transform(x)
    assert np.isfinite(z).all() and not z.any()
