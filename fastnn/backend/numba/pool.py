"""2-D max and average pooling (csrc/cpu/pool.cpp; windows, the tie and NaN
rules and the divisors: csrc/ops/pool.h).

Shapes: x, dx (N, C, H, W); y, dy, index (N, C, OH, OW), OH = (H + 2 PH - KH)
// SH + 1 (OW likewise); index int32 holds the in-plane position ih * W + iw
of each window's maximum. The window of output row o covers input rows
[o SH - PH, o SH - PH + KH) clipped to [0, H): padding never contributes
(-inf for max, zeros that count_include_pad counts or not for average).
Max pooling keeps the first maximum in row-major window order (a NaN wins);
average pooling sums in row-major window order and divides once. Planes run
in parallel, each sequentially, with the loop nests of the C++ kernels, so
the scatter order of the backward passes is the same.
"""
from __future__ import annotations

import functools

import numpy as np

from .runtime import JIT, njit, prange, threads_for


@njit(inline="always", **JIT)
def pool_window(o, stride, pad, k, size):
    """ops/pool.h pool_window: [begin, end) of the inputs of output position o."""
    start = o * stride - pad
    return max(start, 0), min(start + k, size)


@njit(inline="always", **JIT)
def max_pool_takes(v, best):
    """ops/pool.h: strictly greater (the first of equal maxima stays), or the first NaN."""
    return (v > best) | ((v != v) & (best == best))   # bitwise: no branch, so the loops vectorize


@njit(inline="always", **JIT)
def avg_pool_divisor(rows, cols, kh, kw, count_include_pad):
    count = kh * kw if count_include_pad else rows * cols
    return count if count > 0 else 1


def _fixed_window(kw, sw, pw):
    """pool.cpp by_fixed_window: the windows with a kernel of their own (KW and SW
    compile-time constants): no column padding, 2 or 3 wide, stride 1 or 2."""
    return pw == 0 and kw in (2, 3) and sw in (1, 2)


@njit(parallel=True, **JIT)
def _max_pool2d_forward(x, y, index, kh, kw, sh, sw, ph, pw):
    planes, h, w = x.shape
    oh, ow = y.shape[1:]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(planes):
        for oi in range(oh):
            r0, r1 = pool_window(oi, sh, ph, kh, h)
            for oj in range(ow):
                c0, c1 = pool_window(oj, sw, pw, kw, w)
                best = neg_inf
                at = min(r0, h - 1) * w + min(max(oj * sw - pw, 0), w - 1)
                for ih in range(r0, r1):
                    for iw in range(c0, c1):
                        v = x[p, ih, iw]
                        if max_pool_takes(v, best):
                            best = v
                            at = ih * w + iw
                y[p, oi, oj] = best
                index[p, oi, oj] = at


@functools.cache
def _max_pool2d_fixed(kw, sw):
    """csrc/cpu/pool.cpp max_pool_plane_fixed<T, KW, SW>: the common windows (no
    column padding, 2 or 3 wide, stride 1 or 2), compiled with KW and SW as
    constants. One pass per window row over a whole output row: the KW
    candidates of a column are compared in the loop body with a branch-free
    select, so the row's loads form one interleaved group and the loop
    vectorizes over the output columns. The generic kernel above visits one
    window at a time, through 3-D indexing with Numba's negative-index
    wraparound and a branch per element, and stayed scalar (19x the C++ time at
    (64, 32, 32, 32), 2x2). Same visiting order per window (rows, then columns),
    so the same maxima and the same first-maximum indices."""

    @njit(parallel=True, **JIT)
    def kernel(x, y, index, kh, sh, ph):
        planes, h, w = x.shape
        oh, ow = y.shape[1:]
        neg_inf = x.dtype.type(-np.inf)
        for p in prange(planes):
            for oi in range(oh):
                r0, r1 = pool_window(oi, sh, ph, kh, h)
                yr = y[p, oi]
                ir = index[p, oi]
                if r0 >= r1:  # all padding (ops.py refuses such padding; stay inside x anyway)
                    ih0 = min(r0, h - 1)
                    for oj in range(ow):
                        yr[oj] = neg_inf
                        ir[oj] = ih0 * w + oj * sw
                    continue
                xr = x[p, r0]
                base = r0 * w
                for oj in range(ow):
                    best = xr[oj * sw]
                    at = base + oj * sw
                    for kj in range(1, kw):
                        v = xr[oj * sw + kj]
                        take = max_pool_takes(v, best)
                        best = v if take else best
                        at = base + oj * sw + kj if take else at
                    yr[oj] = best
                    ir[oj] = at
                for ih in range(r0 + 1, r1):
                    xr = x[p, ih]
                    row = ih * w
                    for oj in range(ow):
                        best = yr[oj]
                        at = np.int64(ir[oj])
                        for kj in range(kw):
                            v = xr[oj * sw + kj]
                            take = max_pool_takes(v, best)
                            best = v if take else best
                            at = row + oj * sw + kj if take else at
                        yr[oj] = best
                        ir[oj] = at

    return kernel


