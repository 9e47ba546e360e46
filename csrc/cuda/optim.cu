// The fused optimizer step over the flat parameter buffer on the GPU: one
// grid-stride pass per 24 segments (parameter groups), each element updated by
// ops/optim.h's rule with its segment's hyperparameters, which travel by value
// in the kernel's parameters (no host-to-device copy per step). Max-norm: one
// launch per matrix, a thread per column (the columns of a row-major matrix
// are adjacent in memory, so each row is one coalesced read).
#include <algorithm>
#include <vector>

#include "cuda/kernels.cuh"
#include "cuda/vec.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kSegmentsPerLaunch = 24;
constexpr int kThreads = 256;

template <class T>
struct SegmentTable {
  int64_t begin[kSegmentsPerLaunch + 1];
  OptimHyper<T> hyper[kSegmentsPerLaunch];
  int count;
};

template <class T>
__device__ __forceinline__ int segment_of(const SegmentTable<T>& tab, int64_t i) {
  int s = 0;
  while (s + 1 < tab.count && i >= tab.begin[s + 1]) ++s;
  return s;
}

template <Rule R, class T>
__device__ __forceinline__ void update_one(T* p, const T* g, T* s1, T* s2, int64_t i, const OptimHyper<T>& h) {
  T pi = p[i];
  T v1 = s1 ? s1[i] : T(0);
  T v2 = s2 ? s2[i] : T(0);
  optim_update<R>(pi, g[i], v1, v2, h);
  p[i] = pi;
  if (s1) s1[i] = v1;
  if (s2) s2[i] = v2;
}

// Thread t takes the flat elements [4t, 4t + 4) that lie in [lo, hi): as
// 16-byte accesses when all four are in one segment and the buffers are
// aligned (vectorized), else one by one.
template <Rule R, class T>
__global__ void optim_kernel(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ s1, T* __restrict__ s2,
                             const SegmentTable<T> tab, bool vectorized) {
  const int64_t lo = tab.begin[0], hi = tab.begin[tab.count];
  const int64_t first = lo / 4, last = (hi + 3) / 4;
  for (int64_t t = first + blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < last;
       t += int64_t(blockDim.x) * gridDim.x) {
    const int64_t i0 = 4 * t;
    const int s = segment_of(tab, i0 > lo ? i0 : lo);
    const bool whole = vectorized && i0 >= lo && i0 + 4 <= hi && (s + 1 == tab.count || i0 + 4 <= tab.begin[s + 1]);
    if (whole) {
      const OptimHyper<T>& h = tab.hyper[s];
      T pv[4], gv[4], v1[4] = {T(0), T(0), T(0), T(0)}, v2[4] = {T(0), T(0), T(0), T(0)};
      load4(p + i0, pv);
      load4(g + i0, gv);
      if (s1) load4(s1 + i0, v1);
      if (s2) load4(s2 + i0, v2);
#pragma unroll
      for (int e = 0; e < 4; ++e) optim_update<R>(pv[e], gv[e], v1[e], v2[e], h);
      store4(p + i0, pv);
      if (s1) store4(s1 + i0, v1);
      if (s2) store4(s2 + i0, v2);
    } else {
      for (int64_t i = i0 > lo ? i0 : lo; i < i0 + 4 && i < hi; ++i)
        update_one<R>(p, g, s1, s2, i, tab.hyper[segment_of(tab, i)]);
    }
  }
}

template <class T>
__global__ void max_norm_kernel(T* w, int64_t rows, int64_t cols, double limit) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < cols; j += int64_t(blockDim.x) * gridDim.x) {
    double norm = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      const double v = double(w[i * cols + j]);
      norm += v * v;
    }
    const double scale = max_norm_scale(sqrt(norm), limit);
    if (scale != 1.0)
      for (int64_t i = 0; i < rows; ++i) w[i * cols + j] = T(double(w[i * cols + j]) * scale);
  }
}

