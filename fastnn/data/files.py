"""Readers for the standard dataset files, without pickle and without downloads.

- CIFAR-10, binary version (``cifar-10-binary.tar.gz``, extracted to
  ``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
  ``test_batch.bin``. Each record is 1 label byte (0..9) and 3072 pixel bytes:
  the 1024 red, then green, then blue values of a 32 x 32 image, row-major --
  already NCHW. (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
- MNIST, IDX files (LeCun et al.), plain or gzipped: ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``. Header: 2 zero bytes, a type byte (0x08 =
  unsigned byte), the number of dimensions, then one big-endian uint32 per
  dimension; the data follow. Images have magic 0x00000803, labels 0x00000801.

Every size, magic number and label is checked; a truncated or malformed file
raises ``ValueError`` naming the file. The files may be untrusted: each reader
checks the size a header (or the file) declares against a limit
(``IDX_MAX_BYTES``, ``CIFAR10_MAX_BATCH_BYTES``; ``max_bytes=`` raises it)
before reading, then reads, or inflates a .gz, in bounded chunks never past
that size + 1 byte, so a crafted file costs no more memory than an honest one.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
# Untrusted files: the most data a reader accepts before it reads any (each
# reader's max_bytes= raises it). IDX: 4 GiB of declared data; CIFAR-10: one
# batch of 10000 records, what each official batch holds.
IDX_MAX_BYTES = 2 ** 32
CIFAR10_MAX_BATCH_BYTES = 10000 * CIFAR10_RECORD
_CHUNK = 1 << 20                # bytes inflated or read per call
_DEFLATE_MAX_RATIO = 1032       # deflate (gzip) never expands more than this


class _Source:
    """One dataset file opened for bounded reading: plain, or gzip inflated in
    chunks (GzipFile.read(n) never inflates more than n bytes at a time), so no
    read costs more memory than the size the caller asked for."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        self.path = path
        self.gzipped = path.endswith(".gz")
        self._raw = open(path, "rb")
        self.disk_size = os.fstat(self._raw.fileno()).st_size
        self._f = gzip.GzipFile(fileobj=self._raw, mode="rb") if self.gzipped else self._raw

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()

    def read(self, n: int) -> bytes:
        """Up to n bytes (fewer only at the end of the data)."""
        try:
            return self._f.read(n)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{self.path}: corrupt or truncated gzip file ({exc})") from exc

    def can_hold(self, size: int) -> bool:
        """False when the file cannot possibly hold ``size`` bytes of data: a plain
        file shorter than that, or a gzip file too small to inflate to it (deflate
        expands at most 1032:1)."""
        if self.gzipped:
            return size <= _DEFLATE_MAX_RATIO * self.disk_size + 4096
        return size <= self.disk_size

    def read_exactly(self, size: int, need: str, consumed: int = 0) -> np.ndarray:
        """The next ``size`` bytes as a uint8 array, read in bounded chunks into
        one buffer (its pages are touched only as data arrives), then one more
        byte to prove nothing follows. ``need`` ends the messages ("the header
        (60000, 28, 28) needs 47040016 bytes"); ``consumed``: bytes read before."""
        out = np.empty(size, np.uint8)
        view = memoryview(out)
        done = 0
        while done < size:
            chunk = self.read(min(_CHUNK, size - done))
            if not chunk:
                raise ValueError(f"{self.path}: truncated: {consumed + done} bytes, but {need}")
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
        if self.read(1):
            raise ValueError(f"{self.path}: has trailing bytes: more than the {consumed + size} bytes {need}")
        return out


def _check_limit(max_bytes, default: int) -> int:
    if max_bytes is None:
        return default
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
        raise ValueError(f"max_bytes must be a non-negative int (a size in bytes), got {max_bytes!r}")
    return int(max_bytes)


# --- CIFAR-10 ---------------------------------------------------------------------

def _cifar_folder(path) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a folder (give the folder that holds data_batch_1.bin .. "
                                "test_batch.bin, or the one that holds cifar-10-batches-bin)")
    if not os.path.exists(os.path.join(path, CIFAR10_TEST)):
        inner = os.path.join(path, "cifar-10-batches-bin")
        if os.path.isdir(inner):
            return inner
    return path


