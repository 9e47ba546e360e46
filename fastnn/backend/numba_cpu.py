"""The Numba backend: the CPU fallback of every kernel in csrc/kernels.h.

Same names and argument order as the fastnn._C bindings. GEMMs call NumPy's
matmul; everything around them (bias + activation epilogue, the activation
derivative with the bias-gradient reduction, softmax cross-entropy, the fused
optimizer update) is a parallel Numba loop. The scalar math restates
csrc/ops/*.h line for line -- the one permitted second copy -- and is tested
against the same float64 oracle.
"""
from __future__ import annotations

import math

import numpy as np

from . import registry
from .codes import ACT_CODE, SAVES_PREACTIVATION, ACTIVATIONS

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # pragma: no cover - numba is a hard dependency
    registry.mark_failed("numba", f"numba failed to import: {exc}")
    numba = None

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_ID, _RELU, _LEAKY, _PRELU, _ELU, _SELU, _SIGMOID, _TANH, _GELU, _GELU_TANH, _SWISH = range(11)

if numba is not None:
    # One OpenMP runtime in the process: the C++ kernels use GNU libgomp and so
    # does Numba's "omp" layer (workqueue where omp is unavailable).
    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "omp"

    _jit = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @njit(inline="always", **_jit)
    def _sigmoid(z):
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    @njit(inline="always", **_jit)
    def _mul_vanishing(a, s):
        """ops/activation.h mul_vanishing: a * s, 0 once s is 0 (no inf * 0 = NaN)."""
        return s * 0.0 if s == 0 else a * s

    @njit(inline="always", **_jit)
    def act_value(z, code, a):
        """ops/activation.h forward(z, alpha)."""
        if code == _RELU:
            return 0.0 if z < 0 else z   # NaN and -0 pass through, as activation.h
        if code == _LEAKY or code == _PRELU:
            return z if z > 0 else a * z
        if code == _ELU:
            return z if z > 0 else a * math.expm1(z)
        if code == _SELU:
            return SELU_SCALE * z if z > 0 else (SELU_SCALE * SELU_ALPHA) * math.expm1(z)
        if code == _SIGMOID:
            return _sigmoid(z)
        if code == _TANH:
            return math.tanh(z)
        if code == _GELU:
            return _mul_vanishing(0.5 * z, 1.0 + math.erf(z * 0.70710678118654752440))
        if code == _GELU_TANH:
            u = 0.79788456080286535588 * (z + 0.044715 * z * z * z)
            return _mul_vanishing(0.5 * z, 1.0 + math.tanh(u))
        if code == _SWISH:
            return _mul_vanishing(z, _sigmoid(z))
        return z

    @njit(inline="always", **_jit)
    def act_grad(z, y, code, a):
        """ops/activation.h grad(z, y, alpha): dy/dz from y, or z where it was kept."""
        if code == _RELU:
            return 1.0 if y > 0 else 0.0
        if code == _LEAKY:
            return 1.0 if y > 0 else a
        if code == _PRELU:
            return 1.0 if z > 0 else a
        if code == _ELU:
            return 1.0 if y > 0 else y + a
        if code == _SELU:
            return SELU_SCALE if y > 0 else y + SELU_SCALE * SELU_ALPHA
        if code == _SIGMOID:
            return y * (1.0 - y)
        if code == _TANH:
            return 1.0 - y * y
        if code == _GELU:
            cdf = 0.5 * (1.0 + math.erf(z * 0.70710678118654752440))
            return cdf + _mul_vanishing(z, 0.39894228040143267794 * math.exp(-0.5 * z * z))
        if code == _GELU_TANH:
            u = 0.79788456080286535588 * (z + 0.044715 * z * z * z)
            t = math.tanh(u)
            du = 0.79788456080286535588 * (1.0 + 3 * 0.044715 * z * z)
            return 0.5 * (1.0 + t) + _mul_vanishing(0.5 * z * du, 1.0 - t * t)
        if code == _SWISH:
            s = _sigmoid(z)
            return _mul_vanishing(1.0 + _mul_vanishing(z, 1.0 - s), s)
        return 1.0

    @njit(parallel=True, **_jit)
    def _bias_act_rows(y, z, bias, has_bias, save_z, code, alpha):
        n, m = y.shape
        a = alpha
        for i in prange(n):
            for j in range(m):
                v = y[i, j]
                if has_bias:
                    v += bias[j]
                if save_z:
                    z[i, j] = v
                y[i, j] = act_value(v, code, a)

    @njit(parallel=True, **_jit)
    def _dz_and_bias_grad(dy, y, z, dz, dbias, code, alpha):
        """dz = dy * act'(.), dbias = column sums; returns d loss / d alpha (prelu)."""
        n, m = dy.shape
        a = alpha
        block = 256
        nblocks = (m + block - 1) // block
        alpha_parts = np.zeros(nblocks, np.float64)
        for b in prange(nblocks):
            j0 = b * block
            j1 = min(m, j0 + block)
            acc = np.zeros(j1 - j0, dy.dtype)
            asum = 0.0
            for i in range(n):
                for j in range(j0, j1):
                    d = dy[i, j] * act_grad(z[i, j], y[i, j], code, a)
                    dz[i, j] = d
                    acc[j - j0] += d
                    if code == _PRELU and not z[i, j] > 0:
                        asum += dy[i, j] * z[i, j]
            for j in range(j0, j1):
                dbias[j] = acc[j - j0]
            alpha_parts[b] = asum
        return alpha_parts.sum()

    @njit(parallel=True, **_jit)
    def _act_forward_flat(x, y, code, alpha):
        a = alpha
        for i in prange(x.size):
            y[i] = act_value(x[i], code, a)

    @njit(parallel=True, **_jit)
    def _act_backward_flat(dy, x, y, dx, code, alpha):
        a = alpha
        total = 0.0
        for i in prange(dy.size):
            dx[i] = dy[i] * act_grad(x[i], y[i], code, a)
            if code == _PRELU and not x[i] > 0:
                total += dy[i] * x[i]
        return total

    @njit(parallel=True, **_jit)
    def _softmax_xent_forward(scores, labels, probs):
        n, c = scores.shape
        losses = np.empty(n, np.float64)
        for i in prange(n):
            mx = scores[i, 0]
            for j in range(1, c):
                mx = max(mx, scores[i, j])
            s = 0.0
            for j in range(c):
                e = math.exp(scores[i, j] - mx)
                probs[i, j] = e
                s += e
            inv = 1 / s
            for j in range(c):
                probs[i, j] *= inv
            losses[i] = math.log(s) - (scores[i, labels[i]] - mx)
        return losses.sum() / n if n > 0 else 0.0

    @njit(parallel=True, **_jit)
    def _softmax_xent_backward(probs, labels, dscores, scale):
        n, c = probs.shape
        s = scale
        for i in prange(n):
            for j in range(c):
                dscores[i, j] = probs[i, j] * s
            dscores[i, labels[i]] -= s

    # Columns of the per-segment constant table k (computed in float64, cast to
    # the parameter dtype so the loops stay in that precision like the C++):
    _K_LR, _K_WD, _K_L1, _K_MU, _K_ALPHA, _K_1MALPHA, _K_B1, _K_1MB1, _K_B2, _K_1MB2, _K_EPS, \
        _K_STEP, _K_INVSQRTBC2, _K_DECAY, _K_GS = range(15)

    @njit(parallel=True, **_jit)
    def _sgd_family(p, g, s1, b, e, lr, wd, l1, gs, mu, nesterov):
        """sgd (mu = 0, s1 unused), momentum, nesterov."""
        for i in prange(b, e):
            pi = p[i]
            gi = g[i] * gs + wd * pi + l1 * np.sign(pi)
            if mu != 0:
                v = mu * s1[i] + gi
                s1[i] = v
                gi = gi + mu * v if nesterov else v
            p[i] = pi - lr * gi

    @njit(parallel=True, **_jit)
    def _adagrad_rmsprop(p, g, s1, b, e, lr, wd, l1, gs, a, one_minus_a, eps):
        """adagrad (a = 1, one_minus_a = 1) and rmsprop."""
        for i in prange(b, e):
            pi = p[i]
            gi = g[i] * gs + wd * pi + l1 * np.sign(pi)
            sq = a * s1[i] + one_minus_a * gi * gi
            s1[i] = sq
            p[i] = pi - lr * gi / (np.sqrt(sq) + eps)

    @njit(parallel=True, **_jit)
    def _adam(p, g, s1, s2, b, e, wd, l1, gs, decay, b1, omb1, b2, omb2, eps, step, inv_sqrt_bc2):
        """adam (decay = 1, wd = L2) and adamw (decay = 1 - lr wd, wd = 0)."""
        for i in prange(b, e):
            pi = p[i] * decay
            gi = g[i] * gs + wd * pi + l1 * np.sign(pi)
            m = b1 * s1[i] + omb1 * gi
            v = b2 * s2[i] + omb2 * gi * gi
            s1[i] = m
            s2[i] = v
            p[i] = pi - step * m / (np.sqrt(v) * inv_sqrt_bc2 + eps)


    @njit(parallel=True, **_jit)
    def _max_norm(param, offset, rows, cols, limit):
        for k in prange(offset.shape[0]):
            o, r, c = offset[k], rows[k], cols[k]
            norm = np.zeros(c)
            for i in range(r):
                for j in range(c):
                    v = np.float64(param[o + i * c + j])
                    norm[j] += v * v
            for j in range(c):
                nrm = math.sqrt(norm[j])
                norm[j] = limit[k] / nrm if nrm > limit[k] else 1.0
            for i in range(r):
                for j in range(c):
                    param[o + i * c + j] = np.float64(param[o + i * c + j]) * norm[j]


