"""BatchNorm1d and BatchNorm2d (Ioffe & Szegedy 2015, PyTorch's conventions).

Shapes: BatchNorm1d on (N, C) (or (N, C, L)), BatchNorm2d on (N, C, H, W),
statistics per channel over the m = N*L (or N*H*W) values of each channel.
The math is the batchnorm kernel's (``fastnn.ops.batchnorm`` ->
csrc/ops/batchnorm.h): biased variance to normalize, unbiased in
``running_var``, the fused two-reduction backward.

Synchronized BatchNorm (``sync_bn=True``, data-parallel training over
fastnn.distributed) is the same algorithm split at its two reductions, with an
allreduce in each gap (as PyTorch's SyncBatchNorm does):

    forward   local shifted sums of x and x**2 and the count   (_shifted_moments)
              allreduce                                        (fastnn._comm)
              global mean and biased variance                  (_mean_var)
              normalize + affine + act with them               (the kernel, eval form)
              running statistics update                        (_update_running)
    backward  local sum(dz), sum(dz * xhat)                    (the kernel, eval form:
                                                                dbeta, dgamma)
              allreduce
              dx -= scale * (mean(dz) + xhat * mean(dz * xhat)) (_dx_correction)

The shift is running_mean, the same on every rank. The helpers mirror the
functions of csrc/ops/batchnorm.h of the same names; they run in NumPy float64
because the kernels have no entry point that stops at a reduction.
"""
from __future__ import annotations

import numpy as np

from .. import _comm, ops
from .. import _validate as V
from ..backend.codes import SAVES_PREACTIVATION
from .layers import _dtype
from .module import Module, Parameter

# --- the split formula of synchronized BatchNorm (csrc/ops/batchnorm.h) -----------

def _shifted_moments(x, shift):
    """[sum(x - shift) (C), sum((x - shift)**2) (C), m] in float64 over a
    (N, C, *) batch: one rank's share of BatchNormMoments and of the count."""
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    centered = x3 - shift[None, :, None]
    sums = np.empty(2 * c + 1)
    sums[:c] = centered.sum(axis=(0, 2))
    sums[c:2 * c] = np.einsum("ncs,ncs->c", centered, centered)
    sums[2 * c] = x3.shape[0] * x3.shape[2]
    return sums


def _mean_var(sums, shift):
    """(mean, biased variance, count) of every channel from the summed moments
    (batchnorm_mean_var)."""
    c = shift.shape[0]
    count = sums[2 * c]
    if count < 2:
        raise ValueError(f"Expected more than 1 value per channel over all ranks when training, got {count:g}")
    m = sums[:c] / count
    var = np.maximum(sums[c:2 * c] / count - m * m, 0.0)
    return shift + m, var, count


def _update_running(running_mean, running_var, mean, var, count, momentum) -> None:
    """running = (1 - momentum) running + momentum batch, the variance unbiased
    by m/(m-1) (batchnorm_update_running), in the buffers' dtype."""
    dt = running_mean.dtype
    mom = dt.type(momentum)
    running_mean[...] = (1 - mom) * running_mean + mom * mean.astype(dt)
    running_var[...] = (1 - mom) * running_var + mom * (var * count / (count - 1)).astype(dt)


