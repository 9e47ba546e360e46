// Elementwise activations on the GPU and the bias + activation epilogues the
// GEMM-based layers share (kernels.cuh bias_act, act_grad_colsum). The math is
// ops/activation.h, the CPU's.
//
// Reductions (prelu's d loss / d alpha, the column sums of dz) are written as
// per-block partial sums in double to a scratch buffer and then summed in a
// fixed order: the result depends on the shape only, never on scheduling.
#include <algorithm>
#include <type_traits>

#include "cuda/kernels.cuh"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;

template <class T, class F>
__global__ void act_forward_kernel(ActForwardArgs<T> a) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.n; i += int64_t(blockDim.x) * gridDim.x)
    a.y[i] = F::forward(a.x[i], a.alpha);
}

// Sum of a block's `v` in thread 0 (kThreads threads).
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
  return total;
}

// dx = dy * act'(x, y); for prelu, partial[blockIdx.x] = this block's sum of dy * x (x <= 0).
template <class T, class F>
__global__ void act_backward_kernel(ActBackwardArgs<T> a, double* partial) {
  double acc = 0.0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < a.n; i += int64_t(blockDim.x) * gridDim.x) {
    const T dy = a.dy[i];
    a.dx[i] = dy * F::grad(a.x[i], a.y[i], a.alpha);
    if constexpr (std::is_same_v<F, act::Prelu>) acc += double(dy) * double(act::Prelu::grad_alpha(a.x[i]));
  }
  if constexpr (std::is_same_v<F, act::Prelu>) {
    const double total = block_sum(acc);
    if (threadIdx.x == 0 && partial) partial[blockIdx.x] = total;
  }
}

// out[j] = sum over p of part[p * width + j], p in order (one thread per j).
template <class T>
__global__ void sum_partials_kernel(const double* part, int64_t parts, int64_t width, T* out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < width; j += int64_t(blockDim.x) * gridDim.x) {
    double s = 0.0;
    for (int64_t p = 0; p < parts; ++p) s += part[p * width + j];
    out[j] = T(s);
  }
}

template <class T, class F>
__global__ void bias_act_kernel(int64_t rows, int64_t cols, const T* src, const T* bias, T* y, T* z, T alpha) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const T pre = bias ? src[i] + bias[i % cols] : src[i];
    if (z) z[i] = pre;
    y[i] = F::forward(pre, alpha);
  }
}

// Column tile of 32 columns x 8 row lanes; block (32, 8); grid (column tiles, row slabs).
// Each block writes the column sums of its slab (double) to col_part[slab][col]
// and, for prelu, its alpha-gradient sum to alpha_part[slab * tiles + tile].
template <class T, class F>
__global__ void act_grad_colsum_kernel(int64_t rows, int64_t cols, int64_t rows_per_slab, const T* dy, const T* z,
                                       const T* y, T* dz, double* col_part, double* alpha_part, T alpha) {
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_slab;
  const int64_t r1 = r0 + rows_per_slab < rows ? r0 + rows_per_slab : rows;
  double col_acc = 0.0, alpha_acc = 0.0;
  if (col < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += blockDim.y) {
      const int64_t i = r * cols + col;
      const T g = dy[i];
      const T zi = z ? z[i] : y[i];
      const T d = g * F::grad(zi, y[i], alpha);
      dz[i] = d;
      col_acc += double(d);
      if constexpr (std::is_same_v<F, act::Prelu>) alpha_acc += double(g) * double(act::Prelu::grad_alpha(zi));
    }
  }
  __shared__ double sums[8][33];
  __shared__ double asum[8][33];
  sums[threadIdx.y][threadIdx.x] = col_acc;
  asum[threadIdx.y][threadIdx.x] = alpha_acc;
  __syncthreads();
  if (threadIdx.y == 0) {
    double s = 0.0;
    for (int t = 0; t < 8; ++t) s += sums[t][threadIdx.x];
    if (col_part && col < cols) col_part[int64_t(blockIdx.y) * cols + col] = s;
  }
  if (alpha_part && threadIdx.x == 0 && threadIdx.y == 0) {
    double s = 0.0;
    for (int t = 0; t < 8; ++t)
      for (int l = 0; l < 32; ++l) s += asum[t][l];
    alpha_part[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = s;
  }
}

}  // namespace

template <class T>
void act_forward(const ActForwardArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0) return;
  visit_act(a.act, [&](auto f) {
    act_forward_kernel<T, decltype(f)><<<grid_for(a.n, kThreads), kThreads, 0, stream>>>(a);
  });
  check_launch("act_forward");
}

