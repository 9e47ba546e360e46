"""The CUDA backend against float64 references computed on the host.

Every ``fastnn.ops`` function runs on CuPy arrays and is compared with a float64
reference: tests/oracle.py's formulas where they exist (activations, softmax
cross-entropy, optimizer rules), otherwise the same op on float64 NumPy copies
through the CPU backend (itself tested against the oracle in the CPU tests).
Inputs are fresh random values at odd shapes (1, primes, sizes that are not
multiples of a warp or a tile); each test draws them from its own seed (CRC32
of the test id, printed in failure messages), so a failure reproduces.
Outputs that the API lets us pass (``out=``) are filled with NaN first, to
prove every element is written.

Error measure: ``rel = ||out - ref|| / ||ref||`` (2-norm over all elements).
Bounds: 1e-5 (float32) / 1e-12 (float64) where each output is a short sum;
1e-4 (float32) / 1e-11 (float64) for long reductions (weight gradients over a
whole batch, BatchNorm's backward, dbias), stated at each use.

Skipped as a whole (with the reason) when the CUDA backend did not load.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

import fastnn as fnn
from fastnn import ops
from fastnn.backend import cuda as cuda_backend
from fastnn.backend.codes import ACTIVATIONS, HYPER_FIELDS, SAVES_PREACTIVATION
from fastnn.cli import _build_cnn, _build_mlp, _load_dataset

import oracle
from conftest import off_kinks
from conftest import rel_err as max_rel_err

HAVE_CUDA = "cuda" in fnn.backend.available()
pytestmark = pytest.mark.skipif(not HAVE_CUDA, reason=f"CUDA backend unavailable: {cuda_backend.reason}")
if HAVE_CUDA:
    cp = pytest.importorskip("cupy")
else:
    cp = None

F32, F64 = np.float32, np.float64
DTYPES = [F32, F64]
SHORT = {F32: 1e-5, F64: 1e-12}   # each output a short sum
LONG = {F32: 1e-4, F64: 1e-11}    # long reductions (documented at each use)
ALPHA = {"leaky_relu": 0.05, "elu": 0.7, "prelu": 0.3}   # non-default, to prove alpha is passed through


# --- helpers ------------------------------------------------------------------------

@pytest.fixture
def rng(request):
    """A generator seeded from the test id: fresh inputs per test, the same on every run."""
    seed = zlib.crc32(request.node.nodeid.encode())
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def _exact_float32_matmuls():
    """TF32 off (the default) for every test; restored even when a test turns it on."""
    if HAVE_CUDA:
        cuda_backend.set_allow_tf32(False)
    yield
    if HAVE_CUDA:
        cuda_backend.set_allow_tf32(False)
        cp.cuda.get_current_stream().synchronize()


def host(a):
    """a as a float64 NumPy array (from the GPU when it is a CuPy array)."""
    if cp is not None and isinstance(a, cp.ndarray):
        a = cp.asnumpy(a)
    return np.asarray(a, np.float64)


def rel(out, ref, scale=None) -> float:
    """||out - ref|| / ||ref|| in float64 (absolute when ref is all zeros). ``scale``, when
    given, floors the denominator at ||scale||: for results that cancel far below the
    size of their terms (BatchNorm's dx over 2 values per channel, tanh' = 1 - y**2 at
    saturation), where the terms' size is what rounding is relative to."""
    out, ref = host(out), host(ref)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    assert np.isfinite(out).all(), "output has NaN/Inf (an element left unwritten?)"
    denom = max(float(np.linalg.norm(ref)), 0.0 if scale is None else float(np.linalg.norm(host(scale))))
    return float(np.linalg.norm(out - ref)) / (denom if denom > 0 else 1.0)


def draw(rng, shape, dtype, scale=1.0, shift=0.0):
    """(host array in dtype, its CuPy copy): normal values, never exactly zero."""
    a = (rng.standard_normal(shape) * scale + shift).astype(dtype)
    return a, cp.asarray(a)


def poison(shape, dtype):
    return cp.full(shape, cp.nan, dtype)


def f64(a):
    return np.asarray(a, np.float64)


def is_gpu(a) -> bool:
    return isinstance(a, cp.ndarray)


# --- GEMM -------------------------------------------------------------------------------

GEMM_SHAPES = [(1, 1, 1), (7, 13, 5), (33, 65, 17), (257, 129, 31)]   # (m, k, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", GEMM_SHAPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm(rng, dtype, mkn, trans_a, trans_b):
    m, k, n = mkn
    a, ga = draw(rng, (k, m) if trans_a else (m, k), dtype)
    b, gb = draw(rng, (n, k) if trans_b else (k, n), dtype)
    ref = (f64(a).T if trans_a else f64(a)) @ (f64(b).T if trans_b else f64(b))
    out = ops.gemm(ga, gb, trans_a=trans_a, trans_b=trans_b, out=poison((m, n), dtype))
    assert is_gpu(out)
    assert rel(out, ref) < SHORT[dtype]
    fresh = ops.gemm(ga, gb, trans_a=trans_a, trans_b=trans_b)
    assert is_gpu(fresh) and fresh.dtype == dtype and rel(fresh, ref) < SHORT[dtype]
    # beta = 1 accumulates into out
    c, gc = draw(rng, (m, n), dtype)
    ops.gemm(ga, gb, trans_a=trans_a, trans_b=trans_b, out=gc, beta=1.0)
    assert rel(gc, ref + f64(c)) < SHORT[dtype]


def test_tf32_is_opt_in(rng):
    a, ga = draw(rng, (257, 1031), F32)
    b, gb = draw(rng, (1031, 129), F32)
    ref = f64(a) @ f64(b)
    exact = rel(ops.gemm(ga, gb), ref)
    cuda_backend.set_allow_tf32(True)
    fast = rel(ops.gemm(ga, gb), ref)
    cuda_backend.set_allow_tf32(False)
    again = rel(ops.gemm(ga, gb), ref)
    assert exact < 1e-5 and again < 1e-5, (exact, again)
    assert fast < 1e-2, fast    # TF32 keeps a 10-bit mantissa: ~1e-3 relative


# --- Linear + activation ----------------------------------------------------------------

LINEAR_SHAPES = [(1, 1, 1), (7, 13, 5), (33, 65, 17), (257, 129, 31)]   # (N, D, M)


