"""Every public name has a real docstring (help() and the API reference are
built from them), and no docstring points at internal documents."""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import fastnn

# Kernel mirrors of the compiled extension: one function per kernel, documented
# in their package; not part of the user-facing API.
SKIP_PREFIXES = ("fastnn.backend.numba",)
MIN_CHARS = 20
FORBIDDEN = re.compile(r"DESIGN\.md|\bissue\b", re.IGNORECASE)


def public_modules() -> list[str]:
    names = ["fastnn"]
    for info in pkgutil.walk_packages(fastnn.__path__, "fastnn."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts[1:]) or info.name.startswith(SKIP_PREFIXES):
            continue
        names.append(info.name)
    return names


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items()
            if not n.startswith("_") and (inspect.isclass(o) or inspect.isfunction(o))
            and getattr(o, "__module__", None) == module.__name__]


def members(cls):
    """(name, function) for each public method or property of cls, inherited ones included."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if isinstance(attr, property):
            attr = attr.fget
        if inspect.isfunction(attr):
            yield name, attr


def collect():
    seen, items = set(), []
    for mod_name in public_modules():
        module = importlib.import_module(mod_name)
        items.append((mod_name, module))
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            items.append((f"{mod_name}.{name}", obj))
            if inspect.isclass(obj):
                for mname, fn in members(obj):
                    if id(fn) not in seen:
                        seen.add(id(fn))
                        items.append((f"{mod_name}.{name}.{mname}", fn))
    return items


ITEMS = collect()


def test_the_walk_reaches_the_api():
    names = {n for n, _ in ITEMS}
    for expected in ("fastnn.Trainer", "fastnn.Trainer.fit", "fastnn.optim.Adam", "fastnn.nn.Dropout.forward",
                     "fastnn.init.xavier_normal", "fastnn.diagnostics.activation_stats",
                     "fastnn.nn.BatchNorm1d.forward", "fastnn.search.random_search"):
        assert expected in names, f"{expected} not reached by the public-API walk"
    assert len(ITEMS) > 250


def test_every_public_callable_has_a_docstring():
    missing = [name for name, obj in ITEMS if len((inspect.getdoc(obj) or "").strip()) < MIN_CHARS]
    assert not missing, f"{len(missing)} public names without a docstring: {missing}"


def test_overrides_document_themselves():
    # An override inherits its parent's docstring in help(); the ones that change
    # what the call does must say so themselves.
    own = [name for name, obj in ITEMS if inspect.isfunction(obj) and not (obj.__doc__ or "").strip()]
    assert not own, f"{len(own)} public functions without their own docstring: {own}"


def test_docstrings_do_not_point_at_internal_documents():
    bad = [name for name, obj in ITEMS if FORBIDDEN.search(inspect.getdoc(obj) or "")]
    assert not bad, f"docstrings mention DESIGN.md or an issue: {bad}"


@pytest.mark.parametrize("name, phrase", [
    ("fastnn.nn.Dropout", "probability"),               # p is the drop probability
    ("fastnn.optim.SGD", "2 * lambda"),                 # weight_decay vs the notes' L2 term
    ("fastnn.optim.Adam", "max_norm"),
    ("fastnn.optim.Adam", "clip_grad_norm"),
    ("fastnn.optim.Adam", "l1"),
    ("fastnn.init.xavier_normal", 'mode="fan_in"'),     # fan-average unless fan_in
    ("fastnn.Trainer.fit", "batch_size"),
])
def test_lecture_conventions_are_stated(name, phrase):
    obj = dict(ITEMS)[name]
    assert phrase in inspect.getdoc(obj), f"{name}'s docstring should mention {phrase!r}"
