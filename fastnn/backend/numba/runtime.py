"""The Numba runtime: the one place the Numba backend imports numba, picks its
threading layer, keeps fastnn's thread count and decides when a kernel runs in
parallel (``threads_for``, the one home of the parallel threshold), and runs
the kernels that alternate with NumPy's BLAS on a pool of Python threads
(``run_tasks``).

Every kernel module of this package, and fastnn.augment / fastnn.data.loader,
import numba from here, so the threading layer is chosen before the first
parallel kernel compiles or the first ``numba.set_num_threads`` starts the pool.
"""
from __future__ import annotations

import ctypes
import glob
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import registry

try:
    import numba
    from llvmlite import ir
    from numba import literally, njit, prange
    from numba.core import types as nbtypes
    from numba.core.codegen import get_host_cpu_features
    from numba.extending import intrinsic, overload
except ImportError as exc:  # pragma: no cover - numba is a hard dependency
    registry.mark_failed("numba", f"numba failed to import: {exc}")
    numba = njit = prange = literally = nbtypes = overload = intrinsic = get_host_cpu_features = ir = None


def _prefer_512_bit_vectors():
    """On an AVX-512 CPU whose LLVM tuning prefers 256-bit vectors (every Intel
    core since Skylake-X, for the clock drop of heavy 512-bit code on the early
    ones), let LLVM vectorize at the full 512 bits, as csrc/'s AVX-512 objects
    are built (-mprefer-vector-width=512). A tuning flag, not an ISA change: the
    same instructions' results, lane by lane, so every kernel's bits stay those of
    256-bit code (reductions without fastmath do not vectorize either way). Measured
    on a 2-core Xeon, 4M float32 elements fwd+bwd, Numba / C++: GELU 1.9 -> 1.0,
    ELU 1.8 -> 1.1, sigmoid 1.4 -> 1.2. Only where the user set no
    NUMBA_CPU_FEATURES, and only before Numba's CPU code generator starts (a
    process that compiled Numba code before importing fastnn keeps its setting)."""
    if numba.config.CPU_FEATURES is not None:
        return
    features = get_host_cpu_features()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = features + ",-prefer-256-bit"


if numba is not None:
    _prefer_512_bit_vectors()

if numba is not None and numba.config.THREADING_LAYER == "default":
    # One OpenMP runtime in the process: the C++ kernels use GNU libgomp and so
    # does Numba's "omp" layer (workqueue where omp is unavailable).
    numba.config.THREADING_LAYER = "omp"

# Options of every kernel: compiled once and cached on disk, GIL released, IEEE
# arithmetic (no fastmath, so the loops round like csrc/), NumPy's error model.
JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")

# Below this many elements a parallel region costs more than it saves (and its
# idle OpenMP workers would fight NumPy's BLAS threads for the cores).
_PARALLEL_MIN = 1 << 16

# Numba's thread count is per calling thread; fastnn's is one number for the
# process (set_num_threads), applied on each call by threads_for so that a
# kernel runs on the same team size, and rounds the same way, from whichever
# thread calls it. 0: not set, use all of Numba's threads.
_THREADS = [0]


def set_num_threads(n: int) -> None:
    """fastnn's thread count for the Numba kernels (capped at Numba's pool size)."""
    _THREADS[0] = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(_THREADS[0])


def get_num_threads() -> int:
    """The team size of a parallel Numba kernel: fastnn's count, else Numba's pool size."""
    return _THREADS[0] or int(numba.config.NUMBA_NUM_THREADS)


class threads_for:
    """``with threads_for(work):`` runs the enclosed Numba kernels on fastnn's
    thread count, or on 1 thread when ``work`` (elements touched) is below the
    parallel threshold: ``minimum``, by default _PARALLEL_MIN."""

    __slots__ = ("want", "saved")

    def __init__(self, work: int, minimum: int = _PARALLEL_MIN):
        self.want = 1 if work < minimum else get_num_threads()

    def __enter__(self):
        self.saved = numba.get_num_threads()
        if self.saved != self.want:
            numba.set_num_threads(self.want)

    def __exit__(self, *exc):
        if self.saved != self.want:
            numba.set_num_threads(self.saved)


