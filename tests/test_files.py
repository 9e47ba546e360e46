"""Files (issue 16): one atomic, pickle-free .npz path (fastnn._io) for models
and checkpoints; messages that name the file and never suggest allow_pickle;
FileNotFoundError for a missing file or folder; modes that follow the umask;
and an honest message when fastnn._C cannot be imported."""
from __future__ import annotations

import importlib.machinery
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastnn as fnn
from fastnn import _io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
    fnn.manual_seed(0)
    return fnn.nn.Sequential(fnn.nn.Linear(6, 5), fnn.nn.ReLU(), fnn.nn.Linear(5, 3))


def _trainer():
    model = _model()
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters(), lr=0.1), seed=0)


def _open_fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None


# --- one place for npz I/O ----------------------------------------------------------------

def test_save_npz_atomic_and_load_npz_round_trip_and_close_the_file(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {"a/b": rng.standard_normal((3, 4)).astype(np.float32), "n": np.arange(5), "s": np.array("text")}
    path = tmp_path / "x.npz"
    before = _open_fds()
    _io.save_npz_atomic(path, arrays)
    out = _io.load_npz(path)
    assert sorted(out) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k], v)
        assert out[k].dtype == v.dtype
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]      # no temporary left behind
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match="bad.npz"):
        _io.load_npz(tmp_path / "bad.npz")
    if before is not None:
        assert _open_fds() == before                                  # every handle closed, even on error


