// Batch normalization on the CPU (formulas: ops/batchnorm.h).
//
// Shapes: x, y, dy, dx (N, C, S); per-channel vectors (C,).
// Two layouts, two loop orders:
//   S == 1 (BatchNorm1d, (N, C)): channels are contiguous in a row, so the
//     reductions run over rows with SIMD across a block of channels, threads
//     taking channel blocks; the elementwise passes run over rows in parallel.
//   S > 1 (BatchNorm2d): a channel is N contiguous runs of S values, so the
//     reductions run per channel with SIMD along S, threads taking channels.
// Passes: forward = 1 statistics pass + 1 normalize(+act) pass; backward =
// 1 pass for the two reductions + 1 pass for dx. Each pass is also an entry
// point of its own (batchnorm_stats, _gather_stats, _elemt, _backward_reduce,
// _backward_elemt) for synchronized BatchNorm, which allreduces in the gaps.
// Reductions are in double and in a fixed order, so results do not depend on
// the thread count.
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_act.h"
#include "ops/epilogue.h"
#include "ops/batchnorm.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace {

constexpr int64_t kChannelBlock = 128;

// Per-channel sums of x - shift and (x - shift)^2 in double (batchnorm_stats).
template <class T>
void channel_moments(const BatchNormStatsArgs<T>& a) {
  const int64_t n = a.n, c = a.c, s = a.s;
  const T* shift = a.shift;
  if (s == 1) {
    const int64_t nblocks = (c + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for num_threads(threads_for(n * c)) schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t c0 = b * kChannelBlock, c1 = c0 + kChannelBlock < c ? c0 + kChannelBlock : c;
      double s1[kChannelBlock] = {}, s2[kChannelBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const T* row = a.x + i * c;
#pragma omp simd
        for (int64_t ch = c0; ch < c1; ++ch) {
          double d = double(row[ch] - shift[ch]);
          s1[ch - c0] += d;
          s2[ch - c0] += d * d;
        }
      }
      for (int64_t ch = c0; ch < c1; ++ch) {
        a.sum[ch] = s1[ch - c0];
        a.sumsq[ch] = s2[ch - c0];
      }
    }
  } else {
#pragma omp parallel for num_threads(threads_for(n * c * s)) schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      double s1 = 0.0, s2 = 0.0;
      const T k = shift[ch];
      for (int64_t i = 0; i < n; ++i) {
        const T* run = a.x + (i * c + ch) * s;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t j = 0; j < s; ++j) {
          double d = double(run[j] - k);
          s1 += d;
          s2 += d * d;
        }
      }
      a.sum[ch] = s1;
      a.sumsq[ch] = s2;
    }
  }
}

// Mean (hi + lo), invstd and the running statistics from the channel sums.
template <class T>
void gather_stats_impl(const BatchNormGatherStatsArgs<T>& a) {
  const int64_t c = a.c;
  for (int64_t ch = 0; ch < c; ++ch) {
    T var;
    batchnorm_mean_var(BatchNormMoments{a.sum[ch], a.sumsq[ch]}, a.count, a.shift[ch], a.save_mean[ch],
                       a.save_mean[c + ch], var);
    a.save_invstd[ch] = batchnorm_invstd(var, a.eps);
    if (a.running_mean && a.running_var)
      batchnorm_update_running(a.running_mean[ch], a.running_var[ch], T(a.save_mean[ch] + a.save_mean[c + ch]), var,
                               a.count, a.momentum);
  }
}

// The activations whose scalar form calls libm (sigmoid, tanh, elu, selu): the
// affine pass first, then their vector form over the row (simd::vec_run, the
// same formula as every other layer's), instead of one libm call per element.
template <class F>
constexpr bool kExpActivation = simd::VecAct<F>::kAvailable && !std::is_same_v<F, act::Identity> &&
                                !std::is_same_v<F, act::Relu> && !std::is_same_v<F, act::LeakyRelu> &&
                                !std::is_same_v<F, act::Prelu>;

