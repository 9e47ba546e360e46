// Services the per-ISA kernels get from dispatch.cpp (compiled once).
#pragma once

#include <cstddef>

namespace fastnn::cpu {

// Thread-local, 64-byte aligned scratch that grows and is reused across calls,
// so steady-state kernels never allocate. slot separates independent buffers.
enum ScratchSlot : int {
  kPackA = 0, kPackB = 1, kWork = 2,
  kConvColumns = 3, kConvWeightGrad = 4,  // conv.cpp: im2col columns, per-thread dweight
  kWinoV = 5, kWinoM = 6, kWinoU = 7,     // conv_winograd.cpp: transformed inputs, products, weights,
  kWinoDU = 8,                            //   a group's weight gradient in the transform domain
  kPackOwn = 9,  // gemm_engine.h: a thread's own copy of the A block (column split) or its C^T columns
  kNumScratchSlots = 10
};
void* scratch(int slot, size_t bytes);

// Which algorithm 3x3 stride-1 convolutions use (fastnn set_conv_algorithm):
// kConvAuto picks Winograd F(2x2, 3x3) when both channel counts are >= 16.
enum ConvAlgorithm : int { kConvAuto = 0, kConvIm2col = 1, kConvWinograd = 2 };
int conv_algorithm();

// Threads the CPU kernels use (fastnn.set_num_threads; default: OpenMP's).
int num_threads();

// Elements below which an elementwise or reduction kernel runs on one thread:
// forking the team and meeting at its barrier cost more than the work saves.
// The one threshold of the CPU kernels (the GEMM engine and conv decide by
// FLOPs instead).
constexpr long long kParallelMinElements = 32768;
inline int threads_for(long long elements) { return elements < kParallelMinElements ? 1 : num_threads(); }

}  // namespace fastnn::cpu
