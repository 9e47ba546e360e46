"""A catalogue of bad input across the public API.

Every case must be answered by a ValueError or TypeError (or a subclass) whose
message names the offending argument (or, for a file, the file): never a
crash, a bare KeyError/AttributeError/IndexError from deep inside, or silent
acceptance. One table, one parametrized test; each case is
``(id, callable(tmp_path), exception type, regex the message must match)``.
"""
from __future__ import annotations

import gzip
import json
import os
import re

import numpy as np
import pytest

import fastnn as fnn
from fastnn import ops

f32, f64 = np.float32, np.float64
NAN, INF = float("nan"), float("inf")


def _x(*shape, dtype=f32):
    return np.ones(shape, dtype)


def _labels(*values):
    return np.array(values, np.int64)


def _model():
    return fnn.nn.Sequential(fnn.nn.Linear(3, 4, rng=0), fnn.nn.ReLU(), fnn.nn.BatchNorm1d(4),
                             fnn.nn.Linear(4, 2, rng=1))


def _params():
    return _model().parameters()


def _trainer(**kw):
    model = _model()
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.1), **kw)


def _fit(**kw):
    args = dict(X=_x(8, 3), y=np.arange(8) % 2, epochs=1, batch_size=4, progress=False)
    args.update(kw)
    return _trainer().fit(**args)


class DeviceArray:
    """A GPU array from some other library: it has dtype/shape and the CUDA array
    interface, but no host memory NumPy could read."""

    def __init__(self, shape, dtype=f32):
        self.shape, self.dtype, self.ndim = shape, np.dtype(dtype), len(shape)
        self.__cuda_array_interface__ = {"shape": shape, "typestr": self.dtype.str, "data": (0, False),
                                         "version": 3}


# --- files ------------------------------------------------------------------------------

def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return path


def _saved_model(tmp):
    path = os.path.join(tmp, "model.npz")
    _model().save(path)
    return path


