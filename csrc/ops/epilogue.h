// GEMM epilogues: what happens to an accumulated output element before it is
// stored. A GEMM takes its epilogue as a template parameter, so "GEMM + bias +
// activation" is one kernel chosen in one place (CUTLASS's
// LinearCombinationGeneric, tiny-cuda-nn's fused activations).
//
// Shapes: output C (rows, cols) row-major with leading dimension ldc; bias (cols,).
// apply(i, j, acc) returns the value stored at C[i, j]; BiasAct also writes the
// pre-activation z = acc + bias[j] to Z[i, j] when its activation needs z for
// the backward pass (act::*::kGradFromOutput == false).
#pragma once

#include "activation.h"

namespace fastnn {

// C = acc (plain GEMM).
struct NoEpilogue {
  static constexpr bool kIdentity = true;
  template <class T> FASTNN_HD T apply(int64_t, int64_t, T acc) const { return acc; }
};

// C = act(acc + bias[j]); Z = acc + bias[j] when the activation needs it.
template <class T, class ActF>
struct BiasAct {
  static constexpr bool kIdentity = false;
  static constexpr bool kSavesPreactivation = !ActF::kGradFromOutput;
  const T* bias;  // (cols,) or nullptr
  T* z;           // (rows, ldz) when kSavesPreactivation, else unused
  int64_t ldz;
  T alpha;

  FASTNN_HD T apply(int64_t i, int64_t j, T acc) const {
    T pre = bias ? acc + bias[j] : acc;
    if constexpr (kSavesPreactivation) z[i * ldz + j] = pre;
    return ActF::forward(pre, alpha);
  }
};

// C = act(acc + bias[i]); Z = acc + bias[i] when the activation needs it. The
// bias runs along rows: a convolution's GEMM has one row per output channel.
template <class T, class ActF>
struct RowBiasAct {
  static constexpr bool kIdentity = false;
  static constexpr bool kSavesPreactivation = !ActF::kGradFromOutput;
  const T* bias;  // (rows,) or nullptr
  T* z;           // (rows, ldz) when kSavesPreactivation, else unused
  int64_t ldz;
  T alpha;

  FASTNN_HD T apply(int64_t i, int64_t j, T acc) const {
    T pre = bias ? acc + bias[i] : acc;
    if constexpr (kSavesPreactivation) z[i * ldz + j] = pre;
    return ActF::forward(pre, alpha);
  }
};

// The backward epilogue of an activation: dz = dy * act'(z or y).
template <class T, class ActF>
FASTNN_HD T act_backward(T dy, T z, T y, T alpha) {
  return dy * ActF::grad(z, y, alpha);
}

}  // namespace fastnn
