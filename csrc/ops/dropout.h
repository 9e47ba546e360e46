// Inverted dropout with masks that are never stored.
//
// Element i of a call with (seed, offset) draws the 32-bit word
//   w = Philox4x32-10(counter = (j / 4, 0, 0) as (lo32, hi32, 0, 0), key = (seed lo32, seed hi32))[j % 4],
//   j = offset + i,
// and is KEPT iff w < threshold, threshold = floor(keep_prob * 2^32) (so keep_prob = 1
// keeps everything). Kept values are scaled by 1 / keep_prob. Backward applies the
// same mask to dy, regenerated from (seed, offset). Integer comparison makes the
// mask bit-identical on every backend.
#pragma once

#include "philox.h"

namespace fastnn {

// The four words of the Philox block holding global element index j.
FASTNN_HD void dropout_block(uint64_t seed, uint64_t block, uint32_t out[4]) {
  philox4x32_10(uint32_t(block), uint32_t(block >> 32), 0u, 0u, uint32_t(seed), uint32_t(seed >> 32), out);
}

FASTNN_HD bool dropout_keep(uint32_t word, uint64_t threshold) { return uint64_t(word) < threshold; }

template <class T>
FASTNN_HD T dropout_apply(T x, bool keep, T scale) {
  return keep ? x * scale : T(0);
}

}  // namespace fastnn
