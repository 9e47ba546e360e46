// Batch normalization on the GPU (formulas: ops/batchnorm.h, the CPU's; loops
// mirror cpu/batchnorm.cpp pass for pass).
//
// Shapes: x, y, dy, dx (N, C, S), S = H*W (1 for BatchNorm1d); per-channel
// vectors (C,); save_mean (2, C) as hi + lo rows. Passes:
//   forward  = split reduction (sums of x - shift in double) -> per-channel
//              finalize (mean, invstd, running stats) -> elementwise normalize(+act)
//   backward = split reduction (sum dz, sum dz * xhat in double) -> per-channel
//              finalize (dgamma, dbeta, the two means) -> elementwise dx
// Each pass is also an entry point of its own (batchnorm_stats, _gather_stats,
// _elemt, _backward_reduce, _backward_elemt) for synchronized BatchNorm.
//
// Two layouts, two loop shapes (both coalesced):
//   "planes"  (S > kColumnMaxS): a channel is N contiguous runs of S values.
//             Reduction: one block per (channel, chunk of the channel's N*S
//             values), 16-byte loads along the runs. Elementwise: a grid-stride
//             loop over 16-byte groups, the channel of a group from its index.
//   "columns" (S <= kColumnMaxS, BatchNorm1d among them): a row of x is C*S
//             contiguous values ("columns", channel = column / S). A block
//             covers a tile of 32 * V consecutive columns across a chunk of
//             rows; each thread keeps its V columns' per-channel values in
//             registers and walks down the rows.
// Determinism: every thread sums its values in a fixed order, blocks reduce in
// a fixed tree, partial sums go to a scratch buffer at fixed slots and the
// finalize kernel adds them in order: the result depends on the shape and the
// device's SM count only, never on scheduling.
#include <algorithm>
#include <string>
#include <type_traits>

#include "cuda/kernels.cuh"
#include "ops/batchnorm.h"
#include "ops/epilogue.h"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;          // plane kernels: one block of 256 threads
constexpr int kColumnLanes = 32;       // column kernels: blockDim.x (column groups)
constexpr int kRowLanes = 8;           // column kernels: blockDim.y (rows)
constexpr int64_t kColumnMaxS = 16;    // S up to this: the column layout
constexpr int kUnroll = 4;             // loads in flight per thread
constexpr int kFinalizeThreads = 128;

// V consecutive values moved as one 16-byte access.
template <class T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& v) {
  *reinterpret_cast<Pack<T, V>*>(p) = v;
}

// The up to three (N, C, S) inputs of a pass; only the first Op::kIn are read.
template <class T>
struct Inputs {
  const T* p[3];
};

// Identity's derivative reads nothing: its passes do not load y.
template <class F>
constexpr bool kReadsY = !std::is_same_v<F, act::Identity>;

// --- per-element operations (the ops/batchnorm.h formulas) --------------------

// sum (x - shift), sum (x - shift)^2; the shift of channel ch is shift[ch * stride]
// (the fused forward shifts by the channel's first sample x[0, ch, 0]: stride S).
template <class T>
struct StatsOp {
  static constexpr int kIn = 1;
  const T* shift;
  int64_t shift_stride;
  using Param = T;
  __device__ Param param(int64_t ch) const { return shift[ch * shift_stride]; }
  __device__ void accumulate(const Param& k, const T* v, double& s1, double& s2) const {
    const double d = double(v[0] - k);
    s1 += d;
    s2 += d * d;
  }
};

// sum dz, sum dz * (x - mean), dz = dy * act'(y); inputs dy, x[, y].
template <class T, class F>
struct BackwardReduceOp {
  static constexpr int kIn = kReadsY<F> ? 3 : 2;
  const T* save_mean;
  int64_t c;
  T alpha;
  struct Param {
    T hi, lo;
  };
  __device__ Param param(int64_t ch) const { return Param{save_mean[ch], save_mean[c + ch]}; }
  __device__ void accumulate(const Param& p, const T* v, double& s1, double& s2) const {
    const T dz = act_backward_epilogue<T, F>(v[0], T(0), kReadsY<F> ? v[kIn - 1] : v[0], alpha);
    s1 += double(dz);
    s2 += double(dz) * double(batchnorm_center(v[1], p.hi, p.lo));
  }
};

