// Philox4x32-10, the counter-based generator of Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3" (SC 2011), as in Random123 and cuRAND: the
// 128-bit counter (c0..c3) is encrypted under the 64-bit key (k0, k1) by ten
// rounds of multiply-xor. Same inputs, same four 32-bit words, on every device.
//
// The rounds are written once, over a lane type L that says how one counter
// word is held: ScalarLanes (one block: CUDA, the scalar CPU tails) here, and
// the CPU's SIMD lane types (a structure-of-arrays of 16 blocks, AVX2 and
// AVX-512 registers holding one block per 64-bit lane) in cpu/dropout.cpp.
// A lane type provides
//   V                                   the type holding word w of every block
//   mul_wide(V a, uint32_t m, V& hi, V& lo)   hi:lo = m * a, per block (32x32->64)
//   xor3(V a, V b, uint32_t k) -> V     a ^ b ^ k, per block
#pragma once

#include "common.h"

namespace fastnn {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

// The ten rounds, in place on the counter words (c0..c3) of every block in L.
template <class L>
FASTNN_HD void philox4x32_10_rounds(typename L::V& c0, typename L::V& c1, typename L::V& c2,
                                           typename L::V& c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    typename L::V hi0, lo0, hi1, lo1;
    L::mul_wide(c0, kPhiloxM0, hi0, lo0);
    L::mul_wide(c2, kPhiloxM1, hi1, lo1);
    c0 = L::xor3(hi1, c1, k0);
    c2 = L::xor3(hi0, c3, k1);
    c1 = lo1;
    c3 = lo0;
  }
}

// One block per call.
struct ScalarLanes {
  using V = uint32_t;
  FASTNN_HD static void mul_wide(V a, uint32_t m, V& hi, V& lo) {
    const uint64_t p = uint64_t(m) * a;
    hi = uint32_t(p >> 32);
    lo = uint32_t(p);
  }
  FASTNN_HD static V xor3(V a, V b, uint32_t k) { return a ^ b ^ k; }
};

FASTNN_HD void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                                    uint32_t out[4]) {
  philox4x32_10_rounds<ScalarLanes>(c0, c1, c2, c3, k0, k1);
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

}  // namespace fastnn
