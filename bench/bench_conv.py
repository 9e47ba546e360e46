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

    python bench/bench_conv.py          # conv and pooling
    python bench/bench_conv.py pool     # pooling only (results/pool.*)
"""
from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402

N, C, H, W, F, K, PAD = 64, 32, 32, 32, 64, 3, 1


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


def main():
    rng = np.random.default_rng(0)
    torch = harness.have_torch()
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((F, C, K, K)) * np.sqrt(2.0 / (C * K * K))).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32) * 0.1
    oh, ow = H + 2 * PAD - K + 1, W + 2 * PAD - K + 1
    dy = rng.standard_normal((N, F, oh, ow)).astype(np.float32)
    fwd_flops = 2.0 * N * F * C * K * K * oh * ow

    # Reused outputs: steady-state training reuses its buffers (DESIGN section 8).
    y = np.empty((N, F, oh, ow), np.float32)
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
        pre = torch.nn.functional.conv2d(tx, tw, tb, padding=PAD)
        pre.backward(tdy)
        ref = [torch.relu(pre).detach().numpy().copy(), tx.grad.numpy().copy(), tw.grad.numpy().copy(),
               tb.grad.numpy().copy()]
        tx.grad = tw.grad = tb.grad = None

    fwd, fwdbwd = {}, {}
    for name in ("cpp", "numba"):
        with fnn.backend.using(name):
            yy, _ = fnn.ops.conv2d(x, w, b, 1, PAD, "relu")
            _, saved = fnn.ops.conv2d(x, w, b, 1, PAD, "identity")
            gx, gw, gb, _ = fnn.ops.conv2d_backward(dy, saved)
        if ref is not None:
            for label, ours, theirs in zip(("y", "dx", "dweight", "dbias"), (yy, gx, gw, gb), ref):
                err = float(np.abs(ours - theirs).max() / max(1.0, np.abs(theirs).max()))
                assert err < 1e-4, (name, label, err)

        def run_fwd(name=name):
            with fnn.backend.using(name):
                fnn.ops.conv2d(x, w, b, 1, PAD, "relu", out=y)

        def run_fwdbwd(name=name):
            with fnn.backend.using(name):
                _, s = fnn.ops.conv2d(x, w, b, 1, PAD, "relu", out=y)
                fnn.ops.conv2d_backward(dy, s, dweight=dw, dbias=db, dx=dx, dz_work=dz)

        fwd[f"fastnn-{name}"] = run_fwd
        fwdbwd[f"fastnn-{name}"] = run_fwdbwd
    if torch is not None:
        def torch_fwd():
            with torch.no_grad():
                torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=PAD))

        def torch_fwdbwd():
            torch.relu(torch.nn.functional.conv2d(tx, tw, tb, padding=PAD)).backward(tdy)
            tx.grad = tw.grad = tb.grad = None

        fwd["torch"] = torch_fwd
        fwdbwd["torch"] = torch_fwdbwd

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

    info = harness.machine()
    results = {"machine": info, "shape": {"x": [N, C, H, W], "weight": [F, C, K, K], "padding": PAD},
               "gemm_ceiling_GFLOPs": gemm_gflops, "forward": {}, "forward_backward": {}}
    table = [f"Conv2d 32->64 3x3 pad 1 + ReLU, x (64, 32, 32, 32) float32, {info['threads']} threads, "
             f"ISA {info['isa']}; fastnn GEMM ceiling (64 x 16384 x 288): {gemm_gflops:.1f} GFLOP/s", "",
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
    results["pooling"], pool_table = pooling(rng, torch)
    harness.write("conv", results, table + [""] + pool_table)


if __name__ == "__main__":
    main_pool() if sys.argv[1:] == ["pool"] else main()