if numba is not None:
    # --- batch normalization: ops/batchnorm.h ------------------------------------
    _CHANNEL_BLOCK = 128

    @njit(parallel=True, **_jit)
    def _bn_moments(x3, shift, s1, s2):
        """Per-channel sums of (x - shift) and (x - shift)^2 in float64, x3 (N, C, S)."""
        n, c, s = x3.shape
        if s == 1:
            nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
            for b in prange(nb):
                c0 = b * _CHANNEL_BLOCK
                c1 = min(c, c0 + _CHANNEL_BLOCK)
                a1 = np.zeros(c1 - c0)
                a2 = np.zeros(c1 - c0)
                for i in range(n):
                    for ch in range(c0, c1):
                        d = np.float64(x3[i, ch, 0] - shift[ch])
                        a1[ch - c0] += d
                        a2[ch - c0] += d * d
                s1[c0:c1] = a1
                s2[c0:c1] = a2
        else:
            for ch in prange(c):
                k = shift[ch]
                a1 = 0.0
                a2 = 0.0
                for i in range(n):
                    for j in range(s):
                        d = np.float64(x3[i, ch, j] - k)
                        a1 += d
                        a2 += d * d
                s1[ch] = a1
                s2[ch] = a2

    @njit(parallel=True, **_jit)
    def _bn_normalize(x3, y3, mean, scale, beta, code, alpha):
        n, c, s = x3.shape
        for r in prange(n * c):
            i = r // c
            ch = r % c
            m, lo, sc, b = mean[0, ch], mean[1, ch], scale[ch], beta[ch]
            for j in range(s):
                y3[i, ch, j] = act_value(((x3[i, ch, j] - m) - lo) * sc + b, code, alpha)

    @njit(parallel=True, **_jit)
    def _bn_backward_sums(dy3, x3, y3, mean, code, alpha, s1, s2):
        n, c, s = x3.shape
        if s == 1:
            nb = (c + _CHANNEL_BLOCK - 1) // _CHANNEL_BLOCK
            for b in prange(nb):
                c0 = b * _CHANNEL_BLOCK
                c1 = min(c, c0 + _CHANNEL_BLOCK)
                a1 = np.zeros(c1 - c0)
                a2 = np.zeros(c1 - c0)
                for i in range(n):
                    for ch in range(c0, c1):
                        dz = dy3[i, ch, 0] * act_grad(0.0, y3[i, ch, 0], code, alpha)
                        a1[ch - c0] += dz
                        a2[ch - c0] += dz * np.float64((x3[i, ch, 0] - mean[0, ch]) - mean[1, ch])
                s1[c0:c1] = a1
                s2[c0:c1] = a2
        else:
            for ch in prange(c):
                m = mean[0, ch]
                lo = mean[1, ch]
                a1 = 0.0
                a2 = 0.0
                for i in range(n):
                    for j in range(s):
                        dz = dy3[i, ch, j] * act_grad(0.0, y3[i, ch, j], code, alpha)
                        a1 += dz
                        a2 += dz * np.float64((x3[i, ch, j] - m) - lo)
                s1[ch] = a1
                s2[ch] = a2

    @njit(parallel=True, **_jit)
    def _bn_dx(dy3, x3, y3, mean, invstd, scale, mean_dz, mean_dz_xhat, code, alpha, dx3):
        n, c, s = x3.shape
        for r in prange(n * c):
            i = r // c
            ch = r % c
            for j in range(s):
                dz = dy3[i, ch, j] * act_grad(0.0, y3[i, ch, j], code, alpha)
                xhat = ((x3[i, ch, j] - mean[0, ch]) - mean[1, ch]) * invstd[ch]
                dx3[i, ch, j] = scale[ch] * (dz - mean_dz[ch] - xhat * mean_dz_xhat[ch])

    # --- dropout: ops/philox.h + ops/dropout.h --------------------------------------
    _M32 = np.uint64(0xFFFFFFFF)
    _PM0 = np.uint64(0xD2511F53)
    _PM1 = np.uint64(0xCD9E8D57)
    _PW0 = np.uint64(0x9E3779B9)
    _PW1 = np.uint64(0xBB67AE85)
    _S32 = np.uint64(32)

    @njit(inline="always", **_jit)
    def philox4x32_10(c0, c1, c2, c3, k0, k1):
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

    @njit(parallel=True, **_jit)
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