def _dx_correction(dx, saved, gamma, mean_dz, mean_dz_xhat) -> None:
    """dx (the eval-form scale * dz) becomes the train-form
    scale * (dz - mean(dz) - xhat * mean(dz * xhat)) (batchnorm_dx), in place."""
    c = saved.invstd.shape[0]
    dt = dx.dtype
    invstd = saved.invstd
    scale = invstd * gamma if gamma is not None else invstd
    mean = saved.mean[0] + saved.mean[1]
    x3 = saved.x.reshape(saved.x.shape[0], c, -1)
    xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
    correction = scale[None, :, None] * (mean_dz.astype(dt)[None, :, None]
                                         + xhat * mean_dz_xhat.astype(dt)[None, :, None])
    dx.reshape(x3.shape)[...] -= correction


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
        """Whether the activation layer ``act`` can run fused in this layer's kernel (Sequential asks)."""
        return act.name not in SAVES_PREACTIVATION

    def forward(self, x):
        """Normalize per channel, then scale and shift.

        Training: ``xhat = (x - mean_B) / sqrt(var_B + eps)`` with the batch's mean
        and biased variance; ``y = gamma * xhat + beta``; the running statistics
        move: ``running = (1 - momentum) * running + momentum * batch_stat``
        (``running_var`` takes the unbiased batch variance). Eval: the same with
        ``running_mean`` and ``running_var``.

        Parameters
        ----------
        x : (N, C) or (N, C, L) for BatchNorm1d, (N, C, H, W) for BatchNorm2d
            float32 or float64, the dtype of the layer.

        Returns
        -------
        array, the shape of x
        """
        return self.forward_fused(x, "identity", None)

    def forward_fused(self, x, act, alpha):
        """``forward`` with the activation ``act`` (a name) and its parameter ``alpha`` applied in the same pass (Sequential calls this)."""
        self._check(x)
        self._sync_count = None
        if self.sync_bn and self.training and _comm.active():
            return self._forward_sync(x, act, alpha)
        y, self._saved = ops.batchnorm(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None,
            self.running_mean, self.running_var, training=self.training, momentum=self.momentum, eps=self.eps,
            act=act, alpha=alpha, out=self._buf("y", x.shape, x.dtype))
        return y

    def backward(self, dout):
        """``dx = gamma / sqrt(var + eps) * (dout - mean(dout) - xhat * mean(dout * xhat))``
        (means over the batch and spatial axes); writes ``weight.grad =
        sum(dout * xhat)`` and ``bias.grad = sum(dout)``. Returns dx, the shape of x.
        """
        return self.backward_fused(dout)[0]

    def backward_fused(self, dout):
        """Backward of ``forward_fused``; returns ``(dx, None)``."""
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

    # --- synchronized statistics (see the module docstring) ---------------------------
    def _forward_sync(self, x, act, alpha):
        shift = self.running_mean.astype(np.float64)
        sums = _comm.allreduce_(_shifted_moments(x, shift), "sum")
        mean, var, count = _mean_var(sums, shift)
        dt = x.dtype
        y, self._saved = ops.batchnorm(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None,
            mean.astype(dt), var.astype(dt), training=False, eps=self.eps, act=act, alpha=alpha,
            out=self._buf("y", x.shape, x.dtype))
        _update_running(self.running_mean, self.running_var, mean, var, count, self.momentum)
        self._sync_count = count
        return y

    def _backward_sync(self, dout):
        """dx of the global batch: scale * (dz - mean(dz) - xhat * mean(dz * xhat)),
        the means over every rank's rows; dgamma, dbeta stay local (the gradient
        allreduce adds them up)."""
        gamma = self.weight.data if self.affine else None
        dx, dgamma, dbeta = ops.batchnorm_backward(
            dout, self._saved, gamma, need_dx=self.input_grad, dgamma=self.weight.grad if self.affine else None,
            dbeta=self.bias.grad if self.affine else None, out=self._buf("dx", dout.shape, dout.dtype))
        if dx is None:
            return None
        c = self.num_features
        sums = _comm.allreduce_(np.concatenate([dbeta, dgamma]).astype(np.float64), "sum")  # sum(dz), sum(dz*xhat)
        _dx_correction(dx, self._saved, gamma, sums[:c] / self._sync_count, sums[c:] / self._sync_count)
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalization (Ioffe & Szegedy 2015) of (N, C) (or (N, C, L)) per
    feature, PyTorch semantics.

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, with the batch's
    statistics in training and the running ones in eval (see ``forward``).
    Place it between a Linear and its activation; it makes training far less
    sensitive to the init and allows higher learning rates.

    Parameters
    ----------
    num_features : int
        C, the number of features (axis 1).
    momentum : float, default 0.1
        Weight of the new batch statistic in the running averages.
    eps : float, default 1e-5
        Added to the variance.
    affine : bool, default True
        Learn ``weight`` (gamma, init 1) and ``bias`` (beta, init 0).
    dtype : float32 or float64, default float32
    sync_bn : bool, default False
        Compute the batch statistics over every ``fastnn.distributed`` rank."""
    _ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Spatial batch normalization of (N, C, H, W): statistics per channel over
    N, H, W (one gamma and beta per channel).

    Parameters as :class:`BatchNorm1d`; x is ``(N, C, H, W)``."""
    _ndims = (4,)
