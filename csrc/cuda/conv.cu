// 2-D convolution on the GPU as im2col + one cuBLASLt GEMM per chunk of images
// (Chellapilla et al. 2006; the Caffe formulation, as csrc/cpu/conv.cpp), with
// the bias + activation (ops/activation.h) applied by an epilogue kernel that
// also transposes the GEMM's (F, N, P) output into y's (N, F, P) layout.
//
// Shapes (kernels.h ConvShape): x (N, C, H, W), weight (F, C, KH, KW) viewed as
// (F, CKK), y/z/dy/dz (N, F, OH, OW) = (N, F, P). A chunk of NB images is
// processed at a time; its columns are (CKK, NB*P) with row r = (c, ki, kj) and
// column q = nl*P + p (nl the image within the chunk, p = (oh, ow)):
//   cols[r, q] = x[n0 + nl, c, oh*SH - PH + ki, ow*SW - PW + kj]   (0 outside)
//   forward   zt (F, NB*P) = W (F, CKK) @ cols                       GEMM
//             z[n, f, p] = zt[f, nl*P + p] + bias[f], y = act(z)     epilogue kernel
//   backward  dz = dy * act'(z or y) into dz_work (N, F, P); dbias[f] = sum_{n,p} dz,
//             dalpha = sum dy * Prelu::grad_alpha(z): per (channel, segment)
//             partials in double, then summed in segment order (deterministic)
//             dzt (F, NB*P) = dz of the chunk transposed               kernel
//             dweight (+)= dzt @ cols^T                               GEMM, beta 1 after chunk 0
//             dcols (CKK, NB*P) = W^T @ dzt                           GEMM
//             dx = col2im(dcols) as a gather: one thread per dx element sums, in
//             (ki, kj) order, the dcols entries whose output position reads it
//             (the CPU's scatter order per element; no atomics, deterministic).
// NB bounds the two scratch blocks (cols and zt/dzt) to about kScratchBudget bytes.
#include <type_traits>

#include "cuda/kernels.cuh"
#include "ops/epilogue.h"

namespace fastnn::cuda {
namespace {

constexpr int kThreads = 256;
#ifndef FASTNN_CUDA_CONV_SCRATCH_BYTES  // a test build shrinks it to exercise the chunking
#define FASTNN_CUDA_CONV_SCRATCH_BYTES (int64_t(512) << 20)
#endif
constexpr int64_t kScratchBudget = FASTNN_CUDA_CONV_SCRATCH_BYTES;

// Images per chunk: the columns and the transposed output of a chunk, (CKK + F)
// * NB * P elements, fit in kScratchBudget (at least one image).
template <class T>
int64_t chunk_images(const ConvShape& s) {
  const int64_t p = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  const int64_t per_image = (ckk + s.f) * p * int64_t(sizeof(T));
  int64_t nb = per_image > 0 ? kScratchBudget / per_image : s.n;
  if (nb < 1) nb = 1;
  return nb < s.n ? nb : s.n;
}

#define FASTNN_GRID_STRIDE(i, count)                                                     \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (count); \
       i += int64_t(blockDim.x) * gridDim.x)

// cols (CKK, nb*P) of images [n0, n0 + nb) of x.
template <class T>
__global__ void im2col_kernel(ConvShape s, const T* __restrict__ x, int64_t n0, int64_t nb, T* __restrict__ cols) {
  const int64_t p = s.oh * s.ow, ncols = nb * p, total = s.c * s.kh * s.kw * ncols;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t r = e / ncols, q = e - r * ncols;
    const int64_t nl = q / p, pp = q - nl * p;
    const int64_t oh = pp / s.ow, ow = pp - oh * s.ow;
    const int64_t c = r / (s.kh * s.kw), ki = (r / s.kw) % s.kh, kj = r % s.kw;
    const int64_t ih = oh * s.sh - s.ph + ki, iw = ow * s.sw - s.pw + kj;
    T v = T(0);
    if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) v = x[(((n0 + nl) * s.c + c) * s.h + ih) * s.w + iw];
    cols[e] = v;
  }
}

