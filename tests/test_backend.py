import ast
import os
import subprocess
import sys

import pytest

import fastnn as fnn
from fastnn.backend import codes, cpp


def test_available_and_switching():
    avail = fnn.backend.available()
    assert "numba" in avail and "cpp" in avail, fnn.backend.failures()
    start = fnn.backend.current()
    with fnn.backend.using("numba"):
        assert fnn.backend.current() == "numba"
    assert fnn.backend.current() == start
    with pytest.raises(ValueError, match="backend must be one of"):
        fnn.backend.use("tpu")


def test_every_copy_of_the_names_tables_matches_the_extension():
    """The names live once in csrc (X-macros: FASTNN_ACTIVATIONS,
    FASTNN_OPTIM_RULES, FASTNN_OPTIM_HYPER, FASTNN_CPU_KERNELS); _C exports
    them, and every Python copy (needed when _C is missing) must agree."""
    assert dict(cpp._C.ACTIVATIONS) == codes.ACT_CODE
    assert tuple(cpp._C.ACTIVATIONS) == codes.ACTIVATIONS
    assert set(cpp._C.SAVES_PREACTIVATION) == set(codes.SAVES_PREACTIVATION)
    assert dict(cpp._C.RULES) == codes.RULE_CODE
    assert tuple(cpp._C.HYPER_FIELDS) == codes.HYPER_FIELDS
    # stream_triad is the benchmarks' bandwidth probe, not an op of the registry.
    assert set(cpp._C.KERNELS) - {"stream_triad"} == set(cpp.OPS)


def test_every_cpp_kernel_has_a_numba_twin():
    from fastnn.backend import registry
    assert registry.ops_of("cpp") == registry.ops_of("numba")


def test_env_var_selects_backend():
    env = dict(os.environ, FASTNN_BACKEND="numba")
    out = subprocess.run([sys.executable, "-c", "import fastnn; print(fnn.backend.current())".replace("fnn", "fastnn")],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "numba", out.stderr


def test_missing_extension_falls_back_to_numba_with_one_warning(tmp_path):
    # Shadow fastnn._C with a module that fails to import.
    code = (
        "import sys, warnings, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'fastnn._C': raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastnn, numpy as np\n"
        "print(fastnn.backend.available(), fastnn.backend.current(),\n"
        "      len([x for x in w if 'Numba' in str(x.message)]))\n"
        "y, _ = fastnn.ops.linear_act(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), None, 'relu')\n"
        "print(float(y.sum()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "['numba'] numba 1" and lines[1] == "24.0"


def test_threads():
    n = fnn.get_num_threads()
    fnn.set_num_threads(1)
    assert fnn.get_num_threads() == 1
    fnn.set_num_threads(n)
    assert fnn.get_num_threads() == n
    with pytest.raises(ValueError, match="n must be"):
        fnn.set_num_threads(0)


def test_forced_isa_is_reported():
    isa = cpp._C.cpu_isa()
    assert cpp._C.set_cpu_isa("generic") and cpp._C.cpu_isa() == "generic"
    assert not cpp._C.set_cpu_isa("sse9")
    cpp._C.set_cpu_isa(isa)


def test_cuda_backend_reports_why_it_is_unavailable():
    from fastnn.backend import cuda
    if cuda.reason is None:
        assert "cuda" in fnn.backend.available()
    else:
        assert "cuda" not in fnn.backend.available()
        with pytest.raises(RuntimeError, match="cuda"):
            fnn.nn.Linear(2, 2).to("cuda")


def test_the_type_stubs_name_everything_the_extension_exports():
    stub = os.path.join(os.path.dirname(fnn.__file__), "_C.pyi")
    with open(stub, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    named = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    named |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    exported = {k for k in dir(cpp._C) if not k.startswith("__")}
    assert named == exported


@pytest.mark.parametrize("backend_env,want", [(None, "100000"), ("numba", "10000"), ("cpp", "100000")])
def test_openmp_spin_count_follows_the_starting_backend(backend_env, want):
    # The C++ kernels keep a long OpenMP spin between back-to-back regions; the
    # Numba backend, which alternates its regions with NumPy's BLAS, a short one.
    # Checked in a fresh process: libgomp reads the variable when it loads.
    if backend_env == "cpp" and cpp._C is None:
        pytest.skip("the compiled extension is not built: FASTNN_BACKEND=cpp cannot start")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "FASTNN_BACKEND")}
    if backend_env:
        env["FASTNN_BACKEND"] = backend_env
    code = "import os, fastnn; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == want


def test_openmp_spin_count_set_by_the_user_wins():
    env = dict(os.environ, GOMP_SPINCOUNT="1234", FASTNN_BACKEND="numba")
    code = "import os, fastnn; print(os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1234"