// sum x_i^2 in double: block b sums the elements b*kThreads + t, b*kThreads + t +
// blocks*kThreads, ... (blocks fixed by n), then one block adds the partials in
// order, so the bits depend on n alone.
constexpr int kSumBlocks = 264;

__device__ __forceinline__ double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  return sh[0];
}

template <class T>
__global__ void sum_squares_partial(const T* __restrict__ x, int64_t n, double* __restrict__ partial) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    const double v = double(x[i]);
    acc += v * v;
  }
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// The partials' sum, rounded to T as the CPU's sum in T would overflow (a float32
// sum of squares beyond float32's range is inf there too), stored as double.
template <class T>
__global__ void sum_squares_final(const double* __restrict__ partial, int count, double* __restrict__ out) {
  __shared__ double sh[kThreads];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  const double total = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = double(T(total));
}

}  // namespace

template <class T>
void sum_squares(const T* x, int64_t n, double* out, cudaStream_t stream) {
  const int blocks = int(std::min<int64_t>(kSumBlocks, std::max<int64_t>(1, (n + kThreads - 1) / kThreads)));
  Scratch<double> partial(blocks, stream, "sum_squares");
  sum_squares_partial<T><<<blocks, kThreads, 0, stream>>>(x, n, partial.get());
  check_launch("sum_squares");
  sum_squares_final<T><<<1, kThreads, 0, stream>>>(partial.get(), blocks, out);
  check_launch("sum_squares");
}

template <class T>
void optim_step(const OptimStepArgs<T>& a, cudaStream_t stream) {
  for (int64_t first = 0; first < a.num_segments; first += kSegmentsPerLaunch) {
    SegmentTable<T> tab{};
    tab.count = int(std::min<int64_t>(kSegmentsPerLaunch, a.num_segments - first));
    for (int s = 0; s <= tab.count; ++s) tab.begin[s] = a.seg_begin[first + s];
    for (int s = 0; s < tab.count; ++s) tab.hyper[s] = a.hyper[first + s];
    const int64_t work = tab.begin[tab.count] - tab.begin[0];
    if (work <= 0) continue;
    // One 4-element group per thread: at 10M parameters a grid-stride loop over
    // fewer blocks left the last wave's tail idle (75% of copy bandwidth; 92% at 100M).
    const int blocks = grid_for((work + 3) / 4 + 1, kThreads);
    const bool vectorized = aligned16(a.param) && aligned16(a.grad) && (!a.state1 || aligned16(a.state1)) &&
                            (!a.state2 || aligned16(a.state2));
    switch (a.rule) {
#define FASTNN_RULE_CASE(name)                                                                          \
  case Rule::name:                                                                                      \
    optim_kernel<Rule::name, T><<<blocks, kThreads, 0, stream>>>(a.param, a.grad, a.state1, a.state2, tab, vectorized); \
    break;
      FASTNN_OPTIM_RULES(FASTNN_RULE_CASE)
#undef FASTNN_RULE_CASE
    }
    check_launch("optim_step");
  }
}

template <class T>
void max_norm(const MaxNormArgs<T>& a, cudaStream_t stream) {
  for (int64_t k = 0; k < a.num; ++k) {
    if (a.rows[k] <= 0 || a.cols[k] <= 0) continue;
    max_norm_kernel<T><<<grid_for(a.cols[k], kThreads), kThreads, 0, stream>>>(a.param + a.offset[k], a.rows[k],
                                                                              a.cols[k], a.max_norm[k]);
    check_launch("max_norm");
  }
}

#define FASTNN_INSTANTIATE(T)                                          \
  template void optim_step<T>(const OptimStepArgs<T>&, cudaStream_t); \
  template void max_norm<T>(const MaxNormArgs<T>&, cudaStream_t);       \
  template void sum_squares<T>(const T*, int64_t, double*, cudaStream_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
