// Vector exp, expm1, tanh, sigmoid and erfc of float lanes, for the activations'
// vector forms (cpu/vec_act.h). Written once with GCC vector extensions, which
// work on every register type of cpu/simd.h (__m512, __m256 and the baseline's
// vector_size types are all GCC vectors), so each ISA gets its own code from
// the same source. Cephes' single-precision formulas (range reduction by ln 2,
// a degree-5 polynomial; tanhf's odd polynomial below 0.625): about 1-2 ulp
// against the float64 reference (tests/test_linear_act.py and test_nn.py check
// every activation on every ISA path at TOL = 1e-4 of the scale; the errors
// seen are ~1e-7 relative).
//
// Only what the activations need: every exp here has an argument <= 0
// (sigmoid, tanh and swish use exp(-|z|), elu and selu expm1 of z <= 0), so
// there is no overflow. Below -87.34 the result is flushed to 0 where the
// scalar libm would return a denormal (< 1.2e-38). NaN stays NaN; -inf gives 0.
// Included only by per-ISA sources, inside namespace <isa>.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

namespace fastnn::cpu::FASTNN_ISA::simd {

template <class V> using LaneOf = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

template <class V> struct UIntVec { typedef uint32_t type __attribute__((vector_size(sizeof(V)))); };
template <class V> struct IntVec { typedef int32_t type __attribute__((vector_size(sizeof(V)))); };

template <class V> FASTNN_INLINE V vsplat(float s) { return V{} + s; }

// |x| and x's sign bit moved onto a non-negative y.
template <class V> FASTNN_INLINE V vabs(V x) {
  using VU = typename UIntVec<V>::type;
  return (V)((VU)x & 0x7fffffffu);
}
template <class V> FASTNN_INLINE V vcopysign_pos(V y, V x) {
  using VU = typename UIntVec<V>::type;
  return (V)((VU)y | ((VU)x & 0x80000000u));
}

// exp(x) for x <= 0 (and small positive x: 2^n is built for n <= 127, so
// x up to about 88 would work, but nothing here needs it).
template <class V> FASTNN_INLINE V vexp_nonpos(V x) {
  using VI = typename IntVec<V>::type;
  using VU = typename UIntVec<V>::type;
  const V lo = vsplat<V>(-87.33654475f);  // exp(lo) = FLT_MIN
  V xc = x < lo ? lo : x;                 // NaN compares false and stays
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |n| < 2^22).
  const V magic = vsplat<V>(12582912.0f);
  V fx = (xc * 1.44269504088896341f + magic) - magic;
  fx = fx == fx ? fx : V{};  // NaN: any n; the result is NaN through r below
  V r = xc - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  const V z = r * r;
  V y = vsplat<V>(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * z + r + 1.0f;
  // 2^n with n in [-126, 0]: the exponent field n + 127.
  const VI n = __builtin_convertvector(fx, VI);
  const VU e = (VU)(n + 127) << 23;
  y = y * (V)e;
  return x < lo ? V{} : y;
}

// expm1(x) = exp(x) - 1 for x <= 0: its Taylor polynomial where exp(x) - 1
// would cancel (x > -0.5; the truncation error is below 1e-8 relative there).
template <class V> FASTNN_INLINE V vexpm1_nonpos(V x) {
  V p = vsplat<V>(1.0f / 40320.0f);
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  p = p * x + 1.0f;
  const V small = p * x;
  const V big = vexp_nonpos(x) - 1.0f;
  return x > vsplat<V>(-0.5f) ? small : big;
}

// tanh(x): Cephes tanhf's odd polynomial for |x| < 0.625, else
// (1 - e) / (1 + e) with e = exp(-2|x|), no cancellation (e <= 0.29).
// Computed on |x|, the sign put back last, so tanh(-0) = -0.
template <class V> FASTNN_INLINE V vtanh(V x) {
  const V a = vabs(x);
  const V z = a * a;
  V p = vsplat<V>(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const V small = a * (p * z) + a;
  const V e = vexp_nonpos(a * -2.0f);
  const V big = (1.0f - e) / (1.0f + e);
  return vcopysign_pos(a < vsplat<V>(0.625f) ? small : big, x);
}

// sigmoid(x) as ops/activation.h computes it: 1 / (1 + exp(-x)) for x >= 0,
// e / (1 + e) with e = exp(x) below: never the exp of a large positive number.
template <class V> FASTNN_INLINE V vsigmoid(V x) {
  const V e = vexp_nonpos(-vabs(x));
  const V s = 1.0f / (1.0f + e);
  return x >= V{} ? s : e * s;
}

// erfc(x), Numerical Recipes' erfcc (a Chebyshev fit of t exp(-x^2 + p(t)),
// t = 1 / (1 + |x| / 2): fractional error below 1.2e-7 everywhere), 2 - erfc(|x|)
// for x < 0. No cancellation on either side, so 1 + erf(x) = erfc(-x) keeps its
// relative accuracy where erf(x) is near -1 (gelu of a negative z).
template <class V> FASTNN_INLINE V verfc(V x) {
  const V a = vabs(x);
  const V t = 1.0f / (1.0f + 0.5f * a);
  V p = vsplat<V>(0.17087277f);
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  // The exponent is at most 3e-8 (at x = 0), within vexp_nonpos's range.
  const V r = t * vexp_nonpos(p - a * a);
  return x < V{} ? 2.0f - r : r;
}

// mul_vanishing(a, s): 0 where s == 0 (so +-inf * 0 is 0), else a * s.
template <class V> FASTNN_INLINE V vmul_vanishing(V a, V s) { return s == V{} ? V{} : a * s; }

// f applied lane by lane (the double path of an activation with only a float
// vector form: the same cost as the scalar loop it replaces).
template <class V, class F> FASTNN_INLINE V lanewise(V x, F f) {
  constexpr int W = int(sizeof(V) / sizeof(LaneOf<V>));
  V r;
  for (int i = 0; i < W; ++i) r[i] = f(x[i]);
  return r;
}
template <class V, class F> FASTNN_INLINE V lanewise(V x, V y, V z, F f) {
  constexpr int W = int(sizeof(V) / sizeof(LaneOf<V>));
  V r;
  for (int i = 0; i < W; ++i) r[i] = f(x[i], y[i], z[i]);
  return r;
}

}  // namespace fastnn::cpu::FASTNN_ISA::simd
