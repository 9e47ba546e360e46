"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1 convolutions
(csrc/cpu/conv_winograd.cpp; Lavin & Gray, CVPR 2016).

Each 2x2 block of outputs (a tile) of output channel f is
  Y = A^T [ sum_c U[f, c] (.) V[c] ] A,  U = G g G^T (4x4, from the 3x3 filter g[f, c]),
                                         V = B^T d B (4x4, from the tile's input patch d[c]),
16 multiply-adds per (f, c) and tile where a direct convolution does 36: one
GEMM per position xi of the 4x4 transform domain, M[xi] (F, T) = U[xi] (F, C) @
V[xi] (C, T), here one batched np.matmul over the 16 positions.
  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
  G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  A^T = [1 1 1 0; 0 1 -1 -1]
Backward: dx is the same convolution of dz with each filter turned 180 degrees
and C, F swapped, padding 2 - p; dweight = G^T dU G with dU[xi] = sum over
tiles dM[xi] (F, T) @ V[xi]^T, dM = A dY A^T. Tiles are numbered
l = (b * TH + i) * TW + j within a chunk of images; outputs past OH/OW are
computed and dropped, their dY is zero.
"""
from __future__ import annotations

import functools

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from .activation import act_value
from .runtime import JIT, njit, prange, quiet_fp, scratch, threads_for

# Groups of tasks a parallel transform splits its work into (row buffers allocated once per group).
_GROUPS = 64


@njit(**JIT)
def _group_tasks(grp, ntasks):
    """The tasks [begin, end) of group grp when ntasks are split into _GROUPS groups."""
    per = (ntasks + _GROUPS - 1) // _GROUPS
    return grp * per, min(ntasks, (grp + 1) * per)

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

# 'auto' or 'im2col': im2col + GEMM; 'winograd': this path wherever it applies
# (set_algorithm). Unlike the C++ backend, 'auto' keeps im2col here: in a
# Numba-only process, Conv2d 32->32 3x3 + ReLU on (64, 32, 32, 32) ran forward
# 20 ms / backward 43 ms with im2col against 25 / 67 ms with this path (and
# im2col now runs image by image on Python threads: 13.5 / 25 ms). Its GEMMs are
# cheaper, but each chunk alternates three Numba parallel regions with the
# OpenBLAS matmuls, and the transforms, scalar loops over (image, channel) here,
# do not vectorize as the C++ ones do. It stays the readable mirror of
# conv_winograd.cpp, tested against the same references. Measured again on one
# thread (2026-11-30, 32->32 at 32x32, 64 images): input transform 9.8 ms, dY
# transform 7.4 ms, output transform 5.5 ms, against 10.5 ms for the 16 batched
# GEMMs; im2col's forward takes 24 ms. Much of that is memory: a chunk's V and M
# (up to 32 MiB each) leave the caches, while the C++ path transforms, multiplies
# and transforms back blocks that stay in L2. On chunks of 2 images (in cache)
# the same loops take 6.0 / 5.6 ms per 64 images (32x32) and 3.2 / 2.9 ms (16x16);
# L2-sized blocks as tasks (as the im2col path's groups), with transforms at a
# third of that, would make this path about 1.5x faster than im2col here.
_ALGORITHM = ["auto"]


def set_algorithm(name):
    if name not in ("auto", "im2col", "winograd"):
        raise ValueError(f"algorithm must be 'auto', 'im2col' or 'winograd', got {name!r}")
    _ALGORITHM[0] = name


def applies(kh, kw, sh, sw, ph, pw, oh, ow):
    """Whether a convolution takes the Winograd path: 3x3, stride 1, padding <= 2, and asked for."""
    if (kh, kw, sh, sw) != (3, 3, 1, 1) or ph > 2 or pw > 2 or oh < 1 or ow < 1:
        return False
    return _ALGORITHM[0] == "winograd"


def transform_weights(weight, for_dx=False):
    """U (16, rows, cols) = G g G^T per filter; rows = F, cols = C (forward) or, for dx,
    rows = C, cols = F with each filter turned 180 degrees."""
    g = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3) if for_dx else weight
    u = np.einsum("ik,ockl,jl->ijoc", _G.astype(weight.dtype), g, _G.astype(weight.dtype))
    return np.ascontiguousarray(u.reshape(16, g.shape[0], g.shape[1]))


@njit(parallel=True, **JIT)
def _input_transform(x, v, ph, pw, th, tw):
    """v[xi, c, l] = (B^T d B)[xi] of tile l's 4x4 input patch d (0 outside the image).
    Per (image, channel, tile row): the rows of B^T d over the padded row, split into
    even (e) and odd (o) columns, then each tile's columns
    (e[t] - e[t+1], o[t] + e[t+1], e[t+1] - o[t], o[t] - o[t+1])."""
    nb, c, h, w = x.shape
    wp, te = 2 * tw + 2, tw + 1
    for grp in prange(_GROUPS):  # a few groups of (image, channel) tasks: one set of row buffers each
        rows = np.zeros((4, wp), x.dtype)
        eo = np.empty((8, te), x.dtype)
        begin, end = _group_tasks(grp, nb * c)
        for task in range(begin, end):
            b = task // c
            ch = task % c
            for i in range(th):
                for r in range(4):
                    ih = 2 * i - ph + r
                    if 0 <= ih < h:
                        for j in range(wp):
                            iw = j - pw
                            rows[r, j] = x[b, ch, ih, iw] if 0 <= iw < w else 0
                    else:
                        rows[r, :] = 0
                for t in range(te):
                    eo[0, t] = rows[0, 2 * t] - rows[2, 2 * t]
                    eo[1, t] = rows[0, 2 * t + 1] - rows[2, 2 * t + 1]
                    eo[2, t] = rows[1, 2 * t] + rows[2, 2 * t]
                    eo[3, t] = rows[1, 2 * t + 1] + rows[2, 2 * t + 1]
                    eo[4, t] = rows[2, 2 * t] - rows[1, 2 * t]
                    eo[5, t] = rows[2, 2 * t + 1] - rows[1, 2 * t + 1]
                    eo[6, t] = rows[1, 2 * t] - rows[3, 2 * t]
                    eo[7, t] = rows[1, 2 * t + 1] - rows[3, 2 * t + 1]
                l0 = (b * th + i) * tw
                for k in range(4):
                    e = eo[2 * k]
                    o = eo[2 * k + 1]
                    for t in range(tw):
                        v[4 * k, ch, l0 + t] = e[t] - e[t + 1]
                        v[4 * k + 1, ch, l0 + t] = o[t] + e[t + 1]
                        v[4 * k + 2, ch, l0 + t] = e[t + 1] - o[t]
                        v[4 * k + 3, ch, l0 + t] = o[t] - o[t + 1]


@njit(parallel=True, **JIT)
def _grad_transform(dy, m, th, tw):
    """m[xi, f, l] = (A dY A^T)[xi] of tile l's 2x2 block of dy (0 past OH/OW): with the
    block's rows (a, b) and (c, e), A dY = rows (a, b), (a + c, b + e), (a - c, b - e),
    (-c, -e), and each row (u, v) becomes (u, u + v, u - v, -v). Per (image, channel,
    tile row): the two output rows padded to 2 TW, then one pass along the tiles."""
    nb, f, oh, ow = dy.shape
    for grp in prange(_GROUPS):
        r = np.zeros((2, 2 * tw), dy.dtype)
        begin, end = _group_tasks(grp, nb * f)
        for task in range(begin, end):
            bi = task // f
            k = task % f
            for i in range(th):
                for rr in range(2):
                    oi = 2 * i + rr
                    for j in range(ow):
                        r[rr, j] = dy[bi, k, oi, j] if oi < oh else 0
                # Row k of A dY, as (u, v) per tile, then its four columns: one loop per row
                # keeps each to four store streams (sixteen in one loop did not vectorize).
                l0 = (bi * th + i) * tw
                for kk in range(4):
                    for t in range(tw):
                        a, b, c, e = r[0, 2 * t], r[0, 2 * t + 1], r[1, 2 * t], r[1, 2 * t + 1]
                        if kk == 0:
                            u, v = a, b
                        elif kk == 1:
                            u, v = a + c, b + e
                        elif kk == 2:
                            u, v = a - c, b - e
                        else:
                            u, v = -c, -e
                        m[4 * kk, k, l0 + t] = u
                        m[4 * kk + 1, k, l0 + t] = u + v
                        m[4 * kk + 2, k, l0 + t] = u - v
                        m[4 * kk + 3, k, l0 + t] = -v


@functools.cache
def _output_kernel(code):
    """The output transform compiled for one activation code as a constant (as the
    conv epilogue kernels): y = act(A^T M A + bias[f]), z = the pre-activation when kept."""
    @njit(parallel=True, **JIT)
    def output_transform(m, y, z, bias, has_bias, save_z, alpha, th, tw):
        nb, f, oh, ow = y.shape
        T = y.dtype.type
        for grp in prange(_GROUPS):
            r = np.empty((2, 2 * tw), y.dtype)
            begin, end = _group_tasks(grp, nb * f)
            for task in range(begin, end):
                bi = task // f
                k = task % f
                bk = bias[k] if has_bias else T(0)
                for i in range(th):
                    l0 = (bi * th + i) * tw
                    for t in range(tw):
                        q = m[:, k, l0 + t]
                        a0, a1 = q[0] + q[4] + q[8], q[1] + q[5] + q[9]
                        a2, a3 = q[2] + q[6] + q[10], q[3] + q[7] + q[11]
                        b0, b1 = q[4] - q[8] - q[12], q[5] - q[9] - q[13]
                        b2, b3 = q[6] - q[10] - q[14], q[7] - q[11] - q[15]
                        r[0, 2 * t], r[0, 2 * t + 1] = a0 + a1 + a2, a1 - a2 - a3
                        r[1, 2 * t], r[1, 2 * t + 1] = b0 + b1 + b2, b1 - b2 - b3
                    for rr in range(2):
                        oi = 2 * i + rr
                        if oi >= oh:
                            break
                        for j in range(ow):
                            pre = r[rr, j] + bk
                            if save_z:
                                z[bi, k, oi, j] = pre
                            y[bi, k, oi, j] = T(act_value(pre, code, alpha))

    return output_transform


def _chunk(per_image):
    """Images per chunk: the chunk's transform-domain arrays stay under ~32 MiB (few large
    chunks, as the im2col path: each alternates Numba regions with an OpenBLAS matmul)."""
    return max(1, (32 << 20) // max(1, per_image))


def conv(x, u, bias, y, z, ph, pw, act, alpha):
    """y = act(conv3x3(x, U) + bias), stride 1, padding (ph, pw); U from transform_weights."""
    n, c, h, w = x.shape
    f = u.shape[1]
    oh, ow = y.shape[2:]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    save_z = z is not None and ACTIVATIONS[act] in SAVES_PREACTIVATION
    zz = z if save_z else np.empty((0, 0, 0, 0), y.dtype)
    b = bias if bias is not None else np.empty(0, y.dtype)
    kernel = _output_kernel(act)
    step = _chunk(16 * (c + f) * th * tw * x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        v = scratch("v", (16, c, (b1 - b0) * th * tw), x.dtype)
        m = scratch("m", (16, f, (b1 - b0) * th * tw), x.dtype)
        with threads_for(v.size):
            _input_transform(x[b0:b1], v, ph, pw, th, tw)
        with quiet_fp():
            np.matmul(u, v, out=m)
        with threads_for(m.size):
            kernel(m, y[b0:b1], zz[b0:b1] if save_z else zz, b, bias is not None, save_z, alpha, th, tw)


def dweight(x, dz, ph, pw, out):
    """out (F, C, 3, 3) = the weight gradient from x and dz (N, F, OH, OW)."""
    n, c = x.shape[:2]
    f, oh, ow = dz.shape[1:]
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    du = np.zeros((16, f, c), dz.dtype)
    step = _chunk(16 * (c + f) * th * tw * x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        v = scratch("v", (16, c, (b1 - b0) * th * tw), x.dtype)
        m = scratch("m", (16, f, (b1 - b0) * th * tw), x.dtype)
        with threads_for(v.size):
            _input_transform(x[b0:b1], v, ph, pw, th, tw)
            _grad_transform(dz[b0:b1], m, th, tw)
        with quiet_fp():
            du += np.matmul(m, v.transpose(0, 2, 1))
    g = _G.astype(dz.dtype)
    out[...] = np.einsum("ki,ijfc,jl->fckl", g.T, du.reshape(4, 4, f, c), g)
