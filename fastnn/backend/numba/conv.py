"""2-D convolution as im2col + GEMM with the bias + activation epilogue fused
(csrc/cpu/conv.cpp; Chellapilla et al. 2006, the Caffe/PyTorch-CPU formulation).

Shapes: x (N, C, H, W), weight (F, C, KH, KW) viewed as (F, CKK), y, z, dy, dz
(N, F, OH, OW) viewed as (N, F, P), P = OH*OW. Image by image:
  cols[(c, ki, kj), (oh, ow)] = x[n, c, oh*SH - PH + ki, ow*SW - PW + kj]  (0 outside)
  forward   y[n] = act(W @ cols + bias[f])
  backward  dz[n] = dy[n] * act'(z or y), dbias[f] = sum over n, p of dz,
            dweight = sum over n of dz[n] @ cols^T, dx[n] = col2im(W^T @ dz[n])
The images are split into fixed blocks, each a task of runtime.run_tasks: serial
Numba loops and single-threaded matmuls on one image's columns at a time (they
stay in the core's cache), the blocks on fastnn's threads. The weight and bias
gradients are summed per block, then over the blocks in order, so the result
does not depend on the thread count.
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from . import conv_winograd as winograd
from .activation import IDENTITY, PRELU, act_grad, act_value
from .runtime import JIT, njit, quiet_fp, run_tasks

# At most this many blocks of images (tasks) per call: the weight-gradient
# partial sums take one (F, CKK) array per block.
_MAX_BLOCKS = 16


@njit(**JIT)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols[(c, ki, kj), (i, j)] = x[c, i*sh - ph + ki, j*sw - pw + kj], 0 outside; x one image."""
    c, h, w = x.shape
    for r in range(c * kh * kw):
        ch = r // (kh * kw)
        ki = (r // kw) % kh
        kj = r % kw
        row = cols[r]
        for i in range(oh):
            ih = i * sh - ph + ki
            for j in range(ow):
                iw = j * sw - pw + kj
                if 0 <= ih < h and 0 <= iw < w:
                    row[i * ow + j] = x[ch, ih, iw]
                else:
                    row[i * ow + j] = 0


@njit(**JIT)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, oh, ow):
    """dx (C, H, W) = the scatter-add of one image's columns."""
    c, h, w = dx.shape
    for ch in range(c):
        plane = dx[ch]
        for ih in range(h):
            for iw in range(w):
                plane[ih, iw] = 0
        for ki in range(kh):
            for kj in range(kw):
                row = cols[(ch * kh + ki) * kw + kj]
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
    """(bias_act, dz_bias) for one image, compiled for one activation code as a
    constant, as csrc/cpu/conv.cpp's visit_act picks one template instance: with
    the runtime code in the loop every element went through the activation switch
    and the loops stayed scalar; with it constant each run of P values vectorizes."""

    @njit(**JIT)
    def bias_act(y, z, bias, has_bias, save_z, alpha):
        """y (F, P) <- act(y + bias[f]) in place; z <- the pre-activation when kept."""
        f, p = y.shape
        T = y.dtype.type
        for k in range(f):
            yk = y[k]
            bk = bias[k] if has_bias else T(0)
            if save_z:
                zk = z[k]
                for j in range(p):
                    zk[j] = yk[j] + bk
            for j in range(p):
                yk[j] = T(act_value(yk[j] + bk, code, alpha))

    @njit(**JIT)
    def dz_bias(dy, y, z, dz, dbias, alpha):
        """dz (F, P) = dy * act'(.); dbias[f] (float64) += the sum over p of dz, in
        16 interleaved lanes (so the loop vectorizes) added in order; returns the
        image's d loss / d alpha (prelu)."""
        f, p = dy.shape
        T = dy.dtype.type
        lanes = np.zeros(16)
        asum = 0.0
        whole = p - p % 16
        for k in range(f):
            dyk, yk, zk, dzk = dy[k], y[k], z[k], dz[k]
            for j in range(p):
                dzk[j] = dyk[j] * T(act_grad(zk[j], yk[j], code, alpha))
            lanes[:] = 0.0
            for j0 in range(0, whole, 16):
                for t in range(16):
                    lanes[t] += dzk[j0 + t]
            total = 0.0
            for t in range(16):
                total += lanes[t]
            for j in range(whole, p):
                total += dzk[j]
            dbias[k] += total
            if code == PRELU:
                for j in range(p):
                    if not zk[j] > 0:
                        asum += dyk[j] * zk[j]
        return asum

    return bias_act, dz_bias


