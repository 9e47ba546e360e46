// 2-D max and average pooling on the GPU (windows, tie/NaN rules and divisors:
// ops/pool.h, shared with csrc/cpu/pool.cpp; argument structures: kernels.h).
//
// Shape legend: N batch, C channels, H x W input plane, KH x KW window, SH/SW
// stride, PH/PW padding, OH x OW output plane; a plane is one (n, c).
//   forward passes        one thread per output element, visiting its window
//                         in row-major order (the CPU's order: the first
//                         maximum wins, sums add in window order)
//   max_pool2d_backward   dx = 0, then one thread per output adds dy into
//                         dx[plane, index] with atomicAdd (the argument
//                         structure has no window geometry to gather with)
//   avg_pool2d_backward   a gather: one thread per dx element sums
//                         dy[o] / divisor(o) over the windows holding it, in
//                         the CPU's order (deterministic, no atomics)
//   global average pool   one warp per plane, double accumulation, shuffle
//                         reduction; backward elementwise
#include <cuda/std/limits>

#include "cuda/kernels.cuh"
#include "ops/pool.h"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;

#define FASTNN_GRID_STRIDE(i, count)                                                     \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (count); \
       i += int64_t(blockDim.x) * gridDim.x)

template <class T>
__global__ void max_pool_forward_kernel(MaxPool2dForwardArgs<T> a) {
  const PoolShape s = a.s;
  const int64_t out = s.oh * s.ow, in = s.h * s.w, total = s.n * s.c * out;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t plane = e / out, o = e - plane * out;
    const int64_t oi = o / s.ow, oj = o - oi * s.ow;
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    const PoolRange cols = pool_window(oj, s.sw, s.pw, s.kw, s.w);
    const T* x = a.x + plane * in;
    // Start from -inf at the window's first element inside the plane (clamped,
    // as the CPU does, so even an all-padding window's index stays in the plane).
    const int64_t ih0 = rows.begin < s.h ? rows.begin : s.h - 1;
    const int64_t iw0 = cols.begin < s.w ? cols.begin : s.w - 1;
    T best = -::cuda::std::numeric_limits<T>::infinity();
    int64_t at = ih0 * s.w + iw0;
    for (int64_t ih = rows.begin; ih < rows.end; ++ih)
      for (int64_t iw = cols.begin; iw < cols.end; ++iw) {
        const T v = x[ih * s.w + iw];
        if (max_pool_takes(v, best)) best = v, at = ih * s.w + iw;
      }
    a.y[e] = best;
    a.index[e] = int32_t(at);
  }
}

template <class T>
__global__ void max_pool_regions_forward_kernel(MaxPool2dRegionsForwardArgs<T> a) {
  const PoolShape s = a.s;
  const int64_t out = s.oh * s.ow, in = s.h * s.w, total = s.n * s.c * out;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t plane = e / out, o = e - plane * out;
    const int64_t oi = o / s.ow, oj = o - oi * s.ow;
    const int64_t r0 = a.row_begin[oi], r1 = a.row_end[oi], c0 = a.col_begin[oj], c1 = a.col_end[oj];
    const T* x = a.x + plane * in;
    T best = -::cuda::std::numeric_limits<T>::infinity();
    int64_t at = r0 * s.w + c0;
    for (int64_t ih = r0; ih < r1; ++ih)
      for (int64_t iw = c0; iw < c1; ++iw) {
        const T v = x[ih * s.w + iw];
        if (max_pool_takes(v, best)) best = v, at = ih * s.w + iw;
      }
    a.y[e] = best;
    a.index[e] = int32_t(at);
  }
}

// dx[plane, index[o]] += dy[o]. With overlapping windows (stride < kernel) two
// outputs may pick the same input and the float sum order then depends on
// scheduling (nondeterministic in the last bits, as PyTorch's CUDA max pooling);
// non-overlapping windows, the common case, touch each input at most once and
// are exact. An index outside [0, H*W) is skipped (the binding cannot scan
// device memory cheaply; ops.py only passes forward's own indices).
template <class T>
__global__ void max_pool_backward_kernel(MaxPool2dBackwardArgs<T> a) {
  const PoolShape s = a.s;
  const int64_t out = s.oh * s.ow, in = s.h * s.w, total = s.n * s.c * out;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t plane = e / out;
    const int64_t i = a.index[e];
    if (i < 0 || i >= in) continue;
    atomicAdd(a.dx + plane * in + i, a.dy[e]);
  }
}

