"""Conv2d(32 -> 64, 3x3, pad 1) + ReLU on a (64, 32, 32, 32) float32 batch:
fastnn (C++, Numba) vs PyTorch CPU (2 threads), forward and forward+backward,
same process, interleaved, medians; GFLOP/s beside fastnn's own GEMM on the
same (M, K) in the same run (the ceiling the im2col formulation can reach).

FLOPs: forward 2*N*F*C*KH*KW*OH*OW; backward twice that (dweight and dx).
Every candidate is validated against PyTorch's result before it is timed.

Pooling (``pool``): MaxPool2d 2x2 and AvgPool2d 2x2 forward+backward at
(64, 32, 32, 32) and (64, 64, 16, 16) float32 (the two pools of a CIFAR-sized
ConvNet at batch 64): fastnn's layers (C++, Numba) vs the NumPy reference
(gathers + argmax + bincount, fastnn's pooling before the kernels; reshape-mean
for average) vs PyTorch CPU, interleaved, medians, each validated against the
NumPy reference first; GB/s counts x, y, dy and dx once each.

Per layer (``layers``): Conv2d 3x3 pad 1 + ReLU forward+backward (dweight,
dbias and dx) at the four convolutions of the ConvNet below at batch 64
(3->32 and 32->32 at 32x32, 32->64 and 64->64 at 16x16): fastnn C++, Numba and
PyTorch, validated against PyTorch, interleaved; GFLOP/s = 3 x the forward's;
beside them the GEMM engine's own GFLOP/s on the equivalent per-image GEMM
(M = F, K = 9C, N = OH*OW, 64 calls: the forward's FLOPs exactly), timed in the
same rotation, and each candidate's share of it.

The whole training step (``step``): the ConvNet of ``fastnn train --model
convnet`` (fastnn.cli._build_convnet: [conv3x3-BN-ReLU]x2 32 ch, maxpool,
[conv3x3-BN-ReLU]x2 64 ch, maxpool, linear 4096->256 + ReLU, dropout 0.5,
linear 256->10) at batch 64 on 3x32x32, softmax cross-entropy, Adam lr 1e-3:
fastnn's Trainer.train_step (C++, Numba) vs PyTorch eager (2 threads) running
the same network with the same initial weights (fastnn.interop.to_torch),
samples/s, interleaved. Validated first with dropout off: scores, loss and
every parameter gradient against PyTorch. Then where the step's time goes:
each step of the Sequential's fusion plan timed forward and backward in
fastnn, and the same layers in PyTorch (each module run on a detached input so
its backward can be timed alone), alternating one fastnn step, one PyTorch step.

    python bench/bench_conv.py          # everything -> results/conv.{md,json}
    python bench/bench_conv.py layers   # the per-layer convs only (conv.* keeps the other sections)
    python bench/bench_conv.py step     # the ConvNet step and its profile only (likewise)
    python bench/bench_conv.py pool     # pooling only (results/pool.*)
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402
from fastnn.cli import _build_convnet  # noqa: E402  (the model `fastnn train --model convnet` trains)

N, C, H, W, F, K, PAD = 64, 32, 32, 32, 64, 3, 1

# (C, F, H = W) of the ConvNet's four 3x3 pad-1 convolutions, at batch N.
LAYER_SHAPES = ((3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16))
SECTIONS = ("conv", "layers", "step", "profile", "pool")   # the order of conv.md


POOL_SHAPES = ((64, 32, 32, 32), (64, 64, 16, 16))


def _numpy_max_pool(x, k):
    """fastnn's NumPy max pooling before the C++/Numba kernels: gathers, an argmax,
    and backward by one bincount. Returns (y, backward(dy) -> dx)."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // k + 1, (w - k) // k + 1
    rows = np.arange(oh)[:, None] * k + np.arange(k)[None, :]
    cols = np.arange(ow)[:, None] * k + np.arange(k)[None, :]
    g = x[:, :, rows[:, :, None, None], cols[None, None, :, :]]
    g = g.transpose(0, 1, 2, 4, 3, 5).reshape(n, c, oh, ow, k * k)
    arg = g.argmax(axis=-1)
    y = np.ascontiguousarray(np.take_along_axis(g, arg[..., None], axis=-1)[..., 0])
    ih = rows[np.arange(oh)[:, None], arg // k]
    iw = cols[np.arange(ow)[None, :], arg % k]
    index = ((np.arange(n)[:, None] * c + np.arange(c)[None, :]) * (h * w))[:, :, None, None] + ih * w + iw

    def backward(dy):
        return np.bincount(index.ravel(), weights=dy.ravel(), minlength=x.size).astype(dy.dtype).reshape(x.shape)
    return y, backward


def _numpy_avg_pool(x, k):
    n, c, h, w = x.shape
    oh, ow = h // k, w // k
    y = x[:, :, :oh * k, :ow * k].reshape(n, c, oh, k, ow, k).mean(axis=(3, 5), dtype=x.dtype)

    def backward(dy):
        dx = np.zeros_like(x)
        dx[:, :, :oh * k, :ow * k] = np.repeat(np.repeat(dy / x.dtype.type(k * k), k, axis=2), k, axis=3)
        return dx
    return y, backward


def pooling(rng, torch, rounds=21, reps=5):
    """{(kind, shape): {candidate: median seconds of forward+backward}}, validated first."""
    results, table = {}, []
    for kind in ("max", "avg"):
        for shape in POOL_SHAPES:
            x = rng.standard_normal(shape).astype(np.float32)
            y_ref, back_ref = (_numpy_max_pool if kind == "max" else _numpy_avg_pool)(x, 2)
            dy = rng.standard_normal(y_ref.shape).astype(np.float32)
            dx_ref = back_ref(dy)
            layer_cls = fnn.nn.MaxPool2d if kind == "max" else fnn.nn.AvgPool2d
            cands = {}
            for name in ("cpp", "numba"):
                layer = layer_cls(2)
                with fnn.backend.using(name):
                    yy = layer.forward(x)
                    gx = layer.backward(dy)
                assert np.allclose(yy, y_ref, atol=1e-6) and np.allclose(gx, dx_ref, atol=1e-6), (kind, shape, name)

                def run(layer=layer, name=name):
                    with fnn.backend.using(name):
                        layer.forward(x)
                        layer.backward(dy)
                cands[f"fastnn-{name}"] = run

            def run_numpy(kind=kind, x=x, dy=dy):
                (_numpy_max_pool if kind == "max" else _numpy_avg_pool)(x, 2)[1](dy)
            cands["numpy"] = run_numpy
            if torch is not None:
                tx = torch.from_numpy(x).requires_grad_(True)
                tdy = torch.from_numpy(dy)
                tf = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
                ty = tf(tx, 2)
                ty.backward(tdy)
                assert np.allclose(ty.detach().numpy(), y_ref, atol=1e-6)
                assert np.allclose(tx.grad.numpy(), dx_ref, atol=1e-6)

                def run_torch(tx=tx, tdy=tdy, tf=tf):
                    tf(tx, 2).backward(tdy)
                    tx.grad = None
                cands["torch"] = run_torch
            times = harness.interleaved(cands, rounds=rounds, reps=reps, pause=0.05)
            moved = 4 * (2 * x.size + 2 * y_ref.size)
            key = f"{kind}_pool2d 2x2 {shape}"
            results[key] = {"seconds": times, "GBs": {k: moved / v / 1e9 for k, v in times.items()}}
            tt = times.get("torch", float("nan"))
            table.append(f"| {'MaxPool2d' if kind == 'max' else 'AvgPool2d'} 2x2 | {shape} | "
                         f"{times['fastnn-cpp'] * 1e3:.2f} | {times['fastnn-numba'] * 1e3:.2f} | "
                         f"{times['numpy'] * 1e3:.2f} | {tt * 1e3:.2f} | {times['fastnn-cpp'] / tt:.2f} | "
                         f"{times['fastnn-numba'] / times['fastnn-cpp']:.1f} |")
    head = ["| pool fwd+bwd | x (float32) | fastnn C++ ms | Numba ms | NumPy ms | PyTorch ms | C++ / PyTorch time "
            "| Numba / C++ |", "|---|---|---|---|---|---|---|---|"]
    return results, head + table


def main_pool():
    rng = np.random.default_rng(0)
    results, table = pooling(rng, harness.have_torch())
    info = harness.machine()
    harness.write("pool", {"machine": info, "pooling": results},
                  [f"Pooling forward+backward, {info['threads']} threads, ISA {info['isa']}, medians of 21 rounds "
                   f"x 5 calls, interleaved", ""] + table)


def _conv_candidates(x, w, b, dy, torch, pad=PAD):
    """({name: forward}, {name: forward+backward}) of relu(conv2d(x, w) + b) for fastnn's backends and
    PyTorch, each validated against PyTorch before it is returned. Outputs and gradients go to buffers
    reused across calls, as a training step reuses its own (DESIGN section 8)."""
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    y = np.empty((n, f, oh, ow), np.float32)
    dx, dz = np.empty_like(x), np.empty_like(y)
    dw, db = np.empty_like(w), np.empty_like(b)

    # References: relu(conv) forward, and the conv backward without the ReLU
    # (with it, an output within rounding of 0 may fall on either side of the
    # kink in the two libraries, and its whole receptive field then differs).
    ref = None
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w.copy()).requires_grad_(True)
        tb = torch.from_numpy(b.copy()).requires_grad_(True)
        tdy = torch.from_numpy(dy)
        pre = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
        pre.backward(tdy)
        ref = [torch.relu(pre).detach().numpy().copy(), tx.grad.numpy().copy(), tw.grad.numpy().copy(),
               tb.grad.numpy().copy()]
        tx.grad = tw.grad = tb.grad = None

    fwd, fwdbwd = {}, {}
    for name in ("cpp", "numba"):
        with fnn.backend.using(name):
            yy, _ = fnn.ops.conv2d(x, w, b, 1, pad, "relu")
            _, saved = fnn.ops.conv2d(x, w, b, 1, pad, "identity")
            gx, gw, gb, _ = fnn.ops.conv2d_backward(dy, saved)
        if ref is not None:
            for label, ours, theirs in zip(("y", "dx", "dweight", "dbias"), (yy, gx, gw, gb), ref):
                err = float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))
                assert err < 1e-4, (name, tuple(x.shape), tuple(w.shape), label, err)

        def run_fwd(name=name):
            with fnn.backend.using(name):
                fnn.ops.conv2d(x, w, b, 1, pad, "relu", out=y)

        def run_fwdbwd(name=name):
            with fnn.backend.using(name):
                _, s = fnn.ops.conv2d(x, w, b, 1, pad, "relu", out=y)
                fnn.ops.conv2d_backward(dy, s, dweight=dw, dbias=db, dx=dx, dz_work=dz)

        fwd[f"fastnn-{name}"] = run_fwd
        fwdbwd[f"fastnn-{name}"] = run_fwdbwd
    if torch is not None:
        def torch_fwd():
            with torch.no_grad():
                torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=pad))

        def torch_fwdbwd():
            torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=pad)).backward(tdy)
            tx.grad = tw.grad = tb.grad = None

        fwd["torch"] = torch_fwd
        fwdbwd["torch"] = torch_fwdbwd
    return fwd, fwdbwd


