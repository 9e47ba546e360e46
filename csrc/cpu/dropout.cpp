// Inverted dropout on the CPU (mask definition: ops/dropout.h).
//
// y[i] = x[i] * scale if Philox(seed, offset + i) < threshold else 0, n elements.
// The Philox rounds are ops/philox.h's, instantiated here for three lane
// types: 16 blocks as a structure of arrays (any ISA, and the partial chunks),
// and AVX2 / AVX-512 registers with one block per 64-bit lane (vpmuludq for the
// 32x32->64 products). Each block of 4 words covers 4 consecutive global
// indices. Threads split the blocks.
#include "cpu/isa.h"
#include "ops/dropout.h"

#if FASTNN_VBYTES >= 32
#include <immintrin.h>
#endif

namespace fastnn::cpu::FASTNN_ISA {
namespace {

constexpr int kLanes = 16;

// kLanes blocks as a structure of arrays: the ten rounds (ops/philox.h) run
// across the blocks in `omp simd` loops, so they vectorize on any ISA.
struct ArrayLanes {
  struct V { uint32_t w[kLanes]; };
  static inline __attribute__((always_inline)) void mul_wide(const V& a, uint32_t m, V& hi, V& lo) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const uint64_t p = uint64_t(m) * a.w[l];
      hi.w[l] = uint32_t(p >> 32);
      lo.w[l] = uint32_t(p);
    }
  }
  static inline __attribute__((always_inline)) V xor3(const V& a, const V& b, uint32_t k) {
    V r;
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) r.w[l] = a.w[l] ^ b.w[l] ^ k;
    return r;
  }
};

// words[w][l] = word w of Philox block (first + l).
inline __attribute__((always_inline)) void philox_lanes(uint64_t seed, uint64_t first, uint32_t words[4][kLanes]) {
  ArrayLanes::V c0, c1, c2, c3;
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    uint64_t block = first + uint64_t(l);
    c0.w[l] = uint32_t(block);
    c1.w[l] = uint32_t(block >> 32);
    c2.w[l] = 0u;
    c3.w[l] = 0u;
  }
  philox4x32_10_rounds<ArrayLanes>(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    words[0][l] = c0.w[l];
    words[1][l] = c1.w[l];
    words[2][l] = c2.w[l];
    words[3][l] = c3.w[l];
  }
}

#if FASTNN_VBYTES == 64
// AVX-512: 8 Philox blocks (32 elements) per step, one block per 64-bit lane so
// the 32x32->64 products are single vpmuludq's. Returns the 32-bit keep mask of
// elements 4*b + w (bit 4*b + w), built from the four per-word lane masks.
// One Philox block per 64-bit lane, its 32-bit word in the low half, so the
// 32x32->64 products are single vpmuludq's.
struct Avx512Lanes {
  using V = __m512i;
  static inline __attribute__((always_inline)) void mul_wide(V a, uint32_t m, V& hi, V& lo) {
    const V p = _mm512_mul_epu32(a, _mm512_set1_epi64(m));
    hi = _mm512_srli_epi64(p, 32);
    lo = _mm512_and_si512(p, _mm512_set1_epi64(0xFFFFFFFFll));
  }
  static inline __attribute__((always_inline)) V xor3(V a, V b, uint32_t k) {
    return _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_set1_epi64(k));
  }
};

inline __attribute__((always_inline)) uint32_t philox_keep_mask8(uint64_t seed, uint64_t first_block,
                                                                 uint64_t threshold) {
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i block = _mm512_add_epi64(_mm512_set1_epi64(int64_t(first_block)), lane);
  const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFll);
  __m512i c0 = _mm512_and_si512(block, lo32);
  __m512i c1 = _mm512_srli_epi64(block, 32);
  __m512i c2 = _mm512_setzero_si512();
  __m512i c3 = _mm512_setzero_si512();
  philox4x32_10_rounds<Avx512Lanes>(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  const __m512i thr = _mm512_set1_epi64(int64_t(threshold));
  const uint32_t k0m = _mm512_cmplt_epu64_mask(c0, thr), k1m = _mm512_cmplt_epu64_mask(c1, thr);
  const uint32_t k2m = _mm512_cmplt_epu64_mask(c2, thr), k3m = _mm512_cmplt_epu64_mask(c3, thr);
  // Interleave: bit b of word w's mask -> bit 4b + w (BMI2 pdep).
  return _pdep_u32(k0m, 0x11111111u) | _pdep_u32(k1m, 0x22222222u) | _pdep_u32(k2m, 0x44444444u) |
         _pdep_u32(k3m, 0x88888888u);
}

inline __attribute__((always_inline)) void apply_mask32(const float* x, float* y, uint32_t keep, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  _mm512_storeu_ps(y, _mm512_maskz_mul_ps(__mmask16(keep), _mm512_loadu_ps(x), s));
  _mm512_storeu_ps(y + 16, _mm512_maskz_mul_ps(__mmask16(keep >> 16), _mm512_loadu_ps(x + 16), s));
}

inline __attribute__((always_inline)) void apply_mask32(const double* x, double* y, uint32_t keep, double scale) {
  const __m512d s = _mm512_set1_pd(scale);
  for (int q = 0; q < 4; ++q)
    _mm512_storeu_pd(y + 8 * q, _mm512_maskz_mul_pd(__mmask8(keep >> (8 * q)), _mm512_loadu_pd(x + 8 * q), s));
}
#elif FASTNN_VBYTES == 32
// AVX2: the same scheme with 4 blocks (16 elements) per 256-bit step.
struct Avx2Lanes {
  using V = __m256i;
  static inline __attribute__((always_inline)) void mul_wide(V a, uint32_t m, V& hi, V& lo) {
    const V p = _mm256_mul_epu32(a, _mm256_set1_epi64x(m));
    hi = _mm256_srli_epi64(p, 32);
    lo = _mm256_and_si256(p, _mm256_set1_epi64x(0xFFFFFFFFll));
  }
  static inline __attribute__((always_inline)) V xor3(V a, V b, uint32_t k) {
    return _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_set1_epi64x(k));
  }
};

