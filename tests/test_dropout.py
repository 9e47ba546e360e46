import numpy as np
import pytest

import fastnn as fnn

M32 = 0xFFFFFFFF


def philox_py(counter, key):
    """Random123's philox4x32-10 on Python ints (the reference of ops/philox.h)."""
    c = list(counter)
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c[3] ^ k1) & M32, p0 & M32]
    return c


def test_philox_known_answers():
    # Known-answer vectors of Random123 (kat_vectors: philox4x32_10).
    assert philox_py((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox_py((M32,) * 4, (M32, M32)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox_py((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("seed,offset,n", [(0, 0, 37), (2**63 + 12345, 5, 130), (7, 2**32 * 4 - 3, 21)])
def test_mask_matches_definition(backend, seed, offset, n):
    p = 0.3
    threshold = int(np.floor(0.7 * 2**32))
    want = []
    for j in range(offset, offset + n):
        block = j // 4
        w = philox_py((block & M32, block >> 32, 0, 0), (seed & M32, seed >> 32))[j % 4]
        want.append(w < threshold)
    y = fnn.ops.dropout(np.ones(n, np.float64), p, seed, offset)
    np.testing.assert_array_equal(y != 0, np.array(want))
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_statistics(backend, rng, p):
    n = 1 << 20
    # Never 0, so y != 0 is the mask (randn(n).astype(float32) + 3 is exactly 0 wherever
    # randn rounds to -3.0 in float32: about once per 1000 calls of 2^20 elements).
    x = np.abs(rng.standard_normal(n)).astype(np.float32) + np.float32(1.0)
    seed = int(rng.integers(2**63))
    y = fnn.ops.dropout(x, p, seed, 0)
    kept = y != 0
    frac = kept.mean()
    assert abs(frac - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(y[kept], x[kept] / np.float32(1 - p), rtol=1e-6)
    # neighbouring elements are not correlated
    assert abs(np.corrcoef(kept[:-1], kept[1:])[0, 1]) < 0.01
    dy = rng.standard_normal(n).astype(np.float32)
    dx = fnn.ops.dropout_backward(dy, p, seed, 0)
    np.testing.assert_array_equal(dx != 0, kept & (dy != 0))


def test_offsets_address_one_stream(backend, rng):
    x = rng.standard_normal(1000)
    seed = 99
    whole = fnn.ops.dropout(x, 0.5, seed, 0)
    for off in (1, 3, 4, 333):
        part = fnn.ops.dropout(x[off:off + 200].copy(), 0.5, seed, off)
        np.testing.assert_array_equal(part, whole[off:off + 200])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_identical_across_backends(rng, dtype):
    x = rng.standard_normal((37, 101)).astype(dtype)
    outs = []
    for name in fnn.backend.available():
        with fnn.backend.using(name):
            outs.append(fnn.ops.dropout(x, 0.37, 2024, 11))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_bad_arguments(backend):
    x = np.ones(10, np.float32)
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must"):
            fnn.ops.dropout(x, p, 1)
    with pytest.raises(TypeError, match="x must have dtype"):
        fnn.ops.dropout(np.ones(10, np.int32), 0.5, 1)
    with pytest.raises(ValueError, match="seed"):
        fnn.ops.dropout(x, 0.5, -1)
    with pytest.raises(TypeError, match="offset"):
        fnn.ops.dropout(x, 0.5, 1, 0.5)
    with pytest.raises(ValueError, match="p must"):
        fnn.nn.Dropout(1.0)


def test_dropout_layer(backend, rng):
    fnn.manual_seed(5)
    layer = fnn.nn.Dropout(0.5)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    y1 = layer.forward(x)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx != 0, y1 != 0)
    y2 = layer.forward(x)
    assert not np.array_equal(y1 != 0, y2 != 0)  # the offset advanced
    layer.eval()
    assert layer.forward(x) is x and layer.backward(x) is x
    fnn.manual_seed(5)
    again = fnn.nn.Dropout(0.5)
    np.testing.assert_array_equal(again.forward(x), y1)  # reproducible from the global seed


def test_dropconnect(backend, rng):
    layer = fnn.nn.DropConnect(6, 4, p=0.5, dtype=np.float64, rng=0, seed=3)
    x = rng.standard_normal((5, 6))
    y = layer.forward(x)
    mask = fnn.ops.dropout(np.ones((6, 4)), 0.5, 3, 0)
    np.testing.assert_allclose(y, x @ (layer.weight.data * mask) + layer.bias.data, rtol=1e-12)
    g = rng.standard_normal((5, 4))
    dx = layer.backward(g)
    np.testing.assert_allclose(layer.weight.grad, (x.T @ g) * mask, rtol=1e-12)
    np.testing.assert_allclose(dx, g @ (layer.weight.data * mask).T, rtol=1e-12)
    layer.eval()
    np.testing.assert_allclose(layer.forward(x), x @ layer.weight.data + layer.bias.data, rtol=1e-12)
