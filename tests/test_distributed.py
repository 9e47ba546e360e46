"""Data-parallel training over real MPI processes (mpirun -n 2), synchronized
BatchNorm, and hyperparameter search on a real Dask LocalCluster.

The MPI scenarios run in ONE mpirun job (tests/_mpi_worker.py); the
single-process references use the same builders in this process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastnn as fnn
from fastnn import distributed

sys.path.insert(0, os.path.dirname(__file__))
import _mpi_worker as worker  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RTOL, ATOL = 1e-5, 1e-6


def _mpi_missing():
    if shutil.which("mpirun") is None:
        return "mpirun not found (apt-get install openmpi-bin libopenmpi-dev)"
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:
        return 'mpi4py is not installed (pip install "fastnn-train[dist]")'
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def mpirun(args, cwd, n=2, timeout=180):
    """Runs ``python args`` on n ranks from cwd (not the source tree: the installed fastnn)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               # containers often forbid the cross-memory-attach copy path
               OMPI_MCA_btl_vader_single_copy_mechanism="none", OMPI_MCA_mpi_yield_when_idle="1")
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
           sys.executable] + args
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks saw: [rank0 dict, rank1 dict], and the output folder."""
    out = tmp_path_factory.mktemp("mpi")
    mpirun([os.path.join(HERE, "_mpi_worker.py"), str(out)], cwd=out)
    results = []
    for r in range(2):
        with np.load(out / f"rank{r}.npz", allow_pickle=False) as f:
            results.append({k: f[k] for k in f.files})
    return results, out


def _single(kind, **kw):
    """The single-process reference: same data order, the global batch in one step."""
    return worker.train(kind, **kw)


# --- 2 ranks against 1 -----------------------------------------------------------------

@needs_mpi
def test_two_ranks_equal_one_rank_with_the_global_batch(ranks):
    res, _ = ranks
    assert int(res[0]["world_size"]) == 2
    trainer, _, flat = _single("plain")
    for r in range(2):
        np.testing.assert_allclose(res[r]["plain/flat"], flat, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(res[r]["plain/loss"], trainer.history.loss, rtol=RTOL, atol=ATOL)
    # every rank holds the very same numbers after the allreduce
    np.testing.assert_array_equal(res[0]["plain/flat"], res[1]["plain/flat"])
    initial = np.concatenate([p.data.ravel() for p in worker.build("plain").parameters()])
    assert np.abs(flat - initial).max() > 1e-2       # the 4 steps did move the weights


@needs_mpi
def test_bucketed_overlap_equals_single_collective(ranks):
    res, _ = ranks
    for r in range(2):
        for mb in (1e-4, 0.002):
            np.testing.assert_array_equal(res[r][f"bucketed{mb}/flat"], res[r]["plain/flat"])


@needs_mpi
@pytest.mark.parametrize("kind", ["sync_bn", "sync_bn2d"])
def test_sync_bn_two_ranks_equal_one_rank_bn_on_the_full_batch(ranks, kind):
    res, _ = ranks
    _, model, flat = _single(kind)
    for r in range(2):
        np.testing.assert_allclose(res[r][f"{kind}/flat"], flat, rtol=RTOL, atol=ATOL)
        for name, b in model.named_buffers():
            np.testing.assert_allclose(res[r][f"{kind}/buffer/{name}"], b, rtol=RTOL, atol=ATOL)


@needs_mpi
def test_local_bn_replicas_stay_identical(ranks):
    res, _ = ranks
    np.testing.assert_array_equal(res[0]["local_bn/flat"], res[1]["local_bn/flat"])
    np.testing.assert_array_equal(res[0]["local_bn/running_mean"], res[1]["local_bn/running_mean"])
    # local statistics: not the single-process run on the full batch
    assert not np.allclose(res[0]["local_bn/flat"], _single("local_bn")[2], rtol=RTOL, atol=ATOL)


@needs_mpi
def test_dropout_masks_differ_across_ranks_and_the_run_repeats(ranks):
    res, _ = ranks
    assert not np.array_equal(res[0]["dropout/mask"], res[1]["dropout/mask"])
    assert res[0]["dropout/rng_state"][0] == res[1]["dropout/rng_state"][0]          # one seed
    assert res[1]["dropout/rng_state"][1] - res[0]["dropout/rng_state"][1] == distributed.RANK_STREAM_SPAN
    for r in range(2):
        np.testing.assert_array_equal(res[r]["dropout/flat"], res[r]["dropout/flat_again"])
    np.testing.assert_array_equal(res[0]["dropout/flat"], res[1]["dropout/flat"])


@needs_mpi
def test_only_rank0_writes_and_resume_continues_the_run(ranks):
    res, out = ranks
    assert (out / "ckpt_rank0.npz").exists() and not (out / "ckpt_rank1.npz").exists()
    assert (out / "best_rank0.npz").exists() and not (out / "best_rank1.npz").exists()
    for r in range(2):
        np.testing.assert_array_equal(res[r]["resume/flat"], res[r]["resume/flat_straight"])


@needs_mpi
def test_batch_not_divisible_by_world_size_is_a_clear_error(ranks):
    res, _ = ranks
    for r in range(2):
        msg = str(res[r]["bad_batch/error"])
        assert "batch_size (17)" in msg and "world size (2)" in msg


@needs_mpi
def test_cli_train_distributed(tmp_path):
    proc = mpirun(["-m", "fastnn.cli", "train", "--distributed", "--epochs", "2", "--hidden", "32",
                   "--batch-size", "64", "--quiet", "--save", str(tmp_path / "m.npz")], cwd=tmp_path)
    assert proc.stdout.count("2 ranks") == 1, proc.stdout       # only rank 0 prints
    assert proc.stdout.count("trained 2 epochs") == 1
    assert (tmp_path / "m.npz").exists()


# --- without MPI ------------------------------------------------------------------------

def test_missing_mpi4py_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(distributed, "_comm", None)
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(RuntimeError, match="mpi4py"):
        distributed.init()
    model = worker.build("plain")
    with pytest.raises(RuntimeError, match="mpi4py"):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()), distributed=True)


def test_single_process_defaults():
    if not distributed.is_initialized():
        assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    buf = np.arange(5, dtype=np.float32)
    assert distributed.allreduce_mean(buf) is buf and buf[4] == 4
    with pytest.raises(ValueError, match="op"):
        distributed.allreduce_(buf, "max")
    with pytest.raises(ValueError, match="contiguous"):
        distributed.allreduce_(np.zeros((4, 4), np.float32)[:, 1])
    model = worker.build("plain")
    with pytest.raises(ValueError, match="bucket_mb"):
        fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.SGD(model.parameters()), bucket_mb=1.0)


def test_shard_bounds_cover_the_batch():
    for n, p in ((16, 2), (17, 4), (5, 8), (256, 8)):
        bounds = [distributed.shard_bounds(n, p, r) for r in range(p)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert max(h - lo for lo, h in bounds) - min(h - lo for lo, h in bounds) <= 1


@pytest.mark.parametrize("shape, cls", [((12, 5), "BatchNorm1d"), ((6, 3, 4, 5), "BatchNorm2d")])
@pytest.mark.parametrize("act", ["identity", "relu", "tanh"])
def test_sync_bn_path_matches_batchnorm(monkeypatch, backend, rng, shape, cls, act):
    """The synchronized forward/backward (the batchnorm kernels split at their
    reductions), with the allreduce the identity, equals the fused training kernel; and sync_bn=True is
    plain BN when no MPI job runs."""
    x = (rng.standard_normal(shape) * 3 + 1.5).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.standard_normal(shape[1]).astype(np.float32)
    outs = []
    for sync, pretend in ((False, False), (True, False), (True, True)):
        monkeypatch.setattr(distributed, "active", lambda: pretend)
        monkeypatch.setattr(distributed, "allreduce_", lambda buf, op="sum": buf)    # a world of one
        bn = getattr(fnn.nn, cls)(shape[1], sync_bn=sync)
        bn.weight.data[...] = gamma
        bn.bias.data[...] = 0.3
        y = np.array(bn.forward_fused(x, act, None), copy=True)
        dx, _ = bn.backward_fused(dy)
        outs.append((y, np.array(dx, copy=True), bn.weight.grad.copy(), bn.bias.grad.copy(), bn.weight.data.copy(),
                     bn.running_mean.copy(), bn.running_var.copy()))
    for i, (ref, got) in enumerate(zip(outs[0], outs[2])):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5, err_msg=f"output {i}")
    for ref, got in zip(outs[0], outs[1]):
        np.testing.assert_array_equal(got, ref)


def test_nccl_path_needs_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the NCCL path needs CuPy and a GPU")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device: the NCCL path needs a GPU")
    except Exception as exc:
        pytest.skip(f"no usable CUDA runtime ({exc}): the NCCL path needs a GPU")
    buf = cupy.arange(6, dtype=cupy.float32)
    assert distributed.allreduce_mean(buf) is buf       # one process: the identity
    assert float(buf[5]) == 5.0


# --- hyperparameter search on Dask --------------------------------------------------------

def _objective(params):
    if params["x"] > 0.8:
        raise FloatingPointError("diverged")
    return -(params["x"] - 0.3) ** 2


@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed", reason='dask.distributed is not installed (pip install "fastnn-train[dist]")')
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_search_on_a_dask_cluster(dask_client):
    from fastnn.search import coarse_to_fine, grid_search, random_search, uniform
    seen = []
    result = random_search(_objective, {"x": uniform(0, 1)}, trials=12, seed=0, executor=dask_client,
                           callback=seen.append)
    local = random_search(_objective, {"x": uniform(0, 1)}, trials=12, seed=0)
    assert len(seen) == len(result) == 12                     # every trial streamed back once
    assert sorted(t.index for t in seen) == list(range(12))
    assert [t.params for t in result] == [t.params for t in local]
    failed = [t for t in result if not t.ok]
    assert failed and all("FloatingPointError: diverged" in t.error for t in failed)
    assert result.best.ok and abs(result.best.params["x"] - 0.3) < 0.2
    grid = grid_search(_objective, {"x": [0.1, 0.3, 0.9]}, executor=dask_client)
    assert grid.best.params == {"x": 0.3} and not grid[-1].ok
    c2f = coarse_to_fine(_objective, {"x": uniform(0, 1)}, rounds=2, trials=6, seed=1, executor=dask_client)
    assert len(c2f) == 12 and {t.round for t in c2f} == {0, 1}


def test_search_records_a_failing_future():
    """A future that itself fails (not the objective) is a failed trial, not the end of the search."""
    import concurrent.futures

    from fastnn.search import choice, random_search

    class Flaky(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, *args):
            if args[1]["x"] == 2:
                f = concurrent.futures.Future()
                f.set_exception(ConnectionError("worker lost"))
                return f
            return super().submit(fn, *args)

    with Flaky(2) as pool:
        result = random_search(lambda p: float(p["x"]), {"x": choice([1, 2, 3])}, trials=9, seed=0, executor=pool)
    assert any(t.error == "ConnectionError: worker lost" for t in result)
    assert result.best.params == {"x": 3}
    with pytest.raises(TypeError, match="executor"):
        random_search(_objective, {"x": choice([1])}, trials=1, executor=object())
