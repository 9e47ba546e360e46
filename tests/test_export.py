"""fastnn.export.to_onnx: ONNX Runtime runs the exported graph and must give
fastnn's eval-mode output (float32 tolerance) for random MLPs and CNNs of odd
sizes that use every layer; dynamic batch; the checker passes; errors name
what is wrong. Skipped without onnx/onnxruntime, except the test that the
missing package is reported with its install hint."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from conftest import rel_err

nn = fnn.nn
ACTIVATION_LAYERS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.13), "prelu": lambda: nn.PReLU(0.3),
                     "elu": lambda: nn.ELU(0.7), "selu": nn.SELU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
                     "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU("tanh"), "swish": nn.Swish,
                     "identity": nn.Identity}
OPSETS = [13, 17, 18, 20]


def _onnx():
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install \"fastnn-train[onnx]\")")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    return onnx, ort


def _randomize_bn(model, rng):
    """Running statistics and affine parameters far from their defaults, so an
    export that ignored them would be caught."""
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.3, 3.0, m.num_features)
            if m.affine:
                m.weight.data[...] = rng.standard_normal(m.num_features)
                m.bias.data[...] = rng.standard_normal(m.num_features)
        if isinstance(m, nn.PReLU):
            m.alpha.data[...] = rng.uniform(-0.5, 0.8, m.alpha.data.shape)
    return model


def _run(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.astype(np.float32)})[0]


def _check(model, sample_shape, tmp_path, rng, opset=None, batches=(5, 1), tol=1e-4, input_shape=None):
    """Export, run in ONNX Runtime at several batch sizes, compare with fastnn's eval output."""
    onnx, ort = _onnx()
    path = tmp_path / "model.onnx"
    mode = [m.training for m in model.modules()]
    proto = fnn.export.to_onnx(model, path, sample_shape if input_shape is None else input_shape, opset=opset)
    assert [m.training for m in model.modules()] == mode, "to_onnx must leave the model's mode alone"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert proto.opset_import[0].version == (opset or fnn.export.DEFAULT_OPSET)
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")
    for n in batches:
        x = rng.standard_normal((n,) + tuple(sample_shape)).astype(model.input_dtype() or np.float32)
        with model.preserving_state(training=False):
            expected = model(x)
        got = _run(ort, path, x)
        assert got.dtype == np.float32
        assert got.shape == expected.shape
        assert rel_err(got, expected) < tol, (n, rel_err(got, expected))
    return proto


# --- MLPs ------------------------------------------------------------------------------

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("act", sorted(ACTIVATION_LAYERS))
def test_mlp_every_activation_three_ways(act, opset, tmp_path, rng):
    """Each activation as Linear's own activation=, as a layer Sequential fuses
    into the Linear before it, and as a layer on its own (after BatchNorm)."""
    layers = [nn.Linear(13, 17, activation=act, rng=rng), nn.Linear(17, 11, rng=rng), ACTIVATION_LAYERS[act](),
              nn.BatchNorm1d(11), ACTIVATION_LAYERS[act](), nn.Linear(11, 3, rng=rng)]
    model = _randomize_bn(nn.Sequential(*layers), rng)
    assert model.steps()[1].activation is layers[2], "the activation layer runs fused: the export follows steps()"
    _check(model, (13,), tmp_path, rng, opset=opset)


@pytest.mark.parametrize("opset", [17, 20])
def test_gelu_node_form_depends_on_opset(opset, tmp_path, rng):
    proto = _check(nn.Sequential(nn.Linear(5, 7, activation="gelu_tanh", rng=rng), nn.GELU()), (5,), tmp_path,
                   rng, opset=opset)
    ops = [node.op_type for node in proto.graph.node]
    if opset >= 20:
        assert ops.count("Gelu") == 2
        assert {a.s for node in proto.graph.node if node.op_type == "Gelu" for a in node.attribute} == {b"tanh",
                                                                                                         b"none"}
    else:
        assert "Gelu" not in ops and "Erf" in ops and "Tanh" in ops