// y[n0 + nl, f, p] = act(zt[f, nl*P + p] + bias[f]) (z likewise, before act)
// for the nb images of the chunk; y and z point at image n0. One thread per
// output element in y's order, so the writes are coalesced.
template <class T, class ActF>
__global__ void forward_epilogue_kernel(const T* __restrict__ zt, const T* __restrict__ bias, T* __restrict__ y,
                                        T* __restrict__ z, int64_t f_count, int64_t p, int64_t nb, T alpha) {
  const int64_t fp = f_count * p, total = nb * fp, ld = nb * p;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t nl = e / fp, rem = e - nl * fp;
    const int64_t f = rem / p, pp = rem - f * p;
    const T acc = zt[f * ld + nl * p + pp];
    const T pre = bias ? acc + bias[f] : acc;
    if constexpr (!ActF::kGradFromOutput) {
      if (z) z[e] = pre;
    }
    y[e] = ActF::forward(pre, alpha);
  }
}

// Block (f, seg): dz = dy * act'(z or y) over its segment of the N*P positions
// of channel f, written to dz_work when kWriteDz; the block's sums of dz and
// of dy * d act / d alpha (prelu) in double to bias_part/alpha_part[f * segs + seg].
template <class T, class ActF, bool kWriteDz>
__global__ void dz_partial_kernel(Conv2dBackwardArgs<T> a, int segs, double* __restrict__ bias_part,
                                  double* __restrict__ alpha_part) {
  const ConvShape& s = a.s;
  const int64_t f = blockIdx.x, seg = blockIdx.y, p = s.oh * s.ow, np = s.n * p;
  const int64_t begin = np * seg / segs, end = np * (seg + 1) / segs;
  double bsum = 0.0, asum = 0.0;
  for (int64_t j = begin + threadIdx.x; j < end; j += blockDim.x) {
    const int64_t n = j / p, pp = j - n * p;
    const int64_t off = (n * s.f + f) * p + pp;
    const T dy = a.dy[off];
    const T y = a.y[off];
    const T z = ActF::kGradFromOutput ? y : a.z[off];
    const T d = act_backward_epilogue<T, ActF>(dy, z, y, a.alpha);
    if constexpr (kWriteDz) a.dz_work[off] = d;
    bsum += double(d);
    if constexpr (std::is_same_v<ActF, act::Prelu>) asum += double(dy * act::Prelu::grad_alpha(z));
  }
  __shared__ double sb[kThreads], sa[kThreads];
  sb[threadIdx.x] = bsum;
  sa[threadIdx.x] = asum;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) {
      sb[threadIdx.x] += sb[threadIdx.x + half];
      sa[threadIdx.x] += sa[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    bias_part[f * segs + seg] = sb[0];
    alpha_part[f * segs + seg] = sa[0];
  }
}

// dbias[f] = sum of its segments in order; dalpha = sum of all alpha partials
// (fixed strided order, then a fixed tree). One block of kThreads.
template <class T>
__global__ void dz_finalize_kernel(int64_t f_count, int segs, const double* __restrict__ bias_part,
                                   const double* __restrict__ alpha_part, T* __restrict__ dbias, T* __restrict__ dalpha) {
  if (dbias)
    for (int64_t f = threadIdx.x; f < f_count; f += blockDim.x) {
      double acc = 0.0;
      for (int g = 0; g < segs; ++g) acc += bias_part[f * segs + g];
      dbias[f] = T(acc);
    }
  if (!dalpha) return;  // uniform across the block: no thread skips the barriers below alone
  __shared__ double sa[kThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < f_count * segs; i += blockDim.x) acc += alpha_part[i];
  sa[threadIdx.x] = acc;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sa[threadIdx.x] += sa[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *dalpha = T(sa[0]);
}

// dzt (F, nb*P) = dz (N, F, P) of images [n0, n0 + nb), transposed per channel.
template <class T>
__global__ void transpose_dz_kernel(const T* __restrict__ dz, int64_t n0, int64_t nb, int64_t f_count, int64_t p,
                                    T* __restrict__ dzt) {
  const int64_t ld = nb * p, total = f_count * ld;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t f = e / ld, q = e - f * ld;
    const int64_t nl = q / p, pp = q - nl * p;
    dzt[e] = dz[((n0 + nl) * f_count + f) * p + pp];
  }
}

