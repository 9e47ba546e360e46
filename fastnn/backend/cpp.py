"""The compiled C++ backend: registers fastnn._C's kernels in the dispatch table.

When fastnn._C cannot be imported, ``LOAD_PROBLEM`` says why in words a user
can act on (and ``registry.failures()["cpp"]`` holds the same text):

- imported from a source tree (a clone's ``fastnn/`` folder next to its
  pyproject.toml/csrc, with no compiled ``_C`` in the package): run from
  another folder or install first;
- an installed package whose ``_C`` fails to load: the original ImportError
  and how to reinstall.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys

from . import registry

OPS = (
    "gemm", "linear_act_forward", "linear_act_backward", "act_forward", "act_backward",
    "softmax_xent_forward", "softmax_xent_backward", "optim_step",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_stats", "batchnorm_gather_stats", "batchnorm_elemt",
    "batchnorm_backward_reduce", "batchnorm_backward_elemt", "dropout", "max_norm",
    "conv2d_forward", "conv2d_backward",
    "max_pool2d_forward", "max_pool2d_regions_forward", "max_pool2d_backward",
    "avg_pool2d_forward", "avg_pool2d_backward", "global_avg_pool2d_forward", "global_avg_pool2d_backward",
)

_PACKAGE = __name__.rsplit(".", 2)[0]          # "fastnn"
LOAD_PROBLEM: str | None = None
STALE_OPS: list[str] = []                      # OPS missing from a stale fastnn._C (see below)


def _numba_twin(op: str):
    def run(*args):
        return registry.lookup(op, "numba")(*args)
    run.__name__ = op
    return run


def _extension_files(folders) -> list[str]:
    """Paths of every ``_C.*`` compiled-extension-looking file in ``folders``."""
    found = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        found += [os.path.join(folder, n) for n in sorted(names)
                  if n.startswith("_C.") and n.endswith((".so", ".pyd", ".dylib"))]
    return found


def _diagnose(exc: ImportError) -> str:
    """Why fastnn._C did not import, and what to do about it."""
    package = sys.modules.get(_PACKAGE)
    init_file = getattr(package, "__file__", None) or os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "__init__.py")
    package_dir = os.path.dirname(os.path.abspath(init_file))
    folders = list(getattr(package, "__path__", None) or [package_dir])
    root = os.path.dirname(package_dir)
    is_source_tree = (os.path.isfile(os.path.join(root, "pyproject.toml"))
                      or os.path.isdir(os.path.join(root, "csrc")))
    extensions = _extension_files(folders)
    if is_source_tree and not extensions:
        return (f"fastnn is being imported from its source tree ({package_dir}), which has no compiled "
                "extension; run from another folder or `pip install .` / `pip install -e .` first")
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    hint = ""
    loadable = {"_C" + suffix for suffix in suffixes}
    if extensions and not any(os.path.basename(p) in loadable for p in extensions):
        hint = (f"; the extension files found ({', '.join(os.path.basename(p) for p in extensions)}) "
                f"were built for another Python (this one loads {suffixes[0]})")
    elif not extensions:
        hint = f"; no _C extension file in {', '.join(folders)}"
    return (f"the compiled extension fastnn._C failed to load ({type(exc).__name__}: {exc}){hint}; "
            'reinstall it with `pip install --force-reinstall --no-cache-dir "fastnn-train"` '
            "(from a clone: `pip install .`)")


try:
    # import_module, not "from .. import _C": for a missing file the latter
    # reports "partially initialized module ... (most likely due to a circular
    # import)", which sends users looking for a cycle that is not there.
    _C = importlib.import_module(f"{_PACKAGE}._C")
except ImportError as exc:  # the extension was not built or cannot load here
    _C = None
    LOAD_PROBLEM = _diagnose(exc)
    registry.mark_failed("cpp", LOAD_PROBLEM)
else:
    for _op in OPS:
        if hasattr(_C, _op):
            registry.register("cpp", _op, getattr(_C, _op))
        else:
            # An extension compiled from older sources (an editable install not
            # yet rebuilt after a kernel was added) lacks the newest kernels:
            # they run on their Numba twins until `pip install -e .` rebuilds it.
            STALE_OPS.append(_op)
            registry.register("cpp", _op, _numba_twin(_op))
    registry.mark_loaded("cpp")