def test_mlp_regularization_layers_eval_form(tmp_path, rng):
    """Dropout is the identity, DropConnect its plain weights, BatchNorm1d its
    running statistics (affine or not), Maxout the max of its pieces, a
    per-feature PReLU one slope per feature: whatever mode the model is in."""
    model = nn.Sequential(nn.Linear(9, 14, rng=rng), nn.BatchNorm1d(14), nn.ReLU(), nn.Dropout(0.4),
                          nn.DropConnect(14, 10, p=0.5, activation="tanh", rng=rng),
                          nn.BatchNorm1d(10, affine=False, eps=1e-2), nn.PReLU(num_parameters=10),
                          nn.Maxout(10, 6, pieces=3, rng=rng), nn.Linear(6, 4, bias=False, rng=rng))
    _randomize_bn(model, rng)
    model.train()
    _check(model, (9,), tmp_path, rng)
    assert model.training


@pytest.mark.parametrize("opset", OPSETS)
def test_float64_model_exports_float32(opset, tmp_path, rng):
    model = nn.Sequential(nn.Linear(6, 9, activation="elu", dtype=np.float64, rng=rng),
                          nn.BatchNorm1d(9, dtype=np.float64), nn.Linear(9, 2, dtype=np.float64, rng=rng))
    _randomize_bn(model, rng)
    proto = _check(model, (6,), tmp_path, rng, opset=opset)
    assert all(init.data_type == 1 for init in proto.graph.initializer if init.dims and "weight" in init.name)


# --- CNNs ------------------------------------------------------------------------------

def _cnn(rng, survival_prob=0.8):
    return _randomize_bn(nn.Sequential(
        nn.Conv2d(3, 7, 3, padding=1, rng=rng), nn.BatchNorm2d(7), nn.ReLU(),
        nn.Conv2d(7, 6, (3, 2), stride=(2, 1), padding=(1, 0), activation="swish", rng=rng),
        nn.PReLU(num_parameters=6),
        nn.Residual(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, rng=rng), nn.BatchNorm2d(6), nn.Tanh(),
                                  nn.Conv2d(6, 6, 1, rng=rng)), survival_prob=survival_prob),
        nn.Residual(nn.Conv2d(6, 6, 3, padding=1, activation="leaky_relu", alpha=0.2, rng=rng)),
        nn.MaxPool2d(2, stride=1),
        nn.FractionalMaxPool2d(output_ratio=0.7),
        nn.Conv2d(6, 5, 2, activation="prelu", rng=rng), nn.Dropout(0.3),
        nn.GlobalAvgPool2d(), nn.Linear(5, 4, rng=rng), nn.GELU(), nn.Linear(4, 3, rng=rng)), rng)


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("survival_prob", [1.0, 0.6])
def test_cnn_every_layer(survival_prob, opset, tmp_path, rng):
    """Odd sizes (11x13 images, a (3, 2) kernel with stride (2, 1)); stochastic
    depth in its eval form x + p f(x); FractionalMaxPool2d's fixed eval grid."""
    model = _cnn(rng, survival_prob)
    model.train()      # exported in eval form all the same
    _check(model, (3, 11, 13), tmp_path, rng, opset=opset)


def test_cnn_flatten_head_and_maxpool_strides(tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, rng=rng), nn.SELU(), nn.MaxPool2d((2, 3), stride=(1, 2)),
                          nn.Flatten(), nn.Linear(4 * 3 * 2, 5, activation="sigmoid", rng=rng))
    _check(model, (2, 9, 11), tmp_path, rng)


def test_single_layer_models(tmp_path, rng):
    _check(nn.Linear(4, 3, activation="gelu", rng=rng), (4,), tmp_path, rng)
    _check(nn.Conv2d(2, 3, 3, padding=1, rng=rng), (2, 5, 6), tmp_path, rng)
    _check(nn.Flatten(), (2, 3), tmp_path, rng)
    _check(nn.Dropout(0.5), (4,), tmp_path, rng)


@pytest.mark.skipif(not hasattr(nn, "AvgPool2d"), reason="this fastnn has no nn.AvgPool2d yet")
def test_avg_pool(tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, rng=rng), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 2, rng=rng))
    _check(model, (2, 8, 9), tmp_path, rng)


# --- input_shape, arguments, errors ---------------------------------------------------------

