"""PyTorch interop without a dependency on PyTorch.

``from_torch(module_or_state_dict)`` builds the equivalent fastnn
``Sequential`` from a ``torch.nn.Sequential`` or loads a state_dict (PyTorch
tensors or plain NumPy arrays: no torch install needed) into one;
``to_torch_state_dict(model)`` gives a fastnn model's weights as the
state_dict of the matching PyTorch ``nn.Sequential`` (NumPy arrays, PyTorch's
key names and layouts); ``to_torch(model)`` builds that ``nn.Sequential``.

The correspondence, module by module (nested Sequentials are flattened on both
sides, in order)::

    torch.nn                          fastnn.nn
    Linear (weight (out, in))         Linear (weight (in, out): transposed)
    Conv2d (groups 1, dilation 1,     Conv2d (weight (F, C, KH, KW) in both)
      zero padding, 'same'/'valid')
    BatchNorm1d/2d (running stats,    BatchNorm1d/2d (running_mean, running_var, eps,
      eps, momentum, affine)            momentum, affine; num_batches_tracked is not kept)
    ReLU LeakyReLU PReLU ELU SELU     ReLU LeakyReLU PReLU(num_parameters=) ELU SELU
    GELU Sigmoid Tanh SiLU Identity   GELU(approximate=) Sigmoid Tanh Swish Identity
    MaxPool2d (no padding/dilation)   MaxPool2d
    AdaptiveAvgPool2d(1) + Flatten    GlobalAvgPool2d + Flatten
    Flatten (start_dim 1)             Flatten
    Dropout                           Dropout

A fastnn ``Linear(..., activation="relu")`` is a torch ``Linear`` followed by
a ``ReLU`` (two modules, two indices), a ``GlobalAvgPool2d`` is
``AdaptiveAvgPool2d(1)`` followed by ``Flatten`` (fastnn's gives (N, C),
torch's (N, C, 1, 1); ``from_torch`` takes an ``AdaptiveAvgPool2d(1)`` that a
Flatten follows, or that ends the model, whose output is then (N, C)), and a
DropConnect maps to a plain ``Linear`` (its eval form). Maxout, Residual and
FractionalMaxPool2d have no torch module and are refused by name, as is any
torch module not in the table.

A state_dict holds weights, not the architecture: activations, pooling,
Flatten and Dropout leave no key. So a plain state_dict is loaded one of two
ways (see ``from_torch``): into a fastnn model you build to match
(``model=``), pairing the layers that have weights in order; or, without
``model=``, into a model inferred from the keys, which is only done when
nothing can be missing: the keys are those of one flat ``nn.Sequential``
("0.weight", "1.running_mean", ...) with no index skipped, every group a
Linear (2-D weight), BatchNorm (running statistics) or PReLU (lone 1-D
weight). Anything else is a ValueError asking for ``model=``.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from . import nn
from ._io import load_npz

# AvgPool2d arrives in a later wave of nn; converted when it exists.
_AvgPool2d = getattr(nn, "AvgPool2d", None)

_TORCH_INSTALL = "pip install torch"


class UnsupportedModule(NotImplementedError, ValueError):
    """A layer or module with no counterpart on the other side; a
    NotImplementedError and a ValueError (a bad argument here), caught as either."""


class _Unit(NamedTuple):
    """One module of the matching torch ``nn.Sequential``.

    kind: the torch.nn class name; config: its constructor arguments;
    tensors: torch state_dict entry name -> (the fastnn array it holds, or None
    for num_batches_tracked, which fastnn does not keep; whether torch's
    layout is the transpose of fastnn's); layer: the fastnn layer it stems
    from (for messages)."""
    kind: str
    config: dict
    tensors: dict
    layer: object


# --- fastnn -> the matching torch modules ----------------------------------------

_SIMPLE_ACTIVATIONS = {"relu": "ReLU", "selu": "SELU", "sigmoid": "Sigmoid", "tanh": "Tanh", "swish": "SiLU",
                       "identity": "Identity"}


def _activation_unit(name: str, alpha: float, slopes, layer) -> _Unit:
    if name in _SIMPLE_ACTIVATIONS:
        return _Unit(_SIMPLE_ACTIVATIONS[name], {}, {}, layer)
    if name == "leaky_relu":
        return _Unit("LeakyReLU", {"negative_slope": float(alpha)}, {}, layer)
    if name == "elu":
        return _Unit("ELU", {"alpha": float(alpha)}, {}, layer)
    if name in ("gelu", "gelu_tanh"):
        return _Unit("GELU", {"approximate": "none" if name == "gelu" else "tanh"}, {}, layer)
    if name == "prelu":
        return _Unit("PReLU", {"num_parameters": int(slopes.size)}, {"weight": (slopes, False)}, layer)
    raise UnsupportedModule(f"activation {name!r} has no PyTorch module")


def _weighted_units(kind: str, config: dict, layer) -> list:
    tensors = {"weight": (layer.weight.data, kind == "Linear")}
    if layer.bias is not None:
        tensors["bias"] = (layer.bias.data, False)
    units = [_Unit(kind, {**config, "bias": layer.bias is not None}, tensors, layer)]
    if layer.activation != "identity":
        units.append(_activation_unit(layer.activation, layer._act_alpha(),
                                      layer.alpha.data if layer.activation == "prelu" else None, layer))
    return units


def _units(layer) -> list:
    """The torch modules, in order, that compute what ``layer`` computes (in eval)."""
    if isinstance(layer, nn.Sequential):
        return [u for child in layer.layers for u in _units(child)]
    if isinstance(layer, nn.Linear):          # DropConnect too: its eval form
        return _weighted_units("Linear", {"in_features": layer.in_features, "out_features": layer.out_features},
                               layer)
    if isinstance(layer, nn.Conv2d):
        return _weighted_units("Conv2d", {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
                                          "kernel_size": layer.kernel_size, "stride": layer.stride,
                                          "padding": layer.padding}, layer)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        tensors = {}
        if layer.affine:
            tensors = {"weight": (layer.weight.data, False), "bias": (layer.bias.data, False)}
        tensors.update({"running_mean": (layer.running_mean, False), "running_var": (layer.running_var, False),
                        "num_batches_tracked": (None, False)})
        config = {"num_features": layer.num_features, "eps": layer.eps, "momentum": layer.momentum,
                  "affine": layer.affine}
        return [_Unit(type(layer).__name__, config, tensors, layer)]
    if isinstance(layer, nn.PReLU):
        return [_activation_unit("prelu", 0.0, layer.alpha.data, layer)]
    if isinstance(layer, nn.Activation):
        return [_activation_unit(layer.name, layer.alpha_value, None, layer)]
    if isinstance(layer, nn.Dropout):
        return [_Unit("Dropout", {"p": layer.p}, {}, layer)]
    if isinstance(layer, nn.MaxPool2d):
        return [_Unit("MaxPool2d", {"kernel_size": layer.kernel_size, "stride": layer.stride,
                                    "padding": getattr(layer, "padding", (0, 0))}, {}, layer)]
    if _AvgPool2d is not None and isinstance(layer, _AvgPool2d):
        return [_Unit("AvgPool2d", {"kernel_size": layer.kernel_size, "stride": layer.stride,
                                    "padding": getattr(layer, "padding", 0),
                                    "count_include_pad": getattr(layer, "count_include_pad", True)}, {}, layer)]
    if isinstance(layer, nn.GlobalAvgPool2d):
        return [_Unit("AdaptiveAvgPool2d", {"output_size": 1}, {}, layer), _Unit("Flatten", {}, {}, layer)]
    if isinstance(layer, nn.Flatten):
        return [_Unit("Flatten", {}, {}, layer)]
    why = {"Maxout": "torch.nn has no maxout module",
           "Residual": "torch.nn has no residual module (a skip connection lives in a custom forward())",
           "FractionalMaxPool2d": "torch's FractionalMaxPool2d pools overlapping kernel_size windows, fastnn's "
                                  "Graham's disjoint regions: they compute different things"}
    name = type(layer).__name__
    raise UnsupportedModule(f"{name} has no PyTorch equivalent: {why.get(name, 'not a layer fastnn maps')}")


def to_torch_state_dict(model) -> dict:
    """The weights of ``model`` as the state_dict of the matching PyTorch
    ``nn.Sequential`` (see the module docstring; ``to_torch`` builds it): a
    dict of NumPy arrays (copies) under torch's key names ("0.weight",
    "1.running_mean", ...) and layouts (Linear weights (out, in)), with
    BatchNorm's ``num_batches_tracked`` = 0, so

        torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})

    loads it (strict). A layer with no torch equivalent (Maxout, Residual,
    FractionalMaxPool2d) raises UnsupportedModule (a NotImplementedError and a
    ValueError) naming it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")
    state = {}
    for i, unit in enumerate(_units(model)):
        for name, (array, transposed) in unit.tensors.items():
            if array is None:
                state[f"{i}.{name}"] = np.array(0, np.int64)
            else:
                state[f"{i}.{name}"] = np.ascontiguousarray(array.T) if transposed else np.array(array, copy=True)
    return state


