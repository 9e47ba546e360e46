// Softmax cross-entropy on one row of scores: the stable log-sum-exp form
//   log p_k = s_k - max(s) - log(sum_j exp(s_j - max(s)))
//   loss    = -log p_y,        dscores = (p - onehot(y)) * scale
// Shapes: scores (C,) one row of the (N, C) batch; y in [0, C).
#pragma once

#include "common.h"

namespace fastnn {

// Writes probs (C,) and returns -log p_y for one row.
template <class T>
FASTNN_HD T softmax_xent_row(const T* scores, int64_t c, int64_t label, T* probs) {
  T mx = scores[0];
  for (int64_t j = 1; j < c; ++j) mx = math::max(mx, scores[j]);
  T sum = T(0);
  for (int64_t j = 0; j < c; ++j) {
    T e = math::exp(scores[j] - mx);
    probs[j] = e;
    sum += e;
  }
  T inv = T(1) / sum;
  for (int64_t j = 0; j < c; ++j) probs[j] *= inv;
  return math::log(sum) - (scores[label] - mx);
}

}  // namespace fastnn