def max_pool2d_forward(x, y, index, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w):
    n, c, h, w = x.shape
    x3, y3, i3 = x.reshape(n * c, h, w), y.reshape(n * c, *y.shape[2:]), index.reshape(n * c, *index.shape[2:])
    with threads_for(x.size):
        if _fixed_window(kernel_w, stride_w, pad_w):
            _max_pool2d_fixed(kernel_w, stride_w)(x3, y3, i3, kernel_h, stride_h, pad_h)
        else:
            _max_pool2d_forward(x3, y3, i3, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w)


@njit(parallel=True, **JIT)
def _max_pool2d_regions_forward(x, y, index, row_begin, row_end, col_begin, col_end):
    planes, h, w = x.shape
    oh, ow = y.shape[1:]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(planes):
        for oi in range(oh):
            for oj in range(ow):
                best = neg_inf
                at = row_begin[oi] * w + col_begin[oj]
                for ih in range(row_begin[oi], row_end[oi]):
                    for iw in range(col_begin[oj], col_end[oj]):
                        v = x[p, ih, iw]
                        if max_pool_takes(v, best):
                            best = v
                            at = ih * w + iw
                y[p, oi, oj] = best
                index[p, oi, oj] = at


def _check_regions(begin, end, size, what):
    # Memory safety (the C++ binding's check): Numba does not bound-check.
    bad = ~((begin >= 0) & (begin < end) & (end <= size))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"region {what} {i} [{begin[i]}, {end[i]}) must be non-empty and inside [0, {size})")


def max_pool2d_regions_forward(x, y, index, row_begin, row_end, col_begin, col_end):
    n, c, h, w = x.shape
    _check_regions(row_begin, row_end, h, "row")
    _check_regions(col_begin, col_end, w, "column")
    with threads_for(x.size):
        _max_pool2d_regions_forward(x.reshape(n * c, h, w), y.reshape(n * c, *y.shape[2:]),
                                    index.reshape(n * c, *index.shape[2:]), row_begin, row_end, col_begin, col_end)


@njit(parallel=True, **JIT)
def _max_pool2d_backward(dy, index, dx):
    planes, out = dy.shape
    size = dx.shape[1]
    for p in prange(planes):
        for i in range(size):
            dx[p, i] = 0.0
        for o in range(out):
            dx[p, index[p, o]] += dy[p, o]


def max_pool2d_backward(dy, index, dx):
    n, c, h, w = dx.shape
    if index.size and (int(index.min()) < 0 or int(index.max()) >= h * w):
        raise ValueError(f"index must hold in-plane positions in [0, H*W = {h * w}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")
    with threads_for(dx.size):
        out = dy.shape[2] * dy.shape[3]
        _max_pool2d_backward(dy.reshape(n * c, out), index.reshape(n * c, out), dx.reshape(n * c, h * w))


@njit(parallel=True, **JIT)
def _avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):
    planes, h, w = x.shape
    oh, ow = y.shape[1:]
    for p in prange(planes):
        for oi in range(oh):
            r0, r1 = pool_window(oi, sh, ph, kh, h)
            for oj in range(ow):
                c0, c1 = pool_window(oj, sw, pw, kw, w)
                total = x.dtype.type(0.0)
                for ih in range(r0, r1):
                    for iw in range(c0, c1):
                        total += x[p, ih, iw]
                y[p, oi, oj] = total / x.dtype.type(avg_pool_divisor(r1 - r0, c1 - c0, kh, kw, count_include_pad))