// y = act(((x - hi) - lo) * invstd * gamma + beta); input x.
template <class T, class F>
struct NormalizeOp {
  static constexpr int kIn = 1;
  const T* save_mean;
  const T* save_invstd;
  const T* gamma;
  const T* beta;
  int64_t c;
  T alpha;
  struct Param {
    T hi, lo, scale, beta;
  };
  __device__ Param param(int64_t ch) const {
    return Param{save_mean[ch], save_mean[c + ch], save_invstd[ch] * (gamma ? gamma[ch] : T(1)),
                 beta ? beta[ch] : T(0)};
  }
  __device__ T apply(const Param& p, const T* v) const {
    return F::forward(batchnorm_affine(v[0], p.hi, p.lo, p.scale, p.beta), alpha);
  }
};

// dx = gamma * invstd * (dz - mean_dz - xhat * mean_dz_xhat) (means null: eval
// form, means 0); inputs dy, x[, y].
template <class T, class F>
struct BackwardElemtOp {
  static constexpr int kIn = kReadsY<F> ? 3 : 2;
  const T* save_mean;
  const T* save_invstd;
  const T* gamma;
  const double* mean_dz;
  const double* mean_dz_xhat;
  int64_t c;
  T alpha;
  struct Param {
    T hi, lo, invstd, scale, mean_dz, mean_dz_xhat;
  };
  __device__ Param param(int64_t ch) const {
    const T inv = save_invstd[ch];
    const bool training = mean_dz && mean_dz_xhat;
    return Param{save_mean[ch], save_mean[c + ch], inv, inv * (gamma ? gamma[ch] : T(1)),
                 training ? T(mean_dz[ch]) : T(0), training ? T(mean_dz_xhat[ch]) : T(0)};
  }
  __device__ T apply(const Param& p, const T* v) const {
    const T dz = act_backward_epilogue<T, F>(v[0], T(0), kReadsY<F> ? v[kIn - 1] : v[0], alpha);
    const T xhat = batchnorm_center(v[1], p.hi, p.lo) * p.invstd;
    return batchnorm_dx(dz, xhat, p.scale, p.mean_dz, p.mean_dz_xhat);
  }
};

// --- per-channel epilogues of the reductions: f(ch, s1, s2) ---------------------

struct StoreSums {
  double* sum;
  double* sumsq;
  __device__ void operator()(int64_t ch, double s1, double s2) const {
    sum[ch] = s1;
    sumsq[ch] = s2;
  }
};

// Mean (hi + lo), invstd and the running statistics (cpu gather_stats_impl).
template <class T>
struct GatherStats {
  const T* shift;
  int64_t shift_stride;
  double count;
  T* running_mean;
  T* running_var;
  T* save_mean;
  T* save_invstd;
  int64_t c;
  T momentum, eps;
  __device__ void operator()(int64_t ch, double s1, double s2) const {
    T hi, lo, var;
    batchnorm_mean_var(BatchNormMoments{s1, s2}, count, shift[ch * shift_stride], hi, lo, var);
    save_mean[ch] = hi;
    save_mean[c + ch] = lo;
    save_invstd[ch] = batchnorm_invstd(var, eps);
    if (running_mean && running_var)
      batchnorm_update_running(running_mean[ch], running_var[ch], T(hi + lo), var, count, momentum);
  }
};

// sum_dz, sum_dz_xhat = sum dz * (x - mean) * invstd, dbeta/dgamma when not
// null, and (fused backward) the two channel means when mean_dz is not null.
template <class T>
struct BackwardSums {
  const T* save_invstd;
  double* sum_dz;
  double* sum_dz_xhat;
  T* dgamma;
  T* dbeta;
  double* mean_dz;
  double* mean_dz_xhat;
  double count;
  __device__ void operator()(int64_t ch, double s1, double s2) const {
    const double sx = s2 * double(save_invstd[ch]);
    sum_dz[ch] = s1;
    sum_dz_xhat[ch] = sx;
    if (dbeta) dbeta[ch] = T(s1);
    if (dgamma) dgamma[ch] = T(sx);
    if (mean_dz) {
      mean_dz[ch] = s1 / count;
      mean_dz_xhat[ch] = sx / count;
    }
  }
};

