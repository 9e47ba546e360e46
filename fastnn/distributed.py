"""Data-parallel training over MPI (mpi4py), NCCL for CuPy buffers.

One process per rank, each with a full replica of the model:

    mpirun -n 4 fastnn train --distributed
    # or, in a script started by mpirun:
    fnn.distributed.init()
    trainer = fnn.Trainer(model, loss, opt, distributed=True)   # bucket_mb=... for overlap
    trainer.fit(X, y, epochs=10, batch_size=256)                 # 256 = the GLOBAL batch

What keeps the replicas identical (``DataParallel``):

- At construction rank 0 broadcasts the flat parameter buffer, the optimizer
  state and every module buffer (BatchNorm running statistics, Dropout seeds);
  the Trainer also broadcasts its shuffling generator, so every rank draws the
  same global batches.
- Each rank runs forward/backward on its rows of the global batch (rank r of p
  gets rows [r*B/p, (r+1)*B/p)), so its gradient is that of its local mean
  loss. The gradients are weighted by each rank's share of the batch and summed
  by ONE in-place allreduce of the flat gradient buffer: the average of equal
  shards, the gradient of the global mean loss. Then every rank runs the same
  fused optimizer step on the same numbers.
- ``bucket_mb``: the flat gradient buffer is cut, from its end, into buckets of
  about that many MiB at layer boundaries. During backward, as soon as the
  last layer of a bucket has written its gradients, a non-blocking
  ``Iallreduce`` of that bucket starts (NCCL: it is queued on the stream) while
  backward goes on with the layers before it; the optimizer step waits for all
  of them. The result is the same sum as the single collective.
- Dropout/DropConnect: rank r uses the Philox stream (seed, offset + r * 2**52),
  so the masks differ between ranks and the run is reproducible; checkpoints
  keep the rank-0 offset.
- BatchNorm keeps local statistics unless built with ``sync_bn=True``; the
  local running statistics are averaged over the ranks at the end of every
  epoch (before evaluation), so every replica evaluates with the same buffers.
- Only rank 0 prints progress and writes checkpoints; every rank evaluates the
  full validation set itself (identical models, identical numbers, no
  communication).

Without ``init()`` (or with one process) every function here is the
single-process identity: ``rank() == 0``, ``world_size() == 1``. The
collectives (``init``, ``rank``, ``allreduce_``, ``broadcast_`` ...) live in
``fastnn._comm`` (layer L0, shared with synchronized BatchNorm) and are
re-exported here.
"""
from __future__ import annotations

import time

import numpy as np

from . import _comm
from . import _validate as V
from ._comm import (
    active,
    allreduce_,
    allreduce_mean,
    barrier,
    broadcast_,
    broadcast_object,
    init,
    is_initialized,
    is_main,
    rank,
    world_size,
)
from .nn import BatchNorm1d, BatchNorm2d, Sequential

# Each rank's dropout stream starts rank * RANK_STREAM_SPAN elements apart: 4096
# ranks of 4.5e15 mask elements each before two streams could meet.
RANK_STREAM_SPAN = 2**52


# --- data parallelism ------------------------------------------------------------

