"""Convolutional layers: Conv2d, MaxPool2d, AvgPool2d, FractionalMaxPool2d,
GlobalAvgPool2d, and Residual blocks with stochastic depth.

Shapes are NCHW: x (N, C, H, W). Conv2d.weight is (F, C, KH, KW), bias (F,);
output (N, F, OH, OW) with OH = (H + 2*PH - KH) // SH + 1 (OW likewise).
"""
from __future__ import annotations

import numpy as np

from .. import _validate as V
from .. import ops
from .._random import generator
from .layers import _WeightedActivation
from .module import Module


class Conv2d(_WeightedActivation):
    """y = act(conv(x, weight) + bias), one fused im2col + GEMM kernel.

    kernel_size, stride, padding: an int or an (h, w) pair; padding is zeros.
    activation/alpha/init as in Linear ("auto": He for the ReLU family, LeCun
    for SELU, Xavier otherwise; fan_in = C*KH*KW; without activation= of its
    own, from the activation layer that follows it in a Sequential). In a
    Sequential, a Conv2d without its own activation followed by an activation
    layer runs fused. bias_init: the value every bias (F,) starts at, a number
    (0 by default; the notes' 0.01 for ReLU units)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, activation=None, alpha=None,
                 init="auto", bias=True, dtype=np.float32, rng=None, bias_init=0.0):
        super().__init__()
        self.in_channels = V.positive_int(in_channels, "in_channels")
        self.out_channels = V.positive_int(out_channels, "out_channels")
        self.kernel_size = V.pair(kernel_size, "kernel_size", 1)
        self.stride = V.pair(stride, "stride", 1)
        self.padding = V.pair(padding, "padding", 0)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self._init_weights(shape, self.out_channels, activation, alpha, init, bias, dtype, rng, bias_init)

    def forward_fused(self, x, act, alpha):
        """Forward with an activation taken from a following layer."""
        V.float_array(x, "x", dtype=self.weight.data.dtype, contiguous=False)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            c = self.in_channels
            hint = ""
            if x.ndim == 3 and x.shape[0] == c:
                hint = " (one image? use x[None])"
            elif x.ndim == 2:
                hint = " (flat rows? reshape them to (N, C, H, W))"
            raise ValueError(f"Conv2d({c}, {self.out_channels}): x must have {c} channels (shape (N, {c}, H, W)), "
                             f"got shape {tuple(x.shape)}{hint}")
        V.float_array(x, "x")
        y, self._saved = ops.conv2d(x, self.weight.data, self.bias.data if self.bias else None, self.stride,
                                    self.padding, act, alpha)
        return y

    def backward_fused(self, dout):
        """Gradients into weight.grad / bias.grad; returns (dx or None, dalpha or None)."""
        if self._saved is None:
            raise RuntimeError("Conv2d.backward called before forward")
        dout = V.array_module(dout).ascontiguousarray(dout)
        dx, _, _, dalpha = ops.conv2d_backward(
            dout, self._saved, need_dx=self.input_grad, dweight=self.weight.grad,
            dbias=self.bias.grad if self.bias else None, need_dbias=self.bias is not None)
        return dx, dalpha


def _pool_padding(padding, kernel_size):
    ph, pw = V.pair(padding, "padding", 0)
    if 2 * ph > kernel_size[0] or 2 * pw > kernel_size[1]:
        raise ValueError(f"padding must be at most half of kernel_size {kernel_size}, got ({ph}, {pw})")
    return ph, pw


class MaxPool2d(Module):
    """Max pooling over kernel_size windows (stride defaults to kernel_size);
    padding (default 0, at most half the window, as PyTorch) is -inf, never a maximum.

    Backward is argmax-based: forward keeps the index of each window's maximum
    (the first in row-major order on ties) and dy flows to that element only;
    overlapping windows (stride < kernel) add up."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = V.pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else V.pair(stride, "stride", 1)
        self.padding = _pool_padding(padding, self.kernel_size)
        self._saved = None

    def forward(self, x):
        """``x (N, C, H, W) -> y (N, C, OH, OW)``, ``OH = (H + 2 ph - kh) // stride_h + 1``;
        keeps the argmax of each window for backward.
        """
        y, self._saved = ops.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        return y

    def backward(self, dout):
        """``dout (N, C, OH, OW) -> dx (N, C, H, W)``: each gradient goes to its window's maximum."""
        if self._saved is None:
            raise RuntimeError("MaxPool2d.backward called before forward")
        return ops.max_pool2d_backward(dout, self._saved)


_U64_MASK = (1 << 64) - 1


