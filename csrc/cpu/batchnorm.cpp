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
// 1 pass for the two reductions + 1 pass for dx. Reductions are in double and
// in a fixed order, so results do not depend on the thread count.
#include <type_traits>

#include "cpu/isa.h"
#include "ops/epilogue.h"
#include "ops/batchnorm.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace {

constexpr int64_t kChannelBlock = 128;

// Per-channel moments of x shifted by the channel's first value.
template <class T>
void channel_moments(const BatchNormForwardArgs<T>& a, T* shift, BatchNormMoments* mom) {
  const int64_t n = a.n, c = a.c, s = a.s;
  for (int64_t ch = 0; ch < c; ++ch) shift[ch] = a.x[ch * s];
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
      for (int64_t ch = c0; ch < c1; ++ch) mom[ch] = {s1[ch - c0], s2[ch - c0]};
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
      mom[ch] = {s1, s2};
    }
  }
}

template <class T, class F>
void normalize(const BatchNormForwardArgs<T>& a, const T* mean, const T* mean_lo, const T* scale, const T* beta) {
  const int64_t n = a.n, c = a.c, s = a.s;
  if (s == 1) {
#pragma omp parallel for num_threads(threads_for(n * c)) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const T* x = a.x + i * c;
      T* y = a.y + i * c;
#pragma omp simd
      for (int64_t ch = 0; ch < c; ++ch)
        y[ch] = F::forward(batchnorm_affine(x[ch], mean[ch], mean_lo[ch], scale[ch], beta[ch]), a.alpha);
    }
  } else {
#pragma omp parallel for num_threads(threads_for(n * c * s)) schedule(static)
    for (int64_t r = 0; r < n * c; ++r) {
      const int64_t ch = r % c;
      const T m = mean[ch], lo = mean_lo[ch], sc = scale[ch], b = beta[ch];
      const T* x = a.x + r * s;
      T* y = a.y + r * s;
#pragma omp simd
      for (int64_t j = 0; j < s; ++j) y[j] = F::forward(batchnorm_affine(x[j], m, lo, sc, b), a.alpha);
    }
  }
}

template <class T, class F>
void forward_impl(const BatchNormForwardArgs<T>& a) {
  const int64_t c = a.c;
  const double count = double(a.n) * double(a.s);
  T* buf = static_cast<T*>(scratch(kWork, size_t(4 * c) * sizeof(T) + size_t(c) * sizeof(BatchNormMoments)));
  T* scale = buf;
  T* beta = buf + c;
  T* shift = buf + 2 * c;
  auto* mom = reinterpret_cast<BatchNormMoments*>(buf + 4 * c);
  T* mean = a.save_mean;
  T* mean_lo = a.save_mean + c;
  if (a.training) {
    channel_moments(a, shift, mom);
    for (int64_t ch = 0; ch < c; ++ch) {
      T var;
      batchnorm_mean_var(mom[ch], count, shift[ch], mean[ch], mean_lo[ch], var);
      a.save_invstd[ch] = batchnorm_invstd(var, a.eps);
      if (a.running_mean && a.running_var)
        batchnorm_update_running(a.running_mean[ch], a.running_var[ch], T(mean[ch] + mean_lo[ch]), var, count,
                                 a.momentum);
    }
  } else {
    for (int64_t ch = 0; ch < c; ++ch) {
      mean[ch] = a.running_mean[ch];
      mean_lo[ch] = T(0);
      a.save_invstd[ch] = batchnorm_invstd(a.running_var[ch], a.eps);
    }
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    scale[ch] = a.save_invstd[ch] * (a.gamma ? a.gamma[ch] : T(1));
    beta[ch] = a.beta ? a.beta[ch] : T(0);
  }
  normalize<T, F>(a, mean, mean_lo, scale, beta);
}

// sum dz and sum dz * (x - mean) per channel, dz = dy * act'(y).
template <class T, class F>
void backward_sums(const BatchNormBackwardArgs<T>& a, double* sum_dz, double* sum_dz_xc) {
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
        sum_dz[ch] = s1[ch - c0];
        sum_dz_xc[ch] = s2[ch - c0];
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
      sum_dz[ch] = s1;
      sum_dz_xc[ch] = s2;
    }
  }
}

template <class T, class F>
void backward_impl(const BatchNormBackwardArgs<T>& a) {
  const int64_t n = a.n, c = a.c, s = a.s;
  const double count = double(n) * double(s);
  const T* yy = F::kGradFromOutput && !std::is_same_v<F, act::Identity> ? a.y : a.dy;
  void* raw = scratch(kWork, size_t(2 * c) * sizeof(double) + size_t(4 * c) * sizeof(T));
  double* sum_dz = static_cast<double*>(raw);
  double* sum_dz_xc = sum_dz + c;
  T* scale = reinterpret_cast<T*>(sum_dz_xc + c);
  T* mean_dz = scale + c;
  T* mean_dz_xhat = mean_dz + c;
  T* invstd = mean_dz_xhat + c;
  backward_sums<T, F>(a, sum_dz, sum_dz_xc);
  for (int64_t ch = 0; ch < c; ++ch) {
    const T inv = a.save_invstd[ch];
    invstd[ch] = inv;
    scale[ch] = inv * (a.gamma ? a.gamma[ch] : T(1));
    if (a.dbeta) a.dbeta[ch] = T(sum_dz[ch]);
    if (a.dgamma) a.dgamma[ch] = T(sum_dz_xc[ch] * double(inv));
    mean_dz[ch] = a.training ? T(sum_dz[ch] / count) : T(0);
    mean_dz_xhat[ch] = a.training ? T(sum_dz_xc[ch] * double(inv) / count) : T(0);
  }
  if (!a.dx) return;
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

template void batchnorm_forward<float>(const BatchNormForwardArgs<float>&);
template void batchnorm_forward<double>(const BatchNormForwardArgs<double>&);
template void batchnorm_backward<float>(const BatchNormBackwardArgs<float>&);
template void batchnorm_backward<double>(const BatchNormBackwardArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
