// fastnn's kernel vocabulary: one declaration per kernel, each taking one named
// argument structure. The CPU implementations live in csrc/cpu/ (compiled once
// per instruction set and chosen at run time), the CUDA ones in csrc/cuda/.
//
// Shape legend: N batch rows, D input features, M output features, C classes.
// All matrices are dense row-major; pointers marked "may be null" are optional.
#pragma once

#include <cstdint>

#include "ops/activation.h"
#include "ops/optim.h"

namespace fastnn {

// C (m, n) = A (m, k) @ B (k, n), with A and B given by strides so transposed
// operands cost nothing: A[i, p] = a[i * a_rs + p * a_cs]. C has leading dim ldc.
// beta is 0 (overwrite) or 1 (accumulate into C).
template <class T>
struct GemmArgs {
  int64_t m, n, k;
  const T* a; int64_t a_rs, a_cs;
  const T* b; int64_t b_rs, b_cs;
  T* c; int64_t ldc;
  T beta;
};

// Forward of y = act(x @ weight + bias).
//   x (N, D), weight (D, M), bias (M,) may be null, y (N, M).
//   z (N, M) receives the pre-activation when act_saves_preactivation(act);
//   it may be null otherwise. Backward then reads y, or z where it was saved.
template <class T>
struct LinearActForwardArgs {
  int64_t n, d, m;
  const T* x; const T* weight; const T* bias;
  T* y; T* z;
  Act act; T alpha;
};

// Backward of linear_act:
//   dz = dy * act'(z or y), dweight = x^T dz, dbias = sum_rows dz, dx = dz weight^T.
//   dy, y (N, M); z (N, M) when saved; dz_work (N, M) scratch;
//   dx (N, D) may be null (no input gradient needed); dbias may be null;
//   dalpha (1,) receives d loss / d alpha for prelu, may be null otherwise.
template <class T>
struct LinearActBackwardArgs {
  int64_t n, d, m;
  const T* dy; const T* x; const T* weight; const T* y; const T* z;
  T* dz_work; T* dx; T* dweight; T* dbias; T* dalpha;
  Act act; T alpha;
};

// Elementwise activation (a standalone activation layer): y = act(x), n elements.
template <class T>
struct ActForwardArgs {
  int64_t n; const T* x; T* y; Act act; T alpha;
};

// dx = dy * act'(x or y); dalpha (prelu) may be null.
template <class T>
struct ActBackwardArgs {
  int64_t n; const T* dy; const T* x; const T* y; T* dx; T* dalpha; Act act; T alpha;
};

// Softmax cross-entropy forward: scores (N, C), probs (N, C) saved for backward,
// the mean loss in *loss. The targets are hard labels (N,) int64 in [0, C), or
// soft targets (N, C) (distributions: Mixup, label smoothing): at most one of
// labels/targets is non-null; with neither, only probs is computed (loss 0).
template <class T>
struct SoftmaxXentForwardArgs {
  int64_t n, c; const T* scores; const int64_t* labels; const T* targets; T* probs; T* loss;
};

// dscores = (probs - onehot(labels) or targets) * scale; scale is dloss / N.
// Exactly one of labels/targets is non-null.
template <class T>
struct SoftmaxXentBackwardArgs {
  int64_t n, c; const T* probs; const int64_t* labels; const T* targets; T* dscores; T scale;
};

// One fused optimizer step over a flat buffer split into segments (parameter
// groups): segment s covers [seg_begin[s], seg_begin[s + 1]) and uses hyper[s].
// state1/state2 (same length as param) may be null when the rule has no state.
template <class T>
struct OptimStepArgs {
  int64_t n; T* param; const T* grad; T* state1; T* state2;
  int64_t num_segments; const int64_t* seg_begin; const OptimHyper<T>* hyper;
  Rule rule;
};

// Batch normalization forward over x (N, C, S) (S = H*W; 1 for BatchNorm1d),
// statistics per channel over N and S; see ops/batchnorm.h for the formulas.
//   gamma/beta (C,) may be null (affine=False). training: batch statistics,
//   running_mean/running_var (C,) updated in place; eval: running statistics.
//   save_mean (2, C) receives the mean used as hi + lo pairs (ops/batchnorm.h),
//   save_invstd (C,) 1 / sqrt(var + eps); backward reads both.
//   act: an activation whose derivative reads its output (kGradFromOutput),
//   fused after the affine step (identity for plain BatchNorm).
template <class T>
struct BatchNormForwardArgs {
  int64_t n, c, s;
  const T* x; const T* gamma; const T* beta;
  T* running_mean; T* running_var; T* save_mean; T* save_invstd; T* y;
  bool training; T momentum, eps; Act act; T alpha;
};

// Backward of batchnorm_forward: dy, x (N, C, S); y (N, C, S) needed only when
// act is not identity; dx (N, C, S); dgamma/dbeta (C,) may be null.
template <class T>
struct BatchNormBackwardArgs {
  int64_t n, c, s;
  const T* dy; const T* x; const T* y; const T* gamma; const T* save_mean; const T* save_invstd;
  T* dx; T* dgamma; T* dbeta;
  bool training; Act act; T alpha;
};

// y = x * mask * scale over n elements, mask from Philox(seed, offset + i) < threshold
// (ops/dropout.h). The same kernel is the backward (dy -> dx).
template <class T>
struct DropoutArgs {
  int64_t n; const T* x; T* y; uint64_t seed, offset, threshold; T scale;
};

// batchnorm_forward/backward split at their reductions, for synchronized
// BatchNorm (a batch spread over ranks: allreduce the float64 sums in each gap,
// as PyTorch's SyncBatchNorm does). The fused kernels above are these in turn.
// batchnorm_stats: per channel, sum (x - shift) and sum (x - shift)^2 in double
//   over x (N, C, S); shift (C,) is the same on every rank.
template <class T>
struct BatchNormStatsArgs {
  int64_t n, c, s;
  const T* x; const T* shift; double* sum; double* sumsq;
};

// batchnorm_gather_stats: from the summed sum/sumsq (C,) of `count` values per
// channel, save_mean (2, C) (hi + lo) and save_invstd (C,) of the biased
// variance; running_mean/running_var (C,), if not null, updated (unbiased).
template <class T>
struct BatchNormGatherStatsArgs {
  int64_t c;
  const double* sum; const double* sumsq; double count; const T* shift;
  T* running_mean; T* running_var; T* save_mean; T* save_invstd;
  T momentum, eps;
};

// batchnorm_elemt: y = act(((x - hi) - lo) * invstd * gamma + beta), x, y (N, C, S).
template <class T>
struct BatchNormElemtArgs {
  int64_t n, c, s;
  const T* x; const T* gamma; const T* beta; const T* save_mean; const T* save_invstd; T* y;
  Act act; T alpha;
};

// batchnorm_backward_reduce: per channel sum_dz = sum dz and sum_dz_xhat =
// sum dz * xhat in double, dz = dy * act'(y); dbeta = T(sum_dz) and dgamma =
// T(sum_dz_xhat) when not null.
template <class T>
struct BatchNormBackwardReduceArgs {
  int64_t n, c, s;
  const T* dy; const T* x; const T* y; const T* save_mean; const T* save_invstd;
  double* sum_dz; double* sum_dz_xhat; T* dgamma; T* dbeta;
  Act act; T alpha;
};

// batchnorm_backward_elemt: dx = gamma * invstd * (dz - mean_dz - xhat * mean_dz_xhat),
// mean_dz/mean_dz_xhat (C,) double (the global sums over the global count);
// both null: the eval form dx = gamma * invstd * dz.
template <class T>
struct BatchNormBackwardElemtArgs {
  int64_t n, c, s;
  const T* dy; const T* x; const T* y; const T* gamma; const T* save_mean; const T* save_invstd;
  const double* mean_dz; const double* mean_dz_xhat; T* dx;
  Act act; T alpha;
};

// STREAM triad a = b + scalar * c (n elements): the benchmarks' bandwidth probe.
template <class T>
struct StreamTriadArgs {
  int64_t n; T* a; const T* b; const T* c; T scalar;
};

// Max-norm constraint (Srivastava et al. 2014), applied after an update: for
// each matrix k stored at param[offset[k]:] as (rows[k], cols[k]) row-major,
// every column (one output unit of a Linear weight (in, out)) whose L2 norm
// exceeds max_norm[k] is rescaled to norm max_norm[k].
template <class T>
struct MaxNormArgs {
  T* param; int64_t num; const int64_t* offset; const int64_t* rows; const int64_t* cols; const double* max_norm;
};

// 2-D convolution (cross-correlation, as in every framework), NCHW.
// Shape legend: N batch, C input channels, H x W input, F filters (output
// channels), KH x KW kernel, SH/SW stride, PH/PW zero padding,
// OH = (H + 2 PH - KH) / SH + 1, OW likewise; CKK = C*KH*KW, P = OH*OW.
struct ConvShape {
  int64_t n, c, h, w, f, kh, kw, sh, sw, ph, pw, oh, ow;
};

// Forward of y = act(conv(x, weight) + bias): im2col + GEMM with the bias and
// activation in the GEMM epilogue (bias per output channel).
//   x (N, C, H, W), weight (F, C, KH, KW), bias (F,) may be null, y (N, F, OH, OW);
//   z (N, F, OH, OW) receives the pre-activation when act_saves_preactivation(act),
//   may be null otherwise (backward then reads y).
template <class T>
struct Conv2dForwardArgs {
  ConvShape s;
  const T* x; const T* weight; const T* bias;
  T* y; T* z;
  Act act; T alpha;
};

// Backward of conv2d_forward: dz = dy * act'(z or y); dbias = sum over N, OH, OW
// of dz; dweight = sum_n dz_n (F, P) @ im2col(x_n)^T; dx = col2im(weight^T @ dz_n).
//   dy, y, z (as in forward), dz_work (N, F, OH, OW) scratch; dx (N, C, H, W) may
//   be null; dbias (F,) may be null; dweight (F, C, KH, KW); dalpha (1,) for prelu.
template <class T>
struct Conv2dBackwardArgs {
  ConvShape s;
  const T* dy; const T* x; const T* weight; const T* y; const T* z;
  T* dz_work; T* dx; T* dweight; T* dbias; T* dalpha;
  Act act; T alpha;
};

// 2-D pooling, NCHW (ops/pool.h: windows, tie and NaN rules, divisors).
// Shape legend: N batch, C channels, H x W input, KH x KW window, SH/SW
// stride, PH/PW padding (never part of a window), OH = (H + 2 PH - KH) / SH + 1,
// OW likewise. Every (N, C) plane is independent; threads split the planes.
// index (N, C, OH, OW) int32 holds the in-plane position ih * W + iw of each
// output's maximum (PyTorch's return_indices), so H * W < 2^31.
struct PoolShape {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

// y = max over each window; index = where the maximum was (the first on ties).
//   x (N, C, H, W), y and index (N, C, OH, OW).
template <class T>
struct MaxPool2dForwardArgs {
  PoolShape s; const T* x; T* y; int32_t* index;
};

// Max over arbitrary windows rows [row_begin[i], row_end[i]) x columns
// [col_begin[j], col_end[j]) (fractional max pooling's regions; non-empty and
// inside the plane): x (N, C, H, W), row_begin/row_end (OH,), col_begin/col_end
// (OW,) int64, y and index (N, C, OH, OW). Only s.n, s.c, s.h, s.w, s.oh, s.ow
// are read.
template <class T>
struct MaxPool2dRegionsForwardArgs {
  PoolShape s; const T* x; const int64_t* row_begin; const int64_t* row_end;
  const int64_t* col_begin; const int64_t* col_end; T* y; int32_t* index;
};

// Backward of both max poolings: dx = 0, then dx[plane][index[o]] += dy[o].
// The CPU runs output order, one thread per plane (deterministic, overlapping
// windows add); the GPU adds atomically (overlapping windows then add in any
// order, as in PyTorch's CUDA max pooling; disjoint windows are exact).
//   dy and index (N, C, OH, OW), dx (N, C, H, W). Only n, c, h, w, oh, ow are read.
template <class T>
struct MaxPool2dBackwardArgs {
  PoolShape s; const T* dy; const int32_t* index; T* dx;
};

// y = sum of each window / divisor (ops/pool.h avg_pool_divisor).
//   x (N, C, H, W), y (N, C, OH, OW).
template <class T>
struct AvgPool2dForwardArgs {
  PoolShape s; const T* x; T* y; bool count_include_pad;
};

// dx[i] = sum over the windows holding i of dy[o] / divisor(o).
//   dy (N, C, OH, OW), dx (N, C, H, W).
template <class T>
struct AvgPool2dBackwardArgs {
  PoolShape s; const T* dy; T* dx; bool count_include_pad;
};

// Global average pooling: y[n, c] = mean of plane (n, c) of x; backward
// dx[n, c, :, :] = dy[n, c] / (H W). x and dx (N, C, H, W), y and dy (N, C).
// Only n, c, h, w of the shape are read.
template <class T>
struct GlobalAvgPool2dForwardArgs {
  PoolShape s; const T* x; T* y;
};

template <class T>
struct GlobalAvgPool2dBackwardArgs {
  PoolShape s; const T* dy; T* dx;
};

// Every CPU kernel: X(name, argument structure).
#define FASTNN_CPU_KERNELS(X)                  \
  X(gemm, GemmArgs)                            \
  X(linear_act_forward, LinearActForwardArgs)  \
  X(linear_act_backward, LinearActBackwardArgs) \
  X(act_forward, ActForwardArgs)               \
  X(act_backward, ActBackwardArgs)             \
  X(softmax_xent_forward, SoftmaxXentForwardArgs) \
  X(softmax_xent_backward, SoftmaxXentBackwardArgs) \
  X(optim_step, OptimStepArgs)                 \
  X(batchnorm_forward, BatchNormForwardArgs)   \
  X(batchnorm_backward, BatchNormBackwardArgs) \
  X(batchnorm_stats, BatchNormStatsArgs)       \
  X(batchnorm_gather_stats, BatchNormGatherStatsArgs) \
  X(batchnorm_elemt, BatchNormElemtArgs)       \
  X(batchnorm_backward_reduce, BatchNormBackwardReduceArgs) \
  X(batchnorm_backward_elemt, BatchNormBackwardElemtArgs) \
  X(dropout, DropoutArgs)                      \
  X(stream_triad, StreamTriadArgs)             \
  X(max_norm, MaxNormArgs)                     \
  X(conv2d_forward, Conv2dForwardArgs)         \
  X(conv2d_backward, Conv2dBackwardArgs)       \
  X(max_pool2d_forward, MaxPool2dForwardArgs)   \
  X(max_pool2d_regions_forward, MaxPool2dRegionsForwardArgs) \
  X(max_pool2d_backward, MaxPool2dBackwardArgs) \
  X(avg_pool2d_forward, AvgPool2dForwardArgs)   \
  X(avg_pool2d_backward, AvgPool2dBackwardArgs) \
  X(global_avg_pool2d_forward, GlobalAvgPool2dForwardArgs) \
  X(global_avg_pool2d_backward, GlobalAvgPool2dBackwardArgs)

#define FASTNN_DECLARE(name, Args) template <class T> void name(const Args<T>& args);
FASTNN_CPU_KERNELS(FASTNN_DECLARE)
#undef FASTNN_DECLARE

// Which CPU code path the dispatcher chose: "avx512", "avx2" or "generic".
const char* cpu_isa();
// Force a code path (for tests and benchmarks); returns false if unsupported here.
bool set_cpu_isa(const char* name);
// Code paths this processor can run, best first.
const char* cpu_isas_supported();

// 3x3 stride-1 convolutions: 0 auto (Winograd F(2x2, 3x3) when C, F >= 16),
// 1 always im2col + GEMM, 2 Winograd wherever it applies (padding <= 2).
void set_conv_algorithm(int algo);
int get_conv_algorithm();
void set_num_threads(int n);
int get_num_threads();        // the configured count (set_num_threads, else OpenMP's default)
int effective_num_threads();  // what the next kernel uses: configured, capped by the cores other processes leave idle
void set_adaptive_threads(bool on);
bool adaptive_threads();

}  // namespace fastnn
