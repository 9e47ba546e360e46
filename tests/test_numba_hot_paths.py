"""The Numba hot paths rewritten for speed (issue 21) keep their results: the
optimizer's one-region step over many segments is bit-identical to the C++
generic path and refuses bad segment tables; dropout's whole-block loop and its
partial ends give the C++ mask bit for bit at every offset; max pooling's
fixed-window kernel gives the generic kernel's maxima and first-maximum
indices; the convolution's image blocks on Python threads give the serial
result; none of them depends on the thread count."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn.backend import cpp
from fastnn.backend.codes import ACT_CODE, HYPER_FIELDS, RULE_CODE, RULES
from fastnn.backend.numba import activation, batchnorm, conv, conv_winograd, gemm
from fastnn.backend.numba import optim as numba_optim
from fastnn.backend.numba import pool as numba_pool
from conftest import on_threads

needs_cpp = pytest.mark.skipif(cpp._C is None, reason="fastnn._C not built")


# --- optimizer: one parallel region for all segments -----------------------------------------

def _table(segments, rng):
    """One distinct row per segment (so a piece updated with a neighbour's row shows)."""
    rows = []
    for s in range(segments):
        row = dict(lr=1e-2 * (1 + s), weight_decay=0.01 * (s % 3), l1=1e-3 * (s % 2), momentum=0.9, alpha=0.99,
                   beta1=0.9, beta2=0.999, eps=1e-8, bias_correction1=1 - 0.9 ** 3,
                   bias_correction2=1 - 0.999 ** 3, grad_scale=0.75 + 0.01 * s)
        rows.append([row[name] for name in HYPER_FIELDS])
    return np.array(rows)


def _optim_inputs(rng, dtype):
    n = 3 * numba_optim._CHUNK + 1234           # above the parallel threshold; chunks cut segments
    # empty segments at the start, the middle and the end; a segment inside one chunk; one across chunks
    seg = np.array([0, 0, 5, 5, 777, numba_optim._CHUNK + 3, 2 * numba_optim._CHUNK, n - 9, n, n], np.int64)
    param = rng.standard_normal(n).astype(dtype)
    param[::7] = 0                               # sign(0) = 0 for the L1 term
    grad = rng.standard_normal(n).astype(dtype)
    state1 = np.abs(rng.standard_normal(n)).astype(dtype)
    state2 = (state1 * state1).astype(dtype)
    return param, grad, state1, state2, seg, _table(seg.size - 1, rng)


def _step(backend, rule, param, grad, state1, state2, seg, hyper):
    p, s1, s2 = param.copy(), state1.copy(), state2.copy()
    fnn.backend.lookup("optim_step", backend)(RULE_CODE[rule], p, grad, s1, s2, seg, hyper)
    return p, s1, s2


@needs_cpp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", RULES)
def test_optimizer_step_over_many_segments_is_bit_identical_to_the_generic_cpp_path(rng, rule, dtype):
    """Each element gets its own segment's row whichever chunk of the one parallel
    region holds it, with the vectorized (unsigned-index) loop rounding like the
    C++ scalar path, on 1 and 2 threads."""
    args = _optim_inputs(rng, dtype)
    previous = cpp._C.cpu_isa()
    assert cpp._C.set_cpu_isa("generic")
    try:
        want = _step("cpp", rule, *args)
    finally:
        cpp._C.set_cpu_isa(previous)
    for threads in (1, 2):
        got = on_threads(threads, lambda: _step("numba", rule, *args))
        for name, a, b in zip(("param", "state1", "state2"), got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"{rule} {name} on {threads} threads")


@pytest.mark.parametrize("seg,hyper_rows,match", [
    ([0, 10, 5, 100], 3, "non-decreasing"),
    ([0, 50, 99], 2, "non-decreasing from 0 to len"),
    ([1, 50, 100], 2, "non-decreasing from 0 to len"),
    ([0, 50, 100], 3, r"seg_begin must have shape \(4,\)"),
])
def test_numba_optimizer_refuses_a_bad_segment_table(seg, hyper_rows, match):
    """Numba does not bound-check: a table pointing outside param is refused, as by the C++ binding."""
    p = np.zeros(100, np.float32)
    with pytest.raises(ValueError, match=match):
        numba_optim.optim_step(RULE_CODE["sgd"], p, p.copy(), None, None, np.array(seg, np.int64),
                               np.zeros((hyper_rows, len(HYPER_FIELDS))))


def test_numba_optimizer_refuses_a_hyper_table_of_the_wrong_width():
    p = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match=rf"hyper must have shape \(segments, {len(HYPER_FIELDS)}\), got \(1, 3\)"):
        numba_optim.optim_step(RULE_CODE["sgd"], p, p.copy(), None, None, np.array([0, 10], np.int64),
                               np.zeros((1, 3)))