def test_object_arrays_are_never_written(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle=False"):
        _io.save_npz_atomic(tmp_path / "o.npz", {"o": np.array([{"a": 1}], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_every_npz_writer_and_reader_goes_through_io():
    """No np.savez / np.load / mkstemp outside fastnn/_io.py."""
    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "fastnn")):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path.endswith(os.path.join("fastnn", "_io.py")):
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
            offenders += [f"{path}: {w}" for w in ("np.savez(", "np.savez_compressed(", "np.load(", "mkstemp(")
                          if w in text]
    assert offenders == []


# --- load messages --------------------------------------------------------------------------

@pytest.mark.parametrize("content, reason", [
    (b"this is not a model", "not a zip archive"),
    (b"", "empty"),
    (b"\x93NUMPY\x01\x00" + bytes(100), "single .npy array"),
    (b"PK\x03\x04" + bytes(60), ""),
])
def test_load_of_a_garbage_file_names_it_and_never_suggests_pickle(tmp_path, content, reason):
    path = tmp_path / "garbage.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        fnn.nn.load(path)
    msg = str(info.value)
    assert msg.startswith(f"{path} is not a fastnn model file (.npz written by Module.save): "), msg
    assert reason in msg
    assert "allow_pickle" not in msg and "pickle" not in msg.lower()


def test_load_of_a_truncated_model_names_it(tmp_path):
    path = tmp_path / "m.npz"
    _model().save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="is not a fastnn model file") as info:
        fnn.nn.load(path)
    assert str(path) in str(info.value) and "allow_pickle" not in str(info.value)


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    path = tmp_path / "nowhere" / "m.npz"
    with pytest.raises(FileNotFoundError, match="m.npz") as info:
        fnn.nn.load(path)
    assert info.value.filename == str(path)
    with pytest.raises(FileNotFoundError, match="ckpt.npz"):
        _trainer().load_checkpoint(tmp_path / "ckpt.npz")


def test_pickle_bearing_npz_is_refused_naming_the_file(tmp_path):
    arrays = {f"state/{k}": v for k, v in _model().state_dict().items()}
    arrays["config"] = np.array([{"class": "Linear"}], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as info:
        fnn.nn.load(path)
    msg = str(info.value)
    assert str(path) in msg and "entry 'config' holds pickled Python objects" in msg
    assert "allow_pickle" not in msg


def test_checkpoint_messages_name_the_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a fastnn trainer checkpoint") as info:
        _trainer().load_checkpoint(bad)
    assert str(bad) in str(info.value) and "allow_pickle" not in str(info.value)
    model_file = tmp_path / "m.npz"
    _model().save(model_file)
    with pytest.raises(ValueError, match="fastnn.nn.load"):
        _trainer().load_checkpoint(model_file)


# --- saving -----------------------------------------------------------------------------------

def test_saving_into_a_missing_folder_names_the_folder(tmp_path):
    folder = tmp_path / "no" / "such"
    path = folder / "m.npz"
    for save in (_model().save, _trainer().save_checkpoint):
        with pytest.raises(FileNotFoundError) as info:
            save(path)
        assert str(info.value) == f"cannot save to {path}: folder {folder} does not exist"
        assert ".fastnn-" not in str(info.value)
    assert not (tmp_path / "no").exists()


def test_saving_onto_a_folder_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        _model().save(tmp_path)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert _io._current_umask() == umask
        trainer = _trainer()
        trainer.model.save(tmp_path / "m.npz")
        trainer.save_checkpoint(tmp_path / "c.npz")
        X = np.random.default_rng(0).standard_normal((20, 6)).astype(np.float32)
        y = np.arange(20) % 3
        best = fnn.BestCheckpoint(tmp_path / "best.npz", monitor="loss")
        trainer.callbacks.append(best)
        trainer.fit(X, y, epochs=1, batch_size=10, progress=False)
        np.savez(tmp_path / "reference.npz", a=np.zeros(2))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"m.npz": mode, "c.npz": mode, "best.npz": mode, "reference.npz": mode}


# --- the compiled extension cannot be imported -----------------------------------------------

# The dev venv maps fastnn to the clone through an editable-install finder;
# drop it so the copied package is the one imported (a plain install has none).
_IMPORT = textwrap.dedent("""
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
    import fastnn
    assert fastnn.__file__.startswith({root!r}), fastnn.__file__
    print("BACKENDS", fastnn.backend.available())
""")


def _copy_package(dest):
    shutil.copytree(os.path.join(REPO, "fastnn"), os.path.join(dest, "fastnn"),
                    ignore=shutil.ignore_patterns("_C*.so", "_C*.pyd", "_cuda*", "__pycache__"))


def _import_in(cwd):
    env = {k: v for k, v in os.environ.items() if k not in ("FASTNN_BACKEND", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-W", "default", "-c", _IMPORT.format(root=str(cwd))], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def needs_numba():
    if "numba" not in fnn.backend.available():
        pytest.skip("the fallback under test is the Numba backend")


def test_import_from_a_source_tree_says_so_and_falls_back(tmp_path, needs_numba):
    _copy_package(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'fastnn-train'\n")
    out = _import_in(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "BACKENDS ['numba']" in out.stdout
    pkg = os.path.join(str(tmp_path), "fastnn")
    assert (f"fastnn is being imported from its source tree ({pkg}), which has no compiled extension; run from "
            "another folder or `pip install .` / `pip install -e .` first") in out.stderr, out.stderr
    assert "Numba" in out.stderr and "circular" not in out.stderr


def test_installed_package_with_a_broken_extension_says_why(tmp_path, needs_numba):
    site = tmp_path / "site"
    site.mkdir()
    _copy_package(site)      # no pyproject.toml beside it: an installed package
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (site / "fastnn" / f"_C{suffix}").write_bytes(b"not a shared library")
    out = _import_in(site)
    assert out.returncode == 0, out.stderr
    assert "BACKENDS ['numba']" in out.stdout
    assert "the compiled extension fastnn._C failed to load (ImportError: " in out.stderr, out.stderr
    assert f"_C{suffix}" in out.stderr                       # the original ImportError text
    assert 'pip install --force-reinstall --no-cache-dir "fastnn-train"' in out.stderr
    assert "source tree" not in out.stderr and "circular" not in out.stderr


def test_editable_install_run_from_the_clone_root_is_not_a_broken_source_tree():
    """The dev install maps fastnn to the clone and loads _C from site-packages:
    importing from the clone root must find the extension, warning-free."""
    from fastnn.backend import cpp
    in_clone = os.path.dirname(os.path.abspath(fnn.__file__)) == os.path.join(REPO, "fastnn")
    if cpp._C is None or not in_clone or os.path.dirname(cpp._C.__file__) == os.path.join(REPO, "fastnn"):
        pytest.skip("needs an editable install whose _C lives outside the clone")
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_BACKEND"}
    out = subprocess.run([sys.executable, "-W", "error", "-c",
                          "import fastnn; print(fastnn.backend.available()[0], fastnn.backend.failures().get('cpp'))"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["cpp", "None"]
