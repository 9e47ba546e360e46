"""fastnn.nn.module: the public model-walking methods (walk, forward_step,
preserving_state, rng_states) and the flags a container sets on its children,
which init.lsuv, diagnostics, ensemble and DataParallel use instead of private
reach-ins."""
from __future__ import annotations

import numpy as np
import pytest

import fastnn as fnn


def _model():
    inner = fnn.nn.Sequential(fnn.nn.Linear(6, 4, dtype=np.float64, rng=2), fnn.nn.Tanh())
    return fnn.nn.Sequential(fnn.nn.Linear(5, 6, dtype=np.float64, rng=0), fnn.nn.ReLU(),
                             fnn.nn.BatchNorm1d(6, dtype=np.float64), fnn.nn.Dropout(0.5, seed=3), inner,
                             fnn.nn.Linear(4, 3, dtype=np.float64, rng=1))


def test_walk_flattens_the_fused_steps_and_forward_step_runs_them(rng):
    model = _model()
    labels = [label for label, _, _ in model.walk()]
    assert labels == ["0-1:Linear+ReLU", "2:BatchNorm1d", "3:Dropout", "4.0-1:Linear+Tanh", "5:Linear"]
    steps = model.walk()
    assert steps[0][1] is model[0] and steps[0][2] is model[1] and steps[3][1] is model[4][0]
    x = rng.standard_normal((8, 5))
    model.eval()
    h = x
    for _, layer, act in steps:
        h = layer.forward_step(h, act)
    np.testing.assert_allclose(h, model.forward(x), rtol=1e-13)
    single = fnn.nn.Linear(5, 2)
    assert single.walk("p.") == [("p.Linear", single, None)]


def test_preserving_state_restores_modes_buffers_and_random_streams(rng):
    model = _model().eval()
    before = model.state_dict()
    streams = [s.copy() for _, s in model.rng_states()]
    x = rng.standard_normal((8, 5))
    with model.preserving_state(training=True):
        assert all(m.training for m in model.modules())
        model.forward(x)                         # BatchNorm updates its running stats, Dropout advances
        assert not np.array_equal(model[2].running_mean, before["2.running_mean"])
    assert not any(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    assert [s.tolist() for _, s in model.rng_states()] == [s.tolist() for s in streams]
    model[3].train()                             # a mixed set of modes comes back as it was
    with model.preserving_state(training=False):
        assert not model[3].training
    assert model[3].training and not model[0].training


def test_flags_are_set_through_methods():
    model = _model()
    assert all(layer.reuse_buffers for layer in model)     # set by Sequential on its children
    assert model.input_grad and not model.reuse_buffers
    model.set_input_grad(False)
    assert model.input_grad is False
    calls = []
    model.set_backward_hook(calls.append)
    x = np.random.default_rng(0).standard_normal((4, 5))
    model.forward(x)
    model.backward(np.ones((4, 3)))
    assert calls == list(range(len(model.steps())))
    model.set_backward_hook(None)
    model.forward(x)
    model.backward(np.ones((4, 3)))
    assert calls == list(range(len(model.steps())))
    head = model[5]
    model[5] = fnn.nn.Linear(4, 3, dtype=np.float64)
    assert not head.reuse_buffers and model[5].reuse_buffers


def test_lsuv_takes_any_module_and_refuses_other_objects(rng):
    model = _model()
    x = rng.standard_normal((64, 5))
    assert fnn.init.lsuv(model, x) is model
    with pytest.raises(TypeError, match="lsuv needs model, a fastnn Module, got list"):
        fnn.init.lsuv([model], x)
    with pytest.raises(ValueError, match="x must be a non-empty batch"):
        fnn.init.lsuv(model, x[:0])