template <class T, class F>
void activate_row(T* y, int64_t len, T alpha) {
  if constexpr (kExpActivation<F>) {
    using S = simd::Vec<T>;
    const auto va = S::set1(alpha);
    const T* const in[1] = {y};
    simd::vec_run<S>(len, y, in, [&](const T* const* p) {
      return simd::VecAct<F>::template forward<S>(S::load(p[0]), va);
    });
  }
}

template <class T, class F>
void normalize(const BatchNormElemtArgs<T>& a, const T* mean, const T* mean_lo, const T* scale, const T* beta) {
  const int64_t n = a.n, c = a.c, s = a.s;
  // The activation in the affine loop, or after it by activate_row.
  auto act = [&](T v) { return kExpActivation<F> ? v : F::forward(v, a.alpha); };
  if (s == 1) {
#pragma omp parallel for num_threads(threads_for(n * c)) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* x = a.x + i * c;
      T* y = a.y + i * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch)
        y[ch] = act(batchnorm_affine(x[ch], mean[ch], mean_lo[ch], scale[ch], beta[ch]));
      activate_row<T, F>(y, c, a.alpha);
    }
  } else {
#pragma omp parallel for num_threads(threads_for(n * c * s)) schedule(static)
    for (int64_t r = 0; r < n * c; ++r) {
      const int64_t ch = r % c;
      const T m = mean[ch], lo = mean_lo[ch], sc = scale[ch], b = beta[ch];
      const T* x = a.x + r * s;
      T* y = a.y + r * s;
#pragma omp simd
      for (int64_t j = 0; j < s; ++j) y[j] = act(batchnorm_affine(x[j], m, lo, sc, b));
      activate_row<T, F>(y, s, a.alpha);
    }
  }
}

// y from the saved mean and invstd; work holds 2 C values of T.
template <class T, class F>
void elemt_impl(const BatchNormElemtArgs<T>& a, T* work) {
  const int64_t c = a.c;
  T* scale = work;
  T* beta = work + c;
  for (int64_t ch = 0; ch < c; ++ch) {
    scale[ch] = a.save_invstd[ch] * (a.gamma ? a.gamma[ch] : T(1));
    beta[ch] = a.beta ? a.beta[ch] : T(0);
  }
  normalize<T, F>(a, a.save_mean, a.save_mean + c, scale, beta);
}

template <class T, class F>
void forward_impl(const BatchNormForwardArgs<T>& a) {
  const int64_t c = a.c;
  void* raw = scratch(kWork, size_t(2 * c) * sizeof(double) + size_t(3 * c) * sizeof(T));
  double* sum = static_cast<double*>(raw);
  double* sumsq = sum + c;
  T* shift = reinterpret_cast<T*>(sumsq + c);
  T* work = shift + c;
  if (a.training) {
    for (int64_t ch = 0; ch < c; ++ch) shift[ch] = a.x[ch * a.s];
    channel_moments(BatchNormStatsArgs<T>{a.n, c, a.s, a.x, shift, sum, sumsq});
    gather_stats_impl(BatchNormGatherStatsArgs<T>{c, sum, sumsq, double(a.n) * double(a.s), shift, a.running_mean,
                                                  a.running_var, a.save_mean, a.save_invstd, a.momentum, a.eps});
  } else {
    for (int64_t ch = 0; ch < c; ++ch) {
      a.save_mean[ch] = a.running_mean[ch];
      a.save_mean[c + ch] = T(0);
      a.save_invstd[ch] = batchnorm_invstd(a.running_var[ch], a.eps);
    }
  }
  elemt_impl<T, F>(BatchNormElemtArgs<T>{a.n, c, a.s, a.x, a.gamma, a.beta, a.save_mean, a.save_invstd, a.y, a.act,
                                         a.alpha},
                   work);
}

