"""Inverted dropout with masks regenerated, never stored (csrc/cpu/dropout.cpp;
csrc/ops/philox.h + csrc/ops/dropout.h).

x, y of any shape, n elements. Element i of a call with (seed, offset) draws
word j % 4 of Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as
easy as 1, 2, 3") at counter (j / 4 as lo32, hi32, 0, 0), key (seed lo32, seed
hi32), j = offset + i; it is kept iff word < threshold and then scaled by
``scale`` (1 / keep_prob). Integer arithmetic throughout, so the mask is
bit-identical to the C++ and CUDA kernels'; backward is the same call on dy.
"""
from __future__ import annotations

import numpy as np

from .runtime import JIT, njit, prange, threads_for

_M32 = np.uint64(0xFFFFFFFF)
_PM0 = np.uint64(0xD2511F53)
_PM1 = np.uint64(0xCD9E8D57)
_PW0 = np.uint64(0x9E3779B9)
_PW1 = np.uint64(0xBB67AE85)
_S32 = np.uint64(32)


@njit(inline="always", **JIT)
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """ops/philox.h: ten rounds on the counter (c0..c3) with key (k0, k1), 32-bit words held in uint64."""
    for r in range(10):
        if r > 0:
            k0 = (k0 + _PW0) & _M32
            k1 = (k1 + _PW1) & _M32
        p0 = _PM0 * c0
        p1 = _PM1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _M32
        c3 = p0 & _M32
        c0 = n0
        c2 = n2
    return c0, c1, c2, c3


@njit(parallel=True, **JIT)
def _dropout(x, y, seed, offset, threshold, scale):
    n = x.size
    if n == 0:
        return
    four = np.uint64(4)
    first = offset // four
    last = (offset + np.uint64(n) - np.uint64(1)) // four
    k0 = seed & _M32
    k1 = seed >> _S32
    zero = np.uint64(0)
    end = offset + np.uint64(n)
    for t in prange(np.int64(last - first) + 1):
        block = first + np.uint64(t)
        w0, w1, w2, w3 = philox4x32_10(block & _M32, block >> _S32, zero, zero, k0, k1)
        g0 = block * four
        for w in range(4):
            g = g0 + np.uint64(w)
            if g >= offset and g < end:
                i = np.int64(g - offset)
                word = w0 if w == 0 else (w1 if w == 1 else (w2 if w == 2 else w3))
                # A dropped element is 0 even when x is NaN or inf (ops/dropout.h dropout_apply).
                y[i] = x[i] * scale if word < threshold else 0.0


def dropout(x, y, seed, offset, threshold, scale):
    with threads_for(x.size):
        _dropout(x.reshape(-1), y.reshape(-1), np.uint64(seed), np.uint64(offset), np.uint64(threshold),
                 x.dtype.type(scale))
