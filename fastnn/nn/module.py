"""Module and Parameter: the building blocks of fastnn networks.

A Module has ``forward(x)`` and ``backward(dout)``; backward overwrites the
``.grad`` of each of its parameters and returns the gradient of its input.
Constructor arguments are recorded, so a model saves to one ``.npz`` (weights
plus a JSON description of the architecture) and ``fastnn.nn.load`` rebuilds it
without pickle.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os

import numpy as np

from .. import _validate as V
from .._io import NpzArchive, save_npz_atomic
from ..backend import cuda

_LAYER_CLASSES: dict[str, type] = {}


class Parameter:
    """A trainable array: ``.data`` and ``.grad`` of one shape, and a ``.name``.

    An optimizer may move ``.data``/``.grad`` into flat buffers; they then are
    views, and stay the way to read and write the parameter (write in place:
    ``p.data[...] = v``)."""

    __slots__ = ("data", "grad", "name", "trainable")

    def __init__(self, data, name: str = ""):
        self.data = data
        self.grad = np.zeros_like(data) if isinstance(data, np.ndarray) else V.array_module(data).zeros_like(data)
        self.name = name
        self.trainable = True

    @property
    def shape(self):
        """The shape of ``.data`` (tuple of int)."""
        return self.data.shape

    @property
    def dtype(self):
        """The dtype of ``.data`` (float32 or float64)."""
        return self.data.dtype

    @property
    def size(self):
        """The number of elements of ``.data``."""
        return self.data.size

    def __repr__(self):
        return f"Parameter({self.name!r}, shape={self.shape}, dtype={self.dtype})"


def _encode(value):
    if isinstance(value, Module):
        return {"__layer__": value.get_config()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return np.dtype(value).name
    if isinstance(value, np.generic):
        return value.item()
    if callable(value):
        return {"__callable__": getattr(value, "__qualname__", repr(value))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    raise TypeError(f"cannot save a layer argument of type {type(value).__name__}: {value!r}")


def _decode(value):
    if isinstance(value, dict) and "__layer__" in value:
        return from_config(value["__layer__"])
    if isinstance(value, dict) and "__callable__" in value:
        return None  # an initializer: the saved weights replace whatever it drew
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def from_config(config: dict) -> "Module":
    """Rebuild a module (untrained) from ``Module.get_config()``."""
    name = config.get("class")
    if name not in _LAYER_CLASSES:
        raise ValueError(f"unknown layer class {name!r} in saved config")
    cls = _LAYER_CLASSES[name]
    args = [_decode(a) for a in config.get("args", [])]
    kwargs = {k: _decode(v) for k, v in config.get("kwargs", {}).items()}
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k not in ("init", "rng")}
    return cls(*args, **kwargs)


def as_model_input(x, dtype=None, name: str = "x", device: str | None = None):
    """x as the kernels take it, copied at most once, on purpose, at the API
    boundary (``model(x)``, a top-level ``Sequential.forward``,
    ``Trainer.fit/evaluate/predict``): a float32/float64 NumPy array that is not
    C-contiguous (a column slice, a transpose, Fortran order) or whose dtype is
    not ``dtype`` (a float64 array into a float32 model) becomes a C-contiguous
    array of ``dtype``. Anything else (integers, lists, CuPy arrays) passes
    unchanged for the layers to accept or refuse. An array with no rows is a
    ValueError naming ``name``: there is nothing to compute, and the error beats
    an empty result or a warning from a mean over nothing further on.

    ``device`` ("cpu" or "cuda": where the model's parameters live, None:
    unknown) must be where x is: a NumPy batch for a model on cuda (or a CuPy
    batch for one on the CPU) is a TypeError saying how to move it; never a
    silent copy between host and GPU. A CuPy float array gets the same layout
    and dtype treatment as a NumPy one, on the GPU."""
    is_numpy = isinstance(x, np.ndarray) and not type(x).__module__.startswith("cupy")
    if device is not None and (hasattr(x, "__cuda_array_interface__") or is_numpy):
        here = "cpu" if is_numpy else "cuda"
        if here != device:
            move = "cupy.asarray(x)" if device == "cuda" else "x.get() (cupy to NumPy)"
            raise TypeError(f"{name} is a {type(x).__module__}.{type(x).__name__} on {here}, but the model's "
                            f"parameters are on {device}: move the batch with {move}, or the model with "
                            f"model.to({here!r}) (fastnn.Trainer moves batches to the model's device itself)")
    if not is_numpy:
        if not type(x).__module__.startswith("cupy") or x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
            return x
        xp = V.array_module(x)
    else:
        if x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8):
            return x
        xp = np
    if x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{name} has no rows (shape {tuple(x.shape)}): pass at least one sample")
    if dtype is not None and x.dtype != dtype:
        return xp.ascontiguousarray(x, dtype=dtype)
    return x if x.flags.c_contiguous else xp.ascontiguousarray(x)


def _keeps_frozen_stats(module) -> bool:
    """A frozen module with running statistics (BatchNorm: buffers running_mean
    and running_var), which ``train()`` leaves in eval mode."""
    return (module.__dict__.get("_frozen", False) and "running_mean" in module.__dict__.get("_buffers", {})
            and "running_var" in module._buffers)


class Module:
    """Base class of every layer and network."""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        _LAYER_CLASSES[cls.__name__] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kwargs):
            if "_config_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kwargs)
                pos, named = [], {}
                for pname, param in list(signature.parameters.items())[1:]:
                    if pname not in bound.arguments:
                        continue
                    if param.kind is param.VAR_POSITIONAL:
                        pos.extend(bound.arguments[pname])
                    elif param.kind is param.VAR_KEYWORD:
                        named.update(bound.arguments[pname])
                    else:
                        named[pname] = bound.arguments[pname]
                object.__setattr__(self, "_config_args", (pos, named))
            init(self, *args, **kwargs)

        cls.__init__ = recording_init

    def __init__(self):
        object.__setattr__(self, "_params", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "input_grad", True)
        object.__setattr__(self, "_frozen", False)     # set by freeze(): see train()
        # Set by a containing Sequential: outputs may live in buffers reused by the
        # next call (no allocation, no page faults in steady-state training).
        object.__setattr__(self, "reuse_buffers", False)
        object.__setattr__(self, "_bufs", {})

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if isinstance(value, Parameter):
            self._params[name] = value
            if not value.name:
                value.name = name
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def _buf(self, name: str, shape, dtype, always: bool = False):
        """A reusable output/scratch array, or None (ops then allocate) when this
        module's outputs must be fresh. `always` for scratch never returned."""
        if not (always or self.reuse_buffers):
            return None
        buf = self._bufs.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            # On the module's device (``to``): scratch for CuPy inputs lives on the GPU.
            xp = self.__dict__.get("_xp", np)
            buf = xp.empty(shape, dtype)
            self._bufs[name] = buf
        return buf

    def register_buffer(self, name: str, array, host: bool = False) -> None:
        """A non-trained array saved with the state (e.g. BatchNorm running_mean).
        ``host=True``: it stays a NumPy array when the module moves to cuda (a
        random stream's (seed, offset) that the host reads and the kernels take
        as scalars)."""
        self._buffers[name] = not host       # True: follows the module's device
        object.__setattr__(self, name, array)

    # --- the contract ------------------------------------------------------------
    def forward(self, x):
        """Compute the output of the module for a batch and save what ``backward``
        needs.

        Parameters
        ----------
        x : (N, ...) float32 or float64, C-contiguous
            A batch, e.g. ``(N, D)`` or ``(N, C, H, W)``, in the parameters' dtype
            (``module(x)`` converts other layouts and dtypes first).

        Returns
        -------
        array
            The output batch, ``(N, ...)``.
        """
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        """Backpropagate through the last ``forward``: write (overwrite) each
        parameter's ``.grad`` and return the gradient with respect to the input.

        Parameters
        ----------
        dout : array, the shape of the last output
            Gradient of the loss with respect to this module's output.

        Returns
        -------
        array, the shape of the last input
            Gradient of the loss with respect to ``x``.
        """
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        """``forward`` behind the model's front door (see ``as_model_input``):
        a strided, Fortran-ordered or other-precision float array is copied once
        into the C-contiguous layout and dtype of the parameters; no rows is a
        ValueError; a batch on another device than the parameters is a
        TypeError. ``forward`` itself (and every op) refuses such arrays."""
        return self.forward(as_model_input(x, self.input_dtype(), device=self.device()))

    def input_dtype(self):
        """The dtype of the first parameter (what the kernels need x in), or None
        for a module without parameters."""
        for _, p in self.named_parameters():
            return p.data.dtype
        return None

    def device(self):
        """Where the parameters live: "cpu" (NumPy) or "cuda" (CuPy, after
        ``to("cuda")``); for a module without parameters, where ``to`` last moved
        it (None if never)."""
        for _, p in self.named_parameters():
            return cuda.device_of(p.data)
        return self.__dict__.get("_device")

    # --- structure ---------------------------------------------------------------
    def children(self):
        """The direct submodules, in order (a list)."""
        return list(self._modules.values())

    def modules(self):
        """Iterate over this module and every submodule, depth first (self first)."""
        yield self
        for child in self._modules.values():
            yield from child.modules()

    def named_parameters(self, prefix: str = ""):
        """Iterate over ``(name, Parameter)`` pairs of this module and its
        submodules, names dotted by position (``"0.weight"``, ``"2.bias"``).

        Parameters
        ----------
        prefix : str
            Prepended to every name.
        """
        for name, p in self._params.items():
            yield prefix + name, p
        for cname, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}{cname}.")

    def parameters(self) -> list[Parameter]:
        """Every Parameter of the module and its submodules, each once, in order
        (frozen ones included: optimizers skip those with ``trainable = False``).
        Pass it to an optimizer: ``fnn.optim.Adam(model.parameters(), lr=1e-3)``.
        """
        seen, out = set(), []
        for _, p in self.named_parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    def named_buffers(self, prefix: str = ""):
        """Iterate over ``(name, array)`` pairs of the non-trained state (e.g.
        BatchNorm's ``running_mean`` and ``running_var``), names as in
        ``named_parameters``.
        """
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for cname, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}{cname}.")

    def train(self, mode: bool = True):
        """Training mode for this module and every submodule (``train(False)`` is the
        eval mode), except that a frozen BatchNorm (see ``freeze``) stays in eval
        mode: it normalizes with, and keeps, its running statistics."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode) and not _keeps_frozen_stats(m))
        return self

    def eval(self):
        """Evaluation mode (``train(False)``): Dropout and DropConnect become the
        identity (no rescaling needed: they are inverted), BatchNorm uses its
        running statistics, stochastic depth keeps every block. Returns self.
        """
        return self.train(False)

    def freeze(self):
        """Stop updating this module (transfer learning): every parameter gets
        ``trainable = False`` (untouched by every optimizer path), and every
        BatchNorm inside switches to eval mode and stays there through
        ``train()`` and ``Trainer.fit``, so its pretrained running_mean and
        running_var are used and never overwritten.

        This is the pitfall PyTorch users hit: there, setting
        ``requires_grad=False`` leaves a BatchNorm in training mode, so
        ``model.train()`` makes it normalize with the new data's batch
        statistics and overwrite its running statistics (Keras' ``trainable =
        False`` keeps it in inference mode, as fastnn does). ``unfreeze()``
        undoes both; the BatchNorm then follows the module's train/eval mode again."""
        for p in self.parameters():
            p.trainable = False
        for m in self.modules():
            object.__setattr__(m, "_frozen", True)
            if _keeps_frozen_stats(m):
                object.__setattr__(m, "training", False)
        return self

    def unfreeze(self):
        """Undo ``freeze()``: parameters trainable again, BatchNorm layers back
        in this module's mode (and following its train/eval mode)."""
        for p in self.parameters():
            p.trainable = True
        for m in self.modules():
            if _keeps_frozen_stats(m):
                object.__setattr__(m, "training", self.training)
            object.__setattr__(m, "_frozen", False)
        return self

    # --- flags a container sets on its children ----------------------------------
    def set_input_grad(self, flag: bool) -> None:
        """Whether backward computes the gradient of this module's input (a
        model's first layer needs none: its input is the data)."""
        object.__setattr__(self, "input_grad", bool(flag))

    def set_reuse_buffers(self, flag: bool) -> None:
        """Whether outputs may live in buffers reused by the next call (set by a
        containing Sequential; a standalone module hands out fresh arrays)."""
        object.__setattr__(self, "reuse_buffers", bool(flag))

    # --- walking the model step by step -------------------------------------------
    def walk(self, prefix: str = "") -> list:
        """The model as a flat list of ``(label, layer, activation)``: each kernel
        call of the forward pass, ``activation`` the activation layer fused into
        ``layer`` (or None). A plain module is one opaque step; Sequential lists
        its fused steps, nested Sequentials flattened (labels "2:Linear",
        "0-1:Linear+ReLU", "3.0:Conv2d")."""
        return [(f"{prefix}{type(self).__name__}", self, None)]

    def forward_step(self, x, activation=None):
        """Forward of one ``walk()`` step: this module alone, or with the
        activation layer ``activation`` fused into its kernel."""
        if activation is None:
            return self.forward(x)
        return self.forward_fused(x, activation.name, activation.alpha_value)

    def rng_states(self) -> list:
        """[(module, its random-stream state)] for every stochastic module
        (Dropout, DropConnect, FractionalMaxPool2d, Residual: ``stochastic``)."""
        return [(m, m.get_rng_state()) for m in self.modules() if getattr(m, "stochastic", False)]

    @staticmethod
    def set_rng_states(states) -> None:
        """Restore what ``rng_states()`` returned."""
        for m, state in states:
            m.set_rng_state(state)

    @contextlib.contextmanager
    def preserving_state(self, training: bool | None = None, buffers: bool = False):
        """Run in train (True) or eval (False) mode (None: as it is) and leave the
        model exactly as found: every module's mode, the random streams of the
        stochastic layers and, with ``buffers=True`` (or when training, where
        BatchNorm updates them), the parameters and buffers (``state_dict``)."""
        modes = [(m, m.training) for m in self.modules()]
        state = self.state_dict() if (buffers or training) else None
        streams = self.rng_states()
        if training is not None:
            self.train(training)
        try:
            yield self
        finally:
            for m, mode in modes:
                m.training = mode
            if state is not None:
                self.load_state_dict(state)
            self.set_rng_states(streams)

    def to(self, device: str):
        """Move the model to ``device``: ``"cpu"`` (NumPy arrays) or ``"cuda"``
        (CuPy arrays on CuPy's current device, copied on its current stream;
        needs the CUDA build, CuPy and a GPU, else a RuntimeError saying which is
        missing). Moves every parameter's ``.data`` and ``.grad`` and every
        buffer (BatchNorm's running statistics), except the host-side random
        streams (Dropout's (seed, offset), which the kernels take as scalars);
        the layers' reusable scratch buffers are dropped and reallocated on the
        new device. Returns self.

        Move the model BEFORE building its optimizer: an optimizer holds the
        parameters in flat buffers on their device at construction, and a later
        move leaves it updating the old copies (as in PyTorch)."""
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            if cuda.reason is not None:
                raise RuntimeError(f"cannot move the model to cuda: {cuda.reason}")
            self._check_runs_on_cuda()
            move = cuda.to_device
        else:
            move = cuda.to_host
        xp = np if device == "cpu" else cuda.cp
        for m in self.modules():
            for p in m._params.values():
                if p is not None and cuda.device_of(p.data) != device:
                    p.data, p.grad = move(p.data), move(p.grad)
            for name, follows in m._buffers.items():
                value = getattr(m, name)
                if follows and cuda.device_of(value) != device:
                    object.__setattr__(m, name, move(value))
            m._bufs.clear()
            object.__setattr__(m, "_xp", xp)
            object.__setattr__(m, "_device", device)
        return self

    def _check_runs_on_cuda(self) -> None:
        """NotImplementedError naming the first layer without a GPU path (its
        class sets ``cuda_support = False``): never a silent host computation."""
        for m in self.modules():
            if not getattr(m, "cuda_support", True):
                raise NotImplementedError(f"{type(m).__name__} has no CUDA implementation: "
                                          f"{getattr(m, 'cuda_unsupported_reason', '')}".rstrip(": "))

    # --- state -------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A copy of every parameter and buffer, ``{name: ndarray}`` (names as in
        ``named_parameters``), for ``load_state_dict`` or ``numpy.savez``.
        """
        state = {name: cuda.to_host(p.data, copy=True) for name, p in self.named_parameters()}
        state.update({name: cuda.to_host(b, copy=True) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the existing parameters (views stay views)."""
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"state_dict must be a mapping of names to arrays, got {type(state).__name__}")
        own = dict(self.named_parameters())
        bufs = dict(self.named_buffers())
        expected = set(own) | set(bufs)
        if strict:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or extra:
                raise ValueError(f"state_dict keys do not match the model: missing {missing}, unexpected {extra}")
        for name, value in state.items():
            if name not in expected:
                continue
            target = own[name].data if name in own else bufs[name]
            value = cuda.to_host(value)
            if value.dtype.kind not in "biuf":
                raise TypeError(f"state_dict[{name!r}] must hold numbers, got dtype {value.dtype}")
            if value.shape != target.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, the model expects {target.shape}")
            if isinstance(target, np.ndarray):
                np.copyto(target, value.astype(target.dtype, copy=False))
            else:   # a parameter or buffer on the GPU: copied in place (views into flat buffers stay views)
                xp = V.array_module(target)
                xp.copyto(target, xp.asarray(value.astype(target.dtype, copy=False)))

    def get_config(self) -> dict:
        """The architecture as plain data: ``{"class": name, "args": [...],
        "kwargs": {...}}`` with the constructor's arguments (nested layers
        encoded the same way). ``fastnn.nn.from_config`` rebuilds the module.
        """
        pos, named = self.__dict__.get("_config_args", ([], {}))
        return {"class": type(self).__name__, "args": [_encode(a) for a in pos],
                "kwargs": {k: _encode(v) for k, v in named.items()}}

    def save(self, path) -> None:
        """Weights, buffers and architecture to one .npz, written atomically
        (``fastnn._io.save_npz_atomic``: no pickle, mode 0o666 minus the umask;
        a missing folder is a FileNotFoundError naming it)."""
        arrays = {f"state/{k}": v for k, v in self.state_dict().items()}
        arrays["config"] = np.array(json.dumps(self.get_config()))
        save_npz_atomic(path, arrays)

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.get("_config_args", ([], {}))[1].items())
        if not self._modules:
            return f"{type(self).__name__}({inner})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


