"""The Numba backend package (fastnn/backend/numba/): its optimizer is
csrc/ops/optim.h restated statement by statement, its reductions do not depend
on the thread count, and its runtime holds the one parallel threshold."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn.backend import cpp
from fastnn.backend.codes import HYPER_FIELDS, RULE_CODE, RULES
from fastnn.backend.numba import runtime
from conftest import on_threads

needs_cpp = pytest.mark.skipif(cpp._C is None, reason="fastnn._C not built")


def _hyper(**fields):
    row = dict(lr=1e-2, weight_decay=0.01, l1=1e-3, momentum=0.9, alpha=0.99, beta1=0.9, beta2=0.999, eps=1e-8,
               bias_correction1=1 - 0.9 ** 3, bias_correction2=1 - 0.999 ** 3, grad_scale=0.75)
    row.update(fields)
    return np.array([[row[name] for name in HYPER_FIELDS]])


def _step(backend, rule, param, grad, state1, state2, hyper):
    p, s1, s2 = param.copy(), state1.copy(), state2.copy()
    fnn.backend.lookup("optim_step", backend)(RULE_CODE[rule], p, grad, s1, s2,
                                              np.array([0, p.size], np.int64), hyper)
    return p, s1, s2


@needs_cpp
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule", RULES)
def test_optimizer_is_bit_identical_to_the_generic_cpp_path(rng, rule, dtype):
    """The Numba update mirrors optim.h statement by statement, so it rounds like
    the C++ scalar ("generic") code path, which contracts no multiply-add into an
    FMA: every parameter and state bit agrees, with L2, L1 and gradient scaling on."""
    n = 4099
    param = rng.standard_normal(n).astype(dtype)
    param[::7] = 0                      # sign(0) = 0 for the L1 term
    grad = rng.standard_normal(n).astype(dtype)
    state1 = np.abs(rng.standard_normal(n)).astype(dtype)
    state2 = (state1 * state1).astype(dtype)
    hyper = _hyper()
    previous = cpp._C.cpu_isa()
    assert cpp._C.set_cpu_isa("generic")
    try:
        want = _step("cpp", rule, param, grad, state1, state2, hyper)
    finally:
        cpp._C.set_cpu_isa(previous)
    got = _step("numba", rule, param, grad, state1, state2, hyper)
    for name, a, b in zip(("param", "state1", "state2"), got, want):
        np.testing.assert_array_equal(a, b, err_msg=f"{rule} {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adamw_keeps_the_state_of_a_nan_parameter_finite(backend, dtype):
    """optim.h's L1 sign is (p > 0) - (p < 0), 0 for NaN, and adamw decays p
    instead of adding wd * p to g: a NaN parameter stays NaN but its moments stay
    finite (np.sign would have made them NaN)."""
    param = np.array([np.nan, 1.5, -2.0, 0.0], dtype)
    grad = np.array([0.5, -0.25, 1.0, 2.0], dtype)
    state1 = np.zeros(4, dtype)
    state2 = np.zeros(4, dtype)
    p, s1, s2 = _step(backend, "adamw", param, grad, state1, state2, _hyper(l1=0.1, grad_scale=1.0))
    assert np.isnan(p[0]) and np.isfinite(p[1:]).all()
    np.testing.assert_allclose(s1, 0.1 * (grad + 0.1 * np.sign(np.nan_to_num(param))), rtol=1e-6)
    assert np.isfinite(s2).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_alpha_gradient_and_loss_do_not_depend_on_the_thread_count(backend, rng, dtype):
    """Above the parallel threshold the prelu d loss / d alpha of the standalone
    activation and the mean cross-entropy are sums over many elements; both are
    summed in a fixed order (4096-element blocks, then the blocks in order), so
    1 and 2 threads give the same bits, and C++ and Numba the same dalpha."""
    x = rng.standard_normal((400, 300)).astype(dtype)
    dy = rng.standard_normal((400, 300)).astype(dtype)
    labels = rng.integers(0, 300, 400)

    def run():
        y = fnn.ops.activation(x, "prelu", 0.2)
        dx, dalpha = fnn.ops.activation_backward(dy, x, y, "prelu", 0.2)
        loss, saved = fnn.ops.softmax_cross_entropy(x, labels)
        return dx, dalpha, loss, saved.probs

    one, two = on_threads(1, run), on_threads(2, run)
    np.testing.assert_array_equal(one[0], two[0])
    assert one[1] == two[1]
    assert one[2] == two[2]
    np.testing.assert_array_equal(one[3], two[3])
    with fnn.backend.using("numba"):
        reference = run()
    assert one[1] == reference[1]


def test_threads_for_is_the_parallel_threshold():
    """Small work runs on one thread, large work on fastnn's thread count, and the
    calling thread's Numba count is restored afterwards."""
    numba = runtime.numba
    before = fnn.get_num_threads()
    outside = numba.get_num_threads()
    try:
        fnn.set_num_threads(2)
        outside = numba.get_num_threads()
        with runtime.threads_for(100):
            assert numba.get_num_threads() == 1
        with runtime.threads_for(10 ** 7):
            assert numba.get_num_threads() == runtime.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
        assert numba.get_num_threads() == outside
    finally:
        fnn.set_num_threads(before)


def test_every_cpp_kernel_but_the_benchmark_has_a_numba_kernel():
    """The package registers csrc/kernels.h's kernels under the same names
    (stream_triad is the C++ bandwidth benchmark, not a training kernel)."""
    numba_ops = set(fnn.backend.registry.ops_of("numba"))
    assert numba_ops == {"gemm", "linear_act_forward", "linear_act_backward", "act_forward", "act_backward",
                         "softmax_xent_forward", "softmax_xent_backward", "optim_step", "batchnorm_forward",
                         "batchnorm_backward", "batchnorm_stats", "batchnorm_gather_stats", "batchnorm_elemt",
                         "batchnorm_backward_reduce", "batchnorm_backward_elemt", "dropout", "max_norm",
                         "conv2d_forward", "conv2d_backward",
                         "max_pool2d_forward", "max_pool2d_regions_forward", "max_pool2d_backward",
                         "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward",
                         "global_avg_pool2d_backward"}
    if cpp._C is not None:
        assert numba_ops == set(fnn.backend.registry.ops_of("cpp")) - {"stream_triad"}
