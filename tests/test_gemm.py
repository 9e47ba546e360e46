import numpy as np
import pytest

import fastnn as fnn
from conftest import TOL, off_line, on_threads, rel_err

# 1, primes, and sizes that are not multiples of any SIMD width, MR/NR or KC.
# Then shapes that cross the engine's blocks: several K blocks (k > KC), several
# column blocks (n > 2 * NCL2), several row blocks (m > MCB), a row split (one
# column panel).
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 1, 11), (13, 17, 19), (97, 131, 263), (300, 515, 600), (2, 1000, 3),
          (64, 64, 64), (29, 1100, 801), (2101, 40, 19), (500, 7, 130)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_float64_reference(backend, rng, dtype, trans_a, trans_b):
    for m, n, k in SHAPES:
        a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
        b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
        c = fnn.ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
        assert c.shape == (m, n)
        assert rel_err(c, ref) < TOL[dtype] * max(1, np.sqrt(k)), (m, n, k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_accumulates_with_beta_one(backend, rng, dtype):
    a = rng.standard_normal((37, 900)).astype(dtype)
    b = rng.standard_normal((900, 41)).astype(dtype)
    c0 = rng.standard_normal((37, 41)).astype(dtype)
    c = c0.copy()
    fnn.ops.gemm(a, b, out=c, beta=1.0)
    assert rel_err(c, c0.astype(np.float64) + a.astype(np.float64) @ b) < TOL[dtype] * 20


def test_gemm_zero_inner_dimension(backend):
    a = np.ones((3, 0), np.float32)
    b = np.ones((0, 4), np.float32)
    assert np.array_equal(fnn.ops.gemm(a, b), np.zeros((3, 4), np.float32))


def test_gemm_backends_agree(rng):
    a = rng.standard_normal((129, 257)).astype(np.float32)
    b = rng.standard_normal((257, 67)).astype(np.float32)
    outs = []
    for name in fnn.backend.available():
        with fnn.backend.using(name):
            outs.append(fnn.ops.gemm(a, b))
    for o in outs[1:]:
        assert rel_err(o, outs[0]) < 1e-5


# The engine streams B (packs it panel by panel, the next panel's source
# prefetched by the tiles) when B is larger than 2 MiB and a block has 3 to 32
# row panels: skinny GEMMs such as a Linear layer's forward at batch 64 with
# 4096 x 4096 weights, or at batch 256 with 1024 x 1024. These shapes take that path on every ISA (MR = 8 or 6):
# n and k off every tile and block size, several K blocks (each thread's next
# chunk, prefetched, in the next block), and B at an address that is not
# line-aligned; the last shape has B as large but too many rows to stream
# (two row blocks, split between the threads by rows).
STREAM_SHAPES = [(29, 2100, 1100), (250, 1999, 1201), (2048 + 37, 1100, 2003)]


# With more K blocks than the engine keeps chunk counters for (k > 512 x KC),
# a column split gives each thread fixed columns and the threads never wait
# for each other (each packs its own copy of every A block).
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_with_very_many_k_blocks_matches_reference_at_any_thread_count(backend, rng, dtype):
    m, n, k = 17, 100, 200_003
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    outs = [on_threads(threads, lambda: fnn.ops.gemm(a, b)) for threads in (1, 2)]
    assert rel_err(outs[0], ref) < TOL[dtype] * np.sqrt(k)
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_streamed_b_matches_reference_at_any_thread_count(backend, rng, dtype, trans_b):
    for m, n, k in STREAM_SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = off_line((n, k) if trans_b else (k, n), dtype, rng)
        ref = a.astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
        outs = [on_threads(threads, lambda: fnn.ops.gemm(a, b, trans_b=trans_b)) for threads in (1, 2)]
        assert rel_err(outs[0], ref) < TOL[dtype] * np.sqrt(k), (m, n, k)
        np.testing.assert_array_equal(outs[0], outs[1])


# A transposed B larger than 8 MiB against a few rows of A (dX = dZ @ W^T of a
# Linear layer at a small batch) is read in place on the AVX-512 path: tiles
# broadcast B from its columns (W's rows) and accumulate C^T per thread across
# the K blocks. Rows that fill its groups of 4 vectors (64 float32 or 32
# float64 rows) to within 1/8 take it: one group and several, n off the
# 6-column tiles and 48-column chunks, k off every block size, B one element
# past a line, with and without accumulation into C. Other ISAs take the
# general path on the same shapes.
IN_PLACE_TB_SHAPES = [(64, 2101, 1201), (61, 1999, 1100), (125, 1100, 2003), (30, 3001, 700), (250, 1153, 2011)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_gemm_transposed_b_in_place_matches_reference_at_any_thread_count(backend, rng, dtype, beta):
    for m, n, k in IN_PLACE_TB_SHAPES:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = off_line((n, k), dtype, rng)
        c0 = rng.standard_normal((m, n)).astype(dtype)
        ref = beta * c0.astype(np.float64) + a.astype(np.float64) @ b.T.astype(np.float64)
        outs = [on_threads(threads, lambda: fnn.ops.gemm(a, b, trans_b=True, out=c0.copy(), beta=beta))
                for threads in (1, 2)]
        assert rel_err(outs[0], ref) < TOL[dtype] * np.sqrt(k), (m, n, k)
        np.testing.assert_array_equal(outs[0], outs[1])
