// Inverted dropout on the CPU (mask definition: ops/dropout.h).
//
// y[i] = x[i] * scale if Philox(seed, offset + i) < threshold else 0, n elements.
// Philox runs on kLanes blocks at once, laid out as structure-of-arrays so the
// ten rounds vectorize (vpmuludq for the 32x32->64 products); each block of 4
// words covers 4 consecutive global indices. Threads split the blocks.
#include "cpu/isa.h"
#include "ops/dropout.h"

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
    uint32_t words[4][kLanes];
    philox_lanes(a.seed, b0, words);
    const uint64_t g0 = b0 * 4;  // global index of words[0][0]
    const uint64_t lo = g0 > a.offset ? g0 : a.offset;
    const uint64_t hi_full = g0 + 4 * kLanes;
    const uint64_t end = a.offset + uint64_t(a.n);
    const uint64_t hi = hi_full < end ? hi_full : end;
    if (lo == g0 && hi == hi_full) {
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
