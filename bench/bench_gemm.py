"""GEMM and Linear+ReLU benchmark: fastnn (each CPU code path and the Numba
backend) side by side with NumPy (OpenBLAS) and PyTorch CPU, in one process.

Validate, then time: every implementation is first checked against a float64
NumPy reference; then the peers are timed interleaved (round r times every
library once before round r+1), each library after a pause so that idle
BLAS/OpenMP workers of the previous one have stopped spinning, with a warm-up
call first; the figure reported is the median over rounds.

    python bench/bench_gemm.py                 # full run, writes bench/results/gemm-<time>.json
    python bench/bench_gemm.py --quick         # fewer sizes and rounds
    python bench/bench_gemm.py --only gemm,training --sizes 1024,2048

Every GEMM figure is also given as a fraction of the FMA peak of its own code
path (bench/fma_peak.py: independent FMA chains on all cores, same dtype),
measured in the same rounds as the GEMMs (a probe call is one more case of the
rotation), so both see the same machine load. The peers (NumPy, PyTorch) are
given as a fraction of the widest path's probe. `training` times the three
GEMMs of a Linear layer at the training shapes: forward x @ W, dX = dZ @ W^T,
dW = X^T @ dZ, each through fnn.ops.gemm with the transposes in the call.

Run NumPy with OpenBLAS's own kernel choice (unset OPENBLAS_CORETYPE in the
command that runs this script if your environment sets it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from fma_peak import Probe

import fastnn as fnn
from fastnn.backend import cpp

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # PyTorch is an optional peer
    torch = None

THREADS = 2
LINEAR_SHAPES = [(256, 784, 1024), (256, 1024, 1024), (1024, 1024, 1024), (64, 4096, 4096)]


# --- timing -------------------------------------------------------------------------

def _median_call(fn, calls):
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def interleaved(cases: dict, rounds: int, pause: float, budget: float = 0.3):
    """cases: name -> zero-argument callable. Returns name -> median seconds.

    Each round visits every case once: pause, one warm-up call, then as many
    timed calls as fit in `budget` seconds (at least 1, at most 20); the
    round's figure is their median, the result the median over rounds."""
    per_round = {name: [] for name in cases}
    calls = {}
    for name, fn in cases.items():  # first warm-up also sizes the bursts
        t = time.perf_counter()
        fn()
        calls[name] = int(min(20, max(1, budget / max(time.perf_counter() - t, 1e-6))))
    for _ in range(rounds):
        for name, fn in cases.items():
            time.sleep(pause)
            fn()
            per_round[name].append(_median_call(fn, calls[name]))
    return {name: statistics.median(v) for name, v in per_round.items()}


# --- implementations ----------------------------------------------------------------

def _isas():
    return cpp._C.cpu_isas_supported().split(",") if "cpp" in fnn.backend.available() else []


def fastnn_call(isa, fn):
    """Wrap fn so it runs on the C++ backend with this code path (or Numba if isa is None)."""
    backend = "numba" if isa is None else "cpp"

    def call():
        if isa is not None:
            cpp._C.set_cpu_isa(isa)
        with fnn.backend.using(backend):
            return fn()
    return call


_PROBES = {}


def probe_cases(dtype, isas):
    """probe-<isa> cases (all cores, this dtype) and their FLOPs per call."""
    cases, flops = {}, {}
    for isa in isas:
        if isa not in _PROBES:
            _PROBES[isa] = Probe(isa)
        fn, f = _PROBES[isa].case(THREADS, dtype.__name__)
        cases[f"probe-{isa}"], flops[f"probe-{isa}"] = fn, f
    return cases, flops


def peak_fractions(gflops: dict) -> dict:
    """name -> fraction of the probe of its code path (peers: of the widest path's)."""
    probes = {k[len("probe-"):]: v for k, v in gflops.items() if k.startswith("probe-")}
    if not probes:
        return {}
    widest = next(i for i in ("avx512", "avx2", "generic") if i in probes)
    out = {}
    for k, v in gflops.items():
        if k.startswith("probe-"):
            continue
        isa = k[len("fastnn-"):] if k.startswith("fastnn-") and k[len("fastnn-"):] in probes else widest
        out[k] = v / probes[isa]
    return out


