"""The CIFAR-sized VGG-style ConvNet (issue 19): how ``fastnn train --model convnet``
builds it from the input shape, the CLI on CIFAR-10 / MNIST files and on the digits,
and examples/cifar_convnet.py, on small files written here in the exact formats."""
from __future__ import annotations

import os
import pathlib
import re
import runpy

import numpy as np
import pytest

import fastnn as fnn
from fastnn import cli

from test_datasets import write_mnist

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "cifar_convnet.py"
CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def write_band_cifar(folder, per_file=40, classes=4, seed=0):
    """CIFAR-10 binary batches whose label says which horizontal band of 32/classes rows is
    brighter: learnable in a few steps only when labels, pixels and the NCHW layout all line up
    (a horizontal flip or a 4-pixel crop keeps the band)."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    band = 32 // classes
    for name in CIFAR_FILES:
        labels = rng.integers(0, classes, per_file).astype(np.uint8)
        pixels = rng.integers(0, 128, (per_file, 3, 32, 32))
        for k, label in enumerate(labels):
            pixels[k, :, band * label:band * (label + 1), :] += 100
        records = b"".join(bytes([labels[k]]) + pixels[k].astype(np.uint8).tobytes() for k in range(per_file))
        with open(os.path.join(folder, name), "wb") as f:
            f.write(records)


@pytest.fixture
def one_thread():
    threads = fnn.get_num_threads()
    fnn.set_num_threads(1)
    yield
    fnn.set_num_threads(threads)


def run_train(capsys, *argv):
    """(exit status, stdout, stderr) of ``fastnn train --quiet --threads 1 *argv`` in this process."""
    try:
        code = cli.main(["train", "--quiet", "--threads", "1", *argv])
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_test_accuracy(out):
    """The test accuracy on the last line of ``fastnn train``'s output."""
    match = re.search(r"test accuracy (\d\.\d{4})$", out.strip())
    assert match, out
    return float(match.group(1))


# --- the model, from the input shape ------------------------------------------------------

LAYERS = ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
          "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
          "Flatten", "Linear", "ReLU", "Dropout", "Linear"]


@pytest.mark.parametrize("shape, flat", [((3, 32, 32), 4096), ((1, 28, 28), 3136), ((1, 8, 8), 256),
                                         ((2, 9, 13), 64 * 2 * 3)])
def test_convnet_layers_follow_the_input_shape(shape, flat, rng):
    fnn.manual_seed(0)
    model = cli._build_convnet(fnn, shape, 10, np.float32)
    assert [type(layer).__name__ for layer in model] == LAYERS
    convs = [layer for layer in model if isinstance(layer, fnn.nn.Conv2d)]
    assert [c.weight.data.shape for c in convs] == [(32, shape[0], 3, 3), (32, 32, 3, 3), (64, 32, 3, 3),
                                                     (64, 64, 3, 3)]
    assert all(c.padding == (1, 1) and c.stride == (1, 1) for c in convs)
    linears = [layer for layer in model if isinstance(layer, fnn.nn.Linear)]
    assert [lin.weight.data.shape for lin in linears] == [(flat, 256), (256, 10)]
    assert model[17].p == 0.5
    x = rng.standard_normal((3,) + shape).astype(np.float32)
    assert model.forward(x).shape == (3, 10)


def test_convnet_he_init():
    fnn.manual_seed(0)
    model = cli._build_convnet(fnn, (3, 32, 32), 10, np.float32)
    for layer, fan_in in ((model[3], 32 * 9), (model[10], 64 * 9), (model[15], 4096)):
        std = float(layer.weight.data.std())
        assert abs(std / np.sqrt(2.0 / fan_in) - 1) < 0.05, (layer, std)
        assert np.all(layer.bias.data == 0)


def test_convnet_refuses_images_smaller_than_its_two_pools():
    with pytest.raises(ValueError, match=r"at least 4x4 \(2 2x2 max pools\), got 3x8"):
        cli._build_convnet(fnn, (1, 3, 8), 10, np.float32)


# --- the CLI --------------------------------------------------------------------------------

def test_cli_convnet_on_cifar10_files(tmp_path, capsys, one_thread):
    write_band_cifar(tmp_path / "cifar-10-batches-bin")
    saved = tmp_path / "convnet.npz"
    code, out, err = run_train(capsys, "--dataset", f"cifar10:{tmp_path}", "--model", "convnet", "--epochs", "3",
                               "--save", str(saved))
    assert code == 0, err
    assert ("180/20/40 train/val/test, ConvNet 3x32x32-[conv32+bn]x2-maxpool-[conv64+bn]x2-maxpool-256-"
            "dropout-4, backend") in out
    assert "trained 3 epochs" in out
    assert printed_test_accuracy(out) >= 0.8          # 4 classes: chance is 0.25
    model = fnn.nn.load(saved)
    assert [type(layer).__name__ for layer in model] == LAYERS[:-1] + ["Linear"]
    assert model[15].weight.data.shape == (4096, 256) and model[18].weight.data.shape == (256, 4)


def test_cli_convnet_on_the_digits(capsys, one_thread):
    code, out, err = run_train(capsys, "--model", "convnet", "--epochs", "2")
    assert code == 0, err
    assert "digits 1078/360/359 train/val/test, ConvNet 1x8x8-" in out
    assert printed_test_accuracy(out) >= 0.9


def test_cli_image_models_on_mnist_files(tmp_path, capsys, one_thread):
    write_mnist(tmp_path, np.random.default_rng(0), n_train=100, n_test=20)
    for model, arch in (("convnet", "ConvNet 1x28x28-"), ("cnn", "CNN 1x28x28-conv16")):
        code, out, err = run_train(capsys, "--dataset", f"mnist:{tmp_path}", "--model", model, "--epochs", "1")
        assert code == 0, err
        assert f"90/10/20 train/val/test, {arch}" in out
        assert 0.0 <= printed_test_accuracy(out) <= 1.0


@pytest.mark.parametrize("model", ["convnet", "cnn"])
def test_cli_image_models_refuse_spiral(capsys, model):
    code, out, err = run_train(capsys, "--model", model, "--dataset", "spiral")
    assert code == 2 and out == ""
    assert err.strip() == (f"fastnn train: error: argument --model: {model} needs image data (--dataset digits, "
                           f"cifar10:PATH or mnist:PATH), got --dataset spiral (see 'fastnn train --help')")


# --- examples/cifar_convnet.py --------------------------------------------------------------

def test_cifar_convnet_example_learns(tmp_path, one_thread):
    write_band_cifar(tmp_path / "cifar-10-batches-bin")
    example = runpy.run_path(str(EXAMPLE))
    result = example["train"](str(tmp_path), epochs=2, limit=150, seed=0, quiet=True)
    assert result["train_images"] == 150
    assert result["test_accuracy"] >= 0.75, result
    assert result["model"][15].weight.data.shape == (4096, 256)


def test_cifar_convnet_example_says_where_to_get_the_files(tmp_path, capsys):
    example = runpy.run_path(str(EXAMPLE))
    with pytest.raises(SystemExit) as exc:
        example["main"]([str(tmp_path / "nowhere")])
    message = str(exc.value.code)
    assert f"cannot read CIFAR-10 from '{tmp_path / 'nowhere'}'" in message
    assert "cifar-10-binary.tar.gz" in message and "Traceback" not in message