// dx[n0 + nl, c, ih, iw] = sum over (ki, kj), in that order, of dcols[(c, ki, kj),
// nl*P + oh*OW + ow] for the output position (oh, ow) that reads (ih, iw)
// through (ki, kj), if any: the gather form of col2im.
template <class T>
__global__ void col2im_kernel(ConvShape s, const T* __restrict__ dcols, int64_t n0, int64_t nb, T* __restrict__ dx) {
  const int64_t p = s.oh * s.ow, ld = nb * p, hw = s.h * s.w, chw = s.c * hw, total = nb * chw;
  FASTNN_GRID_STRIDE(e, total) {
    const int64_t nl = e / chw, rem = e - nl * chw;
    const int64_t c = rem / hw, pix = rem - c * hw;
    const int64_t ih = pix / s.w, iw = pix - ih * s.w;
    T acc = T(0);
    for (int64_t ki = 0; ki < s.kh; ++ki) {
      const int64_t th = ih + s.ph - ki;  // = oh * SH
      if (th < 0 || th % s.sh != 0) continue;
      const int64_t oh = th / s.sh;
      if (oh >= s.oh) continue;
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const int64_t tw = iw + s.pw - kj;  // = ow * SW
        if (tw < 0 || tw % s.sw != 0) continue;
        const int64_t ow = tw / s.sw;
        if (ow >= s.ow) continue;
        acc += dcols[((c * s.kh + ki) * s.kw + kj) * ld + nl * p + oh * s.ow + ow];
      }
    }
    dx[n0 * chw + e] = acc;
  }
}

#undef FASTNN_GRID_STRIDE

}  // namespace

template <class T>
void conv2d_forward(const Conv2dForwardArgs<T>& a, cudaStream_t stream) {
  const ConvShape& s = a.s;
  const int64_t p = s.oh * s.ow, ckk = s.c * s.kh * s.kw;
  if (s.n <= 0 || p <= 0 || s.f <= 0) return;
  const int64_t nb_max = chunk_images<T>(s);
  Scratch<T> cols(ckk * nb_max * p, stream, "conv2d_forward (columns)");
  Scratch<T> zt(s.f * nb_max * p, stream, "conv2d_forward (GEMM output)");
  const bool save_z = act_saves_preactivation(a.act) && a.z;
  for (int64_t n0 = 0; n0 < s.n; n0 += nb_max) {
    const int64_t nb = n0 + nb_max < s.n ? nb_max : s.n - n0, ncols = nb * p;
    im2col_kernel<T><<<grid_for(ckk * ncols, kThreads), kThreads, 0, stream>>>(s, a.x, n0, nb, cols.get());
    check_launch("conv2d_forward (im2col)");
    // zt (F, nb*P) = W (F, CKK) @ cols (CKK, nb*P)
    (void)gemm_rm<T>(stream, false, false, s.f, ncols, ckk, a.weight, ckk, cols.get(), ncols, T(0), zt.get(), ncols);
    T* y = a.y + n0 * s.f * p;
    T* z = save_z ? a.z + n0 * s.f * p : nullptr;
    visit_act(a.act, [&](auto f) {
      forward_epilogue_kernel<T, decltype(f)><<<grid_for(s.f * ncols, kThreads), kThreads, 0, stream>>>(
          zt.get(), a.bias, y, z, s.f, p, nb, a.alpha);
    });
    check_launch("conv2d_forward (bias + activation)");
  }
}

