"""``fastnn bench --quick``: built-in microbenchmarks, no source checkout needed.

Each benchmark builds its inputs, checks fastnn's result against a NumPy
reference (float64 where the reference is arithmetic), and only then times
fastnn, NumPy and, when it is importable, PyTorch CPU: one process, a warm-up,
then the candidates in rotation for ``rounds`` rounds with a short pause
between libraries (idle BLAS/OpenMP workers stop spinning), the median round
reported. GEMM-shaped work is reported in GFLOP/s, memory-bound work in GB/s
(the bytes the operation must read and write at least once), with fastnn's
ratio to each peer. The full benchmarks, with the machine's ceilings, live in
bench/ of a checkout (see bench/README.md). Nothing here is timed by the tests.

Shapes: N batch, D in features, M out features, C channels; P parameters.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, NamedTuple

import numpy as np

from . import data, losses, nn, ops, optim
from .train import Trainer


class ValidationError(RuntimeError):
    """fastnn's result differs from the NumPy reference: the benchmark is not timed."""


class Case(NamedTuple):
    """One benchmark, ready to time: each callable does the work once."""
    size: str                     # the shape, for the table
    unit: str                     # "GFLOP/s" or "GB/s"
    work: float                   # GFLOP or GB per call
    fastnn: Callable[[], object]
    numpy: Callable[[], object]
    torch: Callable[[], object] | None


class Row(NamedTuple):
    """One line of the table: throughput in ``unit`` (higher is better)."""
    name: str
    size: str
    unit: str
    fastnn: float
    numpy: float
    torch: float | None
    seconds: float                # wall time of this benchmark, validation included


