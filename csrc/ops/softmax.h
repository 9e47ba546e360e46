// Softmax cross-entropy on one row of scores: the stable log-sum-exp form
//   log p_k = s_k - max(s) - log(sum_j exp(s_j - max(s)))
//   hard label y:        loss = -log p_y,              dscores = (p - onehot(y)) * scale
//   soft target t (C,):  loss = -sum_k t_k log p_k,    dscores = (p - t) * scale
// (a soft target is a distribution: t >= 0, sum t = 1; Mixup and label
// smoothing make them). Shapes: scores (C,) one row of the (N, C) batch.
#pragma once

#include "common.h"

namespace fastnn {

// Writes probs (C,) = softmax(scores) and returns lse = log(sum_j exp(s_j - max))
// with *row_max = max(s), so that log p_k = s_k - max - lse.
template <class T>
FASTNN_HD T softmax_row(const T* scores, int64_t c, T* probs, T* row_max) {
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
  *row_max = mx;
  return math::log(sum);
}

// Writes probs (C,) and returns -log p_y for one row.
template <class T>
FASTNN_HD T softmax_xent_row(const T* scores, int64_t c, int64_t label, T* probs) {
  T mx;
  const T lse = softmax_row(scores, c, probs, &mx);
  return lse - (scores[label] - mx);
}

// Writes probs (C,) and returns -sum_k t_k log p_k for one row. Classes with
// t_k = 0 add nothing, even where p_k underflows to 0 (0 * log 0 is taken as 0).
template <class T>
FASTNN_HD T softmax_xent_soft_row(const T* scores, int64_t c, const T* target, T* probs) {
  T mx;
  const T lse = softmax_row(scores, c, probs, &mx);
  T loss = T(0);
  for (int64_t j = 0; j < c; ++j)
    if (target[j] != T(0)) loss -= target[j] * (scores[j] - mx - lse);
  return loss;
}

}  // namespace fastnn
