"""Dropout and DropConnect: the Philox-stream layers (BatchNorm lives in
fastnn/nn/batchnorm.py).

Shapes: Dropout on any shape. DropConnect is a Linear whose weight matrix
(in, out) is dropped out per forward call.
"""
from __future__ import annotations

import numpy as np

from .. import _validate as V
from .. import ops
from .._random import generator
from .layers import Linear
from .module import Module


def _init_stream(module, seed):
    """(seed, offset) of a module's Philox stream, kept as a uint64 buffer so
    checkpoints resume the exact masks."""
    seed = int(generator().integers(2**63)) if seed is None else V.seed(seed)
    module.register_buffer("rng_state", np.array([seed, 0], np.uint64), host=True)


class _PhiloxStream:
    """A layer that draws randomness from its own Philox stream (seed, offset).

    The stochastic-layer protocol (shared with FractionalMaxPool2d and Residual):
    ``stochastic`` is True; ``get_rng_state()`` / ``set_rng_state(state)`` save
    and restore the stream; ``reseed(seed)`` restarts it from a new seed (used by
    fastnn.ensemble.mc_predict and the diagnostics, which leave it as found)."""

    stochastic = True

    def get_rng_state(self):
        """A copy of the stream state, ``(seed, offset)`` as a (2,) uint64 array."""
        return self.rng_state.copy()

    def set_rng_state(self, state) -> None:
        """Restore a state from ``get_rng_state()``: the next masks repeat."""
        self.rng_state[...] = state

    def reseed(self, seed: int) -> None:
        """Restart the mask stream from ``seed`` at offset 0."""
        self.rng_state[...] = (V.seed(seed), 0)

    @property
    def seed(self) -> int:
        """The Philox seed of the masks."""
        return int(self.rng_state[0])

    @property
    def offset(self) -> int:
        """The Philox counter offset of the next mask (advances by the number of elements each training call)."""
        return int(self.rng_state[1])

    @offset.setter
    def offset(self, value: int) -> None:
        self.rng_state[1] = value


class Dropout(_PhiloxStream, Module):
    """Inverted dropout (Srivastava et al. 2014): zero each element with
    probability ``p`` in training and scale the rest by ``1 / (1 - p)``; eval is
    the identity.

    Lecture convention: the notes' ``p`` is the probability of KEEPING a unit
    (``p = 0.5`` there); fastnn's (PyTorch's) ``p`` is the probability of
    DROPPING it, so the notes' keep probability 0.8 is ``Dropout(0.2)``.

    The mask is never stored: element i of a call uses Philox(seed, offset + i)
    and backward regenerates it. Each training call advances offset, so masks
    differ between steps; the seed comes from fastnn's global generator (or
    ``seed=``), so ``fastnn.manual_seed`` makes a run reproducible.

    Parameters
    ----------
    p : float in [0, 1), default 0.5
        Drop probability.
    seed : int, optional
        Philox seed of the masks; None draws one from fastnn's global
        generator."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = V.real(p, "p", low=0.0, high=1.0, high_open=True)
        _init_stream(self, seed)
        self._used = None

    def forward(self, x):
        """Training: ``y = x * m / (1 - p)`` with ``m_i ~ Bernoulli(1 - p)``; eval
        (or p = 0): ``y = x``. x any shape, float32 or float64; y the same.
        """
        if not self.training or self.p == 0.0:
            self._used = None
            return x
        self._used = self.offset
        self.offset += int(np.prod(x.shape))
        return ops.dropout(x, self.p, self.seed, self._used, out=self._buf("y", x.shape, x.dtype))

    def backward(self, dout):
        """``dx = dout * m / (1 - p)`` with the mask of the last forward, regenerated from (seed, offset)."""
        if self._used is None:
            return dout
        return ops.dropout_backward(dout, self.p, self.seed, self._used, out=self._buf("dx", dout.shape, dout.dtype))


class DropConnect(_PhiloxStream, Linear):
    """A Linear layer whose weights are dropped per forward call (Wan et al. 2013,
    "Regularization of Neural Networks using DropConnect")::

        train: y = act(x @ (M * W) / (1 - p) + b),   M_ij ~ Bernoulli(1 - p)
        eval:  y = act(x @ W + b)                    (the expected train output)

    Shapes: x (N, in_features); W and M (in_features, out_features); b
    (out_features,); y (N, out_features). ``p`` is the probability of dropping
    a weight (as Dropout's p); kept weights are scaled by 1/(1-p) in training
    (inverted), so eval is the plain layer (the mean-field form, not the
    paper's Gaussian moment-matching inference).

    One mask M per forward call, shared by every example of the batch. Wan et
    al. draw a mask per example (N masks of in x out and N different matrix
    products); sharing one per mini-batch, as common implementations do, keeps
    the layer one GEMM with a masked weight and needs no (N, in, out) mask
    memory. The output is still an unbiased estimate of the eval layer; a
    step's gradient averages over one mask instead of N, so it is a little
    noisier.

    The bias is not masked: the mask falls on connections (the weight matrix);
    the bias is a per-unit offset. For a dropped bias too, build the layer with
    bias=False and append a constant-1 input feature, so the bias becomes a row
    of W.

    The mask comes from the same Philox generator as Dropout: weight (i, j) of
    a call uses Philox(seed, offset + i * out_features + j), regenerated in
    backward; (seed, offset) is the buffer ``rng_state``, saved by state_dict
    and Trainer checkpoints."""

    def __init__(self, in_features, out_features, p=0.5, activation=None, alpha=None, init="auto", bias=True,
                 dtype=np.float32, rng=None, seed=None):
        super().__init__(in_features, out_features, activation=activation, alpha=alpha, init=init, bias=bias,
                         dtype=dtype, rng=rng)
        self.p = V.real(p, "p", low=0.0, high=1.0, high_open=True)
        _init_stream(self, seed)
        self._used = None

    def forward_fused(self, x, act, alpha):
        """Forward with activation ``act`` (a name) and its parameter ``alpha``
        fused in: ``x (N, in) -> y (N, out)``, the weight masked in training.
        Sequential calls this; ``forward`` is this with the layer's own activation.
        """
        V.float_array(x, "x", ndim=2, dtype=self.weight.data.dtype)
        w = self.weight.data
        self._used = None
        if self.training and self.p > 0.0:
            self._used = self.offset
            self.offset += w.size
            w = ops.dropout(w, self.p, self.seed, self._used)
        y, self._saved = ops.linear_act(x, w, self.bias.data if self.bias else None, act, alpha)
        return y

    def backward_fused(self, dout):
        """Backward of ``forward_fused``: ``dout (N, out) -> dx (N, in)``; writes
        ``weight.grad`` (masked by the same M) and ``bias.grad``.
        """
        dx, dalpha = super().backward_fused(dout)
        if self._used is not None:
            ops.dropout_backward(self.weight.grad, self.p, self.seed, self._used, out=self.weight.grad)
        return dx, dalpha