def quiet_fp():
    """NumPy's floating-point warnings silenced: overflow to inf is the caller's
    business (the Trainer stops on a non-finite loss), exactly as in the C++ kernels."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


# Scratch arrays per calling thread, by name, kept across calls (the convolutions'
# columns and transform-domain buffers): a fresh multi-MiB np.empty per call paid
# a page fault per 4 KiB page every time. Per thread, because run_tasks' workers
# and fastnn.distributed's ranks (threads of one process) each need their own.
_SCRATCH = threading.local()


def scratch(name: str, shape, dtype) -> np.ndarray:
    """This thread's scratch array ``name``, reshaped to ``shape`` (contents undefined)."""
    need = math.prod(shape)
    buf = getattr(_SCRATCH, name, None)
    if buf is None or buf.dtype != dtype or buf.size < need:
        buf = np.empty(need, dtype)
        setattr(_SCRATCH, name, buf)
    return buf[:need].reshape(shape)


# --- kernels that alternate with NumPy's BLAS ----------------------------------------
# A convolution alternates Numba loops (im2col, the epilogue) with NumPy matmuls.
# Run as parallel regions between multi-threaded BLAS calls, the two thread pools
# take turns on the same cores, and each leaves its workers spinning: OpenBLAS's
# after every call, libgomp's after every region (GOMP_SPINCOUNT). On a 2-core
# Xeon an im2col region right after a 64x64 matmul ran 14 ms instead of 3 ms, with
# OpenBLAS on 1 thread 3.3 ms. So those kernels run instead as tasks on a pool of
# Python threads, each task serial Numba code (GIL released) and single-threaded
# BLAS on its own images, with NumPy's OpenBLAS pinned to one thread meanwhile:
# one set of threads, no spinning pool in the way, and each task's columns stay
# in the core's cache. Where NumPy's BLAS is not an OpenBLAS whose thread count we
# can set, the tasks run one after another on the calling thread and the BLAS
# keeps its own threads.