def _linear_case(rng, dtype, shape, act, bias=True):
    n, d, m = shape
    x, gx = draw(rng, (n, d), dtype)
    w, gw = draw(rng, (d, m), dtype, scale=1.0 / math.sqrt(d))
    b, gb = draw(rng, (m,), dtype) if bias else (None, None)
    return x, gx, w, gw, b, gb


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LINEAR_SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_act_forward_backward(rng, dtype, shape, act):
    n, d, m = shape
    x, gx, w, gw, b, gb = _linear_case(rng, dtype, shape, act)
    alpha = ALPHA.get(act)
    z_ref = f64(x) @ f64(w) + f64(b)
    saves_z = act in SAVES_PREACTIVATION
    y, saved = ops.linear_act(gx, gw, gb, act, alpha, out=poison((n, m), dtype),
                              z_out=poison((n, m), dtype) if saves_z else None)
    a = ALPHA.get(act, 0.0) if alpha is None else alpha
    assert is_gpu(y)
    assert rel(y, oracle.act(act, z_ref, a)) < SHORT[dtype], act
    if saves_z:
        assert rel(saved.z, z_ref) < SHORT[dtype]

    # Backward: dy zeroed where z lies within rounding of a kink (either side is right there).
    scale = np.abs(f64(x)) @ np.abs(f64(w)) + np.abs(f64(b))
    dy = off_kinks(act, rng.standard_normal((n, m)).astype(dtype), z_ref, scale)
    dz = f64(dy) * oracle.act_grad(act, z_ref, a)
    dx, dw, db, dalpha = ops.linear_act_backward(
        cp.asarray(dy), saved, dweight=poison((d, m), dtype), dbias=poison((m,), dtype),
        dx=poison((n, d), dtype), dz_work=poison((n, m), dtype))
    assert all(is_gpu(t) for t in (dx, dw, db))
    assert rel(dx, dz @ f64(w).T) < SHORT[dtype], act
    # dweight and dbias sum over the batch (N up to 257): the long-reduction bound.
    assert rel(dw, f64(x).T @ dz) < LONG[dtype], act
    assert rel(db, dz.sum(0)) < LONG[dtype], act
    if act == "prelu":
        terms = f64(dy) * np.where(z_ref > 0, 0.0, z_ref)
        assert isinstance(dalpha, float)
        assert abs(dalpha - terms.sum()) <= LONG[dtype] * max(np.abs(terms).sum(), 1e-30)
    else:
        assert dalpha is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_act_without_bias_and_without_dx(rng, dtype):
    shape = (33, 17, 65)
    x, gx, w, gw, _, _ = _linear_case(rng, dtype, shape, "tanh", bias=False)
    y, saved = ops.linear_act(gx, gw, None, "tanh")
    z = f64(x) @ f64(w)
    assert rel(y, np.tanh(z)) < SHORT[dtype]
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db, _ = ops.linear_act_backward(cp.asarray(dy), saved, need_dx=False, need_dbias=False)
    assert dx is None and db is None
    assert rel(dw, f64(x).T @ (f64(dy) * (1 - np.tanh(z) ** 2))) < LONG[dtype]


@pytest.mark.parametrize("act", ["gelu", "tanh", "prelu"])
def test_linear_act_numerical_gradient_float64(rng, act):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(5)
    g = rng.standard_normal((3, 5))

    def f():
        y, _ = ops.linear_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), act)
        return float((host(y) * g).sum())

    _, saved = ops.linear_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), act)
    dx, dw, db, _ = ops.linear_act_backward(cp.asarray(g), saved)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = oracle.numerical_grad(f, arr)
        assert rel(grad, num) < 1e-7, act


# --- elementwise activations ------------------------------------------------------------

ACT_SHAPES = [(1,), (7,), (33, 65), (3, 5, 257), (2, 65537)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ACT_SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_forward_backward(rng, dtype, shape, act):
    x, gx = draw(rng, shape, dtype, scale=2.0)
    alpha = ALPHA.get(act)
    y = ops.activation(gx, act, alpha, out=poison(shape, dtype))
    assert is_gpu(y)
    assert rel(y, oracle.act(act, f64(x), alpha or 0.0)) < SHORT[dtype], act
    dy, gdy = draw(rng, shape, dtype)
    dx, dalpha = ops.activation_backward(gdy, gx, y, act, alpha, out=poison(shape, dtype))
    assert is_gpu(dx)
    # act' may be formed from y (1 - y**2, y * (1 - y)): rounding relative to dy, not to dx
    assert rel(dx, f64(dy) * oracle.act_grad(act, f64(x), alpha or 0.0), scale=dy) < SHORT[dtype], act
    if act == "prelu":
        terms = f64(dy) * np.where(f64(x) > 0, 0.0, f64(x))
        # a sum over every element: the long-reduction bound, relative to the sum of magnitudes
        assert abs(dalpha - terms.sum()) <= LONG[dtype] * np.abs(terms).sum()
    else:
        assert dalpha is None


# --- softmax cross-entropy --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nc", [(1, 1), (1, 7), (7, 3), (33, 10), (257, 1001)])
def test_softmax_cross_entropy(rng, dtype, nc):
    n, c = nc
    scores, gs = draw(rng, (n, c), dtype, scale=3.0, shift=40.0)   # a large common shift: the max is subtracted
    labels = rng.integers(0, c, n)
    loss, saved = ops.softmax_cross_entropy(gs, cp.asarray(labels), probs_out=poison((n, c), dtype))
    loss_ref, d_ref = oracle.softmax_xent(f64(scores), labels)
    assert isinstance(loss, float)
    assert abs(loss - loss_ref) <= SHORT[dtype] * max(1.0, abs(loss_ref))
    s = f64(scores) - f64(scores).max(1, keepdims=True)
    probs_ref = np.exp(s) / np.exp(s).sum(1, keepdims=True)
    assert rel(saved.probs, probs_ref) < SHORT[dtype]
    d = ops.softmax_cross_entropy_backward(saved, 0.7, out=poison((n, c), dtype))
    assert is_gpu(d)
    assert rel(d, 0.7 * d_ref) < SHORT[dtype] * 10   # softmax - onehot cancels near 1: a few ulps of 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_soft_targets(rng, dtype):
    n, c = 37, 11
    scores, gs = draw(rng, (n, c), dtype)
    t = rng.uniform(0, 1, (n, c))
    t[:, 3] = 0.0
    t /= t.sum(1, keepdims=True)
    t = t.astype(dtype)
    loss, saved = ops.softmax_cross_entropy(gs, cp.asarray(t))
    s = f64(scores) - f64(scores).max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    assert abs(loss - (-(f64(t) * logp).sum() / n)) < SHORT[dtype] * 10
    d = ops.softmax_cross_entropy_backward(saved)
    assert rel(d, (np.exp(logp) - f64(t)) / n) < SHORT[dtype] * 10


@pytest.mark.parametrize("bad", [-1, 10])
def test_softmax_cross_entropy_label_out_of_range(rng, bad):
    """The GPU checks the label range in the kernel (no host round trip): the same ValueError."""
    _, gs = draw(rng, (37, 10), F32)
    labels = rng.integers(0, 10, 37)
    labels[13] = bad
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        ops.softmax_cross_entropy(gs, cp.asarray(labels))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        fnn.losses.SoftmaxCrossEntropy().forward(gs, cp.asarray(labels))


# --- fused optimizer step ----------------------------------------------------------------

RULE_CLASSES = {
    "sgd": (fnn.optim.SGD, dict(lr=0.05)),
    "momentum": (fnn.optim.SGD, dict(lr=0.02, momentum=0.9)),
    "nesterov": (fnn.optim.SGD, dict(lr=0.02, momentum=0.9, nesterov=True)),
    "adagrad": (fnn.optim.Adagrad, dict(lr=0.05)),
    "rmsprop": (fnn.optim.RMSProp, dict(lr=0.005)),
    "adam": (fnn.optim.Adam, dict(lr=0.01)),
    "adamw": (fnn.optim.AdamW, dict(lr=0.01)),
}
OPTIONS = [dict(), dict(weight_decay=0.05), dict(l1=0.01), dict(weight_decay=0.05, l1=0.01),
           dict(clip_grad_norm=1.0), dict(max_norm=0.8)]
STEPS = 20


def _mlp(dtype, seed, sizes=(7, 3, 13, 5)):
    fnn.manual_seed(seed)
    layers = [fnn.nn.Linear(a, b, dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:])]
    return fnn.nn.Sequential(*layers)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "plain")