@functools.cache
def _avg_pool2d_fixed(kw, sw):
    """csrc/cpu/pool.cpp avg_pool_plane_fixed<T, KW, SW> (the windows of
    by_fixed_window), KW and SW compile-time constants: each window row is added
    into the whole output row at once, so the loop over output columns
    vectorizes. The generic kernel above visits one window at a time (2.4x the
    C++ time at (64, 32, 32, 32), 2x2). Same order of terms per window (0, then
    rows, then columns in each), so the same sums."""

    @njit(parallel=True, **JIT)
    def kernel(x, y, kh, sh, ph, count_include_pad):
        planes, h, w = x.shape
        oh, ow = y.shape[1:]
        T = x.dtype.type
        for p in prange(planes):
            for oi in range(oh):
                r0, r1 = pool_window(oi, sh, ph, kh, h)
                yr = y[p, oi]
                for oj in range(ow):
                    yr[oj] = T(0)
                for ih in range(r0, r1):
                    xr = x[p, ih]
                    for oj in range(ow):
                        total = yr[oj]
                        for kj in range(kw):
                            total += xr[oj * sw + kj]
                        yr[oj] = total
                divisor = T(avg_pool_divisor(r1 - r0, kw, kh, kw, count_include_pad))
                for oj in range(ow):
                    yr[oj] /= divisor

    return kernel


def avg_pool2d_forward(x, y, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    n, c, h, w = x.shape
    x3, y3 = x.reshape(n * c, h, w), y.reshape(n * c, *y.shape[2:])
    with threads_for(x.size):
        if _fixed_window(kernel_w, stride_w, pad_w):
            _avg_pool2d_fixed(kernel_w, stride_w)(x3, y3, kernel_h, stride_h, pad_h, bool(count_include_pad))
        else:
            _avg_pool2d_forward(x3, y3, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                bool(count_include_pad))


@njit(parallel=True, **JIT)
def _avg_pool2d_backward(dy, dx, kh, kw, sh, sw, ph, pw, count_include_pad):
    planes, h, w = dx.shape
    oh, ow = dy.shape[1:]
    for p in prange(planes):
        g = np.empty(ow, dx.dtype)
        dxp = dx[p]
        for ih in range(h):
            for iw in range(w):
                dxp[ih, iw] = 0.0
        for oi in range(oh):
            r0, r1 = pool_window(oi, sh, ph, kh, h)
            dyr = dy[p, oi]
            for oj in range(ow):
                c0, c1 = pool_window(oj, sw, pw, kw, w)
                g[oj] = dyr[oj] / dx.dtype.type(avg_pool_divisor(r1 - r0, c1 - c0, kh, kw, count_include_pad))
            # The C++ loop nest (window row, window column, output column), so
            # each dx element receives its terms in the same order; pool.cpp's
            # column_span: the output columns whose input oj * sw + off is inside.
            for ih in range(r0, r1):
                dxr = dxp[ih]
                for kj in range(kw):
                    off = kj - pw
                    lo = 0 if off >= 0 else (-off + sw - 1) // sw
                    hi = 0 if w - 1 - off < 0 else min(ow, (w - 1 - off) // sw + 1)
                    for oj in range(lo, hi):
                        dxr[oj * sw + off] += g[oj]


def avg_pool2d_backward(dy, dx, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad):
    n, c, h, w = dx.shape
    with threads_for(dx.size):
        _avg_pool2d_backward(dy.reshape(n * c, *dy.shape[2:]), dx.reshape(n * c, h, w), kernel_h, kernel_w,
                             stride_h, stride_w, pad_h, pad_w, bool(count_include_pad))


@njit(parallel=True, **JIT)
def _global_avg_pool2d_forward(x, y):
    planes, size = x.shape
    for p in prange(planes):
        total = x.dtype.type(0.0)
        for i in range(size):
            total += x[p, i]
        y[p] = total / x.dtype.type(max(size, 1))


def global_avg_pool2d_forward(x, y):
    n, c, h, w = x.shape
    with threads_for(x.size):
        _global_avg_pool2d_forward(x.reshape(n * c, h * w), y.reshape(n * c))


@njit(parallel=True, **JIT)
def _global_avg_pool2d_backward(dy, dx):
    planes, size = dx.shape
    for p in prange(planes):
        g = dy[p] / dx.dtype.type(size)
        for i in range(size):
            dx[p, i] = g


def global_avg_pool2d_backward(dy, dx):
    n, c, h, w = dx.shape
    if h * w == 0:
        return
    with threads_for(dx.size):
        _global_avg_pool2d_backward(dy.reshape(n * c), dx.reshape(n * c, h * w))
