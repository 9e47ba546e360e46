// Inverted dropout on the CPU (mask definition: ops/dropout.h).
//
// y[i] = x[i] * scale if Philox(seed, offset + i) < threshold else 0, n elements.
// Philox runs on kLanes blocks at once, laid out as structure-of-arrays so the
// ten rounds vectorize (vpmuludq for the 32x32->64 products); each block of 4
// words covers 4 consecutive global indices. Threads split the blocks.
#include "cpu/isa.h"
#include "ops/dropout.h"

#if FASTNN_VBYTES >= 32
#include <immintrin.h>
#endif

namespace fastnn::cpu::FASTNN_ISA {
namespace {

constexpr int kLanes = 16;

// words[w][l] = word w of Philox block (first + l).
inline __attribute__((always_inline)) void philox_lanes(uint64_t seed, uint64_t first, uint32_t words[4][kLanes]) {
  uint32_t c0[kLanes], c1[kLanes], c2[kLanes], c3[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    uint64_t block = first + uint64_t(l);
    c0[l] = uint32_t(block);
    c1[l] = uint32_t(block >> 32);
    c2[l] = 0u;
    c3[l] = 0u;
  }
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      uint64_t p0 = uint64_t(kPhiloxM0) * c0[l];
      uint64_t p1 = uint64_t(kPhiloxM1) * c2[l];
      uint32_t n0 = uint32_t(p1 >> 32) ^ c1[l] ^ k0;
      uint32_t n2 = uint32_t(p0 >> 32) ^ c3[l] ^ k1;
      c1[l] = uint32_t(p1);
      c3[l] = uint32_t(p0);
      c0[l] = n0;
      c2[l] = n2;
    }
  }
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    words[0][l] = c0[l];
    words[1][l] = c1[l];
    words[2][l] = c2[l];
    words[3][l] = c3[l];
  }
}

#if FASTNN_VBYTES == 64
// AVX-512: 8 Philox blocks (32 elements) per step, one block per 64-bit lane so
// the 32x32->64 products are single vpmuludq's. Returns the 32-bit keep mask of
// elements 4*b + w (bit 4*b + w), built from the four per-word lane masks.
inline __attribute__((always_inline)) uint32_t philox_keep_mask8(uint64_t seed, uint64_t first_block,
                                                                 uint64_t threshold) {
  const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i block = _mm512_add_epi64(_mm512_set1_epi64(int64_t(first_block)), lane);
  const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFll);
  const __m512i m0 = _mm512_set1_epi64(kPhiloxM0), m1 = _mm512_set1_epi64(kPhiloxM1);
  __m512i c0 = _mm512_and_si512(block, lo32);
  __m512i c1 = _mm512_srli_epi64(block, 32);
  __m512i c2 = _mm512_setzero_si512();
  __m512i c3 = _mm512_setzero_si512();
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m512i p0 = _mm512_mul_epu32(c0, m0);
    const __m512i p1 = _mm512_mul_epu32(c2, m1);
    const __m512i n0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), c1), _mm512_set1_epi64(k0));
    const __m512i n2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), c3), _mm512_set1_epi64(k1));
    c1 = _mm512_and_si512(p1, lo32);
    c3 = _mm512_and_si512(p0, lo32);
    c0 = n0;
    c2 = n2;
  }
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
inline __attribute__((always_inline)) uint32_t philox_keep_mask4(uint64_t seed, uint64_t first_block,
                                                                 uint64_t threshold) {
  const __m256i block = _mm256_add_epi64(_mm256_set1_epi64x(int64_t(first_block)), _mm256_set_epi64x(3, 2, 1, 0));
  const __m256i lo32 = _mm256_set1_epi64x(0xFFFFFFFFll);
  const __m256i m0 = _mm256_set1_epi64x(kPhiloxM0), m1 = _mm256_set1_epi64x(kPhiloxM1);
  __m256i c0 = _mm256_and_si256(block, lo32);
  __m256i c1 = _mm256_srli_epi64(block, 32);
  __m256i c2 = _mm256_setzero_si256();
  __m256i c3 = _mm256_setzero_si256();
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    const __m256i p0 = _mm256_mul_epu32(c0, m0);
    const __m256i p1 = _mm256_mul_epu32(c2, m1);
    const __m256i n0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), _mm256_set1_epi64x(k0));
    const __m256i n2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), _mm256_set1_epi64x(k1));
    c1 = _mm256_and_si256(p1, lo32);
    c3 = _mm256_and_si256(p0, lo32);
    c0 = n0;
    c2 = n2;
  }
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
  const int nthreads = a.n < 65536 ? 1 : num_threads();
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