@pytest.mark.parametrize("rule", list(RULE_CLASSES))
def test_optimizer_trajectory_matches_cpu_and_oracle(rng, dtype, options, rule):
    """The public optimizer on a model moved to cuda, 20 steps, against the same
    optimizer on an identical CPU model and against the float64 oracle (with
    test_optim's allowances for L1's kink and float32 cancellation)."""
    cls, hyper = RULE_CLASSES[rule]
    cpu_model, gpu_model = _mlp(dtype, 7), _mlp(dtype, 7).to("cuda")
    params = gpu_model.parameters()
    assert all(is_gpu(p.data) and is_gpu(p.grad) for p in params)
    cpu_opt = cls(cpu_model.parameters(), **hyper, **options)
    gpu_opt = cls(params, **hyper, **options)
    assert is_gpu(gpu_opt.flat_param) and is_gpu(gpu_opt.flat_grad)
    start = host(cpu_opt.flat_param)
    np.testing.assert_array_equal(host(gpu_opt.flat_param), start)
    grads = [rng.standard_normal(start.size) * 0.5 for _ in range(STEPS)]
    h = {k: v for k, v in {**hyper, **options}.items() if k not in ("lr", "nesterov", "clip_grad_norm", "max_norm")}
    if rule == "adamw" and "weight_decay" not in options:
        h["weight_decay"] = 1e-2
    sizes = [p.data.size for p in cpu_model.parameters()]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    matrices = [(int(offsets[i]), *p.data.shape) for i, p in enumerate(cpu_model.parameters()) if p.data.ndim == 2]
    ref = np.array(oracle.optim_reference(rule, start, grads, hyper["lr"], clip=options.get("clip_grad_norm"),
                                          max_norm=options.get("max_norm"), matrices=matrices,
                                          state_dtype=dtype, **h))
    kinked = np.zeros(start.size, bool)
    if dtype == F32 and options.get("l1"):
        kinked = np.any(np.abs(ref) < 1e-3, axis=0)
    cancelled = np.zeros(start.size, bool)
    if dtype == F32 and rule in ("adagrad", "rmsprop", "adam", "adamw") and (h.get("weight_decay") or h.get("l1")):
        prev = np.vstack([start, ref[:-1]])
        wd = 0.0 if rule == "adamw" else h.get("weight_decay", 0.0)
        summed = np.array(grads) + wd * prev + h.get("l1", 0.0) * np.sign(prev)
        cancelled = np.any(np.abs(summed) < 1e-3 * np.abs(np.array(grads)), axis=0) & ~kinked
    tight = ~kinked & ~cancelled
    loose = 2 * hyper["lr"] * options.get("l1", 0.0) * STEPS + 20 * hyper["lr"] * STEPS * cancelled.any() + 1e-6
    for step, (g, want) in enumerate(zip(grads, ref)):
        cpu_opt.flat_grad[...] = g.astype(dtype)
        gpu_opt.flat_grad[...] = cp.asarray(g.astype(dtype))
        cpu_opt.step()
        gpu_opt.step()
        got, cpu = host(gpu_opt.flat_param), host(cpu_opt.flat_param)
        tol = 2e-5 if dtype == F32 else 1e-11
        assert max_rel_err(got[tight], want[tight]) < tol, (rule, options, step)
        assert max_rel_err(got[tight], cpu[tight]) < tol, (rule, options, step)
        if not tight.all():
            assert np.max(np.abs(got[~tight] - want[~tight])) <= loose, (rule, options, step)
    # The parameters are views of the flat buffer on the GPU.
    np.testing.assert_array_equal(host(params[0].data).ravel(), host(gpu_opt.flat_param)[:params[0].data.size])
    if "max_norm" in options:
        for off, r, c in matrices:
            wm = host(gpu_opt.flat_param)[off:off + r * c].reshape(r, c)
            assert np.sqrt((wm * wm).sum(0)).max() <= 0.8 * (1 + 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", list(RULE_CLASSES))
def test_optim_step_many_segments_matches_cpu(rng, dtype, rule):
    """ops.optim_step straight on flat CuPy buffers (seg_begin and hyper stay host
    NumPy tables, as the optimizer classes pass them): 30 segments (more than one
    launch's worth), one of 100,003 elements, each with its own hyperparameter row."""
    sizes = list(rng.integers(1, 60, 29)) + [100_003]
    rng.shuffle(sizes)
    seg_begin = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(seg_begin[-1])
    field = {name: i for i, name in enumerate(HYPER_FIELDS)}
    hyper = np.zeros((len(sizes), len(HYPER_FIELDS)))
    hyper[:, field["lr"]] = rng.uniform(1e-3, 3e-2, len(sizes))
    hyper[:, field["weight_decay"]] = rng.choice([0.0, 0.01], len(sizes))
    hyper[:, field["momentum"]] = 0.9
    hyper[:, field["alpha"]] = 0.99
    hyper[:, field["beta1"]], hyper[:, field["beta2"]] = 0.9, 0.999
    hyper[:, field["eps"]] = 1e-8
    hyper[:, field["grad_scale"]] = rng.uniform(0.5, 1.0, len(sizes))
    p = rng.standard_normal(total).astype(dtype)
    n_state = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "rmsprop": 1}.get(rule, 2)
    cpu = [p.copy(), None, np.zeros(total, dtype) if n_state > 0 else None,
           np.zeros(total, dtype) if n_state > 1 else None]
    gpu = [cp.asarray(p), None, cp.zeros(total, dtype) if n_state > 0 else None,
           cp.zeros(total, dtype) if n_state > 1 else None]
    for t in range(1, 6):
        hyper[:, field["bias_correction1"]] = 1 - 0.9 ** t
        hyper[:, field["bias_correction2"]] = 1 - 0.999 ** t
        g = rng.standard_normal(total).astype(dtype)
        ops.optim_step(rule, cpu[0], g, cpu[2], cpu[3], seg_begin, hyper)
        ops.optim_step(rule, gpu[0], cp.asarray(g), gpu[2], gpu[3], seg_begin, hyper.copy())
    assert max_rel_err(host(gpu[0]), cpu[0]) < (2e-5 if dtype == F32 else 1e-12), rule
    for k in (2, 3):
        if cpu[k] is not None:
            assert max_rel_err(host(gpu[k]), cpu[k]) < (2e-5 if dtype == F32 else 1e-12), (rule, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_norm_matches_cpu(rng, dtype):
    shapes = [(1, 1), (7, 3), (129, 33), (5, 1)]
    sizes = [r * c for r, c in shapes]
    offset = np.concatenate([[3], 3 + np.cumsum(sizes)[:-1]]).astype(np.int64)
    total = int(offset[-1] + sizes[-1] + 2)
    p = (rng.standard_normal(total) * 2).astype(dtype)
    rows = np.array([r for r, _ in shapes], np.int64)
    cols = np.array([c for _, c in shapes], np.int64)
    limit = np.array([0.5, 1.0, 3.0, 0.1])
    cpu = p.copy()
    ops.max_norm(cpu, offset, rows, cols, limit)
    gpu = cp.asarray(p)
    ops.max_norm(gpu, offset, rows, cols, limit)
    assert max_rel_err(host(gpu), cpu) < SHORT[dtype]
    assert host(gpu)[:3].tolist() == f64(p[:3]).tolist()     # untouched outside the matrices


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, 255, 257, 67_591, 1_000_003])
def test_sum_squares_matches_float64_and_is_deterministic(rng, dtype, n):
    """The optimizer's device reduction (NaN/Inf check, clipping norm): sum x^2 in
    double against the float64 sum, the same bits on every call."""
    x = (rng.standard_normal(n) * rng.uniform(0.1, 10)).astype(dtype)
    gx = cp.asarray(x)
    out = cuda_backend.sum_squares(gx)
    assert out.shape == (1,) and out.dtype == np.float64
    want = float(np.sum(f64(x) ** 2))
    got = float(out.get()[0])
    assert abs(got - want) <= (1e-6 if dtype == F32 else 1e-13) * max(want, 1e-300), (got, want)
    assert float(cuda_backend.sum_squares(gx).get()[0]) == got
    if n:   # a view that starts off any alignment
        want_tail = float(np.sum(f64(x[1:]) ** 2))
        assert abs(float(cuda_backend.sum_squares(gx[1:]).get()[0]) - want_tail) <= 1e-6 * max(want_tail, 1e-300)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sum_squares_propagates_nan_and_inf(rng, dtype, bad):
    x = rng.standard_normal(10_007).astype(dtype)
    x[rng.integers(0, x.size)] = bad
    assert not math.isfinite(float(cuda_backend.sum_squares(cp.asarray(x)).get()[0]))


