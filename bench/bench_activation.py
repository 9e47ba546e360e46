"""Activations: fastnn (C++ vector forms, Numba) vs PyTorch CPU, same process,
interleaved medians, float32.

1. The standalone activation layer, forward + backward over 4M elements
   (1024 x 4096), in ms and GB/s (x read and y written forward; dy, x, y read
   and dx written backward: 6 arrays), against the machine's STREAM bandwidth.
2. Linear + activation forward + backward at (N, D, M) = (256, 1024, 1024),
   the activation fused into the GEMM epilogue and the dweight GEMM's packing
   (fastnn.nn.Sequential's plan) against torch.nn.Sequential(Linear, act).

Each candidate is validated against PyTorch first. The exponential activations
(sigmoid, tanh, elu, selu, swish, gelu, gelu_tanh) run csrc/cpu/vec_math.h's
vector exp/tanh/erfc; identity, relu, leaky_relu and prelu are comparisons.

    python bench/bench_activation.py [--quick]
"""
from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import harness  # noqa: E402

import fastnn as fnn  # noqa: E402

ALPHA = {"leaky_relu": 0.01, "prelu": 0.25, "elu": 1.0}
LAYERS = {"identity": "Identity", "relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "selu": "SELU",
          "sigmoid": "Sigmoid", "tanh": "Tanh", "gelu": "GELU", "gelu_tanh": "GELU", "swish": "Swish"}


def torch_act(torch, act):
    f = torch.nn.functional
    return {"identity": lambda x: x, "relu": f.relu, "leaky_relu": lambda x: f.leaky_relu(x, ALPHA["leaky_relu"]),
            "elu": lambda x: f.elu(x, ALPHA["elu"]), "selu": f.selu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
            "gelu": f.gelu, "gelu_tanh": lambda x: f.gelu(x, approximate="tanh"), "swish": f.silu}[act]


def fastnn_layer(act):
    name = LAYERS[act]
    cls = getattr(fnn.nn, name, None)
    if cls is None:
        return None
    if act in ("leaky_relu", "elu"):
        return cls(ALPHA[act])
    return cls(approximate="tanh") if act == "gelu_tanh" else cls()


def standalone(act, torch, rng, rounds, backends):
    x = rng.standard_normal((1024, 4096)).astype(np.float32) * 3
    dy = rng.standard_normal(x.shape).astype(np.float32)
    alpha = ALPHA.get(act)
    tf = torch_act(torch, act)
    tx = torch.from_numpy(x).requires_grad_(True)
    tdy = torch.from_numpy(dy)
    ty = tf(tx)
    ty.backward(tdy)
    want_y, want_dx = ty.detach().numpy().copy(), tx.grad.numpy().copy()
    cands = {}
    for backend in backends:
        def run(backend=backend):
            with fnn.backend.using(backend):
                y = fnn.ops.activation(x, act, alpha)
                return y, fnn.ops.activation_backward(dy, x, y, act, alpha)[0]
        y, dx = run()
        scale = max(1.0, float(np.abs(want_y).max()))
        assert np.abs(y - want_y).max() <= 1e-5 * scale, (backend, act)
        assert np.abs(dx - want_dx).max() <= 1e-4 * max(1.0, float(np.abs(want_dx).max())), (backend, act)
        cands[f"fastnn-{backend}"] = run

    def run_torch():
        tx.grad = None
        tf(tx).backward(tdy)
    cands["torch"] = run_torch
    return harness.interleaved(cands, rounds=rounds, reps=3), 6 * x.nbytes


def linear_act(act, torch, rng, rounds):
    n, d, m = 256, 1024, 1024
    layer = fastnn_layer(act)
    if layer is None:
        return None
    x = rng.standard_normal((n, d)).astype(np.float32)
    dy = rng.standard_normal((n, m)).astype(np.float32)
    lin = fnn.nn.Linear(d, m)
    model = fnn.nn.Sequential(lin, layer)
    tlin = torch.nn.Linear(d, m)
    with torch.no_grad():
        tlin.weight.copy_(torch.from_numpy(np.ascontiguousarray(lin.weight.data.T)))
        tlin.bias.copy_(torch.from_numpy(lin.bias.data))
    tf = torch_act(torch, act)
    # The input needs its gradient, as fastnn's Sequential.backward computes it.
    tx, tdy = torch.from_numpy(x).requires_grad_(True), torch.from_numpy(dy)
    with fnn.backend.using("cpp"):
        y = model.forward(x)
    want = tf(tlin(tx)).detach().numpy()
    assert np.abs(y - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max())), act

    def ours():
        with fnn.backend.using("cpp"):
            model.forward(x)
            model.backward(dy)

    def theirs():
        tlin.zero_grad(set_to_none=True)
        tx.grad = None
        tf(tlin(tx)).backward(tdy)
    return harness.interleaved({"fastnn": ours, "torch": theirs}, rounds=rounds, reps=3)


def main():
    quick = "--quick" in sys.argv
    torch = harness.have_torch()
    if torch is None:
        sys.exit("bench_activation needs PyTorch (pip install torch==2.13.0)")
    rng = np.random.default_rng(0)
    info = harness.machine()
    stream = harness.stream_bandwidth()
    backends = [b for b in ("cpp", "numba") if b in fnn.backend.available()]
    rounds = 5 if quick else 9
    acts = list(LAYERS)
    rows, payload = [], {"machine": info, "stream_GBps": stream, "standalone": {}, "linear_act": {}}
    for act in acts:
        t, nbytes = standalone(act, torch, rng, rounds, backends)
        payload["standalone"][act] = t
        lt = linear_act(act, torch, rng, rounds)
        payload["linear_act"][act] = lt
        c, tt = t["fastnn-cpp"], t["torch"]
        nb = t.get("fastnn-numba")
        numba = f"{nb * 1e3:.2f}" if nb else "-"
        linear = (f"{lt['fastnn'] * 1e3:.2f} | {lt['torch'] * 1e3:.2f} | {lt['fastnn'] / lt['torch']:.2f}"
                  if lt else "- | - | -")
        rows.append(f"| {act} | {c * 1e3:.2f} ({nbytes / c / 1e9:.1f} GB/s) | {numba} | "
                    f"{tt * 1e3:.2f} ({nbytes / tt / 1e9:.1f} GB/s) | {c / tt:.2f} | {linear} |")
        print(rows[-1], flush=True)
    table = [f"Activations, float32, {info['cpu']} ({info['isa']} path), {info['cores']} cores, "
             f"{info['threads']} threads; PyTorch {info.get('torch')}; STREAM {stream:.1f} GB/s; "
             f"interleaved medians of {rounds} rounds x 3 calls. `python bench/bench_activation.py`", "",
             "| activation | fastnn C++ fwd+bwd ms, 4M elements | Numba ms | PyTorch ms | C++ / PyTorch | "
             "Linear+act fwd+bwd (256, 1024, 1024) fastnn ms | PyTorch ms | fastnn / PyTorch |",
             "|---|---|---|---|---|---|---|---|"] + rows
    harness.write("activation", payload, table)


if __name__ == "__main__":
    main()