def training_gemm_cases(n, d, m, which, dtype, rng, isas):
    """One of the three GEMMs of a Linear layer (N, D) -> (N, M): fwd, dx or dw."""
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    dz = rng.standard_normal((n, m)).astype(dtype)
    if which == "fwd":
        a, b, ta, tb = x, w, False, False
    elif which == "dx":
        a, b, ta, tb = dz, w, False, True
    else:
        a, b, ta, tb = x, dz, True, False
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    c = np.empty((opa.shape[0], opb.shape[1]), dtype)
    ref = opa.astype(np.float64) @ opb.astype(np.float64)
    cases = {f"fastnn-{isa}": fastnn_call(isa, lambda: fnn.ops.gemm(a, b, trans_a=ta, trans_b=tb, out=c))
             for isa in isas}
    cases["numpy"] = lambda: np.matmul(opa, opb, out=c)
    if torch is not None:
        tpa, tpb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        tpa, tpb = (tpa.t() if ta else tpa), (tpb.t() if tb else tpb)
        cases["torch"] = lambda: torch.matmul(tpa, tpb, out=tc)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    for name, fn in cases.items():
        c.fill(np.nan)
        fn()
        err = np.max(np.abs(c - ref)) / np.max(np.abs(ref))
        if not err < tol * np.sqrt(opa.shape[1]):
            raise AssertionError(f"{name} {which} {(n, d, m)} {dtype.__name__}: relative error {err:.2e}")
    return cases, 2.0 * opa.shape[0] * opa.shape[1] * opb.shape[1]


def gemm_cases(n, dtype, rng, with_generic):
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty((n, n), dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    cases = {}
    for isa in _isas():
        if isa == "generic" and not with_generic:
            continue
        cases[f"fastnn-{isa}"] = fastnn_call(isa, lambda: fnn.ops.gemm(a, b, out=c))
    cases["fastnn-numba"] = fastnn_call(None, lambda: fnn.ops.gemm(a, b, out=c))
    cases["numpy"] = lambda: np.matmul(a, b, out=c)
    if torch is not None:
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        cases["torch"] = lambda: torch.matmul(ta, tb, out=tc)
    for name, fn in cases.items():  # validate before timing
        c.fill(np.nan)
        fn()
        err = np.max(np.abs(c - ref)) / np.max(np.abs(ref))
        if not err < tol * np.sqrt(n):
            raise AssertionError(f"{name} gemm {n} {dtype.__name__}: relative error {err:.2e}")
    return cases


def linear_cases(n, d, m, dtype, rng, backward):
    x = rng.standard_normal((n, d)).astype(dtype)
    w = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(dtype)
    b = (rng.standard_normal(m) * 0.1).astype(dtype)
    dy = rng.standard_normal((n, m)).astype(dtype)
    # float64 reference
    z64 = x.astype(np.float64) @ w + b
    y64 = np.maximum(z64, 0)
    dz64 = dy * (z64 > 0)
    ref = (y64, dz64 @ w.T, x.T.astype(np.float64) @ dz64, dz64.sum(0))

    # fastnn reuses its output buffers across steps, as the Linear layer does.
    y = np.empty((n, m), dtype)
    dx, dw, db, work = np.empty((n, d), dtype), np.empty((d, m), dtype), np.empty(m, dtype), np.empty((n, m), dtype)

    def fastnn_step():
        out, saved = fnn.ops.linear_act(x, w, b, "relu", out=y)
        if backward:
            fnn.ops.linear_act_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=work)
            return out, dx, dw, db
        return (out,)

    def numpy_step():
        out = np.maximum(x @ w + b, 0)
        if backward:
            dz = dy * (out > 0)
            return out, dz @ w.T, x.T @ dz, dz.sum(0)
        return (out,)

    cases = {}
    for isa in _isas():
        if isa == "generic":
            continue
        cases[f"fastnn-{isa}"] = fastnn_call(isa, fastnn_step)
    cases["fastnn-numba"] = fastnn_call(None, fastnn_step)
    cases["numpy"] = numpy_step
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(backward)
        tw = torch.from_numpy(np.ascontiguousarray(w.T)).requires_grad_(backward)  # torch: (out, in)
        tb = torch.from_numpy(b).requires_grad_(backward)
        tdy = torch.from_numpy(dy)

        def torch_step():
            if not backward:
                with torch.no_grad():
                    return (F.relu(F.linear(tx, tw, tb)).numpy(),)
            for t in (tx, tw, tb):
                t.grad = None
            out = F.relu(F.linear(tx, tw, tb))
            out.backward(tdy)
            return out.detach().numpy(), tx.grad.numpy(), tw.grad.numpy().T, tb.grad.numpy()
        cases["torch"] = torch_step

    tol = 1e-4 if dtype == np.float32 else 1e-10
    for name, fn in cases.items():
        got = fn()
        for g, r in zip(got, ref):
            err = np.max(np.abs(g - r)) / max(1.0, np.max(np.abs(r)))
            if not err < tol * np.sqrt(max(n, d, m)):
                raise AssertionError(f"{name} linear+relu {(n, d, m)}: relative error {err:.2e}")
    return cases