// --- launch geometry --------------------------------------------------------------

// Plane reduction: each channel's G = N * S/V groups split into `chunks` ranges
// of `per_chunk` groups; block b = ch * chunks + chunk.
struct PlanePlan {
  int64_t chunks = 0, per_chunk = 0;
};

PlanePlan plane_plan(int64_t n, int64_t c, int64_t sv) {
  PlanePlan p;
  const int64_t groups = n * sv;
  if (groups <= 0) return p;
  // Many short blocks: the last partial wave is a small part of the pass.
  const int64_t target = 16 * int64_t(num_sms());  // blocks in all
  const int64_t most = std::max<int64_t>(1, (groups + kThreads * kUnroll - 1) / (kThreads * kUnroll));
  const int64_t want = std::min(most, std::max<int64_t>(1, (target + c - 1) / c));
  p.per_chunk = (groups + want - 1) / want;
  p.chunks = (groups + p.per_chunk - 1) / p.per_chunk;
  return p;
}

// Column passes: `tiles` tiles of kColumnLanes * V columns (gridDim.x) times
// `chunks` ranges of `rows` rows (gridDim.y <= 65535).
struct ColumnPlan {
  int64_t cols = 0, tiles = 0, chunks = 0, rows = 0;
};

ColumnPlan column_plan(int64_t n, int64_t cols, int vec) {
  ColumnPlan p;
  p.cols = cols;
  if (n <= 0 || cols <= 0) return p;
  p.tiles = (cols + kColumnLanes * vec - 1) / (kColumnLanes * vec);
  const int64_t target = 8 * int64_t(num_sms());
  const int64_t most = std::max<int64_t>(1, (n + kRowLanes * kUnroll - 1) / (kRowLanes * kUnroll));
  int64_t want = std::min(most, std::max<int64_t>(1, (target + p.tiles - 1) / p.tiles));
  want = std::min<int64_t>(want, 65535);
  p.rows = (n + want - 1) / want;
  p.chunks = (n + p.rows - 1) / p.rows;
  return p;
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16 / sizeof(T) when every run of `unit` values splits into 16-byte groups
// and every pointer is 16-byte aligned; 1 otherwise.
template <class T>
int vec_for(int64_t unit, const Inputs<T>& in, const void* out) {
  constexpr int kVec = int(16 / sizeof(T));
  if (unit % kVec != 0) return 1;
  for (const T* p : in.p)
    if (!aligned16(p)) return 1;
  return aligned16(out) ? kVec : 1;
}

// --- reduction kernels ------------------------------------------------------------

// Deterministic block sum of (s1, s2) into thread 0 (kThreads threads, 1-D or 2-D).
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <class T, int V, class Op>
__global__ __launch_bounds__(kThreads) void reduce_planes_kernel(Op op, Inputs<T> in, int64_t c, int64_t s,
                                                                  int64_t chunks, int64_t per_chunk, int64_t groups,
                                                                  double* part1, double* part2) {
  const int64_t ch = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int64_t g0 = chunk * per_chunk, g1 = min(groups, g0 + per_chunk);
  const int64_t sv = s / V;
  const typename Op::Param prm = op.param(ch);
  // (row, j): the group g = row * sv + j, walked without a division per step.
  int64_t g = g0 + threadIdx.x;
  int64_t row = g / sv, j = g % sv;
  const int64_t drow = kThreads / sv, dj = kThreads % sv;
  double s1 = 0.0, s2 = 0.0;
  while (g < g1) {
    Pack<T, V> v[kUnroll][Op::kIn];
    bool ok[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      ok[u] = g < g1;
      if (ok[u]) {
        const int64_t off = (row * c + ch) * s + j * V;
#pragma unroll
        for (int i = 0; i < Op::kIn; ++i) v[u][i] = load_pack<T, V>(in.p[i] + off);
      }
      g += kThreads;
      row += drow;
      j += dj;
      if (j >= sv) {
        j -= sv;
        ++row;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (!ok[u]) continue;
#pragma unroll
      for (int l = 0; l < V; ++l) {
        T e[Op::kIn];
#pragma unroll
        for (int i = 0; i < Op::kIn; ++i) e[i] = v[u][i].v[l];
        op.accumulate(prm, e, s1, s2);
      }
    }
  }
  __shared__ double warp1[kThreads / 32], warp2[kThreads / 32];
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    warp1[warp] = s1;
    warp2[warp] = s2;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t1 = 0.0, t2 = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) {
      t1 += warp1[w];
      t2 += warp2[w];
    }
    part1[blockIdx.x] = t1;
    part2[blockIdx.x] = t2;
  }
}

