"""BatchNorm1d/2d, Dropout and DropConnect.

Shapes: BatchNorm1d on (N, C) (or (N, C, L)), BatchNorm2d on (N, C, H, W),
statistics per channel. Dropout on any shape. DropConnect is a Linear whose
weight matrix (in, out) is dropped out per forward call.

Synchronized BatchNorm (``sync_bn=True``, data-parallel training over
fastnn.distributed): forward allreduces the per-channel sums of (x - shift) and
(x - shift)**2 and the count (shift = running_mean, the same on every rank), so
every rank normalizes with the global batch mean and biased variance; backward
allreduces the two per-channel reductions sum(dz) and sum(dz * xhat) of the
two-reduction formula. Normalization itself runs in the batchnorm kernel
(eval form, given the global statistics), the rest in NumPy float64.
"""
from __future__ import annotations

import numpy as np

from .. import _validate as V
from .. import distributed
from .. import ops
from .._random import generator
from ..backend.codes import SAVES_PREACTIVATION
from .layers import Linear, _dtype
from .module import Module, Parameter


class _BatchNorm(Module):
    _ndims: tuple = ()

    def __init__(self, num_features, momentum=0.1, eps=1e-5, affine=True, dtype=np.float32, sync_bn=False):
        super().__init__()
        self.sync_bn = bool(sync_bn)   # global batch statistics across fastnn.distributed ranks
        self.num_features = V.positive_int(num_features, "num_features")
        self.momentum = V.real(momentum, "momentum", low=0.0, high=1.0)
        self.eps = V.real(eps, "eps", low=0.0, low_open=True)
        dt = _dtype(dtype)
        self.affine = bool(affine)
        if self.affine:
            self.weight = Parameter(np.ones(self.num_features, dt), "weight")   # gamma
            self.bias = Parameter(np.zeros(self.num_features, dt), "bias")      # beta
        else:
            self.weight = self.bias = None
        self.register_buffer("running_mean", np.zeros(self.num_features, dt))
        self.register_buffer("running_var", np.ones(self.num_features, dt))
        self._saved = None
        self._sync_count = None   # global count per channel when the last forward synchronized

    def _check(self, x):
        V.float_array(x, "x", ndim=self._ndims, dtype=self.running_mean.dtype)
        if x.shape[1] != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels (axis 1) for {type(self).__name__}"
                             f"({self.num_features}), got shape {x.shape}")

    def fuses(self, act) -> bool:
        return act.name not in SAVES_PREACTIVATION

    def forward(self, x):
        return self.forward_fused(x, "identity", None)

    def forward_fused(self, x, act, alpha):
        self._check(x)
        self._sync_count = None
        if self.sync_bn and self.training and distributed.active():
            return self._forward_sync(x, act, alpha)
        y, self._saved = ops.batchnorm(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None,
            self.running_mean, self.running_var, training=self.training, momentum=self.momentum, eps=self.eps,
            act=act, alpha=alpha, out=self._buf("y", x.shape, x.dtype))
        return y

    def backward(self, dout):
        return self.backward_fused(dout)[0]

    def backward_fused(self, dout):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        if self._sync_count is not None:
            return self._backward_sync(dout), None
        if self.affine:
            dx, _, _ = ops.batchnorm_backward(dout, self._saved, self.weight.data, need_dx=self.input_grad,
                                              dgamma=self.weight.grad, dbeta=self.bias.grad,
                                              out=self._buf("dx", dout.shape, dout.dtype))
        else:
            dx, _, _ = ops.batchnorm_backward(dout, self._saved, None, need_dx=self.input_grad,
                                              out=self._buf("dx", dout.shape, dout.dtype))
        return dx, None

    # --- synchronized statistics ---------------------------------------------------
    def _forward_sync(self, x, act, alpha):
        n, c = x.shape[:2]
        x3 = x.reshape(n, c, -1)
        shift = self.running_mean.astype(np.float64)
        centered = x3 - shift[None, :, None]
        sums = np.empty(2 * c + 1)
        sums[:c] = centered.sum(axis=(0, 2))
        sums[c:2 * c] = np.einsum("ncs,ncs->c", centered, centered)
        sums[2 * c] = x3.shape[0] * x3.shape[2]
        distributed.allreduce_(sums, "sum")
        count = sums[2 * c]
        if count < 2:
            raise ValueError(f"Expected more than 1 value per channel over all ranks when training, got {count:g}")
        m = sums[:c] / count
        var = np.maximum(sums[c:2 * c] / count - m * m, 0.0)
        mean = shift + m
        dt = x.dtype
        y, self._saved = ops.batchnorm(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None,
            mean.astype(dt), var.astype(dt), training=False, eps=self.eps, act=act, alpha=alpha,
            out=self._buf("y", x.shape, x.dtype))
        mom = dt.type(self.momentum)
        self.running_mean[...] = (1 - mom) * self.running_mean + mom * mean.astype(dt)
        self.running_var[...] = (1 - mom) * self.running_var + mom * (var * count / (count - 1)).astype(dt)
        self._sync_count = count
        return y

    def _backward_sync(self, dout):
        """dx of the global batch: scale * (dz - mean(dz) - xhat * mean(dz * xhat)),
        the means over every rank's rows; dgamma, dbeta stay local (the gradient
        allreduce adds them up)."""
        saved = self._saved
        gamma = self.weight.data if self.affine else None
        dx, dgamma, dbeta = ops.batchnorm_backward(
            dout, saved, gamma, need_dx=self.input_grad, dgamma=self.weight.grad if self.affine else None,
            dbeta=self.bias.grad if self.affine else None, out=self._buf("dx", dout.shape, dout.dtype))
        if dx is None:
            return None
        c = self.num_features
        sums = np.concatenate([dbeta, dgamma]).astype(np.float64)      # sum(dz), sum(dz * xhat)
        distributed.allreduce_(sums, "sum")
        mean_dz = sums[:c] / self._sync_count
        mean_dz_xhat = sums[c:] / self._sync_count
        dt = dout.dtype
        invstd = saved.invstd
        scale = invstd * gamma if gamma is not None else invstd
        mean = saved.mean[0] + saved.mean[1]
        x3 = saved.x.reshape(saved.x.shape[0], c, -1)
        xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
        correction = scale[None, :, None] * (mean_dz.astype(dt)[None, :, None]
                                             + xhat * mean_dz_xhat.astype(dt)[None, :, None])
        dx.reshape(x3.shape)[...] -= correction
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) (or (N, C, L)) per feature; PyTorch semantics."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Spatial batch normalization of (N, C, H, W): statistics per channel over N, H, W."""
    _ndims = (4,)