# numpy >= 2 wheels (scipy-openblas, 64-bit ints, prefixed), numpy 1.x wheels, system OpenBLAS.
_OPENBLAS_NAMES = (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"), ("openblas", ""))


def _openblas():
    """((set, get) of the thread count, {dtype: cblas gemm}) of the OpenBLAS NumPy loaded,
    or None. The gemm functions are ctypes functions (row-major CBLAS ?gemm, the library's
    integer width), which Numba code can call with the GIL released."""
    # NumPy's own copy first (a SciPy or other library may load an OpenBLAS of its own).
    here = os.path.dirname(np.__file__)
    paths = glob.glob(os.path.join(os.path.dirname(here), "numpy.libs", "*openblas*"))
    paths += glob.glob(os.path.join(here, ".dylibs", "*openblas*"))
    try:
        with open("/proc/self/maps") as maps:
            paths += sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        pass
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in _OPENBLAS_NAMES:
            setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                return (setter, getter), _cblas_gemms(lib, prefix, suffix)
    return None


def _cblas_gemms(lib, prefix, suffix):
    """{float32: address of sgemm, float64: of dgemm} of an OpenBLAS with 64-bit integers
    (``scipy_cblas_sgemm64_`` in NumPy >= 2's wheels), or {}."""
    if suffix != "64_":
        return {}
    cblas = "scipy_cblas" if prefix == "scipy_openblas" else "cblas"
    gemms = {}
    for dtype, letter in ((np.float32, "s"), (np.float64, "d")):
        fn = getattr(lib, f"{cblas}_{letter}gemm{suffix}", None)
        if fn is not None:
            gemms[np.dtype(dtype)] = ctypes.cast(fn, ctypes.c_void_p).value
    return gemms


_OPENBLAS, _GEMMS = _openblas() or (None, {})


def blas_gemm(dtype):
    """The address of NumPy's OpenBLAS row-major ?gemm for dtype (64-bit integers), for
    gemm_call, or None. Call it inside ``one_blas_thread()``, from any number of threads."""
    return _GEMMS.get(np.dtype(dtype)) if _OPENBLAS is not None else None


if intrinsic is not None:
    @intrinsic
    def gemm_call(typingctx, address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        """CBLAS row-major ?gemm at ``address`` (blas_gemm) from Numba code, GIL released:
        c (m, n) = alpha op(a) @ op(b) + beta c, op(a) = a (m, k) or, trans_a, a (k, m)
        transposed, op(b) = b (k, n) or, trans_b, b (n, k) transposed; a, b, c data
        addresses (``arr.ctypes.data``), the rest int64 and the scalars of the matrices'
        type. An address, not a ctypes function, is the argument: Numba does not reuse a
        cached kernel whose signature holds a ctypes function."""
        def codegen(context, builder, signature, args):
            address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
            i32, i64, ptr = ir.IntType(32), ir.IntType(64), ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, alpha.type, ptr, i64, ptr, i64,
                                                   beta.type, ptr, i64])
            fn = builder.inttoptr(address, fnty.as_pointer())
            ta, tb = (builder.select(builder.icmp_signed("!=", t, ir.Constant(t.type, 0)), ir.Constant(i32, 112),
                                     ir.Constant(i32, 111)) for t in (trans_a, trans_b))
            builder.call(fn, [ir.Constant(i32, 101), ta, tb, m, n, k, alpha,
                              builder.inttoptr(a, ptr), lda, builder.inttoptr(b, ptr), ldb, beta,
                              builder.inttoptr(c, ptr), ldc])
            return context.get_dummy_value()

        ints = (address, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc)
        if not all(isinstance(t, nbtypes.Integer) and t.bitwidth == 64 for t in ints) or alpha != beta:
            return None
        return nbtypes.void(address, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc), codegen

    @njit(parallel=True, cache=True, nogil=True)
    def _gemm_parts(gemm, a, b, c, trans_a, trans_b, beta, parts, by_rows):
        """c (+)= op(a) @ op(b) in ``parts`` runs of c's rows (by_rows) or columns, one
        ?gemm call per run (a, b, c C-contiguous)."""
        m, n = c.shape
        k = a.shape[0] if trans_a else a.shape[1]
        T = c.dtype.type
        size = c.itemsize
        lda, ldb = a.shape[1], b.shape[1]
        for p in prange(parts):
            whole = m if by_rows else n
            r0, r1 = p * whole // parts, (p + 1) * whole // parts
            if r1 == r0:
                continue
            at, bt, ct = np.int64(a.ctypes.data), np.int64(b.ctypes.data), np.int64(c.ctypes.data)
            if by_rows:
                at += (r0 if trans_a else r0 * lda) * size
                ct += r0 * n * size
                rows, cols = r1 - r0, n
            else:
                bt += (r0 * ldb if trans_b else r0) * size
                ct += r0 * size
                rows, cols = m, r1 - r0
            gemm_call(gemm, np.int64(trans_a), np.int64(trans_b), np.int64(rows), np.int64(cols), np.int64(k),
                      T(1.0), at, np.int64(lda), bt, np.int64(ldb), T(beta), ct, np.int64(n))
else:  # pragma: no cover - numba is a hard dependency
    gemm_call = _gemm_parts = None


# The most runs runtime.matmul splits a product into (a fixed count: a multiple of
# common thread counts, few enough that each run stays a sizeable GEMM).
_GEMM_PARTS = 8


