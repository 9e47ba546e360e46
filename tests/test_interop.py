"""fastnn.interop: PyTorch models and state_dicts in, torch state_dicts and
modules out.

The first half needs no torch (plain dicts of NumPy arrays, checked against a
NumPy forward written here); the second half compares with PyTorch itself and
is skipped when torch is not installed."""
from __future__ import annotations

import pathlib
import runpy
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from conftest import rel_err

nn = fnn.nn
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "transfer_from_torch.py"


def _randomize(model, rng):
    """Every parameter and BatchNorm statistic random (BatchNorm variances
    positive), so a mapping that mixed two arrays up would show."""
    for m in model.modules():
        for p in m._params.values():
            if p is not None:
                p.data[...] = rng.standard_normal(p.data.shape)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.3, 3.0, m.num_features)
    return model


def _eval(model, x):
    with model.preserving_state(training=False):
        return model(x)


def _fastnn_state(model):
    """Parameters and BatchNorm statistics in order, as a list of arrays."""
    out = [p.data for p in model.parameters()]
    out += [m.running_mean for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    out += [m.running_var for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    return out


def _mlp(rng):
    return _randomize(nn.Sequential(nn.Linear(5, 7, activation="relu"), nn.BatchNorm1d(7, eps=1e-3),
                                    nn.PReLU(num_parameters=7), nn.Dropout(0.2),
                                    nn.Linear(7, 4, activation="prelu"), nn.ELU(0.5),
                                    nn.Linear(4, 3, bias=False)), rng)


def _cnn(rng):
    return _randomize(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                                    nn.MaxPool2d(2),
                                    nn.Sequential(nn.Conv2d(5, 6, (3, 2), stride=(2, 1), activation="leaky_relu",
                                                            alpha=0.1), nn.GELU("tanh")),
                                    nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(6, 4, activation="swish"),
                                    nn.DropConnect(4, 3, p=0.3)), rng)


# --- fastnn -> torch state_dict, without torch ---------------------------------------------

def test_to_torch_state_dict_keys_and_layouts(rng):
    """torch's key names for the matching flat nn.Sequential: a fused
    activation= is its own module (an index of its own), Linear weights are
    (out, in), BatchNorm has num_batches_tracked."""
    model = _mlp(rng)
    sd = fnn.interop.to_torch_state_dict(model)
    assert list(sd) == ["0.weight", "0.bias",                                       # 1: ReLU
                        "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked",
                        "3.weight",                                                 # 4: Dropout
                        "5.weight", "5.bias", "6.weight",                           # 6: PReLU of activation=
                        "8.weight"]                                                 # 7: ELU
    lin0, bn, prelu, _, lin1, _, lin2 = model.layers
    np.testing.assert_array_equal(sd["0.weight"], lin0.weight.data.T)
    assert sd["0.weight"].flags.c_contiguous and sd["0.weight"].shape == (7, 5)
    np.testing.assert_array_equal(sd["2.running_var"], bn.running_var)
    assert sd["2.num_batches_tracked"].dtype == np.int64 and sd["2.num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(sd["3.weight"], prelu.alpha.data)
    np.testing.assert_array_equal(sd["6.weight"], lin1.alpha.data)
    np.testing.assert_array_equal(sd["8.weight"], lin2.weight.data.T)
    sd["0.weight"][0, 0] += 1.0
    assert sd["0.weight"][0, 0] != lin0.weight.data[0, 0], "the state_dict holds copies"


def test_cnn_state_dict_global_pool_is_two_modules(rng):
    sd = fnn.interop.to_torch_state_dict(_cnn(rng))
    # 0 Conv2d, 1 BatchNorm2d, 2 ReLU, 3 MaxPool2d, 4 Conv2d, 5 LeakyReLU, 6 GELU, 7 AdaptiveAvgPool2d, 8 Flatten,
    # 9 Flatten, 10 Linear, 11 SiLU, 12 Linear (the DropConnect's eval form)
    assert sorted({k.split(".")[0] for k in sd}, key=int) == ["0", "1", "4", "10", "12"]
    assert sd["4.weight"].shape == (6, 5, 3, 2)
    assert sd["12.weight"].shape == (3, 4)


@pytest.mark.parametrize("build", [_mlp, _cnn])
def test_round_trip_through_a_plain_state_dict_is_bit_exact(build, rng):
    """fastnn -> torch-layout dict of NumPy arrays -> a fresh fastnn model of
    the same architecture (model=): every weight and statistic bit for bit."""
    model = build(rng)
    sd = fnn.interop.to_torch_state_dict(model)
    fresh = nn.from_config(model.get_config())
    back = fnn.interop.from_torch(sd, model=fresh)
    assert back is fresh
    for a, b in zip(_fastnn_state(model), _fastnn_state(back), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((3, 5) if build is _mlp else (3, 3, 9, 7)).astype(np.float32)
    np.testing.assert_array_equal(_eval(model, x), _eval(back, x))


def test_state_dict_from_an_npz_file_and_np_load(tmp_path, rng):
    model = _mlp(rng)
    path = tmp_path / "weights.npz"
    np.savez(path, **fnn.interop.to_torch_state_dict(model))
    from_path = fnn.interop.from_torch(path, model=nn.from_config(model.get_config()))
    with np.load(path) as archive:
        from_archive = fnn.interop.from_torch(archive, model=nn.from_config(model.get_config()))
    for a, b, c in zip(_fastnn_state(model), _fastnn_state(from_path), _fastnn_state(from_archive), strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def _numpy_mlp_state(rng, dtype=np.float32):
    """The state_dict of torch's Sequential(Linear(6, 9), BatchNorm1d(9),
    PReLU(), Linear(9, 4)), in NumPy: what a converted .pt holds."""
    return {"0.weight": rng.standard_normal((9, 6)).astype(dtype), "0.bias": rng.standard_normal(9).astype(dtype),
            "1.weight": rng.standard_normal(9).astype(dtype), "1.bias": rng.standard_normal(9).astype(dtype),
            "1.running_mean": rng.standard_normal(9).astype(dtype),
            "1.running_var": rng.uniform(0.5, 2, 9).astype(dtype), "1.num_batches_tracked": np.array(7),
            "2.weight": np.array([0.2], dtype),
            "3.weight": rng.standard_normal((4, 9)).astype(dtype), "3.bias": rng.standard_normal(4).astype(dtype)}


def _numpy_forward(sd, x):
    """torch's eval-mode forward of that Sequential, in float64 NumPy."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    h = x @ sd["0.weight"].T + sd["0.bias"]
    h = (h - sd["1.running_mean"]) / np.sqrt(sd["1.running_var"] + 1e-5) * sd["1.weight"] + sd["1.bias"]
    h = np.where(h > 0, h, sd["2.weight"][0] * h)
    return h @ sd["3.weight"].T + sd["3.bias"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_architecture_inferred_from_a_flat_sequential_state_dict(dtype, rng):
    sd = _numpy_mlp_state(rng, dtype)
    model = fnn.interop.from_torch(sd)
    assert [type(layer).__name__ for layer in model] == ["Linear", "BatchNorm1d", "PReLU", "Linear"]
    assert model.input_dtype() == dtype
    np.testing.assert_array_equal(model[0].weight.data, sd["0.weight"].T)
    x = rng.standard_normal((5, 6)).astype(dtype)
    assert rel_err(_eval(model, x), _numpy_forward(sd, x)) < (1e-5 if dtype == np.float32 else 1e-12)


def test_keys_sorted_as_text_are_put_in_module_order(rng):
    sd = {f"{i}.weight": rng.standard_normal((3, 3)).astype(np.float32) for i in range(12)}
    model = fnn.interop.from_torch(dict(sorted(sd.items())))       # "10.weight" before "2.weight"
    for i, layer in enumerate(model):
        np.testing.assert_array_equal(layer.weight.data, sd[f"{i}.weight"].T)


def test_inference_refuses_what_a_state_dict_cannot_tell(rng):
    sd = _numpy_mlp_state(rng)
    gap = {k.replace("3.", "5.", 1) if k.startswith("3.") else k: v for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"no entries for modules \[3, 4\].*activations.*pass model="):
        fnn.interop.from_torch(gap)
    leading = {("1" + k[1:] if k[0] == "0" else k): v for k, v in _numpy_mlp_state(rng).items()
               if k[0] in "0"}
    with pytest.raises(ValueError, match=r"no entries for modules \[0\]"):      # e.g. a Flatten first
        fnn.interop.from_torch(leading)
    with pytest.raises(ValueError, match="Conv2d, whose stride and padding.*pass model="):
        fnn.interop.from_torch({"0.weight": np.zeros((4, 3, 3, 3), np.float32), "0.bias": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="'fc1'.* not those of one flat torch nn.Sequential"):
        fnn.interop.from_torch({"fc1.weight": np.zeros((4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"0\.\{bias, weight\} are not a Linear, BatchNorm or PReLU"):
        fnn.interop.from_torch({"0.weight": np.ones(4, np.float32), "0.bias": np.zeros(4, np.float32)})  # LayerNorm
    with pytest.raises(ValueError, match="empty"):
        fnn.interop.from_torch({})


def test_model_mismatch_is_named_and_leaves_the_model_untouched(rng):
    sd = _numpy_mlp_state(rng)
    model = nn.Sequential(nn.Linear(6, 9), nn.BatchNorm1d(9), nn.PReLU(), nn.Linear(9, 5))
    before = [a.copy() for a in _fastnn_state(model)]
    with pytest.raises(ValueError, match=r"state_dict\['3.weight'\] has shape \(4, 9\).*expects \(5, 9\) "
                                         r"\(torch's \(out_features, in_features\) layout\)"):
        fnn.interop.from_torch(sd, model=model)
    for a, b in zip(before, _fastnn_state(model), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="holds 4 layers with weights.*the model 2"):
        fnn.interop.from_torch(sd, model=nn.Sequential(nn.Linear(6, 9), nn.Linear(9, 4)))
    swapped = nn.Sequential(nn.Linear(6, 9), nn.PReLU(), nn.BatchNorm1d(9), nn.Linear(9, 4))
    with pytest.raises(ValueError, match=r"entries 1\.\{.*running_mean.*do not match the model's layer PReLU"):
        fnn.interop.from_torch(sd, model=swapped)
    with pytest.raises(TypeError, match="model must be a fastnn Module"):
        fnn.interop.from_torch(sd, model={"0.weight": 1})
    with pytest.raises(TypeError, match="must hold numbers"):
        fnn.interop.from_torch({"0.weight": np.array([["a"]])})
    with pytest.raises(TypeError, match="module_or_state_dict must be a torch.nn.Sequential, a state_dict"):
        fnn.interop.from_torch([np.zeros(3)])


@pytest.mark.parametrize("layer", [nn.Maxout(4, 3), nn.Residual(nn.Linear(4, 4)),
                                   nn.FractionalMaxPool2d(output_ratio=0.7)], ids=lambda m: type(m).__name__)
def test_layers_without_a_torch_module_are_refused_by_name(layer):
    with pytest.raises(NotImplementedError, match=f"{type(layer).__name__} has no PyTorch equivalent"):
        fnn.interop.to_torch_state_dict(nn.Sequential(nn.Identity(), layer))
    with pytest.raises(ValueError):      # UnsupportedModule is both
        fnn.interop.to_torch_state_dict(layer)


def test_interop_without_torch():
    """With torch not importable (blocked in a subprocess), fastnn imports,
    plain-dict interop works, and to_torch names what to install."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import numpy as np, fastnn as fnn\n"
            "m = fnn.interop.from_torch({'0.weight': np.arange(6, dtype=np.float32).reshape(2, 3)})\n"
            "print(m[0].weight.data.tolist())\n"
            "print(sorted(fnn.interop.to_torch_state_dict(m)))\n"
            "try:\n"
            "    fnn.interop.to_torch(m)\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "[[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]"
    assert lines[1] == "['0.weight']"
    assert "needs PyTorch" in lines[2] and "pip install torch" in lines[2]


# --- with PyTorch ------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch", reason="PyTorch is not installed (optional peer: pip install torch)")


def _randomize_torch(torch, module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
            for p in m.parameters(recurse=False):
                p.copy_(torch.randn(p.shape, generator=g) * 0.7)
    return module


def _torch_models(torch):
    T = torch.nn
    return {
        "mlp": (lambda: T.Sequential(T.Linear(13, 17), T.BatchNorm1d(17, eps=1e-3, momentum=0.3), T.ReLU(),
                                     T.Dropout(0.3), T.Linear(17, 11), T.LeakyReLU(0.2), T.Linear(11, 7), T.PReLU(7),
                                     T.Linear(7, 9, bias=False), T.ELU(0.6), T.Linear(9, 5), T.SELU(), T.Linear(5, 5),
                                     T.GELU(), T.Linear(5, 5), T.GELU("tanh"), T.Linear(5, 4), T.SiLU(),
                                     T.Sigmoid(), T.Identity(), T.Linear(4, 3), T.Tanh(), T.PReLU()), (13,)),
        "cnn": (lambda: T.Sequential(T.Conv2d(3, 7, 3, padding=1), T.BatchNorm2d(7), T.ReLU(), T.MaxPool2d(2),
                                     T.Sequential(T.Conv2d(7, 6, (3, 2), stride=(2, 1), padding="valid"),
                                                  T.PReLU(6), T.Conv2d(6, 5, 3, padding="same"), T.Tanh()),
                                     T.MaxPool2d(2, stride=1), T.Conv2d(5, 4, 1, bias=False),
                                     T.BatchNorm2d(4, affine=False), T.SiLU(),
                                     T.AdaptiveAvgPool2d(1), T.Flatten(), T.Linear(4, 3)), (3, 11, 9)),
        "flatten_head": (lambda: T.Sequential(T.Conv2d(2, 3, 2, stride=2), T.GELU(), T.Flatten(),
                                              T.Linear(3 * 3 * 4, 5), T.BatchNorm1d(5)), (2, 7, 9)),
    }


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["mlp", "cnn", "flatten_head"])
def test_torch_model_converted_in_gives_its_outputs(name, dtype, rng):
    torch = _torch()
    build, sample = _torch_models(torch)[name]
    tm = _randomize_torch(torch, build(), seed=int(rng.integers(1 << 30))).to(getattr(torch, dtype)).eval()
    model = fnn.interop.from_torch(tm)
    assert not model.training
    assert model.input_dtype() == np.dtype(dtype)
    x = rng.standard_normal((6,) + sample).astype(dtype)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x)).numpy()
    got = model(x)
    assert got.shape == expected.shape
    assert rel_err(got, expected) < (1e-5 if dtype == "float32" else 1e-12)


def test_torch_batchnorm_training_settings_carry_over(rng):
    """momentum and eps come across: one training-mode forward updates the
    running statistics as torch's does; affine=False stays without weights."""
    torch = _torch()
    T = torch.nn
    tm = _randomize_torch(torch, T.Sequential(T.Linear(4, 6), T.BatchNorm1d(6, eps=1e-2, momentum=0.35),
                                              T.BatchNorm1d(6, affine=False)), seed=3).train()
    model = fnn.interop.from_torch(tm)
    assert model.training
    bn = model[1]
    assert (bn.eps, bn.momentum, model[2].affine) == (1e-2, 0.35, False)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    model(x)
    tm(torch.from_numpy(x))
    for i in (1, 2):
        assert rel_err(model[i].running_mean, tm[i].running_mean.numpy()) < 1e-5
        assert rel_err(model[i].running_var, tm[i].running_var.numpy()) < 1e-5


def test_torch_state_dict_with_model_and_tensors(rng):
    torch = _torch()
    build, sample = _torch_models(torch)["cnn"]
    tm = _randomize_torch(torch, build(), seed=5).eval()
    template = nn.Sequential(nn.Conv2d(3, 7, 3, padding=1), nn.BatchNorm2d(7), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(7, 6, (3, 2), stride=(2, 1)), nn.PReLU(num_parameters=6),
                             nn.Conv2d(6, 5, 3, padding=1, activation="tanh"), nn.MaxPool2d(2, stride=1),
                             nn.Conv2d(5, 4, 1, bias=False), nn.BatchNorm2d(4, affine=False), nn.Swish(),
                             nn.GlobalAvgPool2d(), nn.Linear(4, 3))
    model = fnn.interop.from_torch(tm.state_dict(), model=template)       # torch tensors, nested keys "4.0.weight"
    x = rng.standard_normal((4,) + sample).astype(np.float32)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x)).numpy()
    assert rel_err(_eval(model, x), expected) < 1e-5
    again = fnn.interop.from_torch(tm, model=nn.from_config(template.get_config()))
    np.testing.assert_array_equal(_eval(again, x), _eval(model, x))


@pytest.mark.parametrize("build", [_mlp, _cnn])
def test_round_trip_fastnn_torch_fastnn_is_bit_exact(build, rng):
    """fastnn -> to_torch_state_dict -> torch's load_state_dict (strict) into
    the matching torch Sequential -> from_torch: the same weights bit for bit,
    and torch computes what fastnn does."""
    torch = _torch()
    model = build(rng)
    tm = fnn.interop.to_torch(model).eval()
    assert isinstance(tm, torch.nn.Sequential)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in fnn.interop.to_torch_state_dict(model).items()})
    back = fnn.interop.from_torch(tm)
    for a, b in zip(_fastnn_state(model), _fastnn_state(back), strict=True):
        np.testing.assert_array_equal(a, b)
    x = rng.standard_normal((4, 5) if build is _mlp else (4, 3, 9, 7)).astype(np.float32)
    with torch.no_grad():
        expected = tm(torch.from_numpy(x)).numpy()
    assert rel_err(_eval(model, x), expected) < 1e-5
    assert rel_err(_eval(back, x), expected) < 1e-5