// Block (tile, chunk): threadIdx.x owns columns k .. k + V - 1 of the tile,
// threadIdx.y walks rows r0 + y, r0 + y + 8, ...; partials at [chunk * cols + k].
template <class T, int V, class Op>
__global__ __launch_bounds__(kColumnLanes* kRowLanes) void reduce_columns_kernel(Op op, Inputs<T> in, int64_t n,
                                                                                 int64_t cols, int64_t s,
                                                                                 int64_t rows, double* part1,
                                                                                 double* part2) {
  const int64_t k = int64_t(blockIdx.x) * (kColumnLanes * V) + int64_t(threadIdx.x) * V;
  const int64_t r0 = int64_t(blockIdx.y) * rows, r1 = min(n, r0 + rows);
  const bool active = k < cols;  // cols % V == 0: the whole group is inside
  double s1[V], s2[V];
  typename Op::Param prm[V];
#pragma unroll
  for (int l = 0; l < V; ++l) {
    s1[l] = 0.0;
    s2[l] = 0.0;
    if (active) prm[l] = op.param((k + l) / s);
  }
  if (active) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes * kUnroll) {
      Pack<T, V> v[kUnroll][Op::kIn];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t rr = r + u * kRowLanes;
        if (rr < r1) {
#pragma unroll
          for (int i = 0; i < Op::kIn; ++i) v[u][i] = load_pack<T, V>(in.p[i] + rr * cols + k);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (r + u * kRowLanes >= r1) continue;
#pragma unroll
        for (int l = 0; l < V; ++l) {
          T e[Op::kIn];
#pragma unroll
          for (int i = 0; i < Op::kIn; ++i) e[i] = v[u][i].v[l];
          op.accumulate(prm[l], e, s1[l], s2[l]);
        }
      }
    }
  }
  __shared__ double sh1[kRowLanes][kColumnLanes * V], sh2[kRowLanes][kColumnLanes * V];
#pragma unroll
  for (int l = 0; l < V; ++l) {
    sh1[threadIdx.y][threadIdx.x * V + l] = s1[l];
    sh2[threadIdx.y][threadIdx.x * V + l] = s2[l];
  }
  __syncthreads();
  if (threadIdx.y == 0 && active) {
    const int64_t chunk = blockIdx.y;
#pragma unroll
    for (int l = 0; l < V; ++l) {
      double t1 = 0.0, t2 = 0.0;
      for (int y = 0; y < kRowLanes; ++y) {
        t1 += sh1[y][threadIdx.x * V + l];
        t2 += sh2[y][threadIdx.x * V + l];
      }
      part1[chunk * cols + k + l] = t1;
      part2[chunk * cols + k + l] = t2;
    }
  }
}

// One thread per channel: the channel's partials added in order, then epi.
template <class Epi>
__global__ void finalize_kernel(Epi epi, int64_t c, bool columns, int64_t chunks, int64_t s, int64_t cols,
                                const double* part1, const double* part2) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double s1 = 0.0, s2 = 0.0;
  if (columns) {
    for (int64_t q = 0; q < chunks; ++q)
      for (int64_t j = 0; j < s; ++j) {
        const int64_t idx = q * cols + ch * s + j;
        s1 += part1[idx];
        s2 += part2[idx];
      }
  } else {
    for (int64_t q = 0; q < chunks; ++q) {
      s1 += part1[ch * chunks + q];
      s2 += part2[ch * chunks + q];
    }
  }
  epi(ch, s1, s2);
}

