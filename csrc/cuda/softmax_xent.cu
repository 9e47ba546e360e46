// Softmax cross-entropy on the GPU (formulas: ops/softmax.h, the stable
// log-sum-exp form; loops mirror cpu/softmax_xent.cpp).
//
// Shapes: scores, probs, dscores (N, C); labels (N,) int64 or soft targets
// (N, C). Forward: one warp per row (C <= kWarpRowMaxC) or one block per row
// (larger C) finds the row maximum, the exp sum and the row's loss; probs are
// written on the way. The per-row losses go to a scratch buffer and one block
// adds them in a fixed order in double (the same bits on every run); the mean
// is copied to the host (the launcher synchronizes the stream). A label outside
// [0, C) is recorded on the device (the first such row) and reported by a
// LabelRangeError after the copy. Backward: dscores = probs * scale, then
// dscores[i, label_i] -= scale (the CPU's two steps), or (probs - targets) * scale.
#include <cstring>
#include <string>

#include "cuda/kernels.cuh"
#include "cuda/softmax_xent.h"
#include "ops/softmax.h"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kWarpRowMaxC = 1024;
constexpr unsigned long long kNoBadRow = ~0ull;

struct Sum {
  template <class T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct Max {
  template <class T> __device__ T operator()(T a, T b) const { return math::max(a, b); }
};

// The reduction of v over the warp, the same value in every lane (lane 0's,
// broadcast: max is not symmetric under NaN or signed zeros).
template <class T, class Op>
__device__ T warp_reduce(T v, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  return __shfl_sync(0xffffffffu, v, 0);
}

// Over the block of kThreads threads, warps combined in order; every thread
// gets the same value. smem holds kThreads / 32 doubles.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, double* smem) {
  v = warp_reduce(v, op);
  __syncthreads();  // the previous reduction's readers are done with smem
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = double(v);
  __syncthreads();
  T r = T(smem[0]);
  for (int w = 1; w < kThreads / 32; ++w) r = op(r, T(smem[w]));
  return r;
}

// Rows handled by a warp (kBlock false: kThreads / 32 rows per block) or by the
// whole block (kBlock true). row_loss may be null (probs only).
template <class T, bool kBlock>
__global__ __launch_bounds__(kThreads) void forward_kernel(SoftmaxXentForwardArgs<T> a, double* row_loss,
                                                           unsigned long long* bad_row) {
  __shared__ double smem[kThreads / 32];
  const int lane = kBlock ? int(threadIdx.x) : int(threadIdx.x % 32);
  const int width = kBlock ? kThreads : 32;
  const int64_t rows_per_block = kBlock ? 1 : kThreads / 32;
  const int64_t first = int64_t(blockIdx.x) * rows_per_block + (kBlock ? 0 : threadIdx.x / 32);
  auto reduce = [&](T v, auto op) {
    if constexpr (kBlock)
      return block_reduce(v, op, smem);
    else
      return warp_reduce(v, op);
  };
  const int64_t c = a.c;
  for (int64_t row = first; row < a.n; row += int64_t(gridDim.x) * rows_per_block) {
    const T* s = a.scores + row * c;
    T* p = a.probs + row * c;
    T mx = T(-INFINITY);
    for (int64_t j = lane; j < c; j += width) mx = math::max(mx, s[j]);
    mx = reduce(mx, Max{});
    T sum = T(0);
    for (int64_t j = lane; j < c; j += width) {
      const T e = math::exp(s[j] - mx);
      p[j] = e;
      sum += e;
    }
    sum = reduce(sum, Sum{});
    const T inv = T(1) / sum;
    for (int64_t j = lane; j < c; j += width) p[j] *= inv;
    const T lse = math::log(sum);
    T loss = T(0);
    if (a.labels) {
      const int64_t label = a.labels[row];
      if (label < 0 || label >= c) {
        if (lane == 0) atomicMin(bad_row, (unsigned long long)row);
      } else {
        loss = lse - (s[label] - mx);
      }
    } else if (a.targets) {
      const T* t = a.targets + row * c;
      T part = T(0);
      for (int64_t j = lane; j < c; j += width)
        if (t[j] != T(0)) part -= t[j] * (s[j] - mx - lse);
      loss = reduce(part, Sum{});
    }
    if (lane == 0 && row_loss) row_loss[row] = double(loss);
  }
}

// One block: result[0] = the bits of double(T(sum of row_loss / n)), the rows
// added per thread in order and the threads in a fixed tree.
template <class T>
__global__ __launch_bounds__(kThreads) void mean_loss_kernel(const double* row_loss, int64_t n,
                                                             unsigned long long* result) {
  __shared__ double smem[kThreads / 32];
  double total = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) total += row_loss[i];
  total = block_reduce(total, Sum{}, smem);
  if (threadIdx.x == 0) result[0] = (unsigned long long)__double_as_longlong(double(T(total / double(n))));
}

// dscores = probs * scale, or (probs - targets) * scale.
template <class T, bool kTargets>
__global__ void scale_kernel(int64_t total, const T* probs, const T* targets, T* d, T scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x)
    d[i] = kTargets ? (probs[i] - targets[i]) * scale : probs[i] * scale;
}