def read_cifar10_batch(path, max_bytes=None):
    """(X uint8 (N, 3, 32, 32), y int64 (N,)) from one CIFAR-10 binary batch file.

    A file larger than ``max_bytes`` (default ``CIFAR10_MAX_BATCH_BYTES``: 10000
    records, what each official batch holds) is refused before anything is read;
    so is a size that is not a whole number of 3073-byte records. A gzipped
    batch (``.gz``) is inflated in bounded chunks and refused as soon as it
    passes that size."""
    path = os.fspath(path)
    limit = _check_limit(max_bytes, CIFAR10_MAX_BATCH_BYTES)
    with _Source(path) as src:
        if src.gzipped:
            raw = _inflate_at_most(src, limit)
            size = raw.size
        else:
            size = src.disk_size
            if size > limit:
                raise ValueError(f"{path}: {size} bytes ({size // CIFAR10_RECORD} records) is more than the "
                                 f"limit of {limit} bytes ({limit // CIFAR10_RECORD} CIFAR-10 records); pass "
                                 "max_bytes= to read a larger batch")
        if size == 0 or size % CIFAR10_RECORD:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 "
                             "records (1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 "
                             "binary batch")
        if not src.gzipped:
            raw = src.read_exactly(size, f"its size was {size} bytes when it was opened")
    records = raw.reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} at record {bad[0]} is not a CIFAR-10 class (0..9); "
                         "the file is malformed")
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
    return images, labels


def _inflate_at_most(src: _Source, limit: int) -> np.ndarray:
    """All the data of a gzipped file of unknown length, inflated in bounded
    chunks into one buffer of ``limit + 1`` bytes (pages touched only as data
    arrives), refused as soon as it passes ``limit``."""
    buf = np.empty(limit + 1, np.uint8)
    view = memoryview(buf)
    done = 0
    while done <= limit:
        chunk = src.read(min(_CHUNK, limit + 1 - done))
        if not chunk:
            return buf[:done]
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    raise ValueError(f"{src.path}: inflates to more than the limit of {limit} bytes "
                     f"({limit // CIFAR10_RECORD} CIFAR-10 records); pass max_bytes= to read a larger batch")


def load_cifar10(path, max_bytes=None):
    """(X_train, y_train, X_test, y_test) from the CIFAR-10 binary batches in ``path``.

    path: the ``cifar-10-batches-bin`` folder or its parent. X uint8 (N, 3, 32, 32)
    NCHW, y int64. Nothing is downloaded; get ``cifar-10-binary.tar.gz`` yourself.

    Untrusted files: each batch's size is checked before it is read; a batch
    larger than ``max_bytes`` (default ``fastnn.data.files.CIFAR10_MAX_BATCH_BYTES``
    = 10000 records x 3073 bytes, 30.7 MB: what each official batch holds) or
    not a whole number of records is a ValueError naming the file. Pass
    ``max_bytes=`` (in bytes, per batch file) to read larger batches of your own."""
    limit = _check_limit(max_bytes, CIFAR10_MAX_BATCH_BYTES)
    folder = _cifar_folder(path)
    parts = [read_cifar10_batch(os.path.join(folder, name), limit) for name in CIFAR10_TRAIN]
    x_test, y_test = read_cifar10_batch(os.path.join(folder, CIFAR10_TEST), limit)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


# --- MNIST (IDX) ------------------------------------------------------------------

