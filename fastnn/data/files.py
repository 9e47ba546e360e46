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
raises ``ValueError`` naming the file.
"""
from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return f.read()
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from exc
    with open(path, "rb") as f:
        return f.read()


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


def read_cifar10_batch(path):
    """(X uint8 (N, 3, 32, 32), y int64 (N,)) from one CIFAR-10 binary batch file."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise ValueError(f"{path}: {len(raw)} bytes is not a whole number of {CIFAR10_RECORD}-byte CIFAR-10 "
                         "records (1 label byte + 3072 pixel bytes); the file is truncated or not a CIFAR-10 "
                         "binary batch")
    records = np.frombuffer(raw, np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} at record {bad[0]} is not a CIFAR-10 class (0..9); "
                         "the file is malformed")
    images = np.ascontiguousarray(records[:, 1:]).reshape(-1, 3, 32, 32)
    return images, labels


def load_cifar10(path):
    """(X_train, y_train, X_test, y_test) from the CIFAR-10 binary batches in ``path``.

    path: the ``cifar-10-batches-bin`` folder or its parent. X uint8 (N, 3, 32, 32)
    NCHW, y int64. Nothing is downloaded; get ``cifar-10-binary.tar.gz`` yourself."""
    folder = _cifar_folder(path)
    parts = [read_cifar10_batch(os.path.join(folder, name)) for name in CIFAR10_TRAIN]
    x_test, y_test = read_cifar10_batch(os.path.join(folder, CIFAR10_TEST))
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test


# --- MNIST (IDX) ------------------------------------------------------------------

def read_idx(path, magic: int):
    """The uint8 array stored in one IDX file, checked against ``magic``."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} "
                         f"({'images' if magic == IDX_IMAGES_MAGIC else 'labels'} IDX file of unsigned bytes)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: {len(raw)} bytes, but the header {dims} needs {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _find_idx(folder: str, stem: str) -> str:
    # The official names use '-idx'; some mirrors use '.idx'; either may be gzipped.
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{os.path.join(folder, stem)}[.gz]: no such file")


def _mnist_split(folder: str, prefix: str):
    images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{labels_path}: {labels.shape[0]} labels for the {images.shape[0]} images of "
                         f"{images_path}")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: label {int(labels.max())} is not a digit (0..9); the file is malformed")
    x = np.ascontiguousarray(images).reshape(images.shape[0], 1, images.shape[1], images.shape[2])
    return x, labels.astype(np.int64)


def load_mnist(path):
    """(X_train, y_train, X_test, y_test) from the four MNIST IDX files in ``path``.

    X uint8 (N, 1, 28, 28), y int64. Plain or .gz files; nothing is downloaded."""
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a folder (give the folder holding the MNIST IDX files)")
    x_train, y_train = _mnist_split(folder, "train")
    x_test, y_test = _mnist_split(folder, "t10k")
    return x_train, y_train, x_test, y_test


__all__ = ["load_cifar10", "load_mnist", "read_cifar10_batch", "read_idx"]
