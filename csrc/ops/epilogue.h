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

// Which way the bias runs: one per column (bias[j], a Linear's output features)
// or one per row (bias[i], a convolution's GEMM has one row per output channel).
enum class BiasAxis : int { cols, rows };

// C = act(acc + bias); Z = acc + bias when the activation needs it.
template <class T, class ActF, BiasAxis Axis = BiasAxis::cols>
struct BiasAct {
  static constexpr bool kIdentity = false;
  static constexpr bool kSavesPreactivation = !ActF::kGradFromOutput;
  static constexpr BiasAxis kAxis = Axis;
  const T* bias;  // (cols,) or (rows,) by Axis, or nullptr
  T* z;           // (rows, ldz) when kSavesPreactivation, else unused
  int64_t ldz;
  T alpha;

  FASTNN_HD T apply(int64_t i, int64_t j, T acc) const {
    T pre = bias ? acc + bias[Axis == BiasAxis::cols ? j : i] : acc;
    if constexpr (kSavesPreactivation) z[i * ldz + j] = pre;
    return ActF::forward(pre, alpha);
  }
};

// The backward epilogue of an activation: dz = dy * act'(z or y). Every
// backward loop (GEMM packing, BatchNorm, conv, the standalone layer) calls it.
template <class T, class ActF>
FASTNN_HD T act_backward_epilogue(T dy, T z, T y, T alpha) {
  return dy * ActF::grad(z, y, alpha);
}

}  // namespace fastnn
