"""The layering contract of the fastnn package (DESIGN.md section 1), checked
from the source with ``ast``: every import of a fastnn module, at the top of a
file or inside a function, must point to the same or a lower layer; the
modules form no import cycle; and nothing is imported inside a function except
the optional dependencies.

    L0  _validate _random _io _comm _threads backend init
    L1  ops
    L2  nn
    L3  losses optim schedules data preprocessing augment callbacks
    L4  distributed
    L5  train
    L6  diagnostics search ensemble export interop bench_quick
    L7  the package, ``fastnn/__init__.py``: it re-exports every layer
    L8  cli __main__: the command line, a user of the public ``import fastnn as fnn``
        (DESIGN lists cli in L6; it reads the package facade, which imports
        nothing of it, so it sits above the package)

import-linter's ``layers`` contract is the field's tool for this
(``[importlinter:contract:layers] type = layers``, one line per layer, with
``exhaustive`` listing every module); fastnn keeps its dependencies few, so
this test is the contract and runs with the rest of the suite. A new module
must be given a layer here: an unmapped module fails the test.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fastnn"

LAYERS = [
    ["_validate", "_random", "_io", "_comm", "_threads", "backend", "init"],
    ["ops"],
    ["nn"],
    ["losses", "optim", "schedules", "data", "preprocessing", "augment", "callbacks"],
    ["distributed"],
    ["train"],
    ["diagnostics", "search", "ensemble", "export", "interop", "bench_quick"],
]
PACKAGE_LAYER = len(LAYERS)          # fastnn/__init__.py: re-exports every layer
ENTRY_POINTS = ["cli", "__main__"]   # above the package: the command line uses `import fastnn as fnn`

# Imported inside functions on purpose: optional dependencies, so `import fastnn`
# works without them.
OPTIONAL = {"cupy", "mpi4py", "matplotlib", "dask", "distributed", "torch", "onnx", "onnxruntime"}


def _module_name(path: pathlib.Path) -> str:
    parts = ["fastnn", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def layer_of(module: str) -> int:
    if module == "fastnn":
        return PACKAGE_LAYER
    top = module.split(".")[1]
    if top in ENTRY_POINTS:
        return PACKAGE_LAYER + 1
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} has no layer: add {top!r} to LAYERS in tests/test_layering.py "
                         "(and to DESIGN.md section 1)")


def _resolve(module: str, path: pathlib.Path, node: ast.ImportFrom | ast.Import):
    """[(imported name, is a fastnn module)] for one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, a.name == "fastnn" or a.name.startswith("fastnn.")) for a in node.names]
    if node.level == 0:
        base = node.module or ""
        if not (base == "fastnn" or base.startswith("fastnn.")):
            return [(base, False)]
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    out = []
    for alias in node.names:     # `from . import ops` imports the module fastnn.ops
        sub = f"{base}.{alias.name}"
        out.append((sub if sub in MODULES else base, True))
    return out


def _imports(module: str, path: pathlib.Path):
    """[(imported module, line, inside a function)] for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    nested.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for name, internal in _resolve(module, path, node):
                out.append((name, internal, node.lineno, id(node) in nested))
    return out


IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _graph() -> dict[str, set[str]]:
    graph = {m: set() for m in MODULES}
    for m, imports in IMPORTS.items():
        for name, internal, _, _ in imports:
            if internal and name != m:
                target = name
                while target not in MODULES:      # `import fastnn.x.y` of a name inside a module
                    target = target.rsplit(".", 1)[0]
                graph[m].add(target)
    return graph


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_no_module_imports_a_higher_layer():
    bad = []
    for m, targets in _graph().items():
        for t in sorted(targets):
            if layer_of(t) > layer_of(m):
                bad.append(f"{m} (L{layer_of(m)}) imports {t} (L{layer_of(t)})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = _graph()
    # Tarjan's strongly connected components: any component of 2+ modules is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles among fastnn modules: {cycles}"


def test_no_import_inside_a_function_except_optional_dependencies():
    bad = []
    for m, imports in IMPORTS.items():
        for name, internal, line, nested in imports:
            if nested and (internal or name.split(".")[0] not in OPTIONAL):
                bad.append(f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not bad, ("imports inside functions (move them to the top of the file; if that makes a cycle, "
                     "the layering is wrong):\n" + "\n".join(bad))


def test_the_check_sees_a_violation():
    """The contract is not vacuous: the resolver maps relative imports to the
    modules they name, and an import of a higher layer is caught."""
    def resolve(module, path, source):
        return _resolve(module, PACKAGE / path, ast.parse(source).body[0])

    assert resolve("fastnn.nn.layers", "nn/layers.py", "from ..train import Trainer") == [("fastnn.train", True)]
    assert resolve("fastnn.distributed", "distributed.py", "from . import _comm, nn") == [
        ("fastnn._comm", True), ("fastnn.nn", True)]
    assert resolve("fastnn.nn", "nn/__init__.py", "from .layers import Linear") == [("fastnn.nn.layers", True)]
    assert resolve("fastnn.ops", "ops.py", "import numpy as np") == [("numpy", False)]
    assert layer_of("fastnn.train") > layer_of("fastnn.nn.layers") > layer_of("fastnn._comm")
