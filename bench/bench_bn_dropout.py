"""BatchNorm and dropout: fastnn (C++, Numba) vs PyTorch CPU, in GB/s against
the machine's measured STREAM bandwidth, same process, interleaved.

Minimal bytes counted: BatchNorm forward reads x and writes y, backward reads
dy and x and writes dx (5 arrays for forward+backward); dropout reads x and
writes y (2 arrays).

    python bench/bench_bn_dropout.py
"""
from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402


def bn_reference(x, gamma, beta):
    x = x.astype(np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - x.mean(axes).reshape(shape)) / np.sqrt(x.var(axes).reshape(shape) + 1e-5) * gamma.reshape(shape) \
        + beta.reshape(shape)


def bench_batchnorm(shape, torch, rng):
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y = np.empty_like(x)
    dx = np.empty_like(x)
    dg, db = np.empty(c, np.float32), np.empty(c, np.float32)

    def ours():
        _, saved = fnn.ops.batchnorm(x, gamma, beta, rm, rv, training=True, out=y)
        fnn.ops.batchnorm_backward(dy, saved, gamma, dgamma=dg, dbeta=db, out=dx)

    cands = {}
    for name in ("cpp", "numba"):
        with fnn.backend.using(name):
            yy, _ = fnn.ops.batchnorm(x, gamma, beta, rm.copy(), rv.copy(), training=True)
            err = float(np.abs(yy - bn_reference(x, gamma, beta)).max())
            assert err < 1e-4, (name, err)

        def run(name=name):
            with fnn.backend.using(name):
                ours()
        cands[f"fastnn-{name}"] = run
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tdy = torch.from_numpy(dy)
        tg = torch.from_numpy(gamma.copy()).requires_grad_(True)
        tb = torch.from_numpy(beta.copy()).requires_grad_(True)
        trm, trv = torch.zeros(c), torch.ones(c)

        def theirs():
            out = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
            out.backward(tdy)
            tx.grad = tg.grad = tb.grad = None
        cands["torch"] = theirs
    return cands, 5 * x.nbytes


def bench_dropout(n, torch, rng):
    x = rng.standard_normal(n).astype(np.float32)
    y = np.empty_like(x)
    cands = {}
    for name in ("cpp", "numba"):
        with fnn.backend.using(name):
            out = fnn.ops.dropout(x, 0.5, 1234, 0)
            kept = out != 0
            assert abs(kept.mean() - 0.5) < 0.001, name
            assert np.allclose(out[kept], 2 * x[kept])

        def run(name=name):
            with fnn.backend.using(name):
                fnn.ops.dropout(x, 0.5, 1234, 0, out=y)
        cands[f"fastnn-{name}"] = run
    if torch is not None:
        tx = torch.from_numpy(x)
        cands["torch"] = lambda: torch.nn.functional.dropout(tx, 0.5, training=True)
    return cands, 2 * x.nbytes


def main():
    rng = np.random.default_rng(0)
    torch = harness.have_torch()
    bw = harness.stream_bandwidth()
    results = {"machine": harness.machine(), "stream_triad_GBps": bw, "cases": {}}
    table = [f"Memory-bound kernels, float32, {harness.machine()['threads']} threads; "
             f"STREAM triad {bw:.1f} GB/s", "",
             "| kernel | shape | fastnn C++ ms | GB/s | % of triad | Numba ms | PyTorch ms "
             "| C++ / PyTorch | Numba / C++ |",
             "|---|---|---|---|---|---|---|---|---|"]
    cases = [("BatchNorm1d fwd+bwd", (4096, 1024), bench_batchnorm),
             ("BatchNorm2d fwd+bwd", (64, 64, 32, 32), bench_batchnorm),
             ("dropout fwd", 1 << 24, bench_dropout)]
    for label, shape, fn in cases:
        cands, nbytes = fn(shape, torch, rng)
        t = harness.interleaved(cands, rounds=7, reps=3)
        ours = t["fastnn-cpp"]
        gbps = nbytes / ours / 1e9
        tt = t.get("torch")
        results["cases"][label] = {"shape": shape, "seconds": t, "bytes": nbytes, "GBps": gbps}
        table.append(f"| {label} | {shape} | {ours * 1e3:.2f} | {gbps:.1f} | {100 * gbps / bw:.0f}% | "
                     f"{t['fastnn-numba'] * 1e3:.2f} | {tt * 1e3 if tt else float('nan'):.2f} | "
                     f"{ours / tt if tt else float('nan'):.3f} | {t['fastnn-numba'] / ours:.2f} |")
    harness.write("bn_dropout", results, table)


if __name__ == "__main__":
    main()