# --- dropout: whole blocks in one loop, partial blocks at the ends ------------------------------

@needs_cpp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 2, 3, 4 * 2**32 - 4099, 2**62 + 1])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 1027, 300_001])
def test_dropout_mask_is_bit_identical_to_cpp_at_every_offset(rng, dtype, offset, n):
    """The first and last partial blocks, the whole 256-block tasks and a block
    counter crossing its 32-bit low word (offset near 4 * 2^32) all draw the C++ words;
    NaN and inf inputs are dropped to 0 like the C++."""
    x = rng.standard_normal(n).astype(dtype)
    x[::97] = np.nan
    x[5::101] = np.inf
    seed = int(rng.integers(2**63))
    with fnn.backend.using("cpp"):
        want = fnn.ops.dropout(x, 0.4, seed, offset)
    for threads in (1, 2):
        with fnn.backend.using("numba"):
            got = on_threads(threads, lambda: fnn.ops.dropout(x, 0.4, seed, offset))
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8),
                                      err_msg=f"offset {offset}, n {n}, {threads} threads")


@needs_cpp
@pytest.mark.parametrize("offset", [0, 3, 4 * 2**32 - 4099])
@pytest.mark.parametrize("n", [1, 7, 1027, 300_001])
def test_dropout_in_place_is_bit_identical_to_cpp(rng, offset, n):
    """dropout_backward(dy, out=dy), as DropConnect masks its weight gradient: the
    in-place kernel (one array, so the loop vectorizes) draws the C++ words too."""
    x = rng.standard_normal(n).astype(np.float32)
    x[::89] = np.nan
    seed = int(rng.integers(2**63))
    with fnn.backend.using("cpp"):
        want = fnn.ops.dropout_backward(x, 0.3, seed, offset)
    for threads in (1, 2):
        y = x.copy()
        with fnn.backend.using("numba"):
            got = on_threads(threads, lambda: fnn.ops.dropout_backward(y, 0.3, seed, offset, out=y))
        assert got is y
        np.testing.assert_array_equal(y.view(np.uint8), want.view(np.uint8),
                                      err_msg=f"offset {offset}, n {n}, {threads} threads")


# --- max pooling: the fixed-window kernel against the generic one ---------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw,sw", [(2, 2), (2, 1), (3, 2), (3, 1)])
@pytest.mark.parametrize("kh,sh,ph", [(2, 2, 0), (3, 1, 1), (1, 2, 0), (3, 2, 1)])
def test_fixed_window_max_pool_matches_the_generic_kernel(rng, dtype, kw, sw, kh, sh, ph):
    """Same maxima and same first-maximum indices as the window-at-a-time kernel,
    with ties (few distinct values), NaN (wins) and -inf, row padding included."""
    n, c, h, w = 3, 5, 13, 17
    x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 40, replace=False)] = np.nan
    flat[rng.choice(flat.size, 40, replace=False)] = -np.inf
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w - kw) // sw + 1
    got_y, want_y = np.empty((n, c, oh, ow), dtype), np.empty((n, c, oh, ow), dtype)
    got_i, want_i = np.empty((n, c, oh, ow), np.int32), np.empty((n, c, oh, ow), np.int32)
    numba_pool.max_pool2d_forward(x, got_y, got_i, kh, kw, sh, sw, ph, 0)          # fixed path
    numba_pool._max_pool2d_forward(x.reshape(n * c, h, w), want_y.reshape(n * c, oh, ow),
                                   want_i.reshape(n * c, oh, ow), kh, kw, sh, sw, ph, 0)   # generic
    np.testing.assert_array_equal(got_y, want_y)
    np.testing.assert_array_equal(got_i, want_i)


@needs_cpp
def test_fixed_window_max_pool_matches_cpp_on_both_thread_counts(rng):
    x = rng.integers(-3, 4, (16, 32, 32, 32)).astype(np.float32)   # many ties, above the parallel threshold
    x[0, 0, 0, :4] = np.nan
    with fnn.backend.using("cpp"):
        want, wsaved = fnn.ops.max_pool2d(x, 2, 2, 0)
    for threads in (1, 2):
        with fnn.backend.using("numba"):
            got, gsaved = on_threads(threads, lambda: fnn.ops.max_pool2d(x, 2, 2, 0))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(gsaved.index, wsaved.index)


# --- the on-disk cache of the kernels made per code --------------------------------------------