def matmul(a, b, out, trans_a=False, trans_b=False, beta=0.0):
    """out (+ beta out) = op(a) @ op(b) for 2-D arrays, as np.matmul but with NumPy's
    OpenBLAS called single-threaded from a parallel Numba region (rows of out split
    between fastnn's threads), never by its own threads: OpenBLAS's workers spin after
    each multi-threaded call (tens of ms), and a Numba region that followed ran half
    as fast (Winograd conv backward, 64->64 at 16x16: 8.7 ms, 16.9 ms right after a
    2-thread 256 x 4096 x 256 matmul). np.matmul where that gemm is not available."""
    gemm = blas_gemm(out.dtype)
    aa, bb = (a.T if trans_a else a), (b.T if trans_b else b)
    if (gemm is None or a.dtype != out.dtype or b.dtype != out.dtype or not out.flags.c_contiguous
            or not a.flags.c_contiguous or not b.flags.c_contiguous or out.size == 0 or aa.shape[1] == 0):
        with quiet_fp():
            prod = np.matmul(aa, bb)
        if beta:
            out *= beta
            out += prod
        else:
            out[...] = prod
        return
    # A split by the shapes alone (OpenBLAS rounds a product differently for different
    # sizes: its small-matrix kernels), so the bits do not depend on the thread count:
    # up to _GEMM_PARTS runs of at least 64 rows, else of at least 256 columns.
    m, n = out.shape
    by_rows = m >= 128 or m >= n
    parts = max(1, min(_GEMM_PARTS, (m // 64) if by_rows else (n // 256)))
    if 2 * out.size * aa.shape[1] < (1 << 22):
        parts = 1
    with threads_for(parts << 16), _ONE_BLAS_THREAD:
        _gemm_parts(np.int64(gemm), a, b, out, trans_a, trans_b, beta, parts, by_rows)


class _OneBlasThread:
    """NumPy's OpenBLAS on one thread while any caller is inside (counted, so
    concurrent callers, e.g. fastnn.distributed's ranks as threads, restore the
    user's count only when the last one leaves)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.depth = 0
        self.saved = 1

    def __enter__(self):
        with self.lock:
            if self.depth == 0:
                setter, getter = _OPENBLAS
                self.saved = getter()
                setter(1)
            self.depth += 1

    def __exit__(self, *exc):
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                _OPENBLAS[0](self.saved)


_ONE_BLAS_THREAD = _OneBlasThread()


def one_blas_thread():
    """``with one_blas_thread():`` NumPy's OpenBLAS on one thread for the duration (each
    caller's BLAS calls single-threaded, as run_tasks' tasks)."""
    return _ONE_BLAS_THREAD
_POOL = [None, 0, 0]  # the executor, its worker count, the process that made it
_POOL_LOCK = threading.Lock()


def run_tasks(fn, ntasks: int) -> None:
    """fn(0), ..., fn(ntasks - 1) on fastnn's thread count of threads, the calling
    thread one of them (exceptions re-raised here). The tasks must not depend on
    which thread runs them or in what order: every result is the same at any
    thread count. Each thread takes the next task not yet taken, the caller
    included, so a call hands work to at most threads - 1 pool workers (on this
    project's 2-core VM this timed the same as handing every task to the pool)."""
    threads = get_num_threads() if _OPENBLAS is not None else 1
    if threads <= 1 or ntasks <= 1:
        for i in range(ntasks):
            fn(i)
        return
    with _POOL_LOCK:
        if _POOL[1] != threads or _POOL[2] != os.getpid():  # a forked child has none of the threads
            if _POOL[0] is not None and _POOL[2] == os.getpid():
                _POOL[0].shutdown(wait=False)
            _POOL[:] = ThreadPoolExecutor(threads - 1, thread_name_prefix="fastnn-numba"), threads, os.getpid()
        pool = _POOL[0]
    taken = itertools.count()  # next() is atomic under the GIL

    def work():
        for i in taken:
            if i >= ntasks:
                return
            fn(i)

    with _ONE_BLAS_THREAD:
        helpers = [pool.submit(work) for _ in range(min(threads, ntasks) - 1)]
        try:
            work()
        finally:
            for h in helpers:  # every task has ended before this returns or raises
                h.exception()
        for h in helpers:
            h.result()
