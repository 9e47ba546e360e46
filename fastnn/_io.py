"""Atomic, pickle-free .npz files: the one place fastnn writes and reads them.

``save_npz_atomic(path, arrays)`` writes to a temporary file in the target
folder, fsyncs it, renames it over ``path`` and fsyncs the folder, so a reader
(or a crash at any point) sees the old file or the new one, never a torn one.
The file gets the mode ``np.savez`` would give it (0o666 minus the umask), not
the 0o600 of the temporary. ``load_npz(path)`` reads every array at once with
``allow_pickle=False`` and closes the file; anything that is not a plain .npz
archive is a ValueError naming the file (never a hint to enable pickle).

Files may be untrusted (a model someone sent): ``NpzArchive`` (under
``load_npz``, ``fastnn.nn.load``, ``Trainer.load_checkpoint``) reads every
entry's .npy header before any data, refuses object dtypes, declared sizes
over ``MAX_NPZ_BYTES`` (2**32 bytes in all; ``max_bytes=`` raises it) and
recorded sizes that disagree with the header, and inflates each entry itself
in bounded chunks, never past its declared size + 1 byte, so a zip bomb costs
no more memory than the array it claims to be.

A leaf module: numpy and the standard library only.
"""
from __future__ import annotations

import io
import math
import os
import struct
import tempfile
import zipfile
import zlib

import numpy as np

_NPZ = "an .npz archive"
_PICKLED = "it holds pickled Python objects, which fastnn never loads (they can run code)"
# Untrusted files: the most array data one .npz may declare (all entries
# together), checked from the headers before anything is read. Raise it with
# load_npz(..., max_bytes=) / fastnn.nn.load(..., max_bytes=).
MAX_NPZ_BYTES = 2 ** 32
_MAX_HEADER = 10000             # numpy's own bound on a .npy header
_CHUNK = 1 << 20                # bytes read or inflated at a time
_DEFLATE_MAX_RATIO = 1032       # deflate never expands more than this


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