template <class T>
__global__ void avg_pool_forward_kernel(AvgPool2dForwardArgs<T> a) {
  const PoolShape s = a.s;
  const int64_t out = s.oh * s.ow, in = s.h * s.w, total = s.n * s.c * out;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t plane = e / out, o = e - plane * out;
    const int64_t oi = o / s.ow, oj = o - oi * s.ow;
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    const PoolRange cols = pool_window(oj, s.sw, s.pw, s.kw, s.w);
    const T* x = a.x + plane * in;
    T sum = T(0);
    for (int64_t ih = rows.begin; ih < rows.end; ++ih)
      for (int64_t iw = cols.begin; iw < cols.end; ++iw) sum += x[ih * s.w + iw];
    a.y[e] = sum / T(avg_pool_divisor(rows.end - rows.begin, cols.end - cols.begin, s.kh, s.kw, a.count_include_pad));
  }
}

// Output positions [lo, hi] whose window (start o*stride - pad, length k) holds
// input position i (0 <= i < size); empty when lo > hi.
__device__ __forceinline__ void windows_holding(int64_t i, int64_t stride, int64_t pad, int64_t k, int64_t count,
                                                int64_t& lo, int64_t& hi) {
  const int64_t first = i + pad - k + 1;  // o * stride >= first
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  hi = (i + pad) / stride;  // o * stride <= i + pad (i + pad >= 0)
  if (hi > count - 1) hi = count - 1;
}

// dx[i] = sum over the windows holding i of dy[o] / divisor(o). The CPU adds
// output row by output row and, within a row, by window column kj ascending,
// i.e. output column descending: the same order here, so the same bits.
template <class T>
__global__ void avg_pool_backward_kernel(AvgPool2dBackwardArgs<T> a) {
  const PoolShape s = a.s;
  const int64_t out = s.oh * s.ow, in = s.h * s.w, total = s.n * s.c * in;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t plane = e / in, pix = e - plane * in;
    const int64_t ih = pix / s.w, iw = pix - ih * s.w;
    int64_t oi0, oi1, oj0, oj1;
    windows_holding(ih, s.sh, s.ph, s.kh, s.oh, oi0, oi1);
    windows_holding(iw, s.sw, s.pw, s.kw, s.ow, oj0, oj1);
    const T* dy = a.dy + plane * out;
    T acc = T(0);
    for (int64_t oi = oi0; oi <= oi1; ++oi) {
      const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
      for (int64_t oj = oj1; oj >= oj0; --oj) {
        const PoolRange cols = pool_window(oj, s.sw, s.pw, s.kw, s.w);
        acc += dy[oi * s.ow + oj] /
               T(avg_pool_divisor(rows.end - rows.begin, cols.end - cols.begin, s.kh, s.kw, a.count_include_pad));
      }
    }
    a.dx[e] = acc;
  }
}

// One warp per plane: y[plane] = (sum of the plane in double) / (H W).
template <class T>
__global__ void global_avg_pool_forward_kernel(GlobalAvgPool2dForwardArgs<T> a) {
  const int64_t planes = a.s.n * a.s.c, in = a.s.h * a.s.w;
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x % 32;
  // The loop bound is the same for the whole warp, so every shuffle is full.
  for (int64_t plane = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32; plane < planes;
       plane += int64_t(gridDim.x) * kWarps) {
    const T* x = a.x + plane * in;
    double sum = 0.0;
    for (int64_t i = lane; i < in; i += 32) sum += double(x[i]);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_down_sync(0xffffffffu, sum, offset);
    if (lane == 0) a.y[plane] = T(sum / double(in > 0 ? in : 1));
  }
}

