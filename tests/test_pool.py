"""Pooling (max, average, global average, fractional max's regions) on every
backend and CPU code path against float64 NumPy references written from the
definitions (csrc/ops/pool.h): odd shapes, padding, ties, NaN, gradients,
thread-count determinism, bad input, and the layers' save/load."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn import nn, ops

from conftest import TOL, rel_err, well_separated
from oracle import numerical_grad

DTYPES = [np.float32, np.float64]

# (x shape, kernel, stride, padding): 1x1 images, prime sizes, strides 1..3,
# padding 0..2, 1xN and Nx1 windows, one channel, batch 1, and one case large
# enough for the kernels' parallel path.
CASES = [
    ((2, 3, 7, 5), (2, 2), None, (0, 0)),
    ((1, 1, 1, 1), (1, 1), None, (0, 0)),
    ((3, 2, 11, 13), (3, 3), (2, 2), (1, 1)),
    ((2, 1, 13, 7), (1, 3), (1, 2), (0, 1)),
    ((1, 4, 7, 11), (3, 1), (3, 3), (1, 0)),
    ((2, 3, 8, 8), (2, 2), (1, 1), (1, 1)),
    ((1, 2, 5, 5), (5, 5), (1, 1), (2, 2)),
    ((1, 1, 3, 17), (2, 4), (3, 3), (1, 2)),
    ((1, 3, 2, 2), (3, 3), (2, 3), (1, 1)),
    ((4, 16, 32, 32), (2, 2), None, (0, 0)),
    ((2, 7, 17, 19), (3, 2), (2, 3), (1, 1)),
    # The C++ fixed-width paths (no column padding, 2 or 3 wide, stride 1 or 2).
    ((2, 3, 9, 10), (3, 3), (1, 1), (0, 0)),
    ((1, 2, 9, 8), (2, 2), (1, 1), (1, 0)),
    ((2, 2, 11, 13), (2, 3), (2, 2), (1, 0)),
]
CASE_IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CASES]


# --- references (float64, from the definitions) ------------------------------------

def _windows(x_shape, k, s, p):
    """(oi, oj, rows [r0, r1), cols [c0, c1)) of every output position, clipped."""
    _, _, h, w = x_shape
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    for oi in range(oh):
        for oj in range(ow):
            r0, c0 = oi * sh - ph, oj * sw - pw
            yield oi, oj, (max(r0, 0), min(r0 + kh, h)), (max(c0, 0), min(c0 + kw, w))


def _out_shape(x_shape, k, s, p):
    n, c, h, w = x_shape
    return n, c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def max_pool_ref(x, k, s, p):
    """y = max of each window (padding excluded), index = in-plane position of the
    first maximum in row-major window order (a NaN counts as the maximum)."""
    x = np.asarray(x, np.float64)
    shape = _out_shape(x.shape, k, s, p)
    y, index = np.empty(shape), np.empty(shape, np.int64)
    w = x.shape[3]
    for oi, oj, (r0, r1), (c0, c1) in _windows(x.shape, k, s, p):
        win = x[:, :, r0:r1, c0:c1].reshape(x.shape[0], x.shape[1], -1)
        nan = np.isnan(win)
        a = np.where(nan.any(-1), nan.argmax(-1), win.argmax(-1))   # argmax: the first maximum
        y[:, :, oi, oj] = np.take_along_axis(win, a[..., None], -1)[..., 0]
        index[:, :, oi, oj] = (r0 + a // (c1 - c0)) * w + c0 + a % (c1 - c0)
    return y, index


def max_pool_backward_ref(dy, index, x_shape):
    n, c, h, w = x_shape
    dx = np.zeros((n * c, h * w))
    for plane, (d, i) in enumerate(zip(np.asarray(dy, np.float64).reshape(n * c, -1), index.reshape(n * c, -1))):
        np.add.at(dx[plane], i, d)
    return dx.reshape(x_shape)


def avg_pool_ref(x, k, s, p, count_include_pad=True):
    x = np.asarray(x, np.float64)
    y = np.empty(_out_shape(x.shape, k, s, p))
    for oi, oj, (r0, r1), (c0, c1) in _windows(x.shape, k, s, p):
        div = k[0] * k[1] if count_include_pad else (r1 - r0) * (c1 - c0)
        y[:, :, oi, oj] = x[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / div
    return y


def avg_pool_backward_ref(dy, x_shape, k, s, p, count_include_pad=True):
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(x_shape)
    for oi, oj, (r0, r1), (c0, c1) in _windows(x_shape, k, s, p):
        div = k[0] * k[1] if count_include_pad else (r1 - r0) * (c1 - c0)
        dx[:, :, r0:r1, c0:c1] += (dy[:, :, oi, oj] / div)[:, :, None, None]
    return dx


# --- max pooling -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_max_pool2d_matches_reference(backend, rng, shape, k, s, p, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y, saved = ops.max_pool2d(x, k, s, p)
    ref_y, ref_index = max_pool_ref(x, k, s or k, p)
    assert y.dtype == dtype and y.shape == ref_y.shape
    np.testing.assert_array_equal(y, ref_y.astype(dtype))           # a max selects: exact
    np.testing.assert_array_equal(saved.index, ref_index)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.max_pool2d_backward(dy, saved)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert rel_err(dx, max_pool_backward_ref(dy, ref_index, shape)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s", [((2, 2), (2, 2)), ((2, 2), (1, 1)), ((3, 3), (2, 2)), ((3, 3), (1, 1))])
def test_fixed_windows_at_every_row_length(backend, rng, k, s, dtype):
    """The 2- and 3-wide windows of stride 1 or 2 (compiled per window, their row
    loops per vector length: 16 columns and up, 8-15, under 8): output rows of 1 to
    17 columns, 1 to 5 rows, against the references, forward and backward."""
    for ow in (1, 3, 4, 5, 7, 8, 9, 15, 16, 17):
        for oh in (1, 2, 5):
            shape = (2, 3, (oh - 1) * s[0] + k[0], (ow - 1) * s[1] + k[1])
            x = rng.standard_normal(shape).astype(dtype)
            y, saved = ops.max_pool2d(x, k, s)
            ref, ref_index = max_pool_ref(x, k, s, (0, 0))
            assert y.shape == (2, 3, oh, ow) and np.array_equal(y, ref.astype(dtype)), (ow, oh)
            np.testing.assert_array_equal(saved.index, ref_index)
            dy = rng.standard_normal(y.shape).astype(dtype)
            assert rel_err(ops.max_pool2d_backward(dy, saved), max_pool_backward_ref(dy, ref_index, shape)) < TOL[dtype]
            ya, saved_a = ops.avg_pool2d(x, k, s)
            assert rel_err(ya, avg_pool_ref(x.astype(np.float64), k, s, (0, 0))) < TOL[dtype], (ow, oh)
            assert rel_err(ops.avg_pool2d_backward(dy, saved_a),
                           avg_pool_backward_ref(dy.astype(np.float64), shape, k, s, (0, 0))) < TOL[dtype], (ow, oh)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 3), (1, 2), (1, 0)),
                                   ((3, 3), (3, 3), (1, 1))])
def test_max_pool2d_ties_pick_the_first_maximum_in_row_major_order(backend, rng, k, s, p, dtype):
    # Values in {-1, 0, 1}: most windows hold several equal maxima.
    x = rng.integers(-1, 2, (2, 3, 9, 10)).astype(dtype)
    y, saved = ops.max_pool2d(x, k, s, p)
    ref_y, ref_index = max_pool_ref(x, k, s, p)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(saved.index, ref_index)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert rel_err(ops.max_pool2d_backward(dy, saved), max_pool_backward_ref(dy, ref_index, x.shape)) < TOL[dtype]


def test_max_pool2d_ties_hand_checked(backend):
    # One 2x3 window of equal values then a larger one: the first of each kind wins.
    x = np.array([[[[5, 5, 5], [5, 5, 5]]], [[[1, 7, 2], [7, 0, 7]]]], np.float64)
    y, saved = ops.max_pool2d(x, (2, 3))
    assert y.ravel().tolist() == [5.0, 7.0]
    assert saved.index.ravel().tolist() == [0, 1]


def test_max_pool2d_nan_and_minus_inf(backend):
    x = np.full((1, 1, 4, 4), -np.inf)
    x[0, 0, 0, 1] = 3.0
    x[0, 0, 1, 0] = np.nan
    x[0, 0, 1, 1] = np.nan
    y, saved = ops.max_pool2d(x, 2)
    # NaN propagates (the first NaN's index); a window of -inf keeps its first element.
    assert np.isnan(y[0, 0, 0, 0]) and saved.index[0, 0, 0, 0] == 4
    assert y[0, 0, 1, 1] == -np.inf and saved.index[0, 0, 1, 1] == 2 * 4 + 2
    ref_y, ref_index = max_pool_ref(x, (2, 2), (2, 2), (0, 0))
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(saved.index, ref_index)


@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), (0, 0)), ((3, 2), (2, 1), (1, 1)), ((1, 3), (2, 2), (0, 1))])
def test_max_pool2d_gradient(backend, rng, k, s, p):
    x = well_separated(rng, (2, 2, 7, 6))
    y, saved = ops.max_pool2d(x, k, s, p)
    r = rng.standard_normal(y.shape)
    dx = ops.max_pool2d_backward(r, saved)
    num = numerical_grad(lambda: float((ops.max_pool2d(x, k, s, p)[0] * r).sum()), x)
    assert rel_err(dx, num) < 1e-7


def test_max_pool2d_backward_takes_a_strided_dy(backend, rng):
    x = rng.standard_normal((2, 3, 6, 6))
    y, saved = ops.max_pool2d(x, 2)
    dy = np.asfortranarray(rng.standard_normal(y.shape))
    ref = max_pool_backward_ref(dy, saved.index, x.shape)
    assert rel_err(ops.max_pool2d_backward(dy, saved), ref) < TOL[np.float64]


# --- average pooling ----------------------------------------------------------------------

@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_avg_pool2d_matches_reference(backend, rng, shape, k, s, p, dtype, count_include_pad):
    x = rng.standard_normal(shape).astype(dtype)
    y, saved = ops.avg_pool2d(x, k, s, p, count_include_pad)
    ref = avg_pool_ref(x, k, s or k, p, count_include_pad)
    assert y.dtype == dtype and y.shape == ref.shape
    assert rel_err(y, ref) < TOL[dtype]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.avg_pool2d_backward(dy, saved)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert rel_err(dx, avg_pool_backward_ref(dy, shape, k, s or k, p, count_include_pad)) < TOL[dtype]


def test_avg_pool2d_divisor_with_and_without_padding(backend):
    x = np.ones((1, 1, 2, 2))
    # 3x3 windows, padding 1, stride 1: each window covers 4 inputs.
    assert np.all(ops.avg_pool2d(x, 3, 1, 1)[0] == 4 / 9)
    assert np.all(ops.avg_pool2d(x, 3, 1, 1, count_include_pad=False)[0] == 1.0)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 1), (1, 1)), ((1, 4), (1, 3), (0, 2))])
def test_avg_pool2d_gradient(backend, rng, k, s, p, count_include_pad):
    x = rng.standard_normal((2, 2, 7, 8))
    y, saved = ops.avg_pool2d(x, k, s, p, count_include_pad)
    r = rng.standard_normal(y.shape)
    dx = ops.avg_pool2d_backward(r, saved)
    num = numerical_grad(lambda: float((ops.avg_pool2d(x, k, s, p, count_include_pad)[0] * r).sum()), x)
    assert rel_err(dx, num) < 1e-7


# --- global average pooling -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 1, 13, 2), (8, 64, 16, 16)])
def test_global_avg_pool2d(backend, rng, shape, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    y = ops.global_avg_pool2d(x)
    assert y.dtype == dtype and rel_err(y, x.astype(np.float64).mean(axis=(2, 3))) < TOL[dtype]
    dy = rng.standard_normal(shape[:2]).astype(dtype)
    dx = ops.global_avg_pool2d_backward(dy, x.shape)
    ref = np.broadcast_to(dy.astype(np.float64)[:, :, None, None] / (shape[2] * shape[3]), shape)
    assert dx.dtype == dtype and rel_err(dx, ref) < TOL[dtype]


def test_global_avg_pool2d_layer_gradient(backend, rng):
    x = rng.standard_normal((3, 4, 5, 6))
    layer = nn.GlobalAvgPool2d()
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    assert rel_err(dx, numerical_grad(lambda: float((nn.GlobalAvgPool2d().forward(x) * r).sum()), x)) < 1e-7


# --- fractional max pooling: the region kernel --------------------------------------------------

def regions_ref(x, rows, cols):
    """Max over the regions [rows[i], rows[i+1]) x [cols[j], cols[j+1]] (first maximum)."""
    x = np.asarray(x, np.float64)
    n, c, _, w = x.shape
    y = np.empty((n, c, len(rows) - 1, len(cols) - 1))
    index = np.empty(y.shape, np.int64)
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            win = x[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]].reshape(n, c, -1)
            a = win.argmax(-1)
            width = cols[j + 1] - cols[j]
            y[:, :, i, j] = win.max(-1)
            index[:, :, i, j] = (rows[i] + a // width) * w + cols[j] + a % width
    return y, index


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,out", [((2, 3, 11, 9), (7, 6)), ((1, 1, 5, 5), (5, 5)), ((3, 2, 13, 17), (1, 1)),
                                       ((1, 5, 32, 32), (22, 22))])
def test_max_pool_regions_matches_reference(backend, rng, shape, out, dtype):
    x = rng.integers(-2, 3, shape).astype(dtype) if shape[0] == 3 else rng.standard_normal(shape).astype(dtype)
    u = rng.random(2)
    rows = ops.fractional_pool_bounds(shape[2], out[0], u[0])
    cols = ops.fractional_pool_bounds(shape[3], out[1], u[1])
    y, saved = ops.max_pool_regions(x, rows, cols)
    ref_y, ref_index = regions_ref(x, rows, cols)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(saved.index, ref_index)
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert rel_err(ops.max_pool2d_backward(dy, saved), max_pool_backward_ref(dy, ref_index, shape)) < TOL[dtype]


def test_fractional_bounds_match_the_sequence_the_export_gathers(rng):
    for n_in, n_out in ((11, 7), (9, 6), (25, 17), (10, 10), (10, 1)):
        u = float(rng.random())
        bounds = ops.fractional_pool_bounds(n_in, n_out, u)
        seq = ops.fractional_pool_sequence(n_in, n_out, u)
        np.testing.assert_array_equal(seq[:, 0], bounds[:-1])
        np.testing.assert_array_equal(seq[:, -1] + 1, bounds[1:])


def test_fractional_max_pool_keeps_its_random_stream_and_regions(backend, rng):
    # The layer draws u from its own stream exactly as before the C++ kernel:
    # two numbers per training forward from default_rng(seed).
    x = well_separated(rng, (2, 3, 11, 9))
    pool = nn.FractionalMaxPool2d(output_ratio=0.7, seed=5)
    stream = np.random.default_rng(5)
    for _ in range(3):
        y = pool.forward(x)
        u = stream.random(2)
        assert pool.last_offsets == tuple(u)
        rows = ops.fractional_pool_bounds(11, 7, u[0])
        cols = ops.fractional_pool_bounds(9, 6, u[1])
        np.testing.assert_array_equal(y, regions_ref(x, rows, cols)[0])
    r = rng.standard_normal(y.shape)

    def loss():
        p2 = nn.FractionalMaxPool2d(output_ratio=0.7, seed=9)
        return float((p2.forward(x) * r).sum())

    p2 = nn.FractionalMaxPool2d(output_ratio=0.7, seed=9)
    p2.forward(x)
    assert rel_err(p2.backward(r), numerical_grad(loss, x)) < 1e-7


# --- determinism across thread counts ------------------------------------------------------------

def test_pooling_is_bit_identical_across_thread_counts(backend, rng):
    x = rng.standard_normal((8, 16, 33, 31)).astype(np.float32)
    before = fnn.get_num_threads()

    def run():
        y, saved = ops.max_pool2d(x, 3, 2, 1)
        a, asaved = ops.avg_pool2d(x, 3, 1, 1, False)
        dy = np.ones_like(a) / 3
        return [y, saved.index, ops.max_pool2d_backward(y, saved), a, ops.avg_pool2d_backward(dy, asaved),
                ops.global_avg_pool2d(x)]

    try:
        fnn.set_num_threads(1)
        one = run()
        fnn.set_num_threads(2)
        two = run()
    finally:
        fnn.set_num_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["max", "avg"])
def test_bad_input_names_the_argument(backend, op):
    fn = ops.max_pool2d if op == "max" else ops.avg_pool2d
    x = np.ones((2, 3, 6, 6), np.float32)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        fn(np.ones((2, 3, 6, 12), np.float32)[:, :, :, ::2], 2)
    with pytest.raises(ValueError, match=r"x must be 4-D, got shape \(3, 6, 6\)"):
        fn(x[0], 2)
    with pytest.raises(ValueError, match=r"kernel_size \(7, 7\) is larger than the input \(6, 6\)"):
        fn(x, 7)
    with pytest.raises(ValueError, match=r"kernel_size \(9, 3\) is larger than the input \(6, 6\) padded by \(1, 1\)"):
        fn(x, (9, 3), padding=1)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        fn(x, 2, padding=2)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fn(x, 2, stride=0)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        fn(x, (0, 2))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        fn(x.astype(np.int32), 2)
    y, saved = fn(x, 2)
    backward = ops.max_pool2d_backward if op == "max" else ops.avg_pool2d_backward
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3, 3, 3\)"):
        backward(np.ones((2, 3, 3, 2), np.float32), saved)


def test_tampered_index_is_refused_not_written_out_of_bounds(backend):
    x = np.ones((1, 2, 4, 4))
    y, saved = ops.max_pool2d(x, 2)
    saved.index[0, 1, 1, 1] = 16
    with pytest.raises(ValueError, match="index must hold in-plane positions"):
        ops.max_pool2d_backward(np.ones_like(y), saved)
    saved.index[0, 1, 1, 1] = -1
    with pytest.raises(ValueError, match="index must hold in-plane positions"):
        ops.max_pool2d_backward(np.ones_like(y), saved)


def test_bad_regions_are_refused(backend):
    x = np.ones((1, 1, 5, 5))
    with pytest.raises(ValueError, match="row_bounds must increase strictly from 0 to 5"):
        ops.max_pool_regions(x, [0, 2, 2, 5], [0, 5])
    with pytest.raises(ValueError, match="col_bounds must increase strictly from 0 to 5"):
        ops.max_pool_regions(x, [0, 5], [0, 3, 6])
    with pytest.raises(ValueError, match="global_avg|non-empty"):
        ops.global_avg_pool2d(np.ones((1, 1, 0, 3)))


# --- layers ---------------------------------------------------------------------------------------

def test_avg_pool2d_layer_defaults_match_pytorch(rng):
    layer = nn.AvgPool2d(3)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.count_include_pad) == ((3, 3), (3, 3), (0, 0), True)
    layer = nn.AvgPool2d((2, 3), stride=(1, 2), padding=1, count_include_pad=False)
    assert (layer.kernel_size, layer.stride, layer.padding, layer.count_include_pad) == ((2, 3), (1, 2), (1, 1), False)
    with pytest.raises(ValueError, match="padding must be at most half of kernel_size"):
        nn.AvgPool2d(2, padding=2)
    with pytest.raises(TypeError, match="count_include_pad must be a bool"):
        nn.AvgPool2d(2, count_include_pad="no")


@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_layer_forward_backward_and_save_load(backend, rng, tmp_path, count_include_pad):
    x = rng.standard_normal((2, 3, 9, 8))
    model = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=count_include_pad),
                          nn.MaxPool2d(2, padding=1), nn.Flatten())
    y = model.forward(x)
    ref = max_pool_ref(avg_pool_ref(x, (3, 3), (2, 2), (1, 1), count_include_pad), (2, 2), (2, 2), (1, 1))[0]
    assert rel_err(y, ref.reshape(2, -1)) < 1e-12
    r = rng.standard_normal(y.shape)
    dx = model.backward(r)

    def loss():
        return float((model.forward(x) * r).sum())

    assert rel_err(dx, numerical_grad(loss, x)) < 1e-7
    path = tmp_path / "pool.npz"
    model.save(path)
    loaded = nn.load(path)
    first = loaded.layers[0]
    assert isinstance(first, nn.AvgPool2d) and first.count_include_pad is count_include_pad
    assert (first.kernel_size, first.stride, first.padding) == ((3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(loaded.forward(x), y)
    again = nn.from_config(model.get_config())
    np.testing.assert_array_equal(again.forward(x), y)


def test_max_pool2d_layer_keeps_its_signature(rng):
    layer = nn.MaxPool2d(2)
    assert (layer.kernel_size, layer.stride, layer.padding) == ((2, 2), (2, 2), (0, 0))
    x = rng.standard_normal((1, 2, 5, 5))
    np.testing.assert_array_equal(nn.MaxPool2d((2, 3), (1, 2)).forward(x), max_pool_ref(x, (2, 3), (1, 2), (0, 0))[0])


# --- against PyTorch, and through interop (when torch is installed) -----------------------------

@pytest.mark.parametrize("shape,k,s,p", CASES, ids=CASE_IDS)
def test_pools_match_pytorch_float64(backend, rng, shape, k, s, p):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.integers(-2, 3, shape).astype(np.float64)        # ties everywhere: the index rule matters
    tx = torch.from_numpy(x).requires_grad_(True)
    ty, tindex = F.max_pool2d(tx, k, s, p, return_indices=True)
    y, saved = ops.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(saved.index, tindex.numpy())
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    assert rel_err(ops.max_pool2d_backward(dy, saved), tx.grad.numpy()) < 1e-12
    x = rng.standard_normal(shape)
    for count_include_pad in (True, False):
        tx = torch.from_numpy(x).requires_grad_(True)
        ty = F.avg_pool2d(tx, k, s, p, count_include_pad=count_include_pad)
        y, saved = ops.avg_pool2d(x, k, s, p, count_include_pad)
        assert rel_err(y, ty.detach().numpy()) < 1e-12
        ty.backward(torch.from_numpy(dy))
        assert rel_err(ops.avg_pool2d_backward(dy, saved), tx.grad.numpy()) < 1e-12


def test_avg_pool_and_padded_max_pool_convert_to_torch(rng):
    torch = pytest.importorskip("torch")
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0),
                          nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), nn.MaxPool2d(3, 2, padding=1),
                          nn.AvgPool2d(2, stride=1))
    x = rng.standard_normal((2, 2, 11, 9))
    with torch.no_grad():
        ty = fnn.interop.to_torch(model)(torch.from_numpy(x)).numpy()
    assert rel_err(model.forward(x), ty) < 1e-12
    back = fnn.interop.from_torch(torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.MaxPool2d(2, 1)).double())
    assert [type(m).__name__ for m in back.layers] == ["AvgPool2d", "MaxPool2d"]


def test_empty_batch(backend):
    x = np.ones((0, 3, 5, 5), np.float32)
    y, saved = ops.max_pool2d(x, 2)
    assert y.shape == (0, 3, 2, 2) and ops.max_pool2d_backward(y, saved).shape == x.shape
    a, asaved = ops.avg_pool2d(x, 3, 1, 1)
    assert a.shape == (0, 3, 5, 5) and ops.avg_pool2d_backward(a, asaved).shape == x.shape
    assert ops.global_avg_pool2d(x).shape == (0, 3)
    assert ops.global_avg_pool2d_backward(np.ones((0, 3), np.float32), x.shape).shape == x.shape
