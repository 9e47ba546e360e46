"""The one dispatch table: (backend, op name) -> kernel.

Backends register their kernels here under the names of csrc/kernels.h, with
the argument order of the fastnn._C bindings. ``fastnn.ops`` looks every call
up here; layers and optimizers never branch on the backend.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

_TABLE: dict[tuple[str, str], object] = {}
_LOADED: list[str] = []
_FAILED: dict[str, str] = {}
_PREFERENCE = ("cpp", "numba")
_state = threading.local()
_default: str | None = None


def register(backend: str, op: str, fn) -> None:
    """Register ``fn`` as the kernel of ``op`` (a name such as ``"linear_act"``) on ``backend``
    (``"cpp"``, ``"numba"``, ``"cuda"``)."""
    _TABLE[(backend, op)] = fn


def mark_loaded(backend: str) -> None:
    """Record that ``backend`` loaded (it then appears in ``available()``)."""
    if backend not in _LOADED:
        _LOADED.append(backend)


def mark_failed(backend: str, reason: str) -> None:
    """Record why ``backend`` could not load (``failures()`` and ``fastnn doctor`` report it)."""
    _FAILED[backend] = reason


def failures() -> dict[str, str]:
    """Backends that failed to load, with the reason."""
    return dict(_FAILED)


def available() -> list[str]:
    """Backends usable in this process, the default first."""
    order = [b for b in _PREFERENCE if b in _LOADED] + [b for b in _LOADED if b not in _PREFERENCE]
    return order


def _resolve_default() -> str:
    global _default
    if _default is not None:
        return _default
    cpu = [b for b in available() if b != "cuda"]
    if not cpu:
        raise RuntimeError(f"no fastnn CPU backend could be loaded: {_FAILED}")
    want = os.environ.get("FASTNN_BACKEND", "").strip().lower()
    if want and want not in cpu:
        if want in _PREFERENCE:
            warnings.warn(
                f"FASTNN_BACKEND={want} is not available ({_FAILED.get(want, 'not loaded')}); "
                f"using {cpu[0]}", RuntimeWarning, stacklevel=3)
        else:
            raise ValueError(f"FASTNN_BACKEND must be one of {list(_PREFERENCE) + ['cuda']}, got {want!r}")
        want = ""
    _default = want or cpu[0]
    return _default


def current() -> str:
    """The CPU backend used for NumPy arrays in this thread ('cpp' or 'numba')."""
    return getattr(_state, "name", None) or _resolve_default()


def use(name: str) -> None:
    """Make ``name`` the CPU backend for the whole process."""
    global _default
    _check_name(name)
    _default = name
    _state.name = None


@contextlib.contextmanager
def using(name: str):
    """Use backend ``name`` inside a ``with`` block (this thread only)."""
    _check_name(name)
    previous = getattr(_state, "name", None)
    _state.name = name
    try:
        yield name
    finally:
        _state.name = previous


def _check_name(name: str) -> None:
    if name not in available():
        why = f" ({_FAILED[name]})" if name in _FAILED else ""
        raise ValueError(f"backend must be one of {available()}, got {name!r}{why}")


def lookup(op: str, backend: str | None = None):
    """The kernel ``op`` of ``backend`` (default: the current backend)."""
    name = backend or current()
    try:
        return _TABLE[(name, op)]
    except KeyError:
        raise NotImplementedError(f"op {op!r} has no kernel on backend {name!r}") from None


def ops_of(backend: str) -> list[str]:
    """The sorted names of the ops registered for ``backend``."""
    return sorted(op for (b, op) in _TABLE if b == backend)