def _init_stream(module, seed):
    """(seed, offset) of a module's Philox stream, kept as a uint64 buffer so
    checkpoints resume the exact masks."""
    seed = int(generator().integers(2**63)) if seed is None else ops._seed_offset(seed, 0)[0]
    module.register_buffer("rng_state", np.array([seed, 0], np.uint64))


class _PhiloxStream:
    """A layer that draws randomness from its own Philox stream (seed, offset).

    The stochastic-layer protocol (shared with FractionalMaxPool2d and Residual):
    ``stochastic`` is True; ``get_rng_state()`` / ``set_rng_state(state)`` save
    and restore the stream; ``reseed(seed)`` restarts it from a new seed (used by
    fastnn.ensemble.mc_predict and the diagnostics, which leave it as found)."""

    stochastic = True

    def get_rng_state(self):
        return self.rng_state.copy()

    def set_rng_state(self, state) -> None:
        self.rng_state[...] = state

    def reseed(self, seed: int) -> None:
        self.rng_state[...] = (ops._seed_offset(seed, 0)[0], 0)

    @property
    def seed(self) -> int:
        return int(self.rng_state[0])

    @property
    def offset(self) -> int:
        return int(self.rng_state[1])

    @offset.setter
    def offset(self, value: int) -> None:
        self.rng_state[1] = value


class Dropout(_PhiloxStream, Module):
    """Inverted dropout: p is the probability of zeroing; eval is the identity.

    The mask is never stored: element i of a call uses Philox(seed, offset + i)
    and backward regenerates it. Each training call advances offset, so masks
    differ between steps; the seed comes from fastnn's global generator (or
    ``seed=``), so ``fastnn.manual_seed`` makes a run reproducible."""

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        self.p = V.real(p, "p", low=0.0, high=1.0, high_open=True)
        _init_stream(self, seed)
        self._used = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._used = None
            return x
        self._used = self.offset
        self.offset += int(np.prod(x.shape))
        return ops.dropout(x, self.p, self.seed, self._used, out=self._buf("y", x.shape, x.dtype))

    def backward(self, dout):
        if self._used is None:
            return dout
        return ops.dropout_backward(dout, self.p, self.seed, self._used, out=self._buf("dx", dout.shape, dout.dtype))


class DropConnect(_PhiloxStream, Linear):
    """A Linear layer whose weights are dropped per forward call (Wan et al. 2013):
    train y = act(x @ (mask * W / (1-p)) + b), eval y = act(x @ W + b) (the
    expected value). The mask comes from the same Philox generator as Dropout."""

    def __init__(self, in_features, out_features, p=0.5, activation=None, alpha=None, init="auto", bias=True,
                 dtype=np.float32, rng=None, seed=None):
        super().__init__(in_features, out_features, activation=activation, alpha=alpha, init=init, bias=bias,
                         dtype=dtype, rng=rng)
        self.p = V.real(p, "p", low=0.0, high=1.0, high_open=True)
        _init_stream(self, seed)
        self._used = None

    def forward_fused(self, x, act, alpha):
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
        dx, dalpha = super().backward_fused(dout)
        if self._used is not None:
            ops.dropout_backward(self.weight.grad, self.p, self.seed, self._used, out=self.weight.grad)
        return dx, dalpha
