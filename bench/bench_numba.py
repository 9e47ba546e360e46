"""The Numba fallback vs the C++ kernels, hot path by hot path (issue 21): same
process, same inputs, validated first, then timed interleaved.

Each path is called through fastnn.ops with the backend switched by
``fnn.backend.using``. Validation: Numba's result against C++'s within the
documented cross-backend tolerance (dropout: bit-identical). Timing: a warm-up
(so Numba's compile time is excluded), then both backends in rotation, median of
many repetitions. Reported: milliseconds, Numba / C++ (the bar: 2x, 3x for the
conv-net kernels) and the figure that matters (GFLOP/s for GEMM and conv, GB/s
of minimal traffic for the memory-bound paths), with the load average of the
machine at the time.

Also the first-call cost of the fallback: a fresh process with
FASTNN_BACKEND=numba timing ``import fastnn`` and the first training step of the
default digits MLP (64-256-128-10, ReLU, Adam, batch 64), once with an empty
Numba cache (NUMBA_CACHE_DIR a new temporary directory) and once with it warm.

    python bench/bench_numba.py            # everything
    python bench/bench_numba.py bn1d adam  # only these paths (no compile-time runs)
    python bench/bench_numba.py --before HEAD [paths]   # also the Numba kernels of a git revision

``--before REV`` adds a third candidate to every path: each Numba kernel module
of git revision REV (``git show REV:fastnn/backend/numba/<module>.py``), loaded
over the current runtime and helpers and registered as backend "numba@REV", so a
before/after table comes from one interleaved run (same load for both). The
hand-written sections of results/numba.md (from its first "## " heading on) are
kept when the table is rewritten.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402
from fastnn.backend import registry  # noqa: E402
from fastnn.backend.codes import HYPER_FIELDS  # noqa: E402

BACKENDS = ["cpp", "numba"]   # plus "numba@REV" with --before REV
REV_HELPERS = ("conv_winograd",)   # helper modules --before REV also takes at REV
BAR = {"conv": 3.0, "conv_first": 3.0, "conv_32_64": 3.0, "conv_64": 3.0}   # the convolutions; everything else 2.0


def _both(fn):
    """{backend: result of fn() under that backend}."""
    out = {}
    for name in BACKENDS:
        with fnn.backend.using(name):
            out[name] = fn()
    return out


def _numba_at(rev):
    """Registers the Numba kernels of git revision ``rev`` as backend "numba@rev":
    each kernel module's source at rev, imported under a private name inside
    fastnn.backend.numba (so its relative imports bind the current runtime and
    helpers), its kernels looked up by the names the current package registers.
    A helper module listed in REV_HELPERS is taken at rev too, for the kernel
    modules of rev that import it (conv_winograd: conv.py's Winograd path)."""
    name = f"numba@{rev}"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    where = os.path.join(tempfile.gettempdir(), f"fastnn-bench-numba-{rev}")   # Numba's cache stays across runs
    os.makedirs(where, exist_ok=True)

    def load(mod):
        src = subprocess.run(["git", "show", f"{rev}:fastnn/backend/numba/{mod}.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout
        path = os.path.join(where, f"{mod}.py")
        if not os.path.exists(path) or open(path).read() != src:
            with open(path, "w") as out:
                out.write(src)
        spec = importlib.util.spec_from_file_location(f"fastnn.backend.numba._at_{mod}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    package = sys.modules["fastnn.backend.numba"]
    current = {mod: sys.modules[f"fastnn.backend.numba.{mod}"] for mod in REV_HELPERS}
    modules = {}
    try:
        for mod in REV_HELPERS:   # bound by the rev's kernel modules' "from . import mod" below
            old = load(mod)
            sys.modules[f"fastnn.backend.numba.{mod}"] = old
            setattr(package, mod, old)
        for op in registry.ops_of("numba"):
            fn = registry.lookup(op, "numba")
            mod = fn.__module__.rsplit(".", 1)[1]
            if mod not in modules:
                modules[mod] = load(mod)
            registry.register(name, op, getattr(modules[mod], fn.__name__))
    finally:
        for mod, module in current.items():
            sys.modules[f"fastnn.backend.numba.{mod}"] = module
            setattr(package, mod, module)
    registry.mark_loaded(name)
    return name


def _close(name, got, want, rtol, atol):
    for i, (g, w) in enumerate(zip(got, want)):
        if g is None and w is None:
            continue
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        err = np.abs(g - w) - (atol + rtol * np.abs(w))
        if not (np.all(np.isfinite(g)) and err.max() <= 0):
            raise AssertionError(f"{name}: numba output {i} differs from cpp by {np.abs(g - w).max():.3g}")


# --- the paths: each returns (validate(), run(), units of work, unit) ---------

def linear_relu(rng):
    n, d, m = 256, 1024, 1024
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = (rng.standard_normal((d, m)) / np.sqrt(d)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    dy = rng.standard_normal((n, m)).astype(np.float32)
    y, dx, dw, db, work = (np.empty((n, m), np.float32), np.empty((n, d), np.float32),
                           np.empty((d, m), np.float32), np.empty(m, np.float32), np.empty((n, m), np.float32))

    def run():
        _, saved = fnn.ops.linear_act(x, w, b, "relu", out=y)
        fnn.ops.linear_act_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=work)

    def validate():
        r = _both(lambda: (run(), (y.copy(), dx.copy(), dw.copy(), db.copy()))[1])
        _close("linear_relu", r["numba"], r["cpp"], 1e-4, 1e-4)
    return validate, run, 6.0 * n * d * m / 1e9, "GFLOP/s"


def conv_relu(rng, c=32, f=32, h=32):
    n = 64
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((f, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    dy = rng.standard_normal((n, f, h, h)).astype(np.float32)
    y, dz, dx = np.empty_like(dy), np.empty_like(dy), np.empty_like(x)
    dw, db = np.empty_like(w), np.empty_like(b)

    def run():
        _, saved = fnn.ops.conv2d(x, w, b, 1, 1, "relu", out=y)
        fnn.ops.conv2d_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=dz)

    def validate():
        r = _both(lambda: (run(), (y.copy(), dx.copy(), dw.copy(), db.copy()))[1])
        _close("conv_relu", r["numba"], r["cpp"], 1e-4, 1e-3)
    return validate, run, 6.0 * n * f * h * h * c * 9 / 1e9, "GFLOP/s"


def _outputs_close(name, run, out, rtol, atol):
    """validate(): run() on both backends, the arrays it leaves in ``out`` within tolerance."""
    def validate():
        r = _both(lambda: (run(), [v.copy() for v in out.values()])[1])
        _close(name, r["numba"], r["cpp"], rtol, atol)
    return validate


def conv_relu_first(rng):
    return conv_relu(rng, c=3, f=32, h=32)


def conv_relu_32_64(rng):
    return conv_relu(rng, c=32, f=64, h=16)


def conv_relu_64(rng):
    return conv_relu(rng, c=64, f=64, h=16)


def avgpool(rng):
    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((64, 32, 16, 16)).astype(np.float32)
    out = {}

    def run():
        out["y"], saved = fnn.ops.avg_pool2d(x, 2, 2, 0)
        out["dx"] = fnn.ops.avg_pool2d_backward(dy, saved)

    # forward reads x, writes y; backward reads dy, writes dx
    return _outputs_close("avgpool", run, out, 1e-6, 1e-6), run, (2 * x.nbytes + 2 * dy.nbytes) / 1e9, "GB/s"


def gelu(rng):
    x = rng.standard_normal((1024, 4096)).astype(np.float32) * 3
    dy = rng.standard_normal(x.shape).astype(np.float32)
    out = {}

    def run():
        out["y"] = fnn.ops.activation(x, "gelu", None)
        out["dx"] = fnn.ops.activation_backward(dy, x, out["y"], "gelu", None)[0]

    # forward reads x, writes y; backward reads dy, x, y, writes dx
    return _outputs_close("gelu", run, out, 1e-5, 1e-5), run, 6 * x.nbytes / 1e9, "GB/s"


def maxpool(rng):
    x = rng.standard_normal((64, 32, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((64, 32, 16, 16)).astype(np.float32)
    out = {}

    def run():
        out["y"], saved = fnn.ops.max_pool2d(x, 2, 2, 0)
        out["dx"] = fnn.ops.max_pool2d_backward(dy, saved)
        out["index"] = saved.index

    def validate():
        r = _both(lambda: (run(), (out["y"], out["index"], out["dx"]))[1])
        for got, want in zip(r["numba"], r["cpp"]):   # maxima, argmax and scatter: exact
            if not np.array_equal(got, want):
                raise AssertionError("maxpool: numba and cpp differ")
    # forward reads x, writes y and index; backward reads dy and index, writes dx
    return validate, run, (2 * x.nbytes + 4 * dy.nbytes) / 1e9, "GB/s"


def _batchnorm(shape, rng):
    c = shape[1]
    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 2, c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    dg, db = np.empty(c, np.float32), np.empty(c, np.float32)

    def run():
        _, saved = fnn.ops.batchnorm(x, gamma, beta, rm, rv, training=True, out=y)
        fnn.ops.batchnorm_backward(dy, saved, gamma, dgamma=dg, dbeta=db, out=dx)

    def validate():
        def once():
            rm[...], rv[...] = 0, 1
            run()
            return y.copy(), dx.copy(), dg.copy(), db.copy(), rm.copy(), rv.copy()
        r = _both(once)
        _close(f"batchnorm{shape}", r["numba"], r["cpp"], 1e-4, 1e-4)
    # forward reads x, writes y; backward reads dy, x (and y only with a fused act), writes dx
    return validate, run, 5 * x.nbytes / 1e9, "GB/s"


def bn2d(rng):
    return _batchnorm((64, 64, 32, 32), rng)


def bn1d(rng):
    return _batchnorm((4096, 1024), rng)


def dropout(rng):
    n = 1 << 24
    x = rng.standard_normal(n).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)

    def run():
        fnn.ops.dropout(x, 0.5, 1234, 17, out=y)
        fnn.ops.dropout_backward(x, 0.5, 1234, 17, out=dx)

    def validate():
        for offset in (0, 3, 2**32 - 5):
            r = _both(lambda: fnn.ops.dropout(x, 0.3, 0x123456789ABCDEF, offset))
            if not np.array_equal(r["numba"].view(np.uint32), r["cpp"].view(np.uint32)):
                raise AssertionError(f"dropout offset {offset}: numba and cpp differ")
    return validate, run, 2 * 2 * x.nbytes / 1e9, "GB/s"


def _optimizer(rule, hyper, rng):
    n, k = 10_000_000, 20
    seg = np.linspace(0, n, k + 1).astype(np.int64)   # ~20 tensors in one flat buffer
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    s10 = (rng.random(n) * 1e-3).astype(np.float32)
    s20 = (rng.random(n) * 1e-4).astype(np.float32)
    row = np.array([[hyper.get(f, 0.0) for f in HYPER_FIELDS]], np.float64)
    table = np.repeat(row, k, axis=0)
    table[:, HYPER_FIELDS.index("grad_scale")] = hyper.get("grad_scale", 1.0)
    p, s1, s2 = p0.copy(), s10.copy(), s20.copy()

    def run():
        fnn.ops.optim_step(rule, p, g, s1, s2, seg, table)

    def validate():
        def once():
            p[...], s1[...], s2[...] = p0, s10, s20
            run()
            return p.copy(), s1.copy(), s2.copy()
        r = _both(once)
        _close(rule, r["numba"], r["cpp"], 2e-6, 1e-7)
    per = {"adam": 28, "adamw": 28, "rmsprop": 20, "momentum": 20}[rule]   # bytes per parameter, minimal
    return validate, run, per * n / 1e9, "GB/s"


ADAM = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, bias_correction1=1 - 0.9**3,
            bias_correction2=1 - 0.999**3)


def adam(rng):
    return _optimizer("adam", dict(ADAM, weight_decay=1e-4), rng)


def adamw(rng):
    return _optimizer("adamw", dict(ADAM, weight_decay=1e-2), rng)


def rmsprop(rng):
    return _optimizer("rmsprop", dict(lr=1e-3, alpha=0.99, eps=1e-8), rng)


def sgd_momentum(rng):
    return _optimizer("momentum", dict(lr=1e-2, momentum=0.9, weight_decay=1e-4), rng)


PATHS = {  # key: (label, factory)
    "linear": ("Linear+ReLU (256, 1024, 1024) fwd+bwd", linear_relu),
    "conv": ("Conv2d 32->32 3x3+ReLU (64, 32, 32, 32) fwd+bwd", conv_relu),
    "conv_first": ("Conv2d 3->32 3x3+ReLU (64, 3, 32, 32) fwd+bwd", conv_relu_first),
    "conv_32_64": ("Conv2d 32->64 3x3+ReLU (64, 32, 16, 16) fwd+bwd", conv_relu_32_64),
    "conv_64": ("Conv2d 64->64 3x3+ReLU (64, 64, 16, 16) fwd+bwd", conv_relu_64),
    "maxpool": ("MaxPool2d 2x2 (64, 32, 32, 32) fwd+bwd", maxpool),
    "avgpool": ("AvgPool2d 2x2 (64, 32, 32, 32) fwd+bwd", avgpool),
    "gelu": ("GELU (erf) 4M elements fwd+bwd", gelu),
    "bn2d": ("BatchNorm2d (64, 64, 32, 32) fwd+bwd", bn2d),
    "bn1d": ("BatchNorm1d (4096, 1024) fwd+bwd", bn1d),
    "dropout": ("Dropout 16M elements fwd+bwd", dropout),
    "adam": ("Adam step, 10M params / 20 tensors", adam),
    "adamw": ("AdamW step, 10M params / 20 tensors", adamw),
    "rmsprop": ("RMSProp step, 10M params / 20 tensors", rmsprop),
    "sgd_momentum": ("SGD momentum step, 10M params / 20 tensors", sgd_momentum),
}


# --- first-call compile time -----------------------------------------------------

_FIRST_STEP = r"""
import time
t0 = time.perf_counter()
import numpy as np
import fastnn as fnn
t1 = time.perf_counter()
X, y = fnn.data.load_digits()
model = fnn.nn.Sequential(fnn.nn.Linear(64, 256, activation="relu", rng=0),
                          fnn.nn.Linear(256, 128, activation="relu", rng=1), fnn.nn.Linear(128, 10, rng=2))
trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=2e-3), seed=0)
t2 = time.perf_counter()
trainer.train_step(np.ascontiguousarray(X[:64]), np.ascontiguousarray(y[:64]))
t3 = time.perf_counter()
assert fnn.backend.current() == "numba", fnn.backend.current()
print(t1 - t0, t3 - t2)
"""


def compile_times() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, FASTNN_BACKEND="numba", NUMBA_CACHE_DIR=cache)
        out = {}
        for label in ("cold cache", "warm cache"):
            r = subprocess.run([sys.executable, "-c", _FIRST_STEP], env=env, capture_output=True, text=True,
                               check=True)
            imp, step = map(float, r.stdout.split())
            out[label] = {"import_s": imp, "first_step_s": step}
            print(f"{label}: import fastnn {imp:.2f} s, first training step {step:.2f} s", flush=True)
    return out


def _kept_notes() -> list[str]:
    """The hand-written sections of results/numba.md: from its first "## " heading on."""
    md = os.path.join(harness.RESULTS, "numba.md")
    if not os.path.exists(md):
        return []
    lines = open(md).read().splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return ["", *lines[first:]] if first < len(lines) else []


def main(argv):
    argv = list(argv)
    before = None
    if "--before" in argv:
        at = argv.index("--before")
        before = argv[at + 1]
        del argv[at:at + 2]
        BACKENDS.append(_numba_at(before))
    old = BACKENDS[2] if before else None
    keys = [a for a in argv if a in PATHS] or list(PATHS)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows, results = [], {"machine": harness.machine(), "paths": {}, "before": before}
    for key in keys:
        label, factory = PATHS[key]
        validate, run, work, unit = factory(rng)
        validate()
        cands = {}
        for name in BACKENDS:
            def call(name=name):
                with fnn.backend.using(name):
                    run()
            cands[name] = call
        t = harness.interleaved(cands, rounds=15, reps=3, warmup=3, pause=0.05)
        ratio = t["numba"] / t["cpp"]
        bar = BAR.get(key, 2.0)
        results["paths"][key] = {"label": label, "seconds": t, "ratio": ratio, "bar": bar,
                                 unit: {n: work / t[n] for n in BACKENDS}, "load_avg": os.getloadavg()[0]}
        then = f"{t[old] * 1e3:.2f} | {t[old] / t['cpp']:.2f} | " if old else ""
        if old:
            results["paths"][key]["ratio_before"] = t[old] / t["cpp"]
        rows.append(f"| {label} | {t['cpp'] * 1e3:.2f} | {then}{t['numba'] * 1e3:.2f} | {ratio:.2f} | {bar:.0f}x | "
                    f"{work / t['cpp']:.1f} | {work / t['numba']:.1f} {unit} | {os.getloadavg()[0]:.2f} |")
        print(rows[-1], flush=True)
    results["load_avg"] = {"before": load_before, "after": os.getloadavg()}
    head, rule = "| path | C++ ms | ", "|---|---|"
    if old:
        head += f"Numba {before} ms | {before} / C++ | "
        rule += "---|---|"
    table = [f"Numba fallback vs C++ kernels, {results['machine']['threads']} threads, {results['machine']['cpu']}; "
             f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
             f"(shared machine: medians of 15 interleaved rounds x 3 calls"
             f"{f'; Numba {before}: the kernels of git revision {before}, same run' if old else ''}).", "",
             head + "Numba ms | Numba / C++ | bar | C++ rate | Numba rate | load |",
             rule + "---|---|---|---|---|---|", *rows]
    partial = any(a in PATHS for a in argv)
    if not partial:
        results["compile"] = compile_times()
        table += ["", "First call with FASTNN_BACKEND=numba, fresh process (digits MLP 64-256-128-10, Adam, batch 64):",
                  "", "| Numba cache | import fastnn s | first training step s |", "|---|---|---|"]
        table += [f"| {k} | {v['import_s']:.2f} | {v['first_step_s']:.2f} |" for k, v in results["compile"].items()]
    if partial:              # a partial run: printed, not written over the full results
        print("\n".join(table))
    else:
        harness.write("numba", results, table + _kept_notes())


if __name__ == "__main__":
    main(sys.argv[1:])
