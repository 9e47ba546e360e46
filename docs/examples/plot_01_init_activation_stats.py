"""
Activation statistics of a 10-layer network, per initialization
================================================================

The lecture's experiment: push a batch of unit-Gaussian inputs through ten
``Linear(500, 500)`` layers and look at the distribution of every layer's
output. With small random weights (``0.01 * randn``) tanh activations shrink
to zero layer after layer (and so do the gradients); with ``randn`` (std 1)
they saturate at -1 and +1; Xavier keeps them spread out. For ReLU, Xavier
still halves the variance at every layer, and He init (``sqrt(2 / fan_in)``)
fixes it.

:func:`fastnn.diagnostics.activation_stats` returns, for every layer that
applies a nonlinearity, the mean and std of its output and the fractions of
saturated and dead units.
"""
import matplotlib.pyplot as plt
import numpy as np

import fastnn as fnn
from fastnn.diagnostics import activation_stats

X = np.random.default_rng(0).standard_normal((1000, 500)).astype(np.float32)


def deep_net(init, activation, layers=10, width=500):
    fnn.manual_seed(0)
    return fnn.nn.Sequential(*[fnn.nn.Linear(width, width, activation=activation, init=init)
                               for _ in range(layers)])


cases = [("small_random", "tanh"), ("normal", "tanh"), ("xavier_normal", "tanh"),
         ("xavier_normal", "relu"), ("he_normal", "relu")]
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for init, act in cases:
    stats = activation_stats(deep_net(init, act), X)
    std = [s["std"] for s in stats]
    ax = axes[0] if act == "tanh" else axes[1]
    ax.semilogy(range(1, len(std) + 1), std, "o-", label=init)
    print(f"{act:5s} {init:14s} std per layer: " + " ".join(f"{s:.2g}" for s in std))
    last = stats[-1]
    frac = last["saturated"] if act == "tanh" else last["dead"]
    print(f"{'':20s} last layer: {'saturated' if act == 'tanh' else 'dead'} fraction {frac:.2f}")
for ax, act in zip(axes, ("tanh", "relu")):
    ax.set_title(f"{act}: std of each layer's output")
    ax.set_xlabel("layer")
    ax.set_ylabel("std (log scale)")
    ax.legend()
fig.tight_layout()

# %%
# Histograms of the activations, layer by layer, for tanh with std-1 weights
# (saturated) and Xavier (healthy), as on the lecture's slides.
# :func:`fastnn.diagnostics.plot_activation_stats` draws them.
for init in ("normal", "xavier_normal"):
    model = deep_net(init, "tanh")
    fig = fnn.diagnostics.plot_activation_stats(activation_stats(model, X), X=X, max_layers=10)
    fig.suptitle(f"tanh, init={init}")