class _GeneratorStream:
    """A layer that draws randomness from its own numpy Generator (PCG64 seeded
    with ``default_rng(seed)``), with the stochastic-layer protocol of Dropout:
    ``stochastic``, ``get_rng_state()``, ``set_rng_state(state)``,
    ``reseed(seed)``.

    The stream lives in the buffer ``rng_state``, (7,) uint64:
    [seed, state_hi, state_lo, inc_hi, inc_lo, has_uint32, uinteger] (the
    PCG64 state, 128-bit words split in two), so ``state_dict()``, ``save`` and
    the Trainer checkpoint carry it like Dropout's (seed, offset) and a resumed
    run draws exactly what the uninterrupted one would have. Every draw reads
    the generator from the buffer and writes it back (about 5 us)."""

    stochastic = True

    def _init_stream(self, seed) -> None:
        seed = int(generator().integers(2**63)) if seed is None else V.seed(seed)
        self.register_buffer("rng_state", np.zeros(7, np.uint64), host=True)
        self._rng = np.random.default_rng(seed)
        self.reseed(seed)

    def _store(self) -> None:
        st = self._rng.bit_generator.state
        state, inc = int(st["state"]["state"]), int(st["state"]["inc"])
        self.rng_state[1:] = (state >> 64, state & _U64_MASK, inc >> 64, inc & _U64_MASK,
                              int(st["has_uint32"]), int(st["uinteger"]))

    def _random(self, size=None):
        """Uniform [0, 1) draws from the stream in ``rng_state``, which advances."""
        r = [int(v) for v in self.rng_state]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64", "state": {"state": (r[1] << 64) | r[2], "inc": (r[3] << 64) | r[4]},
            "has_uint32": r[5], "uinteger": r[6]}
        u = self._rng.random(size)
        self._store()
        return u

    @property
    def seed(self) -> int:
        """The seed the stream started from."""
        return int(self.rng_state[0])

    def get_rng_state(self):
        """A copy of the stream state (the (7,) uint64 buffer ``rng_state``)."""
        return self.rng_state.copy()

    def set_rng_state(self, state) -> None:
        """Restore a state from ``get_rng_state()``: the next draws repeat."""
        self.rng_state[...] = state

    def reseed(self, seed: int) -> None:
        """Restart the stream as ``np.random.default_rng(seed)``."""
        seed = V.seed(seed)
        self._rng = np.random.default_rng(seed)
        self.rng_state[0] = seed
        self._store()


class FractionalMaxPool2d(_GeneratorStream, Module):
    """Fractional max pooling (Graham 2014, "Fractional Max-Pooling"): disjoint
    pooling regions from the pseudo-random sequence a_i = ceil(alpha (i + u)) -
    ceil(alpha u), alpha = H_in / H_out (and likewise along W), so the size
    shrinks by a non-integer factor such as sqrt(2).

    output_size (int or (OH, OW)) or output_ratio (float or pair, in (0, 1]:
    OH = floor(H * ratio), at least 1). Training: fresh offsets u (one per axis,
    shared by the batch) on every forward call, drawn from a generator seeded by
    ``seed`` (None: from fastnn's global generator) whose state is the buffer
    ``rng_state``, saved by ``state_dict``/``save`` and Trainer checkpoints, so
    a resumed run draws the same grids. Eval: the fixed offset
    u = 0.5 on both axes, so eval output is deterministic and does not consume
    random numbers (Graham averages several random draws at test time instead;
    call the layer in training mode repeatedly to do that). Backward is
    argmax-based like MaxPool2d."""

    def __init__(self, output_size=None, output_ratio=None, seed=None):
        super().__init__()
        if (output_size is None) == (output_ratio is None):
            raise ValueError("give exactly one of output_size or output_ratio")
        self.output_size = None if output_size is None else V.pair(output_size, "output_size", 1)
        if output_ratio is not None:
            r = output_ratio if isinstance(output_ratio, (tuple, list)) else (output_ratio, output_ratio)
            if len(r) != 2:
                raise ValueError(f"output_ratio must be a number or a pair, got {output_ratio!r}")
            self.output_ratio = tuple(V.real(v, "output_ratio", low=0.0, high=1.0, low_open=True) for v in r)
        else:
            self.output_ratio = None
        self._init_stream(seed)
        self._saved = None
        self.last_offsets = None

    def _out_size(self, h, w):
        if self.output_size is not None:
            oh, ow = self.output_size
        else:
            oh, ow = max(1, int(h * self.output_ratio[0])), max(1, int(w * self.output_ratio[1]))
        if oh > h or ow > w:
            raise ValueError(f"output_size ({oh}, {ow}) is larger than the input ({h}, {w})")
        return oh, ow

    def forward(self, x):
        """``x (N, C, H, W) -> y (N, C, OH, OW)`` over pseudo-random disjoint regions
        (fresh in training, fixed in eval); the regions used are in ``last_offsets``.
        """
        V.float_array(x, "x", ndim=4)
        h, w = x.shape[2:]
        oh, ow = self._out_size(h, w)
        u = tuple(self._random(2)) if self.training else (0.5, 0.5)
        self.last_offsets = u
        rows = ops.fractional_pool_bounds(h, oh, u[0])
        cols = ops.fractional_pool_bounds(w, ow, u[1])
        y, self._saved = ops.max_pool_regions(x, rows, cols)
        return y

    def backward(self, dout):
        """``dout (N, C, OH, OW) -> dx (N, C, H, W)``, routed to each region's maximum."""
        if self._saved is None:
            raise RuntimeError("FractionalMaxPool2d.backward called before forward")
        return ops.max_pool2d_backward(dout, self._saved)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C): the mean of each channel plane (Lin et al. 2013)."""

    def __init__(self):
        super().__init__()
        self._shape = None

    def forward(self, x):
        """``x (N, C, H, W) -> y (N, C)``, ``y[n, c] = mean over h, w of x[n, c, h, w]``."""
        V.float_array(x, "x", ndim=4, contiguous=False)
        self._shape = x.shape
        return ops.global_avg_pool2d(V.array_module(x).ascontiguousarray(x))

    def backward(self, dout):
        """``dout (N, C) -> dx (N, C, H, W)``, each element ``dout[n, c] / (H*W)``."""
        if self._shape is None:
            raise RuntimeError("GlobalAvgPool2d.backward called before forward")
        n, c = self._shape[:2]
        V.shape_is(dout, "dout", (n, c))
        return ops.global_avg_pool2d_backward(dout, self._shape)


class AvgPool2d(Module):
    """Average pooling over kernel_size windows (an int or (kh, kw)); stride
    defaults to kernel_size; zero padding (at most half the window). The divisor
    is kh * kw with count_include_pad=True (PyTorch's default), else the number
    of input elements the window covers. Floor output size, as PyTorch:
    OH = (H + 2 ph - kh) // stride_h + 1 (OW likewise)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.kernel_size = V.pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else V.pair(stride, "stride", 1)
        self.padding = _pool_padding(padding, self.kernel_size)
        if not isinstance(count_include_pad, (bool, np.bool_)):
            raise TypeError(f"count_include_pad must be a bool, got {type(count_include_pad).__name__}")
        self.count_include_pad = bool(count_include_pad)
        self._saved = None

    def forward(self, x):
        """``x (N, C, H, W) -> y (N, C, OH, OW)``, each the mean of its window."""
        y, self._saved = ops.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)
        return y

    def backward(self, dout):
        """``dout (N, C, OH, OW) -> dx (N, C, H, W)``: each gradient spread evenly over its window."""
        if self._saved is None:
            raise RuntimeError("AvgPool2d.backward called before forward")
        return ops.avg_pool2d_backward(dout, self._saved)