def conv_32_64(rng, torch):
    """Conv2d 32->64 at (64, 32, 32, 32): forward and forward+backward, beside fastnn's GEMM on a wide N."""
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((F, C, K, K)) * np.sqrt(2.0 / (C * K * K))).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32) * 0.1
    oh, ow = H + 2 * PAD - K + 1, W + 2 * PAD - K + 1
    dy = rng.standard_normal((N, F, oh, ow)).astype(np.float32)
    fwd_flops = 2.0 * N * F * C * K * K * oh * ow
    fwd, fwdbwd = _conv_candidates(x, w, b, dy, torch)

    # The ceiling: fastnn's GEMM with the convolution's M and K (64 x 288) and a
    # wide N, i.e. the per-image GEMM of 16 images at once.
    ga = rng.standard_normal((F, C * K * K)).astype(np.float32)
    gbm = rng.standard_normal((C * K * K, 16 * oh * ow)).astype(np.float32)
    gc = np.empty((F, 16 * oh * ow), np.float32)
    gemm_flops = 2.0 * ga.shape[0] * ga.shape[1] * gbm.shape[1]
    gemm_t = harness.interleaved({"gemm": lambda: fnn.ops.gemm(ga, gbm, out=gc)}, rounds=7, reps=3)["gemm"]
    gemm_gflops = gemm_flops / gemm_t / 1e9

    t_fwd = harness.interleaved(fwd, rounds=7, reps=3)
    t_all = harness.interleaved(fwdbwd, rounds=7, reps=2)

    results = {"shape": {"x": [N, C, H, W], "weight": [F, C, K, K], "padding": PAD},
               "gemm_ceiling_GFLOPs": gemm_gflops, "forward": {}, "forward_backward": {}}
    table = [f"Conv2d 32->64 3x3 pad 1 + ReLU, x (64, 32, 32, 32) float32; fastnn GEMM ceiling "
             f"(64 x 16384 x 288): {gemm_gflops:.1f} GFLOP/s", "",
             "| pass | fastnn C++ ms | GFLOP/s | Numba ms | GFLOP/s | PyTorch ms | GFLOP/s | C++ / PyTorch time |",
             "|---|---|---|---|---|---|---|---|"]
    for label, times, flops, key in (("forward", t_fwd, fwd_flops, "forward"),
                                     ("forward+backward", t_all, 3 * fwd_flops, "forward_backward")):
        gf = {k: flops / v / 1e9 for k, v in times.items()}
        results[key] = {"seconds": times, "GFLOPs": gf, "flops": flops}
        tt = times.get("torch", float("nan"))
        table.append(f"| {label} | {times['fastnn-cpp'] * 1e3:.1f} | {gf['fastnn-cpp']:.1f} | "
                     f"{times['fastnn-numba'] * 1e3:.1f} | {gf['fastnn-numba']:.1f} | {tt * 1e3:.1f} | "
                     f"{gf.get('torch', float('nan')):.1f} | {times['fastnn-cpp'] / tt:.2f} |")
    return results, table


