// Pooling windows and their reductions, shared by the CPU and CUDA kernels.
//
// A window of output row o (columns likewise) covers input rows
//   [o * stride - pad, o * stride - pad + k), clipped to [0, size):
// padding never contributes an element (max pooling pads with -inf, average
// pooling with zeros that count_include_pad decides whether to count), the
// PyTorch semantics with ceil_mode=False.
//
// Max pooling keeps the first maximum in row-major window order (PyTorch's
// choice on ties) and lets NaN win (a NaN input gives a NaN output, the first
// NaN's index): candidates are visited in that order and replace the current
// best only when max_pool_takes(). Average pooling sums in row-major window
// order and divides once, by k_h * k_w (count_include_pad) or by the number of
// elements inside the input.
#pragma once

#include "common.h"

namespace fastnn {

// [begin, end) of the input rows (or columns) of output position o.
struct PoolRange {
  int64_t begin, end;
};

FASTNN_HD PoolRange pool_window(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t size) {
  const int64_t start = o * stride - pad;
  return {start < 0 ? 0 : start, start + k < size ? start + k : size};
}

// Does candidate v replace the running maximum best? Strictly greater (the
// first of equal maxima stays), or the first NaN.
template <class T>
FASTNN_HD bool max_pool_takes(T v, T best) {
  return v > best || (v != v && best == best);
}

// The divisor of an average pooling window whose clipped extent is rows x cols.
FASTNN_HD int64_t avg_pool_divisor(int64_t rows, int64_t cols, int64_t kh, int64_t kw, bool count_include_pad) {
  const int64_t count = count_include_pad ? kh * kw : rows * cols;
  return count > 0 ? count : 1;  // an all-padding window (refused by ops.py) averages to 0, not 0/0
}

}  // namespace fastnn
