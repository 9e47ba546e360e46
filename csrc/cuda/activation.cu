// Elementwise activation on the GPU: y = act(x), n elements (ActForwardArgs),
// one thread per element in a grid-stride loop. The math is ops/activation.h,
// shared with the CPU.
#include "cuda/kernels.cuh"

namespace fastnn::cuda {
namespace {

template <class T, class F>
__global__ void act_forward_kernel(ActForwardArgs<T> a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.n; i += int64_t(blockDim.x) * gridDim.x)
    a.y[i] = F::forward(a.x[i], a.alpha);
}

}  // namespace

template <class T>
cudaError_t act_forward(const ActForwardArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0) return cudaSuccess;
  constexpr int kThreads = 256;
  visit_act(a.act, [&](auto f) {
    act_forward_kernel<T, decltype(f)><<<grid_for(a.n, kThreads), kThreads, 0, stream>>>(a);
  });
  return cudaGetLastError();
}

template cudaError_t act_forward<float>(const ActForwardArgs<float>&, cudaStream_t);
template cudaError_t act_forward<double>(const ActForwardArgs<double>&, cudaStream_t);

}  // namespace fastnn::cuda
