"""2-D convolution as im2col + GEMM with the bias + activation epilogue fused
(csrc/cpu/conv.cpp; Chellapilla et al. 2006, the Caffe/PyTorch-CPU formulation).

Shapes: x (N, C, H, W), weight (F, C, KH, KW) viewed as (F, CKK), y, z, dy, dz
(N, F, OH, OW) viewed as (N, F, P), P = OH*OW. Image by image:
  cols[(c, ki, kj), (oh, ow)] = x[n, c, oh*SH - PH + ki, ow*SW - PW + kj]  (0 outside)
  forward   y[n] = act(W @ cols + bias[f])
  backward  dz[n] = dy[n] * act'(z or y), dbias[f] = sum over n, p of dz,
            dweight = sum over n of dz[n] @ cols^T, dx[n] = col2im(W^T @ dz[n])
The batch goes through im2col + GEMM a group of images at a time (as many as
fit _GROUP_BYTES of columns, which stay in the core's cache), and a pass is one
parallel Numba region: the forward one run of consecutive groups per thread,
the backward fixed blocks of images (a function of the shapes only) whose
weight, bias and alpha gradients are summed per block, then over the blocks in
order, so no result depends on the thread count. The GEMMs are NumPy's OpenBLAS
?gemm called from the compiled code (runtime.gemm_call; GIL released, the
library on one thread meanwhile), as in conv_winograd.py. The same steps as
runtime.run_tasks tasks on Python threads around np.matmul handed the GIL back
and forth for every group, and after a 0.15 s pause (idle vCPUs waking) a
3->32 layer at 32x32 took 6.1 ms fwd+bwd for its next calls against 3.5 back
to back. Where NumPy's BLAS has no such gemm those tasks remain the path.
"""
from __future__ import annotations

import functools

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from . import conv_winograd as winograd
from .activation import PRELU, act_grad, act_value, add_row_sums
from .runtime import (JIT, blas_gemm, gemm_call, get_num_threads, literally, njit, one_blas_thread, prange, quiet_fp,
                      run_tasks, scratch, threads_for)

# The backward's blocks of images (tasks): at most 16 (the weight-gradient
# partial sums take one (F, CKK) array per block), at least 4 (threads to share
# them), about 8 MiB of columns each between (see _blocks).
_MAX_BLOCKS, _MIN_BLOCKS, _BLOCK_BYTES = 16, 4, 8 << 20
# Bytes of columns per GEMM: a block's images go through im2col + GEMM a group at
# a time, as many images as fit here (at least one), so the columns stay in the
# core's L2 and small images still make one sizeable GEMM per group (one image of
# a 3-channel 32x32 input is 110 KB of columns and a 32 x 27 x 1024 GEMM).
_GROUP_BYTES = 1 << 20


