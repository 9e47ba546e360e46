"""Float64 NumPy references, written from the formulas (not from fastnn)."""
from __future__ import annotations

import math

import numpy as np


def numerical_grad(f, x, eps=1e-6):
    """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) for every
    element i of the array x: the gradient of the scalar f() with respect to x.
    f takes no arguments and reads x, which is perturbed IN PLACE (one element
    at a time, restored after each) so f may see it through a model or a
    closure. The one finite-difference loop of the tests (CS231n's
    eval_numerical_gradient); run it in float64."""
    grad = np.zeros(x.shape, np.float64)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        plus = f()
        x[idx] = old - eps
        minus = f()
        x[idx] = old
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
_erf = np.vectorize(math.erf, otypes=[np.float64])


def sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def act(name, z, alpha):
    z = np.asarray(z, np.float64)
    if name == "identity":
        return z
    if name == "relu":
        return np.maximum(z, 0.0)
    if name in ("leaky_relu", "prelu"):
        return np.where(z > 0, z, alpha * z)
    if name == "elu":
        return np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0)))
    if name == "selu":
        return SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(np.minimum(z, 0)))
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "gelu":
        return 0.5 * z * (1.0 + _erf(z / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * z * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * z**3)))
    if name == "swish":
        return z * sigmoid(z)
    raise ValueError(name)


def act_grad(name, z, alpha):
    """d act / dz, analytically (relu'(0) = 0 as in PyTorch)."""
    z = np.asarray(z, np.float64)
    if name == "identity":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name in ("leaky_relu", "prelu"):
        return np.where(z > 0, 1.0, alpha)
    if name == "elu":
        return np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    if name == "selu":
        return SELU_SCALE * np.where(z > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(z, 0)))
    if name == "sigmoid":
        s = sigmoid(z)
        return s * (1 - s)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "gelu":
        return 0.5 * (1.0 + _erf(z / math.sqrt(2.0))) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if name == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        t = np.tanh(c * (z + 0.044715 * z**3))
        return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * 0.044715 * z * z)
    if name == "swish":
        s = sigmoid(z)
        return s * (1 + z * (1 - s))
    raise ValueError(name)


def softmax_xent(scores, labels):
    s = np.asarray(scores, np.float64)
    s = s - s.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1.0
    return loss, d / n


def optim_reference(rule, p, grads, lr, clip=None, max_norm=None, matrices=(), state_dtype=np.float64, **h):
    """The PyTorch update rules, step by step, in float64. Returns the trajectory.

    clip: global-norm gradient clipping (torch.nn.utils.clip_grad_norm_) before the step;
    max_norm: after the step, every column of each (offset, rows, cols) matrix in
    `matrices` is rescaled to L2 norm <= max_norm.
    state_dtype: the precision the optimizer state is stored in (the parameter's
    dtype, as in PyTorch). The arithmetic stays float64, but each state value is
    rounded to it after its update, so a float32 squared gradient beyond
    float32's range (|g| > ~1.8e19) becomes inf there and that element's step
    becomes zero, as in the kernels and in torch.optim."""
    def stored(s):
        with np.errstate(over="ignore"):
            return s.astype(state_dtype).astype(np.float64)

    p = np.array(p, np.float64)
    s1 = np.zeros_like(p)
    s2 = np.zeros_like(p)
    wd, l1 = h.get("weight_decay", 0.0), h.get("l1", 0.0)
    mu = h.get("momentum", 0.0)
    b1, b2 = h.get("betas", (0.9, 0.999))
    traj = []
    for t, g in enumerate(grads, start=1):
        g = np.array(g, np.float64)
        if clip is not None:
            norm = np.sqrt(np.sum(g * g))
            g = g * min(1.0, clip / (norm + 1e-6))
        if rule == "adamw":
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        g = g + l1 * np.sign(p)
        if rule == "sgd":
            p = p - lr * g
        elif rule == "momentum":
            s1 = stored(mu * s1 + g)
            p = p - lr * s1
        elif rule == "nesterov":
            s1 = stored(mu * s1 + g)
            p = p - lr * (g + mu * s1)
        elif rule == "adagrad":
            s1 = stored(s1 + g * g)
            p = p - lr * g / (np.sqrt(s1) + h.get("eps", 1e-10))
        elif rule == "rmsprop":
            a = h.get("alpha", 0.99)
            s1 = stored(a * s1 + (1 - a) * g * g)
            p = p - lr * g / (np.sqrt(s1) + h.get("eps", 1e-8))
        else:
            s1 = stored(b1 * s1 + (1 - b1) * g)
            s2 = stored(b2 * s2 + (1 - b2) * g * g)
            mhat = s1 / (1 - b1**t)
            vhat = s2 / (1 - b2**t)
            p = p - lr * mhat / (np.sqrt(vhat) + h.get("eps", 1e-8))
        if max_norm is not None:
            for off, r, c in matrices:
                w = p[off:off + r * c].reshape(r, c)
                norms = np.sqrt((w * w).sum(axis=0))
                w *= np.where(norms > max_norm, max_norm / np.maximum(norms, 1e-300), 1.0)
        traj.append(p.copy())
    return traj
