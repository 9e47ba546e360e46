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

// The one list of update rules; generates the Rule enum, its names (fastnn._C
// RULES) and the CPU dispatch switch.
#define FASTNN_OPTIM_RULES(X) X(sgd) X(momentum) X(nesterov) X(adagrad) X(rmsprop) X(adam) X(adamw)

enum class Rule : int {
#define FASTNN_RULE_ENUM(name) name,
  FASTNN_OPTIM_RULES(FASTNN_RULE_ENUM)
#undef FASTNN_RULE_ENUM
};
#define FASTNN_RULE_COUNT(name) +1
constexpr int kNumRules = 0 FASTNN_OPTIM_RULES(FASTNN_RULE_COUNT);
#undef FASTNN_RULE_COUNT
#define FASTNN_RULE_NAME(name) #name,
constexpr const char* kRuleNames[] = {FASTNN_OPTIM_RULES(FASTNN_RULE_NAME)};
#undef FASTNN_RULE_NAME

// The fields of OptimHyper, in order: one row of the optimizer's hyperparameter
// table per flat-buffer segment (fastnn._C HYPER_FIELDS).
#define FASTNN_OPTIM_HYPER(X) \
  X(lr) X(weight_decay) X(l1) X(momentum) X(alpha) X(beta1) X(beta2) X(eps) X(bias_correction1) X(bias_correction2) \
  X(grad_scale)

// momentum: sgd family; alpha: rmsprop smoothing; beta1, beta2: adam family;
// bias_correction1/2: 1 - beta1^t, 1 - beta2^t; grad_scale: 1, or the
// global-norm clipping factor.
template <class T>
struct OptimHyper {
#define FASTNN_HYPER_FIELD(name) T name;
  FASTNN_OPTIM_HYPER(FASTNN_HYPER_FIELD)
#undef FASTNN_HYPER_FIELD
};
#define FASTNN_HYPER_NAME(name) #name,
constexpr const char* kHyperFields[] = {FASTNN_OPTIM_HYPER(FASTNN_HYPER_NAME)};
#undef FASTNN_HYPER_NAME
constexpr int kNumHyperFields = int(sizeof(kHyperFields) / sizeof(kHyperFields[0]));

// One row of the optimizer's float64 hyperparameter table (kNumHyperFields
// values in FASTNN_OPTIM_HYPER's order) as OptimHyper<T>: what the CPU and
// CUDA bindings hand their kernels.
template <class T>
inline OptimHyper<T> optim_hyper_from_row(const double* row) {
  OptimHyper<T> h{};
  int field = 0;
#define FASTNN_HYPER_FROM_ROW(name) h.name = T(row[field++]);
  FASTNN_OPTIM_HYPER(FASTNN_HYPER_FROM_ROW)
#undef FASTNN_HYPER_FROM_ROW
  return h;
}

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

// Max-norm constraint (Srivastava et al. 2014): the factor that brings a unit's
// incoming weight vector of L2 norm `norm` back onto the ball of radius
// `max_norm`, 1 when it is inside. Computed in double from the sum of squares.
FASTNN_HD double max_norm_scale(double norm, double max_norm) { return norm > max_norm ? max_norm / norm : 1.0; }

}  // namespace fastnn
