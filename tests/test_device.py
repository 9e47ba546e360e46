"""The device plumbing of the CUDA backend that a CPU-only machine can check:
what happens without a GPU (clear errors naming the reason), which state
follows a model to the GPU (host random streams do not), the one-device rule
of the optimizers and the Trainer, and the cuda op table matching the CPU one.
The GPU paths themselves are in tests/test_cuda.py (skipped without a GPU)."""
from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import fastnn as fnn
from fastnn import cli, ops
from fastnn.backend import cpp, cuda
from fastnn.nn.module import as_model_input

needs_no_cuda = pytest.mark.skipif(cuda.reason is None, reason="a GPU is available here")


class _FakeDeviceArray:
    """Stands in for a CuPy array where only the device matters (its module name)."""
    __module__ = "cupy._fake"

    def __init__(self, like):
        self.dtype, self.shape, self.size, self.ndim = like.dtype, like.shape, like.size, like.ndim


def test_cuda_bindings_define_every_cpu_op():
    """fastnn._cuda binds every kernel under the name fastnn._C uses (the cuda backend registers
    cpp.OPS by name): read from the binding sources, so a CPU-only machine checks it too."""
    folder = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "cuda"
    defined = set()
    for source in folder.glob("bind*.cpp"):
        defined |= set(re.findall(r'm\.def\("(\w+)"', source.read_text()))
    assert cuda.OPS == cpp.OPS
    assert set(cpp.OPS) <= defined, sorted(set(cpp.OPS) - defined)


@needs_no_cuda
def test_to_cuda_without_a_gpu_names_the_reason_and_leaves_the_model_on_the_cpu():
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4), fnn.nn.BatchNorm1d(4), fnn.nn.ReLU(), fnn.nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match="cannot move the model to cuda: " + __import__("re").escape(cuda.reason)):
        model.to("cuda")
    assert all(type(p.data) is np.ndarray and type(p.grad) is np.ndarray for p in model.parameters())
    assert model.device() == "cpu"


def test_to_refuses_an_unknown_device():
    with pytest.raises(ValueError, match=r"device must be 'cpu' or 'cuda', got 'gpu'"):
        fnn.nn.Linear(2, 2).to("gpu")


def test_to_cpu_keeps_numpy_state_and_records_the_device():
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4), fnn.nn.BatchNorm1d(4), fnn.nn.Dropout(0.5))
    before = model.state_dict()
    assert model.to("cpu") is model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert model[2].device() == "cpu"          # a parameterless layer knows where to() put it


def test_random_streams_stay_on_the_host_and_running_stats_follow_the_model():
    """Dropout/DropConnect's (seed, offset) and the PCG64 streams are host buffers
    (the kernels take them as scalars); BatchNorm's running statistics move."""
    model = fnn.nn.Sequential(fnn.nn.Linear(3, 4), fnn.nn.BatchNorm1d(4), fnn.nn.Dropout(0.5),
                              fnn.nn.DropConnect(4, 4), fnn.nn.Residual(fnn.nn.ReLU(), 0.5))
    follows = {(type(m).__name__, name): flag for m in model.modules() for name, flag in m._buffers.items()}
    assert follows == {("BatchNorm1d", "running_mean"): True, ("BatchNorm1d", "running_var"): True,
                       ("Dropout", "rng_state"): False, ("DropConnect", "rng_state"): False,
                       ("Residual", "rng_state"): False}


def test_a_batch_on_another_device_than_the_model_is_a_type_error_saying_how_to_move_it():
    x = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"x is a numpy.ndarray on cpu, but the model's parameters are on cuda: "
                                        r"move the batch with cupy.asarray\(x\)"):
        as_model_input(x, np.float32, device="cuda")
    fake = _FakeDeviceArray(x)
    fake.__cuda_array_interface__ = {}
    with pytest.raises(TypeError, match=r"on cuda, but the model's parameters are on cpu"):
        as_model_input(fake, np.float32, device="cpu")
    assert as_model_input(x, np.float32, device="cpu") is x


def test_optimizer_refuses_parameters_on_two_devices():
    a = fnn.nn.Parameter(np.ones(3, np.float32), "a")
    b = fnn.nn.Parameter(np.ones(2, np.float32), "b")
    b.data = _FakeDeviceArray(b.data)
    with pytest.raises(ValueError, match=r"all parameters must be on one device, got cpu \(a.data is there\), "
                                         r"cuda \(b.data is there\)"):
        fnn.optim.SGD([a, b], lr=0.1)


def test_optimizer_records_its_device():
    opt = fnn.optim.Adam(fnn.nn.Linear(2, 3).parameters())
    assert opt.device == "cpu"
    assert all(type(s) is np.ndarray for s in opt.state_dict().values())


def test_trainer_refuses_an_optimizer_built_before_the_model_moved():
    model = fnn.nn.Linear(2, 3)
    opt = fnn.optim.SGD(model.parameters(), lr=0.1)
    opt.device = "cuda"     # what an optimizer built after a to("cuda") that was later undone holds
    with pytest.raises(ValueError, match="the optimizer's buffers are on cuda but the model is on cpu"):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt)


def test_trainer_reports_the_model_device():
    model = fnn.nn.Linear(2, 3)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()))
    assert trainer.device == "cpu"


def test_loss_refuses_targets_on_another_device_than_the_scores():
    scores = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"target is on cuda \(cupy\) but the scores are on cpu \(numpy\)"):
        fnn.losses.MSE().forward(scores, _FakeDeviceArray(scores))


def test_sums_buffers_of_the_wrong_kind_are_named():
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with pytest.raises(TypeError, match=r"out must be a float64 numpy.ndarray, got float32"):
        ops.batchnorm_stats(x, np.zeros(3, np.float32), out=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"sums must be a float64 numpy.ndarray"):
        ops.batchnorm_gather_stats(np.zeros((2, 3), np.float32), 4, np.zeros(3, np.float32))


@needs_no_cuda
def test_tf32_switch_without_cuda():
    assert cuda.allow_tf32() is False
    assert cuda.device_summary() == []
    with pytest.raises(RuntimeError, match="set_allow_tf32 needs the CUDA backend, which is unavailable"):
        cuda.set_allow_tf32(True)
    with pytest.raises(TypeError, match="on must be a bool, got str"):
        cuda.set_allow_tf32("yes")


def test_host_and_device_helpers_on_numpy():
    a = np.arange(3.0)
    assert cuda.to_host(a) is a
    copy = cuda.to_host(a, copy=True)
    assert copy is not a and np.array_equal(copy, a)
    assert cuda.device_of(a) == "cpu" and cuda.device_of(_FakeDeviceArray(a)) == "cuda"
    if cuda.reason is not None:
        with pytest.raises(RuntimeError, match="unavailable"):
            cuda.to_device(a)


@needs_no_cuda
def test_cli_train_on_cuda_without_a_gpu_says_why(capsys):
    with pytest.raises(SystemExit, match="fastnn train --device cuda: CUDA is unavailable: ") as info:
        cli.main(["train", "--device", "cuda", "--epochs", "1", "--quiet"])
    assert cuda.reason in str(info.value)


def test_cli_train_device_cpu_is_the_default(capsys):
    assert cli.main(["train", "--device", "cpu", "--epochs", "1", "--quiet", "--hidden", "16"]) == 0
    assert "backend " in capsys.readouterr().out