def to_torch(model):
    """The PyTorch ``nn.Sequential`` that computes what ``model`` computes, its
    weights loaded from ``to_torch_state_dict(model)``, in ``model``'s
    train/eval mode and dtype (float32 or float64). Needs torch."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"fastnn.interop.to_torch needs PyTorch, which is not installed: {_TORCH_INSTALL}") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastnn Module, got {type(model).__name__}")
    units = _units(model)
    modules = [getattr(torch.nn, unit.kind)(**unit.config) for unit in units]
    torch_model = torch.nn.Sequential(*modules)
    dtype = model.input_dtype()
    if dtype == np.float64:
        torch_model = torch_model.double()
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in to_torch_state_dict(model).items()})
    return torch_model.train(model.training)


# --- state_dict -> fastnn -----------------------------------------------------------

def _as_numpy(value, key: str):
    """A state_dict entry as a NumPy array: a torch tensor (detached, on the
    CPU, half/bfloat16 widened to float32) or anything np.asarray takes."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if value.is_floating_point() and str(value.dtype) not in ("torch.float32", "torch.float64"):
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"state_dict[{key!r}] must hold numbers, got dtype {array.dtype}")
    return array


def _int_path(prefix: str):
    parts = prefix.split(".") if prefix else []
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else None


def _groups(state) -> dict:
    """{module prefix: {entry name: array}}, in module order: the state_dict's
    own order, or numeric order when every prefix is an nn.Sequential index
    path ("10.weight" after "9.weight" even if the keys were sorted as text)."""
    groups = {}
    for key in state.keys():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be strings such as '0.weight', got {key!r}")
        prefix, _, name = key.rpartition(".")
        groups.setdefault(prefix, {})[name] = _as_numpy(state[key], key)
    paths = {p: _int_path(p) for p in groups}
    if groups and all(path is not None for path in paths.values()):
        groups = dict(sorted(groups.items(), key=lambda item: paths[item[0]]))
    return groups