def test_sum_squares_overflows_like_float32_and_checks_its_arguments():
    big = np.full(4, 1e20, np.float32)          # each square 1e40: beyond float32's range
    assert float(cuda_backend.sum_squares(cp.asarray(big)).get()[0]) == math.inf
    assert float(cuda_backend.sum_squares(cp.asarray(big.astype(F64))).get()[0]) == pytest.approx(4e40)
    with pytest.raises(TypeError, match="x must"):
        cuda_backend.sum_squares(cp.zeros(3, np.int32))
    with pytest.raises(ValueError, match="x must be 1-D"):
        cuda_backend.sum_squares(cp.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        cuda_backend.sum_squares(cp.zeros(8, np.float32)[::2])


# --- BatchNorm -------------------------------------------------------------------------------

BN_SHAPES = [(2, 1), (7, 3), (64, 129), (300, 5), (2, 3, 1, 1), (3, 5, 7, 11), (8, 16, 4, 4), (1, 4, 3, 5),
             (5, 33, 9, 7)]
BN_ACTS = ["identity", "relu", "sigmoid"]


def _bn_inputs(rng, shape, dtype):
    c = shape[1]
    gamma = rng.uniform(0.5, 2, c).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    return gamma, beta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("act", BN_ACTS)
def test_batchnorm_train_eval_and_backward_match_cpu(rng, dtype, shape, act):
    """Two training steps, then eval, against the CPU kernel on float64 copies;
    running statistics moved like the CPU's (unbiased running_var)."""
    c = shape[1]
    gamma, beta = _bn_inputs(rng, shape, dtype)
    g_gamma, g_beta = cp.asarray(gamma), cp.asarray(beta)
    rm, rv = np.zeros(c), np.ones(c)
    g_rm, g_rv = cp.zeros(c, dtype), cp.ones(c, dtype)
    for _ in range(2):
        x, gx = draw(rng, shape, dtype, scale=3.0, shift=1.0)
        y_ref, saved_ref = ops.batchnorm(f64(x), f64(gamma), f64(beta), rm, rv, training=True, act=act)
        y, saved = ops.batchnorm(gx, g_gamma, g_beta, g_rm, g_rv, training=True, act=act, out=poison(shape, dtype))
        assert is_gpu(y) and is_gpu(saved.mean) and is_gpu(saved.invstd)
        assert rel(y, y_ref) < SHORT[dtype], act
        assert rel(g_rm, rm) < SHORT[dtype] and rel(g_rv, rv) < SHORT[dtype]
        # backward: dy off relu's kink (z within rounding of 0)
        axes = (0,) + tuple(range(2, len(shape)))
        bshape = (1, c) + (1,) * (len(shape) - 2)
        xhat = (f64(x) - f64(x).mean(axes, keepdims=True)) / np.sqrt(f64(x).var(axes, keepdims=True) + 1e-5)
        z = xhat * f64(gamma).reshape(bshape) + f64(beta).reshape(bshape)
        dy = off_kinks(act, rng.standard_normal(shape).astype(dtype), z, np.abs(z) + 1.0)
        dx_ref, dg_ref, db_ref = ops.batchnorm_backward(f64(dy), saved_ref, f64(gamma))
        dx, dg, db = ops.batchnorm_backward(cp.asarray(dy), saved, g_gamma, dgamma=poison((c,), dtype),
                                            dbeta=poison((c,), dtype), out=poison(shape, dtype))
        # BatchNorm's backward is two reductions over N*H*W then an elementwise pass: the long
        # bound, relative to gamma * invstd * dy (dx cancels to ~0 with 2 values per channel).
        dx_scale = f64(dy) * (f64(gamma) * host(saved_ref.invstd)).reshape(bshape)
        assert rel(dx, dx_ref, scale=dx_scale) < LONG[dtype], act
        assert rel(dg, dg_ref) < LONG[dtype] and rel(db, db_ref) < LONG[dtype], act
    x, gx = draw(rng, shape, dtype)
    y_ref, saved_ref = ops.batchnorm(f64(x), f64(gamma), f64(beta), rm, rv, training=False, act=act)
    y, saved = ops.batchnorm(gx, g_gamma, g_beta, g_rm, g_rv, training=False, act=act, out=poison(shape, dtype))
    assert rel(y, y_ref) < SHORT[dtype]
    dy = rng.standard_normal(shape).astype(dtype)
    if act == "relu":
        dy = np.where(np.abs(y_ref) < 1e-4, 0, dy).astype(dtype)
    dx_ref, dg_ref, db_ref = ops.batchnorm_backward(f64(dy), saved_ref, f64(gamma))
    dx, dg, db = ops.batchnorm_backward(cp.asarray(dy), saved, g_gamma)
    assert rel(dx, dx_ref) < SHORT[dtype] * 10
    assert rel(dg, dg_ref) < LONG[dtype] and rel(db, db_ref) < LONG[dtype]


def test_batchnorm_running_var_is_unbiased_and_no_affine():
    x = cp.asarray(np.array([[1.0], [3.0]]))   # mean 2, biased var 1, unbiased var 2
    rm, rv = cp.zeros(1), cp.ones(1)
    y, _ = ops.batchnorm(x, None, None, rm, rv, training=True, momentum=1.0, eps=1e-12)
    np.testing.assert_allclose(host(y).ravel(), [-1.0, 1.0], rtol=1e-9)
    np.testing.assert_allclose(host(rv), [2.0])
    np.testing.assert_allclose(host(rm), [2.0])


def test_batchnorm_large_mean_normalizes_accurately(rng):
    for shape in ((4096, 8), (16, 3, 8, 8)):
        c = shape[1]
        x = (1e4 + rng.standard_normal(shape)).astype(F32)
        y, _ = ops.batchnorm(cp.asarray(x), None, None, cp.zeros(c, F32), cp.ones(c, F32), training=True)
        axes = (0,) + tuple(range(2, len(shape)))
        x64 = f64(x)
        ref = (x64 - x64.mean(axes, keepdims=True)) / np.sqrt(x64.var(axes, keepdims=True) + 1e-5)
        assert max_rel_err(host(y), ref) < 1e-4, shape   # as the CPU test (tests/test_batchnorm.py)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 3), (3, 5, 7, 11), (5, 33, 9, 7)], ids=str)
@pytest.mark.parametrize("act", ["identity", "relu"])
def test_batchnorm_split_kernels_match_cpu(rng, dtype, shape, act):
    """stats -> gather_stats -> elemt, then backward_reduce -> backward_elemt, on the
    GPU and on float64 copies through the CPU kernels."""
    c = shape[1]
    gamma, beta = _bn_inputs(rng, shape, dtype)
    x, gx = draw(rng, shape, dtype, scale=2.0, shift=3.0)
    shift = x.reshape(shape[0], c, -1)[0, :, 0].copy()
    count = x.size // c
    rm, rv = np.zeros(c), np.ones(c)
    g_rm, g_rv = cp.zeros(c, dtype), cp.ones(c, dtype)

    sums_ref = ops.batchnorm_stats(f64(x), f64(shift))
    sums = ops.batchnorm_stats(gx, cp.asarray(shift), out=cp.full((2, c), cp.nan))
    assert is_gpu(sums) and sums.dtype == np.float64
    assert rel(sums, sums_ref) < SHORT[dtype]
    mean_ref, invstd_ref = ops.batchnorm_gather_stats(sums_ref, count, f64(shift), rm, rv)
    mean, invstd = ops.batchnorm_gather_stats(sums, count, cp.asarray(shift), g_rm, g_rv)
    assert is_gpu(mean) and is_gpu(invstd)
    assert rel(mean.sum(0), mean_ref.sum(0)) < SHORT[dtype] and rel(invstd, invstd_ref) < SHORT[dtype]
    assert rel(g_rm, rm) < SHORT[dtype] and rel(g_rv, rv) < SHORT[dtype]
    y_ref, saved_ref = ops.batchnorm_elemt(f64(x), f64(gamma), f64(beta), mean_ref, invstd_ref, act)
    y, saved = ops.batchnorm_elemt(gx, cp.asarray(gamma), cp.asarray(beta), mean, invstd, act,
                                   out=poison(shape, dtype))
    assert rel(y, y_ref) < SHORT[dtype]
    dy = rng.standard_normal(shape).astype(dtype)
    if act == "relu":
        dy = np.where(np.abs(host(y)) < 1e-4, 0, dy).astype(dtype)
    red_ref = ops.batchnorm_backward_reduce(f64(dy), saved_ref)
    red = ops.batchnorm_backward_reduce(cp.asarray(dy), saved, dgamma=poison((c,), dtype),
                                        dbeta=poison((c,), dtype), out=cp.full((2, c), cp.nan))
    assert is_gpu(red) and red.dtype == np.float64
    assert rel(red, red_ref) < LONG[dtype]   # sums over N*H*W
    mdz_ref, mdzx_ref = red_ref[0] / count, red_ref[1] / count
    dx_ref = ops.batchnorm_backward_elemt(f64(dy), saved_ref, f64(gamma), mdz_ref, mdzx_ref)
    dx = ops.batchnorm_backward_elemt(cp.asarray(dy), saved, cp.asarray(gamma), red[0] / count, red[1] / count,
                                      out=poison(shape, dtype))
    assert rel(dx, dx_ref) < LONG[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer, shape", [(fnn.nn.BatchNorm1d, (37, 13)), (fnn.nn.BatchNorm2d, (6, 5, 7, 9))])
def test_batchnorm_layers_on_cuda_match_cpu(rng, dtype, layer, shape):
    c = shape[1]
    cpu_bn, gpu_bn = layer(c, dtype=dtype), layer(c, dtype=dtype).to("cuda")
    assert is_gpu(gpu_bn.running_mean) and is_gpu(gpu_bn.running_var) and is_gpu(gpu_bn.weight.data)
    for _ in range(3):
        x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y_cpu, y_gpu = cpu_bn.forward(x), gpu_bn.forward(cp.asarray(x))
        assert rel(y_gpu, y_cpu) < SHORT[dtype] * 10
        dx_cpu, dx_gpu = cpu_bn.backward(dy), gpu_bn.backward(cp.asarray(dy))
        assert rel(dx_gpu, dx_cpu) < LONG[dtype]
        assert rel(gpu_bn.weight.grad, cpu_bn.weight.grad) < LONG[dtype]
        assert rel(gpu_bn.bias.grad, cpu_bn.bias.grad) < LONG[dtype]
    assert rel(gpu_bn.running_mean, cpu_bn.running_mean) < SHORT[dtype] * 10
    assert rel(gpu_bn.running_var, cpu_bn.running_var) < SHORT[dtype] * 10
    cpu_bn.eval()
    gpu_bn.eval()
    x = rng.standard_normal(shape).astype(dtype)
    assert rel(gpu_bn.forward(cp.asarray(x)), cpu_bn.forward(x)) < SHORT[dtype] * 10


# --- dropout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, offset", [(1, 0), (7, 3), (1001, 1), (4099, 6), (65537, 4), (100_003, 2**33 + 5)])
@pytest.mark.parametrize("p", [0.1, 0.37, 0.9])
def test_dropout_masks_bit_identical_to_cpu(rng, dtype, n, offset, p):
    x, gx = draw(rng, n, dtype)
    seed = int(rng.integers(0, 2**63))
    cpu = ops.dropout(x, p, seed, offset)
    gpu = ops.dropout(gx, p, seed, offset, out=poison(n, dtype))
    assert is_gpu(gpu)
    np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)
    # backward regenerates the same mask: dx = dy * mask / (1 - p)
    dy, gdy = draw(rng, n, dtype)
    dx = ops.dropout_backward(gdy, p, seed, offset, out=poison(n, dtype))
    np.testing.assert_array_equal(cp.asnumpy(dx), ops.dropout_backward(dy, p, seed, offset))
    np.testing.assert_array_equal(cp.asnumpy(dx) != 0, cpu != 0)
    np.testing.assert_array_equal(cp.asnumpy(dx), cp.asnumpy(ops.dropout(gdy, p, seed, offset)))


def test_dropout_offsets_address_one_stream(rng):
    x, gx = draw(rng, 1000, F32)
    whole = cp.asnumpy(ops.dropout(gx, 0.5, 99, 0))
    for off in (1, 3, 4, 5, 333):
        part = ops.dropout(cp.asarray(x[off:off + 201]), 0.5, 99, off)
        np.testing.assert_array_equal(cp.asnumpy(part), whole[off:off + 201])


def test_dropout_on_a_multidimensional_array(rng):
    x, gx = draw(rng, (3, 5, 7, 11), F64)
    np.testing.assert_array_equal(cp.asnumpy(ops.dropout(gx, 0.25, 5, 17)), ops.dropout(x, 0.25, 5, 17))


# --- convolution ---------------------------------------------------------------------------------

# (N, C, H, W, F, KH, KW, stride, padding)
CONV_CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 0),
    (2, 3, 7, 5, 5, 3, 3, 1, 1),
    (3, 5, 9, 11, 7, 5, 3, 2, 1),
    (2, 3, 8, 8, 4, 1, 1, 2, 0),
    (4, 7, 13, 10, 33, 3, 3, 2, 0),
    (2, 17, 17, 15, 31, 3, 3, 1, 1),
    (3, 3, 12, 9, 6, 5, 3, 1, 0),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("act", ["identity", "relu", "swish"])
