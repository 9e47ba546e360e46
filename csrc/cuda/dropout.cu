// Inverted dropout on the GPU (mask definition: ops/dropout.h), n elements
// (DropoutArgs). One thread per Philox block: it draws the block's four words
// with ops/philox.h's rounds (ScalarLanes, the instantiation the CPU tails use)
// and writes the up to four elements of [offset, offset + n) the block covers,
// so the mask is bit-identical to the CPU's for the same (seed, offset).
#include "cuda/kernels.cuh"
#include "ops/dropout.h"

namespace fastnn::cuda {
namespace {

template <class T>
__global__ void dropout_kernel(DropoutArgs<T> a, uint64_t first_block, uint64_t num_blocks) {
  const uint64_t end = a.offset + uint64_t(a.n);
  for (uint64_t k = blockIdx.x * uint64_t(blockDim.x) + threadIdx.x; k < num_blocks;
       k += uint64_t(blockDim.x) * gridDim.x) {
    const uint64_t block = first_block + k;
    uint32_t words[4];
    dropout_block(a.seed, block, words);
    for (int w = 0; w < 4; ++w) {
      const uint64_t g = block * 4 + uint64_t(w);
      if (g < a.offset || g >= end) continue;
      const int64_t i = int64_t(g - a.offset);
      a.y[i] = dropout_apply(a.x[i], dropout_keep(words[w], a.threshold), a.scale);
    }
  }
}

}  // namespace

template <class T>
void dropout(const DropoutArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  const uint64_t first_block = a.offset / 4;
  const uint64_t num_blocks = (a.offset + uint64_t(a.n) - 1) / 4 - first_block + 1;
  constexpr int kThreads = 256;
  dropout_kernel<T><<<grid_for(int64_t(num_blocks), kThreads), kThreads, 0, stream>>>(a, first_block, num_blocks);
  check_launch("dropout");
}

template void dropout<float>(const DropoutArgs<float>&, cudaStream_t);
template void dropout<double>(const DropoutArgs<double>&, cudaStream_t);

}  // namespace fastnn::cuda