def _describe(unit: _Unit) -> str:
    return f"{type(unit.layer).__name__} (torch {unit.kind})"


def _check_group(unit: _Unit, prefix: str, group: dict) -> None:
    expected = set(unit.tensors)
    optional = {n for n, (array, _) in unit.tensors.items() if array is None}
    missing, extra = sorted(expected - optional - set(group)), sorted(set(group) - expected)
    where = f"state_dict entries {prefix + '.' if prefix else ''}{{{', '.join(sorted(group))}}}"
    if missing or extra:
        raise ValueError(f"{where} do not match the model's layer {_describe(unit)}, which has "
                         f"{sorted(expected)}: missing {missing}, unexpected {extra}")
    for name, value in group.items():
        array, transposed = unit.tensors[name]
        if array is None:
            continue
        want = array.T.shape if transposed else array.shape
        if value.shape != want:
            key = f"{prefix}.{name}" if prefix else name
            layout = " (torch's (out_features, in_features) layout)" if transposed else ""
            raise ValueError(f"state_dict[{key!r}] has shape {value.shape}, the model's layer {_describe(unit)} "
                             f"expects {want}{layout}")


def _load_into(model, groups: dict):
    """Copy the groups (in order) into the layers of ``model`` that have
    weights (in order), after checking all of them: an error leaves the model
    untouched."""
    units = [u for u in _units(model) if u.tensors]
    if len(units) != len(groups):
        raise ValueError(f"the state_dict holds {len(groups)} layers with weights ({', '.join(map(repr, groups))}), "
                         f"the model {len(units)} ({', '.join(_describe(u) for u in units)}): build model= to "
                         "match the torch model, layer for layer")
    pairs = list(zip(units, groups.items()))
    for unit, (prefix, group) in pairs:
        _check_group(unit, prefix, group)
    for unit, (_, group) in pairs:
        for name, value in group.items():
            array, transposed = unit.tensors[name]
            if array is not None:
                np.copyto(array, (value.T if transposed else value).astype(array.dtype, copy=False))
    return model