def test_conv2d_forward_backward_match_cpu(rng, dtype, case, act):
    n, c, h, w, f, kh, kw, s, pad = case
    x, gx = draw(rng, (n, c, h, w), dtype)
    wt, gw = draw(rng, (f, c, kh, kw), dtype, scale=1.0 / math.sqrt(c * kh * kw))
    b, gb = draw(rng, (f,), dtype)
    z_ref, _ = ops.conv2d(f64(x), f64(wt), f64(b), s, pad)
    y_ref, saved_ref = ops.conv2d(f64(x), f64(wt), f64(b), s, pad, act)
    oh, ow = y_ref.shape[2:]
    saves_z = act in SAVES_PREACTIVATION
    y, saved = ops.conv2d(gx, gw, gb, s, pad, act, out=poison((n, f, oh, ow), dtype),
                          z_out=poison((n, f, oh, ow), dtype) if saves_z else None)
    assert is_gpu(y)
    assert rel(y, y_ref) < SHORT[dtype], case
    scale = np.abs(ops.conv2d(np.abs(f64(x)), np.abs(f64(wt)), np.abs(f64(b)), s, pad)[0])
    dy = off_kinks(act, rng.standard_normal(y_ref.shape).astype(dtype), z_ref, scale)
    dx_ref, dw_ref, db_ref, _ = ops.conv2d_backward(f64(dy), saved_ref)
    dx, dw, db, _ = ops.conv2d_backward(cp.asarray(dy), saved, dweight=poison(wt.shape, dtype),
                                        dbias=poison((f,), dtype), dx=poison(x.shape, dtype),
                                        dz_work=poison(y_ref.shape, dtype))
    assert all(is_gpu(t) for t in (dx, dw, db))
    assert rel(dx, dx_ref) < SHORT[dtype], case
    # dweight and dbias sum over N*OH*OW: the long-reduction bound.
    assert rel(dw, dw_ref) < LONG[dtype], case
    assert rel(db, db_ref) < LONG[dtype], case


