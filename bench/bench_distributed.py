"""Data-parallel training step over MPI: the reference MLP 784-1024-1024-10
with BatchNorm1d + ReLU after each hidden Linear, softmax cross-entropy, Adam,
global batch 256. 1 rank vs 2 ranks (mpirun -n 2, one kernel thread per rank),
one allreduce of the flat gradient after backward vs bucketed allreduces
overlapped with backward; MPI Allreduce bandwidth on float32 buffers; a ring
allreduce estimate for 8 and 64 ranks.

    python bench/bench_distributed.py          # starts the mpirun jobs itself

Validates first: the bucketed run must give the same parameters as the single
collective before anything is timed.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

D, H, C = 784, 1024, 10
GLOBAL_BATCH = 256
BUCKET_MB = 1.0
STEPS, WARMUP = 30, 5
SIZES = [2**k for k in (10, 14, 16, 18, 20, 22)]      # float32 elements: 4 KiB .. 16 MiB
# Containers often forbid the cross-memory-attach copy; ranks that share busy
# cores must yield while they wait, or large allreduces crawl.
MPI_SETTINGS = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMPI_MCA_mpi_yield_when_idle": "1"}


def build(fnn):
    fnn.manual_seed(0)
    nn = fnn.nn
    return nn.Sequential(nn.Linear(D, H), nn.BatchNorm1d(H), nn.ReLU(),
                         nn.Linear(H, H), nn.BatchNorm1d(H), nn.ReLU(), nn.Linear(H, C))


def trainer_for(fnn, distributed, bucket_mb=None, batch=GLOBAL_BATCH):
    model = build(fnn)
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
    return fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt, seed=0, distributed=distributed,
                       bucket_mb=bucket_mb), opt


def time_steps(fnn, trainer, xb, yb):
    """Median seconds per step and median exposed communication seconds per step."""
    from fastnn import distributed
    for _ in range(WARMUP):
        trainer.train_step(xb, yb)
    dp = trainer._dp
    steps, comm = [], []
    for _ in range(STEPS):
        distributed.barrier()
        c0 = dp.comm_seconds if dp else 0.0
        t0 = time.perf_counter()
        trainer.train_step(xb, yb)
        steps.append(time.perf_counter() - t0)
        comm.append((dp.comm_seconds if dp else 0.0) - c0)
    return statistics.median(steps), statistics.median(comm)


def allreduce_bandwidth(fnn):
    """{elements: median seconds} of an in-place MPI Allreduce (sum) of float32."""
    from fastnn import distributed
    out = {}
    for n in SIZES:
        buf = np.ones(n, np.float32)
        reps = 50 if n <= 2**16 else 10
        for _ in range(3):
            distributed.allreduce_(buf)
        samples = []
        for _ in range(reps):
            distributed.barrier()
            t0 = time.perf_counter()
            distributed.allreduce_(buf)
            samples.append(time.perf_counter() - t0)
        out[n] = statistics.median(samples)
    return out


def worker(path):
    import fastnn as fnn
    fnn.set_num_threads(1)
    fnn.distributed.init()
    p, r = fnn.distributed.world_size(), fnn.distributed.rank()
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((GLOBAL_BATCH, D)).astype(np.float32)
    yb = rng.integers(0, C, GLOBAL_BATCH)
    res = {"world_size": p}
    if p == 1:
        for batch in (GLOBAL_BATCH, GLOBAL_BATCH // 8, max(2, GLOBAL_BATCH // 64)):
            trainer, _ = trainer_for(fnn, False)
            res[f"step_batch{batch}"] = time_steps(fnn, trainer, xb[:batch], yb[:batch])[0]
    else:
        # validate: bucketed == one collective
        flats = []
        for mb in (None, BUCKET_MB):
            trainer, opt = trainer_for(fnn, True, mb)
            for _ in range(3):
                trainer.train_step(xb, yb)
            flats.append(opt.flat_param.copy())
        assert np.array_equal(flats[0], flats[1]), "bucketed allreduce differs from the single collective"
        res["n_params"] = int(flats[0].size)
        for name, mb in (("single", None), ("bucketed", BUCKET_MB)):
            trainer, _ = trainer_for(fnn, True, mb)
            res[f"{name}_step"], res[f"{name}_comm"] = time_steps(fnn, trainer, xb, yb)
        res["allreduce"] = allreduce_bandwidth(fnn)
    if r == 0:
        with open(path, "w") as f:
            json.dump(res, f)


def run_job(n, path):
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **MPI_SETTINGS)
    cmd = ["mpirun", "-n", str(n), "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
           sys.executable, os.path.abspath(__file__), "--worker", path]
    subprocess.run(cmd, env=env, check=True, timeout=900)
    with open(path) as f:
        return json.load(f)


def ring_estimate(nbytes, p, bandwidth, latency):
    """Ring allreduce: 2(p-1) steps, each moving nbytes/p and paying one latency."""
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * latency


def main():
    if shutil.which("mpirun") is None:
        raise SystemExit("bench_distributed: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp()
    one = run_job(1, os.path.join(tmp, "one.json"))
    two = run_job(2, os.path.join(tmp, "two.json"))
    shutil.rmtree(tmp, ignore_errors=True)
    info = harness.machine()
    info["threads"] = "1 per rank"
    info["load_average_1min"] = [load_before, os.getloadavg()[0]]
    render({"machine": info, "mpi_settings": MPI_SETTINGS, "one_rank": one, "two_ranks": two})


def render(payload):
    """The markdown table (and the derived figures in the JSON) from the measurements."""
    info, one, two = payload["machine"], payload["one_rank"], payload["two_ranks"]
    ar = {int(k): v for k, v in two["allreduce"].items()}
    # the link's bandwidth: the best the ring's "bus bandwidth" 2(p-1)/p x bytes / time reached (>= 256 KiB)
    bus_bw = max(2 * (2 - 1) / 2 * n * 4 / t for n, t in ar.items() if n * 4 >= 2**18)
    latency = ar[min(ar)] / 2                                # 2 ring steps at p = 2, tiny message
    grad_bytes = two["n_params"] * 4

    t1 = one[f"step_batch{GLOBAL_BATCH}"]
    lines = [f"# Data-parallel training step (MPI), {info['date']}", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, fastnn {info['fastnn']} ({info['isa']}), "
             f"one kernel thread per rank. Model: MLP {D}-{H}-{H}-{C}, BatchNorm1d + ReLU, Adam, global batch "
             f"{GLOBAL_BATCH}, {two['n_params']:,} parameters ({grad_bytes / 2**20:.1f} MiB of float32 gradients). "
             f"Medians of {STEPS} steps after {WARMUP} warm-up steps.", "",
             "**Caveat:** the two ranks share the machine's two cores with each other and with whatever else "
             "runs (this machine is shared, so every figure here is noisy); 2 ranks on 2 cores is not a "
             "cluster. Other jobs ran at the same time (1-minute load average "
             + " -> ".join(f"{v:.1f}" for v in info.get("load_average_1min", [])) + " on 2 cores, before -> after). "
             "The allreduce goes through shared memory (OpenMPI vader), not a network. MPI settings: "
             + ", ".join(f"`{k}={v}`" for k, v in payload["mpi_settings"].items()) + ".", "",
             "| run | step (ms) | samples/s | exposed communication (ms) | share of step |",
             "|---|---:|---:|---:|---:|",
             f"| 1 rank, batch {GLOBAL_BATCH} | {t1 * 1e3:.1f} | {GLOBAL_BATCH / t1:,.0f} | 0 | 0% |"]
    for name, label in (("single", "one allreduce after backward"),
                        ("bucketed", f"bucketed ({BUCKET_MB:g} MiB) during backward")):
        t, c = two[f"{name}_step"], two[f"{name}_comm"]
        lines.append(f"| 2 ranks, {label} | {t * 1e3:.1f} | {GLOBAL_BATCH / t:,.0f} | {c * 1e3:.2f} | "
                     f"{c / t:.0%} |")
    ratio = two["single_step"] / t1
    lines += ["", f"The 2-rank step is {ratio:.2f}x the 1-rank one " + (
              "(slower): with the cores already busy, two ranks do not get two cores' worth of time, so these rows "
              "show the communication share, not scaling." if ratio > 1 else "(faster).")]
    lines += ["", "Exposed communication: time a step waits in the gradient collective after backward "
              "(bucketed: waiting for the buckets still in flight). Bucketed and single collective were "
              "checked to give bit-identical parameters before timing. The overlap can win little here: "
              "both ranks already compute on the only two cores, and OpenMPI moves a non-blocking "
              "collective forward only inside MPI calls (the trainer polls `Testall` after each layer of "
              "backward), so most of a bucket's transfer still happens in the final wait.", "",
              "## MPI Allreduce (float32, in place, 2 ranks)", "",
              "| elements | bytes | time (us) | algorithm bandwidth (GB/s) | bus bandwidth (GB/s) |",
              "|---:|---:|---:|---:|---:|"]
    for n in sorted(ar):
        t = ar[n]
        lines.append(f"| {n:,} | {n * 4:,} | {t * 1e6:.1f} | {n * 4 / t / 1e9:.2f} | {n * 4 / t / 1e9:.2f} |")
    lines += ["", "(At p = 2 the ring's bus bandwidth, 2(p-1)/p x bytes / time, equals the algorithm bandwidth.)",
              "", "## Estimate for 8 and 64 ranks (paper, not measured)", "",
              "Ring allreduce time = 2(p-1)/p x bytes / B + 2(p-1) x a, for the gradient "
              f"({grad_bytes / 2**20:.1f} MiB); compute = the measured 1-rank step at the per-rank batch "
              f"(global {GLOBAL_BATCH} / p). Two links: this machine's measured shared memory "
              f"(B = {bus_bw / 1e9:.2f} GB/s, the best measured, a = {latency * 1e6:.1f} us) and a 100 Gb/s network "
              "(B = 12.5 GB/s, a = 5 us). Not overlapped (the single-collective form).", "",
              "| ranks | per-rank batch | compute (ms) | link | allreduce (ms) | step (ms) | speed-up vs 1 rank |",
              "|---:|---:|---:|---|---:|---:|---:|"]
    estimates = []
    for p, batch in ((8, GLOBAL_BATCH // 8), (64, max(2, GLOBAL_BATCH // 64))):
        compute = one[f"step_batch{batch}"]
        for link, bw, lat in (("measured here", bus_bw, latency), ("100 Gb/s network", 12.5e9, 5e-6)):
            comm = ring_estimate(grad_bytes, p, bw, lat)
            step = compute + comm
            estimates.append({"ranks": p, "batch": batch, "compute": compute, "link": link, "allreduce": comm,
                              "step": step, "speedup": t1 / step})
            lines.append(f"| {p} | {batch} | {compute * 1e3:.2f} | {link} | {comm * 1e3:.2f} | {step * 1e3:.2f} | "
                         f"{t1 / step:.1f}x |")
    small = one[f"step_batch{max(2, GLOBAL_BATCH // 64)}"]
    lines += ["", f"What limits the speed-up is the per-rank step, not the link: at {max(2, GLOBAL_BATCH // 64)} "
              f"rows per rank it still takes {small * 1e3:.0f} ms ({small / t1:.0%} of the {GLOBAL_BATCH}-row "
              "step), because every rank does the weight-sized work (the GEMMs stream all 1.9 M weights, the "
              "optimizer updates all of them) whatever its batch. So the estimate saturates near "
              f"{t1 / small:.1f}x; larger global batches per rank scale further, and bucketing can hide at most the "
              "backward time of the layers before each bucket.", "",
              "Run: `python bench/bench_distributed.py` (starts `mpirun -n 1` and `mpirun -n 2` itself); "
              "`--render` rewrites this page from the JSON."]
    payload.update({"bus_bandwidth": bus_bw, "latency": latency, "estimates": estimates})
    harness.write("distributed", payload, lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    elif sys.argv[1:] == ["--render"]:
        with open(os.path.join(harness.RESULTS, "distributed.json")) as f:
            render(json.load(f))
    else:
        main()
