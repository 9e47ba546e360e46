// Vector forms of the activations whose formula is a comparison and a product
// (identity, relu, leaky_relu, prelu), for GEMM epilogues applied while the
// output tile is still in registers. They restate ops/activation.h lane by lane
// and give bit-identical results (same comparison, same NaN and signed-zero
// behaviour; tests/test_linear_act.py checks every path against the oracle).
// Activations without a vector form here go through their scalar formula.
// Included only by per-ISA sources, inside namespace <isa>.
#pragma once

#include "cpu/simd.h"
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

}  // namespace fastnn::cpu::FASTNN_ISA::simd
