"""fastnn's CUDA backend vs PyTorch CUDA (and CuPy/cuBLAS as the ceiling), one process,
interleaved, warm-up first, medians of CUDA-event timings.

What is measured (float32 unless said; fresh random non-zero inputs):

- ceiling: device-to-device copy bandwidth, a CuPy copy of a 2 GiB buffer (512 MiB with
  --quick), read + write bytes counted: the roof of every memory-bound row;
- Linear + activation forward + backward (dx, dweight, dbias) at (N, D, M) = (4096, 4096,
  4096) and (256, 1024, 1024), relu and gelu: fastnn ops.linear_act(+_backward) vs torch
  F.linear + activation + autograd; FP32 and TF32 (fastnn set_allow_tf32(True) vs
  torch.backends.cuda.matmul.allow_tf32 = True); TFLOP/s = 6 N D M / t, % of the same
  three GEMMs through CuPy (cuBLAS) in the same mode;
- BatchNorm2d training forward + backward at (256, 64, 32, 32): GB/s counting the minimal
  traffic (forward reads x and writes y, backward reads x and dy and writes dx: 5 tensors),
  % of the copy bandwidth;
- dropout forward over 64M elements (16M with --quick): read x + write y;
- Adam over 10M and 100M parameters (10M only with --quick): fastnn ops.optim_step vs
  torch.optim.Adam(fused=True).step(); bytes = param, grad, 2 states read + param, 2 states
  written;
- an MLP training step at batch 256, 784-1024-1024-10 relu, softmax cross-entropy, Adam
  (forward, loss, backward, step): fastnn Trainer.train_step vs torch eager (fused Adam),
  same initial weights (fastnn.interop.to_torch);
- Conv2d 32 -> 64, 3x3, pad 1 + ReLU forward + backward at (64, 32, 32, 32) (bench_conv.py's
  shape), and the training step of the ConvNet of ``fastnn train --model convnet``
  (fastnn.cli._build_convnet, bench_conv.py's step) at batch 64 on 3x32x32.

Each row is validated against torch (or the float64 definition) before it is timed, and
each benchmark runs in its own try/except: a failure prints its error, the rest still run.
Timing: every candidate is warmed up, then rounds x (reps calls between two CUDA events on
the library's current stream, synchronized), candidates in rotation; the median per call.

    python bench/bench_gpu.py [--out DIR] [--quick]     # -> DIR/gpu.md and DIR/gpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np

import fastnn as fnn
from fastnn import ops
from fastnn.backend import cuda as cuda_backend
from fastnn.backend.codes import HYPER_FIELDS
from fastnn.cli import _build_convnet

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# --- timing ---------------------------------------------------------------------------------

class Timer:
    """Median seconds per call of interleaved candidates, timed with CUDA events.

    A candidate is (library, fn): "torch" candidates are bracketed by torch.cuda events on
    torch's current stream, the others by CuPy events on CuPy's current stream."""

    def __init__(self, cp, torch, rounds, reps):
        self.cp, self.torch, self.rounds, self.reps = cp, torch, rounds, reps

    def _once(self, lib, fn, reps):
        if lib == "torch":
            start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            self.torch.cuda.synchronize()
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / reps
        stream = self.cp.cuda.get_current_stream()
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        self.cp.cuda.runtime.deviceSynchronize()
        start.record(stream)
        for _ in range(reps):
            fn()
        end.record(stream)
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end) / 1e3 / reps

    def run(self, candidates: dict, reps=None, rounds=None) -> dict:
        """{name: (lib, fn)} -> {name: median seconds per call}."""
        reps = reps or self.reps
        rounds = rounds or self.rounds
        for lib, fn in candidates.values():   # warm-up: allocations, cuBLAS heuristics, JIT
            for _ in range(2):
                fn()
            self._once(lib, fn, 1)
        samples = {name: [] for name in candidates}
        for _ in range(rounds):
            for name, (lib, fn) in candidates.items():
                samples[name].append(self._once(lib, fn, reps))
        return {name: statistics.median(v) for name, v in samples.items()}


def rel_err(a, b) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- the benchmarks ------------------------------------------------------------------------

class Bench:
    def __init__(self, cp, torch, quick):
        self.cp, self.torch, self.quick = cp, torch, quick
        self.timer = Timer(cp, torch, rounds=5 if quick else 9, reps=3 if quick else 5)
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.copy_gbs = float("nan")
        self.rng = np.random.default_rng(0)

    # helpers
    def randn(self, shape, scale=1.0, dtype=np.float32):
        """Fresh random normal values (never exactly zero in practice) on the GPU."""
        cp = self.cp
        return (cp.random.standard_normal(shape, dtype=np.float32) * scale).astype(dtype, copy=False)

    def t(self, a):
        """A torch view of a CuPy array (zero copy, DLPack)."""
        return self.torch.from_dlpack(a)

    def row(self, op, shape, times, fastnn_key="fastnn", torch_key="torch", metric=None, unit="",
            ceiling=None, note=""):
        f = times.get(fastnn_key)
        tt = times.get(torch_key)
        value = metric(f) if (metric is not None and f) else None
        pct = 100.0 * value / ceiling if (value is not None and ceiling) else None
        r = {"op": op, "shape": shape, "fastnn_ms": f * 1e3 if f else None,
             "torch_ms": tt * 1e3 if tt else None, "speed_vs_torch": (tt / f) if (f and tt) else None,
             "metric": value, "unit": unit, "pct_of_ceiling": pct, "note": note}
        self.rows.append(r)
        print(f"  {op} {shape}: fastnn {_ms(r['fastnn_ms'])} ms, torch {_ms(r['torch_ms'])} ms"
              + (f", {value:,.1f} {unit}" if value is not None else "")
              + (f" ({pct:.0f}% of ceiling)" if pct is not None else ""), flush=True)
        return r

    # 1. the ceiling
    def copy_bandwidth(self):
        cp = self.cp
        nbytes = (512 if self.quick else 2048) << 20
        src = cp.random.random(nbytes // 4, dtype=np.float32) + 1
        dst = cp.empty_like(src)
        t = self.timer.run({"cupy": ("cupy", lambda: cp.copyto(dst, src))}, reps=3)["cupy"]
        assert bool((dst == src).all())
        self.copy_gbs = 2 * nbytes / t / 1e9
        self.rows.append({"op": "copy (CuPy, ceiling)", "shape": f"{nbytes >> 20} MiB", "fastnn_ms": None,
                          "torch_ms": None, "speed_vs_torch": None, "cupy_ms": t * 1e3, "metric": self.copy_gbs,
                          "unit": "GB/s", "pct_of_ceiling": 100.0, "note": "read + write bytes"})
        print(f"  device copy: {self.copy_gbs:,.0f} GB/s ({t * 1e3:.2f} ms for {nbytes >> 20} MiB)", flush=True)

    # 2. Linear + activation
    def linear_act(self, n, d, m, act, tf32):
        cp, torch = self.cp, self.torch
        cuda_backend.set_allow_tf32(tf32)
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            x = self.randn((n, d))
            w = self.randn((d, m), 1.0 / math.sqrt(d))
            b = self.randn((m,))
            dy = self.randn((n, m))
            y, z = cp.empty((n, m), np.float32), cp.empty((n, m), np.float32)
            dx, dw, db = cp.empty((n, d), np.float32), cp.empty((d, m), np.float32), cp.empty(m, np.float32)
            work = cp.empty((n, m), np.float32)

            def fastnn_step():
                _, saved = ops.linear_act(x, w, b, act, out=y, z_out=z)
                ops.linear_act_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=work)

            # CuPy (cuBLAS) running the same three GEMMs in the same mode: the ceiling of this form.
            gy, gdx, gdw = cp.empty((n, m), np.float32), cp.empty((n, d), np.float32), cp.empty((d, m), np.float32)

            def cupy_gemms():
                cp.matmul(x, w, out=gy)
                cp.matmul(dy, w.T, out=gdx)
                cp.matmul(x.T, dy, out=gdw)

            cands = {"fastnn": ("cupy", fastnn_step), "cupy": ("cupy", cupy_gemms)}
            gemm_lib = "CuPy"
            if tf32 and torch is not None:
                # CuPy's matmul does not take PyTorch's TF32 switch: the TF32 ceiling is torch.matmul's.
                tgx, tgw, tgdy = self.t(x), self.t(w), self.t(dy)

                def torch_gemms():
                    torch.matmul(tgx, tgw)
                    torch.matmul(tgdy, tgw.T)
                    torch.matmul(tgx.T, tgdy)
                cands["cupy"] = ("torch", torch_gemms)
                gemm_lib = "torch.matmul"
            fastnn_step()
            self.host_us(fastnn_step)
            if torch is not None:
                tx = self.t(x).clone().requires_grad_(True)
                tw = self.t(w).T.contiguous().requires_grad_(True)   # torch stores (out, in)
                tb = self.t(b).clone().requires_grad_(True)
                tdy = self.t(dy)
                f = torch.nn.functional.relu if act == "relu" else torch.nn.functional.gelu

                def torch_step():
                    tx.grad = tw.grad = tb.grad = None
                    f(torch.nn.functional.linear(tx, tw, tb)).backward(tdy)

                torch_step()
                torch.cuda.synchronize()
                tol = 2e-2 if tf32 else 1e-4
                ty = f(torch.nn.functional.linear(tx, tw, tb))
                rx, rw, rb = tx.grad, tw.grad, tb.grad
                if act == "relu":
                    # relu'(z) at a z within rounding of 0 depends on the GEMM's summation order
                    # (cuBLASLt's algorithm against torch's), and one such element moved dx, dw and
                    # db by 1.5e-3 once: the masks must agree away from the kink, and the gradients
                    # are checked against torch's autograd through fastnn's own mask.
                    tz = torch.nn.functional.linear(tx, tw, tb).detach()
                    mask = self.t(y) > 0
                    near = tz.abs() <= 1e-5 * float(tz.abs().max())
                    assert bool(((mask == (tz > 0)) | near).all()), "relu masks differ away from z = 0"
                    gx, gw, gb = (tx.detach().clone().requires_grad_(True), tw.detach().clone().requires_grad_(True),
                                  tb.detach().clone().requires_grad_(True))
                    (torch.nn.functional.linear(gx, gw, gb) * mask).backward(tdy)
                    rx, rw, rb = gx.grad, gw.grad, gb.grad
                errs = (rel_err(cp.asnumpy(y), ty.detach().cpu().numpy()),
                        rel_err(cp.asnumpy(dx), rx.cpu().numpy()),
                        rel_err(cp.asnumpy(dw), rw.T.cpu().numpy()),
                        rel_err(cp.asnumpy(db), rb.cpu().numpy()))
                assert max(errs) < tol, f"fastnn vs torch relative errors (y, dx, dw, db) {errs}"
                cands["torch"] = ("torch", torch_step)
            times = self.timer.run(cands)
            flops = 6.0 * n * d * m
            ceiling = flops / times["cupy"] / 1e12
            mode = "TF32" if tf32 else "FP32"
            self.row(f"linear+{act} fwd+bwd {mode}", f"({n}, {d}, {m})", times,
                     metric=lambda s: flops / s / 1e12, unit="TFLOP/s", ceiling=ceiling,
                     note=f"ceiling: the 3 GEMMs via {gemm_lib} {ceiling:.1f} TFLOP/s")
        finally:
            cuda_backend.set_allow_tf32(False)
            if torch is not None:
                torch.backends.cuda.matmul.allow_tf32 = False

    # 3. BatchNorm2d
    def batchnorm(self, shape):
        cp, torch = self.cp, self.torch
        c = shape[1]
        x = self.randn(shape, 2.0) + 0.5
        dy = self.randn(shape)
        gamma, beta = self.randn((c,)) * 0.1 + 1, self.randn((c,))
        rm, rv = cp.zeros(c, np.float32), cp.ones(c, np.float32)
        y, dx = cp.empty(shape, np.float32), cp.empty(shape, np.float32)
        dg, dbt = cp.empty(c, np.float32), cp.empty(c, np.float32)

        def fastnn_step():
            _, saved = ops.batchnorm(x, gamma, beta, rm, rv, training=True, out=y)
            ops.batchnorm_backward(dy, saved, gamma, dgamma=dg, dbeta=dbt, out=dx)

        fastnn_step()
        cands = {"fastnn": ("cupy", fastnn_step)}
        self.host_us(fastnn_step)
        graph = self.capture(fastnn_step)
        if graph is not None:   # the same six kernels replayed from a CUDA graph: GPU time without Python
            cands["fastnn_graph"] = ("cupy", lambda: graph.launch(cp.cuda.get_current_stream()))
        if torch is not None:
            tx = self.t(x).clone().requires_grad_(True)
            tg, tb = self.t(gamma).clone().requires_grad_(True), self.t(beta).clone().requires_grad_(True)
            trm, trv = self.t(rm).clone(), self.t(rv).clone()
            tdy = self.t(dy)

            def torch_step():
                tx.grad = tg.grad = tb.grad = None
                torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training=True).backward(tdy)

            torch_step()
            ty = torch.nn.functional.batch_norm(tx, trm.clone(), trv.clone(), tg, tb, training=True)
            errs = (rel_err(cp.asnumpy(y), ty.detach().cpu().numpy()), rel_err(cp.asnumpy(dx), tx.grad.cpu().numpy()),
                    rel_err(cp.asnumpy(dg), tg.grad.cpu().numpy()))
            assert max(errs) < 1e-4, f"fastnn vs torch relative errors (y, dx, dgamma) {errs}"
            cands["torch"] = ("torch", torch_step)
        times = self.timer.run(cands)
        # Bytes the kernels move: forward reads x for the statistics, then x again and writes y;
        # backward reads dy and x for its two reductions, then both again and writes dx (8
        # tensor passes; a one-pass minimum would be 5, which needs a channel's values on chip).
        nbytes = 8 * x.nbytes
        f = times.get("fastnn")
        five = f"; as 5 tensors (x, y; x, dy, dx): {5 * x.nbytes / f / 1e9:,.0f} GB/s" if f else ""
        self.row(f"BatchNorm{len(shape) - 2 or 1}d fwd+bwd", str(shape), times,
                 metric=lambda s: nbytes / s / 1e9, unit="GB/s",
                 ceiling=self.copy_gbs, note="bytes the two-pass kernels move (8 tensor passes)" + five)
        if "fastnn_graph" in times:
            self.row(f"BatchNorm{len(shape) - 2 or 1}d fwd+bwd, CUDA graph", str(shape), times,
                     fastnn_key="fastnn_graph", metric=lambda s: nbytes / s / 1e9, unit="GB/s",
                     ceiling=self.copy_gbs, note="fastnn's kernels replayed from a graph (no Python between "
                     "launches): the GPU time; torch column eager")

    def host_us(self, fn, calls=20):
        """Microseconds of host (Python + launch) time per call of fn, the GPU left to catch up:
        when this is near the timed figure, the row measures Python, not the kernels."""
        self.cp.cuda.runtime.deviceSynchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        self.cp.cuda.runtime.deviceSynchronize()
        us = (t1 - t0) / calls * 1e6
        print(f"  host time to issue one call: {us:.0f} us", flush=True)
        return us

    def capture(self, fn):
        """fn's kernels captured into a CUDA graph on a side stream, or None where capture fails."""
        cp = self.cp
        try:
            stream = cp.cuda.Stream(non_blocking=True)
            with stream:
                stream.begin_capture()
                try:
                    fn()
                finally:
                    graph = stream.end_capture()
            stream.synchronize()
            return graph
        except Exception as exc:  # noqa: BLE001  (a diagnostic row; the eager rows stand without it)
            print(f"  (CUDA graph capture failed: {type(exc).__name__}: {exc})", flush=True)
            return None

    # 4. dropout
    def dropout(self):
        cp, torch = self.cp, self.torch
        n = (16 if self.quick else 64) << 20
        x = self.randn((n,))
        y = cp.empty_like(x)
        ops.dropout(x, 0.5, 1234, 0, out=y)
        kept = float((y != 0).mean())
        assert abs(kept - 0.5) < 0.01 and bool(cp.allclose(y[y != 0], 2 * x[y != 0])), kept
        offset = [0]

        def fastnn_step():
            offset[0] += n
            ops.dropout(x, 0.5, 1234, offset[0], out=y)

        cands = {"fastnn": ("cupy", fastnn_step)}
        if torch is not None:
            tx = self.t(x)
            cands["torch"] = ("torch", lambda: torch.nn.functional.dropout(tx, 0.5, training=True))
        times = self.timer.run(cands)
        nbytes = 2 * x.nbytes
        self.row("dropout fwd", f"{n >> 20}M float32", times, metric=lambda s: nbytes / s / 1e9, unit="GB/s",
                 ceiling=self.copy_gbs, note="read x + write y (torch also writes its mask)")

    # 5. Adam
    def adam(self, n):
        cp, torch = self.cp, self.torch
        field = {k: i for i, k in enumerate(HYPER_FIELDS)}
        p = self.randn((n,))
        g = self.randn((n,)) * 1e-2
        m, v = cp.zeros(n, np.float32), cp.zeros(n, np.float32)
        seg_begin = np.array([0, n], np.int64)
        hyper = np.zeros((1, len(HYPER_FIELDS)))
        for k, val in (("lr", 1e-3), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8), ("bias_correction1", 0.1),
                       ("bias_correction2", 0.001), ("grad_scale", 1.0)):
            hyper[0, field[k]] = val
        p0 = cp.asnumpy(p[:1000]).astype(np.float64)
        g0 = cp.asnumpy(g[:1000]).astype(np.float64)
        ops.optim_step("adam", p, g, m, v, seg_begin, hyper)
        want = p0 - 1e-3 * (0.1 * g0 / 0.1) / (np.sqrt(0.001 * g0 * g0 / 0.001) + 1e-8)
        assert rel_err(cp.asnumpy(p[:1000]), want) < 1e-5, "fastnn Adam's first step"
        cands = {"fastnn": ("cupy", lambda: ops.optim_step("adam", p, g, m, v, seg_begin, hyper))}
        if torch is not None:
            tp = torch.nn.Parameter(self.t(p).clone())
            tp.grad = self.t(g).clone()
            topt = torch.optim.Adam([tp], lr=1e-3, fused=True)
            cands["torch"] = ("torch", topt.step)
        times = self.timer.run(cands)
        nbytes = 7 * 4 * n
        self.row("Adam step", f"{n / 1e6:g}M params", times, metric=lambda s: nbytes / s / 1e9, unit="GB/s",
                 ceiling=self.copy_gbs, note="p, g, m, v read; p, m, v written" + (
                     "; torch fused=True" if torch is not None else ""))

    # 6 and 7. training steps
    def _train_step(self, name, build, x_shape, classes, batch, lr=1e-3, check_loss=True):
        cp, torch = self.cp, self.torch
        fnn.manual_seed(0)
        model = build()
        model.set_input_grad(False)
        tmodel = fnn.interop.to_torch(model).cuda() if torch is not None else None
        model.to("cuda")
        opt = fnn.optim.Adam(model.parameters(), lr=lr)
        trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), opt)
        x = self.randn((batch,) + x_shape)
        y = cp.asarray(self.rng.integers(0, classes, batch))
        cands = {"fastnn": ("cupy", lambda: trainer.train_step(x, y))}
        if tmodel is not None:
            topt = torch.optim.Adam(tmodel.parameters(), lr=lr, fused=True)
            tx, ty = self.t(x), self.t(y)
            with torch.no_grad():
                first = float(torch.nn.functional.cross_entropy(tmodel(tx), ty))

            def torch_step_async():
                topt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(tmodel(tx), ty)
                loss.backward()
                topt.step()
                return loss

            # fastnn's train_step returns the step's loss as a float (the Trainer logs it and stops on
            # NaN): the like-for-like torch loop reads it too (loss.item(), one synchronization).
            cands["torch"] = ("torch", lambda: torch_step_async().item())
            cands["torch_async"] = ("torch", torch_step_async)
        loss = trainer.train_step(x, y)
        if tmodel is not None:
            print(f"  first-step loss: fastnn {loss:.6f}, torch {first:.6f}", flush=True)
            if check_loss:   # same weights, no dropout: the same loss
                assert abs(loss - first) < 1e-4 * max(1.0, abs(first)), f"first-step loss {loss} vs torch {first}"
        times = self.timer.run(cands, reps=3)
        self.host_us(lambda: trainer.train_step(x, y), calls=5)   # after the loss check and the warm-up
        self.row(f"{name} training step", f"batch {batch}", times, metric=lambda s: batch / s, unit="samples/s",
                 note="forward, loss, backward, Adam, the loss read back" + (
                     "; torch eager, fused Adam, loss.item()" if torch is not None else ""))
        if "torch_async" in times:
            self.row(f"{name} training step", f"batch {batch}", times, torch_key="torch_async",
                     metric=lambda s: batch / s, unit="samples/s",
                     note="torch without loss.item(): no synchronization in its step at all")

    def mlp_step(self):
        def build():
            return fnn.nn.Sequential(fnn.nn.Linear(784, 1024, activation="relu", init="he_normal"),
                                     fnn.nn.Linear(1024, 1024, activation="relu", init="he_normal"),
                                     fnn.nn.Linear(1024, 10))
        self._train_step("MLP 784-1024-1024-10", build, (784,), 10, 256)

    def convnet_step(self):
        self._train_step("ConvNet (fastnn train --model convnet)",
                         lambda: _build_convnet(fnn, (3, 32, 32), 10, np.float32), (3, 32, 32), 10, 64,
                         check_loss=False)   # its dropout masks differ between the libraries

    def conv(self):
        cp, torch = self.cp, self.torch
        n, c, h, w, f = 64, 32, 32, 32, 64
        x = self.randn((n, c, h, w))
        wt = self.randn((f, c, 3, 3), 1.0 / math.sqrt(9 * c))
        b = self.randn((f,))
        dy = self.randn((n, f, h, w))
        y = cp.empty((n, f, h, w), np.float32)
        dx, dw, db = cp.empty_like(x), cp.empty_like(wt), cp.empty_like(b)
        work = cp.empty_like(y)

        def fastnn_step():
            _, saved = ops.conv2d(x, wt, b, 1, 1, "relu", out=y)
            ops.conv2d_backward(dy, saved, dweight=dw, dbias=db, dx=dx, dz_work=work)

        fastnn_step()
        cands = {"fastnn": ("cupy", fastnn_step)}
        if torch is not None:
            torch.backends.cudnn.allow_tf32 = False
            tx = self.t(x).clone().requires_grad_(True)
            tw, tb = self.t(wt).clone().requires_grad_(True), self.t(b).clone().requires_grad_(True)
            tdy = self.t(dy)

            def torch_step():
                tx.grad = tw.grad = tb.grad = None
                torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=1)).backward(tdy)

            torch_step()
            ty = torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=1))
            errs = (rel_err(cp.asnumpy(y), ty.detach().cpu().numpy()), rel_err(cp.asnumpy(dx), tx.grad.cpu().numpy()),
                    rel_err(cp.asnumpy(dw), tw.grad.cpu().numpy()))
            assert max(errs) < 1e-3, f"fastnn vs torch relative errors (y, dx, dw) {errs}"
            cands["torch"] = ("torch", torch_step)
        times = self.timer.run(cands)
        flops = 3 * 2.0 * n * f * c * 9 * h * w
        self.row("conv2d 3x3 pad 1 + relu fwd+bwd FP32", f"({n}, {c}, {h}, {w}) -> {f}", times,
                 metric=lambda s: flops / s / 1e12, unit="TFLOP/s", note="torch: cuDNN, TF32 off")