# --- the backend's kernels, named and ordered like fastnn._C --------------------

# Below this many elements a parallel region costs more than it saves (and its
# idle OpenMP workers would fight NumPy's BLAS threads for the two cores).
if numba is not None:
    # --- convolution (csrc/cpu/conv.cpp): im2col + matmul + channel epilogue ---
    @njit(parallel=True, **_jit)
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

    @njit(parallel=True, **_jit)
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

    @njit(parallel=True, **_jit)
    def _bias_act_channels(acc, y, z, bias, has_bias, save_z, code, alpha):
        """y (B, F, P) <- act(acc (F, B, P) + bias[f]); z <- the pre-activation when kept."""
        f, n, p = acc.shape
        a = alpha
        for t in prange(n * f):
            i = t // f
            k = t % f
            for j in range(p):
                v = acc[k, i, j]
                if has_bias:
                    v += bias[k]
                if save_z:
                    z[i, k, j] = v
                y[i, k, j] = act_value(v, code, a)

    @njit(parallel=True, **_jit)
    def _conv_dz(dy, y, z, dz, dbias, code, alpha):
        """dz = dy * act'(.) over (N, F, P), dbias[f] = sum over n, p; returns d loss / d alpha."""
        n, f, p = dy.shape
        a = alpha
        alpha_parts = np.zeros(f, np.float64)
        for k in prange(f):
            bsum = 0.0
            asum = 0.0
            for i in range(n):
                for j in range(p):
                    d = dy[i, k, j] * act_grad(z[i, k, j], y[i, k, j], code, a)
                    dz[i, k, j] = d
                    bsum += d
                    if code == _PRELU and not z[i, k, j] > 0:
                        asum += dy[i, k, j] * z[i, k, j]
            dbias[k] = bsum
            alpha_parts[k] = asum
        return alpha_parts.sum()