def _made_kernels():
    relu = ACT_CODE["relu"]
    made = [numba_optim._optim_loop(RULE_CODE["adam"]), numba_pool._max_pool2d_fixed(2, 2)]
    for module in (conv, conv_winograd):
        made += [module._forward_kernel(relu), module._backward_kernel(relu)]
    for factory in (activation._act_kernels, batchnorm._bn_kernels, gemm._epilogue_kernels):
        made += list(factory(relu))
    return made


def test_kernels_made_per_code_capture_only_plain_values():
    """Numba's cache key hashes the pickled closure variables of a kernel: a
    captured jitted helper (a dispatcher) pickles differently in every process,
    so the kernel recompiled at every start (the optimizer step did: 1.7 s instead
    of 0.35 s for the first training step with a warm cache). The kernels made
    per rule / activation / window may capture plain numbers only."""
    for kernel in _made_kernels():
        cells = kernel.py_func.__closure__ or ()
        kinds = {type(c.cell_contents).__name__ for c in cells}
        assert kinds <= {"int", "bool", "float"}, f"{kernel.py_func.__qualname__} captures {sorted(kinds)}"


# --- convolution: image blocks on a pool of Python threads, NumPy's BLAS on one thread ---

def _conv_both_ways(x, w, b, dy, stride, padding, act):
    with fnn.backend.using("numba"):
        y, saved = fnn.ops.conv2d(x, w, b, stride, padding, act)
        return (y,) + tuple(np.asarray(g) for g in fnn.ops.conv2d_backward(dy, saved))


@pytest.mark.parametrize("act", ["relu", "prelu", "tanh"])
def test_conv_blocks_give_the_same_bits_on_any_thread_count_and_serially(rng, act, monkeypatch):
    """37 images (16 uneven blocks), stride 2 and uneven padding: 1 and 2 threads and the
    serial fallback (no OpenBLAS whose threads can be set) give the same bits, and the
    user's BLAS thread count is back afterwards."""
    from fastnn.backend.numba import runtime
    x = rng.standard_normal((37, 3, 11, 8)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    dy = rng.standard_normal((37, 5, 6, 6)).astype(np.float32)
    blas_before = runtime._OPENBLAS[1]() if runtime._OPENBLAS is not None else None
    runs = [on_threads(n, lambda: _conv_both_ways(x, w, b, dy, (2, 2), (1, 2), act)) for n in (1, 2)]
    if runtime._OPENBLAS is not None:
        assert runtime._OPENBLAS[1]() == blas_before
        monkeypatch.setattr(runtime, "_OPENBLAS", None)
        runs.append(on_threads(2, lambda: _conv_both_ways(x, w, b, dy, (2, 2), (1, 2), act)))
    for other in runs[1:]:
        for got, want in zip(other, runs[0]):
            np.testing.assert_array_equal(got, want)


def test_run_tasks_runs_every_task_once_and_reraises():
    from fastnn.backend.numba import runtime
    seen = []
    on_threads(2, lambda: runtime.run_tasks(seen.append, 23))
    assert sorted(seen) == list(range(23))

    def fail(i):
        if i == 5:
            raise ValueError("task 5")
    with pytest.raises(ValueError, match="task 5"):
        on_threads(2, lambda: runtime.run_tasks(fail, 9))
    if runtime._OPENBLAS is not None:
        assert runtime._ONE_BLAS_THREAD.depth == 0


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_run_tasks_in_a_forked_child():
    """A child forked after the pool started has none of its threads: it makes its own."""
    import os
    from fastnn.backend.numba import runtime
    on_threads(2, lambda: runtime.run_tasks(lambda i: None, 4))
    pid = os.fork()
    if pid == 0:
        import signal
        signal.alarm(60)  # a hang fails the test instead of blocking the suite
        seen = []
        try:
            on_threads(2, lambda: runtime.run_tasks(seen.append, 6))
        finally:
            os._exit(0 if sorted(seen) == list(range(6)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_numpys_openblas_is_found_when_numpy_uses_one():
    """Otherwise the convolution's image blocks quietly run one after another."""
    from fastnn.backend.numba import runtime
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except (TypeError, KeyError):
        pytest.skip("this NumPy does not report its BLAS")
    if "openblas" not in blas.lower():
        pytest.skip(f"NumPy's BLAS is {blas}: the blocks run one after another by design")
    assert runtime._OPENBLAS is not None
    before = runtime._OPENBLAS[1]()
    with runtime._ONE_BLAS_THREAD:
        assert runtime._OPENBLAS[1]() == 1
    assert runtime._OPENBLAS[1]() == before