def stochastic_depth_probs(n_blocks, p_last=0.5):
    """Survival probabilities of Huang et al. (2016)'s linear decay rule,
    p_l = 1 - l / L * (1 - p_L) for blocks l = 1..L: near 1 for the first block,
    p_last for the last."""
    n = V.positive_int(n_blocks, "n_blocks")
    p_last = V.real(p_last, "p_last", low=0.0, high=1.0, low_open=True)
    return [1.0 - l / n * (1.0 - p_last) for l in range(1, n + 1)]


class Residual(_GeneratorStream, Module):
    """y = x + f(x) with stochastic depth (Huang et al. 2016, "Deep Networks with
    Stochastic Depth"): in training the whole block is skipped (y = x) with
    probability 1 - survival_prob, drawn once per forward call for the batch; in
    eval y = x + survival_prob * f(x), the expected value. survival_prob = 1 is
    the plain residual connection. f must keep the shape of x.

    The skip decisions come from a generator seeded by ``seed`` (None: from
    fastnn's global generator) whose state is the buffer ``rng_state``, saved
    by ``state_dict``/``save`` and Trainer checkpoints, so a resumed run skips
    the same blocks as the uninterrupted one.

    When the block was skipped, backward returns dout and sets the block's
    gradients to zero (backward overwrites .grad)."""

    def __init__(self, block, survival_prob=1.0, seed=None):
        super().__init__()
        if not isinstance(block, Module):
            raise TypeError(f"block must be a fastnn Module, got {type(block).__name__}")
        self.block = block
        self.survival_prob = V.real(survival_prob, "survival_prob", low=0.0, high=1.0, low_open=True)
        self._init_stream(seed)
        self._ran = None      # None: no forward yet; False: skipped; True: block ran
        self._scale = 1.0

    def forward(self, x):
        """Training: ``y = x + f(x)`` if the block survives (probability
        ``survival_prob``), else ``y = x``; eval: ``y = x + survival_prob * f(x)``.
        x any shape f accepts; y the same shape.
        """
        p = self.survival_prob
        if self.training and p < 1.0 and self._random() >= p:
            self._ran = False
            return x
        self._ran = True
        self._scale = 1.0 if self.training else p
        fx = self.block.forward(x)
        if fx.shape != x.shape:
            raise ValueError(f"Residual block must keep the shape of its input: {x.shape} -> {fx.shape}")
        if self._scale == 1.0:
            return x + fx
        return x + fx.dtype.type(self._scale) * fx

    def backward(self, dout):
        """``dx = dout + df/dx^T dout`` (just ``dout`` when the block was skipped, its gradients then zero)."""
        if self._ran is None:
            raise RuntimeError("Residual.backward called before forward")
        if not self._ran:
            for p in self.block.parameters():
                p.grad[...] = 0
            return dout
        self.block.set_input_grad(True)
        g = dout if self._scale == 1.0 else dout * dout.dtype.type(self._scale)
        return dout + self.block.backward(V.array_module(g).ascontiguousarray(g))