template <class T>
void act_backward(const ActBackwardArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0) {
    if (a.dalpha) check(cudaMemsetAsync(a.dalpha, 0, sizeof(T), stream), "act_backward");
    return;
  }
  const int blocks = std::min(grid_for(a.n, kThreads), 4 * num_sms());
  const bool prelu = a.act == Act::prelu && a.dalpha;
  Scratch<double> partial(prelu ? blocks : 0, stream, "act_backward");
  visit_act(a.act, [&](auto f) {
    act_backward_kernel<T, decltype(f)><<<blocks, kThreads, 0, stream>>>(a, partial.get());
  });
  check_launch("act_backward");
  if (prelu) {
    sum_partials_kernel<T><<<1, 32, 0, stream>>>(partial.get(), blocks, 1, a.dalpha);
    check_launch("act_backward (alpha gradient)");
  } else if (a.dalpha) {
    check(cudaMemsetAsync(a.dalpha, 0, sizeof(T), stream), "act_backward");
  }
}

template <class T>
void bias_act(cudaStream_t stream, int64_t rows, int64_t cols, const T* src, const T* bias, T* y, T* z, Act act,
              T alpha) {
  const int64_t total = rows * cols;
  if (total <= 0) return;
  visit_act(act, [&](auto f) {
    bias_act_kernel<T, decltype(f)><<<grid_for(total, kThreads), kThreads, 0, stream>>>(rows, cols, src, bias, y, z,
                                                                                         alpha);
  });
  check_launch("bias + activation epilogue");
}

template <class T>
void act_grad_colsum(cudaStream_t stream, int64_t rows, int64_t cols, const T* dy, const T* z, const T* y, T* dz,
                     T* dbias, T* dalpha, Act act, T alpha) {
  if (rows <= 0 || cols <= 0) {
    if (dbias && cols > 0) check(cudaMemsetAsync(dbias, 0, size_t(cols) * sizeof(T), stream), "dbias");
    if (dalpha) check(cudaMemsetAsync(dalpha, 0, sizeof(T), stream), "dalpha");
    return;
  }
  const int64_t tiles = (cols + 31) / 32;
  // Enough slabs for about 4 blocks per multiprocessor, each at least 64 rows.
  int64_t slabs = (4 * int64_t(num_sms()) + tiles - 1) / tiles;
  slabs = std::max<int64_t>(1, std::min<int64_t>(std::min<int64_t>(slabs, (rows + 63) / 64), 65535));
  const int64_t rows_per_slab = (rows + slabs - 1) / slabs;
  slabs = (rows + rows_per_slab - 1) / rows_per_slab;
  const bool prelu = act == Act::prelu && dalpha;
  Scratch<double> col_part(dbias ? slabs * cols : 0, stream, "dbias");
  Scratch<double> alpha_part(prelu ? slabs * tiles : 0, stream, "dalpha");
  const dim3 grid{unsigned(tiles), unsigned(slabs), 1}, block{32, 8, 1};
  visit_act(act, [&](auto f) {
    act_grad_colsum_kernel<T, decltype(f)><<<grid, block, 0, stream>>>(rows, cols, rows_per_slab, dy, z, y, dz,
                                                                       col_part.get(), alpha_part.get(), alpha);
  });
  check_launch("activation gradient");
  if (dbias) {
    sum_partials_kernel<T><<<grid_for(cols, kThreads), kThreads, 0, stream>>>(col_part.get(), slabs, cols, dbias);
    check_launch("dbias");
  }
  if (prelu) {
    sum_partials_kernel<T><<<1, 32, 0, stream>>>(alpha_part.get(), slabs * tiles, 1, dalpha);
    check_launch("dalpha");
  } else if (dalpha) {
    check(cudaMemsetAsync(dalpha, 0, sizeof(T), stream), "dalpha");
  }
}

#define FASTNN_INSTANTIATE(T)                                                                                     \
  template void act_forward<T>(const ActForwardArgs<T>&, cudaStream_t);                                           \
  template void act_backward<T>(const ActBackwardArgs<T>&, cudaStream_t);                                         \
  template void bias_act<T>(cudaStream_t, int64_t, int64_t, const T*, const T*, T*, T*, Act, T);                  \
  template void act_grad_colsum<T>(cudaStream_t, int64_t, int64_t, const T*, const T*, const T*, T*, T*, T*, Act, \
                                   T);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
