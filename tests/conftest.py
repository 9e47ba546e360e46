"""Shared fixtures: every kernel test runs on every backend (and, for the C++
backend, on every CPU code path this processor can run) against one float64
NumPy oracle."""
from __future__ import annotations

import contextlib

import os

import numpy as np
import pytest
from hypothesis import settings

# Property tests (tests/test_properties.py) draw the same examples on every run
# and keep no example database, so CI is reproducible; HYPOTHESIS_PROFILE=dev
# explores fresh examples locally.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import fastnn as fnn
from fastnn.backend import cpp


def _backend_params():
    params = []
    if "cpp" in fnn.backend.available():
        for isa in cpp._C.cpu_isas_supported().split(","):
            params.append(pytest.param(("cpp", isa), id=f"cpp-{isa}"))
    params.append(pytest.param(("numba", None), id="numba"))
    return params


@contextlib.contextmanager
def _on(backend, isa):
    previous = cpp._C.cpu_isa() if cpp._C is not None else None
    if isa is not None:
        assert cpp._C.set_cpu_isa(isa)
    try:
        with fnn.backend.using(backend):
            yield
    finally:
        if previous is not None:
            cpp._C.set_cpu_isa(previous)


@pytest.fixture(params=_backend_params())
def backend(request):
    """Runs the test body with (backend name, cpu isa or None) selected."""
    name, isa = request.param
    with _on(name, isa):
        yield name


@pytest.fixture
def rng(request):
    # Fresh random inputs each run, reported on failure so a failure reproduces.
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    return np.random.default_rng(seed)


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-30, np.max(np.abs(b)), 1.0))


TOL = {np.float32: 1e-4, np.float64: 1e-11}


def on_threads(n, fn):
    """fn() with fastnn set to n threads; the previous count is restored after."""
    before = fnn.get_num_threads()
    try:
        fnn.set_num_threads(n)
        return fn()
    finally:
        fnn.set_num_threads(before)


def off_line(shape, dtype, rng):
    """A contiguous standard-normal array starting one element past a 64-byte line."""
    store = np.empty(int(np.prod(shape)) + 1, dtype)
    out = store[1:].reshape(shape)
    out[...] = rng.standard_normal(shape)
    return out

# Activations whose derivative jumps at z = 0.
KINKED = ("relu", "leaky_relu", "prelu", "elu", "selu")


def draw_clear_of_kinks(draw, distance, margin=1e-4):
    """draw() again until distance(drawn), the smallest distance of any
    pre-activation, margin or gap between two pieces to its function's kink,
    exceeds `margin`, and return what was drawn. A numerical gradient's central
    difference (step 1e-6) across a kink averages the two slopes, which the
    analytic gradient never does: a fresh draw that close is rare, but the suite
    meets one now and then (SELU on Numba once read 0.0116 against 1e-6)."""
    while True:
        drawn = draw()
        if distance(drawn) > margin:
            return drawn


def well_separated(rng, shape, spread=2.0):
    """Random values in (-spread, spread) no two closer than spread / size: a
    shuffled even grid with jitter. A max over any window then has a clear
    winner, so a central difference (step 1e-6) never crosses the max's kink,
    as a near tie of normal draws can (about 1e-4 per max-pool gradient test
    and run), and the analytic gradient is checked at every element."""
    n = int(np.prod(shape))
    grid = (rng.permutation(n) + rng.uniform(0.25, 0.75, n)) / n
    return (grid * 2 * spread - spread).reshape(shape)


def off_kinks(act, dy, z, scale):
    """dy with zeros where z lies within rounding (1e-4 of scale, the sum of the
    products' magnitudes) of the activation's kink: there float32 and float64, or two
    summation orders, may put z on different sides of 0 and disagree on act'(z), so
    the entry says nothing about the kernel."""
    if act not in KINKED:
        return dy
    return np.where(np.abs(z) < 1e-4 * scale, 0, dy).astype(dy.dtype)
