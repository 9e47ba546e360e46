"""Where the host time of a GPU training step goes: cProfile of fastnn's
Trainer.train_step on CuPy arrays (the MLP and the ConvNet of bench_gpu.py),
and the host cost of a few primitives, each issued many times with the GPU
left to catch up (so the figure is Python + launch, not kernel time).

    python bench/gpu_host_profile.py [--steps 100] [--top 30]

A device synchronization shows up as time inside the call that waits (a
binding that reads a device scalar, cupy's __float__).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import numpy as np

import fastnn as fnn
from fastnn import _validate as V
from fastnn import ops
from fastnn.cli import _build_convnet


def per_call_us(fn, calls=500):
    import cupy as cp
    cp.cuda.runtime.deviceSynchronize()
    for _ in range(10):
        fn()
    cp.cuda.runtime.deviceSynchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    cp.cuda.runtime.deviceSynchronize()
    return (t1 - t0) / calls * 1e6


def primitives():
    import cupy as cp
    x = cp.random.standard_normal((256, 1024), dtype=np.float32)
    w = cp.random.standard_normal((1024, 1024), dtype=np.float32) * 0.03
    b = cp.random.standard_normal(1024, dtype=np.float32)
    y = cp.empty((256, 1024), np.float32)
    g = cp.random.standard_normal(2_000_000, dtype=np.float32)
    out = cp.empty(1, np.float64)
    a16, c16 = cp.random.standard_normal((16, 16), dtype=np.float32), cp.empty((16, 16), np.float32)
    from fastnn.backend.cuda import _cuda
    rows = {
        "cp.empty((256, 1024))": lambda: cp.empty((256, 1024), np.float32),
        "V.float_array(cupy x)": lambda: V.float_array(x, "x", ndim=2),
        "ops._kernel lookup": lambda: ops._kernel("linear_act_forward", x),
        "ops.linear_act(out=y), relu": lambda: ops.linear_act(x, w, b, "relu", out=y),
        "ops.linear_act (fresh out), relu": lambda: ops.linear_act(x, w, b, "relu"),
        "ops.activation relu": lambda: ops.activation(x, "relu", out=y),
        "cp.dot(g, g) (no read)": lambda: cp.dot(g, g),
        "float(cp.dot(g, g)) (sync)": lambda: float(cp.dot(g, g)),
        "cp.cuda.Stream.null.synchronize() idle": lambda: cp.cuda.get_current_stream().synchronize(),
        "_cuda.device_count() (a pybind11 call)": lambda: _cuda.device_count(),
        "_cuda.act_forward(x, y) (2 arrays, 1 launch)": lambda: _cuda.act_forward(x, y, 1, 0.0),
        "_cuda.sum_squares(g, out)": lambda: _cuda.sum_squares(g, out),
        "_cuda.gemm 16x16x16 (cuBLASLt host cost)": lambda: _cuda.gemm(a16, a16, c16, False, False, 0.0),
        "_cuda.linear_act_forward relu (binding only)": lambda: _cuda.linear_act_forward(x, w, b, y, None, 1, 0.0),
    }
    print("\nhost microseconds per call (the GPU left to catch up):")
    for name, fn in rows.items():
        print(f"  {name:42s} {per_call_us(fn):8.1f}")


def profile_step(name, model, x, y, steps, top):
    import cupy as cp
    model.set_input_grad(False)
    model.to("cuda")
    opt = fnn.optim.Adam(model.parameters(), lr=1e-3)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt)
    x, y = cp.asarray(x), cp.asarray(y)
    for _ in range(5):
        trainer.train_step(x, y)
    cp.cuda.runtime.deviceSynchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(x, y)
    cp.cuda.runtime.deviceSynchronize()
    wall = (time.perf_counter() - t0) / steps * 1e6
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        trainer.train_step(x, y)
    cp.cuda.runtime.deviceSynchronize()
    prof.disable()
    print(f"\n=== {name}: {wall:.0f} us per step (wall, no profiler)")
    for key in ("tottime", "cumtime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(top)
        text = s.getvalue()
        print(text[text.find("   ncalls"):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    fnn.manual_seed(0)
    mlp = fnn.nn.Sequential(fnn.nn.Linear(784, 1024, activation="relu", init="he_normal"),
                            fnn.nn.Linear(1024, 1024, activation="relu", init="he_normal"),
                            fnn.nn.Linear(1024, 10))
    profile_step("MLP 784-1024-1024-10, batch 256", mlp, rng.standard_normal((256, 784), np.float32),
                 rng.integers(0, 10, 256), args.steps, args.top)
    conv = _build_convnet(fnn, (3, 32, 32), 10, np.float32)
    profile_step("ConvNet, batch 64", conv, rng.standard_normal((64, 3, 32, 32), np.float32),
                 rng.integers(0, 10, 64), args.steps, args.top)
    primitives()


if __name__ == "__main__":
    main()
