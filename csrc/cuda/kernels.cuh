// Launch declarations of the CUDA kernels (csrc/cuda/*.cu). Every launcher takes
// the stream to run on: the bindings pass CuPy's current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "ops/activation.h"

namespace fastnn::cuda {

// y = act(x), n elements, on `stream` (the skeleton kernel of the CUDA backend).
template <class T>
cudaError_t act_forward(const T* x, T* y, int64_t n, Act act, T alpha, cudaStream_t stream);

}  // namespace fastnn::cuda