_PARALLEL_MIN = 1 << 16


# Numba's thread count is per calling thread; fastnn's is one number for the
# process (set_num_threads), applied here on each call so that a kernel runs on
# the same team size, and rounds the same way, from whichever thread calls it.
_THREADS = [0]


class _threads_for:
    """Run the enclosed Numba kernel on fastnn's thread count, or on 1 thread
    when the work is small."""

    __slots__ = ("want", "saved")

    def __init__(self, work: int):
        self.want = 1 if work < _PARALLEL_MIN else (_THREADS[0] or numba.config.NUMBA_NUM_THREADS)

    def __enter__(self):
        self.saved = numba.get_num_threads()
        if self.saved != self.want:
            numba.set_num_threads(self.want)

    def __exit__(self, *exc):
        if self.saved != self.want:
            numba.set_num_threads(self.saved)


def _empty_like_rows(ref):
    return np.empty((0, 0), ref.dtype)


# Overflow to inf is the caller's business (the Trainer stops on a non-finite
# loss), exactly as in the C++ kernels: NumPy's warnings are silenced here.
def _quiet():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def gemm(a, b, c, trans_a=False, trans_b=False, beta=0.0):
    with _quiet():
        prod = np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    if beta:
        c += prod
    else:
        c[...] = prod


def linear_act_forward(x, weight, bias, y, z, act, alpha):
    with _quiet():
        np.matmul(x, weight, out=y)
    save_z = ACTIVATIONS[act] in SAVES_PREACTIVATION
    with _threads_for(y.size):
        _bias_act_rows(y, z if save_z else _empty_like_rows(y), bias if bias is not None else np.empty(0, y.dtype),
                       bias is not None, save_z, act, alpha)


