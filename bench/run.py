"""Run the benchmarks (what ``fastnn bench`` calls) and collect their tables.

    python bench/run.py                 # all of them
    python bench/run.py gemm optim      # a selection (names below)

Each benchmark validates, then times fastnn and its peers in one process and
writes bench/results/<name>.json and .md; this script also writes
bench/results/summary.md with every table. Unset OPENBLAS_CORETYPE in the
command when NumPy's timings should use its AVX-512 kernels.
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHES = {  # name -> module
    "gemm": "bench_gemm",
    "bn_dropout": "bench_bn_dropout",
    "optim": "bench_optim",
    "conv": "bench_conv",
    "train_step": "bench_train_step",
    "profile_step": "profile_step",
    "memory": "bench_memory",
    "digits_e2e": "bench_digits_e2e",
    "numba": "bench_numba",
    "augment": "bench_augment",
    "activation": "bench_activation",
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    unknown = [a for a in argv if a not in BENCHES]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHES)}")
    sys.path.insert(0, HERE)
    chosen = argv or list(BENCHES)
    from fastnn.backend import cpp
    best_isa = cpp._C.cpu_isa() if cpp._C is not None else None
    tables = []
    for name in chosen:
        path = os.path.join(HERE, BENCHES[name] + ".py")
        if not os.path.exists(path):
            print(f"-- {name}: {path} not present, skipped")
            continue
        print(f"== {name}")
        if best_isa is not None:
            cpp._C.set_cpu_isa(best_isa)  # a benchmark may have forced a narrower code path
        t0 = time.perf_counter()
        entry = importlib.import_module(BENCHES[name]).main
        # A benchmark with its own options gets none here (not run.py's arguments).
        entry([]) if inspect.signature(entry).parameters else entry()
        print(f"-- {name}: {time.perf_counter() - t0:.0f} s")
        md = os.path.join(HERE, "results", f"{name}.md")
        if os.path.exists(md):
            with open(md) as f:
                tables.append(f"### {name}\n\n" + f.read())
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "summary.md"), "w") as f:
        f.write("\n\n".join(tables))


if __name__ == "__main__":
    main()