// dscores[i, labels[i]] -= scale; a label outside [0, C) is skipped.
template <class T>
__global__ void onehot_kernel(int64_t n, int64_t c, const int64_t* labels, T* d, T scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t label = labels[i];
    if (label >= 0 && label < c) d[i * c + label] -= scale;
  }
}

// The forward kernels with their results left on the device: result[0] holds the
// bits of the mean loss as a double (0.0 for an empty batch; NaN bits when there
// are neither labels nor targets), result[1] the first row whose label lies
// outside [0, C), or kNoBadRow.
template <class T>
void forward_into(const SoftmaxXentForwardArgs<T>& a, unsigned long long* result, cudaStream_t stream,
                  const char* what) {
  check(cudaMemsetAsync(result, 0xff, 2 * sizeof(unsigned long long), stream), what);
  if (a.n <= 0 || a.c <= 0) {
    check(cudaMemsetAsync(result, 0, sizeof(unsigned long long), stream), what);
    return;
  }
  const bool has_loss = a.labels || a.targets;
  Scratch<double> row_loss(has_loss ? a.n : 0, stream, what);
  if (a.c <= kWarpRowMaxC) {
    forward_kernel<T, false><<<grid_for(a.n, kThreads / 32), kThreads, 0, stream>>>(a, row_loss.get(), result + 1);
  } else {
    const int blocks = int(a.n < 65535 * 8 ? a.n : 65535 * 8);
    forward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(a, row_loss.get(), result + 1);
  }
  check_launch(what);
  if (has_loss) {
    mean_loss_kernel<T><<<1, kThreads, 0, stream>>>(row_loss.get(), a.n, result);
    check_launch(what);
  }
}

}  // namespace

template <class T>
void softmax_xent_forward(const SoftmaxXentForwardArgs<T>& a, cudaStream_t stream) {
  const char* what = "softmax_xent_forward";
  if (a.n <= 0 || a.c <= 0) {
    *a.loss = T(0);
    return;
  }
  Scratch<unsigned long long> result(2, stream, what);
  forward_into(a, result.get(), stream, what);
  unsigned long long host[2];
  check(cudaMemcpyAsync(host, result.get(), sizeof host, cudaMemcpyDeviceToHost, stream), what);
  check(cudaStreamSynchronize(stream), what);
  if (host[1] != kNoBadRow) {
    const int64_t row = int64_t(host[1]);
    int64_t label = 0;
    check(cudaMemcpyAsync(&label, a.labels + row, sizeof label, cudaMemcpyDeviceToHost, stream), what);
    check(cudaStreamSynchronize(stream), what);
    throw LabelRangeError("labels must be in [0, " + std::to_string(a.c) + "), got labels[" + std::to_string(row) +
                          "] = " + std::to_string(label));
  }
  double loss = 0.0;
  if (a.labels || a.targets) std::memcpy(&loss, &host[0], sizeof loss);
  *a.loss = T(loss);
}

template <class T>
void softmax_xent_forward_device(const SoftmaxXentForwardArgs<T>& a, unsigned long long* result,
                                 cudaStream_t stream) {
  forward_into(a, result, stream, "softmax_xent_forward_device");
}

template <class T>
void softmax_xent_backward(const SoftmaxXentBackwardArgs<T>& a, cudaStream_t stream) {
  const char* what = "softmax_xent_backward";
  if (!a.labels == !a.targets) throw Error(std::string(what) + ": exactly one of labels and targets is required");
  const int64_t total = a.n * a.c;
  if (a.n <= 0 || a.c <= 0) return;
  if (a.targets) {
    scale_kernel<T, true><<<grid_for(total, kThreads), kThreads, 0, stream>>>(total, a.probs, a.targets, a.dscores,
                                                                            a.scale);
    check_launch(what);
  } else {
    scale_kernel<T, false><<<grid_for(total, kThreads), kThreads, 0, stream>>>(total, a.probs, nullptr, a.dscores,
                                                                             a.scale);
    check_launch(what);
    onehot_kernel<T><<<grid_for(a.n, kThreads), kThreads, 0, stream>>>(a.n, a.c, a.labels, a.dscores, a.scale);
    check_launch(what);
  }
}

template void softmax_xent_forward<float>(const SoftmaxXentForwardArgs<float>&, cudaStream_t);
template void softmax_xent_forward<double>(const SoftmaxXentForwardArgs<double>&, cudaStream_t);
template void softmax_xent_forward_device<float>(const SoftmaxXentForwardArgs<float>&, unsigned long long*,
                                                 cudaStream_t);
template void softmax_xent_forward_device<double>(const SoftmaxXentForwardArgs<double>&, unsigned long long*,
                                                  cudaStream_t);
template void softmax_xent_backward<float>(const SoftmaxXentBackwardArgs<float>&, cudaStream_t);
template void softmax_xent_backward<double>(const SoftmaxXentBackwardArgs<double>&, cudaStream_t);

}  // namespace fastnn::cuda
