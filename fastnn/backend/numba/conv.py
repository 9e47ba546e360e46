"""2-D convolution as im2col + GEMM with the bias + activation epilogue fused
(csrc/cpu/conv.cpp; Chellapilla et al. 2006, the Caffe/PyTorch-CPU formulation).

Shapes: x (N, C, H, W), weight (F, C, KH, KW) viewed as (F, CKK), y, z, dy, dz
(N, F, OH, OW) viewed as (N, F, P), P = OH*OW. Columns of a chunk of B images
are laid out (CKK, B, P) so its GEMM is one 2-D matmul:
  cols[(c, ki, kj), b, (oh, ow)] = x[b, c, oh*SH - PH + ki, ow*SW - PW + kj]  (0 outside)
  forward   y = act(W @ cols + bias[f])
  backward  dz = dy * act'(z or y), dbias[f] = sum over n, p of dz,
            dweight = sum over chunks dz @ cols^T, dx = col2im(W^T @ dz)
"""
from __future__ import annotations

import functools
import threading

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from . import conv_winograd as winograd
from .activation import IDENTITY, PRELU, act_grad, act_value
from .runtime import JIT, njit, prange, quiet_fp, threads_for


@njit(parallel=True, **JIT)
def _im2col(x, cols, kh, kw, sh, sw, ph, pw, oh, ow):
    """cols[(c, ki, kj), b, (i, j)] = x[b, c, i*sh - ph + ki, j*sw - pw + kj], 0 outside.
    The (CKK, B, P) layout makes the chunk's GEMM one 2-D BLAS call."""
    nb, c, h, w = x.shape
    ckk = c * kh * kw
    for t in prange(nb * ckk):
        b = t // ckk
        r = t % ckk
        ch = r // (kh * kw)
        ki = (r // kw) % kh
        kj = r % kw
        for i in range(oh):
            ih = i * sh - ph + ki
            for j in range(ow):
                iw = j * sw - pw + kj
                if 0 <= ih < h and 0 <= iw < w:
                    cols[r, b, i * ow + j] = x[b, ch, ih, iw]
                else:
                    cols[r, b, i * ow + j] = 0


@njit(parallel=True, **JIT)
def _col2im(cols, dx, kh, kw, sh, sw, ph, pw, oh, ow):
    """dx = the scatter-add of cols back into (B, C, H, W); one (b, c) plane per task."""
    nb, c, h, w = dx.shape
    for t in prange(nb * c):
        b = t // c
        ch = t % c
        for ih in range(h):
            for iw in range(w):
                dx[b, ch, ih, iw] = 0
        for ki in range(kh):
            for kj in range(kw):
                r = (ch * kh + ki) * kw + kj
                for i in range(oh):
                    ih = i * sh - ph + ki
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(ow):
                        iw = j * sw - pw + kj
                        if 0 <= iw < w:
                            dx[b, ch, ih, iw] += cols[r, b, i * ow + j]


@functools.cache
def _epilogue_kernels(code):
    """(bias_act, dz) compiled for one activation code as a constant, as
    csrc/cpu/conv.cpp's visit_act picks one template instance: with the runtime
    code in the loop every element went through the activation switch and the
    loops stayed scalar; with it constant each run of P values vectorizes."""

    @njit(parallel=True, **JIT)
    def bias_act(acc, y, z, bias, has_bias, save_z, alpha):
        """y (B, F, P) <- act(acc (F, B, P) + bias[f]); z <- the pre-activation when kept."""
        f, n, p = acc.shape
        T = y.dtype.type
        for t in prange(n * f):
            i = t // f
            k = t % f
            src = acc[k, i]
            out = y[i, k]
            bk = bias[k] if has_bias else T(0)
            if save_z:
                zk = z[i, k]
                for j in range(p):
                    zk[j] = src[j] + bk
            for j in range(p):
                out[j] = T(act_value(src[j] + bk, code, alpha))

    @njit(parallel=True, **JIT)
    def dz_bias(dy, y, z, dz, dbias, alpha):
        """dz = dy * act'(.) over (N, F, P), dbias[f] = sum over n, p (float64 lanes, fixed
        order); returns d loss / d alpha, summed in filter order (thread-count independent)."""
        n, f, p = dy.shape
        T = dy.dtype.type
        alpha_parts = np.zeros(f, np.float64)
        for k in prange(f):
            lanes = np.zeros(p)
            asum = 0.0
            for i in range(n):
                dyk, yk, zk, dzk = dy[i, k], y[i, k], z[i, k], dz[i, k]
                for j in range(p):
                    d = dyk[j] * T(act_grad(zk[j], yk[j], code, alpha))
                    dzk[j] = d
                    lanes[j] += d
                if code == PRELU:
                    for j in range(p):
                        if not zk[j] > 0:
                            asum += dyk[j] * zk[j]
            total = 0.0
            for j in range(p):
                total += lanes[j]
            dbias[k] = total
            alpha_parts[k] = asum
        total = 0.0
        for k in range(f):
            total += alpha_parts[k]
        return total

    return bias_act, dz_bias


def _conv_chunk(ckk, p, itemsize):
    """Images per im2col chunk: the columns of a chunk stay under ~32 MiB. Few large
    chunks, not many cache-sized ones: every chunk alternates a Numba (OpenMP)
    region with a NumPy (OpenBLAS) GEMM, and the OpenMP workers left spinning after
    each region take the cores from the BLAS threads (4 MiB chunks measured 19x
    slower than C++ against 4-8x for 32 MiB)."""
    return max(1, (32 << 20) // max(1, ckk * p * itemsize))


# One columns buffer per calling thread, kept across calls: a fresh multi-MiB
# np.empty per chunk cost a page fault per 4 KiB page on every call. Per thread,
# because ranks of fastnn.distributed may run as threads of one process.
_SCRATCH = threading.local()


def _cols_buffer(ckk, nb, p, dtype):
    need = ckk * nb * p
    buf = getattr(_SCRATCH, "cols", None)
    if buf is None or buf.dtype != dtype or buf.size < need:
        buf = _SCRATCH.cols = np.empty(need, dtype)
    return buf[:need].reshape(ckk, nb, p)


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
    z3 = z.reshape(n, f, p) if save_z else np.empty((0, 0, 0), y.dtype)
    b = bias if bias is not None else np.empty(0, y.dtype)
    step = _conv_chunk(ckk, p, x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        cols = _cols_buffer(ckk, b1 - b0, p, x.dtype)
        with threads_for(cols.size):
            _im2col(x[b0:b1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        with quiet_fp():
            acc = np.matmul(w2, cols.reshape(ckk, -1)).reshape(f, b1 - b0, p)
        with threads_for(acc.size):
            _epilogue_kernels(act)[0](acc, y3[b0:b1], z3[b0:b1] if save_z else z3, b, bias is not None, save_z,
                                      alpha)


def conv2d_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, stride_h, stride_w, pad_h, pad_w,
                    act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    dz3 = dz_work.reshape(n, f, p)
    zz = z if z is not None else y
    db = dbias if dbias is not None else np.empty(f, dy.dtype)
    with threads_for(dy.size):
        total = _epilogue_kernels(act)[1](dy.reshape(n, f, p), y.reshape(n, f, p), zz.reshape(n, f, p), dz3, db,
                                          alpha)
    if dalpha is not None:
        dalpha[0] = total
    if winograd.applies(kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow):
        winograd.dweight(x, dz_work, pad_h, pad_w, dweight)
        if dx is not None:  # dx = dz convolved with the turned weights, padding 2 - p
            u = winograd.transform_weights(weight, for_dx=True)
            winograd.conv(dz_work, u, None, dx, None, 2 - pad_h, 2 - pad_w, IDENTITY, 0.0)
        return
    w2 = weight.reshape(f, ckk)
    dw = np.zeros((f, ckk), dy.dtype)
    step = _conv_chunk(ckk, p, x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        cols = _cols_buffer(ckk, b1 - b0, p, x.dtype)
        with threads_for(cols.size):
            _im2col(x[b0:b1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        dzt = np.ascontiguousarray(dz3[b0:b1].transpose(1, 0, 2)).reshape(f, -1)   # (F, B*P)
        with quiet_fp():
            dw += dzt @ cols.reshape(ckk, -1).T
            if dx is not None:
                np.matmul(w2.T, dzt, out=cols.reshape(ckk, -1))
        if dx is not None:
            with threads_for(cols.size):
                _col2im(cols, dx[b0:b1], kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
    dweight.reshape(f, ckk)[...] = dw
