"""L-BFGS for full-batch problems (Nocedal & Wright, "Numerical Optimization",
algorithms 7.4-7.5 for the two-loop recursion, 3.5-3.6 for the strong-Wolfe
line search with cubic interpolation), over the same flat parameter buffer as
the other optimizers.

    opt = fnn.optim.LBFGS(model.parameters(), max_iter=50)
    def closure():
        loss = loss_fn.forward(model.forward(X), y)
        model.backward(loss_fn.backward())
        return loss
    opt.step(closure)
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from .optimizer import Optimizer


def _cubic_min(x1, f1, g1, x2, f2, g2, lo, hi):
    """Minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clamped to [lo, hi]."""
    if x1 == x2:
        return (lo + hi) / 2
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_sq = d1 * d1 - g1 * g2
    if d2_sq >= 0:
        d2 = math.sqrt(d2_sq)
        if x1 <= x2:
            pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        if math.isfinite(pos):
            return min(max(pos, lo), hi)
    return (lo + hi) / 2


class LBFGS(Optimizer):
    """Limited-memory BFGS with a strong-Wolfe line search (PyTorch's LBFGS
    arguments and defaults, line search always on). ``step(closure)`` runs up to
    ``max_iter`` iterations; ``closure()`` recomputes the loss and the gradients
    (into each parameter's ``.grad``) and returns the loss."""

    rule = "lbfgs"
    defaults = {"lr": 1.0}

    def __init__(self, params, lr=1.0, max_iter=20, history_size=10, tolerance_grad=1e-7, tolerance_change=1e-9,
                 max_eval=None):
        super().__init__(params, lr=lr)
        self.max_iter = V.positive_int(max_iter, "max_iter")
        self.history_size = V.positive_int(history_size, "history_size")
        self.max_eval = V.positive_int(max_eval if max_eval is not None else self.max_iter * 5 // 4, "max_eval")
        self.tolerance_grad = V.real(tolerance_grad, "tolerance_grad", low=0.0)
        self.tolerance_change = V.real(tolerance_change, "tolerance_change", low=0.0)
        self._s: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.n_evals = 0

    def _direction(self, g):
        """-H g by the two-loop recursion over the stored (s, y) pairs."""
        q = -g.astype(np.float64)
        alphas = []
        for s, y in zip(reversed(self._s), reversed(self._y)):
            rho = 1.0 / float(y @ s)
            a = rho * float(s @ q)
            q -= a * y
            alphas.append((rho, a))
        if self._s:
            s, y = self._s[-1], self._y[-1]
            q *= float(s @ y) / float(y @ y)
        for (s, y), (rho, a) in zip(zip(self._s, self._y), reversed(alphas)):
            b = rho * float(y @ q)
            q += (a - b) * s
        return q

    def step(self, closure):
        if not callable(closure):
            raise TypeError("LBFGS.step needs a closure that recomputes the loss and gradients")
        x, grad = self.flat_param, self.flat_grad
        evals = [0]

        def evaluate():
            evals[0] += 1
            loss = float(closure())
            if not math.isfinite(loss):
                raise FloatingPointError(f"LBFGS: the closure returned a non-finite loss ({loss})")
            return loss

        loss = evaluate()
        first_loss = loss
        g = grad.astype(np.float64)
        if np.max(np.abs(g)) <= self.tolerance_grad:
            return first_loss
        lr = self.param_groups[0]["lr"]
        for it in range(self.max_iter):
            self.t += 1
            d = self._direction(g)
            gtd = float(g @ d)
            if gtd > -self.tolerance_change:
                break
            t = min(1.0, 1.0 / float(np.abs(g).sum())) * lr if (self.t == 1 and not self._s) else lr
            x0 = x.astype(np.float64)

            def phi(step):
                x[...] = x0 + step * d
                f = evaluate()
                gg = grad.astype(np.float64)
                return f, float(gg @ d), gg

            t, new_loss, new_g = self._strong_wolfe(phi, loss, gtd, t, d)
            x[...] = x0 + t * d
            s_vec = t * d
            y_vec = new_g - g
            if float(y_vec @ s_vec) > 1e-10:
                self._s.append(s_vec)
                self._y.append(y_vec)
                if len(self._s) > self.history_size:
                    self._s.pop(0)
                    self._y.pop(0)
            change = abs(new_loss - loss)
            loss, g = new_loss, new_g
            if evals[0] >= self.max_eval or np.max(np.abs(g)) <= self.tolerance_grad:
                break
            if np.max(np.abs(s_vec)) <= self.tolerance_change or change < self.tolerance_change:
                break
        self.n_evals += evals[0]
        grad[...] = g
        return first_loss

    def _strong_wolfe(self, phi, f0, gtd0, t, d, c1=1e-4, c2=0.9, max_ls=25):
        """A step t satisfying the strong Wolfe conditions; returns (t, f(t), g(t))
        with the parameters left at x0 + t d."""
        d_max = float(np.max(np.abs(d)))
        t_prev, f_prev, gtd_prev, g_prev = 0.0, f0, gtd0, None
        f, gtd, g = phi(t)
        bracket = None
        for i in range(max_ls):
            if f > f0 + c1 * t * gtd0 or (i > 0 and f >= f_prev):
                bracket = [(t_prev, f_prev, gtd_prev, g_prev), (t, f, gtd, g)]
                break
            if abs(gtd) <= -c2 * gtd0:
                return t, f, g
            if gtd >= 0:
                bracket = [(t, f, gtd, g), (t_prev, f_prev, gtd_prev, g_prev)]
                break
            lo, hi = t + 0.01 * (t - t_prev), t * 10
            t_new = _cubic_min(t_prev, f_prev, gtd_prev, t, f, gtd, lo, hi)
            t_prev, f_prev, gtd_prev, g_prev = t, f, gtd, g
            t = t_new
            f, gtd, g = phi(t)
        if bracket is None:
            return t, f, g
        # zoom: bracket[0] is the low end (lower f, satisfies sufficient decrease)
        (tl, fl, gl, ggl), (th, fh, gh, ggh) = bracket
        best = (tl, fl, ggl)
        for _ in range(max_ls):
            if abs(th - tl) * d_max < self.tolerance_change:
                break
            lo, hi = min(tl, th), max(tl, th)
            width = hi - lo
            t = _cubic_min(tl, fl, gl, th, fh, gh, lo + 0.1 * width, hi - 0.1 * width)
            f, gtd, g = phi(t)
            if f > f0 + c1 * t * gtd0 or f >= fl:
                th, fh, gh, ggh = t, f, gtd, g
            else:
                if abs(gtd) <= -c2 * gtd0:
                    return t, f, g
                if gtd * (th - tl) >= 0:
                    th, fh, gh, ggh = tl, fl, gl, ggl
                tl, fl, gl, ggl = t, f, gtd, g
                best = (tl, fl, ggl)
        t, f, g = best
        if g is None:  # never improved: re-evaluate at the best step so params and grads agree
            f, _, g = phi(t)
        else:
            phi(t)
        return t, f, g
