// Batch normalization (Ioffe & Szegedy 2015) with PyTorch's conventions, the
// one home of its math for CPU and CUDA.
//
// Shapes: x, y (N, C, S), S = H*W (S = 1 for BatchNorm1d on (N, C)); per
// channel c the m = N*S values are normalized together. gamma, beta,
// running_mean, running_var, save_mean, save_invstd are (C,).
//   train:  mean, var = batch mean and BIASED variance of x[:, c, :]
//           y = act((x - mean) * invstd * gamma + beta),  invstd = 1/sqrt(var + eps)
//           running_mean = (1 - momentum) running_mean + momentum mean
//           running_var  = (1 - momentum) running_var  + momentum var * m/(m-1)  (UNBIASED)
//   eval:   the same with mean = running_mean, var = running_var, nothing updated.
//   backward (train), dz = dy * act'(y), xhat = (x - mean) * invstd:
//           dbeta = sum dz,  dgamma = sum dz * xhat
//           dx = gamma * invstd * (dz - dbeta/m - xhat * dgamma/m)
//   backward (eval): dx = gamma * invstd * dz.
// Statistics are accumulated in double as sums shifted by one sample of the
// channel (the "shifted data" algorithm), so data with a large mean (1e4 with
// unit spread) keeps full precision in a single pass. The mean is then kept as
// a pair hi + lo of T values (hi = T(mean), lo = T(mean - hi)) and centering is
// (x - hi) - lo: for x near the mean the first subtraction is exact (Sterbenz),
// so a float32 mean of 1e4 (ulp 1e-3) costs no precision in x - mean.
#pragma once

#include "common.h"

namespace fastnn {

struct BatchNormMoments {
  double sum = 0.0;    // sum (x - shift)
  double sumsq = 0.0;  // sum (x - shift)^2
};

// mean (as hi + lo) and biased variance of a channel from its shifted sums.
template <class T>
FASTNN_HD void batchnorm_mean_var(const BatchNormMoments& s, double count, T shift, T& mean_hi, T& mean_lo,
                                  T& var) {
  double m = s.sum / count;
  double v = s.sumsq / count - m * m;
  // TwoSum: mean + err is shift + m exactly, so a float64 mean keeps the bits
  // the double addition rounds away (data around 1e9 with spread 1e-2).
  double a = double(shift), mean = a + m;
  double bb = mean - a;
  double err = (a - (mean - bb)) + (m - bb);
  mean_hi = T(mean);
  mean_lo = T((mean - double(mean_hi)) + err);
  var = T(v > 0.0 ? v : 0.0);
}

template <class T>
FASTNN_HD T batchnorm_center(T x, T mean_hi, T mean_lo) {
  return (x - mean_hi) - mean_lo;
}

template <class T>
FASTNN_HD T batchnorm_invstd(T var, T eps) {
  return T(1) / math::sqrt(var + eps);
}

template <class T>
FASTNN_HD void batchnorm_update_running(T& running_mean, T& running_var, T mean, T var_biased, double count,
                                        T momentum) {
  T unbiased = count > 1.0 ? T(double(var_biased) * count / (count - 1.0)) : var_biased;
  running_mean = (T(1) - momentum) * running_mean + momentum * mean;
  running_var = (T(1) - momentum) * running_var + momentum * unbiased;
}

// y before the activation: (x - mean) * (invstd * gamma) + beta. Centering
// comes first so a large mean does not cancel away precision.
template <class T>
FASTNN_HD T batchnorm_affine(T x, T mean_hi, T mean_lo, T scale, T beta) {
  return batchnorm_center(x, mean_hi, mean_lo) * scale + beta;
}

// dx for training mode from the channel's two reductions (sum_dz, sum_dz_xhat).
template <class T>
FASTNN_HD T batchnorm_dx(T dz, T xhat, T scale, T mean_dz, T mean_dz_xhat) {
  return scale * (dz - mean_dz - xhat * mean_dz_xhat);
}

}  // namespace fastnn
