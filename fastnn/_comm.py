"""The MPI/NCCL primitives of fastnn's data parallelism (layer L0).

One process per rank; ``init()`` joins the MPI job (mpi4py), CuPy buffers
travel over NCCL (its unique id is sent over MPI on the first CuPy collective).
Collectives work in place on C-contiguous NumPy or CuPy arrays. Without
``init()`` (or with one process) every collective is the identity,
``rank() == 0`` and ``world_size() == 1``.

Both ``fastnn.nn`` (synchronized BatchNorm) and ``fastnn.distributed``
(DataParallel) build on this module, so it imports nothing of fastnn's: the
communicator lives here, once. mpi4py and CuPy are optional dependencies,
imported when first needed.
"""
from __future__ import annotations

import json

import numpy as np

_comm = None            # mpi4py communicator once init() ran
_MPI = None             # the mpi4py.MPI module
_nccl_comm = None       # cupy.cuda.nccl.NcclCommunicator, created on the first CuPy collective

INSTALL_HINT = ('pip install "fastnn-train[dist]" (mpi4py) and an MPI library, e.g. '
                "apt-get install openmpi-bin libopenmpi-dev")


def init(comm=None) -> None:
    """Join the MPI job (idempotent). ``comm``: an mpi4py communicator
    (default ``MPI.COMM_WORLD``). Raises RuntimeError when mpi4py or MPI is missing."""
    global _comm, _MPI
    if _comm is not None and comm is None:
        return
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"fastnn.distributed needs mpi4py and an MPI library ({exc}); {INSTALL_HINT}") from exc
    except RuntimeError as exc:      # mpi4py present but libmpi cannot be loaded or initialised
        raise RuntimeError(f"fastnn.distributed could not initialise MPI ({exc}); {INSTALL_HINT}") from exc
    _MPI = MPI
    _comm = MPI.COMM_WORLD if comm is None else comm


def is_initialized() -> bool:
    """True once ``fastnn.distributed.init()`` has set up the MPI communicator."""
    return _comm is not None


def rank() -> int:
    """This process's rank (0 when not initialised)."""
    return 0 if _comm is None else _comm.Get_rank()


def world_size() -> int:
    """Number of ranks (1 when not initialised)."""
    return 1 if _comm is None else _comm.Get_size()


def is_main() -> bool:
    """True on rank 0: the rank that prints and writes files."""
    return rank() == 0


def active() -> bool:
    """Initialised with more than one rank: collectives have work to do."""
    return _comm is not None and _comm.Get_size() > 1


def barrier() -> None:
    """Block until every rank reaches this call (MPI barrier); a no-op without a distributed run."""
    if active():
        _comm.Barrier()


def is_cupy(buf) -> bool:
    return type(buf).__module__.startswith("cupy")


def _check_buffer(buf, name):
    if is_cupy(buf):
        if not buf.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(buf).__name__}")
    if not buf.flags.c_contiguous or not buf.flags.writeable:
        raise ValueError(f"{name} must be a writeable C-contiguous array (the collective works in place)")


def allreduce_(buf, op: str = "sum"):
    """In-place allreduce of ``buf`` over all ranks; op "sum" or "mean". Returns buf."""
    if op not in ("sum", "mean"):
        raise ValueError(f"op must be 'sum' or 'mean', got {op!r}")
    _check_buffer(buf, "buf")
    if not active():
        return buf
    if is_cupy(buf):
        _nccl_allreduce(buf)
    else:
        _comm.Allreduce(_MPI.IN_PLACE, buf, op=_MPI.SUM)
    if op == "mean":
        buf *= buf.dtype.type(1.0 / world_size())
    return buf


def allreduce_mean(buf):
    """In-place average of ``buf`` over all ranks. Returns buf."""
    return allreduce_(buf, "mean")


def allreduce_scalar(value: float) -> float:
    """Sum of a float over the ranks."""
    if not active():
        return value
    buf = np.array([value], np.float64)
    _comm.Allreduce(_MPI.IN_PLACE, buf, op=_MPI.SUM)
    return float(buf[0])


def iallreduce_(view):
    """Start an in-place sum of the C-contiguous ``view`` over the ranks without
    waiting: an MPI request for NumPy arrays (complete it with ``wait_all``),
    None for CuPy arrays (NCCL queues the sum on CuPy's current stream)."""
    if is_cupy(view):
        _nccl_allreduce(view)
        return None
    return _comm.Iallreduce(_MPI.IN_PLACE, view, op=_MPI.SUM)


def progress(requests) -> None:
    """Let MPI progress the collectives in flight (returns at once)."""
    if requests:
        _MPI.Request.Testall(requests)


def wait_all(requests) -> None:
    """Wait for every request of ``iallreduce_``."""
    if requests:
        _MPI.Request.Waitall(requests)


def broadcast_(buf, root: int = 0):
    """In-place broadcast of ``buf`` from ``root``. Returns buf."""
    _check_buffer(buf, "buf")
    if not active():
        return buf
    if is_cupy(buf):
        import cupy
        _nccl().bcast(buf.data.ptr, buf.size, _nccl_dtype(buf), root, cupy.cuda.get_current_stream().ptr)
    else:
        _comm.Bcast(buf, root=root)
    return buf


def broadcast_object(obj, root: int = 0):
    """A small JSON-able value from ``root`` (sent as JSON text)."""
    if not active():
        return obj
    text = _comm.bcast(json.dumps(obj) if rank() == root else None, root=root)
    return json.loads(text)


# --- NCCL (CuPy buffers) ---------------------------------------------------------

def _nccl():
    """The NCCL communicator of this MPI job (the unique id travels over MPI)."""
    global _nccl_comm
    if _nccl_comm is None:
        try:
            from cupy.cuda import nccl
        except ImportError as exc:
            raise RuntimeError(f"allreduce of CuPy arrays needs CuPy built with NCCL ({exc})") from exc
        uid = nccl.get_unique_id() if rank() == 0 else None
        uid = _comm.bcast(uid, root=0)
        _nccl_comm = nccl.NcclCommunicator(world_size(), uid, rank())
    return _nccl_comm


def _nccl_dtype(buf):
    from cupy.cuda import nccl
    table = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
    if buf.dtype not in table:
        raise TypeError(f"NCCL collectives take float32 or float64 buffers, got {buf.dtype}")
    return table[buf.dtype]


def _nccl_allreduce(buf):
    """Sum in place on CuPy's current stream (asynchronous, like a kernel launch)."""
    import cupy
    from cupy.cuda import nccl
    _nccl().allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(buf), nccl.NCCL_SUM,
                      cupy.cuda.get_current_stream().ptr)