// sum dz and sum dz * xhat per channel, dz = dy * act'(y) (batchnorm_backward_reduce).
template <class T, class F>
void backward_reduce_impl(const BatchNormBackwardReduceArgs<T>& a) {
  const int64_t n = a.n, c = a.c, s = a.s;
  const T* yy = F::kGradFromOutput && !std::is_same_v<F, act::Identity> ? a.y : a.dy;
  if (s == 1) {
    const int64_t nblocks = (c + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for num_threads(threads_for(n * c)) schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t c0 = b * kChannelBlock, c1 = c0 + kChannelBlock < c ? c0 + kChannelBlock : c;
      double s1[kChannelBlock] = {}, s2[kChannelBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const T* dy = a.dy + i * c;
        const T* x = a.x + i * c;
        const T* y = yy + i * c;
#pragma omp simd
        for (int64_t ch = c0; ch < c1; ++ch) {
          T dz = act_backward_epilogue<T, F>(dy[ch], T(0), y[ch], a.alpha);
          s1[ch - c0] += double(dz);
          s2[ch - c0] += double(dz) * double(batchnorm_center(x[ch], a.save_mean[ch], a.save_mean[c + ch]));
        }
      }
      for (int64_t ch = c0; ch < c1; ++ch) {
        a.sum_dz[ch] = s1[ch - c0];
        a.sum_dz_xhat[ch] = s2[ch - c0] * double(a.save_invstd[ch]);
      }
    }
  } else {
#pragma omp parallel for num_threads(threads_for(n * c * s)) schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
      double s1 = 0.0, s2 = 0.0;
      const T m = a.save_mean[ch], lo = a.save_mean[c + ch];
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = (i * c + ch) * s;
        const T* dy = a.dy + off;
        const T* x = a.x + off;
        const T* y = yy + off;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t j = 0; j < s; ++j) {
          T dz = act_backward_epilogue<T, F>(dy[j], T(0), y[j], a.alpha);
          s1 += double(dz);
          s2 += double(dz) * double(batchnorm_center(x[j], m, lo));
        }
      }
      a.sum_dz[ch] = s1;
      a.sum_dz_xhat[ch] = s2 * double(a.save_invstd[ch]);
    }
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    if (a.dbeta) a.dbeta[ch] = T(a.sum_dz[ch]);
    if (a.dgamma) a.dgamma[ch] = T(a.sum_dz_xhat[ch]);
  }
}

// dx from the channel means of dz and dz * xhat (null: eval form); work holds 4 C values of T.
template <class T, class F>
void backward_elemt_impl(const BatchNormBackwardElemtArgs<T>& a, T* work) {
  const int64_t n = a.n, c = a.c, s = a.s;
  const T* yy = F::kGradFromOutput && !std::is_same_v<F, act::Identity> ? a.y : a.dy;
  T* scale = work;
  T* mean_dz = scale + c;
  T* mean_dz_xhat = mean_dz + c;
  T* invstd = mean_dz_xhat + c;
  const bool training = a.mean_dz && a.mean_dz_xhat;
  for (int64_t ch = 0; ch < c; ++ch) {
    const T inv = a.save_invstd[ch];
    invstd[ch] = inv;
    scale[ch] = inv * (a.gamma ? a.gamma[ch] : T(1));
    mean_dz[ch] = training ? T(a.mean_dz[ch]) : T(0);
    mean_dz_xhat[ch] = training ? T(a.mean_dz_xhat[ch]) : T(0);
  }
  if (s == 1) {
#pragma omp parallel for num_threads(threads_for(n * c)) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* dy = a.dy + i * c;
      const T* x = a.x + i * c;
      const T* y = yy + i * c;
      T* dx = a.dx + i * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch) {
        T dz = act_backward_epilogue<T, F>(dy[ch], T(0), y[ch], a.alpha);
        T xhat = batchnorm_center(x[ch], a.save_mean[ch], a.save_mean[c + ch]) * invstd[ch];
        dx[ch] = batchnorm_dx(dz, xhat, scale[ch], mean_dz[ch], mean_dz_xhat[ch]);
      }
    }
  } else {
#pragma omp parallel for num_threads(threads_for(n * c * s)) schedule(static)
    for (int64_t r = 0; r < n * c; ++r) {
      const int64_t ch = r % c;
      const T m = a.save_mean[ch], lo = a.save_mean[c + ch], inv = invstd[ch], sc = scale[ch];
      const T mdz = mean_dz[ch], mdx = mean_dz_xhat[ch];
      const T* dy = a.dy + r * s;
      const T* x = a.x + r * s;
      const T* y = yy + r * s;
      T* dx = a.dx + r * s;
#pragma omp simd
      for (int64_t j = 0; j < s; ++j) {
        T dz = act_backward_epilogue<T, F>(dy[j], T(0), y[j], a.alpha);
        dx[j] = batchnorm_dx(dz, batchnorm_center(x[j], m, lo) * inv, sc, mdz, mdx);
      }
    }
  }
}

