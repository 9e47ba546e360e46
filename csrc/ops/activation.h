// Activation functions: the one home of their math, for CPU and CUDA alike.
//
// Each functor has
//   forward(z, alpha) -> y                 the activation of the pre-activation z
//   grad(z, y, alpha) -> dy/dz             its derivative
//   kGradFromOutput                        true when grad() reads only y, so the
//                                          forward pass need not keep z
// `alpha` is the one hyperparameter some activations have (leaky_relu slope,
// elu alpha, prelu's learned slope); the others ignore it.
//
// Conventions follow PyTorch: relu'(0) = 0; gelu is the erf form
// 0.5 z (1 + erf(z / sqrt 2)), gelu_tanh the tanh approximation of Hendrycks &
// Gimpel (2016); selu constants from Klambauer et al. (2017); swish is
// z * sigmoid(z) (PyTorch's SiLU).
#pragma once

#include "common.h"

namespace fastnn {

// The one list of activations: X(name, functor). It generates the Act enum,
// its names (exported by fastnn._C as ACTIVATIONS; fastnn/backend/codes.py is
// the Python copy a test compares), the visit_act switch and the table of
// which activations keep the pre-activation for backward. A new activation is
// a functor below and one line here.
#define FASTNN_ACTIVATIONS(X) \
  X(identity, Identity)       \
  X(relu, Relu)               \
  X(leaky_relu, LeakyRelu)    \
  X(prelu, Prelu)             \
  X(elu, Elu)                 \
  X(selu, Selu)               \
  X(sigmoid, Sigmoid)         \
  X(tanh, Tanh)               \
  X(gelu, Gelu)               \
  X(gelu_tanh, GeluTanh)      \
  X(swish, Swish)

enum class Act : int {
#define FASTNN_ACT_ENUM(name, F) name,
  FASTNN_ACTIVATIONS(FASTNN_ACT_ENUM)
#undef FASTNN_ACT_ENUM
};
#define FASTNN_ACT_COUNT(name, F) +1
constexpr int kNumActs = 0 FASTNN_ACTIVATIONS(FASTNN_ACT_COUNT);
#undef FASTNN_ACT_COUNT
#define FASTNN_ACT_NAME(name, F) #name,
constexpr const char* kActNames[] = {FASTNN_ACTIVATIONS(FASTNN_ACT_NAME)};
#undef FASTNN_ACT_NAME

namespace act {

// a * s where s is a factor that vanishes as |z| -> inf (a probability, a
// Gaussian density, 1 - tanh^2): 0 once s is 0, so a = +-inf gives the limit 0
// instead of inf * 0 = NaN. NaN in either operand still gives NaN.
template <class T> FASTNN_HD T mul_vanishing(T a, T s) { return s == T(0) ? T(0) : a * s; }

template <class T> FASTNN_HD T sigmoid(T z) {
  // Stable on both sides: never exponentiates a large positive number.
  if (z >= T(0)) return T(1) / (T(1) + math::exp(-z));
  T e = math::exp(z);
  return e / (T(1) + e);
}

struct Identity {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T) { return z; }
  template <class T> FASTNN_HD static T grad(T, T, T) { return T(1); }
};

// relu(NaN) = NaN (PyTorch's convention): a NaN pre-activation must reach the
// loss, not be silently replaced by 0. Written as max(0, z) with x86 maxps's
// operand rule (the second operand wins on NaN and on equal zeros) so the
// vector form in cpu/vec_act.h is bit-identical.
struct Relu {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T) { return T(0) > z ? T(0) : z; }
  template <class T> FASTNN_HD static T grad(T, T y, T) { return y > T(0) ? T(1) : T(0); }
};

// alpha >= 0 is required (checked at the binding) so that sign(y) == sign(z).
struct LeakyRelu {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T a) { return z > T(0) ? z : a * z; }
  template <class T> FASTNN_HD static T grad(T, T y, T a) { return y > T(0) ? T(1) : a; }
};