def test_conv2d_numerical_gradient_float64(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    g = rng.standard_normal((2, 4, 3, 2))

    def f():
        y, _ = ops.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), 2, 1, "tanh")
        return float((host(y) * g).sum())

    y, saved = ops.conv2d(cp.asarray(x), cp.asarray(w), cp.asarray(b), 2, 1, "tanh")
    assert y.shape == g.shape
    dx, dw, db, _ = ops.conv2d_backward(cp.asarray(g), saved)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel(grad, oracle.numerical_grad(f, arr)) < 1e-7


def test_conv2d_prelu_alpha_gradient(rng):
    x, gx = draw(rng, (2, 3, 6, 5), F64)
    wt, gw = draw(rng, (4, 3, 3, 3), F64)
    y_ref, saved_ref = ops.conv2d(x, wt, None, 1, 1, "prelu", 0.2)
    y, saved = ops.conv2d(gx, gw, None, 1, 1, "prelu", 0.2)
    assert rel(y, y_ref) < SHORT[F64]
    dy = rng.standard_normal(y_ref.shape)
    _, _, db, dalpha = ops.conv2d_backward(cp.asarray(dy), saved, need_dbias=False)
    assert db is None
    assert abs(dalpha - ops.conv2d_backward(dy, saved_ref)[3]) < 1e-10 * max(1.0, abs(dalpha))