_MODEL_FILE = "a fastnn model file (.npz written by Module.save)"


def load(path, max_bytes=None) -> Module:
    """A model saved by ``Module.save``: architecture and weights, no pickle.

    A missing file is a FileNotFoundError; a file that is not a model file is a
    ValueError "<path> is not a fastnn model file (.npz written by Module.save):
    <reason>".

    Untrusted files: the architecture (the 'config' entry, at most 64 MiB) is
    read first, and every weight's declared shape is checked against it before
    any weight is read, so a small file declaring a huge weight costs nothing;
    the arrays may declare at most ``max_bytes`` in all (default
    ``fastnn._io.MAX_NPZ_BYTES`` = 2**32 bytes, 4 GiB; pass ``max_bytes=`` for
    a larger model) and none is inflated past its declared size."""
    path = os.fspath(path)
    with NpzArchive(path, _MODEL_FILE, max_bytes) as archive:
        if "config" not in archive.shapes:
            archive.fail(f"it has no 'config' entry (entries: {sorted(archive.shapes)[:8]})")
        text = str(archive.read("config", max_bytes=_MAX_CONFIG_BYTES))
        try:
            config = json.loads(text)
        except ValueError as exc:
            archive.fail(f"its 'config' entry is not valid JSON ({exc})")
        try:
            model = from_config(config)
            archive.check_shapes("state/", _state_shapes(model))
        except (ValueError, TypeError) as exc:   # name the file, keep the type
            raise type(exc)(f"model file {path}: {exc}") from exc
        state = {k[len("state/"):]: archive.read(k) for k in archive.shapes if k.startswith("state/")}
    try:
        model.load_state_dict(state)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"model file {path}: {exc}") from exc
    return model


_MAX_CONFIG_BYTES = 64 << 20


def _state_shapes(model: Module) -> dict:
    """{name: shape} of what ``model.state_dict()`` holds, without copying it."""
    shapes = {name: tuple(p.data.shape) for name, p in model.named_parameters()}
    shapes.update({name: tuple(b.shape) for name, b in model.named_buffers()})
    return shapes