@pytest.mark.parametrize("input_shape", [(10,), 10, (None, 10), (-1, 10), ("N", 10), (32, 10)])
def test_input_shape_forms_mlp(input_shape, tmp_path, rng):
    _check(nn.Sequential(nn.Linear(10, 3, rng=rng)), (10,), tmp_path, rng, input_shape=input_shape)


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (None, 1, 8, 8), (16, 1, 8, 8)])
def test_input_shape_forms_cnn(input_shape, tmp_path, rng):
    model = nn.Sequential(nn.Conv2d(1, 3, 3, rng=rng), nn.Flatten(), nn.Linear(3 * 6 * 6, 2, rng=rng))
    _check(model, (1, 8, 8), tmp_path, rng, input_shape=input_shape)


def test_input_shape_that_fits_no_reading_names_the_layer(tmp_path, rng):
    _onnx()
    model = nn.Sequential(nn.Linear(10, 5, rng=rng), nn.ReLU(), nn.Linear(5, 2, rng=rng))
    with pytest.raises(ValueError, match=r"0:Linear expects an input of shape \(N, 10\).*\(N, 4, 9\)"):
        fnn.export.to_onnx(model, tmp_path / "m.onnx", (4, 9))
    cnn = nn.Sequential(nn.Conv2d(3, 4, 5, rng=rng))
    with pytest.raises(ValueError, match=r"0:Conv2d expects an input of shape \(N, 3, H, W\) with H >= 5"):
        fnn.export.to_onnx(cnn, tmp_path / "m.onnx", (3, 4, 9))
    with pytest.raises(ValueError, match="Residual block must keep the shape|a Residual block must keep"):
        fnn.export.to_onnx(nn.Residual(nn.Linear(4, 3, rng=rng)), tmp_path / "m.onnx", (4,))
    assert not os.listdir(tmp_path), "a failed export writes nothing"


@pytest.mark.parametrize("bad", [(), "64", (0, 3), (3, -2), (2.5,), None])
def test_bad_input_shape(bad, tmp_path):
    _onnx()
    with pytest.raises((TypeError, ValueError), match="input_shape"):
        fnn.export.to_onnx(nn.Linear(3, 2), tmp_path / "m.onnx", bad)


def test_bad_opset_and_model(tmp_path):
    onnx, _ = _onnx()
    latest = onnx.defs.onnx_opset_version()
    for opset in (12, latest + 1):
        with pytest.raises(ValueError, match=f"opset must be between 13 and {latest}.*got {opset}"):
            fnn.export.to_onnx(nn.Linear(3, 2), tmp_path / "m.onnx", (3,), opset=opset)
    with pytest.raises(TypeError, match="model must be a fastnn Module, got dict"):
        fnn.export.to_onnx({"0.weight": np.zeros((2, 3))}, tmp_path / "m.onnx", (3,))


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


def test_unsupported_layer_is_named(tmp_path):
    _onnx()
    model = nn.Sequential(nn.Linear(3, 4), Doubler())
    with pytest.raises(NotImplementedError, match="1:Doubler has no ONNX export"):
        fnn.export.to_onnx(model, tmp_path / "m.onnx", (3,))
    with pytest.raises(ValueError, match="Doubler"):       # UnsupportedLayer is both
        fnn.export.to_onnx(model, tmp_path / "m.onnx", (3,))


def test_file_written_atomically(tmp_path, rng):
    onnx, _ = _onnx()
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old contents")
    fnn.export.to_onnx(nn.Linear(3, 2, rng=rng), path, (3,))
    assert onnx.load(str(path)).graph.input[0].name == "input"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"], "no temporary file left behind"
    assert (path.stat().st_mode & 0o777) == 0o666 & ~_umask()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fnn.export.to_onnx(nn.Linear(3, 2), tmp_path / "missing" / "m.onnx", (3,))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        fnn.export.to_onnx(nn.Linear(3, 2), tmp_path, (3,))


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_missing_onnx_gives_the_install_hint():
    """Runs without onnx importable (blocked in a subprocess): fastnn still
    imports, and to_onnx says what to install."""
    code = ("import sys; sys.modules['onnx'] = None\n"
            "import fastnn as fnn\n"
            "try:\n"
            "    fnn.export.to_onnx(fnn.nn.Linear(3, 2), 'm.onnx', (3,))\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "fastnn-train[onnx]"' in out