def linear_act_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, act, alpha):
    zz = z if z is not None else y
    db = dbias if dbias is not None else np.empty(dy.shape[1], dy.dtype)
    with _threads_for(dy.size):
        total = _dz_and_bias_grad(dy, y, zz, dz_work, db, act, alpha)
    if dalpha is not None:
        dalpha[0] = total
    with _quiet():
        np.matmul(x.T, dz_work, out=dweight)
        if dx is not None:
            np.matmul(dz_work, weight.T, out=dx)


def act_forward(x, y, act, alpha):
    with _threads_for(x.size):
        _act_forward_flat(x.reshape(-1), y.reshape(-1), act, alpha)


def act_backward(dy, x, y, dx, dalpha, act, alpha):
    with _threads_for(dy.size):
        total = _act_backward_flat(dy.reshape(-1), x.reshape(-1), y.reshape(-1), dx.reshape(-1), act, alpha)
    if dalpha is not None:
        dalpha[0] = total


def softmax_xent_forward(scores, labels, probs):
    with _threads_for(scores.size):
        return float(_softmax_xent_forward(scores, labels, probs))


def softmax_xent_backward(probs, labels, dscores, scale):
    with _threads_for(probs.size):
        _softmax_xent_backward(probs, labels, dscores, scale)


def optim_step(rule, param, grad, state1, state2, seg_begin, hyper):
    """ops/optim.h over each segment; constants cast to the parameter dtype so the
    loops run in that precision, like the C++."""
    t = param.dtype.type
    s1 = state1 if state1 is not None else param[:0]
    s2 = state2 if state2 is not None else param[:0]
    with _threads_for(param.size):
        for s in range(hyper.shape[0]):
            b, e = int(seg_begin[s]), int(seg_begin[s + 1])
            if e <= b:
                continue
            lr, wd, l1, mu, alpha, b1, b2, eps, bc1, bc2, gs = (float(v) for v in hyper[s])
            if rule <= 2:
                _sgd_family(param, grad, s1, b, e, t(lr), t(wd), t(l1), t(gs), t(mu if rule else 0.0), rule == 2)
            elif rule <= 4:
                a, oma = (1.0, 1.0) if rule == 3 else (alpha, 1.0 - alpha)
                _adagrad_rmsprop(param, grad, s1, b, e, t(lr), t(wd), t(l1), t(gs), t(a), t(oma), t(eps))
            else:
                decay, l2 = (1.0 - lr * wd, 0.0) if rule == 6 else (1.0, wd)
                _adam(param, grad, s1, s2, b, e, t(l2), t(l1), t(gs), t(decay), t(b1), t(1.0 - b1), t(b2),
                      t(1.0 - b2), t(eps), t(lr / bc1), t(1.0 / np.sqrt(bc2)))


