import numpy as np
import pytest

import fastnn as fnn

from conftest import draw_clear_of_kinks, rel_err
from oracle import numerical_grad


def _mlp(dtype=np.float64, act_layer=fnn.nn.Tanh, seed=0):
    return fnn.nn.Sequential(
        fnn.nn.Linear(6, 9, dtype=dtype, rng=seed),
        act_layer(dtype=dtype) if act_layer is fnn.nn.PReLU else act_layer(),
        fnn.nn.Linear(9, 7, activation="elu", dtype=dtype, rng=seed + 1),
        fnn.nn.Linear(7, 4, dtype=dtype, rng=seed + 2))


def _numerical_model_grads(model, loss, x, y):
    return {name: numerical_grad(lambda: loss.forward(model.forward(x), y), p.data)
            for name, p in model.named_parameters()}


def _inputs_clear_of_kinks(model, rng, shape):
    """Inputs whose first-layer pre-activations are clear of 0, the kink of
    ReLU, LeakyReLU, PReLU and SELU (the analytic gradient is still checked at
    every element)."""
    params = dict(model.named_parameters())
    w, b = params["0.weight"].data, params["0.bias"].data
    return draw_clear_of_kinks(lambda: rng.standard_normal(shape), lambda x: np.min(np.abs(x @ w + b)))


@pytest.mark.parametrize("act_layer", [fnn.nn.Tanh, fnn.nn.ReLU, fnn.nn.PReLU, fnn.nn.GELU, fnn.nn.Swish,
                                       fnn.nn.SELU, fnn.nn.Sigmoid, fnn.nn.LeakyReLU])
def test_model_gradient_check(backend, rng, act_layer):
    model = _mlp(act_layer=act_layer, seed=int(rng.integers(1000)))
    loss = fnn.losses.SoftmaxCrossEntropy()
    x = _inputs_clear_of_kinks(model, rng, (5, 6))
    y = rng.integers(0, 4, 5)
    loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    assert dx.shape == x.shape
    num = _numerical_model_grads(model, loss, x, y)
    for name, p in model.named_parameters():
        assert rel_err(p.grad, num[name]) < 1e-6, name


def _maxout_inputs_without_near_ties(layer, rng, shape):
    """Inputs whose two largest pieces are clearly apart in every unit (a tie
    is the max's kink)."""
    def gap(x):
        z = (x @ layer.weight.data + layer.bias.data).reshape(shape[0], layer.out_features, layer.pieces)
        top = np.sort(z, axis=2)
        return np.inf if layer.pieces == 1 else np.min(top[:, :, -1] - top[:, :, -2])
    return draw_clear_of_kinks(lambda: rng.standard_normal(shape), gap)


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_maxout_gradient_check(backend, rng, pieces):
    model = fnn.nn.Sequential(fnn.nn.Maxout(6, 5, pieces=pieces, dtype=np.float64, rng=int(rng.integers(1000))),
                              fnn.nn.Linear(5, 4, dtype=np.float64, rng=1))
    loss = fnn.losses.SoftmaxCrossEntropy()
    x = _maxout_inputs_without_near_ties(model[0], rng, (7, 6))
    y = rng.integers(0, 4, 7)
    loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    num = _numerical_model_grads(model, loss, x, y)
    for name, p in model.named_parameters():
        assert rel_err(p.grad, num[name]) < 1e-6, name
    num_dx = numerical_grad(lambda: loss.forward(model.forward(x), y), x)
    assert rel_err(dx, num_dx) < 1e-6


def test_maxout_forward_is_max_over_pieces(backend, rng):
    layer = fnn.nn.Maxout(13, 7, pieces=4, dtype=np.float32, rng=3)
    layer.bias.data[:] = rng.standard_normal(28).astype(np.float32)
    x = rng.standard_normal((11, 13)).astype(np.float32)
    z = x.astype(np.float64) @ layer.weight.data + layer.bias.data
    y = layer.forward(x)
    assert y.shape == (11, 7) and y.dtype == np.float32
    assert rel_err(y, z.reshape(11, 7, 4).max(axis=2)) < 1e-5


def test_sequential_fuses_linear_and_activation(rng):
    model = _mlp()
    assert len(model.steps()) == 3 and model.steps()[0].activation is model.layers[1]
    x = rng.standard_normal((8, 6))
    fused = model.forward(x)
    unfused = x
    for layer in model.layers:
        unfused = layer.forward(unfused)
    assert rel_err(fused, unfused) < 1e-12


def test_prelu_layer_alpha_gets_gradient(rng):
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4, dtype=np.float64, rng=1), fnn.nn.PReLU(dtype=np.float64),
                              fnn.nn.Linear(4, 2, dtype=np.float64, rng=2))
    x = rng.standard_normal((6, 3))
    model.forward(x)
    model.backward(np.ones((6, 2)))
    assert model.layers[1].alpha.grad[0] != 0.0


def test_save_and_load_roundtrip(tmp_path, rng):
    model = _mlp(np.float32, fnn.nn.PReLU)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = fnn.nn.load(path)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_array_equal(model.forward(x), loaded.forward(x))
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_load_rejects_corrupt_and_wrong_files(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="bad.npz"):
        fnn.nn.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(ValueError, match="config"):
        fnn.nn.load(other)


def test_load_state_dict_checks_keys_and_shapes():
    model = _mlp()
    state = model.state_dict()
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({k: v for k, v in list(state.items())[1:]})
    state["0.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="0.weight"):
        model.load_state_dict(state)


def test_load_state_dict_keeps_optimizer_views(rng):
    model = _mlp()
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    new = {k: rng.standard_normal(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(new)
    np.testing.assert_array_equal(model.layers[0].weight.data, new["0.weight"])
    assert np.shares_memory(model.layers[0].weight.data, opt.flat_param)


def test_freeze_keeps_weights(rng):
    model = _mlp()
    opt = fnn.optim.Adam(model.parameters(), lr=0.1)
    model.layers[0].freeze()
    w0 = model.layers[0].weight.data.copy()
    w2 = model.layers[2].weight.data.copy()
    loss = fnn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(rng.standard_normal((4, 6))), np.array([0, 1, 2, 3]))
    model.backward(loss.backward())
    opt.step()
    np.testing.assert_array_equal(model.layers[0].weight.data, w0)
    assert not np.array_equal(model.layers[2].weight.data, w2)


def test_init_statistics():
    rng = np.random.default_rng(0)
    for name, std in [("he_normal", np.sqrt(2 / 400)), ("xavier_normal", np.sqrt(2 / 700)),
                      ("small_random", 0.01)]:
        w = fnn.init.INITIALIZERS[name]((400, 300), rng=rng)
        assert abs(w.std() - std) / std < 0.02 and w.dtype == np.float32
    w = fnn.init.xavier_uniform((400, 300), rng=rng, mode="fan_in")
    assert abs(w.std() - np.sqrt(1 / 400)) / np.sqrt(1 / 400) < 0.02
    q = fnn.init.orthogonal((50, 30), rng=rng, dtype=np.float64)
    np.testing.assert_allclose(q.T @ q, np.eye(30), atol=1e-10)
    assert fnn.init.fans((64, 3, 5, 5)) == (75, 1600)