def _check(name: str, what: str, got, want, tol: float) -> None:
    """max |got - want| / max(|want|, 1e-30) <= tol, or ValidationError naming the output."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValidationError(f"{name}: {what} has shape {got.shape}, NumPy's has {want.shape}")
    err = float(np.max(np.abs(got - want))) / max(float(np.max(np.abs(want))), 1e-30)
    if not err <= tol:       # NaN fails too
        raise ValidationError(f"{name}: {what} differs from NumPy by {err:.3g} (relative), tolerance {tol:g}")


# --- the benchmarks -----------------------------------------------------------------
# Each takes (rng, torch or None) and returns a validated Case.

def _gemm(rng, torch) -> Case:
    """float32 x @ W through ops.linear_act(act="identity") vs numpy.matmul."""
    n = d = m = 1024
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((d, m), dtype=np.float32)
    y = np.empty((n, m), np.float32)
    y_np = np.empty((n, m), np.float32)
    ops.linear_act(x, w, None, "identity", out=y)
    _check("gemm", "x @ W", y, x.astype(np.float64) @ w.astype(np.float64), 1e-4)
    theirs = None
    if torch is not None:
        tx, tw, ty = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(np.empty((n, m), np.float32))
        theirs = lambda: torch.matmul(tx, tw, out=ty)  # noqa: E731
    return Case(f"{n}x{d}x{m}", "GFLOP/s", 2.0 * n * d * m / 1e9,
                lambda: ops.linear_act(x, w, None, "identity", out=y),
                lambda: np.matmul(x, w, out=y_np), theirs)


def _linear_relu(rng, torch) -> Case:
    """Linear+ReLU forward and backward (dx, dW, db): fused linear_act vs the NumPy composition."""
    n, d, m = 512, 1024, 1024
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = (rng.standard_normal((d, m), dtype=np.float32) / np.float32(math.sqrt(d)))
    b = rng.standard_normal(m, dtype=np.float32)
    dy = rng.standard_normal((n, m), dtype=np.float32)
    y, dw, db, dx, work = (np.empty(s, np.float32) for s in ((n, m), (d, m), (m,), (n, d), (n, m)))

    def ours():
        _, saved = ops.linear_act(x, w, b, "relu", out=y)
        return ops.linear_act_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=work)

    ours()
    x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
    z64 = x64 @ w64 + b
    dz64 = dy64 * (z64 > 0)
    for what, got, want in (("y", y, np.maximum(z64, 0)), ("dx", dx, dz64 @ w64.T), ("dW", dw, x64.T @ dz64),
                            ("db", db, dz64.sum(0))):
        _check("linear_relu", what, got, want, 1e-4)

    z, y_np, dz, dw_np, db_np, dx_np = (np.empty(s, np.float32)
                                        for s in ((n, m), (n, m), (n, m), (d, m), (m,), (n, d)))

    def numpy_step():
        np.matmul(x, w, out=z)
        np.add(z, b, out=z)
        np.maximum(z, 0, out=y_np)
        np.multiply(dy, z > 0, out=dz)
        np.matmul(x.T, dz, out=dw_np)
        dz.sum(0, out=db_np)
        np.matmul(dz, w.T, out=dx_np)

    theirs = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w.copy()).requires_grad_(True)
        tb = torch.from_numpy(b.copy()).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def theirs():
            ty = torch.relu(torch.addmm(tb, tx, tw))
            return torch.autograd.grad(ty, (tx, tw, tb), tdy)
    return Case(f"{n}x{d}x{m}", "GFLOP/s", 6.0 * n * d * m / 1e9, ours, numpy_step, theirs)


def _batchnorm(rng, torch) -> Case:
    """BatchNorm1d forward in training mode (batch statistics, running statistics updated)."""
    n, c = 4096, 256
    x = (rng.standard_normal((n, c), dtype=np.float32) * 3 + 1).astype(np.float32)
    gamma = rng.standard_normal(c, dtype=np.float32)
    beta = rng.standard_normal(c, dtype=np.float32)
    running_mean, running_var = np.zeros(c, np.float32), np.ones(c, np.float32)
    y = np.empty_like(x)
    ops.batchnorm(x, gamma, beta, running_mean, running_var, training=True, out=y)
    x64 = x.astype(np.float64)
    _check("batchnorm", "y", y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5) * gamma + beta, 1e-4)
    y_np = np.empty_like(x)
    eps = np.float32(1e-5)

    def numpy_forward():
        mean = x.mean(0)
        var = x.var(0)
        scale = gamma / np.sqrt(var + eps)
        np.subtract(x, mean, out=y_np)
        np.multiply(y_np, scale, out=y_np)
        np.add(y_np, beta, out=y_np)

    theirs = None
    if torch is not None:
        tx, tg, tb = torch.from_numpy(x), torch.from_numpy(gamma), torch.from_numpy(beta)
        trm, trv = torch.zeros(c), torch.ones(c)

        def theirs():
            with torch.no_grad():
                return torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True, momentum=0.1, eps=1e-5)
    return Case(f"{n}x{c}", "GB/s", 2.0 * x.nbytes / 1e9,
                lambda: ops.batchnorm(x, gamma, beta, running_mean, running_var, training=True, out=y),
                numpy_forward, theirs)


def _dropout(rng, torch) -> Case:
    """Inverted dropout, p = 0.5, of 4M float32 values (the mask drawn from a counter-based generator)."""
    n, p = 1 << 22, 0.5
    x = rng.uniform(0.5, 1.5, n).astype(np.float32)   # no zeros: a zero output means "dropped"
    y = np.empty_like(x)
    ops.dropout(x, p, seed=1234, out=y)
    kept = y != 0
    scale = np.float32(1.0 / (1.0 - p))
    _check("dropout", "kept values", y, np.where(kept, x * scale, np.float32(0)), 1e-6)
    sigma = math.sqrt(n * p * (1 - p))
    if abs(int(kept.sum()) - n * (1 - p)) > 6 * sigma:
        raise ValidationError(f"dropout: kept {int(kept.sum())} of {n} values, expected {n * (1 - p):.0f} "
                              f"+- {6 * sigma:.0f} for p = {p}")
    _check("dropout", "backward mask", ops.dropout_backward(np.ones_like(x), p, seed=1234) != 0, kept, 0)
    np_rng = np.random.default_rng(0)
    y_np = np.empty_like(x)
    u = np.empty(n, np.float32)

    def numpy_dropout():
        np_rng.random(n, dtype=np.float32, out=u)
        np.multiply(x, u < (1 - p), out=y_np)
        np.multiply(y_np, scale, out=y_np)

    theirs = None
    if torch is not None:
        tx = torch.from_numpy(x)

        def theirs():
            with torch.no_grad():
                return torch.nn.functional.dropout(tx, p, training=True)
    return Case(f"{n}", "GB/s", 2.0 * x.nbytes / 1e9, lambda: ops.dropout(x, p, seed=1234, out=y),
                numpy_dropout, theirs)


def _adam(rng, torch) -> Case:
    """One fused Adam step over P = 1M float32 parameters in one flat buffer."""
    rows, cols = 1024, 1024
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    start = rng.standard_normal((rows, cols), dtype=np.float32)
    grad = rng.standard_normal((rows, cols), dtype=np.float32)
    param = nn.Parameter(start.copy(), "w")
    opt = optim.Adam([param], lr=lr, betas=(b1, b2), eps=eps)
    param.grad[...] = grad
    opt.step()
    g64 = grad.astype(np.float64)
    m1, v1 = (1 - b1) * g64, (1 - b2) * g64 * g64
    want = start - lr * (m1 / (1 - b1)) / (np.sqrt(v1 / (1 - b2)) + eps)
    _check("adam", "parameters after one step", param.data, want, 1e-5)

    p_np, g_np = start.reshape(-1).copy(), grad.reshape(-1)
    m, v, tmp = (np.zeros_like(p_np) for _ in range(3))
    t_np = [0]

    def numpy_step():
        t_np[0] += 1
        t = t_np[0]
        # in place, out= only: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr mhat / (sqrt(vhat) + eps)
        np.multiply(g_np, np.float32(1 - b1), out=tmp)
        np.multiply(m, np.float32(b1), out=m)
        np.add(m, tmp, out=m)
        np.multiply(g_np, g_np, out=tmp)
        np.multiply(tmp, np.float32(1 - b2), out=tmp)
        np.multiply(v, np.float32(b2), out=v)
        np.add(v, tmp, out=v)
        np.sqrt(v, out=tmp)
        np.multiply(tmp, np.float32(1 / math.sqrt(1 - b2 ** t)), out=tmp)
        np.add(tmp, np.float32(eps), out=tmp)
        np.divide(m, tmp, out=tmp)
        np.multiply(tmp, np.float32(lr / (1 - b1 ** t)), out=tmp)
        np.subtract(p_np, tmp, out=p_np)

    theirs = None
    if torch is not None:
        tp = torch.from_numpy(start.copy()).requires_grad_(True)
        tp.grad = torch.from_numpy(grad.copy())
        theirs = torch.optim.Adam([tp], lr=lr, betas=(b1, b2), eps=eps).step
    # read param, grad, m, v; write param, m, v
    return Case(f"{rows * cols}", "GB/s", 7.0 * start.nbytes / 1e9, opt.step, numpy_step, theirs)


def _train_step(rng, torch) -> Case:
    """One training step of the digits MLP 64-256-128-10 (ReLU, softmax cross-entropy, Adam), batch 128."""
    sizes, batch, lr = (64, 256, 128, 10), 128, 1e-3
    X, y = data.load_digits()
    xb, yb = np.ascontiguousarray(X[:batch]), np.ascontiguousarray(y[:batch])
    layers = [nn.Linear(a, b, activation="relu" if i < len(sizes) - 2 else None, rng=i)
              for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    model = nn.Sequential(*layers)
    loss = losses.SoftmaxCrossEntropy()
    trainer = Trainer(model, loss, optim.Adam(model.parameters(), lr=lr), seed=0)
    weights = [(lin.weight.data.astype(np.float64), lin.bias.data.astype(np.float64)) for lin in layers]

    # Validate the loss and every gradient of one forward/backward against NumPy in float64.
    got_loss = loss.forward(model.forward(xb), yb)
    model.backward(loss.backward())
    h, acts = xb.astype(np.float64), []
    for i, (w, b) in enumerate(weights):
        acts.append(h)
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    shifted = h - h.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    _check("train_step", "loss", got_loss, -logp[np.arange(batch), yb].mean(), 1e-5)
    dh = np.exp(logp)
    dh[np.arange(batch), yb] -= 1
    dh /= batch
    for i in range(len(weights) - 1, -1, -1):
        w, _ = weights[i]
        _check("train_step", f"layer {i} dW", layers[i].weight.grad, acts[i].T @ dh, 1e-4)
        _check("train_step", f"layer {i} db", layers[i].bias.grad, dh.sum(0), 1e-4)
        dh = (dh @ w.T) * (acts[i] > 0)

    reference = _NumpyMLP([(w.astype(np.float32), b.astype(np.float32)) for w, b in weights], lr)
    theirs = None
    if torch is not None:
        mods = []
        for i, (w, b) in enumerate(weights):
            lin = torch.nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w.T.astype(np.float32)))
                lin.bias.copy_(torch.from_numpy(b.astype(np.float32)))
            mods += [lin, torch.nn.ReLU()] if i < len(weights) - 1 else [lin]
        tmodel = torch.nn.Sequential(*mods)
        topt = torch.optim.Adam(tmodel.parameters(), lr=lr)
        tx, ty = torch.from_numpy(xb), torch.from_numpy(yb)

        def theirs():
            topt.zero_grad()
            tloss = torch.nn.functional.cross_entropy(tmodel(tx), ty)
            tloss.backward()
            topt.step()
    flops = 6.0 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return Case(f"{'-'.join(map(str, sizes))} x{batch}", "GFLOP/s", flops / 1e9,
                lambda: trainer.train_step(xb, yb), lambda: reference.step(xb, yb), theirs)


class _NumpyMLP:
    """The digits MLP written in NumPy float32: ReLU hidden layers, softmax cross-entropy, Adam."""

    def __init__(self, weights, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params = [a.copy() for wb in weights for a in wb]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.lr, (self.b1, self.b2), self.eps, self.t = lr, betas, eps, 0

    def step(self, x, y) -> float:
        ws = self.params[0::2]
        bs = self.params[1::2]
        acts, h = [], x
        for i, (w, b) in enumerate(zip(ws, bs)):
            acts.append(h)
            h = h @ w + b
            if i < len(ws) - 1:
                h = np.maximum(h, 0)
        h -= h.max(1, keepdims=True)
        p = np.exp(h)
        p /= p.sum(1, keepdims=True)
        loss = -float(np.log(p[np.arange(len(y)), y]).mean())
        dh = p
        dh[np.arange(len(y)), y] -= 1
        dh /= np.float32(len(y))
        grads = [None] * len(self.params)
        for i in range(len(ws) - 1, -1, -1):
            grads[2 * i], grads[2 * i + 1] = acts[i].T @ dh, dh.sum(0)
            if i:
                dh = (dh @ ws[i].T) * (acts[i] > 0)
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p_, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= np.float32(self.b1)
            m += np.float32(1 - self.b1) * g
            v *= np.float32(self.b2)
            v += np.float32(1 - self.b2) * g * g
            p_ -= np.float32(self.lr / c1) * m / (np.sqrt(v / np.float32(c2)) + np.float32(self.eps))
        return loss


# name -> (what it measures, setup)
BENCHMARKS: dict[str, tuple[str, Callable[[np.random.Generator, object], Case]]] = {
    "gemm": ("float32 GEMM x @ W (linear_act, identity) vs numpy.matmul", _gemm),
    "linear_relu": ("Linear+ReLU forward and backward (fused linear_act)", _linear_relu),
    "batchnorm": ("BatchNorm1d forward, training mode", _batchnorm),
    "dropout": ("inverted dropout p=0.5, forward", _dropout),
    "adam": ("one fused Adam step over 1M parameters", _adam),
    "train_step": ("one training step of the digits MLP (forward, loss, backward, Adam)", _train_step),
}


def _median_seconds(candidates: dict, rounds: int, min_seconds: float = 0.02, pause: float = 0.02) -> dict:
    """{name: fn} -> {name: median seconds per call}. Two warm-up calls each, then
    enough calls per round for ``min_seconds``, the candidates in rotation."""
    reps = {}
    for name, fn in candidates.items():
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, math.ceil(min_seconds / max(time.perf_counter() - t0, 1e-7)))
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            time.sleep(pause)
            n = reps[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(v) for name, v in samples.items()}


def torch_or_none():
    """PyTorch when it is importable (an optional peer; never installed by fastnn), else None."""
    try:
        import torch
    except (ImportError, OSError):     # not installed, or a broken install: time without it
        return None
    return torch


def run(names=None, rounds: int = 5, threads: int | None = None, say=print, torch=None) -> list[Row]:
    """Validate and time the chosen benchmarks (all by default), in BENCHMARKS order.

    say(line) receives a progress line per benchmark; torch: the module to use as
    the PyTorch peer, or None. Raises ValidationError if fastnn disagrees with NumPy."""
    names = list(BENCHMARKS) if not names else list(names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)
    rows = []
    for i, name in enumerate(names, 1):
        what, setup = BENCHMARKS[name]
        say(f"[{i}/{len(names)}] {name}: {what} ...")
        t0 = time.perf_counter()
        case = setup(np.random.default_rng(i), torch)
        candidates = {"fastnn": case.fastnn, "numpy": case.numpy}
        if case.torch is not None:
            candidates["torch"] = case.torch
        seconds = _median_seconds(candidates, rounds)
        rate = {k: case.work / s for k, s in seconds.items()}
        rows.append(Row(name, case.size, case.unit, rate["fastnn"], rate["numpy"], rate.get("torch"),
                        time.perf_counter() - t0))
    return rows


def table(rows: list[Row]) -> str:
    """The results as an aligned text table; ratios are fastnn's throughput over the peer's."""
    head = ["benchmark", "size", "unit", "fastnn", "numpy", "vs numpy", "torch", "vs torch"]
    lines = [head]
    for r in rows:
        lines.append([r.name, r.size, r.unit, f"{r.fastnn:.1f}", f"{r.numpy:.1f}", f"{r.fastnn / r.numpy:.2f}x",
                      "-" if r.torch is None else f"{r.torch:.1f}",
                      "-" if r.torch is None else f"{r.fastnn / r.torch:.2f}x"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for line in lines:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


__all__ = ["BENCHMARKS", "Case", "Row", "ValidationError", "run", "table", "torch_or_none"]
