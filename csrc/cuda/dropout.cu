// Inverted dropout on the GPU (mask definition: ops/dropout.h), n elements
// (DropoutArgs). Thread t takes elements [4t, 4t + 4) as one 16-byte access;
// their counters offset + i fall in one Philox block (offset % 4 == 0) or two,
// whose words it draws with ops/philox.h's rounds, so the mask is
// bit-identical to the CPU's for the same (seed, offset) whatever the offset.
#include "cuda/kernels.cuh"
#include "cuda/vec.cuh"
#include "ops/dropout.h"

namespace fastnn::cuda {
namespace {

template <class T>
__global__ void dropout_kernel(DropoutArgs<T> a, bool vectorized) {
  const int64_t groups = (a.n + 3) / 4;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < groups; t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t i0 = 4 * t;
    const uint64_t j0 = a.offset + uint64_t(i0);
    const int w0 = int(j0 % 4);
    uint32_t words[8];
    dropout_block(a.seed, j0 / 4, words);
    if (w0 != 0) dropout_block(a.seed, j0 / 4 + 1, words + 4);
    if (vectorized && i0 + 4 <= a.n) {
      T v[4];
      load4(a.x + i0, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) v[e] = dropout_apply(v[e], dropout_keep(words[w0 + e], a.threshold), a.scale);
      store4(a.y + i0, v);
    } else {
      for (int e = 0; e < 4 && i0 + e < a.n; ++e)
        a.y[i0 + e] = dropout_apply(a.x[i0 + e], dropout_keep(words[w0 + e], a.threshold), a.scale);
    }
  }
}

}  // namespace

template <class T>
void dropout(const DropoutArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  constexpr int kThreads = 256;
  const bool vectorized = aligned16(a.x) && aligned16(a.y);
  dropout_kernel<T><<<grid_for((a.n + 3) / 4, kThreads), kThreads, 0, stream>>>(a, vectorized);
  check_launch("dropout");
}

template void dropout<float>(const DropoutArgs<float>&, cudaStream_t);
template void dropout<double>(const DropoutArgs<double>&, cudaStream_t);

}  // namespace fastnn::cuda