@njit(**JIT)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols[(c, ki, kj), b, (i, j)] = x[b, c, i*sh - ph + ki, j*sw - pw + kj], 0 outside."""
    nb, c, h, w = x.shape
    for b in range(nb):
        for r in range(c * kh * kw):
            ch = r // (kh * kw)
            ki = (r // kw) % kh
            kj = r % kw
            row = cols[r, b]
            for i in range(oh):
                ih = i * sh - ph + ki
                for j in range(ow):
                    iw = j * sw - pw + kj
                    if 0 <= ih < h and 0 <= iw < w:
                        row[i * ow + j] = x[b, ch, ih, iw]
                    else:
                        row[i * ow + j] = 0


@njit(**JIT)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, oh, ow):
    """dx (B, C, H, W) = the scatter-add of the columns (CKK, B, P)."""
    nb, c, h, w = dx.shape
    for b in range(nb):
        for ch in range(c):
            plane = dx[b, ch]
            for ih in range(h):
                for iw in range(w):
                    plane[ih, iw] = 0
            for ki in range(kh):
                for kj in range(kw):
                    row = cols[(ch * kh + ki) * kw + kj, b]
                    for i in range(oh):
                        ih = i * sh - ph + ki
                        if ih < 0 or ih >= h:
                            continue
                        for j in range(ow):
                            iw = j * sw - pw + kj
                            if 0 <= iw < w:
                                plane[ih, iw] += row[i * ow + j]


@njit(**JIT)
def _bias_act(acc, y, z, bias, has_bias, save_z, alpha, in_place, code):
    """y (B, F, P) <- act(acc (F, B, P) + bias[f]); z <- the pre-activation when kept.
    in_place: the GEMM wrote y itself (acc then gives only the shape), and the rows
    are taken from y alone (through two views of the same memory LLVM's overlap check
    sends the loop down its scalar path: 0.8-1.25 ms for 64 images of 32 x 1024
    against 0.35). ``code`` is taken as a literal: compiled per activation, as
    csrc/cpu/conv.cpp's visit_act picks one template instance (with the code a
    runtime value every element went through the activation switch and the loops
    stayed scalar; with it constant each run of P values vectorizes)."""
    literally(code)
    f, nb, p = acc.shape
    T = y.dtype.type
    for b in range(nb):
        for k in range(f):
            out = y[b, k]
            src = out if in_place else acc[k, b]
            bk = bias[k] if has_bias else T(0)
            if save_z:
                zk = z[b, k]
                for j in range(p):
                    zk[j] = src[j] + bk
            if in_place:
                for j in range(p):
                    out[j] = T(act_value(out[j] + bk, code, alpha))
            else:
                for j in range(p):
                    out[j] = T(act_value(src[j] + bk, code, alpha))


@njit(**JIT)
def _dz_act(dy, y, z, dz, alpha, code):
    """dz (F, B, P) = dy (B, F, P) * act'(.), the layout of the group's GEMMs; returns
    the group's d loss / d alpha (prelu). ``code``: a literal, as _bias_act's.
    (activation.dz_rows is this over rows of one layout: through the (F, B, P)
    view's rows, of unknown stride to LLVM, its loop would not vectorize.)"""
    literally(code)
    nb, f, p = dy.shape
    T = dy.dtype.type
    asum = 0.0
    for b in range(nb):
        for k in range(f):
            dyk, yk, zk, dzk = dy[b, k], y[b, k], z[b, k], dz[k, b]
            for j in range(p):
                dzk[j] = dyk[j] * T(act_grad(zk[j], yk[j], code, alpha))
            if code == PRELU:
                for j in range(p):
                    if not zk[j] > 0:
                        asum += dyk[j] * zk[j]
    return asum


def _blocks(n, ckk, p, itemsize):
    """The fixed blocks of images of the backward, [bounds[t], bounds[t + 1]): a
    function of the shapes only. About _BLOCK_BYTES of columns each, between
    _MIN_BLOCKS and _MAX_BLOCKS blocks: every block costs a task and a weight
    partial sum, and on 2 threads a 3->32 layer's backward (64 images of 32x32)
    ran 5.9 ms in 16 blocks against 4.6 in 4; 32->32 23.0 ms against 21.9 in 8."""
    count = -(-n * ckk * p * itemsize // _BLOCK_BYTES)
    count = min(n, _MAX_BLOCKS, max(_MIN_BLOCKS, count))
    return [t * n // count for t in range(count + 1)] if count else [0]


def _group(ckk, p, itemsize):
    """Images per im2col + GEMM group (a function of the shapes only)."""
    return max(1, _GROUP_BYTES // max(1, ckk * p * itemsize))


def _pointwise(kh, kw, stride_h, stride_w, pad_h, pad_w):
    """A 1x1 convolution, stride 1, no padding: image n's columns are x[n] (C, P)
    as it is, so no im2col or col2im pass (csrc/cpu/conv.cpp's plain GEMM): the
    group's products are stacked matmuls over (B, C, P) and (B, F, P) directly
    (64->64 at 16x16 forward 3.3 -> 2.3 ms against im2col)."""
    return kh == kw == stride_h == stride_w == 1 and pad_h == pad_w == 0


@njit(**JIT)
def _gemm(gemm, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc, one):
    """c (m, n) = op(a) @ op(b) + beta c through runtime.gemm_call: a, b, c data
    addresses; beta and one (1) of the matrices' type."""
    gemm_call(gemm, np.int64(trans_a), np.int64(trans_b), np.int64(m), np.int64(n), np.int64(k), one, a,
              np.int64(lda), b, np.int64(ldb), beta, c, np.int64(ldc))


@functools.cache
def _forward_kernel(code):
    """The forward for one activation code: a closure over the code alone (Numba's
    disk cache keys a closure by its cells), which reaches _bias_act as a constant."""

    @njit(parallel=True, **JIT)
    def forward(x, w2, bias, has_bias, y3, z3, save_z, alpha, geo, group, bufs, gemm):
        """y = act(conv(x) + bias), groups of `group` images, bufs.shape[0] runs of
        consecutive groups, run r with the columns bufs[r, 0] and the GEMM's output
        bufs[r, 1]. geo: (kh, kw, sh, sw, ph, pw, oh, ow)."""
        kh, kw, sh, sw, ph, pw, oh, ow = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7]
        n, c = x.shape[0], x.shape[1]
        f, ckk = w2.shape
        p = oh * ow
        pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        T = y3.dtype.type
        one, zero = T(1.0), T(0.0)
        parts, ngroups = bufs.shape[0], (n + group - 1) // group
        for part in prange(parts):
            colbuf, accbuf = bufs[part, 0], bufs[part, 1]
            for gi in range(part * ngroups // parts, (part + 1) * ngroups // parts):
                g0 = gi * group
                g1 = min(n, g0 + group)
                nb = g1 - g0
                acc = accbuf[:f * nb * p].reshape((f, nb, p))
                if pointwise:  # W @ x[b] for each image, straight into y; the epilogue in place
                    for b in range(g0, g1):
                        _gemm(gemm, 0, 0, f, p, c, w2.ctypes.data, ckk, x[b].ctypes.data, p, zero, y3[b].ctypes.data,
                              p, one)
                    _bias_act(acc, y3[g0:g1], z3[g0:g1], bias, has_bias, save_z, alpha, True, code)
                    continue
                cols = colbuf[:ckk * nb * p].reshape((ckk, nb, p))
                _im2col(x[g0:g1], cols, kh, kw, sh, sw, ph, pw, oh, ow)
                # one image: the GEMM writes y, the epilogue works in place
                out = y3[g0].ctypes.data if nb == 1 else acc.ctypes.data
                _gemm(gemm, 0, 0, f, nb * p, ckk, w2.ctypes.data, ckk, cols.ctypes.data, nb * p, zero, out, nb * p,
                      one)
                _bias_act(acc, y3[g0:g1], z3[g0:g1], bias, has_bias, save_z, alpha, nb == 1, code)

    return forward


@functools.cache
def _backward_kernel(code):
    """The backward for one activation code (a closure over the code alone, as
    _forward_kernel's)."""

    @njit(parallel=True, **JIT)
    def backward(dy3, y3, z3, x, w2, dx, has_dx, alpha, geo, bounds, group, bufs, dw_parts, db_parts,
                 alpha_parts, gemm):
        """Block t of images [bounds[t], bounds[t + 1]), a group at a time: dz = dy * act'
        (F, B, P) in bufs[r, 1], its row sums into db_parts[t] (float64), d loss / d alpha
        into alpha_parts[t], dweight^T into dw_parts[t] (CKK, F), and dx = col2im(W^T dz)
        through the columns bufs[r, 0]: the blocks' sums, added in block order by the
        caller, do not depend on which thread took a block."""
        kh, kw, sh, sw, ph, pw, oh, ow = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7]
        c = x.shape[1]
        f, ckk = w2.shape
        p = oh * ow
        pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
        T = dy3.dtype.type
        one, zero = T(1.0), T(0.0)
        size = dy3.itemsize
        nblocks, parts = bounds.size - 1, bufs.shape[0]
        for part in prange(parts):
            colbuf, work = bufs[part, 0], bufs[part, 1]
            for t in range(part * nblocks // parts, (part + 1) * nblocks // parts):
                asum = 0.0
                dwt = dw_parts[t].ctypes.data
                for g0 in range(bounds[t], bounds[t + 1], group):
                    g1 = min(bounds[t + 1], g0 + group)
                    nb = g1 - g0
                    beta = zero if g0 == bounds[t] else one
                    dz = work[:f * nb * p].reshape((f, nb, p))
                    asum += _dz_act(dy3[g0:g1], y3[g0:g1], z3[g0:g1], dz, alpha, code)
                    add_row_sums(dz, db_parts[t])
                    if pointwise:  # image b's columns are x[b] (C, P) as it is
                        for b in range(nb):
                            dzb = dz.ctypes.data + b * p * size  # dz[:, b] (F, P), rows B P apart
                            # dweight^T += x[b] @ dz[:, b]^T, in image order
                            _gemm(gemm, 0, 1, c, f, p, x[g0 + b].ctypes.data, p, dzb, nb * p,
                                  beta if b == 0 else one, dwt, f, one)
                            if has_dx:
                                _gemm(gemm, 1, 0, c, p, f, w2.ctypes.data, ckk, dzb, nb * p, zero,
                                      dx[g0 + b].ctypes.data, p, one)
                        continue
                    cols = colbuf[:ckk * nb * p].reshape((ckk, nb, p))
                    _im2col(x[g0:g1], cols, kh, kw, sh, sw, ph, pw, oh, ow)
                    # dweight^T (CKK, F) (+)= cols (CKK, B P) @ dz^T: 1.45x faster than dz @ cols^T
                    _gemm(gemm, 0, 1, ckk, f, nb * p, cols.ctypes.data, nb * p, dz.ctypes.data, nb * p, beta, dwt, f,
                          one)
                    if has_dx:
                        _gemm(gemm, 1, 0, ckk, nb * p, f, w2.ctypes.data, ckk, dz.ctypes.data, nb * p, zero,
                              cols.ctypes.data, nb * p, one)
                        _col2im(cols, dx[g0:g1], kh, kw, sh, sw, ph, pw, oh, ow)
                alpha_parts[t] = asum

    return backward


def conv2d_forward(x, weight, bias, y, z, stride_h, stride_w, pad_h, pad_w, act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = y.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    if winograd.applies(kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, c, f, x.dtype):
        winograd.forward(x, weight, bias, y, z, pad_h, pad_w, act, alpha)
        return
    w2 = weight.reshape(f, ckk)
    y3 = y.reshape(n, f, p)
    save_z = ACTIVATIONS[act] in SAVES_PREACTIVATION
    z3 = z.reshape(n, f, p) if save_z else y3[:, :0]
    b = bias if bias is not None else w2[0, :0]
    group = _group(ckk, p, x.itemsize)
    # The forward sums nothing across images, so its runs need not be fixed blocks:
    # one run of consecutive groups per thread (16 blocks of a 3->32 layer's 64
    # images ran 3.2 ms on 2 threads as tasks, 2 tasks 1.9 ms: per-task cost).
    ngroups = -(-n // group)
    parts = min(ngroups, get_num_threads())
    gemm = blas_gemm(x.dtype)
    if gemm is None:  # the kernel's steps as run_tasks tasks around np.matmul
        pointwise = _pointwise(kh, kw, stride_h, stride_w, pad_h, pad_w)
        x3 = x.reshape(n, c, -1)
        starts = range(0, n, group)

        def task(t):
            with quiet_fp():
                for g0 in starts[t * len(starts) // parts:(t + 1) * len(starts) // parts]:
                    g1 = min(n, g0 + group)
                    acc = scratch("acc", (f, g1 - g0, p), y3.dtype)
                    if pointwise:
                        np.matmul(w2, x3[g0:g1], out=y3[g0:g1])
                        _bias_act(acc, y3[g0:g1], z3[g0:g1], b, bias is not None, save_z, alpha, True, act)
                        continue
                    cols = scratch("cols", (ckk, g1 - g0, p), x.dtype)
                    _im2col(x[g0:g1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
                    out = y3[g0] if g1 - g0 == 1 else acc.reshape(f, -1)
                    np.matmul(w2, cols.reshape(ckk, -1), out=out)
                    _bias_act(acc, y3[g0:g1], z3[g0:g1], b, bias is not None, save_z, alpha, g1 - g0 == 1, act)

        run_tasks(task, parts)
        return
    bufs = scratch("im2col_bufs", (parts, 2, max(ckk, f) * min(n, group) * p), x.dtype)
    geo = np.array((kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow), np.int64)
    with threads_for(y.size), one_blas_thread():
        _forward_kernel(act)(x, w2, b, bias is not None, y3, z3, save_z, alpha, geo, group, bufs, np.int64(gemm))


def conv2d_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, stride_h, stride_w, pad_h, pad_w,
                    act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    if winograd.applies(kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow, c, f, x.dtype):
        winograd.backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, pad_h, pad_w, act, alpha)
        return
    dy3, y3 = dy.reshape(n, f, p), y.reshape(n, f, p)
    z3 = z.reshape(n, f, p) if z is not None else y3
    w2 = weight.reshape(f, ckk)
    bounds, group = _blocks(n, ckk, p, x.itemsize), _group(ckk, p, x.itemsize)
    nblocks = len(bounds) - 1
    db_parts = np.zeros((nblocks, f))
    alpha_parts = np.zeros(nblocks)
    dw_parts = np.empty((nblocks, ckk, f), dy.dtype)  # transposed
    gemm = blas_gemm(x.dtype)
    if gemm is None:  # the kernel's steps as run_tasks tasks around np.matmul
        pointwise = _pointwise(kh, kw, stride_h, stride_w, pad_h, pad_w)
        x3 = x.reshape(n, c, -1)

        def block(t):
            asum = 0.0
            part = dw_parts[t]
            with quiet_fp():
                for g0 in range(bounds[t], bounds[t + 1], group):
                    g1 = min(bounds[t + 1], g0 + group)
                    dz = scratch("dz", (f, g1 - g0, p), dy3.dtype)
                    asum += _dz_act(dy3[g0:g1], y3[g0:g1], z3[g0:g1], dz, alpha, act)
                    add_row_sums(dz, db_parts[t])
                    if pointwise:
                        dzb = dz.transpose(1, 0, 2)  # (B, F, P)
                        contrib = np.matmul(x3[g0:g1], dzb.transpose(0, 2, 1)).sum(axis=0)
                        if g0 == bounds[t]:
                            part[...] = contrib
                        else:
                            part += contrib
                        if dx is not None:
                            np.matmul(w2.T, dzb, out=dx.reshape(x3.shape)[g0:g1])
                        continue
                    cols = scratch("cols", (ckk, g1 - g0, p), x.dtype)
                    _im2col(x[g0:g1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
                    cols2, dz2 = cols.reshape(ckk, -1), dz.reshape(f, -1)
                    if g0 == bounds[t]:
                        np.matmul(cols2, dz2.T, out=part)
                    else:
                        part += cols2 @ dz2.T
                    if dx is not None:
                        np.matmul(w2.T, dz2, out=cols2)
                        _col2im(cols, dx[g0:g1], kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
            alpha_parts[t] = asum

        run_tasks(block, nblocks)
    else:
        parts = max(1, min(nblocks, get_num_threads()))
        bufs = scratch("im2col_bufs", (parts, 2, max(ckk, f) * min(n, group) * p), x.dtype)
        with threads_for(dy.size), one_blas_thread():
            _backward_kernel(act)(dy3, y3, z3, x, w2, dx if dx is not None else x[:0], dx is not None, alpha,
                                  np.array((kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow), np.int64),
                                  np.array(bounds, np.int64), group, bufs, dw_parts,
                                  db_parts, alpha_parts, np.int64(gemm))
    if dbias is not None:
        dbias[...] = db_parts.sum(axis=0)
    if dalpha is not None:
        dalpha[0] = alpha_parts.sum()
    with quiet_fp():
        dweight.reshape(f, ckk)[...] = dw_parts.sum(axis=0).T
