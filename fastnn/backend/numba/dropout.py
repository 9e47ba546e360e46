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


# Philox blocks per task (4 elements each): the tasks of the prange.
_BLOCKS = 256


@njit(inline="always", **JIT)
def _dropout_blocks(x, y, first, nb, k0, k1, threshold, scale):
    """The nb whole blocks first .. first + nb - 1 on x, y (their 4 * nb elements):
    y[4 l + w] = dropout_apply(x[4 l + w], dropout_keep(word w of block first + l),
    scale) (ops/dropout.h dropout_block, dropout_keep, dropout_apply).

    One branch-free loop over the blocks, the words compared and stored as they
    come out of the rounds. LLVM vectorizes it across blocks (4 blocks per ymm
    register, the 32x32 -> 64-bit products as vpmuludq, the 4 words of a block an
    interleaved store group), like the C++'s AVX lanes. The former kernel wrote
    the words (uint64) to a buffer allocated per task and applied them in a
    second loop whose signed, offset index (words[i + lead]) kept Numba's
    negative-index wraparound and a run of alias checks: 2.4x the C++ time."""
    T = x.dtype.type
    zero = np.uint64(0)
    for l in range(nb):
        block = first + np.uint64(l)
        w0, w1, w2, w3 = philox4x32_10(block & _M32, block >> _S32, zero, zero, k0, k1)
        # A dropped element is 0 even when x is NaN or inf (ops/dropout.h dropout_apply).
        y[4 * l] = x[4 * l] * scale if w0 < threshold else T(0)
        y[4 * l + 1] = x[4 * l + 1] * scale if w1 < threshold else T(0)
        y[4 * l + 2] = x[4 * l + 2] * scale if w2 < threshold else T(0)
        y[4 * l + 3] = x[4 * l + 3] * scale if w3 < threshold else T(0)


@njit(**JIT)
def _dropout_blocks_apart(x, y, first, nb, k0, k1, threshold, scale):
    """_dropout_blocks from x into a distinct y."""
    _dropout_blocks(x, y, first, nb, k0, k1, threshold, scale)


@njit(**JIT)
def _dropout_blocks_in_place(y, first, nb, k0, k1, threshold, scale):
    """_dropout_blocks on y in place (x is y). Through two array arguments that are
    the same memory LLVM's overlap check fails and the loop runs scalar:
    DropConnect's in-place weight-gradient mask took 8-9 ms for 1M elements
    against 1.7 ms out of place."""
    _dropout_blocks(y, y, first, nb, k0, k1, threshold, scale)


@njit(**JIT)
def _dropout_elements(x, y, offset, i0, i1, k0, k1, threshold, scale):
    """Elements i0 <= i < i1 one at a time (global index j = offset + i: word j % 4
    of block j / 4): the partial blocks at the ends of the range."""
    T = x.dtype.type
    zero = np.uint64(0)
    for i in range(i0, i1):
        j = offset + np.uint64(i)
        block = j >> np.uint64(2)
        w = philox4x32_10(block & _M32, block >> _S32, zero, zero, k0, k1)[j & np.uint64(3)]
        y[i] = x[i] * scale if w < threshold else T(0)


@njit(parallel=True, **JIT)
def _dropout(x, y, seed, offset, threshold, scale, in_place):
    n = x.size
    if n == 0:
        return
    four = np.uint64(4)
    k0 = seed & _M32
    k1 = seed >> _S32
    # Whole blocks: [first, first + nblocks), elements [head, head + 4 nblocks) of x.
    first = offset // four if offset % four == 0 else offset // four + np.uint64(1)
    head = min(n, np.int64(first * four - offset))
    nblocks = (n - head) // 4
    tail = head + 4 * nblocks
    _dropout_elements(x, y, offset, 0, head, k0, k1, threshold, scale)
    _dropout_elements(x, y, offset, tail, n, k0, k1, threshold, scale)
    for t in prange((nblocks + _BLOCKS - 1) // _BLOCKS):
        b0 = t * _BLOCKS
        nb = min(_BLOCKS, nblocks - b0)
        i0 = head + 4 * b0
        if in_place:
            _dropout_blocks_in_place(y[i0:i0 + 4 * nb], first + np.uint64(b0), nb, k0, k1, threshold, scale)
        else:
            _dropout_blocks_apart(x[i0:i0 + 4 * nb], y[i0:i0 + 4 * nb], first + np.uint64(b0), nb, k0, k1,
                                  threshold, scale)


def dropout(x, y, seed, offset, threshold, scale):
    with threads_for(x.size):
        _dropout(x.reshape(-1), y.reshape(-1), np.uint64(seed), np.uint64(offset), np.uint64(threshold),
                 x.dtype.type(scale), x.ctypes.data == y.ctypes.data)