// batchnorm_gather_stats: the sums are given.
template <class T>
__global__ void gather_kernel(GatherStats<T> epi, const double* sum, const double* sumsq) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch < epi.c) epi(ch, sum[ch], sumsq[ch]);
}

// Eval forward: the running statistics are the ones used (and saved for backward).
template <class T>
__global__ void eval_stats_kernel(int64_t c, const T* running_mean, const T* running_var, T eps, T* save_mean,
                                  T* save_invstd) {
  const int64_t ch = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  save_mean[ch] = running_mean[ch];
  save_mean[c + ch] = T(0);
  save_invstd[ch] = batchnorm_invstd(running_var[ch], eps);
}

// --- elementwise kernels ----------------------------------------------------------

// Groups of V values (S % V == 0, so a group never leaves its plane), visited
// channel by channel from the LAST channel down: the reduction before this pass
// (its blocks run channel-major, ascending) read the last channels most
// recently, so with tensors near the L2's size (60 MB on an H200) the first
// blocks here find their inputs still in L2 instead of re-reading them from HBM.
template <class T, int V, class Index, class Op>
__global__ __launch_bounds__(kThreads) void elemt_planes_kernel(Op op, Inputs<T> in, T* out, Index groups, Index sv,
                                                                Index c) {
  const Index per_channel = groups / c;   // N * S / V groups of one channel
  for (Index g = Index(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += Index(blockDim.x) * gridDim.x) {
    const Index ch = c - 1 - g / per_channel;
    const Index rem = g % per_channel;
    const Index grp = ((rem / sv) * c + ch) * sv + rem % sv;
    const typename Op::Param prm = op.param(int64_t(ch));
    const int64_t off = int64_t(grp) * V;
    Pack<T, V> v[Op::kIn];
#pragma unroll
    for (int i = 0; i < Op::kIn; ++i) v[i] = load_pack<T, V>(in.p[i] + off);
    Pack<T, V> r;
#pragma unroll
    for (int l = 0; l < V; ++l) {
      T e[Op::kIn];
#pragma unroll
      for (int i = 0; i < Op::kIn; ++i) e[i] = v[i].v[l];
      r.v[l] = op.apply(prm, e);
    }
    store_pack<T, V>(out + off, r);
  }
}

template <class T, int V, class Op>
__global__ __launch_bounds__(kColumnLanes* kRowLanes) void elemt_columns_kernel(Op op, Inputs<T> in, T* out,
                                                                                int64_t n, int64_t cols, int64_t s,
                                                                                int64_t rows) {
  const int64_t k = int64_t(blockIdx.x) * (kColumnLanes * V) + int64_t(threadIdx.x) * V;
  if (k >= cols) return;
  const int64_t r0 = int64_t(blockIdx.y) * rows, r1 = min(n, r0 + rows);
  typename Op::Param prm[V];
#pragma unroll
  for (int l = 0; l < V; ++l) prm[l] = op.param((k + l) / s);
  for (int64_t r = r0 + threadIdx.y; r < r1; r += kRowLanes * kUnroll) {
    Pack<T, V> v[kUnroll][Op::kIn];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t rr = r + u * kRowLanes;
      if (rr < r1) {
#pragma unroll
        for (int i = 0; i < Op::kIn; ++i) v[u][i] = load_pack<T, V>(in.p[i] + rr * cols + k);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t rr = r + u * kRowLanes;
      if (rr >= r1) continue;
      Pack<T, V> res;
#pragma unroll
      for (int l = 0; l < V; ++l) {
        T e[Op::kIn];
#pragma unroll
        for (int i = 0; i < Op::kIn; ++i) e[i] = v[u][i].v[l];
        res.v[l] = op.apply(prm[l], e);
      }
      store_pack<T, V>(out + rr * cols + k, res);
    }
  }
}

// --- launch helpers ---------------------------------------------------------------

int blocks_for_channels(int64_t c) { return int((c + kFinalizeThreads - 1) / kFinalizeThreads); }

// Reduces op over (N, C, S) per channel into (s1, s2) and calls epi(ch, s1, s2)
// for every channel (zeros when N * S == 0).
template <class T, class Op, class Epi>
void reduce_channels(const Op& op, const Inputs<T>& in, int64_t n, int64_t c, int64_t s, const Epi& epi,
                     cudaStream_t stream, const char* what) {
  if (c <= 0) return;
  constexpr int kVec = int(16 / sizeof(T));
  const bool columns = s <= kColumnMaxS;
  const int vec = vec_for<T>(columns ? c * s : s, in, nullptr);
  if (columns) {
    const ColumnPlan p = column_plan(n, c * s, vec);
    Scratch<double> part(2 * p.chunks * p.cols, stream, what);
    double* part1 = part.get();
    double* part2 = part1 ? part1 + p.chunks * p.cols : nullptr;
    if (p.chunks > 0) {
      const dim3 grid(unsigned(p.tiles), unsigned(p.chunks)), block(kColumnLanes, kRowLanes);
      if (vec == kVec)
        reduce_columns_kernel<T, kVec, Op><<<grid, block, 0, stream>>>(op, in, n, p.cols, s, p.rows, part1, part2);
      else
        reduce_columns_kernel<T, 1, Op><<<grid, block, 0, stream>>>(op, in, n, p.cols, s, p.rows, part1, part2);
      check_launch(what);
    }
    finalize_kernel<Epi><<<blocks_for_channels(c), kFinalizeThreads, 0, stream>>>(epi, c, true, p.chunks, s, p.cols,
                                                                                  part1, part2);
    check_launch(what);
  } else {
    const int64_t sv = s / vec;
    const PlanePlan p = plane_plan(n, c, sv);
    Scratch<double> part(2 * c * p.chunks, stream, what);
    double* part1 = part.get();
    double* part2 = part1 ? part1 + c * p.chunks : nullptr;
    if (p.chunks > 0) {
      const int64_t blocks = c * p.chunks;
      if (blocks > 0x7fffffff) throw Error(std::string(what) + ": too many channels for one grid");
      if (vec == kVec)
        reduce_planes_kernel<T, kVec, Op><<<unsigned(blocks), kThreads, 0, stream>>>(op, in, c, s, p.chunks,
                                                                                    p.per_chunk, n * sv, part1, part2);
      else
        reduce_planes_kernel<T, 1, Op><<<unsigned(blocks), kThreads, 0, stream>>>(op, in, c, s, p.chunks,
                                                                                 p.per_chunk, n * sv, part1, part2);
      check_launch(what);
    }
    finalize_kernel<Epi><<<blocks_for_channels(c), kFinalizeThreads, 0, stream>>>(epi, c, false, p.chunks, s, 0,
                                                                                  part1, part2);
    check_launch(what);
  }
}

template <class T, int V, class Op>
void launch_elemt_planes(const Op& op, const Inputs<T>& in, T* out, int64_t groups, int64_t sv, int64_t c,
                         cudaStream_t stream) {
  const int blocks = grid_for(groups, kThreads);
  if (groups < (int64_t(1) << 31))
    elemt_planes_kernel<T, V, uint32_t, Op><<<blocks, kThreads, 0, stream>>>(op, in, out, uint32_t(groups),
                                                                             uint32_t(sv), uint32_t(c));
  else
    elemt_planes_kernel<T, V, uint64_t, Op><<<blocks, kThreads, 0, stream>>>(op, in, out, uint64_t(groups),
                                                                             uint64_t(sv), uint64_t(c));
}

// out (N, C, S) = op over the inputs, elementwise.
template <class T, class Op>
void elementwise(const Op& op, const Inputs<T>& in, T* out, int64_t n, int64_t c, int64_t s, cudaStream_t stream,
                 const char* what) {
  if (n <= 0 || c <= 0 || s <= 0) return;
  constexpr int kVec = int(16 / sizeof(T));
  const bool columns = s <= kColumnMaxS;
  const int vec = vec_for<T>(columns ? c * s : s, in, out);
  if (columns) {
    const ColumnPlan p = column_plan(n, c * s, vec);
    const dim3 grid(unsigned(p.tiles), unsigned(p.chunks)), block(kColumnLanes, kRowLanes);
    if (vec == kVec)
      elemt_columns_kernel<T, kVec, Op><<<grid, block, 0, stream>>>(op, in, out, n, p.cols, s, p.rows);
    else
      elemt_columns_kernel<T, 1, Op><<<grid, block, 0, stream>>>(op, in, out, n, p.cols, s, p.rows);
  } else {
    const int64_t groups = n * c * (s / vec);
    if (vec == kVec)
      launch_elemt_planes<T, kVec, Op>(op, in, out, groups, s / vec, c, stream);
    else
      launch_elemt_planes<T, 1, Op>(op, in, out, groups, s, c, stream);
  }
  check_launch(what);
}

// Calls f(F{}) for the activation, which must be one whose derivative reads y.
template <class G>
void with_output_act(Act act, const char* what, G&& g) {
  visit_act(act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput)
      g(f);
    else
      throw Error(std::string(what) + ": act " + kActNames[int(act)] +
                  " cannot be fused into batchnorm (its derivative needs the input)");
  });
}

