"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1 convolutions
(csrc/cpu/conv_winograd.cpp; Lavin & Gray, CVPR 2016).

Each 2x2 block of outputs (a tile) of output channel f is
  Y = A^T [ sum_c U[f, c] (.) V[c] ] A,  U = G g G^T (4x4, from the 3x3 filter g[f, c]),
                                         V = B^T d B (4x4, from the tile's input patch d[c]),
16 multiply-adds per (f, c) and tile where a direct convolution does 36: one
GEMM per position xi of the 4x4 transform domain, M[xi] (F, T) = U[xi] (F, C) @
V[xi] (C, T), one OpenBLAS ?gemm per position and band.
  B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
  G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
  A^T = [1 1 1 0; 0 1 -1 -1]
Backward: dx is the same convolution of dz with each filter turned 180 degrees
and C, F swapped, padding 2 - p; dweight = G^T dU G with dU[xi] = sum over
tiles dM[xi] (F, T) @ V[xi]^T, dM = A dY A^T. Outputs past OH/OW are computed
and dropped, their dY is zero.

The batch is cut into bands: several whole images, or whole tile rows of one
image, as many as keep a band's V and M within _BAND_BYTES (about the core's
L2), a split that depends on the shapes only. Each band is transformed,
multiplied and transformed back while it is in cache, as conv_winograd.cpp
does. A pass (forward; backward: dz, dbias, dU and dx) is one parallel Numba
region: forward a run of bands per thread, backward min(N, 16) fixed blocks of
images whose dU, dbias and d alpha partial sums are added in block order, so no
result depends on the thread count. The 16 GEMMs of a band are NumPy's OpenBLAS
?gemm called from the compiled code (runtime.gemm_call, GIL released, the
library on one thread meanwhile). Run instead as Python-thread tasks around
np.matmul, each band handed the GIL back and forth 3 times; after a 0.15 s
pause those hand-offs (idle vCPUs waking) made Conv2d 32->64 at 16x16 fwd+bwd
15-16 ms for the next 4 calls against 9 ms, and in one region it takes 8.
Where NumPy's BLAS has no such gemm, 3x3 convs take im2col (applies).

The transforms vectorize along a band's tiles. A padded map is split into its
four parity planes P[a, b][i, t] = xpad[2i + a, 2t + b] (t < TE = TW + 1),
gathered through an index table of the band (a row-by-row copy of TE values at
a time took 3x as long), once for the tile rows i (patch rows d0, d1) and once
for i + 1 (d2, d3), flat over (channel, image, tile) with tile q = (b * rows +
i) * TE + t. Tile q's 4x4 patch is then those planes at q and q + 1, so each
step of a transform is one long loop with constant offsets, LLVM's vector loop
whatever the map's width (loops over one tile row of a 16x16 map, 8 tiles,
never reached a 16-lane vector body). The price is one extra tile per tile row
(t = TW, its V set to 0, its outputs dropped): 1/TE more GEMM columns. The adds
are those of the per-tile formulas below, in conv_winograd.cpp's order.

