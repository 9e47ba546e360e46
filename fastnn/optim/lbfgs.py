"""L-BFGS for full-batch problems, PyTorch's ``torch.optim.LBFGS`` algorithm,
arguments and defaults, over the same flat parameter buffer as the other
optimizers.

Shapes: n = number of parameter entries (the flat buffer); the history holds up
to ``history_size`` pairs (s_k, y_k) of (n,) float64 vectors,
s_k = x_{k+1} - x_k and y_k = g_{k+1} - g_k (Nocedal & Wright, "Numerical
Optimization", algorithm 7.4: the two-loop recursion gives d = -H g with
H_0 = (s.y / y.y) I; algorithms 3.5-3.6: the strong-Wolfe line search with
cubic interpolation).

    opt = fnn.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    def closure():
        loss = loss_fn.forward(model.forward(X), y)
        model.backward(loss_fn.backward())
        return loss
    opt.step(closure)

Everything is computed in float64 (PyTorch computes in the parameters' dtype,
so float32 trajectories differ by rounding). Frozen parameters (``trainable``
False) get a zero gradient and are never written, as PyTorch treats parameters
without a gradient.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _validate as V
from .optimizer import Optimizer

LINE_SEARCHES = (None, "strong_wolfe")


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """Minimizer of the cubic through (x1, f1, g1), (x2, f2, g2), clamped to
    ``bounds`` (default: the interval between x1 and x2); the midpoint of the
    bounds when the cubic has no minimizer (PyTorch's ``_cubic_interpolate``)."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    if x1 == x2:
        return (lo + hi) / 2.0
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        if math.isfinite(min_pos):
            return min(max(min_pos, lo), hi)
    return (lo + hi) / 2.0


def _strong_wolfe(obj_func, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """A step t along d meeting the strong Wolfe conditions

        f(t) <= f(0) + c1 t g(0).d     and     |g(t).d| <= c2 |g(0).d|,

    by bracketing then zooming with cubic interpolation (PyTorch's
    ``_strong_wolfe``). ``obj_func(t) -> (f, g)`` evaluates at x + t d and leaves
    the parameters at x. Returns (f(t), g(t), t, evaluations)."""
    d_norm = float(np.max(np.abs(d)))
    f_new, g_new = obj_func(t)
    ls_func_evals = 1
    gtd_new = float(g_new @ d)

    t_prev, f_prev, g_prev, gtd_prev = 0.0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        # extrapolate: the minimizer of the cubic, kept in [t + 0.01 (t - t_prev), 10 t]
        min_step, max_step = t + 0.01 * (t - t_prev), t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1

    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0.0, t], [f, f_new], [g, g_new]

    # zoom: shrink the bracket around a point meeting both conditions
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # A trial within 10% of an end twice in a row (or outside) moves to 10% inside.
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, g_new = obj_func(t)
        ls_func_evals += 1
        gtd_new = float(g_new @ d)
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


class LBFGS(Optimizer):
    """LBFGS(params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
    tolerance_change=1e-9, history_size=100, line_search_fn=None): PyTorch's
    signature, defaults and algorithm.

    ``step(closure)`` runs up to ``max_iter`` iterations (and at most
    ``max_eval`` closure calls, default ``max_iter * 5 // 4``) and returns the
    loss at the start; ``closure()`` recomputes the loss and the gradients (into
    each parameter's ``.grad``) and returns the loss. Each iteration moves

        x <- x + t d,   d = -H g  (two-loop recursion over the last
                                   ``history_size`` (s, y) pairs)

    With ``line_search_fn=None`` the step is fixed: t = lr, except the very first
    iteration, ``t = lr * min(1, 1 / |g|_1)``. With ``"strong_wolfe"``, t starts
    there and a strong-Wolfe line search (c1 = 1e-4, c2 = 0.9) adjusts it.
    It stops early when ``max|g| <= tolerance_grad``, or when the step
    (``max|t d|``), the directional derivative or the loss change falls below
    tolerance_change. The history carries over between ``step`` calls (and is
    part of ``state_dict``). One parameter group only."""

    rule = "lbfgs"
    defaults = {"lr": 1.0}

    def __init__(self, params, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None):
        super().__init__(params, lr=lr)
        if self.device != "cpu":
            raise NotImplementedError("LBFGS runs on the CPU only (its line search and two-loop recursion are "
                                      "host NumPy code): keep the model on the CPU (model.to('cpu')) for full-batch "
                                      "LBFGS, or use a first-order optimizer (SGD, Adam, ...) on cuda")
        if len(self.param_groups) != 1:
            raise ValueError(f"LBFGS takes one parameter group (as PyTorch's), got {len(self.param_groups)}")
        if line_search_fn not in LINE_SEARCHES:
            raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
        self.max_iter = V.positive_int(max_iter, "max_iter")
        self.max_eval = V.positive_int(max_eval if max_eval is not None else self.max_iter * 5 // 4, "max_eval")
        self.tolerance_grad = V.real(tolerance_grad, "tolerance_grad", low=0.0)
        self.tolerance_change = V.real(tolerance_change, "tolerance_change", low=0.0)
        self.history_size = V.positive_int(history_size, "history_size")
        self.line_search_fn = line_search_fn
        n = self.flat_param.size
        self._old_dirs: list[np.ndarray] = []    # y_k
        self._old_stps: list[np.ndarray] = []    # s_k
        self._ro: list[float] = []               # 1 / (y_k . s_k)
        self._h_diag = 1.0
        self._d = np.zeros(n)
        self._step = 0.0
        self._prev_flat_grad = None
        self._prev_loss = None
        self.n_evals = 0

    def _trainable_mask(self):
        """Boolean (n,) over the flat buffer, or None when every parameter is trainable."""
        if all(p.trainable for p in self._params):
            return None
        mask = np.ones(self.flat_param.size, bool)
        for p, b, e in zip(self._params, self.seg_begin[:-1], self.seg_begin[1:]):
            if not p.trainable:
                mask[b:e] = False
        return mask

    def _direction(self, flat_grad):
        """d = -H g by the two-loop recursion (H_0 = h_diag I)."""
        num_old = len(self._old_dirs)
        al = [0.0] * num_old
        q = -flat_grad
        for i in range(num_old - 1, -1, -1):
            al[i] = float(self._old_stps[i] @ q) * self._ro[i]
            q -= al[i] * self._old_dirs[i]
        r = q * self._h_diag
        for i in range(num_old):
            be_i = float(self._old_dirs[i] @ r) * self._ro[i]
            r += (al[i] - be_i) * self._old_stps[i]
        return r

    def step(self, closure):
        """One L-BFGS iteration (up to ``max_iter`` inner steps): the two-loop
        recursion over the last ``history_size`` curvature pairs gives a search
        direction, then a fixed step ``lr`` or a strong-Wolfe line search.

        Parameters
        ----------
        closure : callable
            ``closure() -> float``: recompute the loss on the full batch, run
            backward (filling ``.grad``) and return the loss. The Trainer builds it
            (``fit(X, y, epochs, batch_size=len(X))``).

        Returns
        -------
        float
            The loss at the start of the step.
        """
        if not callable(closure):
            raise TypeError(f"LBFGS.step needs a closure that recomputes the loss and gradients and returns the "
                            f"loss, got {type(closure).__name__}")
        x, grad = self.flat_param, self.flat_grad
        mask = self._trainable_mask()
        lr = float(self.param_groups[0]["lr"])
        tolerance_grad, tolerance_change = self.tolerance_grad, self.tolerance_change

        def put(values):
            """Write float64 ``values`` (n,) into the trainable entries of the parameters.
            A value beyond float32's range becomes inf there (no warning): the
            next loss is then non-finite and evaluate() restores and raises."""
            with np.errstate(over="ignore"):
                if mask is None:
                    x[...] = values
                else:
                    x[mask] = values[mask]

        def evaluate(restore):
            """(loss, float64 gradient with frozen entries zeroed); on a non-finite
            loss the parameters go back to ``restore`` and FloatingPointError is raised."""
            loss = float(closure())
            if not math.isfinite(loss):
                put(restore)
                raise FloatingPointError(f"LBFGS: the closure returned a non-finite loss ({loss}); the "
                                         "parameters are back at the last iterate")
            g = grad.astype(np.float64)
            if mask is not None:
                g[~mask] = 0.0
            return loss, g

        orig_loss, flat_grad = evaluate(x.astype(np.float64))
        loss = orig_loss
        current_evals = 1
        self.n_evals += 1
        if float(np.max(np.abs(flat_grad), initial=0.0)) <= tolerance_grad:
            return orig_loss

        d, t = self._d, self._step
        n_iter = 0
        while n_iter < self.max_iter:
            n_iter += 1
            self.t += 1
            # --- direction ---------------------------------------------------
            if self.t == 1 or self._prev_flat_grad is None:
                d = -flat_grad
                self._old_dirs, self._old_stps, self._ro, self._h_diag = [], [], [], 1.0
            else:
                y = flat_grad - self._prev_flat_grad
                s = d * t
                ys = float(y @ s)
                if ys > 1e-10:
                    if len(self._old_dirs) == self.history_size:
                        self._old_dirs.pop(0)
                        self._old_stps.pop(0)
                        self._ro.pop(0)
                    self._old_dirs.append(y)
                    self._old_stps.append(s)
                    self._ro.append(1.0 / ys)
                    self._h_diag = ys / float(y @ y)
                d = self._direction(flat_grad)
            if mask is not None:
                d[~mask] = 0.0
            self._prev_flat_grad = flat_grad.copy()
            self._prev_loss = loss
            # --- step length -------------------------------------------------
            t = min(1.0, 1.0 / float(np.abs(flat_grad).sum())) * lr if self.t == 1 else lr
            gtd = float(flat_grad @ d)
            if gtd > -tolerance_change:
                break
            x_init = x.astype(np.float64)
            ls_func_evals = 0
            if self.line_search_fn == "strong_wolfe":
                def obj_func(step):
                    put(x_init + step * d)
                    try:
                        return evaluate(x_init)
                    finally:
                        put(x_init)

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(obj_func, t, d, loss, flat_grad, gtd,
                                                                  tolerance_change=tolerance_change)
                put(x_init + t * d)
                opt_cond = float(np.max(np.abs(flat_grad))) <= tolerance_grad
            else:
                put(x_init + t * d)
                opt_cond = False
                if n_iter != self.max_iter:
                    # not after the last iteration: the next call re-evaluates anyway
                    loss, flat_grad = evaluate(x_init)
                    opt_cond = float(np.max(np.abs(flat_grad))) <= tolerance_grad
                    ls_func_evals = 1
            current_evals += ls_func_evals
            self.n_evals += ls_func_evals
            # --- stopping ------------------------------------------------------
            if n_iter == self.max_iter or current_evals >= self.max_eval or opt_cond:
                break
            if float(np.max(np.abs(d * t))) <= tolerance_change:
                break
            if abs(loss - self._prev_loss) < tolerance_change:
                break

        self._d, self._step = d, t
        return orig_loss

    # --- checkpointing ------------------------------------------------------------
    def state_dict(self) -> dict:
        """The base fields plus the whole L-BFGS memory, so a resumed run continues exactly."""
        out = super().state_dict()
        n = self.flat_param.size
        k = len(self._old_dirs)
        out["lbfgs/old_dirs"] = np.array(self._old_dirs).reshape(k, n)
        out["lbfgs/old_stps"] = np.array(self._old_stps).reshape(k, n)
        out["lbfgs/ro"] = np.array(self._ro, np.float64)
        out["lbfgs/h_diag"] = np.array(float(self._h_diag))
        out["lbfgs/d"] = np.array(self._d, np.float64)
        out["lbfgs/step"] = np.array(float(self._step))
        out["lbfgs/n_evals"] = np.array(self.n_evals)
        if self._prev_flat_grad is not None:
            out["lbfgs/prev_flat_grad"] = self._prev_flat_grad.copy()
            out["lbfgs/prev_loss"] = np.array(float(self._prev_loss))
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` (the L-BFGS memory included); checked before anything changes."""
        n = self.flat_param.size
        arrays = {}
        for key in ("old_dirs", "old_stps", "ro", "d"):
            if f"lbfgs/{key}" in state:
                arrays[key] = np.array(state[f"lbfgs/{key}"], np.float64)
        if arrays:
            k = arrays.get("ro", np.zeros(0)).shape[0]
            for key, shape in (("old_dirs", (k, n)), ("old_stps", (k, n)), ("ro", (k,)), ("d", (n,))):
                if key not in arrays or arrays[key].shape != shape:
                    got = arrays[key].shape if key in arrays else "nothing"
                    raise ValueError(f"state_dict['lbfgs/{key}'] must have shape {shape}, got {got}")
            if "lbfgs/prev_flat_grad" in state and np.shape(state["lbfgs/prev_flat_grad"]) != (n,):
                raise ValueError(f"state_dict['lbfgs/prev_flat_grad'] must have shape ({n},), got "
                                 f"{np.shape(state['lbfgs/prev_flat_grad'])}")
        super().load_state_dict(state)
        if not arrays:
            return
        self._old_dirs = [row.copy() for row in arrays["old_dirs"]]
        self._old_stps = [row.copy() for row in arrays["old_stps"]]
        self._ro = [float(r) for r in arrays["ro"]]
        self._d = arrays["d"]
        self._h_diag = float(np.asarray(state["lbfgs/h_diag"])) if "lbfgs/h_diag" in state else 1.0
        self._step = float(np.asarray(state["lbfgs/step"])) if "lbfgs/step" in state else 0.0
        self.n_evals = int(np.asarray(state["lbfgs/n_evals"])) if "lbfgs/n_evals" in state else 0
        if "lbfgs/prev_flat_grad" in state:
            self._prev_flat_grad = np.array(state["lbfgs/prev_flat_grad"], np.float64)
            self._prev_loss = float(np.asarray(state["lbfgs/prev_loss"]))
        else:
            self._prev_flat_grad = self._prev_loss = None