template <class T, class F>
Inputs<T> backward_inputs(const T* dy, const T* x, const T* y, const char* what) {
  if (kReadsY<F> && !y) throw Error(std::string(what) + ": y (forward output) is required for a fused activation");
  return Inputs<T>{{dy, x, kReadsY<F> ? y : nullptr}};
}

}  // namespace

template <class T>
void batchnorm_forward(const BatchNormForwardArgs<T>& a, cudaStream_t stream) {
  const char* what = "batchnorm_forward";
  if (a.c <= 0) return;
  with_output_act(a.act, what, [&](auto f) {
    using F = decltype(f);
    const Inputs<T> in{{a.x, nullptr, nullptr}};
    if (a.training) {
      // Shift: the channel's first sample x[0, c, 0], as the CPU.
      if (a.n <= 0 || a.s <= 0) throw Error(std::string(what) + ": training needs values in every channel");
      const double count = double(a.n) * double(a.s);
      reduce_channels(StatsOp<T>{a.x, a.s}, in, a.n, a.c, a.s,
                      GatherStats<T>{a.x, a.s, count, a.running_mean, a.running_var, a.save_mean, a.save_invstd, a.c,
                                     a.momentum, a.eps},
                      stream, what);
    } else {
      if (!a.running_mean || !a.running_var)
        throw Error(std::string(what) + ": running_mean and running_var are required in eval mode");
      eval_stats_kernel<T><<<blocks_for_channels(a.c), kFinalizeThreads, 0, stream>>>(
          a.c, a.running_mean, a.running_var, a.eps, a.save_mean, a.save_invstd);
      check_launch(what);
    }
    elementwise(NormalizeOp<T, F>{a.save_mean, a.save_invstd, a.gamma, a.beta, a.c, a.alpha}, in, a.y, a.n, a.c, a.s,
                stream, what);
  });
}