def conv_layers(rng, torch, rounds=7, reps=2):
    """Conv2d+ReLU forward+backward at the ConvNet's four shapes, with the GEMM engine on the equivalent
    per-image GEMM in the same rotation."""
    results, table = {}, []
    for c, f, hw in LAYER_SHAPES:
        x = rng.standard_normal((N, c, hw, hw)).astype(np.float32)
        w = (rng.standard_normal((f, c, 3, 3)) * np.sqrt(2.0 / (c * 9))).astype(np.float32)
        b = (rng.standard_normal(f) * 0.1).astype(np.float32)
        dy = rng.standard_normal((N, f, hw, hw)).astype(np.float32)
        _, cands = _conv_candidates(x, w, b, dy, torch, pad=1)
        # The engine: one (F, 9C) x (9C, OH*OW) GEMM per image, as an im2col convolution's forward runs it.
        ga = rng.standard_normal((f, 9 * c)).astype(np.float32)
        gb = rng.standard_normal((9 * c, hw * hw)).astype(np.float32)
        gc = np.empty((f, hw * hw), np.float32)
        fnn.ops.gemm(ga, gb, out=gc)
        assert np.allclose(gc, ga @ gb, rtol=1e-4, atol=1e-3), "gemm"

        def engine(ga=ga, gb=gb, gc=gc):
            for _ in range(N):
                fnn.ops.gemm(ga, gb, out=gc)
        cands["engine-gemm"] = engine
        times = harness.interleaved(cands, rounds=rounds, reps=reps)
        fwd_flops = 2.0 * N * f * c * 9 * hw * hw
        gf = {k: (fwd_flops if k == "engine-gemm" else 3 * fwd_flops) / v / 1e9 for k, v in times.items()}
        key = f"conv {c}->{f} {hw}x{hw}"
        results[key] = {"x": [N, c, hw, hw], "weight": [f, c, 3, 3], "seconds": times, "GFLOPs": gf,
                        "forward_flops": fwd_flops, "gemm": [f, 9 * c, hw * hw]}
        tt = times.get("torch", float("nan"))
        engine_gf = gf["engine-gemm"]
        table.append(f"| {c}->{f}, {hw}x{hw} | {times['fastnn-cpp'] * 1e3:.2f} | {gf['fastnn-cpp']:.0f} "
                     f"({100 * gf['fastnn-cpp'] / engine_gf:.0f}%) | {times['fastnn-numba'] * 1e3:.2f} | "
                     f"{gf['fastnn-numba']:.0f} | {tt * 1e3:.2f} | {gf.get('torch', float('nan')):.0f} "
                     f"({100 * gf.get('torch', float('nan')) / engine_gf:.0f}%) | {f}x{9 * c}x{hw * hw}: "
                     f"{engine_gf:.0f} | {times['fastnn-cpp'] / tt:.2f} | "
                     f"{times['fastnn-numba'] / times['fastnn-cpp']:.1f} |")
    head = [f"Conv2d 3x3 pad 1 + ReLU forward+backward (dweight, dbias, dx) at the ConvNet's four shapes, batch "
            f"{N}, float32; GFLOP/s = 3 x forward FLOPs / time, and in parentheses the share of the GEMM engine's "
            f"GFLOP/s on the per-image GEMM (M = F, K = 9C, N = OH*OW, {N} calls) timed in the same rotation", "",
            "| conv | fastnn C++ ms | GFLOP/s (% of engine) | Numba ms | GFLOP/s | PyTorch ms | GFLOP/s "
            "(% of engine) | engine GEMM MxKxN: GFLOP/s | C++ / PyTorch time | Numba / C++ |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    return results, head + table


# --- the whole ConvNet training step ---------------------------------------------------------

STEP_SHAPE, STEP_CLASSES, STEP_LR = (3, 32, 32), 10, 1e-3


def _convnet_pair(torch, dropout=0.5, dtype=np.float32):
    """(fastnn model, PyTorch model with the same weights or None)."""
    fnn.manual_seed(0)
    model = _build_convnet(fnn, STEP_SHAPE, STEP_CLASSES, dtype)
    if dropout != 0.5:
        model[17] = fnn.nn.Dropout(dropout)
    model.set_input_grad(False)          # the data needs no gradient (Trainer does the same)
    return model, (fnn.interop.to_torch(model) if torch is not None else None)


def _validate_step(torch, x, y):
    """One training-mode forward+backward with dropout off against PyTorch: in float64 the loss, the scores
    and every parameter gradient; in float32 the loss, the scores and the gradients of the layers after the
    last pool. (In float32 a 2x2 max-pool window whose two largest inputs differ by rounding alone, about
    one in the step's 330,000 windows, may pick the other one in the two libraries; BatchNorm's backward
    then spreads that entry over its channel, and the earlier gradients differ by ~0.5% for that reason
    alone. conv_layers checks the float32 conv kernels against PyTorch one by one.)"""
    lossf = fnn.losses.SoftmaxCrossEntropy()
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        model, tmodel = _convnet_pair(torch, dropout=0.0, dtype=dtype)
        xd = x.astype(dtype)
        for name in ("cpp", "numba"):
            with fnn.backend.using(name):
                scores = model.forward(xd)
                loss = lossf.forward(scores, y)
                model.backward(lossf.backward())
            assert abs(loss - np.log(STEP_CLASSES)) < 1.5, (name, loss)
            if tmodel is None:
                continue
            tmodel.zero_grad(set_to_none=True)
            tscores = tmodel(torch.from_numpy(xd))
            tloss = torch.nn.functional.cross_entropy(tscores, torch.from_numpy(y))
            tloss.backward()
            assert abs(loss - tloss.item()) < tol * 10, (name, dtype, loss, tloss.item())
            err = np.linalg.norm(scores - tscores.detach().numpy()) / np.linalg.norm(scores)
            assert err < tol, (name, dtype, "scores", err)
            theirs = [p.grad.numpy() for p in tmodel.parameters()]
            ours = [p.grad for p in model.parameters()]
            assert len(ours) == len(theirs), (len(ours), len(theirs))
            after_pools = len(ours) - 4          # the two Linear layers' weights and biases
            for i, (g, tg) in enumerate(zip(ours, theirs)):
                if dtype == np.float32 and i < after_pools:
                    continue
                g = g.T if g.shape != tg.shape else g        # Linear weights: (in, out) vs torch's (out, in)
                # A conv bias followed by BatchNorm has a zero gradient: the floor keeps its rounding noise out.
                err = float(np.linalg.norm(g - tg) / max(1e-3, np.linalg.norm(tg)))
                assert err < tol, (name, dtype, "gradient", i, g.shape, err)


def convnet_step(rng, torch, rounds=7, reps=3):
    """Samples/s of the whole training step, fastnn (C++, Numba) vs PyTorch eager, interleaved."""
    x = rng.standard_normal((N,) + STEP_SHAPE).astype(np.float32)
    y = rng.integers(0, STEP_CLASSES, N)
    _validate_step(torch, x, y)
    model, tmodel = _convnet_pair(torch)
    trainer = fnn.Trainer(model, fnn.losses.SoftmaxCrossEntropy(), fnn.optim.Adam(model.parameters(), lr=STEP_LR))

    def step(name):
        with fnn.backend.using(name):
            trainer.train_step(x, y)
    cands = {"fastnn-cpp": lambda: step("cpp"), "fastnn-numba": lambda: step("numba")}
    if tmodel is not None:
        topt = torch.optim.Adam(tmodel.parameters(), lr=STEP_LR)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def tstep():
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
            topt.step()
        cands["torch"] = tstep
    t = harness.interleaved(cands, rounds=rounds, reps=reps, pause=0.3)
    sps = {k: N / v for k, v in t.items()}
    tt = sps.get("torch", float("nan"))
    results = {"batch": N, "input": list(STEP_SHAPE), "optimizer": f"Adam lr {STEP_LR:g}", "seconds": t,
               "samples_per_s": sps}
    table = [f"ConvNet training step (fastnn train --model convnet: [conv3x3-BN-ReLU]x2 32 ch, maxpool, "
             f"[conv3x3-BN-ReLU]x2 64 ch, maxpool, linear 4096->256 + ReLU, dropout 0.5, linear 256->10), batch {N} "
             f"of 3x32x32 float32, softmax cross-entropy, Adam; same initial weights; medians of {rounds} rounds x "
             f"{reps} steps, interleaved", "",
             "| | fastnn C++ | Numba | PyTorch eager |", "|---|---|---|---|",
             f"| ms per step | {t['fastnn-cpp'] * 1e3:.1f} | {t['fastnn-numba'] * 1e3:.1f} | "
             f"{t.get('torch', float('nan')) * 1e3:.1f} |",
             f"| samples/s | {sps['fastnn-cpp']:,.0f} | {sps['fastnn-numba']:,.0f} | {tt:,.0f} |",
             f"| speed vs PyTorch | {sps['fastnn-cpp'] / tt:.2f}x | {sps['fastnn-numba'] / tt:.2f}x | 1.00x |"]
    return results, table


def convnet_profile(rng, torch, steps=15):
    """Median ms per fusion-plan step, forward and backward, fastnn C++ vs the same layers in PyTorch."""
    x = rng.standard_normal((N,) + STEP_SHAPE).astype(np.float32)
    y = rng.integers(0, STEP_CLASSES, N)
    model, tmodel = _convnet_pair(torch)
    lossf = fnn.losses.SoftmaxCrossEntropy()
    opt = fnn.optim.Adam(model.parameters(), lr=STEP_LR)
    trainer = fnn.Trainer(model, lossf, opt)
    walk = model.walk()
    labels = [label for label, _, _ in walk]
    # PyTorch modules i..j make up the fastnn step labelled "i:..." or "i-j:...".
    spans = []
    for label in labels:
        first, _, last = label.split(":")[0].partition("-")
        spans.append(range(int(first), int(last or first) + 1))
    clock = time.perf_counter
    ours = {key: [] for key in ["loss", "optimizer step", "whole step"]
            + [f"fwd {lb}" for lb in labels] + [f"bwd {lb}" for lb in labels]}
    theirs = {key: [] for key in ours}
    with fnn.backend.using("cpp"):
        for _ in range(3):
            trainer.train_step(x, y)

    def fastnn_once():
        harness.time_plan_step(walk, lossf, opt, x, y, ours)
        t = clock()
        trainer.train_step(x, y)
        ours["whole step"].append(clock() - t)

    if tmodel is not None:
        mods = list(tmodel)
        topt = torch.optim.Adam(tmodel.parameters(), lr=STEP_LR)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_once():
            topt.zero_grad(set_to_none=True)
            fwd, bwd = [0.0] * len(mods), [0.0] * len(mods)
            ins, outs, h = [], [], tx
            for i, m in enumerate(mods):
                hin = h.detach().requires_grad_(i > 0)
                t = clock()
                h = m(hin)
                fwd[i] = clock() - t
                ins.append(hin)
                outs.append(h)
            t = clock()
            scores = h.detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(scores, ty).backward()
            grad = scores.grad
            theirs["loss"].append(clock() - t)
            for i in reversed(range(len(mods))):
                t = clock()
                outs[i].backward(grad)
                bwd[i] = clock() - t
                grad = ins[i].grad
            for label, span in zip(labels, spans):
                theirs[f"fwd {label}"].append(sum(fwd[i] for i in span))
                theirs[f"bwd {label}"].append(sum(bwd[i] for i in span))
            t = clock()
            topt.step()
            theirs["optimizer step"].append(clock() - t)
            del ins, outs, h, scores, grad       # the whole step below starts with nothing held, as fastnn's does
            t = clock()
            topt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(tmodel(tx), ty).backward()
            topt.step()
            theirs["whole step"].append(clock() - t)
        for _ in range(3):
            torch_once()
        theirs = {key: [] for key in ours}
    with fnn.backend.using("cpp"):
        for _ in range(steps):
            time.sleep(0.2)
            fastnn_once()
            if tmodel is not None:
                time.sleep(0.2)
                torch_once()
    med = {key: float(np.median(v)) * 1e3 for key, v in ours.items()}
    tmed = {key: (float(np.median(v)) * 1e3 if v else float("nan")) for key, v in theirs.items()}
    table = [f"Where the ConvNet step's time goes (median ms of {steps} steps, fastnn C++ and PyTorch alternating; "
             "a fastnn step is one kernel call of the Sequential's fusion plan, the PyTorch column sums the same "
             "modules; 'whole step' is a separate full train_step)", "",
             "| step | fastnn fwd | fastnn bwd | PyTorch fwd | PyTorch bwd | fastnn / PyTorch (fwd+bwd) |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        a, b = med[f"fwd {label}"], med[f"bwd {label}"]
        ta, tb = tmed[f"fwd {label}"], tmed[f"bwd {label}"]
        table.append(f"| {label} | {a:.2f} | {b:.2f} | {ta:.2f} | {tb:.2f} | {(a + b) / (ta + tb):.2f} |")
    for key in ("loss", "optimizer step"):
        table.append(f"| {key} | {med[key]:.2f} | | {tmed[key]:.2f} | | {med[key] / tmed[key]:.2f} |")
    parts, tparts = (sum(v for k, v in d.items() if k != "whole step") for d in (med, tmed))
    table.append(f"| sum of the above | {parts:.1f} | | {tparts:.1f} | | {parts / tparts:.2f} |")
    table.append(f"| whole step | {med['whole step']:.1f} | | {tmed['whole step']:.1f} | | "
                 f"{med['whole step'] / tmed['whole step']:.2f} |")
    return {"fastnn_ms": med, "torch_ms": tmed, "labels": labels}, table


# --- output ------------------------------------------------------------------------------------

def machine_line(info, load_at_start):
    start, end = (", ".join(f"{v:.2f}" for v in load) for load in (load_at_start, os.getloadavg()))
    return (f"Machine: {info['cpu']}, {info['cores']} cores; fastnn {info['fastnn']} ({info['threads']} threads, "
            f"ISA {info['isa']}); PyTorch {info.get('torch', 'not installed')} (2 threads); NumPy {info['numpy']}; "
            f"{info['date']}; load average (1, 5, 15 min) {start} at the start of the run, {end} at the end")


def write_sections(sections, load_at_start):
    """Merge {section: (results, table)} into results/conv.json, keeping the sections not rerun, and write
    conv.md from every section's table in SECTIONS order under one machine line."""
    path = os.path.join(harness.RESULTS, "conv.json")
    payload = {}
    if os.path.exists(path):
        with open(path) as f:
            payload = json.load(f)
    if "sections" not in payload:       # the older layout: one conv section and pooling, no tables
        payload = {"sections": {}, "tables": {}}
    info = harness.machine()
    line = machine_line(info, load_at_start)
    for name, (results, table) in sections.items():
        payload["sections"][name] = dict(results, machine=info, machine_line=line)
        payload["tables"][name] = table
    payload["machine"] = info
    md = [line, ""]
    for name in SECTIONS:
        if name in payload["tables"]:
            if name not in sections:
                md += [f"(from an earlier run: {payload['sections'][name]['machine_line']})", ""]
            md += payload["tables"][name] + [""]
    harness.write("conv", payload, md[:-1])


def main(which=None):
    load_at_start = os.getloadavg()
    rng = np.random.default_rng(0)
    torch = harness.have_torch()
    which = which or ["conv", "layers", "step", "pool"]
    sections = {}
    if "conv" in which:
        sections["conv"] = conv_32_64(rng, torch)
    if "layers" in which:
        sections["layers"] = conv_layers(rng, torch)
    if "step" in which:
        sections["step"] = convnet_step(rng, torch)
        sections["profile"] = convnet_profile(rng, torch)
    if "pool" in which:
        sections["pool"] = pooling(rng, torch)
    write_sections(sections, load_at_start)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["pool"]:
        main_pool()
    elif args and all(a in ("conv", "layers", "step") for a in args):
        main(args)
    elif args:
        raise SystemExit(f"usage: python bench/bench_conv.py [conv|layers|step|pool ...], got {' '.join(args)}")
    else:
        main()