def test_to_torch_keeps_mode_and_dtype(rng):
    torch = _torch()
    model = nn.Sequential(nn.Linear(3, 4, activation="gelu", dtype=np.float64), nn.BatchNorm1d(
        4, dtype=np.float64))
    tm = fnn.interop.to_torch(model)
    assert tm.training and tm[0].weight.dtype == torch.float64
    assert not fnn.interop.to_torch(model.eval()).training


@pytest.mark.parametrize("case", ["softmax", "groups", "dilation", "pool_padding", "ceil_mode", "bn_no_stats",
                                  "bn_cumulative", "adaptive_2", "adaptive_no_flatten", "flatten_dim",
                                  "same_even", "container"])
def test_unsupported_torch_modules_are_named(case):
    torch = _torch()
    T = torch.nn

    class Block(T.Module):
        def __init__(self):
            super().__init__()
            self.fc = T.Linear(3, 3)

        def forward(self, x):
            return x + self.fc(x)

    bad, match = {
        "softmax": (T.Softmax(dim=1), "Softmax has no fastnn equivalent"),
        "groups": (T.Conv2d(4, 4, 3, groups=2), "groups=2"),
        "dilation": (T.Conv2d(4, 4, 3, dilation=2), "dilation=\\(2, 2\\)"),
        "pool_padding": (T.MaxPool2d(3, padding=1), "no padding"),
        "ceil_mode": (T.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        "bn_no_stats": (T.BatchNorm2d(4, track_running_stats=False), "track_running_stats=False"),
        "bn_cumulative": (T.BatchNorm2d(4, momentum=None), "momentum=None"),
        "adaptive_2": (T.AdaptiveAvgPool2d(2), "output_size=1"),
        "adaptive_no_flatten": (T.Sequential(T.AdaptiveAvgPool2d(1), T.Conv2d(4, 4, 1)), "a Flatten follows it"),
        "flatten_dim": (T.Flatten(0), "start_dim=0"),
        "same_even": (T.Conv2d(4, 4, 2, padding="same"), "even kernel_size"),
        "container": (Block(), "container"),
    }[case]
    model = T.Sequential(T.Identity(), bad)
    with pytest.raises(NotImplementedError, match=f"from_torch: module 1.*{match}"):
        fnn.interop.from_torch(model)
    with pytest.raises(ValueError):       # UnsupportedModule is both
        fnn.interop.from_torch(model)


def test_transfer_learning_example(rng):
    """examples/transfer_from_torch.py: a torch-trained CNN body imported
    (from the module and from an .npz), frozen, a new head trained on digits."""
    _torch()
    result = runpy.run_path(str(EXAMPLE))["main"](verbose=False)
    assert result["feature_error"] < 1e-5, "imported body computes the torch body's features"
    assert result["torch_accuracy"] > 0.9
    assert result["body_frozen"], "the frozen body's weights and statistics did not move"
    assert result["head_accuracy"] > 0.75, "the new head learns on the imported features"
    if result["onnx_path"] is not None:
        ort = pytest.importorskip("onnxruntime")
        x = fnn.data.load_digits(flatten=False)[0][:16]
        got = ort.InferenceSession(result["onnx_path"], providers=["CPUExecutionProvider"]).run(
            None, {"input": x})[0]
        assert rel_err(got, _eval(result["model"], x)) < 1e-4