template <class T>
__global__ void global_avg_pool_backward_kernel(GlobalAvgPool2dBackwardArgs<T> a) {
  const int64_t in = a.s.h * a.s.w, total = a.s.n * a.s.c * in;
  FASTNN_GRID_STRIDE(e, total) a.dx[e] = a.dy[e / in] / T(in);
}

#undef FASTNN_GRID_STRIDE

}  // namespace

template <class T>
void max_pool2d_forward(const MaxPool2dForwardArgs<T>& a, cudaStream_t stream) {
  const PoolShape& s = a.s;
  const int64_t total = s.n * s.c * s.oh * s.ow;
  if (total <= 0 || s.h <= 0 || s.w <= 0) return;
  max_pool_forward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("max_pool2d_forward");
}

template <class T>
void max_pool2d_regions_forward(const MaxPool2dRegionsForwardArgs<T>& a, cudaStream_t stream) {
  const PoolShape& s = a.s;
  const int64_t total = s.n * s.c * s.oh * s.ow;
  if (total <= 0) return;
  max_pool_regions_forward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("max_pool2d_regions_forward");
}

template <class T>
void max_pool2d_backward(const MaxPool2dBackwardArgs<T>& a, cudaStream_t stream) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, total = planes * s.oh * s.ow;
  if (planes <= 0 || in <= 0) return;
  check(cudaMemsetAsync(a.dx, 0, size_t(planes * in) * sizeof(T), stream), "max_pool2d_backward (dx = 0)");
  if (total <= 0) return;
  max_pool_backward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("max_pool2d_backward");
}

template <class T>
void avg_pool2d_forward(const AvgPool2dForwardArgs<T>& a, cudaStream_t stream) {
  const PoolShape& s = a.s;
  const int64_t total = s.n * s.c * s.oh * s.ow;
  if (total <= 0) return;
  avg_pool_forward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("avg_pool2d_forward");
}

template <class T>
void avg_pool2d_backward(const AvgPool2dBackwardArgs<T>& a, cudaStream_t stream) {
  const PoolShape& s = a.s;
  const int64_t total = s.n * s.c * s.h * s.w;
  if (total <= 0) return;
  avg_pool_backward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("avg_pool2d_backward");
}

template <class T>
void global_avg_pool2d_forward(const GlobalAvgPool2dForwardArgs<T>& a, cudaStream_t stream) {
  const int64_t planes = a.s.n * a.s.c;
  if (planes <= 0) return;
  global_avg_pool_forward_kernel<T><<<grid_for(planes, kThreads / 32), kThreads, 0, stream>>>(a);
  check_launch("global_avg_pool2d_forward");
}

template <class T>
void global_avg_pool2d_backward(const GlobalAvgPool2dBackwardArgs<T>& a, cudaStream_t stream) {
  const int64_t total = a.s.n * a.s.c * a.s.h * a.s.w;
  if (total <= 0) return;
  global_avg_pool_backward_kernel<T><<<grid_for(total, kThreads), kThreads, 0, stream>>>(a);
  check_launch("global_avg_pool2d_backward");
}

#define FASTNN_INSTANTIATE(name, Args)                              \
  template void name<float>(const Args<float>&, cudaStream_t);     \
  template void name<double>(const Args<double>&, cudaStream_t);
FASTNN_INSTANTIATE(max_pool2d_forward, MaxPool2dForwardArgs)
FASTNN_INSTANTIATE(max_pool2d_regions_forward, MaxPool2dRegionsForwardArgs)
FASTNN_INSTANTIATE(max_pool2d_backward, MaxPool2dBackwardArgs)
FASTNN_INSTANTIATE(avg_pool2d_forward, AvgPool2dForwardArgs)
FASTNN_INSTANTIATE(avg_pool2d_backward, AvgPool2dBackwardArgs)
FASTNN_INSTANTIATE(global_avg_pool2d_forward, GlobalAvgPool2dForwardArgs)
FASTNN_INSTANTIATE(global_avg_pool2d_backward, GlobalAvgPool2dBackwardArgs)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
