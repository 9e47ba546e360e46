"""fastnn._validate: the shared argument checks (each failure names the argument)."""
from __future__ import annotations

import numpy as np
import pytest

from fastnn import _validate as V


def test_batch_accepts_batches_and_names_what_is_wrong():
    x = np.ones((3, 2), np.float32)
    assert V.batch(x, "X") is x
    assert V.batch(np.ones((0, 2)), "X", allow_empty=True).shape == (0, 2)
    assert V.batch(np.ones((4, 6))[:, ::2], "X").shape == (4, 3)          # strided is fine unless asked
    with pytest.raises(ValueError, match=r"X must be a batch \(N, \.\.\.\): a batch axis, then the features, "
                                         r"got shape \(3,\)"):
        V.batch(np.ones(3), "X")
    with pytest.raises(ValueError, match=r"val\[0\] must be a non-empty batch \(N, \.\.\.\), got shape \(0, 2\)"):
        V.batch(np.ones((0, 2)), "val[0]")
    with pytest.raises(ValueError, match="x must be 4-D"):
        V.batch(np.ones((2, 3)), "x", ndim=4)
    with pytest.raises(ValueError, match="C-contiguous"):
        V.batch(np.ones((4, 6))[:, ::2], "x", contiguous=True)
    with pytest.raises(TypeError, match="X must have dtype float32 or float64, got int64"):
        V.batch(np.ones((2, 2), np.int64), "X")


def test_pair_and_seed():
    assert V.pair(3, "stride", 1) == (3, 3)
    assert V.pair((2, 5), "kernel_size", 1) == (2, 5)
    assert V.pair([0, 1], "padding") == (0, 1)
    with pytest.raises(ValueError, match=r"size must be an int or a pair \(height, width\) of ints, got \(1, 2, 3\)"):
        V.pair((1, 2, 3), "size")
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        V.pair((1, 0), "stride", 1)
    assert V.seed(np.uint64(2**64 - 1)) == 2**64 - 1
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*64\), got -1"):
        V.seed(-1)
    with pytest.raises(TypeError, match="offset must be an int, got bool"):
        V.uint64(True, "offset")