# --- pooling -----------------------------------------------------------------------------------

# (shape, kernel, stride, padding)
POOL_CASES = [
    ((1, 1, 1, 1), 1, 1, 0),
    ((2, 3, 7, 9), 2, 2, 0),
    ((2, 3, 7, 9), 3, 2, 1),
    ((3, 5, 11, 13), 3, 1, 1),
    ((2, 33, 16, 16), 2, None, 0),
    ((1, 2, 5, 3), (3, 2), (2, 1), (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool2d_matches_cpu(rng, dtype, case):
    shape, k, s, p = case
    x, gx = draw(rng, shape, dtype)
    y_ref, saved_ref = ops.max_pool2d(x, k, s, p)
    y, saved = ops.max_pool2d(gx, k, s, p)
    assert is_gpu(y) and is_gpu(saved.index)
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)   # a max is exact
    np.testing.assert_array_equal(cp.asnumpy(saved.index), saved_ref.index)
    dy, gdy = draw(rng, y_ref.shape, dtype)
    dx = ops.max_pool2d_backward(gdy, saved)
    assert is_gpu(dx)
    assert rel(dx, ops.max_pool2d_backward(f64(dy), saved_ref)) < SHORT[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_cpu(rng, dtype, case, count_include_pad):
    shape, k, s, p = case
    x, gx = draw(rng, shape, dtype)
    y_ref, saved_ref = ops.avg_pool2d(f64(x), k, s, p, count_include_pad)
    y, saved = ops.avg_pool2d(gx, k, s, p, count_include_pad)
    assert is_gpu(y)
    assert rel(y, y_ref) < SHORT[dtype]
    dy, gdy = draw(rng, y_ref.shape, dtype)
    dx = ops.avg_pool2d_backward(gdy, saved)
    assert rel(dx, ops.avg_pool2d_backward(f64(dy), saved_ref)) < SHORT[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 5, 7, 11), (2, 33, 17, 9), (2, 3, 64, 65)], ids=str)
def test_global_avg_pool2d_matches_cpu(rng, dtype, shape):
    x, gx = draw(rng, shape, dtype)
    y = ops.global_avg_pool2d(gx)
    assert is_gpu(y)
    # a mean over H*W (up to 4160 values): the long bound in float32
    assert rel(y, f64(x).mean((2, 3))) < (LONG if shape[2] * shape[3] > 1000 else SHORT)[dtype]
    dy, gdy = draw(rng, shape[:2], dtype)
    dx = ops.global_avg_pool2d_backward(gdy, shape)
    assert rel(dx, np.broadcast_to(f64(dy)[:, :, None, None] / (shape[2] * shape[3]), shape)) < SHORT[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_regions_matches_cpu(rng, dtype):
    x, gx = draw(rng, (2, 3, 11, 13), dtype)
    rows = ops.fractional_pool_bounds(11, 7, 0.37)
    cols = ops.fractional_pool_bounds(13, 8, 0.81)
    y_ref, saved_ref = ops.max_pool_regions(x, rows, cols)
    y, saved = ops.max_pool_regions(gx, rows, cols)
    np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
    np.testing.assert_array_equal(cp.asnumpy(saved.index), saved_ref.index)
    dy, gdy = draw(rng, y_ref.shape, dtype)
    assert rel(ops.max_pool2d_backward(gdy, saved), ops.max_pool2d_backward(f64(dy), saved_ref)) < SHORT[dtype]


# --- bad input ----------------------------------------------------------------------------------

def test_numpy_mixed_with_cupy_raises_type_error_naming_the_argument(rng):
    x = cp.asarray(rng.standard_normal((4, 3)).astype(F32))
    w = rng.standard_normal((3, 2)).astype(F32)
    with pytest.raises(TypeError, match="weight"):
        ops.linear_act(x, w)
    with pytest.raises(TypeError, match="weight"):
        ops.conv2d(cp.ones((1, 2, 4, 4), F32), np.ones((3, 2, 3, 3), F32))
    with pytest.raises(TypeError, match="gamma"):
        ops.batchnorm(cp.ones((4, 3), F32), np.ones(3, F32), cp.zeros(3, F32), cp.zeros(3, F32), cp.ones(3, F32))
    with pytest.raises(TypeError, match="grad"):
        ops.optim_step("sgd", cp.zeros(5, F32), np.zeros(5, F32), None, None, np.array([0, 5]),
                       np.zeros((1, 11)))


def test_non_contiguous_cupy_array_raises_value_error(rng):
    x = cp.asarray(rng.standard_normal((8, 6)).astype(F32))
    with pytest.raises(ValueError, match=r"\bx\b"):
        ops.activation(x[:, ::2], "relu")
    with pytest.raises(ValueError, match=r"\bx\b"):
        ops.linear_act(x[:, ::2], cp.ones((3, 2), F32))
    with pytest.raises(ValueError, match="weight"):
        ops.linear_act(x, cp.ones((2, 6), F32).T)
    with pytest.raises(ValueError, match=r"\bx\b"):
        ops.dropout(x[::2], 0.5, 1)


def test_wrong_dtype_raises_type_error(rng):
    with pytest.raises(TypeError, match=r"\bx\b"):
        ops.activation(cp.ones(5, cp.int32), "relu")
    with pytest.raises(TypeError, match=r"\bx\b"):
        ops.dropout(cp.ones(5, cp.float16), 0.5, 1)
    with pytest.raises(TypeError, match="weight"):
        ops.linear_act(cp.ones((4, 3), F32), cp.ones((3, 2), F64))
    with pytest.raises(TypeError, match=r"\bb\b"):
        ops.gemm(cp.ones((4, 3), F64), cp.ones((3, 2), F32))


# --- models on the GPU --------------------------------------------------------------------------

def _model_pair(build, dtype, seed=3):
    fnn.manual_seed(seed)
    cpu = build(dtype)
    fnn.manual_seed(seed)
    gpu = build(dtype).to("cuda")
    return cpu, gpu


def _small_mlp(dtype):
    return fnn.nn.Sequential(fnn.nn.Linear(64, 33, activation="relu", dtype=dtype), fnn.nn.BatchNorm1d(33, dtype=dtype),
                             fnn.nn.Dropout(0.3), fnn.nn.Linear(33, 10, dtype=dtype))


def _small_cnn(dtype):
    return _build_cnn(fnn, (1, 8, 8), 10, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("build", [_small_mlp, _small_cnn], ids=["mlp", "cnn"])
def test_model_forward_backward_on_cuda_match_cpu(rng, dtype, build):
    cpu, gpu = _model_pair(build, dtype)
    shape = (29, 64) if build is _small_mlp else (29, 1, 8, 8)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, 10, 29)
    loss = fnn.losses.SoftmaxCrossEntropy()
    s_cpu = cpu.forward(x)
    l_cpu = loss.forward(s_cpu, y)
    cpu.backward(loss.backward())
    s_gpu = gpu.forward(cp.asarray(x))
    assert is_gpu(s_gpu)
    l_gpu = loss.forward(s_gpu, cp.asarray(y))
    gpu.backward(loss.backward())
    # float32 max pooling may pick the other of two near-equal maxima (see bench_conv's validation): loose there.
    tol = 1e-3 if dtype == F32 else 1e-10
    assert abs(l_gpu - l_cpu) < tol * max(1.0, abs(l_cpu))
    assert rel(s_gpu, s_cpu) < tol
    # A bias followed by BatchNorm (the CNN's convolutions) has a zero gradient: BatchNorm
    # subtracts it again. What both devices hold there is rounding noise, so every
    # gradient is compared on the scale of the model's whole gradient (1e-3 of its norm).
    total = np.sqrt(sum(float(np.sum(np.square(host(p.grad), dtype=np.float64))) for _, p in cpu.named_parameters()))
    floor = np.array([1e-3 * total])
    for (name, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        assert is_gpu(pg.grad), name
        assert rel(pg.grad, pc.grad, scale=floor) < (1e-2 if dtype == F32 else 1e-9), name


def test_digits_training_on_cuda_reaches_cpu_accuracy():
    """The CLI's default MLP (fastnn train: 64-256-128-10 relu, Adam lr 2e-3 wd 1e-4,
    cosine schedule, batch 64), 15 epochs on the shipped digits, CPU vs GPU."""
    (xtr, ytr), (xva, yva), (xte, yte), _ = _load_dataset(fnn, "digits", 0, F32)
    std = fnn.preprocessing.Standardize().fit(xtr)
    xtr, xva, xte = (std.transform(a) for a in (xtr, xva, xte))
    acc = {}
    for device in ("cpu", "cuda"):
        fnn.manual_seed(0)
        model = _build_mlp(fnn, 64, [256, 128], 10, "relu", F32).to(device)
        opt = fnn.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt,
                              schedule=fnn.schedules.CosineAnnealing(t_max=15), seed=0)
        trainer.fit(xtr, ytr, epochs=15, batch_size=64, val=(xva, yva), progress=False)
        scores = trainer.predict(xte)
        assert isinstance(scores, np.ndarray) and scores.shape == (len(xte), 10), device
        result = trainer.evaluate(xte, yte)
        assert isinstance(result["accuracy"], float) and isinstance(result["loss"], float), device
        acc[device] = result["accuracy"]
        if device == "cuda":
            assert all(is_gpu(p.data) for p in model.parameters())
    assert acc["cpu"] > 0.9, acc
    assert abs(acc["cuda"] - acc["cpu"]) <= 0.02, acc