def _ncs(x):
    n, c = x.shape[0], x.shape[1]
    return x.reshape(n, c, -1) if x.size else x.reshape(n, c, 1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, save_mean, save_invstd, y, training,
                      momentum, eps, act, alpha):
    x3, y3 = _ncs(x), _ncs(y)
    n, c, s = x3.shape
    count = float(n) * float(s)
    t = x.dtype.type
    if training:
        shift = x3[0, :, 0].copy()
        s1, s2 = np.empty(c), np.empty(c)
        with _threads_for(x.size):
            _bn_moments(x3, shift, s1, s2)
        m = s1 / count
        var = np.maximum(s2 / count - m * m, 0.0).astype(x.dtype)
        a = shift.astype(np.float64)
        mean64 = a + m
        bb = mean64 - a
        err = (a - (mean64 - bb)) + (m - bb)          # TwoSum, as in csrc/ops/batchnorm.h
        save_mean[0] = mean64
        save_mean[1] = (mean64 - save_mean[0].astype(np.float64)) + err
        mean = save_mean[0] + save_mean[1]
        save_invstd[...] = t(1) / np.sqrt(var + t(eps))
        if running_mean is not None and running_var is not None:
            unbiased = (var.astype(np.float64) * count / (count - 1.0)).astype(x.dtype) if count > 1 else var
            running_mean[...] = (t(1) - t(momentum)) * running_mean + t(momentum) * mean
            running_var[...] = (t(1) - t(momentum)) * running_var + t(momentum) * unbiased
    else:
        save_mean[0] = running_mean
        save_mean[1] = 0
        save_invstd[...] = t(1) / np.sqrt(running_var + t(eps))
    scale = save_invstd * (gamma if gamma is not None else t(1))
    b = beta if beta is not None else np.zeros(c, x.dtype)
    with _threads_for(x.size):
        _bn_normalize(x3, y3, save_mean, scale.astype(x.dtype), b, act, alpha)


def batchnorm_backward(dy, x, y, gamma, save_mean, save_invstd, dx, dgamma, dbeta, training, act, alpha):
    dy3, x3 = _ncs(dy), _ncs(x)
    y3 = _ncs(y) if (y is not None and act != ACT_CODE["identity"]) else dy3
    n, c, s = x3.shape
    count = float(n) * float(s)
    s1, s2 = np.empty(c), np.empty(c)
    with _threads_for(x.size):
        _bn_backward_sums(dy3, x3, y3, save_mean, act, alpha, s1, s2)
    inv = save_invstd.astype(np.float64)
    if dbeta is not None:
        dbeta[...] = s1
    if dgamma is not None:
        dgamma[...] = s2 * inv
    if dx is None:
        return
    scale = (save_invstd * (gamma if gamma is not None else 1)).astype(x.dtype)
    if training:
        mean_dz = (s1 / count).astype(x.dtype)
        mean_dz_xhat = (s2 * inv / count).astype(x.dtype)
    else:
        mean_dz = mean_dz_xhat = np.zeros(c, x.dtype)
    with _threads_for(x.size):
        _bn_dx(dy3, x3, y3, save_mean, save_invstd, scale, mean_dz, mean_dz_xhat, act, alpha, _ncs(dx))