# --- main -------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between libraries")
    ap.add_argument("--sizes", type=str, default="256,512,1024,1536,2048")
    ap.add_argument("--out", type=str, default=str(Path(__file__).parent / "results"))
    ap.add_argument("--only", type=str, default="gemm,training,linear",
                    help="sections to run: gemm (square), training (the Linear GEMMs), linear (Linear+ReLU)")
    ap.add_argument("--dtypes", type=str, default="float32,float64")
    ap.add_argument("--isas", type=str, default="", help="fastnn code paths to time (default: all)")
    ap.add_argument("--no-numba", action="store_true", help="leave the Numba backend out")
    ap.add_argument("--tag", type=str, default="", help="appended to the result file name")
    args = ap.parse_args()
    sections = set(args.only.split(","))
    dtypes = [np.dtype(d).type for d in args.dtypes.split(",")]
    if args.isas:
        global _isas
        chosen = args.isas.split(",")
        _isas = lambda: [i for i in cpp._C.cpu_isas_supported().split(",") if i in chosen]  # noqa: E731
    rounds = 3 if args.quick else args.rounds
    sizes = [256, 1024, 2048] if args.quick else [int(s) for s in args.sizes.split(",")]

    fnn.set_num_threads(THREADS)
    if torch is not None:
        torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    result = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "threads": THREADS, "isas": _isas(), "numpy": np.__version__,
                    "torch": torch.__version__ if torch is not None else None,
                    "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                    "model_name": _model_name(), "load_average_start": os.getloadavg()},
        "gemm": [], "training_gemm": [], "linear_relu": [],
    }

    def timed_entry(cases, flops, dtype):
        pcases, pflops = probe_cases(dtype, _isas())
        cases = {**pcases, **cases}
        flops = {**pflops, **{k: flops for k in cases if k not in pflops}}
        load0 = os.getloadavg()[0]
        times = interleaved(cases, rounds, args.pause)
        gflops = {k: flops[k] / t / 1e9 for k, t in times.items()}
        return {"dtype": dtype.__name__, "seconds": times, "gflops": gflops, "peak_fraction": peak_fractions(gflops),
                "load_average": [load0, os.getloadavg()[0]]}

    def show(label, e):
        print(f"{label} (load {e['load_average'][0]:.1f}-{e['load_average'][1]:.1f}): " + ", ".join(
            f"{k} {v:.0f}" + (f" ({100 * e['peak_fraction'][k]:.0f}%)" if k in e["peak_fraction"] else "")
            for k, v in e["gflops"].items()), flush=True)

    for dtype in dtypes if "gemm" in sections else ():
        for n in sizes:
            cases = gemm_cases(n, dtype, rng, with_generic=n <= 1024)
            if args.no_numba:
                cases.pop("fastnn-numba", None)
            e = {"n": n, **timed_entry(cases, 2.0 * n ** 3, dtype)}
            result["gemm"].append(e)
            show(f"gemm {dtype.__name__} {n}", e)

    for dtype in dtypes if "training" in sections else ():
        for shape in LINEAR_SHAPES:
            for which in ("fwd", "dx", "dw"):
                cases, flops = training_gemm_cases(*shape, which, dtype, rng, _isas())
                e = {"shape": list(shape), "gemm": which, **timed_entry(cases, flops, dtype)}
                result["training_gemm"].append(e)
                show(f"training {dtype.__name__} {tuple(shape)} {which}", e)

    for dtype in dtypes if "linear" in sections else ():
        for shape in LINEAR_SHAPES:
            n, d, m = shape
            entry = {"shape": list(shape), "dtype": dtype.__name__}
            for mode, backward in (("forward", False), ("forward_backward", True)):
                cases = linear_cases(n, d, m, dtype, rng, backward)
                times = interleaved(cases, rounds, args.pause)
                flops = (6.0 if backward else 2.0) * n * d * m
                entry[mode] = {"seconds": times, "gflops": {k: flops / t / 1e9 for k, t in times.items()}}
            result["linear_relu"].append(entry)
            print(f"linear+relu {dtype.__name__} {shape}: " + ", ".join(
                f"{mode} " + " ".join(f"{k} {v * 1e3:.2f}ms" for k, v in entry[mode]["seconds"].items())
                for mode in ("forward", "forward_backward")), flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    path = out_dir / f"gemm-{time.strftime('%Y%m%d-%H%M%S')}{args.tag}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}\n")
    print(markdown(result))