inline __attribute__((always_inline)) uint32_t philox_keep_mask4(uint64_t seed, uint64_t first_block,
                                                                 uint64_t threshold) {
  const __m256i block = _mm256_add_epi64(_mm256_set1_epi64x(int64_t(first_block)), _mm256_set_epi64x(3, 2, 1, 0));
  const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFll);
  __m256i c0 = _mm256_and_si256(block, lo32);
  __m256i c1 = _mm256_srli_epi64(block, 32);
  __m256i c2 = _mm256_setzero_si256();
  __m256i c3 = _mm256_setzero_si256();
  philox4x32_10_rounds<Avx2Lanes>(c0, c1, c2, c3, uint32_t(seed), uint32_t(seed >> 32));
  // Words are < 2^32 and threshold <= 2^32, so a signed 64-bit compare is exact.
  const __m256i thr = _mm256_set1_epi64x(int64_t(threshold));
  auto keep = [&](__m256i c) { return uint32_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(thr, c)))); };
  return _pdep_u32(keep(c0), 0x1111u) | _pdep_u32(keep(c1), 0x2222u) | _pdep_u32(keep(c2), 0x4444u) |
         _pdep_u32(keep(c3), 0x8888u);
}

inline __attribute__((always_inline)) void apply_mask16(const float* x, float* y, uint32_t keep, float scale) {
  const __m256i bits = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
  const __m256 s = _mm256_set1_ps(scale);
  for (int h = 0; h < 2; ++h) {
    const __m256i b = _mm256_set1_epi32(int((keep >> (8 * h)) & 0xFF));
    const __m256 m = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(b, bits), bits));
    _mm256_storeu_ps(y + 8 * h, _mm256_and_ps(m, _mm256_mul_ps(_mm256_loadu_ps(x + 8 * h), s)));
  }
}

inline __attribute__((always_inline)) void apply_mask16(const double* x, double* y, uint32_t keep, double scale) {
  const __m256i bits = _mm256_set_epi64x(8, 4, 2, 1);
  const __m256d s = _mm256_set1_pd(scale);
  for (int q = 0; q < 4; ++q) {
    const __m256i b = _mm256_set1_epi64x(int64_t((keep >> (4 * q)) & 0xF));
    const __m256d m = _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(b, bits), bits));
    _mm256_storeu_pd(y + 4 * q, _mm256_and_pd(m, _mm256_mul_pd(_mm256_loadu_pd(x + 4 * q), s)));
  }
}
#endif

}  // namespace

template <class T>
void dropout(const DropoutArgs<T>& a) {
  if (a.n <= 0) return;
  // Global element indices [offset, offset + n) live in Philox blocks
  // [offset / 4, (offset + n - 1) / 4]; process kLanes blocks per chunk.
  const uint64_t first_block = a.offset / 4;
  const uint64_t last_block = (a.offset + uint64_t(a.n) - 1) / 4;
  const int64_t nchunks = int64_t((last_block - first_block) / kLanes + 1);
  const int nthreads = threads_for(a.n);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t chunk = 0; chunk < nchunks; ++chunk) {
    const uint64_t b0 = first_block + uint64_t(chunk) * kLanes;
    const uint64_t g0 = b0 * 4;  // global index of the chunk's first element
    const uint64_t lo = g0 > a.offset ? g0 : a.offset;
    const uint64_t hi_full = g0 + 4 * kLanes;
    const uint64_t end = a.offset + uint64_t(a.n);
    const uint64_t hi = hi_full < end ? hi_full : end;
    const bool full = lo == g0 && hi == hi_full;
#if FASTNN_VBYTES == 64
    if (full) {
      const int64_t base = int64_t(g0 - a.offset);
      for (int q = 0; q < kLanes / 8; ++q)
        apply_mask32(a.x + base + 32 * q, a.y + base + 32 * q, philox_keep_mask8(a.seed, b0 + 8 * q, a.threshold),
                     a.scale);
      continue;
    }
#elif FASTNN_VBYTES == 32
    if (full) {
      const int64_t base = int64_t(g0 - a.offset);
      for (int q = 0; q < kLanes / 4; ++q)
        apply_mask16(a.x + base + 16 * q, a.y + base + 16 * q, philox_keep_mask4(a.seed, b0 + 4 * q, a.threshold),
                     a.scale);
      continue;
    }
#endif
    uint32_t words[4][kLanes];
    philox_lanes(a.seed, b0, words);
    if (full) {
      const int64_t base = int64_t(g0 - a.offset);
      const T* x = a.x + base;
      T* y = a.y + base;
#pragma omp simd
      for (int e = 0; e < 4 * kLanes; ++e) {
        uint32_t w = words[e & 3][e >> 2];
        y[e] = dropout_apply(x[e], dropout_keep(w, a.threshold), a.scale);
      }
    } else {
      for (uint64_t g = lo; g < hi; ++g) {
        const uint64_t e = g - g0;
        uint32_t w = words[e & 3][e >> 2];
        const int64_t i = int64_t(g - a.offset);
        a.y[i] = dropout_apply(a.x[i], dropout_keep(w, a.threshold), a.scale);
      }
    }
  }
}

template void dropout<float>(const DropoutArgs<float>&);
template void dropout<double>(const DropoutArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