def _state_dtype(groups: dict):
    floats = [a.dtype for g in groups.values() for a in g.values() if a.dtype.kind == "f"]
    return np.float64 if floats and all(d == np.float64 for d in floats) else np.float32


def _infer(groups: dict):
    """The fastnn Sequential a state_dict alone determines (see the module
    docstring), or a ValueError saying why model= is needed."""
    ask = "pass model=, a fastnn Sequential built to match the torch model, or the torch module itself"
    if not groups:
        raise ValueError("the state_dict is empty: there are no weights to load")
    paths = {p: _int_path(p) for p in groups}
    odd = [p for p, path in paths.items() if path is None or len(path) != 1]
    if odd:
        raise ValueError(f"state_dict keys {odd[0]!r}.* are not those of one flat torch nn.Sequential ('0.weight', "
                         f"'1.bias', ...), so the order and kind of its layers is unknown: {ask}")
    indices = [path[0] for path in paths.values()]
    skipped = sorted(set(range(indices[-1] + 1)) - set(indices))
    if skipped:
        raise ValueError(f"the state_dict has no entries for modules {skipped} of the torch nn.Sequential (layers "
                         f"{indices} have weights): modules without weights (activations, pooling, Flatten, "
                         f"Dropout) were there, and a state_dict does not say which: {ask}")
    dtype = _state_dtype(groups)
    layers = []
    for prefix, group in groups.items():
        names, weight = set(group), group.get("weight")
        if {"running_mean", "running_var"} <= names:
            affine = "weight" in names
            layers.append(nn.BatchNorm1d(group["running_mean"].size, affine=affine, dtype=dtype))
        elif weight is not None and weight.ndim == 2 and names <= {"weight", "bias"}:
            layers.append(nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in names, init="zeros",
                                    dtype=dtype))
        elif weight is not None and weight.ndim == 1 and names == {"weight"}:
            layers.append(nn.PReLU(dtype=dtype, num_parameters=weight.size))
        elif weight is not None and weight.ndim == 4:
            raise ValueError(f"state_dict entries {prefix}.* are a Conv2d, whose stride and padding a state_dict "
                             f"does not hold: {ask}")
        else:
            raise ValueError(f"state_dict entries {prefix}.{{{', '.join(sorted(names))}}} are not a Linear, "
                             f"BatchNorm or PReLU: {ask}")
    return _load_into(nn.Sequential(*layers), groups)


# --- torch module -> fastnn --------------------------------------------------------

def _is_torch_module(obj) -> bool:
    return any(cls.__module__.startswith("torch.nn") and cls.__name__ == "Module" for cls in type(obj).__mro__)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _flatten_torch(torch, module, path: str):
    if isinstance(module, torch.nn.Sequential):
        for name, child in module.named_children():
            yield from _flatten_torch(torch, child, f"{path}.{name}" if path else name)
    else:
        yield path or type(module).__name__, module


def _float_dtype(module):
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return np.float64 if str(tensor.dtype) == "torch.float64" else np.float32
    return np.float32