def _idx_header(src: _Source, magic: int, limit: int):
    """Read and check the header of an IDX file; (dims, header length, data
    size). The data size is the product of the dims (a Python int: no
    overflow), refused before any data is read when it exceeds ``limit`` or when
    the file cannot hold it."""
    path = src.path
    head = src.read(4)
    if len(head) < 4:
        raise ValueError(f"{path}: {len(head)} bytes is too short for an IDX header")
    found = int.from_bytes(head, "big")
    if found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} "
                         f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'} IDX file of unsigned bytes)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    rest = src.read(4 * ndim)
    if len(rest) < 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header ({4 + len(rest)} bytes, need {header})")
    dims = tuple(int.from_bytes(rest[4 * i:4 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if size > limit:
        raise ValueError(f"{path}: the header declares dimensions {dims}, {size} bytes of data, more than the "
                         f"limit of {limit} bytes; the file is malformed (pass max_bytes= to read a larger one)")
    if not src.can_hold(header + size):
        if src.gzipped:
            raise ValueError(f"{path}: truncated: the header {dims} needs {header + size} bytes, more than a "
                             f"{src.disk_size}-byte gzip file can inflate to")
        raise ValueError(f"{path}: truncated: {src.disk_size} bytes, but the header {dims} needs {header + size}")
    return dims, header, size


def _idx_data(src: _Source, dims, header: int, size: int) -> np.ndarray:
    if not src.gzipped and src.disk_size != header + size:
        raise ValueError(f"{src.path}: has trailing bytes: {src.disk_size} bytes, but the header {dims} needs "
                         f"{header + size}")
    return src.read_exactly(size, f"the header {dims} needs {header + size}", consumed=header).reshape(dims)


def read_idx(path, magic: int, max_bytes=None):
    """The uint8 array stored in one IDX file, checked against ``magic``.

    The header is read first; data larger than ``max_bytes`` (default
    ``IDX_MAX_BYTES`` = 2**32) is refused before it is read, and a .gz file is
    inflated in bounded chunks, never past the size the header declares + 1 byte."""
    path = os.fspath(path)
    limit = _check_limit(max_bytes, IDX_MAX_BYTES)
    with _Source(path) as src:
        dims, header, size = _idx_header(src, magic, limit)
        return _idx_data(src, dims, header, size)


def _find_idx(folder: str, stem: str) -> str:
    # The official names use '-idx'; some mirrors use '.idx'; either may be gzipped.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{os.path.join(folder, stem)}[.gz]: no such file")


def _mnist_split(folder: str, prefix: str, limit: int):
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    # Both headers are checked against each other before any data is read.
    with _Source(images_path) as images_src, _Source(labels_path) as labels_src:
        image_header = _idx_header(images_src, IDX_IMAGES_MAGIC, limit)
        label_header = _idx_header(labels_src, IDX_LABELS_MAGIC, limit)
        n_images, n_labels = image_header[0][0], label_header[0][0]
        if n_images != n_labels:
            raise ValueError(f"{labels_path}: {n_labels} labels for the {n_images} images of {images_path}")
        labels = _idx_data(labels_src, *label_header)
        if labels.size and labels.max() > 9:
            raise ValueError(f"{labels_path}: label {int(labels.max())} is not a digit (0..9); the file is "
                             "malformed")
        images = _idx_data(images_src, *image_header)
    x = images.reshape(images.shape[0], 1, images.shape[1], images.shape[2])
    return x, labels.astype(np.int64)


def load_mnist(path, max_bytes=None):
    """(X_train, y_train, X_test, y_test) from the four MNIST IDX files in ``path``.

    X uint8 (N, 1, 28, 28), y int64. Plain or .gz files; nothing is downloaded.

    Untrusted files: every header is read and checked (magic number, image and
    label counts agreeing) before any data; a header declaring more than
    ``max_bytes`` of data (default ``fastnn.data.files.IDX_MAX_BYTES`` = 2**32
    bytes, 4 GiB; MNIST's training images are 47 MB) is refused before reading,
    and a .gz file is inflated in bounded chunks, never past the size its header
    declares + 1 byte, so a gzip bomb costs no more memory than an honest file.
    Pass ``max_bytes=`` to read larger IDX files of your own."""
    folder = os.fspath(path)
    limit = _check_limit(max_bytes, IDX_MAX_BYTES)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a folder (give the folder holding the MNIST IDX files)")
    x_train, y_train = _mnist_split(folder, "train", limit)
    x_test, y_test = _mnist_split(folder, "t10k", limit)
    return x_train, y_train, x_test, y_test


__all__ = ["load_cifar10", "load_mnist", "read_cifar10_batch", "read_idx"]
