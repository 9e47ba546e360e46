// Launch declarations of the CUDA kernels (csrc/cuda/*.cu). Each launcher takes
// the kernel's argument structure from kernels.h (the same one the CPU kernel
// takes) and the stream to run on: the bindings pass CuPy's current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace fastnn::cuda {

#define FASTNN_CUDA_KERNELS(X) \
  X(act_forward, ActForwardArgs) \
  X(dropout, DropoutArgs)

#define FASTNN_CUDA_DECLARE(name, Args) template <class T> cudaError_t name(const Args<T>& args, cudaStream_t stream);
FASTNN_CUDA_KERNELS(FASTNN_CUDA_DECLARE)
#undef FASTNN_CUDA_DECLARE

// Blocks for a grid-stride loop over `work` items, `threads` per block.
inline int grid_for(int64_t work, int threads) {
  const int64_t want = (work + threads - 1) / threads;
  return int(want < 65535 * 8 ? (want > 0 ? want : 1) : 65535 * 8);
}

}  // namespace fastnn::cuda