def _model_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def markdown(result) -> str:
    lines = []
    for key, title in (("gemm", "GEMM (n, n, n)"), ("training_gemm", "GEMMs of a Linear layer at training shapes")):
        entries = result.get(key) or []
        if not entries:
            continue
        names = [k for k in entries[0]["gflops"] if not k.startswith("probe-")]
        probes = [k for k in entries[0]["gflops"] if k.startswith("probe-")]
        lines += [f"### {title}: GFLOP/s (% of the FMA probe of the same code path, all cores, same run)", "",
                  "| dtype | shape | " + " | ".join(probes + names) + " | load avg |",
                  "|---|---|" + "---|" * (len(probes) + len(names) + 1)]
        for e in entries:
            shape = f"{e['n']}^3" if "n" in e else f"{tuple(e['shape'])} {e['gemm']}"
            g, fr = e["gflops"], e["peak_fraction"]
            cells = [f"{g[k]:.0f}" for k in probes]
            cells += [f"{g[k]:.0f} ({100 * fr[k]:.0f}%)" if k in g else "-" for k in names]
            lines.append(f"| {e['dtype']} | {shape} | " + " | ".join(cells) + f" | {e['load_average'][0]:.1f} |")
        lines.append("")
    if result.get("linear_relu"):
        lines.append(_markdown_linear(result))
    return "\n".join(lines)


def _markdown_linear(result) -> str:
    best = [i for i in result["machine"]["isas"]][:1]
    main_impl = f"fastnn-{best[0]}" if best else "fastnn-numba"
    lines = ["### Linear + ReLU (time ratio = fastnn time / peer time; lower is better)", "",
             "| dtype | (N, D, M) | pass | fastnn ms | GFLOP/s | numpy ms | torch ms | / numpy | / torch "
             "| numba / cpp |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in result["linear_relu"]:
        for mode in ("forward", "forward_backward"):
            s, g = e[mode]["seconds"], e[mode]["gflops"]
            t = s[main_impl]
            tt = s.get("torch", float("nan"))
            lines.append(f"| {e['dtype']} | {tuple(e['shape'])} | {mode} | {t * 1e3:.2f} | {g[main_impl]:.0f} | "
                         f"{s['numpy'] * 1e3:.2f} | {tt * 1e3:.2f} | {t / s['numpy']:.2f} | {t / tt:.2f} | "
                         f"{s['fastnn-numba'] / t:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