def _truncated_model(tmp):
    path = _saved_model(tmp)
    with open(path, "rb") as f:
        raw = f.read()
    return _write(os.path.join(tmp, "truncated_model.npz"), raw[: len(raw) // 2])


def _npz(tmp, name, **arrays):
    path = os.path.join(tmp, name)
    np.savez(path, **arrays)
    return path


def _model_arrays():
    m = _model()
    arrays = {f"state/{k}": v for k, v in m.state_dict().items()}
    arrays["config"] = np.array(json.dumps(m.get_config()))
    return arrays


def _pickled_model(tmp):
    arrays = _model_arrays()
    arrays["config"] = np.array([{"class": "Linear"}], dtype=object)   # needs pickle to load
    return _npz(tmp, "pickled_model.npz", **arrays)


def _wrong_shape_model(tmp):
    arrays = _model_arrays()
    arrays["state/0.weight"] = np.zeros((5, 5), f32)
    return _npz(tmp, "wrong_shape_model.npz", **arrays)


def _unknown_layer_model(tmp):
    arrays = _model_arrays()
    arrays["config"] = np.array(json.dumps({"class": "Transformer", "args": [], "kwargs": {}}))
    return _npz(tmp, "unknown_layer_model.npz", **arrays)


def _bad_json_model(tmp):
    arrays = _model_arrays()
    arrays["config"] = np.array("{not json")
    return _npz(tmp, "bad_json_model.npz", **arrays)


def _idx(tmp, name, magic, dims, payload=None, gz=False):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    body = bytes(int(np.prod(dims))) if payload is None else payload
    data = header + body
    path = os.path.join(tmp, name + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
        return path
    return _write(path, data)


def _mnist_folder(tmp, images=None, labels=None):
    folder = os.path.join(tmp, "mnist")
    os.makedirs(folder, exist_ok=True)
    for prefix in ("train", "t10k"):
        _idx(folder, f"{prefix}-images-idx3-ubyte", 0x803, (2, 28, 28), payload=images)
        _idx(folder, f"{prefix}-labels-idx1-ubyte", 0x801, (2,), payload=labels)
    return folder


def _check_file_error(fn, path_of_tmp):
    """fn(path) for a file made by path_of_tmp(tmp); the message must name the file."""
    def run(tmp):
        path = path_of_tmp(tmp)
        try:
            fn(path)
        except (ValueError, TypeError) as exc:
            assert os.path.basename(path) in str(exc), f"message does not name the file: {exc}"
            raise
    return run


# --- the catalogue -------------------------------------------------------------------------

def _opt_state(mutate):
    def run(tmp):
        opt = fnn.optim.Adam(_params())
        state = opt.state_dict()
        mutate(state)
        opt.load_state_dict(state)
    return run


def _module_state(mutate):
    def run(tmp):
        model = _model()
        state = model.state_dict()
        mutate(state)
        model.load_state_dict(state)
    return run


def _pre_state(cls, mutate, fit_x=None):
    def run(tmp):
        fitted = cls().fit(np.random.default_rng(0).standard_normal((20, 3)) if fit_x is None else fit_x)
        state = fitted.state_dict()
        mutate(state)
        cls().load_state_dict(state)
    return run


def _set(key, value):
    def mutate(state):
        state[key] = value
    return mutate


def _drop(key):
    def mutate(state):
        del state[key]
    return mutate


CASES = [
    # --- ops: ranks, shapes, dtypes -----------------------------------------------------------
    ("linear_act x 3-D", lambda t: ops.linear_act(_x(2, 3, 1), _x(3, 4)), ValueError, r"x must be 2-D"),
    ("linear_act weight rows", lambda t: ops.linear_act(_x(2, 3), _x(5, 4)), ValueError, r"weight must have shape"),
    ("linear_act bias shape", lambda t: ops.linear_act(_x(2, 3), _x(3, 4), _x(3)), ValueError, r"bias must have shape"),
    ("linear_act x int64", lambda t: ops.linear_act(_x(2, 3, dtype=np.int64), _x(3, 4)), TypeError,
     r"x must have dtype"),
    ("linear_act x float16", lambda t: ops.linear_act(_x(2, 3, dtype=np.float16), _x(3, 4)), TypeError,
     r"x must have dtype"),
    ("linear_act x complex", lambda t: ops.linear_act(_x(2, 3, dtype=np.complex64), _x(3, 4)), TypeError,
     r"x must have dtype"),
    ("linear_act x object", lambda t: ops.linear_act(np.array([[1.0, 2.0]], dtype=object), _x(2, 4)), TypeError,
     r"x must have dtype"),
    ("linear_act x list", lambda t: ops.linear_act([[1.0, 2.0]], _x(2, 4)), TypeError, r"x must be a numpy"),
    ("linear_act mixed dtypes", lambda t: ops.linear_act(_x(2, 3), _x(3, 4, dtype=f64)), TypeError,
     r"weight must have dtype"),
    ("linear_act x strided", lambda t: ops.linear_act(_x(2, 6)[:, ::2], _x(3, 4)), ValueError,
     r"x must be C-contiguous"),
    ("linear_act x on a GPU", lambda t: ops.linear_act(DeviceArray((2, 3)), _x(3, 4)), TypeError,
     r"x is a GPU array"),
    ("gemm inner mismatch", lambda t: ops.gemm(_x(2, 3), _x(4, 5)), ValueError, r"a and b have mismatched"),
    ("gemm b dtype", lambda t: ops.gemm(_x(2, 3), _x(3, 5, dtype=f64)), TypeError, r"b must have dtype"),
    ("gemm out shape", lambda t: ops.gemm(_x(2, 3), _x(3, 5), out=_x(5, 2)), ValueError, r"out must have shape"),
    ("gemm out read-only", lambda t: ops.gemm(_x(2, 3), _x(3, 5), out=np.broadcast_to(_x(1, 5), (2, 5))),
     ValueError, r"out must be"),
    ("activation unknown", lambda t: ops.activation(_x(3), "relu6"), ValueError, r"act must be one of"),
    ("activation alpha inf", lambda t: ops.activation(_x(3), "elu", INF), ValueError, r"alpha must be finite"),
    ("activation alpha str", lambda t: ops.activation(_x(3), "elu", "1"), TypeError, r"alpha must be a number"),
    ("activation_backward dy shape", lambda t: ops.activation_backward(_x(4), _x(3), _x(3), "relu"), ValueError,
     r"dy must have shape"),
    ("softmax float labels", lambda t: ops.softmax_cross_entropy(_x(2, 3), np.array([0.0, 1.0])), TypeError,
     r"labels must be an integer"),
    ("softmax negative label", lambda t: ops.softmax_cross_entropy(_x(2, 3), _labels(0, -1)), ValueError,
     r"labels must be in \[0, 3\)"),
    ("softmax label too large", lambda t: ops.softmax_cross_entropy(_x(2, 3), _labels(0, 3)), ValueError,
     r"labels must be in \[0, 3\)"),
    ("softmax labels length", lambda t: ops.softmax_cross_entropy(_x(2, 3), _labels(0)), ValueError,
     r"labels must have shape"),
    ("softmax labels 2-D", lambda t: ops.softmax_cross_entropy(_x(2, 3), _labels(0, 1)[:, None]), ValueError,
     r"labels must have shape"),
    ("softmax scores 1-D", lambda t: ops.softmax_cross_entropy(_x(3), _labels(0)), ValueError, r"scores must be 2-D"),
    ("softmax zero classes", lambda t: ops.softmax_cross_entropy(_x(2, 0), _labels(0, 0)), ValueError,
     r"scores must have at least one class"),
    ("batchnorm gamma shape", lambda t: ops.batchnorm(_x(4, 3), _x(2), _x(3), None, None), ValueError,
     r"gamma must have shape"),
    ("batchnorm eps negative", lambda t: ops.batchnorm(_x(4, 3), None, None, None, None, eps=-1e-5), ValueError,
     r"eps must be >"),
    ("batchnorm momentum NaN", lambda t: ops.batchnorm(_x(4, 3), None, None, None, None, momentum=NAN), ValueError,
     r"momentum must not be NaN"),
    ("batchnorm x 1-D", lambda t: ops.batchnorm(_x(4), None, None, None, None), ValueError, r"x must be"),
    ("batchnorm one value per channel", lambda t: ops.batchnorm(_x(1, 3), None, None, None, None), ValueError,
     r"x: expected more than 1 value per channel"),
    ("dropout p = 1", lambda t: ops.dropout(_x(3), 1.0, 0), ValueError, r"p must be <"),
    ("dropout p negative", lambda t: ops.dropout(_x(3), -0.1, 0), ValueError, r"p must be >="),
    ("dropout p NaN", lambda t: ops.dropout(_x(3), NAN, 0), ValueError, r"p must not be NaN"),
    ("dropout seed negative", lambda t: ops.dropout(_x(3), 0.5, -1), ValueError, r"seed must be in"),
    ("dropout seed float", lambda t: ops.dropout(_x(3), 0.5, 1.5), TypeError, r"seed must be an int"),
    ("dropout offset too large", lambda t: ops.dropout(_x(3), 0.5, 0, 2**64), ValueError, r"offset must be in"),
    ("conv2d x 3-D", lambda t: ops.conv2d(_x(1, 2, 5), _x(3, 2, 3, 3)), ValueError, r"x must be 4-D"),
    ("conv2d channels", lambda t: ops.conv2d(_x(1, 2, 5, 5), _x(3, 4, 3, 3)), ValueError, r"weight must have shape"),
    ("conv2d stride 0", lambda t: ops.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), stride=0), ValueError,
     r"stride must be >= 1"),
    ("conv2d padding negative", lambda t: ops.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), padding=-1), ValueError,
     r"padding must be >= 0"),
    ("conv2d stride triple", lambda t: ops.conv2d(_x(1, 2, 5, 5), _x(3, 2, 3, 3), stride=(1, 1, 1)), ValueError,
     r"stride must be an int or a pair"),
    ("max_pool2d kernel 0", lambda t: ops.max_pool2d(_x(1, 2, 4, 4), 0), ValueError, r"kernel_size must be >= 1"),
    ("max_pool2d kernel too big", lambda t: ops.max_pool2d(_x(1, 2, 4, 4), 5), ValueError,
     r"kernel_size .* is larger than the input"),
    ("optim_step rule", lambda t: ops.optim_step("lion", _x(3), _x(3), None, None, _labels(0, 3),
                                                 np.zeros((1, 11))), ValueError, r"rule must be one of"),
    ("optim_step grad shape", lambda t: ops.optim_step("sgd", _x(3), _x(4), None, None, _labels(0, 3),
                                                       np.zeros((1, 11))), ValueError, r"grad must have shape"),
    ("max_norm limit 0", lambda t: ops.max_norm(_x(4), [0], [2], [2], [0.0]), ValueError, r"max_norm must be > 0"),
    ("max_norm outside param", lambda t: ops.max_norm(_x(4), [2], [2], [2], [1.0]), ValueError,
     r"lies outside param"),
    ("set_num_threads 0", lambda t: fnn.set_num_threads(0), ValueError, r"n must be >= 1"),
    ("backend unknown", lambda t: fnn.backend.use("tpu"), ValueError, r"backend must be one of"),

    # --- layers ---------------------------------------------------------------------------------
    ("Linear in_features 0", lambda t: fnn.nn.Linear(0, 3), ValueError, r"in_features must be >= 1"),
    ("Linear out_features float", lambda t: fnn.nn.Linear(3, 2.5), TypeError, r"out_features must be an int"),
    ("Linear dtype float16", lambda t: fnn.nn.Linear(3, 3, dtype=np.float16), TypeError, r"dtype must be"),
    ("Linear init unknown", lambda t: fnn.nn.Linear(3, 3, init="glorot"), ValueError, r"init must be one of"),
    ("Linear forward wrong width", lambda t: fnn.nn.Linear(3, 2).forward(_x(4, 5)), ValueError,
     r"Linear\(3, 2\): expected x with 3 input features"),
    ("Dropout p 1.5", lambda t: fnn.nn.Dropout(1.5), ValueError, r"p must be <"),
    ("Dropout p NaN", lambda t: fnn.nn.Dropout(NAN), ValueError, r"p must not be NaN"),
    ("BatchNorm eps 0", lambda t: fnn.nn.BatchNorm1d(3, eps=0.0), ValueError, r"eps must be >"),
    ("BatchNorm momentum 2", lambda t: fnn.nn.BatchNorm1d(3, momentum=2.0), ValueError, r"momentum must be <="),
    ("BatchNorm2d on 2-D x", lambda t: fnn.nn.BatchNorm2d(3).forward(_x(4, 3)), ValueError, r"x must be 4-D"),
    ("Conv2d kernel 0", lambda t: fnn.nn.Conv2d(2, 3, 0), ValueError, r"kernel_size must be >= 1"),
    ("Conv2d wrong channels", lambda t: fnn.nn.Conv2d(2, 3, 3).forward(_x(1, 4, 5, 5)), ValueError,
     r"x must have 2 channels"),
    ("MaxPool2d kernel triple", lambda t: fnn.nn.MaxPool2d((2, 2, 2)), ValueError,
     r"kernel_size must be an int or a pair"),
    ("LeakyReLU negative slope", lambda t: fnn.nn.LeakyReLU(-1.0), ValueError, r"alpha"),
    ("ELU alpha inf", lambda t: fnn.nn.ELU(INF), ValueError, r"alpha must be finite"),
    ("GELU approximate", lambda t: fnn.nn.GELU("fast"), ValueError, r"approximate must be"),
    ("Sequential non-module", lambda t: fnn.nn.Sequential(fnn.nn.ReLU(), "relu"), TypeError, r"layers\[1\]"),
    ("Residual survival 0", lambda t: fnn.nn.Residual(fnn.nn.ReLU(), survival_prob=0.0), ValueError,
     r"survival_prob must be >"),
    ("Module.to unknown device", lambda t: _model().to("tpu"), ValueError, r"device must be"),

    # --- optimizers -------------------------------------------------------------------------------
    ("SGD lr negative", lambda t: fnn.optim.SGD(_params(), lr=-0.1), ValueError, r"lr must be >= 0"),
    ("SGD lr NaN", lambda t: fnn.optim.SGD(_params(), lr=NAN), ValueError, r"lr must not be NaN"),
    ("SGD lr inf", lambda t: fnn.optim.SGD(_params(), lr=INF), ValueError, r"lr must be finite"),
    ("SGD lr str", lambda t: fnn.optim.SGD(_params(), lr="0.1"), TypeError, r"lr must be a number"),
    ("SGD momentum negative", lambda t: fnn.optim.SGD(_params(), momentum=-0.9), ValueError, r"momentum must be >="),
    ("SGD momentum inf", lambda t: fnn.optim.SGD(_params(), momentum=INF), ValueError, r"momentum must be finite"),
    ("SGD nesterov without momentum", lambda t: fnn.optim.SGD(_params(), nesterov=True), ValueError, r"nesterov"),
    ("SGD empty params", lambda t: fnn.optim.SGD([]), ValueError, r"params must not be empty"),
    ("SGD arrays not Parameters", lambda t: fnn.optim.SGD([_x(3)]), TypeError, r"param_groups\[0\]"),
    ("SGD weight_decay NaN", lambda t: fnn.optim.SGD(_params(), weight_decay=NAN), ValueError, r"weight_decay"),
    ("SGD clip_grad_norm 0", lambda t: fnn.optim.SGD(_params(), clip_grad_norm=0.0), ValueError, r"clip_grad_norm"),
    ("SGD max_norm negative", lambda t: fnn.optim.SGD(_params(), max_norm=-1.0), ValueError, r"max_norm"),
    ("Adam beta1 = 1", lambda t: fnn.optim.Adam(_params(), betas=(1.0, 0.999)), ValueError, r"betas\[0\]"),
    ("Adam beta2 NaN", lambda t: fnn.optim.Adam(_params(), betas=(0.9, NAN)), ValueError, r"betas\[1\]"),
    ("Adam betas scalar", lambda t: fnn.optim.Adam(_params(), betas=0.9), TypeError, r"betas must be a pair"),
    ("Adam eps 0", lambda t: fnn.optim.Adam(_params(), eps=0.0), ValueError, r"eps must be >"),
    ("AdamW weight_decay negative", lambda t: fnn.optim.AdamW(_params(), weight_decay=-0.01), ValueError,
     r"weight_decay must be >="),
    ("RMSProp alpha 1.5", lambda t: fnn.optim.RMSProp(_params(), alpha=1.5), ValueError, r"alpha must be <="),
    ("param group unknown option", lambda t: fnn.optim.SGD([{"params": _params(), "lr_decay": 0.1}]), ValueError,
     r"params\[0\] has unknown options"),

    # --- schedules ------------------------------------------------------------------------------
    ("StepDecay step_size 0", lambda t: fnn.schedules.StepDecay(step_size=0), ValueError, r"step_size must be >= 1"),
    ("StepDecay gamma negative", lambda t: fnn.schedules.StepDecay(10, gamma=-0.5), ValueError, r"gamma must be >="),
    ("ExponentialDecay k NaN", lambda t: fnn.schedules.ExponentialDecay(NAN), ValueError, r"k must not be NaN"),
    ("CosineAnnealing t_max 0", lambda t: fnn.schedules.CosineAnnealing(0), ValueError, r"t_max must be >= 1"),
    ("CyclicLR max below base", lambda t: fnn.schedules.CyclicLR(0.1, 0.01, 10), ValueError, r"max_lr must be >="),
    ("Warmup start_factor 2", lambda t: fnn.schedules.Warmup(start_factor=2.0), ValueError, r"start_factor"),
    ("ReduceOnPlateau factor 1", lambda t: fnn.schedules.ReduceOnPlateau(factor=1.0), ValueError, r"factor must be <"),
    ("ReduceOnPlateau patience -1", lambda t: fnn.schedules.ReduceOnPlateau(patience=-1), ValueError,
     r"patience must be >= 0"),
    ("schedule per", lambda t: fnn.schedules.StepDecay(10, per="batch"), ValueError, r"per must be"),

    # --- init -------------------------------------------------------------------------------------
    ("init.normal std negative", lambda t: fnn.init.normal((3, 3), std=-1.0), ValueError, r"std must be >= 0"),
    ("init.normal std NaN", lambda t: fnn.init.normal((3, 3), std=NAN), ValueError, r"std must not be NaN"),
    ("init.small_random std inf", lambda t: fnn.init.small_random((3, 3), std=INF), ValueError, r"std must be finite"),
    ("init.xavier mode", lambda t: fnn.init.xavier_normal((3, 3), mode="fan_max"), ValueError, r"mode must be"),
    ("init.xavier gain NaN", lambda t: fnn.init.xavier_uniform((3, 3), gain=NAN), ValueError, r"gain must not be NaN"),
    ("init.he shape 3-D", lambda t: fnn.init.he_normal((3, 3, 3)), ValueError, r"shape must be"),
    ("init.constant value NaN", lambda t: fnn.init.constant((3,), NAN), ValueError, r"value must not be NaN"),

    # --- training -------------------------------------------------------------------------------
    ("fit epochs 0", lambda t: _fit(epochs=0), ValueError, r"epochs must be >= 1"),
    ("fit batch_size 0", lambda t: _fit(batch_size=0), ValueError, r"batch_size must be >= 1"),
    ("fit batch_size float", lambda t: _fit(batch_size=2.5), TypeError, r"batch_size must be an int"),
    ("fit X int", lambda t: _fit(X=np.ones((8, 3), np.int64)), TypeError, r"X must have dtype"),
    ("fit X NaN", lambda t: _fit(X=np.full((8, 3), NAN, f32)), ValueError, r"X contains"),
    ("fit y length", lambda t: _fit(y=np.arange(5) % 2), ValueError, r"y must have one entry per row of X"),
    ("fit labels out of range", lambda t: _fit(y=np.arange(8)), ValueError, r"labels must be in \[0, 2\)"),
    ("fit val not a pair", lambda t: _fit(val=_x(4, 3)), TypeError, r"val must be a tuple"),
    ("DataLoader batch_size 0", lambda t: fnn.data.DataLoader(_x(8, 3), batch_size=0), ValueError,
     r"batch_size must be >= 1"),
    ("DataLoader X list", lambda t: fnn.data.DataLoader([[1.0]]), TypeError, r"X must be a numpy"),
    ("DataLoader y length", lambda t: fnn.data.DataLoader(_x(8, 3), np.arange(7)), ValueError,
     r"y must have one entry per sample of X"),

    # --- augmentation ---------------------------------------------------------------------------
    ("GaussianNoise std negative", lambda t: fnn.augment.GaussianNoise(-1.0), ValueError, r"std must be >= 0"),
    ("RandomFlip p 2", lambda t: fnn.augment.RandomFlip(p=2.0), ValueError, r"p must be <= 1"),
    ("RandomCrop size 0", lambda t: fnn.augment.RandomCrop(0), ValueError, r"size must be >= 1"),
    ("Cutout n_holes 0", lambda t: fnn.augment.Cutout(4, n_holes=0), ValueError, r"n_holes must be >= 1"),
    ("ColorJitter hue 0.7", lambda t: fnn.augment.ColorJitter(hue=0.7), ValueError, r"hue must be <= 0.5"),
    ("RandomRotate degrees NaN", lambda t: fnn.augment.RandomRotate(NAN), ValueError, r"max_degrees must not be NaN"),
    ("RandomScale reversed", lambda t: fnn.augment.RandomScale((1.2, 0.8)), ValueError, r"scale must have low <= high"),
    ("Mixup alpha 0", lambda t: fnn.augment.Mixup(0.0), ValueError, r"alpha must be >"),

    # --- preprocessing ------------------------------------------------------------------------------
    ("Standardize fit NaN", lambda t: fnn.preprocessing.Standardize().fit(np.full((4, 3), NAN)), ValueError,
     r"X contains"),
    ("PCA n_components 0", lambda t: fnn.preprocessing.PCA(n_components=0), ValueError, r"n_components must be >= 1"),
    ("PCA variance 1.5", lambda t: fnn.preprocessing.PCA(variance=1.5), ValueError, r"variance must be <= 1"),
    ("preprocessing state missing key", _pre_state(fnn.preprocessing.Standardize, _drop("scale_")), ValueError,
     r"scale_"),
    ("preprocessing state wrong shape", _pre_state(fnn.preprocessing.Standardize, _set("scale_", np.ones(4))),
     ValueError, r"scale_"),
    ("preprocessing state strings", _pre_state(fnn.preprocessing.Standardize, _set("mean_", np.array(["a", "b",
                                                                                                      "c"]))),
     TypeError, r"mean_"),
    ("preprocessing state NaN", _pre_state(fnn.preprocessing.Standardize, _set("mean_", np.full(3, NAN))),
     ValueError, r"mean_"),

    # --- state dicts --------------------------------------------------------------------------------
    ("Module state missing key", _module_state(_drop("0.weight")), ValueError, r"state_dict .*missing \['0.weight'\]"),
    ("Module state extra key", _module_state(_set("9.weight", _x(2))), ValueError,
     r"state_dict .*unexpected \['9.weight'\]"),
    ("Module state wrong shape", _module_state(_set("0.weight", _x(4, 3))), ValueError,
     r"state_dict\['0.weight'\] has shape"),
    ("Module state strings", _module_state(_set("0.bias", np.array(["a"] * 4))), TypeError,
     r"state_dict\['0.bias'\]"),
    ("Module state not a dict", lambda t: _model().load_state_dict([1, 2]), TypeError, r"state_dict must be"),
    ("optimizer state wrong rule", _opt_state(_set("rule", np.array("sgd"))), ValueError,
     r"state_dict is for rule 'sgd'"),
    ("optimizer state missing state1", _opt_state(_drop("state1")), ValueError, r"state_dict\['state1'\]"),
    ("optimizer state missing t", _opt_state(_drop("t")), ValueError, r"state_dict\['t'\]"),
    ("optimizer state wrong shape", _opt_state(_set("state0", np.zeros(3))), ValueError,
     r"state_dict\['state0'\] has shape"),
    ("optimizer state negative t", _opt_state(_set("t", np.array(-3))), ValueError, r"state_dict\['t'\]"),

    # --- files ------------------------------------------------------------------------------------
    ("model truncated npz", _check_file_error(fnn.nn.load, _truncated_model), ValueError, r"not a fastnn model file"),
    ("model random bytes", _check_file_error(fnn.nn.load, lambda t: _write(os.path.join(t, "noise.npz"),
                                                                            os.urandom(4096))),
     ValueError, r"not a fastnn model file"),
    ("model npz without config", _check_file_error(fnn.nn.load, lambda t: _npz(t, "no_config.npz", w=_x(3))),
     ValueError, r"not a fastnn model file"),
    ("model npz with pickle", _check_file_error(fnn.nn.load, _pickled_model), ValueError, r"not a fastnn model file"),
    ("model wrong-shape weights", _check_file_error(fnn.nn.load, _wrong_shape_model), ValueError,
     r"state_dict\['0.weight'\] has shape"),
    ("model unknown layer", _check_file_error(fnn.nn.load, _unknown_layer_model), ValueError,
     r"unknown layer class 'Transformer'"),
    ("model config not JSON", _check_file_error(fnn.nn.load, _bad_json_model), ValueError, r"not a fastnn model file"),
    ("checkpoint truncated", _check_file_error(lambda p: _trainer().load_checkpoint(p), _truncated_model),
     ValueError, r"not a fastnn trainer checkpoint"),
    ("checkpoint is a model file", _check_file_error(lambda p: _trainer().load_checkpoint(p), _saved_model),
     ValueError, r"not a fastnn trainer checkpoint"),
    ("CIFAR batch wrong size", _check_file_error(fnn.data.files.read_cifar10_batch,
                                                 lambda t: _write(os.path.join(t, "data_batch_1.bin"),
                                                                  bytes(3073 + 100))),
     ValueError, r"not a whole number"),
    ("CIFAR label 12", _check_file_error(fnn.data.files.read_cifar10_batch,
                                         lambda t: _write(os.path.join(t, "test_batch.bin"),
                                                          bytes([12]) + bytes(3072))),
     ValueError, r"label 12"),
    ("MNIST wrong magic", _check_file_error(lambda p: fnn.data.files.read_idx(p, 0x803),
                                            lambda t: _idx(t, "bad-magic-idx3-ubyte", 0x804, (2, 28, 28, 1))),
     ValueError, r"magic number 0x00000804"),
    ("MNIST truncated", _check_file_error(lambda p: fnn.data.files.read_idx(p, 0x803),
                                          lambda t: _idx(t, "short-idx3-ubyte", 0x803, (2, 28, 28), bytes(100))),
     ValueError, r"truncated"),
    ("MNIST corrupt gzip", _check_file_error(lambda p: fnn.data.files.read_idx(p, 0x803),
                                             # a gzip header, then a deflate block of the reserved type 11
                                             # (0xff): always invalid (random bytes sometimes inflated into
                                             # data with a wrong magic number instead)
                                             lambda t: _write(os.path.join(t, "corrupt-idx3-ubyte.gz"),
                                                              b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 58)),
     ValueError, r"corrupt or truncated gzip"),
    ("MNIST label 10", _check_file_error(lambda p: fnn.data.load_mnist(p),
                                         lambda t: _mnist_folder(t, labels=bytes([1, 10]))),
     ValueError, r"label 10 is not a digit"),
]


def test_catalogue_is_large_and_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case_id,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, call, exc, match, tmp_path):
    assert issubclass(exc, (ValueError, TypeError))
    with pytest.raises(exc, match=match) as info:
        call(str(tmp_path))
    assert not isinstance(info.value, (KeyError, IndexError, AttributeError)), repr(info.value)
    assert re.search(match, str(info.value))
