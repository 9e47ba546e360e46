// Elementwise activation on the GPU: y = act(x), one thread per element (grid-
// stride loop). The math is ops/activation.h, shared with the CPU.
#include "cuda/kernels.cuh"

namespace fastnn::cuda {
namespace {

template <class T, class F>
__global__ void act_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, T alpha) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(blockDim.x) * gridDim.x)
    y[i] = F::forward(x[i], alpha);
}

}  // namespace

template <class T>
cudaError_t act_forward(const T* x, T* y, int64_t n, Act act, T alpha, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const int threads = 256;
  const int64_t want = (n + threads - 1) / threads;
  const int blocks = int(want < 65535 * 8 ? want : 65535 * 8);
  visit_act(act, [&](auto f) {
    act_forward_kernel<T, decltype(f)><<<blocks, threads, 0, stream>>>(x, y, n, alpha);
  });
  return cudaGetLastError();
}

template cudaError_t act_forward<float>(const float*, float*, int64_t, Act, float, cudaStream_t);
template cudaError_t act_forward<double>(const double*, double*, int64_t, Act, double, cudaStream_t);

}  // namespace fastnn::cuda