template <class T, class F>
void backward_impl(const BatchNormBackwardArgs<T>& a) {
  const int64_t n = a.n, c = a.c, s = a.s;
  const double count = double(n) * double(s);
  void* raw = scratch(kWork, size_t(4 * c) * sizeof(double) + size_t(4 * c) * sizeof(T));
  double* sum_dz = static_cast<double*>(raw);
  double* sum_dz_xhat = sum_dz + c;
  double* mean_dz = sum_dz_xhat + c;
  double* mean_dz_xhat = mean_dz + c;
  T* work = reinterpret_cast<T*>(mean_dz_xhat + c);
  backward_reduce_impl<T, F>(BatchNormBackwardReduceArgs<T>{n, c, s, a.dy, a.x, a.y, a.save_mean, a.save_invstd,
                                                            sum_dz, sum_dz_xhat, a.dgamma, a.dbeta, a.act,
                                                            a.alpha});
  if (!a.dx) return;
  for (int64_t ch = 0; ch < c; ++ch) {
    mean_dz[ch] = sum_dz[ch] / count;
    mean_dz_xhat[ch] = sum_dz_xhat[ch] / count;
  }
  backward_elemt_impl<T, F>(BatchNormBackwardElemtArgs<T>{n, c, s, a.dy, a.x, a.y, a.gamma, a.save_mean,
                                                          a.save_invstd, a.training ? mean_dz : nullptr,
                                                          a.training ? mean_dz_xhat : nullptr, a.dx, a.act,
                                                          a.alpha},
                            work);
}

}  // namespace

template <class T>
void batchnorm_forward(const BatchNormForwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput) forward_impl<T, F>(a);
  });
}

template <class T>
void batchnorm_backward(const BatchNormBackwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput) backward_impl<T, F>(a);
  });
}

template <class T>
void batchnorm_stats(const BatchNormStatsArgs<T>& a) {
  channel_moments(a);
}

template <class T>
void batchnorm_gather_stats(const BatchNormGatherStatsArgs<T>& a) {
  gather_stats_impl(a);
}

template <class T>
void batchnorm_elemt(const BatchNormElemtArgs<T>& a) {
  T* work = static_cast<T*>(scratch(kWork, size_t(2 * a.c) * sizeof(T)));
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput) elemt_impl<T, F>(a, work);
  });
}

template <class T>
void batchnorm_backward_reduce(const BatchNormBackwardReduceArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput) backward_reduce_impl<T, F>(a);
  });
}

template <class T>
void batchnorm_backward_elemt(const BatchNormBackwardElemtArgs<T>& a) {
  T* work = static_cast<T*>(scratch(kWork, size_t(4 * a.c) * sizeof(T)));
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (F::kGradFromOutput) backward_elemt_impl<T, F>(a, work);
  });
}

template void batchnorm_forward<float>(const BatchNormForwardArgs<float>&);
template void batchnorm_forward<double>(const BatchNormForwardArgs<double>&);
template void batchnorm_backward<float>(const BatchNormBackwardArgs<float>&);
template void batchnorm_backward<double>(const BatchNormBackwardArgs<double>&);
#define FASTNN_BN_INSTANTIATE(name, Args) \
  template void name<float>(const Args<float>&); \
  template void name<double>(const Args<double>&);
FASTNN_BN_INSTANTIATE(batchnorm_stats, BatchNormStatsArgs)
FASTNN_BN_INSTANTIATE(batchnorm_gather_stats, BatchNormGatherStatsArgs)
FASTNN_BN_INSTANTIATE(batchnorm_elemt, BatchNormElemtArgs)
FASTNN_BN_INSTANTIATE(batchnorm_backward_reduce, BatchNormBackwardReduceArgs)
FASTNN_BN_INSTANTIATE(batchnorm_backward_elemt, BatchNormBackwardElemtArgs)
#undef FASTNN_BN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
