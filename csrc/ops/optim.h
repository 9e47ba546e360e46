// Per-element optimizer update rules, written once for CPU and CUDA.
//
// p: parameter, g: gradient, s1/s2: the rule's state (velocity, squared-gradient
// average, Adam moments). Formulas and defaults are PyTorch's (torch.optim):
//   sgd       p -= lr * g
//   momentum  v = mu * v + g;            p -= lr * v
//   nesterov  v = mu * v + g;            p -= lr * (g + mu * v)
//   adagrad   s += g^2;                  p -= lr * g / (sqrt(s) + eps)
//   rmsprop   s = a s + (1 - a) g^2;     p -= lr * g / (sqrt(s) + eps)
//   adam      m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//             p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps),  bc_i = 1 - b_i^t
//   adamw     p *= 1 - lr * wd, then adam (decoupled decay, Loshchilov & Hutter)
// The gradient is first scaled by grad_scale (global-norm clipping: the
// optimizer passes min(1, max_norm / ||g||)); then penalties enter it: L2
// g += wd * p (all rules but adamw), L1 g += l1 * sign(p) (elastic net when
// both are set).
#pragma once

#include "common.h"

namespace fastnn {

enum class Rule : int { sgd = 0, momentum, nesterov, adagrad, rmsprop, adam, adamw };

template <class T>
struct OptimHyper {
  T lr, weight_decay, l1;
  T momentum;             // sgd family
  T alpha;                // rmsprop smoothing
  T beta1, beta2;         // adam family
  T eps;
  T bias_correction1;     // 1 - beta1^t
  T bias_correction2;     // 1 - beta2^t
  T grad_scale;           // 1, or the global-norm clipping factor
};

template <Rule R, class T>
FASTNN_HD void optim_update(T& p, T g, T& s1, T& s2, const OptimHyper<T>& h) {
  g *= h.grad_scale;
  if constexpr (R == Rule::adamw) {
    p *= T(1) - h.lr * h.weight_decay;
  } else {
    g += h.weight_decay * p;
  }
  g += h.l1 * T((p > T(0)) - (p < T(0)));

  if constexpr (R == Rule::sgd) {
    p -= h.lr * g;
  } else if constexpr (R == Rule::momentum) {
    s1 = h.momentum * s1 + g;
    p -= h.lr * s1;
  } else if constexpr (R == Rule::nesterov) {
    s1 = h.momentum * s1 + g;
    p -= h.lr * (g + h.momentum * s1);
  } else if constexpr (R == Rule::adagrad) {
    s1 += g * g;
    p -= h.lr * g / (math::sqrt(s1) + h.eps);
  } else if constexpr (R == Rule::rmsprop) {
    s1 = h.alpha * s1 + (T(1) - h.alpha) * g * g;
    p -= h.lr * g / (math::sqrt(s1) + h.eps);
  } else {  // adam, adamw
    s1 = h.beta1 * s1 + (T(1) - h.beta1) * g;
    s2 = h.beta2 * s2 + (T(1) - h.beta2) * g * g;
    T denom = math::sqrt(s2) / math::sqrt(h.bias_correction2) + h.eps;
    p -= (h.lr / h.bias_correction1) * s1 / denom;
  }
}

}  // namespace fastnn
