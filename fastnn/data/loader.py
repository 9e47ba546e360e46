"""DataLoader: seeded mini-batches, augmented ahead of time in a background thread.

Each ``iter(loader)`` is one epoch. A producer thread gathers the next batches
(shuffled order), converts them to contiguous float arrays and applies the
augmentation, keeping up to ``prefetch`` finished batches in a queue while the
consumer trains on the current one. NumPy and the Numba augmentation kernels
release the GIL, so the preparation really overlaps the training step.

Determinism: the epoch order and the augmentation draws come from two
generators spawned from ``seed``, and one thread produces the batches in order,
so a given seed gives the same batches on every run, whatever ``prefetch`` is.
Stopping early (``break``, an exception, ``close()``) stops and joins the thread.
"""
from __future__ import annotations

import queue
import threading

import numpy as np

from .. import _validate as V
# numba with the threading layer chosen (set_num_threads below starts its pool); None without numba.
from ..backend.numba.runtime import numba

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DataLoader:
    """Iterate over (x_batch, y_batch) for one epoch per ``iter()``.

    X: (N, ...) array (float, or integer images: converted to float32 and
    multiplied by ``scale``, default 1/255 for uint8); y: (N,) labels or None.
    augment: callable ``t(x, rng)`` (``t(x, rng, y=...)`` when it ``uses_labels``,
    returning (x, y)). prefetch: batches prepared ahead (0: no thread).
    augment_threads: Numba threads of the producer's augmentation kernels (default
    1, so that preparing the next batch overlaps the step instead of competing with it)."""

    def __init__(self, X, y=None, batch_size: int = 128, shuffle: bool = True, seed=None, augment=None,
                 prefetch: int = 2, drop_last: bool = False, scale: float | None = None, augment_threads: int = 1):
        if not hasattr(X, "dtype") or not hasattr(X, "shape") or X.ndim < 1:
            raise TypeError(f"X must be a numpy.ndarray with a sample axis, got {type(X).__name__}")
        if X.dtype.kind not in "fiu":
            raise TypeError(f"X must hold numbers, got dtype {X.dtype}")
        if y is not None:
            if not hasattr(y, "dtype"):
                y = np.asarray(y)
            if len(y) != len(X):
                raise ValueError(f"y must have one entry per sample of X: {len(y)} != {len(X)}")
        if augment is not None and not callable(augment):
            raise TypeError(f"augment must be callable t(x, rng=None), got {type(augment).__name__}")
        self.X, self.y = X, y
        self.batch_size = V.positive_int(batch_size, "batch_size")
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.prefetch = V.positive_int(prefetch, "prefetch", 0)
        self.drop_last = bool(drop_last)
        self.augment_threads = V.positive_int(augment_threads, "augment_threads")
        if X.dtype.kind == "f":
            self.dtype, self.scale = X.dtype, (None if scale is None else V.real(scale, "scale"))
        else:
            self.dtype = np.dtype(np.float32)
            self.scale = V.real(scale, "scale") if scale is not None else (1.0 / 255 if X.dtype == np.uint8 else None)
        order_seq, augment_seq = np.random.SeedSequence(seed).spawn(2) if seed is not None else (None, None)
        self._order_rng = np.random.default_rng(order_seq)
        self._augment_rng = np.random.default_rng(augment_seq)
        self._producer = (None, None)

    def __len__(self) -> int:
        n = len(self.X)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _batches(self):
        """The epoch's batches, computed in order (runs in the producer thread)."""
        n = len(self.X)
        order = self._order_rng.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb = np.ascontiguousarray(self.X[idx], dtype=self.dtype)
            if self.scale is not None:
                xb *= self.dtype.type(self.scale)
            yb = None if self.y is None else np.ascontiguousarray(self.y[idx])
            if self.augment is not None:
                if getattr(self.augment, "uses_labels", False):
                    out = self.augment(xb, rng=self._augment_rng, y=yb)
                else:
                    out = self.augment(xb, rng=self._augment_rng)
                xb, yb = out if isinstance(out, tuple) else (out, yb)
                xb = np.ascontiguousarray(xb)
            yield xb, yb

    def __iter__(self):
        self.close()   # a previous epoch's producer must not draw from the generators any more
        if not self.prefetch:
            return iter(self._batches())
        epoch = _Epoch(self._batches(), self.prefetch, self.augment_threads)
        self._producer = (epoch.thread, epoch.stop)
        return epoch

    def close(self):
        """Stop and join the producer of the current epoch (dropping the epoch's iterator stops it too)."""
        thread, stop = self._producer
        if thread is not None:
            stop.set()
            thread.join()
        self._producer = (None, None)


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(source, q: queue.Queue, stop: threading.Event, threads: int):
    # A plain function, not a method: the thread must not keep the _Epoch alive,
    # so dropping the iterator (a `break` out of a for loop) reaches _Epoch.__del__.
    try:
        # Numba's thread count is per calling thread: the augmentation kernels of
        # this producer use `threads` cores and leave the rest to the training step.
        if numba is not None:
            numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        for item in source:
            if not _put(q, stop, item):
                return
        _put(q, stop, _DONE)
    except BaseException as exc:  # handed to the consumer, re-raised there
        _put(q, stop, _Failure(exc))
    finally:
        source.close()


class _Epoch:
    """Iterator over one epoch, fed by a daemon producer thread through a bounded queue."""

    def __init__(self, source, prefetch: int, threads: int):
        self.queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        self._finished = False
        self.thread = threading.Thread(target=_produce, args=(source, self.queue, self.stop, threads),
                                       name="fastnn-DataLoader", daemon=True)
        self.thread.start()

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        while True:
            try:
                item = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    self.close()
                    raise StopIteration from None
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.exc
        return item

    def close(self):
        self._finished = True
        self.stop.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def __del__(self):
        stop = getattr(self, "stop", None)
        if stop is not None:
            stop.set()   # the producer notices within 50 ms and exits

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