// The learned slope may take any sign, so backward reads z.
struct Prelu {
  static constexpr bool kGradFromOutput = false;
  template <class T> FASTNN_HD static T forward(T z, T a) { return z > T(0) ? z : a * z; }
  template <class T> FASTNN_HD static T grad(T z, T, T a) { return z > T(0) ? T(1) : a; }
  // d y / d alpha
  template <class T> FASTNN_HD static T grad_alpha(T z) { return z > T(0) ? T(0) : z; }
};

// alpha > 0 is required: then for z <= 0, y + alpha = alpha * exp(z) = dy/dz.
struct Elu {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T a) { return z > T(0) ? z : a * math::expm1(z); }
  template <class T> FASTNN_HD static T grad(T, T y, T a) { return y > T(0) ? T(1) : y + a; }
};

struct Selu {
  static constexpr double kAlpha = 1.6732632423543772848170429916717;
  static constexpr double kScale = 1.0507009873554804934193349852946;
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T) {
    return z > T(0) ? T(kScale) * z : T(kScale * kAlpha) * math::expm1(z);
  }
  template <class T> FASTNN_HD static T grad(T, T y, T) {
    return y > T(0) ? T(kScale) : y + T(kScale * kAlpha);
  }
};

struct Sigmoid {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T) { return sigmoid(z); }
  template <class T> FASTNN_HD static T grad(T, T y, T) { return y * (T(1) - y); }
};

struct Tanh {
  static constexpr bool kGradFromOutput = true;
  template <class T> FASTNN_HD static T forward(T z, T) { return math::tanh(z); }
  template <class T> FASTNN_HD static T grad(T, T y, T) { return T(1) - y * y; }
};

struct Gelu {
  static constexpr bool kGradFromOutput = false;
  template <class T> FASTNN_HD static T forward(T z, T) {
    return mul_vanishing(T(0.5) * z, T(1) + math::erf(z * T(0.70710678118654752440)));
  }
  template <class T> FASTNN_HD static T grad(T z, T, T) {
    T cdf = T(0.5) * (T(1) + math::erf(z * T(0.70710678118654752440)));
    T pdf = T(0.39894228040143267794) * math::exp(T(-0.5) * z * z);
    return cdf + mul_vanishing(z, pdf);
  }
};

struct GeluTanh {
  static constexpr bool kGradFromOutput = false;
  template <class T> FASTNN_HD static T forward(T z, T) {
    T u = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
    return mul_vanishing(T(0.5) * z, T(1) + math::tanh(u));
  }
  template <class T> FASTNN_HD static T grad(T z, T, T) {
    T u = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
    T t = math::tanh(u);
    T du = T(0.79788456080286535588) * (T(1) + T(3 * 0.044715) * z * z);
    // (1 - t^2) reaches 0 while z^2 in du may overflow: the product's limit is 0.
    return T(0.5) * (T(1) + t) + mul_vanishing(T(0.5) * z * du, T(1) - t * t);
  }
};

struct Swish {
  static constexpr bool kGradFromOutput = false;
  template <class T> FASTNN_HD static T forward(T z, T) { return mul_vanishing(z, sigmoid(z)); }
  template <class T> FASTNN_HD static T grad(T z, T, T) {
    T s = sigmoid(z);
    return mul_vanishing(T(1) + mul_vanishing(z, T(1) - s), s);
  }
};

}  // namespace act

// The one switch from the runtime Act tag to its functor type: f(act::Relu{}).
template <class F> FASTNN_HD decltype(auto) visit_act(Act a, F&& f) {
  switch (a) {
#define FASTNN_ACT_CASE(name, Functor) \
  case Act::name: return f(act::Functor{});
    FASTNN_ACTIVATIONS(FASTNN_ACT_CASE)
#undef FASTNN_ACT_CASE
    default: return f(act::Identity{});
  }
}

// True when forward must also write the pre-activation z for backward.
FASTNN_HD bool act_saves_preactivation(Act a) {
  return visit_act(a, [](auto f) { return !decltype(f)::kGradFromOutput; });
}

}  // namespace fastnn