def _blocks(n):
    """The fixed blocks of images, [bounds[t], bounds[t + 1]): a function of n only."""
    count = min(n, _MAX_BLOCKS)
    return [t * n // count for t in range(count + 1)] if count else [0]


# One columns buffer per thread, kept across calls: a fresh np.empty per image
# cost a page fault per 4 KiB page every time.
_SCRATCH = threading.local()


def _cols_buffer(ckk, p, dtype):
    need = ckk * p
    buf = getattr(_SCRATCH, "cols", None)
    if buf is None or buf.dtype != dtype or buf.size < need:
        buf = _SCRATCH.cols = np.empty(need, dtype)
    return buf[:need].reshape(ckk, p)


def conv2d_forward(x, weight, bias, y, z, stride_h, stride_w, pad_h, pad_w, act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = y.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    if winograd.applies(kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow):
        winograd.conv(x, winograd.transform_weights(weight), bias, y, z, pad_h, pad_w, act, alpha)
        return
    w2 = weight.reshape(f, ckk)
    y3 = y.reshape(n, f, p)
    save_z = ACTIVATIONS[act] in SAVES_PREACTIVATION
    z3 = z.reshape(n, f, p) if save_z else np.empty((n, 0, 0), y.dtype)
    b = bias if bias is not None else np.empty(0, y.dtype)
    bias_act = _epilogue_kernels(act)[0]
    bounds = _blocks(n)

    def block(t):
        cols = _cols_buffer(ckk, p, x.dtype)
        for i in range(bounds[t], bounds[t + 1]):
            _im2col(x[i], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
            with quiet_fp():
                np.matmul(w2, cols, out=y3[i])
            bias_act(y3[i], z3[i], b, bias is not None, save_z, alpha)

    run_tasks(block, len(bounds) - 1)


def conv2d_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, stride_h, stride_w, pad_h, pad_w,
                    act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    dy3, y3, dz3 = dy.reshape(n, f, p), y.reshape(n, f, p), dz_work.reshape(n, f, p)
    z3 = z.reshape(n, f, p) if z is not None else y3
    w2 = weight.reshape(f, ckk)
    dz_bias = _epilogue_kernels(act)[1]
    winograd_path = winograd.applies(kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
    bounds = _blocks(n)
    nblocks = len(bounds) - 1
    db_parts = np.zeros((nblocks, f))
    alpha_parts = np.zeros(nblocks)
    dw_parts = None if winograd_path else np.empty((nblocks, ckk, f), dy.dtype)  # transposed

    def block(t):
        asum = 0.0
        if winograd_path:
            for i in range(bounds[t], bounds[t + 1]):
                asum += dz_bias(dy3[i], y3[i], z3[i], dz3[i], db_parts[t], alpha)
            alpha_parts[t] = asum
            return
        cols = _cols_buffer(ckk, p, x.dtype)
        part = dw_parts[t]
        for i in range(bounds[t], bounds[t + 1]):
            asum += dz_bias(dy3[i], y3[i], z3[i], dz3[i], db_parts[t], alpha)
            _im2col(x[i], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
            with quiet_fp():  # dweight^T: (CKK, P) @ (P, F) ran 1.45x faster than dz @ cols^T
                if i == bounds[t]:
                    np.matmul(cols, dz3[i].T, out=part)
                else:
                    part += cols @ dz3[i].T
                if dx is not None:
                    np.matmul(w2.T, dz3[i], out=cols)
            if dx is not None:
                _col2im(cols, dx[i], kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        alpha_parts[t] = asum

    run_tasks(block, nblocks)
    if dbias is not None:
        dbias[...] = db_parts.sum(axis=0)
    if dalpha is not None:
        dalpha[0] = alpha_parts.sum()
    if winograd_path:
        winograd.dweight(x, dz_work, pad_h, pad_w, dweight)
        if dx is not None:  # dx = dz convolved with the turned weights, padding 2 - p
            u = winograd.transform_weights(weight, for_dx=True)
            winograd.conv(dz_work, u, None, dx, None, 2 - pad_h, 2 - pad_w, IDENTITY, 0.0)
        return
    with quiet_fp():
        dweight.reshape(f, ckk)[...] = dw_parts.sum(axis=0).T
