// The few SIMD operations the CPU kernels need, for this translation unit's
// vector width (FASTNN_VBYTES): one register type per element type and
// always-inline helpers around it. AVX-512 and AVX2 use intrinsics so each
// helper is exactly one instruction (a broadcast is a load, never a scalar op
// plus a shuffle); the baseline path uses GCC vector extensions.
// Included only by per-ISA sources (cpu/isa.h), inside namespace <isa>.
#pragma once

#include <cstring>
#include <utility>

#if FASTNN_VBYTES >= 32
#include <immintrin.h>
#endif

#include "cpu/isa.h"

#define FASTNN_INLINE inline __attribute__((always_inline))

namespace fastnn::cpu::FASTNN_ISA::simd {

template <class T> struct Vec;

#if FASTNN_VBYTES == 64

template <> struct Vec<float> {
  using V = __m512;
  static constexpr int W = 16;
  static FASTNN_INLINE V zero() { return _mm512_setzero_ps(); }
  static FASTNN_INLINE V set1(float x) { return _mm512_set1_ps(x); }
  static FASTNN_INLINE V load(const float* p) { return _mm512_loadu_ps(p); }
  static FASTNN_INLINE V broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static FASTNN_INLINE void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static FASTNN_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static FASTNN_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static FASTNN_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  // The masked form avoids GCC 12's -Wmaybe-uninitialized on _mm512_max_ps.
  static FASTNN_INLINE V max(V a, V b) { return _mm512_mask_max_ps(a, __mmask16(0xFFFF), a, b); }
  // r[i][j] -> r[j][i] for a W x W block held in W registers: 32-bit, then
  // 64-bit interleaves within 128-bit lanes, then two rounds of lane shuffles.
  static FASTNN_INLINE void transpose(V* r) {
    V t[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
      const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
      const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
      r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
      r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
      r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
      r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
      t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
      t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
      t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
  }
  // positive(z) ? a : b
  static FASTNN_INLINE V select_pos(V z, V a, V b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(z, zero(), _CMP_GT_OQ), b, a);
  }
};

template <> struct Vec<double> {
  using V = __m512d;
  static constexpr int W = 8;
  static FASTNN_INLINE V zero() { return _mm512_setzero_pd(); }
  static FASTNN_INLINE V set1(double x) { return _mm512_set1_pd(x); }
  static FASTNN_INLINE V load(const double* p) { return _mm512_loadu_pd(p); }
  static FASTNN_INLINE V broadcast(const double* p) { return _mm512_set1_pd(*p); }
  static FASTNN_INLINE void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static FASTNN_INLINE V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static FASTNN_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static FASTNN_INLINE V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static FASTNN_INLINE V max(V a, V b) { return _mm512_mask_max_pd(a, __mmask8(0xFF), a, b); }
  static FASTNN_INLINE void transpose(V* r) {
    V t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0x88);
      u[i + 1] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0x88);
      u[i + 2] = _mm512_shuffle_f64x2(t[i], t[i + 2], 0xdd);
      u[i + 3] = _mm512_shuffle_f64x2(t[i + 1], t[i + 3], 0xdd);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0x88);
      r[i + 4] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0xdd);
    }
  }
  static FASTNN_INLINE V select_pos(V z, V a, V b) {
    return _mm512_mask_blend_pd(_mm512_cmp_pd_mask(z, zero(), _CMP_GT_OQ), b, a);
  }
};

#elif FASTNN_VBYTES == 32

template <> struct Vec<float> {
  using V = __m256;
  static constexpr int W = 8;
  static FASTNN_INLINE V zero() { return _mm256_setzero_ps(); }
  static FASTNN_INLINE V set1(float x) { return _mm256_set1_ps(x); }
  static FASTNN_INLINE V load(const float* p) { return _mm256_loadu_ps(p); }
  static FASTNN_INLINE V broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static FASTNN_INLINE void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static FASTNN_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static FASTNN_INLINE V add(V a, V b) { return _mm256_add_ps(a, b); }
  static FASTNN_INLINE V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static FASTNN_INLINE V max(V a, V b) { return _mm256_max_ps(a, b); }
  static FASTNN_INLINE void transpose(V* r) {
    V t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  static FASTNN_INLINE V select_pos(V z, V a, V b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(z, zero(), _CMP_GT_OQ));
  }
};

template <> struct Vec<double> {
  using V = __m256d;
  static constexpr int W = 4;
  static FASTNN_INLINE V zero() { return _mm256_setzero_pd(); }
  static FASTNN_INLINE V set1(double x) { return _mm256_set1_pd(x); }
  static FASTNN_INLINE V load(const double* p) { return _mm256_loadu_pd(p); }
  static FASTNN_INLINE V broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  static FASTNN_INLINE void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static FASTNN_INLINE V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static FASTNN_INLINE V add(V a, V b) { return _mm256_add_pd(a, b); }
  static FASTNN_INLINE V mul(V a, V b) { return _mm256_mul_pd(a, b); }
  static FASTNN_INLINE V max(V a, V b) { return _mm256_max_pd(a, b); }
  static FASTNN_INLINE void transpose(V* r) {
    const V t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    const V t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
  static FASTNN_INLINE V select_pos(V z, V a, V b) {
    return _mm256_blendv_pd(b, a, _mm256_cmp_pd(z, zero(), _CMP_GT_OQ));
  }
};

#else  // baseline: GCC vector extensions (SSE2 on x86-64)

template <class T> struct Vec {
  typedef T V __attribute__((vector_size(FASTNN_VBYTES)));
  static constexpr int W = FASTNN_VBYTES / int(sizeof(T));
  static FASTNN_INLINE V zero() { return V{}; }
  // An initializer list, not V{} + x: that add cannot be folded (signed zeros).
  template <size_t... I> static FASTNN_INLINE V splat(T x, std::index_sequence<I...>) { return V{((void)I, x)...}; }
  static FASTNN_INLINE V set1(T x) { return splat(x, std::make_index_sequence<W>{}); }
  static FASTNN_INLINE V load(const T* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
  static FASTNN_INLINE V broadcast(const T* p) { return set1(*p); }
  static FASTNN_INLINE void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static FASTNN_INLINE V fma(V a, V b, V c) { return a * b + c; }
  static FASTNN_INLINE V add(V a, V b) { return a + b; }
  static FASTNN_INLINE V mul(V a, V b) { return a * b; }
  static FASTNN_INLINE V max(V a, V b) { return a > b ? a : b; }
  static FASTNN_INLINE V select_pos(V z, V a, V b) { return z > V{} ? a : b; }
  static FASTNN_INLINE void transpose(V* r) {
    T a[W][W];
    std::memcpy(a, r, sizeof(a));
    for (int i = 0; i < W; ++i)
      for (int j = 0; j < i; ++j) std::swap(a[i][j], a[j][i]);
    std::memcpy(r, a, sizeof(a));
  }
};

#endif

FASTNN_INLINE void prefetch_l1(const void* p) { __builtin_prefetch(p, 0, 3); }
FASTNN_INLINE void prefetch_l1_write(const void* p) { __builtin_prefetch(p, 1, 3); }

}  // namespace fastnn::cpu::FASTNN_ISA::simd
