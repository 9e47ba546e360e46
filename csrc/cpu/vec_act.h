// Vector forms of the activations, for GEMM epilogues applied while the output
// tile is still in registers and for the elementwise loops. Those whose formula
// is a comparison and a product (identity, relu, leaky_relu, prelu) restate
// ops/activation.h lane by lane and give bit-identical results (same
// comparison, same NaN and signed-zero behaviour). Those with an exponential
// (sigmoid, tanh, elu, selu, swish, gelu, gelu_tanh) use cpu/vec_math.h's
// float exp/tanh/erfc, within ~1e-7 relative of libm's, in the same structure
// as the scalar formula (the same stable branches, mul_vanishing's limits, NaN
// in -> NaN out); their double lanes run the scalar formula. Every path is
// checked against the float64 oracle (tests/test_linear_act.py, test_nn.py,
// test_activation_vector_forms in test_numerical_safety.py).
// Included only by per-ISA sources, inside namespace <isa>.
#pragma once

#include "cpu/simd.h"
#include "cpu/vec_math.h"
#include "ops/activation.h"

namespace fastnn::cpu::FASTNN_ISA::simd {

template <class F> struct VecAct { static constexpr bool kAvailable = false; };

// forward(z, alpha) = act(z); backward(dy, z, y, alpha) = dy * act'(z or y).
template <> struct VecAct<act::Identity> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V) { return z; }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V, V) { return dy; }
};

template <> struct VecAct<act::Relu> {
  static constexpr bool kAvailable = true;
  // max(+0, z) returns its second operand for NaN and for -0, like 0 > z ? 0 : z.
  template <class S, class V> static FASTNN_INLINE V forward(V z, V) { return S::max(S::zero(), z); }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V) {
    return S::select_pos(y, dy, S::zero());
  }
};

template <> struct VecAct<act::LeakyRelu> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) { return S::select_pos(z, z, S::mul(a, z)); }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V a) {
    return S::select_pos(y, dy, S::mul(dy, a));
  }
};

template <> struct VecAct<act::Prelu> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) { return S::select_pos(z, z, S::mul(a, z)); }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V z, V, V a) {
    return S::select_pos(z, dy, S::mul(dy, a));
  }
};

// out[0, n) = f(p), p[k] pointing at input k: whole vectors in place, the last
// n % W elements through zero-padded copies. Every element takes the same
// vector formula wherever it sits, so its bits never depend on the length of
// the array or on where a tile's edge falls (a batch of 50 rows gives the rows
// of a batch of 256 bit for bit).
template <class S, class T, int K, class Fn>
FASTNN_INLINE void vec_run(int64_t n, T* out, const T* const (&in)[K], Fn f) {
  const T* p[K];
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) {
    for (int k = 0; k < K; ++k) p[k] = in[k] + i;
    S::store(out + i, f(p));
  }
  if (i < n) {
    const int64_t rest = n - i;
    alignas(64) T pad[K][S::W];
    alignas(64) T res[S::W];
    for (int k = 0; k < K; ++k) {
      for (int l = 0; l < S::W; ++l) pad[k][l] = l < rest ? in[k][i + l] : T(0);
      p[k] = pad[k];
    }
    S::store(res, f(p));
    for (int64_t l = 0; l < rest; ++l) out[i + l] = res[l];
  }
}

// The float vector form f, or F's scalar formula lane by lane for double.
template <class F, class V, class Fn> FASTNN_INLINE V act_lanes(V z, V a, Fn f) {
  if constexpr (std::is_same_v<LaneOf<V>, float>) {
    return f(z);
  } else {
    const auto alpha = a[0];
    return lanewise(z, [alpha](auto x) { return F::forward(x, alpha); });
  }
}
template <class F, class V, class Fn> FASTNN_INLINE V grad_lanes(V dy, V z, V y, V a, Fn f) {
  if constexpr (std::is_same_v<LaneOf<V>, float>) {
    return f(dy, z, y);
  } else {
    const auto alpha = a[0];
    return lanewise(dy, z, y, [alpha](auto d, auto zz, auto yy) { return d * F::grad(zz, yy, alpha); });
  }
}

template <> struct VecAct<act::Sigmoid> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::Sigmoid>(z, a, [](auto x) { return vsigmoid(x); });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V) { return dy * (y * (LaneOf<V>(1) - y)); }
};

template <> struct VecAct<act::Tanh> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::Tanh>(z, a, [](auto x) { return vtanh(x); });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V) { return dy * (LaneOf<V>(1) - y * y); }
};

template <> struct VecAct<act::Elu> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::Elu>(z, a, [a](auto x) { return x > V{} ? x : a * vexpm1_nonpos(x > V{} ? V{} : x); });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V a) {
    return S::select_pos(y, dy, dy * (y + a));
  }
};

template <> struct VecAct<act::Selu> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    using T = LaneOf<V>;
    return act_lanes<act::Selu>(z, a, [](auto x) {
      return x > V{} ? T(act::Selu::kScale) * x
                     : T(act::Selu::kScale * act::Selu::kAlpha) * vexpm1_nonpos(x > V{} ? V{} : x);
    });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V, V y, V) {
    using T = LaneOf<V>;
    return S::select_pos(y, dy * T(act::Selu::kScale), dy * (y + T(act::Selu::kScale * act::Selu::kAlpha)));
  }
};

template <> struct VecAct<act::Swish> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::Swish>(z, a, [](auto x) { return vmul_vanishing(x, vsigmoid(x)); });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V z, V y, V a) {
    return grad_lanes<act::Swish>(dy, z, y, a, [](auto d, auto x, auto) {
      const auto s = vsigmoid(x);
      return d * vmul_vanishing(1.0f + vmul_vanishing(x, 1.0f - s), s);
    });
  }
};

// 1 + erf(z / sqrt 2) computed as erfc(-z / sqrt 2).
template <> struct VecAct<act::Gelu> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::Gelu>(z, a, [](auto x) { return vmul_vanishing(0.5f * x, verfc(x * -0.70710678118654752440f)); });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V z, V y, V a) {
    return grad_lanes<act::Gelu>(dy, z, y, a, [](auto d, auto x, auto) {
      const auto cdf = 0.5f * verfc(x * -0.70710678118654752440f);
      const auto pdf = 0.39894228040143267794f * vexp_nonpos(-0.5f * x * x);
      return d * (cdf + vmul_vanishing(x, pdf));
    });
  }
};

template <> struct VecAct<act::GeluTanh> {
  static constexpr bool kAvailable = true;
  template <class S, class V> static FASTNN_INLINE V forward(V z, V a) {
    return act_lanes<act::GeluTanh>(z, a, [](auto x) {
      const auto u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);
      return vmul_vanishing(0.5f * x, 1.0f + vtanh(u));
    });
  }
  template <class S, class V> static FASTNN_INLINE V backward(V dy, V z, V y, V a) {
    return grad_lanes<act::GeluTanh>(dy, z, y, a, [](auto d, auto x, auto) {
      const auto u = 0.79788456080286535588f * (x + 0.044715f * x * x * x);
      const auto t = vtanh(u);
      const auto du = 0.79788456080286535588f * (1.0f + float(3 * 0.044715) * x * x);
      return d * (0.5f * (1.0f + t) + vmul_vanishing(0.5f * x * du, 1.0f - t * t));
    });
  }
};

}  // namespace fastnn::cpu::FASTNN_ISA::simd
