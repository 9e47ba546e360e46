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


# Philox blocks per task: a task first fills the words of its blocks (a loop
# with no branch and no store to y, which LLVM vectorizes across blocks: the 32x32
# -> 64-bit products become vpmuludq, several blocks per register, where the
# former loop computed one block and then scattered its four words one by one),
# then applies them to its run of elements with one compare per element.
_BLOCKS = 256


@njit(**JIT)
def _philox_words(first, nb, k0, k1, words):
    """words[4 * l + w] = word w of Philox block first + l, l < nb (ops/dropout.h dropout_block).
    A loop of its own (not inlined into the prange body), so LLVM vectorizes it across blocks."""
    zero = np.uint64(0)
    for l in range(nb):
        block = first + np.uint64(l)
        w0, w1, w2, w3 = philox4x32_10(block & _M32, block >> _S32, zero, zero, k0, k1)
        words[4 * l] = w0
        words[4 * l + 1] = w1
        words[4 * l + 2] = w2
        words[4 * l + 3] = w3


@njit(**JIT)
def _apply_mask(x, y, i0, i1, words, lead, threshold, scale):
    """y[i] = dropout_apply(x[i], dropout_keep(words[i + lead], threshold), scale), i0 <= i < i1."""
    T = x.dtype.type
    for i in range(i0, i1):
        # A dropped element is 0 even when x is NaN or inf (ops/dropout.h dropout_apply).
        y[i] = x[i] * scale if words[i + lead] < threshold else T(0)


@njit(parallel=True, **JIT)
def _dropout(x, y, seed, offset, threshold, scale):
    n = x.size
    if n == 0:
        return
    four = np.uint64(4)
    first = offset // four
    last = (offset + np.uint64(n) - np.uint64(1)) // four
    nblocks = np.int64(last - first) + 1
    k0 = seed & _M32
    k1 = seed >> _S32
    for t in prange((nblocks + _BLOCKS - 1) // _BLOCKS):
        b0 = t * _BLOCKS
        nb = min(_BLOCKS, nblocks - b0)
        words = np.empty(4 * _BLOCKS, np.uint64)
        _philox_words(first + np.uint64(b0), nb, k0, k1, words)
        # words[0] is global index start; element i (global index offset + i) reads words[i + lead]
        start = (first + np.uint64(b0)) * four
        lead = np.int64(offset - start) if offset >= start else -np.int64(start - offset)
        _apply_mask(x, y, max(0, -lead), min(n, 4 * nb - lead), words, lead, threshold, scale)


def dropout(x, y, seed, offset, threshold, scale):
    with threads_for(x.size):
        _dropout(x.reshape(-1), y.reshape(-1), np.uint64(seed), np.uint64(offset), np.uint64(threshold),
                 x.dtype.type(scale))