template <class T>
void batchnorm_backward(const BatchNormBackwardArgs<T>& a, cudaStream_t stream) {
  const char* what = "batchnorm_backward";
  if (a.c <= 0) return;
  with_output_act(a.act, what, [&](auto f) {
    using F = decltype(f);
    const Inputs<T> in = backward_inputs<T, F>(a.dy, a.x, a.y, what);
    const double count = double(a.n) * double(a.s);
    Scratch<double> sums(4 * a.c, stream, what);
    double* sum_dz = sums.get();
    double* sum_dz_xhat = sum_dz + a.c;
    double* mean_dz = sum_dz_xhat + a.c;
    double* mean_dz_xhat = mean_dz + a.c;
    const bool means = a.dx && a.training;
    reduce_channels(BackwardReduceOp<T, F>{a.save_mean, a.c, a.alpha}, in, a.n, a.c, a.s,
                    BackwardSums<T>{a.save_invstd, sum_dz, sum_dz_xhat, a.dgamma, a.dbeta,
                                    means ? mean_dz : nullptr, means ? mean_dz_xhat : nullptr, count},
                    stream, what);
    if (!a.dx) return;
    elementwise(BackwardElemtOp<T, F>{a.save_mean, a.save_invstd, a.gamma, means ? mean_dz : nullptr,
                                      means ? mean_dz_xhat : nullptr, a.c, a.alpha},
                in, a.dx, a.n, a.c, a.s, stream, what);
  });
}