def dropout(x, y, seed, offset, threshold, scale):
    with _threads_for(x.size):
        _dropout(x.reshape(-1), y.reshape(-1), np.uint64(seed), np.uint64(offset), np.uint64(threshold),
                 x.dtype.type(scale))


def max_norm(param, offset, rows, cols, limit):
    with _threads_for(param.size):
        _max_norm(param, offset, rows, cols, limit)


# Images per im2col chunk: the columns of a chunk stay under ~32 MiB.
def _conv_chunk(ckk, p, itemsize):
    return max(1, (32 << 20) // max(1, ckk * p * itemsize))


def conv2d_forward(x, weight, bias, y, z, stride_h, stride_w, pad_h, pad_w, act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = y.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    w2 = weight.reshape(f, ckk)
    y3 = y.reshape(n, f, p)
    save_z = ACTIVATIONS[act] in SAVES_PREACTIVATION
    z3 = z.reshape(n, f, p) if save_z else np.empty((0, 0, 0), y.dtype)
    b = bias if bias is not None else np.empty(0, y.dtype)
    step = _conv_chunk(ckk, p, x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        cols = np.empty((ckk, b1 - b0, p), x.dtype)
        with _threads_for(cols.size):
            _im2col(x[b0:b1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        with _quiet():
            acc = np.matmul(w2, cols.reshape(ckk, -1)).reshape(f, b1 - b0, p)
        with _threads_for(acc.size):
            _bias_act_channels(acc, y3[b0:b1], z3[b0:b1] if save_z else z3, b, bias is not None, save_z,
                               act, alpha)


def conv2d_backward(dy, x, weight, y, z, dz_work, dx, dweight, dbias, dalpha, stride_h, stride_w, pad_h, pad_w,
                    act, alpha):
    n, c = x.shape[:2]
    f, _, kh, kw = weight.shape
    oh, ow = dy.shape[2:]
    ckk, p = c * kh * kw, oh * ow
    dz3 = dz_work.reshape(n, f, p)
    zz = z if z is not None else y
    db = dbias if dbias is not None else np.empty(f, dy.dtype)
    with _threads_for(dy.size):
        total = _conv_dz(dy.reshape(n, f, p), y.reshape(n, f, p), zz.reshape(n, f, p), dz3, db, act, alpha)
    if dalpha is not None:
        dalpha[0] = total
    w2 = weight.reshape(f, ckk)
    dw = np.zeros((f, ckk), dy.dtype)
    step = _conv_chunk(ckk, p, x.itemsize)
    for b0 in range(0, n, step):
        b1 = min(n, b0 + step)
        cols = np.empty((ckk, b1 - b0, p), x.dtype)
        with _threads_for(cols.size):
            _im2col(x[b0:b1], cols, kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
        dzt = np.ascontiguousarray(dz3[b0:b1].transpose(1, 0, 2)).reshape(f, -1)   # (F, B*P)
        with _quiet():
            dw += dzt @ cols.reshape(ckk, -1).T
            if dx is not None:
                np.matmul(w2.T, dzt, out=cols.reshape(ckk, -1))
        if dx is not None:
            with _threads_for(cols.size):
                _col2im(cols, dx[b0:b1], kh, kw, stride_h, stride_w, pad_h, pad_w, oh, ow)
    dweight.reshape(f, ckk)[...] = dw

def set_num_threads(n: int) -> None:
    _THREADS[0] = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_THREADS[0])


if numba is not None:
    for _name in ("gemm", "linear_act_forward", "linear_act_backward", "act_forward", "act_backward",
                  "softmax_xent_forward", "softmax_xent_backward", "optim_step",
                  "batchnorm_forward", "batchnorm_backward", "dropout", "max_norm",
                  "conv2d_forward", "conv2d_backward"):
        registry.register("numba", _name, globals()[_name])
    registry.mark_loaded("numba")