Measured on a 2-core Zen 5 (AVX-512; NumPy's OpenBLAS on its Haswell kernels,
OPENBLAS_CORETYPE=Haswell), Conv2d+ReLU fwd+bwd at batch 64, against im2col +
GEMM in Numba: 32->32 at 32x32 23.6 -> 17.6 ms, 32->64 at 16x16 9.7 -> 8.3 ms,
64->64 at 16x16 21.3 -> 12.8 ms; the 16 GEMMs take about 60% of that.
"""
from __future__ import annotations

import functools

import numpy as np

from ..codes import ACTIVATIONS, SAVES_PREACTIVATION
from .activation import IDENTITY, act_value, add_row_sums, dz_rows
from .runtime import (JIT, blas_gemm, gemm_call, get_num_threads, literally, njit, one_blas_thread, prange,
                      scratch, threads_for)

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

# The backward's fixed blocks of images (each sums its own dU, dbias and d alpha).
_MAX_BLOCKS = 16

# A band's V and M (16 * (C + F) values per tile): about one 1-2 MiB L2 (whole 16x16 and
# 32x32 maps of up to 64 channels: their GEMMs, 72-272 tiles wide, ran faster than halves).
_BAND_BYTES = 1 << 20

# 'auto': Winograd where both channel counts are >= 16 (as the C++ backend:
# below that the 16 GEMMs are too thin to pay for the transforms), 'im2col':
# im2col + GEMM, 'winograd': this path wherever it applies (set_algorithm).
_ALGORITHM = ["auto"]


def set_algorithm(name):
    if name not in ("auto", "im2col", "winograd"):
        raise ValueError(f"algorithm must be 'auto', 'im2col' or 'winograd', got {name!r}")
    _ALGORITHM[0] = name


def applies(kh, kw, sh, sw, ph, pw, oh, ow, c, f, dtype):
    """Whether a convolution takes the Winograd path: 3x3, stride 1, padding <= 2, NumPy's
    OpenBLAS has a ?gemm for dtype (its GEMMs are called from the Numba kernels), and
    'winograd', or 'auto' with C, F >= 16."""
    if (kh, kw, sh, sw) != (3, 3, 1, 1) or ph > 2 or pw > 2 or oh < 1 or ow < 1 or blas_gemm(dtype) is None:
        return False
    algo = _ALGORITHM[0]
    return algo == "winograd" or (algo == "auto" and c >= 16 and f >= 16)


def transform_weights(weight, for_dx=False):
    """U (16, rows, cols) = G g G^T per filter; rows = F, cols = C (forward) or, for dx,
    rows = C, cols = F with each filter turned 180 degrees."""
    f, c = weight.shape[:2]
    u = np.empty((16, c, f) if for_dx else (16, f, c), weight.dtype)
    _weights_forward(weight, u, for_dx)
    return u


@njit(**JIT)
def _weights_forward(weight, u, for_dx):
    """u[4i + j, f, c] (u[., c, f] for dx, the filter turned) = (G g G^T)[i, j] of g = weight[f, c]:
    rows of G g = (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), then the same on each row."""
    nf, nc = weight.shape[:2]
    T = weight.dtype.type
    half = T(0.5)
    gg = np.empty((4, 3), weight.dtype)
    for f in range(nf):
        for c in range(nc):
            g = weight[f, c]
            for k in range(3):
                col = 2 - k if for_dx else k
                g0, g1, g2 = (g[2, col], g[1, col], g[0, col]) if for_dx else (g[0, col], g[1, col], g[2, col])
                gg[0, k], gg[1, k] = g0, (g0 + g1 + g2) * half
                gg[2, k], gg[3, k] = (g0 - g1 + g2) * half, g2
            for i in range(4):
                r0, r1, r2 = gg[i, 0], gg[i, 1], gg[i, 2]
                row = (r0, (r0 + r1 + r2) * half, (r0 - r1 + r2) * half, r2)
                for j in range(4):
                    if for_dx:
                        u[4 * i + j, c, f] = row[j]
                    else:
                        u[4 * i + j, f, c] = row[j]


def bands(n, oh, ow, c, f, itemsize):
    """[(b0, b1, i0, rows)]: images [b0, b1), tile rows [i0, i0 + rows) of each, in bands of
    about _BAND_BYTES of V and M: whole images together where one fits, else each image's
    rows split evenly (a function of the shapes only)."""
    th, te = (oh + 1) // 2, (ow + 1) // 2 + 1
    most = max(1, _BAND_BYTES // (16 * (c + f) * te * itemsize))
    if most >= th:
        per = most // th
        return [(b0, min(n, b0 + per), 0, th) for b0 in range(0, n, per)]
    count = -(-th // most)
    rows = -(-th // count)
    return [(b, b + 1, i0, min(rows, th - i0)) for b in range(n) for i0 in range(0, th, rows)]


@njit(**JIT)
def _plane_index(h, w, ph, pw, r0, nrows, te):
    """idx[2a + b, i * te + t] = the flat index in an (h, w) map of padded pixel (r0 + 2i + a,
    2t + b), shifted by (ph, pw), or -1 outside the map: i < nrows, t < te. The parity planes
    are gathered through it, one loop per plane over a band's tiles (copying row by row,
    TE values at a time, took 3x as long)."""
    idx = np.empty((4, nrows * te), np.int64)
    for a in range(2):
        for i in range(nrows):
            r = r0 + 2 * i + a - ph
            for b in range(2):
                for t in range(te):
                    col = 2 * t + b - pw
                    inside = 0 <= r < h and 0 <= col < w
                    idx[2 * a + b, i * te + t] = r * w + col if inside else -1
    return idx


@njit(inline="always", **JIT)
def _gather(src, idx, dst):
    """dst[q] = src[idx[q]], 0 where idx[q] < 0."""
    for q in range(idx.size):
        i = idx[q]
        dst[q] = src[i] if i >= 0 else 0


@njit(**JIT)
def _gather_planes(src, idx, p, nb, nc, hw, one):
    """p[j, ch * nb * one + b * one + q] = map (b, ch) of src (nb maps of nc channels, hw
    values each, flat) at idx[j, q], 0 where idx < 0: the 4 parity planes of every map, flat
    over (channel, image, tile)."""
    for ch in range(nc):
        for b in range(nb):
            m = src[(b * nc + ch) * hw:(b * nc + ch + 1) * hw]
            at = (ch * nb + b) * one
            for j in range(4):
                _gather(m, idx[j], p[j, at:at + one])


@njit(**JIT)
def _input_transform(x, v, ph, pw, i0, rows, te, work):
    """v[xi, c * n + q] (v: (16, C * n), n = B * rows * te) = (B^T d B)[xi] of channel c's band
    tile q = (b * rows + i) * te + t (image b of x (B, C, H, W), tile row i0 + i; 0 at
    t = te - 1), d its 4x4 input patch. With the
    patch's rows d0..d3 (columns 2t .. 2t + 3): the rows of B^T d are (d0 - d2, d1 + d2,
    d2 - d1, d1 - d3), then each row (e0, o0, e1, o1) -> (e0 - e1, o0 + e1, e1 - o0, o0 - o1),
    as conv_winograd.cpp. Flat over (c, q): the patch rows are the parity planes of rows i
    (d0, d1) and i + 1 (d2, d3), columns t and t + 1, so each step is one long loop."""
    nb, c, h, w = x.shape
    one = rows * te
    n = nb * one
    size = c * n
    xf = x.ravel()
    near = _plane_index(h, w, ph, pw, 2 * i0, rows, te)  # rows i: planes (a, b) at [2a + b]
    far = _plane_index(h, w, ph, pw, 2 * i0 + 2, rows, te)  # rows i + 1
    p = work[:8 * (size + 1)].reshape((8, size + 1))  # [2a + b]: plane (a, b) at tile row i, [4 + 2a + b]: i + 1
    _gather_planes(xf, near, p[:4], nb, c, h * w, one)
    _gather_planes(xf, far, p[4:], nb, c, h * w, one)
    p[:, size] = 0
    tt = work[8 * (size + 1):16 * (size + 1)].reshape((8, size + 1))  # rows of B^T d, even (2k) / odd columns
    for par in range(2):
        d0, d1, d2, d3 = p[par], p[2 + par], p[4 + par], p[6 + par]
        t0, t1, t2, t3 = tt[par], tt[2 + par], tt[4 + par], tt[6 + par]
        for q in range(size + 1):
            t0[q] = d0[q] - d2[q]
        for q in range(size + 1):
            t1[q] = d1[q] + d2[q]
        for q in range(size + 1):
            t2[q] = d2[q] - d1[q]
        for q in range(size + 1):
            t3[q] = d1[q] - d3[q]
    for k in range(4):
        e, o = tt[2 * k], tt[2 * k + 1]
        v0, v1, v2, v3 = v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]
        for q in range(size):
            v0[q] = e[q] - e[q + 1]
        for q in range(size):
            v1[q] = o[q] + e[q + 1]
        for q in range(size):
            v2[q] = e[q + 1] - o[q]
        for q in range(size):
            v3[q] = o[q] - o[q + 1]
    for q in range(te - 1, size, te):
        for xi in range(16):
            v[xi, q] = 0


@njit(**JIT)
def _grad_transform(dz, m, i0, rows, te, work):
    """m[xi, f * n + q] (m: (16, F * n)) = (A dY A^T)[xi] of band tile q's 2x2 block of dz
    (B, F, OH, OW) (tiles as in _input_transform; 0 past OH/OW and at t = te - 1): with the
    block's rows (a, b) and (c, e), A dY = rows (a, b), (a + c, b + e), (a - c, b - e),
    (-c, -e), and each row (u, v) becomes (u, u + v, u - v, -v). Flat over (f, q), as
    _input_transform."""
    nb, f, oh, ow = dz.shape
    one = rows * te
    n = nb * one
    size = f * n
    dzf = dz.ravel()
    idx = _plane_index(oh, ow, 0, 0, 2 * i0, rows, te)
    p = work[:4 * size].reshape((4, size))
    _gather_planes(dzf, idx, p, nb, f, oh * ow, one)
    a, b, c, e = p[0], p[1], p[2], p[3]
    uv = work[4 * size:6 * size].reshape((2, size))
    for kk in range(4):
        u, v = uv[0], uv[1]
        if kk == 0:
            u, v = a, b
        elif kk == 1:
            for q in range(size):
                u[q] = a[q] + c[q]
            for q in range(size):
                v[q] = b[q] + e[q]
        elif kk == 2:
            for q in range(size):
                u[q] = a[q] - c[q]
            for q in range(size):
                v[q] = b[q] - e[q]
        else:
            for q in range(size):
                u[q] = -c[q]
            for q in range(size):
                v[q] = -e[q]
        m0, m1, m2, m3 = m[4 * kk], m[4 * kk + 1], m[4 * kk + 2], m[4 * kk + 3]
        for q in range(size):
            m0[q] = u[q]
        for q in range(size):
            m1[q] = u[q] + v[q]
        for q in range(size):
            m2[q] = u[q] - v[q]
        for q in range(size):
            m3[q] = -v[q]


@njit(**JIT)
def _output_transform(m, y, z, bias, has_bias, save_z, alpha, i0, rows, te, work, code):
    """y = act(A^T M A + bias[f]), z = the pre-activation when kept; m: (16, F * n). With
    the tile's M rows m0..m3: a = m0 + m1 + m2, b = m1 - m2 - m3 (per column), then each
    of them (r0, r1, r2, r3) -> (r0 + r1 + r2, r1 - r2 - r3) + bias, flat over (f, q).
    ``code`` (the activation) is taken as a literal: compiled per activation, its loop
    vectorized (as conv.py's epilogue kernels)."""
    literally(code)
    nb, f, oh, ow = y.shape
    one = rows * te
    n = nb * one
    size = f * n
    T = y.dtype.type
    bq = work[:size]  # bias[f] at every (f, q)
    for k in range(f):
        bq[k * n:(k + 1) * n] = bias[k] if has_bias else T(0)
    ab = work[size:9 * size].reshape((8, size))
    for s in range(4):
        a, b = ab[s], ab[4 + s]
        m0, m1, m2, m3 = m[s], m[4 + s], m[8 + s], m[12 + s]
        for q in range(size):
            a[q] = m0[q] + m1[q] + m2[q]
        for q in range(size):
            b[q] = m1[q] - m2[q] - m3[q]
    out = work[9 * size:13 * size].reshape((4, size))  # the tiles' outputs (r, s) at out[2r + s]
    for r in range(2):
        r0, r1, r2, r3 = ab[4 * r], ab[4 * r + 1], ab[4 * r + 2], ab[4 * r + 3]
        y0, y1 = out[2 * r], out[2 * r + 1]
        for q in range(size):
            y0[q] = r0[q] + r1[q] + r2[q] + bq[q]
        for q in range(size):
            y1[q] = r1[q] - r2[q] - r3[q] + bq[q]
    where = _scatter_index(oh, ow, i0, rows, te, size)
    first, count = 2 * i0 * ow, where.size
    flat = work[9 * size:13 * size]
    if save_z:
        zf = z.ravel()
        for k in range(f):
            for b in range(nb):
                at = (b * f + k) * oh * ow + first
                _gather(flat[k * n + b * one:], where, zf[at:at + count])
    if code != IDENTITY:
        for j in range(4):
            o = out[j]
            for q in range(size):
                o[q] = T(act_value(o[q], code, alpha))
    yf = y.ravel()
    for k in range(f):
        for b in range(nb):
            at = (b * f + k) * oh * ow + first
            _gather(flat[k * n + b * one:], where, yf[at:at + count])


@njit(**JIT)
def _scatter_index(oh, ow, i0, rows, te, size):
    """idx[(oi - 2 i0) * OW + oj] = where output pixel (oi, oj) of the band's rows is in
    (4, size) tile outputs out[2r + s, i * te + t] (flat): r, s = oi, oj mod 2, i = oi // 2 - i0,
    t = oj // 2."""
    first, last = 2 * i0, min(oh, 2 * (i0 + rows))
    idx = np.empty((last - first) * ow, np.int64)
    for oi in range(first, last):
        for oj in range(ow):
            idx[(oi - first) * ow + oj] = (2 * (oi % 2) + oj % 2) * size + (oi // 2 - i0) * te + oj // 2
    return idx


@njit(**JIT)
def _gemm16(gemm, a, b, c, m, n, k, trans_b, beta):
    """c[xi] (m, n) = a[xi] (m, k) @ op(b[xi]) + beta * c[xi] for the 16 positions: b[xi] is
    (k, n), or (n, k) and transposed; a, b, c are (16, ...) with each position's matrix
    row-major in its row. One OpenBLAS ?gemm each (gemm: runtime.blas_gemm's address)."""
    T = c.dtype.type
    ldb = k if trans_b else n
    for xi in range(16):
        gemm_call(gemm, np.int64(0), np.int64(trans_b), np.int64(m), np.int64(n), np.int64(k), T(1.0),
                  a[xi].ctypes.data, np.int64(k), b[xi].ctypes.data, np.int64(ldb), T(beta), c[xi].ctypes.data,
                  np.int64(n))


@functools.cache
def _forward_kernel(code):
    """The forward for one activation code. The closure holds the code alone (Numba's disk
    cache keys a closure by its cells: one holding a dispatcher, pickled differently in
    every process, missed the cache each time); the code reaches _output_transform as a
    constant, which it takes as a literal."""

    @njit(parallel=True, **JIT)
    def forward(x, u, bias, has_bias, y, z, save_z, alpha, ph, pw, plan, te, bufs, gemm):
        """y = act(conv(x) + bias) band by band over plan's rows (b0, b1, i0, rows), in
        bufs.shape[0] runs of consecutive bands, run r with the buffers bufs[r]."""
        c, f = x.shape[1], y.shape[1]
        parts, count = bufs.shape[0], plan.shape[0]
        for part in prange(parts):
            vb, mb, work = bufs[part, 0], bufs[part, 1], bufs[part, 2]
            for k in range(part * count // parts, (part + 1) * count // parts):
                b0, b1, i0, rows = plan[k, 0], plan[k, 1], plan[k, 2], plan[k, 3]
                n = (b1 - b0) * rows * te
                v = vb[:16 * c * n].reshape((16, c * n))
                m = mb[:16 * f * n].reshape((16, f * n))
                _input_transform(x[b0:b1], v, ph, pw, i0, rows, te, work)
                _gemm16(gemm, u, v, m, f, n, c, False, 0.0)
                _output_transform(m, y[b0:b1], z[b0:b1], bias, has_bias, save_z, alpha, i0, rows, te, work, code)

    return forward


@functools.cache
def _backward_kernel(code):
    """The backward for one activation code (a closure over the code alone, as
    _forward_kernel's)."""

    @njit(parallel=True, **JIT)
    def backward(dy, y, z, dz, x, u_dx, dx, has_dx, alpha, ph, pw, blocks, dw_plan, dw_from, te, dx_plan, dx_from,
                 te_dx, du, db, asum, bufs, gemm):
        """Block t of images [blocks[t], blocks[t + 1]): dz = dy * act' (dy, y, z, dz: (N, F,
        OH, OW)), its dbias sums db[t] and d loss / d alpha asum[t], dU du[t] (16, F * C) over
        its bands dw_plan[dw_from[t]:dw_from[t + 1]], and dx = dz convolved with the turned
        filters u_dx, padding 2 - p, over its bands of dx_plan: the blocks' sums, added in
        block order by the caller, do not depend on which thread took a block."""
        n, f, oh, ow = dz.shape
        c = x.shape[1]
        pix = oh * ow
        nblocks, parts = blocks.size - 1, bufs.shape[0]
        nobias = x[0, 0, 0, :0]
        for part in prange(parts):
            vb, mb, work = bufs[part, 0], bufs[part, 1], bufs[part, 2]
            for t in range(part * nblocks // parts, (part + 1) * nblocks // parts):
                s = 0.0
                for i in range(blocks[t], blocks[t + 1]):
                    dzi = dz[i].reshape((f, pix))
                    s += dz_rows(dy[i].reshape((f, pix)), y[i].reshape((f, pix)), z[i].reshape((f, pix)), dzi, code,
                                 alpha)
                    add_row_sums(dzi.reshape((f, 1, pix)), db[t])
                asum[t] = s
                for k in range(dw_from[t], dw_from[t + 1]):
                    b0, b1, i0, rows = dw_plan[k, 0], dw_plan[k, 1], dw_plan[k, 2], dw_plan[k, 3]
                    nt = (b1 - b0) * rows * te
                    v = vb[:16 * c * nt].reshape((16, c * nt))
                    m = mb[:16 * f * nt].reshape((16, f * nt))
                    _input_transform(x[b0:b1], v, ph, pw, i0, rows, te, work)
                    _grad_transform(dz[b0:b1], m, i0, rows, te, work)
                    _gemm16(gemm, m, v, du[t], f, c, nt, True, 0.0 if k == dw_from[t] else 1.0)
                if has_dx:
                    for k in range(dx_from[t], dx_from[t + 1]):
                        b0, b1, i0, rows = dx_plan[k, 0], dx_plan[k, 1], dx_plan[k, 2], dx_plan[k, 3]
                        nt = (b1 - b0) * rows * te_dx
                        v = vb[:16 * f * nt].reshape((16, f * nt))
                        m = mb[:16 * c * nt].reshape((16, c * nt))
                        _input_transform(dz[b0:b1], v, 2 - ph, 2 - pw, i0, rows, te_dx, work)
                        _gemm16(gemm, u_dx, v, m, c, nt, f, False, 0.0)
                        _output_transform(m, dx[b0:b1], dx[b0:b0], nobias, False, False, 0.0, i0, rows, te_dx, work,
                                          IDENTITY)

    return backward


def _plan(n, oh, ow, c, f, itemsize, offset=0):
    """bands(...) as an (count, 4) int64 array, images shifted by offset."""
    plan = np.array(bands(n, oh, ow, c, f, itemsize), np.int64).reshape(-1, 4)
    plan[:, :2] += offset
    return plan


def _buffers(parts, plans, dtype):
    """This thread's (parts, 3, L) V, M and work buffers (runtime.scratch, kept across
    calls) for plans [(plan, te, C in, F out)]: L fits every band's 16 C n, 16 F n and
    16 (max(C, F) n + 1)."""
    most = 1
    for plan, te, cin, cout in plans:
        if len(plan):
            n = int(((plan[:, 1] - plan[:, 0]) * plan[:, 3]).max()) * te
            most = max(most, 16 * (max(cin, cout) * n + 1))
    return scratch("wino_bufs", (parts, 3, most), dtype)


def forward(x, weight, bias, y, z, ph, pw, act, alpha):
    """y = act(conv3x3(x, weight) + bias), stride 1, padding (ph, pw), z the pre-activation
    when kept: one parallel Numba region over the batch's bands."""
    n, c = x.shape[:2]
    f, oh, ow = y.shape[1:]
    te = (ow + 1) // 2 + 1
    plan = _plan(n, oh, ow, c, f, x.itemsize)
    parts = max(1, min(len(plan), get_num_threads()))
    save_z = z is not None and ACTIVATIONS[act] in SAVES_PREACTIVATION
    zz = z if save_z else y[:0]
    b = bias if bias is not None else y[0, 0, 0, :0]
    u = transform_weights(weight).reshape(16, -1)
    bufs = _buffers(parts, [(plan, te, c, f)], x.dtype)
    with threads_for(y.size), one_blas_thread():
        _forward_kernel(act)(x, u, b, bias is not None, y, zz, save_z, alpha, ph, pw, plan, te, bufs,
                             np.int64(blas_gemm(x.dtype)))


def backward(dy, x, weight, y, z, dz, dx, dweight, dbias, dalpha, ph, pw, act, alpha):
    """dz = dy * act'(z or y), dweight, dbias, dalpha and dx (None: not wanted) of the
    convolution forward() computed: one parallel Numba region over min(N, 16) fixed blocks
    of images, whose partial sums are then added in block order. act: the activation code."""
    n, c, h, w = x.shape
    f, oh, ow = dz.shape[1:]
    count = min(n, _MAX_BLOCKS)
    blocks = np.array([t * n // count for t in range(count + 1)], np.int64)
    te, te_dx = (ow + 1) // 2 + 1, (w + 1) // 2 + 1
    dw_parts = [_plan(int(blocks[t + 1] - blocks[t]), oh, ow, c, f, x.itemsize, int(blocks[t])) for t in range(count)]
    dx_parts = [_plan(int(blocks[t + 1] - blocks[t]), h, w, f, c, x.itemsize, int(blocks[t])) for t in range(count)]
    dw_plan, dx_plan = np.concatenate(dw_parts), np.concatenate(dx_parts)
    dw_from = np.cumsum([0] + [len(part) for part in dw_parts]).astype(np.int64)
    dx_from = np.cumsum([0] + [len(part) for part in dx_parts]).astype(np.int64)
    parts = max(1, min(count, get_num_threads()))
    bufs = _buffers(parts, [(dw_plan, te, c, f), (dx_plan, te_dx, f, c)], x.dtype)
    du = np.empty((count, 16, f * c), x.dtype)
    db = np.zeros((count, f))
    asum = np.zeros(count)
    has_dx = dx is not None
    u_dx = transform_weights(weight, for_dx=True).reshape(16, -1) if has_dx else np.empty((16, 0), x.dtype)
    with threads_for(dz.size), one_blas_thread():
        _backward_kernel(act)(dy, y, y if z is None else z, dz, x, u_dx, dx if has_dx else x[:0], has_dx, alpha, ph,
                              pw, blocks, dw_plan, dw_from, te, dx_plan, dx_from, te_dx, du, db, asum, bufs,
                              np.int64(blas_gemm(x.dtype)))
    finish_dweight(du.sum(axis=0).reshape(16, f, c), dweight)
    if dbias is not None:
        dbias[...] = db.sum(axis=0)
    if dalpha is not None:
        dalpha[0] = asum.sum()


def finish_dweight(du, out):
    """out (F, C, 3, 3) = G^T dU G, from the summed du (16, F, C)."""
    _weights_backward(np.ascontiguousarray(du), out)


@njit(**JIT)
def _weights_backward(du, out):
    """out[f, c] = G^T dU[f, c] G (3x3 from 4x4): G^T's rows applied to the columns
    (d0 + (d1 + d2) / 2, (d1 - d2) / 2, (d1 + d2) / 2 + d3), then to the rows."""
    nf, nc = du.shape[1:]
    T = du.dtype.type
    half = T(0.5)
    cols = np.empty((3, 4), du.dtype)
    for f in range(nf):
        for c in range(nc):
            for j in range(4):
                d0, d1, d2, d3 = du[j, f, c], du[4 + j, f, c], du[8 + j, f, c], du[12 + j, f, c]
                cols[0, j] = d0 + (d1 + d2) * half
                cols[1, j] = (d1 - d2) * half
                cols[2, j] = (d1 + d2) * half + d3
            for k in range(3):
                d0, d1, d2, d3 = cols[k, 0], cols[k, 1], cols[k, 2], cols[k, 3]
                out[f, c, k, 0] = d0 + (d1 + d2) * half
                out[f, c, k, 1] = (d1 - d2) * half
                out[f, c, k, 2] = (d1 + d2) * half + d3