template <class T>
void conv2d_backward(const Conv2dBackwardArgs<T>& a, cudaStream_t stream) {
  const ConvShape& s = a.s;
  const int64_t p = s.oh * s.ow, ckk = s.c * s.kh * s.kw, np = s.n * p;
  const bool identity = a.act == Act::identity;
  // dz (into dz_work unless identity: dz is dy), dbias, dalpha.
  if (!identity || a.dbias || a.dalpha) {
    int64_t want = (np + kThreads * 16 - 1) / (kThreads * 16);  // a shape-only split: the same sums every run
    const int segs = int(want < 1 ? 1 : (want > 64 ? 64 : want));
    Scratch<double> parts(2 * s.f * segs, stream, "conv2d_backward (dbias partials)");
    double* bias_part = parts.get();
    double* alpha_part = parts.get() + s.f * segs;
    const dim3 grid(unsigned(s.f), unsigned(segs));
    visit_act(a.act, [&](auto f) {
      using F = decltype(f);
      if (identity)
        dz_partial_kernel<T, F, false><<<grid, kThreads, 0, stream>>>(a, segs, bias_part, alpha_part);
      else
        dz_partial_kernel<T, F, true><<<grid, kThreads, 0, stream>>>(a, segs, bias_part, alpha_part);
    });
    check_launch("conv2d_backward (dz, dbias)");
    if (a.dbias || a.dalpha) {
      dz_finalize_kernel<T><<<1, kThreads, 0, stream>>>(s.f, segs, bias_part, alpha_part, a.dbias, a.dalpha);
      check_launch("conv2d_backward (dbias, dalpha)");
    }
  }
  const int64_t wsize = s.f * ckk;
  if (np <= 0) {  // no images: dweight is an empty sum (dx is empty too)
    check(cudaMemsetAsync(a.dweight, 0, size_t(wsize) * sizeof(T), stream), "conv2d_backward (dweight = 0)");
    return;
  }
  const T* dz = identity ? a.dy : a.dz_work;
  const int64_t nb_max = chunk_images<T>(s);
  Scratch<T> cols(ckk * nb_max * p, stream, "conv2d_backward (columns)");
  Scratch<T> dzt(s.f * nb_max * p, stream, "conv2d_backward (transposed dz)");
  for (int64_t n0 = 0; n0 < s.n; n0 += nb_max) {
    const int64_t nb = n0 + nb_max < s.n ? nb_max : s.n - n0, ncols = nb * p;
    transpose_dz_kernel<T><<<grid_for(s.f * ncols, kThreads), kThreads, 0, stream>>>(dz, n0, nb, s.f, p, dzt.get());
    check_launch("conv2d_backward (transpose dz)");
    im2col_kernel<T><<<grid_for(ckk * ncols, kThreads), kThreads, 0, stream>>>(s, a.x, n0, nb, cols.get());
    check_launch("conv2d_backward (im2col)");
    // dweight (F, CKK) (+)= dzt (F, nb*P) @ cols^T, cols stored (CKK, nb*P)
    (void)gemm_rm<T>(stream, false, true, s.f, ckk, ncols, dzt.get(), ncols, cols.get(), ncols,
                     n0 > 0 ? T(1) : T(0), a.dweight, ckk);
    if (!a.dx) continue;
    // dcols (CKK, nb*P) = W^T @ dzt, W stored (F, CKK); overwrites the columns (stream order)
    (void)gemm_rm<T>(stream, true, false, ckk, ncols, s.f, a.weight, ckk, dzt.get(), ncols, T(0), cols.get(), ncols);
    col2im_kernel<T><<<grid_for(nb * s.c * s.h * s.w, kThreads), kThreads, 0, stream>>>(s, cols.get(), n0, nb, a.dx);
    check_launch("conv2d_backward (col2im)");
  }
}

template void conv2d_forward<float>(const Conv2dForwardArgs<float>&, cudaStream_t);
template void conv2d_forward<double>(const Conv2dForwardArgs<double>&, cudaStream_t);
template void conv2d_backward<float>(const Conv2dBackwardArgs<float>&, cudaStream_t);
template void conv2d_backward<double>(const Conv2dBackwardArgs<double>&, cudaStream_t);

}  // namespace fastnn::cuda