def _ms(v):
    return "-" if v is None else f"{v:.3f}"


def table(rows, info) -> list[str]:
    out = [f"fastnn CUDA vs PyTorch CUDA on {info.get('gpu', '?')} ({info['date']}); medians of CUDA-event "
           f"timings, interleaved; ceiling for GB/s rows: the measured device copy bandwidth; for TFLOP/s rows: "
           f"the same GEMMs through CuPy (cuBLAS)", "",
           "| op | shape | fastnn ms | torch ms | torch/fastnn | GB/s or TFLOP/s | % of ceiling | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['op']} | {r.get('shape', '')} | failed | | | | | {r['error']} |")
            continue
        ratio = f"{r['speed_vs_torch']:.2f}x" if r.get("speed_vs_torch") else "-"
        metric = f"{r['metric']:,.1f} {r['unit']}" if r.get("metric") is not None else "-"
        pct = f"{r['pct_of_ceiling']:.0f}%" if r.get("pct_of_ceiling") is not None else "-"
        fms = _ms(r.get("fastnn_ms")) if r.get("fastnn_ms") is not None else _ms(r.get("cupy_ms"))
        out.append(f"| {r['op']} | {r['shape']} | {fms} | {_ms(r.get('torch_ms'))} | {ratio} | {metric} | {pct} | "
                   f"{r.get('note', '')} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=RESULTS, help="directory for gpu.md and gpu.json")
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (under a minute)")
    args = ap.parse_args(argv)
    if "cuda" not in fnn.backend.available():
        print(f"bench_gpu: CUDA is unavailable ({cuda_backend.reason}); nothing to time.")
        return 0
    import cupy as cp
    try:
        import torch
    except ImportError:
        torch = None
        note = "PyTorch is not installed: the torch column is empty"
    else:
        note = None
        if not torch.cuda.is_available():
            torch, note = None, "torch.cuda is unavailable: the torch column is empty"
    t_start = time.perf_counter()
    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
            "numpy": np.__version__, "cupy": cp.__version__, "fastnn": fnn.__version__, "quick": args.quick}
    try:
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    except Exception as exc:  # noqa: BLE001  (informational only)
        info["gpu"] = f"unknown ({exc})"
    if torch is not None:
        info["torch"] = torch.__version__
    print(f"bench_gpu on {info['gpu']}" + (f"; {note}" if note else ""), flush=True)
    bench = Bench(cp, torch, args.quick)
    if note:
        bench.notes.append(note)
    plan = [("copy bandwidth", bench.copy_bandwidth)]
    gemm_shapes = [(256, 1024, 1024)] + ([] if args.quick else [(4096, 4096, 4096)])
    for tf32 in (False, True):
        for n, d, m in gemm_shapes:
            for act in ("relu", "gelu"):
                plan.append((f"linear+{act} ({n}, {d}, {m}) {'TF32' if tf32 else 'FP32'}",
                             lambda n=n, d=d, m=m, act=act, tf32=tf32: bench.linear_act(n, d, m, act, tf32)))
    if args.quick:
        plan.append(("linear+relu (4096, 4096, 4096) FP32", lambda: bench.linear_act(4096, 4096, 4096, "relu", False)))
    plan += [("BatchNorm2d", lambda: bench.batchnorm((256, 64, 32, 32))),
             ("BatchNorm1d", lambda: bench.batchnorm((4096, 4096))), ("dropout", bench.dropout)]
    plan += [(f"Adam {n // 10**6}M", lambda n=n: bench.adam(n)) for n in ((10**7,) if args.quick else (10**7, 10**8))]
    plan += [("conv2d", bench.conv), ("MLP step", bench.mlp_step), ("ConvNet step", bench.convnet_step)]
    for name, fn in plan:
        print(f"{name} ...", flush=True)
        try:
            fn()
        except Exception as exc:  # noqa: BLE001  (one failure must not stop the others)
            traceback.print_exc()
            msg = f"{type(exc).__name__}: {exc}".replace("|", "/").replace("\n", " ")[:300]
            print(f"  FAILED: {msg}", flush=True)
            bench.rows.append({"op": name, "shape": "", "error": msg})
        finally:
            try:
                cp.cuda.runtime.deviceSynchronize()
                cp.get_default_memory_pool().free_all_blocks()
            except Exception as exc:  # noqa: BLE001
                print(f"  (device sync after {name} failed: {exc})", flush=True)
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    lines = table(bench.rows, info)
    if bench.notes:
        lines += [""] + [f"- {n}" for n in bench.notes]
    lines += ["", f"Total {info['seconds']} s."]
    print("\n" + "\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    md = os.path.join(args.out, "gpu.md")
    js = os.path.join(args.out, "gpu.json")
    with open(md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(js + ".tmp", "w") as f:
        json.dump({"machine": info, "copy_GBps": bench.copy_gbs, "rows": bench.rows, "notes": bench.notes}, f,
                  indent=2)
    os.replace(js + ".tmp", js)
    print(f"\nwritten {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
