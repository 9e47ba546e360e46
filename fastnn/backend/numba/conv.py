"""2-D convolution as im2col + GEMM with the bias + activation epilogue fused
(csrc/cpu/conv.cpp; Chellapilla et al. 2006, the Caffe/PyTorch-CPU formulation).

Shapes: x (N, C, H, W), weight (F, C, KH, KW) viewed as (F, CKK), y, z, dy, dz
(N, F, OH, OW) viewed as (N, F, P), P = OH*OW. Image by image:
  cols[(c, ki, kj), (oh, ow)] = x[n, c, oh*SH - PH + ki, ow*SW - PW + kj]  (0 outside)
  forward   y[n] = act(W @ cols + bias[f])
  backward  dz[n] = dy[n] * act'(z or y), dbias[f] = sum over n, p of dz,
            dweight = sum over n of dz[n] @ cols^T, dx[n] = col2im(W^T @ dz[n])
Serial Numba loops and single-threaded matmuls on a group of images at a time
(as many as fit _GROUP_BYTES of columns, which stay in the core's cache), as
tasks of runtime.run_tasks on fastnn's threads: the forward one run of
consecutive groups per thread, the backward fixed blocks of images (a function
of the shapes only). The weight and bias gradients are summed per block, then
over the blocks in order, so no result depends on the thread count.
"""
from __future__ import annotations

import functools

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from . import conv_winograd as winograd
from .activation import PRELU, act_grad, act_value
from .runtime import JIT, get_num_threads, njit, quiet_fp, run_tasks, scratch

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


@functools.cache
def _epilogue_kernels(code):
    """(bias_act, dz_act) for a group of images, compiled for one activation code
    as a constant, as csrc/cpu/conv.cpp's visit_act picks one template instance:
    with the runtime code in the loop every element went through the activation
    switch and the loops stayed scalar; with it constant each run of P values
    vectorizes."""

    @njit(**JIT)
    def bias_act(acc, y, z, bias, has_bias, save_z, alpha, in_place):
        """y (B, F, P) <- act(acc (F, B, P) + bias[f]); z <- the pre-activation when
        kept. in_place: acc is y itself (a view of y's memory), and the rows are
        then taken from y alone (through two views of the same memory LLVM's
        overlap check sends the loop down its scalar path: 0.8-1.25 ms for 64
        images of 32 x 1024 against 0.35)."""
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
    def dz_act(dy, y, z, dz, alpha):
        """dz (F, B, P) = dy (B, F, P) * act'(.); returns the group's d loss / d alpha
        (prelu). dbias is summed by the caller (_add_dbias)."""
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

    return bias_act, dz_act


def _add_dbias(dz, dbias):
    """dbias (F,) float64 += the sum of dz (F, B, P) over (b, p): one dot per image
    row (float32, a matrix-vector product in NumPy's BLAS), then those in float64,
    image by image. The 16-lane float64 sum this replaces stayed scalar in Numba
    (the lanes and dz may alias, as far as LLVM knows): 0.72 ms against 0.12 ms
    for 64 images of 32 x 1024 on one thread."""
    rows = np.matmul(dz, np.ones(dz.shape[2], dz.dtype))  # (F, B)
    for b in range(rows.shape[1]):
        dbias += rows[:, b]


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
    z3 = z.reshape(n, f, p) if save_z else np.empty((n, 0, 0), y.dtype)
    b = bias if bias is not None else np.empty(0, y.dtype)
    bias_act = _epilogue_kernels(act)[0]
    pointwise = _pointwise(kh, kw, stride_h, stride_w, pad_h, pad_w)
    x3 = x.reshape(n, c, x.shape[2] * x.shape[3])  # the columns of a pointwise conv
    group = _group(ckk, p, x.itemsize)
    starts = range(0, n, group)  # fixed groups of images: the GEMMs do not depend on the thread count
    # The forward sums nothing across images, so its tasks need not be fixed
    # blocks: one run of consecutive groups per thread (16 blocks of a 3->32
    # layer's 64 images ran 3.2 ms on 2 threads, 2 tasks 1.9 ms: per-task cost).
    ntasks = min(len(starts), get_num_threads())
    has_bias = bias is not None

    def task(t):
        with quiet_fp():
            for g0 in starts[t * len(starts) // ntasks:(t + 1) * len(starts) // ntasks]:
                g1 = min(n, g0 + group)
                if pointwise:  # W @ x[b] for each image, straight into y; the epilogue in place
                    np.matmul(w2, x3[g0:g1], out=y3[g0:g1])
                    bias_act(y3[g0:g1].transpose(1, 0, 2), y3[g0:g1], z3[g0:g1], b, has_bias, save_z, alpha, True)
                    continue
                cols = scratch("cols", (ckk, g1 - g0, p), x.dtype)
                _im2col(x[g0:g1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
                if g1 - g0 == 1:  # one image: the GEMM writes y, the epilogue works in place
                    np.matmul(w2, cols[:, 0], out=y3[g0])
                    bias_act(y3[g0][:, None], y3[g0:g1], z3[g0:g1], b, has_bias, save_z, alpha, True)
                else:
                    acc = scratch("acc", (f, g1 - g0, p), y.dtype)
                    np.matmul(w2, cols.reshape(ckk, -1), out=acc.reshape(f, -1))
                    bias_act(acc, y3[g0:g1], z3[g0:g1], b, has_bias, save_z, alpha, False)

    run_tasks(task, ntasks)


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
    dz_act = _epilogue_kernels(act)[1]
    pointwise = _pointwise(kh, kw, stride_h, stride_w, pad_h, pad_w)
    x3 = x.reshape(n, c, x.shape[2] * x.shape[3])  # the columns of a pointwise conv
    bounds, group = _blocks(n, ckk, p, x.itemsize), _group(ckk, p, x.itemsize)
    nblocks = len(bounds) - 1
    db_parts = np.zeros((nblocks, f))
    alpha_parts = np.zeros(nblocks)
    dw_parts = np.empty((nblocks, ckk, f), dy.dtype)  # transposed

    def block(t):
        asum = 0.0
        part = dw_parts[t]
        with quiet_fp():
            for g0 in range(bounds[t], bounds[t + 1], group):
                g1 = min(bounds[t + 1], g0 + group)
                if pointwise:  # dz as (B, F, P) for the stacked matmuls; dz_act writes its (F, B, P) view
                    dzb = scratch("dz", (g1 - g0, f, p), dy.dtype)
                    dz = dzb.transpose(1, 0, 2)
                else:
                    dz = scratch("dz", (f, g1 - g0, p), dy.dtype)
                asum += dz_act(dy3[g0:g1], y3[g0:g1], z3[g0:g1], dz, alpha)
                _add_dbias(dz, db_parts[t])
                if pointwise:
                    # dweight^T += sum over the group's images of x[b] @ dz[b]^T, in image order
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
                # dweight^T: (CKK, P) @ (P, F) ran 1.45x faster than dz @ cols^T
                if g0 == bounds[t]:
                    np.matmul(cols2, dz2.T, out=part)
                else:
                    part += cols2 @ dz2.T
                if dx is not None:
                    np.matmul(w2.T, dz2, out=cols2)
                    _col2im(cols, dx[g0:g1], kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        alpha_parts[t] = asum

    run_tasks(block, nblocks)
    if dbias is not None:
        dbias[...] = db_parts.sum(axis=0)
    if dalpha is not None:
        dalpha[0] = alpha_parts.sum()
    with quiet_fp():
        dweight.reshape(f, ckk)[...] = dw_parts.sum(axis=0).T