_SUPPORTED = ("Linear, Conv2d, BatchNorm1d/2d, ReLU, LeakyReLU, PReLU, ELU, SELU, GELU, SiLU, Sigmoid, Tanh, "
              "Identity, MaxPool2d, AdaptiveAvgPool2d(1), Flatten, Dropout and nested Sequential")


def _convert(torch, module, dtype, following):
    """The fastnn layer for one torch module (weights loaded), or a
    UnsupportedModule/ValueError saying what does not map."""
    t = torch.nn
    if isinstance(module, t.Linear):
        layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, init="zeros",
                          dtype=dtype)
    elif isinstance(module, t.Conv2d):
        if module.groups != 1 or _pair(module.dilation) != (1, 1) or module.padding_mode != "zeros":
            raise UnsupportedModule("fastnn's Conv2d has groups=1, dilation=1 and zero padding, got "
                                      f"groups={module.groups}, dilation={module.dilation}, "
                                      f"padding_mode={module.padding_mode!r}")
        padding = module.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if any(k % 2 == 0 for k in module.kernel_size):
                raise UnsupportedModule(f"padding='same' with the even kernel_size {module.kernel_size} pads "
                                          "unevenly; fastnn's Conv2d pads both sides alike")
            padding = tuple(k // 2 for k in module.kernel_size)
        layer = nn.Conv2d(module.in_channels, module.out_channels, tuple(module.kernel_size), stride=
                          tuple(module.stride), padding=_pair(padding), bias=module.bias is not None, init="zeros",
                          dtype=dtype)
    elif isinstance(module, (t.BatchNorm1d, t.BatchNorm2d)):
        if module.running_mean is None:
            raise UnsupportedModule("track_running_stats=False normalizes with batch statistics in eval too; "
                                      "fastnn's BatchNorm keeps running statistics")
        if module.momentum is None:
            raise UnsupportedModule("momentum=None (a cumulative average) has no fastnn form: set a momentum")
        cls = nn.BatchNorm1d if isinstance(module, t.BatchNorm1d) else nn.BatchNorm2d
        layer = cls(module.num_features, momentum=module.momentum, eps=module.eps, affine=module.affine,
                    dtype=dtype)
    elif isinstance(module, t.PReLU):
        layer = nn.PReLU(dtype=dtype, num_parameters=module.num_parameters)
    elif isinstance(module, t.LeakyReLU):
        layer = nn.LeakyReLU(module.negative_slope)
    elif isinstance(module, t.ELU):
        layer = nn.ELU(module.alpha)
    elif isinstance(module, t.GELU):
        layer = nn.GELU(module.approximate)
    elif isinstance(module, t.ReLU):
        layer = nn.ReLU()
    elif isinstance(module, t.SELU):
        layer = nn.SELU()
    elif isinstance(module, t.SiLU):
        layer = nn.Swish()
    elif isinstance(module, t.Sigmoid):
        layer = nn.Sigmoid()
    elif isinstance(module, t.Tanh):
        layer = nn.Tanh()
    elif isinstance(module, t.Identity):
        layer = nn.Identity()
    elif isinstance(module, t.Dropout):
        layer = nn.Dropout(module.p)
    elif isinstance(module, t.MaxPool2d):
        if (_pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) or module.ceil_mode
                or module.return_indices):
            raise UnsupportedModule("fastnn's MaxPool2d has no padding, dilation, ceil_mode or return_indices")
        layer = nn.MaxPool2d(_pair(module.kernel_size),
                             _pair(module.kernel_size if module.stride is None else module.stride))
    elif isinstance(module, t.AvgPool2d):
        if _AvgPool2d is None:
            raise UnsupportedModule("this fastnn has no AvgPool2d layer")
        if _pair(module.padding) != (0, 0) or module.ceil_mode or module.divisor_override is not None:
            raise UnsupportedModule("only AvgPool2d without padding, ceil_mode or divisor_override is converted")
        layer = _AvgPool2d(_pair(module.kernel_size),
                           _pair(module.kernel_size if module.stride is None else module.stride))
    elif isinstance(module, t.AdaptiveAvgPool2d):
        if _pair(module.output_size) != (1, 1):
            raise UnsupportedModule(f"only output_size=1 (global average pooling) is converted, got "
                                      f"{module.output_size}")
        if following is not None and not isinstance(following, t.Flatten):
            raise UnsupportedModule("fastnn's GlobalAvgPool2d returns (N, C), torch's AdaptiveAvgPool2d(1) "
                                      f"(N, C, 1, 1): it converts when a Flatten follows it, not a "
                                      f"{type(following).__name__}")
        layer = nn.GlobalAvgPool2d()
    elif isinstance(module, t.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedModule(f"only Flatten(start_dim=1, end_dim=-1) is converted, got "
                                      f"start_dim={module.start_dim}, end_dim={module.end_dim}")
        layer = nn.Flatten()
    elif any(True for _ in module.children()):
        raise UnsupportedModule(f"{type(module).__name__} is a container whose forward() may run its children in "
                                "any order: from_torch converts a torch.nn.Sequential (put the layers in one)")
    else:
        raise UnsupportedModule(f"{type(module).__name__} has no fastnn equivalent; from_torch converts "
                                f"{_SUPPORTED}")
    _load_into(layer, _groups(module.state_dict()))
    return layer


def _from_module(module):
    import torch     # the caller holds a torch module, so torch is installed
    dtype = _float_dtype(module)
    flat = list(_flatten_torch(torch, module, ""))
    layers = []
    for i, (path, child) in enumerate(flat):
        following = flat[i + 1][1] if i + 1 < len(flat) else None
        try:
            layers.append(_convert(torch, child, dtype, following))
        except (ValueError, TypeError, NotImplementedError) as exc:   # UnsupportedModule too
            raise type(exc)(f"from_torch: module {path} ({type(child).__name__}): {exc}") from exc
    return nn.Sequential(*layers).train(module.training)


def from_torch(module_or_state_dict, model=None):
    """A fastnn ``Sequential`` with the weights (and BatchNorm running
    statistics) of a PyTorch model. Takes:

    - a ``torch.nn.Sequential`` (nested ones flattened) of the modules in the
      module docstring's table: the equivalent fastnn model, in the torch
      model's train/eval mode, float64 if its weights are, float32 otherwise.
      Any other module raises UnsupportedModule (a NotImplementedError and a
      ValueError) naming it and its position
      (``from_torch: module 3 (Softmax): ...``); so does a torch module that is
      not a Sequential (its forward() could run its children in any order);
    - a state_dict: a mapping from torch's key names to torch tensors or NumPy
      arrays (``{k: v.numpy() for k, v in sd.items()}``, an ``np.load``-ed
      .npz), or the path of an .npz of them. torch is not needed. With
      ``model=`` (a fastnn model built to match the torch one, e.g. with
      ``Linear(..., activation="relu")`` where torch has Linear + ReLU) the
      entries are loaded into ``model``'s layers that have weights, in
      order, shapes checked (Linear weights transposed from torch's (out, in)),
      and ``model`` is returned. Without ``model=`` the architecture is
      inferred when a state_dict determines it: the keys of one flat
      nn.Sequential with no index skipped, made of Linear, BatchNorm (1d;
      torch's default eps 1e-5 and momentum 0.1, which a state_dict does not
      hold) and PReLU layers. Otherwise a ValueError asks for ``model=``.

    ``model=`` also works with a torch module (its state_dict is used)."""
    obj = module_or_state_dict
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a fastnn Module built to match the torch model, got {type(model).__name__}")
    if _is_torch_module(obj):
        if model is None:
            return _from_module(obj)
        obj = obj.state_dict()
    elif isinstance(obj, (str, os.PathLike)):
        obj = load_npz(obj, what="an .npz of a state_dict (name -> array)")
    if not (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        raise TypeError(f"module_or_state_dict must be a torch.nn.Sequential, a state_dict (a mapping of names to "
                        f"tensors or arrays) or the path of an .npz, got {type(obj).__name__}")
    groups = _groups(obj)
    return _infer(groups) if model is None else _load_into(model, groups)


__all__ = ["from_torch", "to_torch_state_dict", "to_torch", "UnsupportedModule"]
