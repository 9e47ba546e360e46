"""Atomic, pickle-free .npz files: the one place fastnn writes and reads them.

``save_npz_atomic(path, arrays)`` writes to a temporary file in the target
folder, fsyncs it, renames it over ``path`` and fsyncs the folder, so a reader
(or a crash at any point) sees the old file or the new one, never a torn one.
The file gets the mode ``np.savez`` would give it (0o666 minus the umask), not
the 0o600 of the temporary. ``load_npz(path)`` reads every array at once with
``allow_pickle=False`` and closes the file; anything that is not a plain .npz
archive is a ValueError naming the file (never a hint to enable pickle).

A leaf module: numpy and the standard library only.
"""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

_NPZ = "an .npz archive"
_PICKLED = "it holds pickled Python objects, which fastnn never loads (they can run code)"


def _current_umask() -> int:
    """The process umask without changing it: /proc/self/status on Linux; the
    os.umask(0)/os.umask(old) pair elsewhere (racy with threads creating files
    in that instant, hence the last resort)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0)
    os.umask(old)
    return old


def save_npz_atomic(path, arrays: dict) -> None:
    """np.savez of ``arrays`` ({name: array}) to ``path``, atomically (temporary
    file in the same folder + fsync + rename + fsync of the folder). A process
    killed mid-write leaves a ``.fastnn-*.npz`` temporary behind, never a
    damaged ``path``. Object arrays are refused (no pickle is ever written)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path}: it is a folder, expected a file path such as "
                                f"{os.path.join(path, 'model.npz')}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=".npz", dir=folder)
    except OSError as exc:      # e.g. a read-only folder: name the folder, not our temporary
        raise type(exc)(f"cannot save to {path}: {exc.strerror or exc} (folder {folder})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            # mkstemp creates 0o600; give the file the mode np.savez/open() would.
            mode = 0o666 & ~_current_umask()
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            else:
                os.chmod(tmp, mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # Make the rename itself durable: a crash after return keeps the new file.
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return _PICKLED if "pickle" in text.lower() else text


def load_npz(path, what: str = _NPZ) -> dict:
    """{name: array} of the .npz at ``path``, read once without pickle, the file
    closed on return. A missing file is a FileNotFoundError naming it; a file
    that is not a plain .npz (not a zip archive, truncated, a lone .npy, an
    entry holding pickled objects) is a ValueError
    "<path> is not <what>: <reason>"."""
    path = os.fspath(path)
    with open(path, "rb") as fh:     # FileNotFoundError / PermissionError name the path
        head = fh.read(6)
        fh.seek(0)
        if not head:
            raise ValueError(f"{path} is not {what}: the file is empty")
        if head.startswith(b"\x93NUMPY"):
            raise ValueError(f"{path} is not {what}: it is a single .npy array, not an .npz archive")
        if not head.startswith(b"PK"):
            raise ValueError(f"{path} is not {what}: it is not a zip archive "
                             f"(it starts with {head[:4]!r})")
        out = {}
        try:
            with np.load(fh, allow_pickle=False) as f:
                for name in f.files:
                    try:
                        out[name] = f[name]
                    except ValueError as exc:
                        if "pickle" in str(exc).lower() or "object arrays" in str(exc).lower():
                            raise ValueError(f"{path} is not {what}: entry {name!r} holds pickled Python "
                                             "objects, which fastnn never loads (they can run code)") from None
                        raise
        except ValueError as exc:
            if str(exc).startswith(path):
                raise
            raise ValueError(f"{path} is not {what}: {_reason(exc)}") from exc
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
            raise ValueError(f"{path} is not {what}: {_reason(exc)}") from exc
    return out


__all__ = ["save_npz_atomic", "load_npz"]
