"""fastnn._comm, the MPI/NCCL primitives under both synchronized BatchNorm and
DataParallel: one communicator, re-exported by fastnn.distributed; without
init() every collective is the single-process identity. (The real 2-rank runs
are in test_distributed.py.)"""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _comm, distributed


def test_distributed_reexports_the_one_communicator():
    for name in ("init", "is_initialized", "rank", "world_size", "is_main", "active", "barrier", "allreduce_",
                 "allreduce_mean", "broadcast_", "broadcast_object"):
        assert getattr(distributed, name) is getattr(_comm, name), name


@pytest.mark.skipif(_comm.is_initialized(), reason="this process already joined an MPI job")
def test_single_process_collectives_are_the_identity():
    buf = np.arange(4.0)
    assert not _comm.active() and _comm.rank() == 0 and _comm.world_size() == 1
    assert _comm.allreduce_(buf) is buf and buf.tolist() == [0, 1, 2, 3]
    assert _comm.allreduce_scalar(2.5) == 2.5
    assert _comm.broadcast_object({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="op must be 'sum' or 'mean', got 'max'"):
        _comm.allreduce_(buf, "max")
    with pytest.raises(ValueError, match="buf must be a writeable C-contiguous array"):
        _comm.allreduce_(np.zeros((4, 4))[:, 1])


def test_optimizer_flat_ranges_locate_each_parameter():
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4), fnn.nn.ReLU(), fnn.nn.Linear(4, 2))
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    assert opt.parameters() == model.parameters()
    ranges = opt.flat_ranges()
    assert [(b, e) for _, b, e in ranges] == [(0, 12), (12, 16), (16, 24), (24, 26)]
    for p, b, e in ranges:
        assert np.shares_memory(p.data, opt.flat_param[b:e]) and np.shares_memory(p.grad, opt.flat_grad[b:e])
