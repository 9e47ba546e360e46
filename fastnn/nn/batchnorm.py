"""BatchNorm1d and BatchNorm2d (Ioffe & Szegedy 2015, PyTorch's conventions).

Shapes: BatchNorm1d on (N, C) (or (N, C, L)), BatchNorm2d on (N, C, H, W),
statistics per channel over the m = N*L (or N*H*W) values of each channel.
The math is the batchnorm kernel's (``fastnn.ops.batchnorm`` ->
csrc/ops/batchnorm.h): biased variance to normalize, unbiased in
``running_var``, the fused two-reduction backward.

Synchronized BatchNorm (``sync_bn=True``, data-parallel training over
fastnn.distributed) is the same kernels split at their two reductions, with an
allreduce in each gap (as PyTorch's SyncBatchNorm does):

    forward   local float64 sums of x - shift, (x - shift)**2   ops.batchnorm_stats
              allreduce of the (2C,) sums and the count          fastnn._comm
              global mean (hi + lo), invstd, running statistics  ops.batchnorm_gather_stats
              normalize + affine + act                           ops.batchnorm_elemt
    backward  local float64 sum(dz), sum(dz * xhat); dgamma, dbeta ops.batchnorm_backward_reduce
              allreduce of the (2C,) sums
              dx with the global means                           ops.batchnorm_backward_elemt

The shift is running_mean, the same on every rank; dgamma and dbeta stay local
(the gradient allreduce adds them up).
"""
from __future__ import annotations

import numpy as np

from .. import _comm, ops
from .. import _validate as V
from ..backend.codes import SAVES_PREACTIVATION
from .layers import _dtype
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
        """``forward`` with the activation ``act`` (a name) and its parameter ``alpha`` applied in the same pass
        (Sequential calls this)."""
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
        c = self.num_features
        shift = self.running_mean.copy()   # the same on every rank; gather_stats updates running_mean
        sums = V.array_module(x).empty(2 * c + 1)   # on x's device: NCCL reduces CuPy buffers in place
        ops.batchnorm_stats(x, shift, out=sums[:2 * c].reshape(2, c))
        sums[2 * c] = x.size // c
        _comm.allreduce_(sums, "sum")
        count = float(sums[2 * c])
        mean, invstd = ops.batchnorm_gather_stats(sums[:2 * c].reshape(2, c), count, shift, self.running_mean,
                                                  self.running_var, momentum=self.momentum, eps=self.eps)
        y, self._saved = ops.batchnorm_elemt(
            x, self.weight.data if self.affine else None, self.bias.data if self.affine else None, mean, invstd,
            act=act, alpha=alpha, out=self._buf("y", x.shape, x.dtype))
        self._sync_count = count
        return y

    def _backward_sync(self, dout):
        """dx of the global batch: scale * (dz - mean(dz) - xhat * mean(dz * xhat)),
        the means over every rank's rows; dgamma, dbeta stay local (the gradient
        allreduce adds them up)."""
        sums = ops.batchnorm_backward_reduce(dout, self._saved, dgamma=self.weight.grad if self.affine else None,
                                             dbeta=self.bias.grad if self.affine else None)
        if not self.input_grad:
            return None
        _comm.allreduce_(sums.reshape(-1), "sum")        # sum(dz), sum(dz * xhat) over every rank
        means = sums / self._sync_count
        return ops.batchnorm_backward_elemt(dout, self._saved, self.weight.data if self.affine else None, means[0],
                                            means[1], out=self._buf("dx", dout.shape, dout.dtype))


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
