"""FMA-peak probe: the floating-point ceiling of this machine per fastnn CPU
code path (generic, avx2, avx512), on one core and on all cores.

bench/fma_peak.cpp is compiled here with g++ once per path (with that path's
instruction-set flags) into a small shared library, cached under the system
temporary directory by a hash of source and flags, and loaded with ctypes, so
the probe runs in the calling process: bench_gemm.py times it interleaved with
the GEMMs it reports as a fraction of it (same run, same load).

    python bench/fma_peak.py              # table: GFLOP/s per path, 1 core and all cores
    python bench/fma_peak.py --reps 15
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).with_name("fma_peak.cpp")
# The flags of csrc/cpu/CMakeLists.txt for each code path (the probe needs only the FMA part).
FLAGS = {"generic": [], "avx2": ["-mavx2", "-mfma"], "avx512": ["-mavx512f", "-mavx2", "-mfma"]}
PATHS = tuple(FLAGS)


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def runnable_paths() -> list:
    """The code paths this processor can run (generic always)."""
    flags = cpu_flags()
    paths = ["generic"]
    if {"avx2", "fma"} <= flags:
        paths.append("avx2")
    if {"avx512f", "avx2", "fma"} <= flags:
        paths.append("avx512")
    return paths


def build(path: str) -> Path:
    """Compile the probe for one code path; returns the shared library (cached)."""
    if path not in FLAGS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"the FMA probe needs a C++ compiler: {cxx!r} not found (set CXX)")
    cmd = [cxx, "-O2", "-fopenmp", "-fPIC", "-shared", *FLAGS[path]]
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(cmd).encode()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / f"fastnn-fma-peak-{os.getuid()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / f"fma_peak_{path}_{key}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([*cmd, "-o", str(tmp), str(SOURCE)], check=True, capture_output=True, text=True)
        os.replace(tmp, lib)
    return lib


class Probe:
    """One code path's probe, loaded in this process."""

    def __init__(self, path: str, seconds: float = 0.03):
        self.path = path
        self.lib = ctypes.CDLL(str(build(path)))
        self.lib.fma_peak_path.restype = ctypes.c_char_p
        self.lib.fma_peak_chains.restype = ctypes.c_int
        self.lib.fma_peak_flops.restype = ctypes.c_double
        self.lib.fma_peak_flops.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.lib.fma_peak_seconds.restype = ctypes.c_double
        self.lib.fma_peak_seconds.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
        self.lib.fma_peak_iters.restype = ctypes.c_long
        self.lib.fma_peak_iters.argtypes = [ctypes.c_int, ctypes.c_double]
        assert self.lib.fma_peak_path().decode() == path, "probe built for the wrong path"
        self.chains = self.lib.fma_peak_chains()
        self._iters = {fp64: self.lib.fma_peak_iters(fp64, seconds) for fp64 in (0, 1)}

    def gflops(self, threads: int, dtype: str = "float32") -> float:
        """One measurement: GFLOP/s of `threads` threads of independent FMA chains."""
        fp64 = int(dtype in ("float64", "fp64"))
        it = self._iters[fp64]
        return self.lib.fma_peak_flops(threads, fp64, it) / self.lib.fma_peak_seconds(threads, fp64, it) / 1e9

    def case(self, threads: int, dtype: str = "float32"):
        """(zero-argument callable, its FLOPs): for timing the probe like any other case."""
        fp64 = int(dtype in ("float64", "fp64"))
        it = self._iters[fp64]
        return (lambda: self.lib.fma_peak_seconds(threads, fp64, it)), self.lib.fma_peak_flops(threads, fp64, it)


def probe(paths=None, threads=None, reps: int = 9, pause: float = 0.05) -> dict:
    """{path: {dtype: {"1": GFLOP/s, "all": GFLOP/s, "1_max": .., "all_max": ..}}}: medians
    (and best) of `reps` interleaved measurements; `threads` defaults to all CPUs."""
    threads = threads or os.cpu_count()
    probes = [Probe(p) for p in (paths or runnable_paths())]
    samples = {(p.path, dt, t): [] for p in probes for dt in ("float32", "float64") for t in (1, threads)}
    for pr in probes:  # warm-up: thread start, AVX frequency licence
        pr.gflops(threads)
    for _ in range(reps):
        for (path, dt, t), v in samples.items():
            time.sleep(pause)
            v.append(next(p for p in probes if p.path == path).gflops(t, dt))
    out = {}
    for (path, dt, t), v in samples.items():
        key = "1" if t == 1 else "all"
        d = out.setdefault(path, {}).setdefault(dt, {})
        d[key] = statistics.median(v)
        d[key + "_max"] = max(v)
    out["threads"] = threads
    return out


def table(result: dict) -> str:
    t = result["threads"]
    lines = [f"| path | dtype | 1 core GFLOP/s (best) | {t} cores GFLOP/s (best) |", "|---|---|---|---|"]
    for path, per in result.items():
        if path == "threads":
            continue
        for dt, d in per.items():
            lines.append(f"| {path} | {dt} | {d['1']:.0f} ({d['1_max']:.0f}) | {d['all']:.0f} ({d['all_max']:.0f}) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--paths", type=str, default=",".join(runnable_paths()))
    args = ap.parse_args()
    res = probe(args.paths.split(","), reps=args.reps)
    print(f"FMA peak, median (best) of {args.reps} interleaved runs; load average {os.getloadavg()[0]:.2f}")
    print(table(res))


if __name__ == "__main__":
    main()
