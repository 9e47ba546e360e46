"""Bad input gets a TypeError/ValueError naming the argument, never a crash."""
import numpy as np
import pytest

import fastnn as fnn
from fastnn.backend import cpp

f32 = np.float32


def _x(*shape, dtype=f32):
    return np.ones(shape, dtype)


LINEAR_CASES = [
    # (x, weight, bias, exception, message)
    (_x(3), _x(3, 4), None, ValueError, "x must be 2-D"),
    (_x(2, 3), _x(5, 4), None, ValueError, "weight must have shape"),
    (_x(2, 3), _x(3, 4), _x(5), ValueError, "bias must have shape"),
    (_x(2, 3, dtype=np.float16), _x(3, 4), None, TypeError, "x must have dtype"),
    (_x(2, 3, dtype=np.int64), _x(3, 4), None, TypeError, "x must have dtype"),
    (_x(2, 3), _x(3, 4, dtype=np.float64), None, TypeError, "weight must have dtype"),
    (_x(3, 2).T, _x(3, 4), None, ValueError, "x must be C-contiguous"),
    (_x(2, 3), _x(4, 3).T, None, ValueError, "weight must be C-contiguous"),
    ([[1.0, 2.0]], _x(2, 4), None, TypeError, "x must be a numpy"),
]


@pytest.mark.parametrize("x,w,b,exc,msg", LINEAR_CASES)
def test_linear_act_rejects(backend, x, w, b, exc, msg):
    with pytest.raises(exc, match=msg):
        fnn.ops.linear_act(x, w, b, "relu")


@pytest.mark.parametrize("act,alpha,msg", [("relu6", None, "act must be one of"),
                                           ("leaky_relu", -0.1, "alpha"), ("elu", 0.0, "alpha"),
                                           ("elu", float("nan"), "alpha")])
def test_bad_activation(act, alpha, msg):
    with pytest.raises(ValueError, match=msg):
        fnn.ops.linear_act(_x(2, 3), _x(3, 4), None, act, alpha)


def test_bindings_check_arguments_themselves():
    C = cpp._C
    y = np.empty((2, 4), f32)
    with pytest.raises(ValueError, match="weight must have shape"):
        C.linear_act_forward(_x(2, 3), _x(2, 4), None, y, None, 1, 0.0)
    with pytest.raises(TypeError, match="y must have dtype"):
        C.linear_act_forward(_x(2, 3), _x(3, 4), None, np.empty((2, 4)), None, 1, 0.0)
    with pytest.raises(ValueError, match="y must be writable"):
        ro = np.empty((2, 4), f32)
        ro.flags.writeable = False
        C.linear_act_forward(_x(2, 3), _x(3, 4), None, ro, None, 1, 0.0)
    with pytest.raises(ValueError, match="z \\(pre-activation"):
        C.linear_act_forward(_x(2, 3), _x(3, 4), None, y, None, 8, 0.0)
    with pytest.raises(ValueError, match="act must be"):
        C.linear_act_forward(_x(2, 3), _x(3, 4), None, y, None, 99, 0.0)
    with pytest.raises(TypeError, match="x must be a numpy"):
        C.linear_act_forward("x", _x(3, 4), None, y, None, 1, 0.0)
    with pytest.raises(ValueError, match="labels must be in"):
        C.softmax_xent_forward(_x(2, 3), np.array([0, 7]), None, np.empty((2, 3), f32))
    with pytest.raises(TypeError, match="labels must have dtype"):
        C.softmax_xent_forward(_x(2, 3), np.array([0, 1], np.int32), None, np.empty((2, 3), f32))
    with pytest.raises(ValueError, match="seg_begin"):
        C.optim_step(0, _x(4), _x(4), None, None, np.array([0, 3]), np.zeros((1, 11)))
    with pytest.raises(ValueError, match="c must have shape"):
        C.gemm(_x(2, 3), _x(3, 4), np.empty((3, 4), f32))


def test_softmax_bad_labels(backend):
    s = _x(4, 3)
    with pytest.raises(TypeError, match="labels must be an integer"):
        fnn.ops.softmax_cross_entropy(s, np.array([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        fnn.ops.softmax_cross_entropy(s, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels must be in"):
        fnn.ops.softmax_cross_entropy(s, np.array([0, 1, 2, 3]))


def test_layer_constructor_errors():
    with pytest.raises(ValueError, match="in_features"):
        fnn.nn.Linear(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        fnn.nn.Linear(3, 2.5)
    with pytest.raises(ValueError, match="init must be one of"):
        fnn.nn.Linear(3, 3, init="glorot")
    with pytest.raises(TypeError, match="dtype"):
        fnn.nn.Linear(3, 3, dtype=np.float16)
    with pytest.raises(TypeError, match="layers\\[1\\]"):
        fnn.nn.Sequential(fnn.nn.ReLU(), "relu")
    with pytest.raises(ValueError, match="approximate"):
        fnn.nn.GELU("fast")


def test_layer_forward_errors():
    lin = fnn.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear\(3, 2\): expected x with 3 input features"):
        lin.forward(_x(4, 5))
    with pytest.raises(TypeError, match="x must have dtype"):
        lin.forward(_x(4, 3, dtype=np.float64))
    with pytest.raises(RuntimeError, match="before forward"):
        fnn.nn.Linear(3, 2).backward(_x(4, 2))