template <class T>
void batchnorm_stats(const BatchNormStatsArgs<T>& a, cudaStream_t stream) {
  reduce_channels(StatsOp<T>{a.shift, 1}, Inputs<T>{{a.x, nullptr, nullptr}}, a.n, a.c, a.s,
                  StoreSums{a.sum, a.sumsq}, stream, "batchnorm_stats");
}

template <class T>
void batchnorm_gather_stats(const BatchNormGatherStatsArgs<T>& a, cudaStream_t stream) {
  if (a.c <= 0) return;
  gather_kernel<T><<<blocks_for_channels(a.c), kFinalizeThreads, 0, stream>>>(
      GatherStats<T>{a.shift, 1, a.count, a.running_mean, a.running_var, a.save_mean, a.save_invstd, a.c, a.momentum,
                     a.eps},
      a.sum, a.sumsq);
  check_launch("batchnorm_gather_stats");
}

template <class T>
void batchnorm_elemt(const BatchNormElemtArgs<T>& a, cudaStream_t stream) {
  const char* what = "batchnorm_elemt";
  with_output_act(a.act, what, [&](auto f) {
    using F = decltype(f);
    elementwise(NormalizeOp<T, F>{a.save_mean, a.save_invstd, a.gamma, a.beta, a.c, a.alpha},
                Inputs<T>{{a.x, nullptr, nullptr}}, a.y, a.n, a.c, a.s, stream, what);
  });
}

template <class T>
void batchnorm_backward_reduce(const BatchNormBackwardReduceArgs<T>& a, cudaStream_t stream) {
  const char* what = "batchnorm_backward_reduce";
  with_output_act(a.act, what, [&](auto f) {
    using F = decltype(f);
    reduce_channels(BackwardReduceOp<T, F>{a.save_mean, a.c, a.alpha}, backward_inputs<T, F>(a.dy, a.x, a.y, what),
                    a.n, a.c, a.s,
                    BackwardSums<T>{a.save_invstd, a.sum_dz, a.sum_dz_xhat, a.dgamma, a.dbeta, nullptr, nullptr,
                                    double(a.n) * double(a.s)},
                    stream, what);
  });
}

template <class T>
void batchnorm_backward_elemt(const BatchNormBackwardElemtArgs<T>& a, cudaStream_t stream) {
  const char* what = "batchnorm_backward_elemt";
  with_output_act(a.act, what, [&](auto f) {
    using F = decltype(f);
    elementwise(BackwardElemtOp<T, F>{a.save_mean, a.save_invstd, a.gamma, a.mean_dz, a.mean_dz_xhat, a.c, a.alpha},
                backward_inputs<T, F>(a.dy, a.x, a.y, what), a.dx, a.n, a.c, a.s, stream, what);
  });
}

#define FASTNN_BN_INSTANTIATE(name, Args)                              \
  template void name<float>(const Args<float>&, cudaStream_t);        \
  template void name<double>(const Args<double>&, cudaStream_t);
FASTNN_BN_INSTANTIATE(batchnorm_forward, BatchNormForwardArgs)
FASTNN_BN_INSTANTIATE(batchnorm_backward, BatchNormBackwardArgs)
FASTNN_BN_INSTANTIATE(batchnorm_stats, BatchNormStatsArgs)
FASTNN_BN_INSTANTIATE(batchnorm_gather_stats, BatchNormGatherStatsArgs)
FASTNN_BN_INSTANTIATE(batchnorm_elemt, BatchNormElemtArgs)
FASTNN_BN_INSTANTIATE(batchnorm_backward_reduce, BatchNormBackwardReduceArgs)
FASTNN_BN_INSTANTIATE(batchnorm_backward_elemt, BatchNormBackwardElemtArgs)
#undef FASTNN_BN_INSTANTIATE

}  // namespace fastnn::cuda