def shard_bounds(n: int, world: int | None = None, index: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of n rows that rank ``index`` trains on
    (as even as possible; equal shards when world divides n)."""
    world = world_size() if world is None else world
    index = rank() if index is None else index
    base, extra = divmod(n, world)
    lo = index * base + min(index, extra)
    return lo, lo + base + (1 if index < extra else 0)


class DataParallel:
    """Keeps the replicas of ``model`` trained by ``optimizer`` identical across
    the ranks (see the module docstring). ``bucket_mb``: None for one allreduce
    of the whole gradient after backward; a size in MiB for buckets reduced
    during backward (the model must be a ``Sequential``).

    Per step: ``begin_backward(weight)``, ``model.backward(...)``,
    ``finish_backward()``, then ``optimizer.step()``."""

    def __init__(self, model, optimizer, bucket_mb=None):
        init()
        self.model = model
        self.optimizer = optimizer
        self.rank = rank()
        self.world_size = world_size()
        self.flat_grad = optimizer.flat_grad
        self.bucket_mb = None if bucket_mb is None else V.real(bucket_mb, "bucket_mb", low=0.0, low_open=True)
        self._weight = 1.0
        self._pending = []
        self._buckets = None
        if self.bucket_mb is not None:
            self._buckets = self._make_buckets()
        self.comm_seconds = 0.0      # time spent waiting in gradient collectives (for benchmarks)
        self.broadcast_state()

    # --- set-up ---------------------------------------------------------------------
    def broadcast_state(self) -> None:
        """Rank 0's parameters, optimizer state and module buffers to every rank."""
        if not active():
            return
        broadcast_(self.optimizer.flat_param)
        for s in self.optimizer.state:
            broadcast_(s)
        for _, buf in self.model.named_buffers():
            if isinstance(buf, np.ndarray) and buf.flags.c_contiguous:
                broadcast_(buf)

    def rank_streams(self) -> None:
        """Move every Philox stream (Dropout, DropConnect) to this rank's block:
        offset = (offset mod span) + rank * span. Idempotent, so it is safe after
        loading rank 0's checkpoint."""
        for m in self.model.modules():
            state = getattr(m, "rng_state", None)
            if isinstance(state, np.ndarray) and state.dtype == np.uint64 and state.shape == (2,):
                state[1] = np.uint64(int(state[1]) % RANK_STREAM_SPAN + self.rank * RANK_STREAM_SPAN)

    def _make_buckets(self):
        """[(plan steps done in reverse order, [(lo, hi) flat ranges])], and the
        ranges no step covers (reduced after backward)."""
        if not isinstance(self.model, Sequential):
            raise ValueError(f"bucket_mb needs a Sequential model (buckets follow its layers), got "
                             f"{type(self.model).__name__}; use bucket_mb=None for one collective")
        where = {id(p): (b, e) for p, b, e in self.optimizer.flat_ranges()}
        limit = self.bucket_mb * 2**20 / self.flat_grad.itemsize
        plan = self.model.steps()
        ends, ranges, current, size = {}, [], [], 0
        for k, (layer, act) in enumerate(reversed(plan)):
            params = layer.parameters() + (act.parameters() if act is not None else [])
            for p in params:
                if id(p) in where:
                    current.append(where.pop(id(p)))
                    size += current[-1][1] - current[-1][0]
            last = k == len(plan) - 1
            if current and (size >= limit or last):
                merged = _merge(current)
                ends[k] = len(ranges)
                ranges.append(merged)
                current, size = [], 0
        leftover = _merge(list(where.values()))
        return {"ends": ends, "ranges": ranges, "leftover": leftover}

    # --- per step ---------------------------------------------------------------------
    def begin_backward(self, weight: float) -> None:
        """weight: this rank's share of the global batch (1/p for equal shards)."""
        self._weight = weight
        if self._buckets is not None and active():
            self.model.set_backward_hook(self._on_step_done)

    def _on_step_done(self, k: int) -> None:
        b = self._buckets["ends"].get(k)
        if b is not None:
            for lo, hi in self._buckets["ranges"][b]:
                self._start(self.flat_grad[lo:hi])
        else:
            _comm.progress(self._pending)     # lets MPI progress the collectives in flight

    def _start(self, view):
        if self._weight != 1.0:
            view *= view.dtype.type(self._weight)
        request = _comm.iallreduce_(view)
        if request is not None:
            self._pending.append(request)

    def finish_backward(self) -> None:
        """Completes the gradient sum: waits for the buckets, or runs the single collective."""
        if not active():
            return
        t0 = time.perf_counter()
        if self._buckets is not None:
            self.model.set_backward_hook(None)
            for lo, hi in self._buckets["leftover"]:
                self._start(self.flat_grad[lo:hi])
            _comm.wait_all(self._pending)
            self._pending = []
        else:
            if self._weight != 1.0:
                self.flat_grad *= self.flat_grad.dtype.type(self._weight)
            allreduce_(self.flat_grad, "sum")
        self.comm_seconds += time.perf_counter() - t0

    def allreduce_scalar(self, value: float) -> float:
        """Sum of a float over the ranks (e.g. the weighted local losses)."""
        return _comm.allreduce_scalar(value)

    def average_running_stats(self) -> None:
        """Average the running statistics of BatchNorm layers without sync_bn
        (their batches differed); sync_bn ones are identical already."""
        if not active():
            return
        bns = [m for m in self.model.modules() if isinstance(m, (BatchNorm1d, BatchNorm2d)) and not m.sync_bn]
        if not bns:
            return
        flat = np.concatenate([np.concatenate([m.running_mean, m.running_var]).astype(np.float64) for m in bns])
        allreduce_(flat, "mean")
        i = 0
        for m in bns:
            c = m.num_features
            m.running_mean[...] = flat[i:i + c]
            m.running_var[...] = flat[i + c:i + 2 * c]
            i += 2 * c

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision (e.g. early stopping), so every rank takes the same branch."""
        return bool(broadcast_object(bool(flag))) if active() else bool(flag)


def _merge(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


__all__ = ["init", "is_initialized", "rank", "world_size", "is_main", "active", "barrier", "allreduce_",
           "allreduce_mean", "broadcast_", "broadcast_object", "shard_bounds", "DataParallel",
           "RANK_STREAM_SPAN"]