def write_atomic(path, write, suffix: str = "") -> None:
    """Create or replace the file ``path`` atomically: ``write(f)`` fills a
    temporary file in the same folder, which is fsynced, given the mode open()
    would (0o666 minus the umask) and renamed over ``path``; the folder is then
    fsynced so the rename survives a crash. A process killed mid-write leaves a
    ``.fastnn-*`` temporary behind, never a damaged ``path``. The one file
    writer of the package (models, checkpoints, ONNX graphs)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save to {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save to {path}: it is a folder, expected a file path such as "
                                f"{os.path.join(path, 'model' + (suffix or '.npz'))}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fastnn-", suffix=suffix, dir=folder)
    except OSError as exc:      # e.g. a read-only folder: name the folder, not our temporary
        raise type(exc)(f"cannot save to {path}: {exc.strerror or exc} (folder {folder})") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def save_npz_atomic(path, arrays: dict) -> None:
    """np.savez of ``arrays`` ({name: array}) to ``path``, atomically
    (write_atomic). Object arrays are refused (no pickle is ever written)."""
    write_atomic(path, lambda f: np.savez(f, allow_pickle=False, **arrays), suffix=".npz")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return _PICKLED if "pickle" in text.lower() else text


def _check_limit(max_bytes) -> int:
    if max_bytes is None:
        return MAX_NPZ_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int (a size in bytes), got {max_bytes!r}")
    return int(max_bytes)


class NpzArchive:
    """An .npz opened header first: every entry's .npy header is read and checked
    before any array data, and each array is then inflated in bounded chunks
    into a buffer of exactly the size its header declares.

    Refused with ``ValueError("<path> is not <what>: <reason>")``, before any
    array data is read: a file that is not a zip archive; an entry that is not
    a .npy array, or holds Python objects (pickle); a header whose shape times
    itemsize exceeds ``max_bytes`` (default ``MAX_NPZ_BYTES``), or whose total
    over all entries does; an entry whose zip size disagrees with its header,
    or whose compressed size could not inflate to it. While reading: data that
    ends early, or inflates past the declared size (never read beyond + 1 byte).

    ``shapes`` / ``dtypes``: {name: declared shape / dtype}; ``nbytes``:
    {name: declared data size}; ``read(name)`` the array; ``read_all()`` all of
    them. Use as a context manager (it holds the file open)."""

    def __init__(self, path, what: str = _NPZ, max_bytes=None):
        self.path = os.fspath(path)
        self.what = what
        self.max_bytes = _check_limit(max_bytes)
        self._fh = open(self.path, "rb")     # FileNotFoundError / PermissionError name the path
        self._zip = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def fail(self, reason: str):
        raise ValueError(f"{self.path} is not {self.what}: {reason}")

    def _open(self):
        head = self._fh.read(6)
        self._fh.seek(0)
        if not head:
            self.fail("the file is empty")
        if head.startswith(b"\x93NUMPY"):
            self.fail("it is a single .npy array, not an .npz archive")
        if not head.startswith(b"PK"):
            self.fail(f"it is not a zip archive (it starts with {head[:4]!r})")
        self._entries = {}
        self.shapes, self.dtypes, self.nbytes = {}, {}, {}
        total = 0
        try:
            self._zip = zipfile.ZipFile(self._fh)
            for info in self._zip.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if name in self._entries:
                    self.fail(f"entry {name!r} appears twice")
                if not info.filename.endswith(".npy"):
                    self.fail(f"entry {info.filename!r} is not a .npy array")
                shape, dtype, fortran, offset = self._header(info, name)
                size = math.prod(shape) * dtype.itemsize
                total += size
                if size > self.max_bytes or total > self.max_bytes:
                    self.fail(f"entry {name!r} declares shape {shape} of {dtype} ({size} bytes), which brings the "
                              f"arrays to {total} bytes, more than the limit of {self.max_bytes} bytes (pass "
                              "max_bytes= to read a larger file)")
                if info.file_size != offset + size:
                    self.fail(f"entry {name!r} holds {info.file_size} bytes, but its header declares shape "
                              f"{shape} of {dtype}, which needs {offset + size}")
                if not _can_inflate(info, offset + size):
                    self.fail(f"entry {name!r} declares {offset + size} bytes, more than its {info.compress_size} "
                              "compressed bytes can hold (truncated or crafted)")
                self._entries[name] = (info, dtype, shape, fortran, offset, size)
                self.shapes[name], self.dtypes[name], self.nbytes[name] = shape, dtype, size
        except ValueError as exc:
            if str(exc).startswith(self.path):
                raise
            self.fail(_reason(exc))
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
                SyntaxError, zlib.error) as exc:
            self.fail(_reason(exc))

    def _header(self, info, name):
        """(shape, dtype, fortran_order, data offset) of one entry, from at most
        the first ~10 kB of its stream."""
        f = _EntryStream(self._fh, info)
        magic = f.read(8)
        if len(magic) < 8 or not magic.startswith(b"\x93NUMPY"):
            self.fail(f"entry {name!r} is not a .npy array")
        major = magic[6]
        if major not in (1, 2, 3):
            self.fail(f"entry {name!r} has .npy format version {major}.{magic[7]}, expected 1, 2 or 3")
        width = 2 if major == 1 else 4
        size_field = f.read(width)
        if len(size_field) < width:
            self.fail(f"entry {name!r} has a truncated .npy header")
        length = int.from_bytes(size_field, "little")
        if length > _MAX_HEADER:
            self.fail(f"entry {name!r} has a {length}-byte .npy header, more than {_MAX_HEADER}")
        text = f.read(length)
        if len(text) < length:
            self.fail(f"entry {name!r} has a truncated .npy header")
        # numpy's own parser, on the bytes already in hand (nothing more is read)
        fp = io.BytesIO(size_field + text)
        if major == 1:
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, max_header_size=_MAX_HEADER)
        elif major == 2:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, max_header_size=_MAX_HEADER)
        else:               # version 3 is version 2 with a utf-8 header; numpy has no public reader
            shape, fortran, dtype = np.lib.format._read_array_header(fp, (3, 0), max_header_size=_MAX_HEADER)
        if dtype.hasobject:
            raise ValueError(f"{self.path} is not {self.what}: entry {name!r} holds pickled Python objects, "
                             "which fastnn never loads (they can run code)")
        if any(d < 0 for d in shape):
            self.fail(f"entry {name!r} declares a negative dimension in shape {shape}")
        return tuple(shape), dtype, fortran, 8 + width + length

    def read(self, name, max_bytes=None) -> np.ndarray:
        """The array ``name``, inflated in chunks into one buffer of its declared
        size; ``max_bytes``: a tighter limit for this entry (e.g. a JSON text)."""
        info, dtype, shape, fortran, offset, size = self._entries[name]
        if max_bytes is not None and size > max_bytes:
            self.fail(f"entry {name!r} declares {size} bytes, more than the {max_bytes} such an entry may hold")
        try:
            f = _EntryStream(self._fh, info)
            f.read(offset)
            buf = np.empty(size, np.uint8)
            view = memoryview(buf)
            done = 0
            while done < size:
                chunk = f.read(min(_CHUNK, size - done))
                if not chunk:
                    self.fail(f"entry {name!r} ends after {done} of the {size} bytes its header declares")
                view[done:done + len(chunk)] = chunk
                done += len(chunk)
            if f.read(1):
                self.fail(f"entry {name!r} inflates to more than the {size} bytes its header declares")
            f.finish()
        except ValueError as exc:
            if str(exc).startswith(self.path):
                raise
            self.fail(_reason(exc))
        except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error) as exc:
            self.fail(f"entry {name!r}: {_reason(exc)}")
        if dtype.itemsize == 0 or size == 0:
            return np.zeros(shape, dtype, order="F" if fortran else "C")
        flat = buf.view(dtype)
        return flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)

    def check_shapes(self, prefix: str, expected: dict, owner: str = "the model", strict: bool = True) -> None:
        """Before any data is read: the entries ``prefix + key`` are exactly the
        keys of ``expected`` ({key: shape}; with ``strict=False``, those of them
        that are present) with those shapes. A ValueError in the words of
        ``Module.load_state_dict`` ("state_dict keys do not match ...",
        "state_dict['key'] has shape ..., the model expects ..."), without the
        path: the caller names the file."""
        declared = {k[len(prefix):]: v for k, v in self.shapes.items() if k.startswith(prefix)}
        missing, extra = sorted(set(expected) - set(declared)), sorted(set(declared) - set(expected))
        if strict and (missing or extra):
            raise ValueError(f"state_dict keys do not match {owner}: missing {missing}, unexpected {extra}")
        for key, shape in declared.items():
            if key in expected and shape != tuple(expected[key]):
                raise ValueError(f"state_dict[{key!r}] has shape {shape}, {owner} expects {tuple(expected[key])}")

    def read_all(self) -> dict:
        return {name: self.read(name) for name in self._entries}

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _EntryStream:
    """The uncompressed bytes of one zip entry, inflated here rather than by
    zipfile so that every limit is ours: ``read(n)`` inflates at most n bytes
    (zlib's max_length), whatever the entry's recorded sizes say; ``finish()``
    then requires the deflate stream to end exactly there and the CRC-32 to
    match. Stored and deflated entries only: the two kinds numpy writes."""

    def __init__(self, fh, info: zipfile.ZipInfo):
        if info.flag_bits & 0x1:
            raise NotImplementedError("it is encrypted")
        if info.compress_type == zipfile.ZIP_DEFLATED:
            self._inflater = zlib.decompressobj(-15)
        elif info.compress_type == zipfile.ZIP_STORED:
            self._inflater = None
        else:
            raise NotImplementedError(f"it uses zip compression method {info.compress_type}; numpy writes "
                                      "stored or deflated entries only")
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"entry {info.filename!r} has no local file header")
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        self._fh, self._info = fh, info
        self._pos = info.header_offset + 30 + name_length + extra_length
        self._left = info.compress_size
        self._crc = 0

    def _raw(self, n: int) -> bytes:
        n = min(n, self._left)
        if n <= 0:
            return b""
        self._fh.seek(self._pos)
        data = self._fh.read(n)
        if len(data) < n:
            raise EOFError(f"the file ends inside entry {self._info.filename!r}")
        self._pos += n
        self._left -= n
        return data

    def read(self, n: int) -> bytes:
        if self._inflater is None:
            out = self._raw(n)
        else:
            parts, got = [], 0
            while got < n and not self._inflater.eof:
                data = self._inflater.unconsumed_tail or self._raw(_CHUNK)
                piece = self._inflater.decompress(data, n - got)
                if not data and not piece:
                    break           # compressed bytes used up before the end of the stream
                parts.append(piece)
                got += len(piece)
            out = b"".join(parts)
        self._crc = zlib.crc32(out, self._crc)
        return out

    def finish(self) -> None:
        """After the last byte of the data: nothing may follow, the stream must
        be complete and its CRC-32 the recorded one."""
        name = self._info.filename
        if self._inflater is not None and not self._inflater.eof:
            raise ValueError(f"entry {name!r}: its deflate stream is truncated")
        if self._left or (self._inflater is not None and (self._inflater.unused_data
                                                           or self._inflater.unconsumed_tail)):
            raise ValueError(f"entry {name!r}: compressed bytes follow the end of its data")
        if self._crc != self._info.CRC:
            raise ValueError(f"entry {name!r}: CRC-32 mismatch (the entry is corrupt)")


def _can_inflate(info: zipfile.ZipInfo, size: int) -> bool:
    """False when ``info``'s compressed bytes cannot possibly hold ``size``
    bytes: stored entries hold exactly their compressed size, deflate expands
    at most 1032:1. Other methods (bzip2, lzma) are left to the bounded read."""
    if info.compress_type == zipfile.ZIP_STORED:
        return info.compress_size == size
    if info.compress_type == zipfile.ZIP_DEFLATED:
        return size <= _DEFLATE_MAX_RATIO * info.compress_size + 1024
    return True


def load_npz(path, what: str = _NPZ, max_bytes=None) -> dict:
    """{name: array} of the .npz at ``path``, read once without pickle, the file
    closed on return. A missing file is a FileNotFoundError naming it; a file
    that is not a plain .npz (not a zip archive, truncated, a lone .npy, an
    entry holding pickled objects) is a ValueError
    "<path> is not <what>: <reason>".

    Untrusted files (``NpzArchive``): every header is checked before any data is
    read; arrays declaring more than ``max_bytes`` in all (default
    ``MAX_NPZ_BYTES`` = 2**32 bytes, 4 GiB) are refused, and no entry is ever
    inflated past the size its header declares + 1 byte."""
    with NpzArchive(path, what, max_bytes) as archive:
        return archive.read_all()


__all__ = ["save_npz_atomic", "load_npz", "NpzArchive", "MAX_NPZ_BYTES"]
