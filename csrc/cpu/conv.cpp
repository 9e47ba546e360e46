// 2-D convolution on the CPU as im2col + GEMM (Chellapilla et al. 2006, "High
// Performance Convolutional Neural Networks for Document Processing"; the
// Caffe/PyTorch-CPU formulation), with the bias + activation fused into the
// GEMM epilogue.
//
// Shapes (kernels.h ConvShape): x (N, C, H, W), weight (F, C, KH, KW) viewed as
// (F, CKK), y/z/dy/dz (N, F, OH, OW) viewed per image as (F, P), columns of one
// image (CKK, P) with row r = (c, ki, kj) and column p = (oh, ow):
//   cols[r, p] = x[c, oh*SH - PH + ki, ow*SW - PW + kj]   (0 outside the image)
//   forward   y_n = act(W @ cols_n + bias)           GEMM, BiasAct epilogue (bias per row)
//   backward  dz = dy * act'(z or y), dbias = sum_{n,p} dz
//             dweight += dz_n @ cols_n^T              (cols_n rebuilt, not stored)
//             dx_n = col2im(W^T @ dz_n)               (scatter-add back into x's layout)
// A 1x1, stride-1, unpadded convolution skips im2col: cols_n is x_n itself.
//
// Threads: at least as many images as threads, or small images -> images are
// split among threads, each with its own column buffer, its own single-threaded
// GEMMs (a GEMM called inside the parallel region runs on its caller's thread:
// OpenMP nesting is off) and, in backward, its own dweight partial summed in
// thread order at the end. Fewer large images than threads -> one image at a
// time with im2col, col2im and the GEMM itself parallel. Either way the result
// does not depend on timing.
#include <omp.h>
#include <unistd.h>

#include <cstring>
#include <type_traits>

#include "cpu/conv_winograd.h"
#include "cpu/gemm_engine.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace {

int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Output columns ow whose input column ow*sw - pw + kj lies in [0, w): [ow0, ow1).
void valid_cols(const ConvShape& s, int64_t kj, int64_t* ow0, int64_t* ow1) {
  const int64_t lo = s.pw - kj;               // need ow*sw >= lo
  const int64_t hi = s.w - 1 + s.pw - kj;     // need ow*sw <= hi
  *ow0 = lo <= 0 ? 0 : clamp64((lo + s.sw - 1) / s.sw, 0, s.ow);
  *ow1 = hi < 0 ? 0 : clamp64(hi / s.sw + 1, 0, s.ow);
  if (*ow1 < *ow0) *ow1 = *ow0;
}

bool is_pointwise(const ConvShape& s) {
  return s.kh == 1 && s.kw == 1 && s.sh == 1 && s.sw == 1 && s.ph == 0 && s.pw == 0;
}

// Threads that split the batch (1: process images one by one, parallel inside).
// Splitting the batch costs one barrier per call; parallelizing inside an image
// costs several per image (im2col, each GEMM K block), and on a shared machine
// every barrier can wait a scheduler time slice for a descheduled worker. So
// the batch is split whenever there are at least as many images as threads.
int batch_threads(const ConvShape& s) {
  const int nt = num_threads();
  const double per_image = 2.0 * double(s.f) * double(s.c * s.kh * s.kw) * double(s.oh * s.ow);
  if (nt <= 1 || s.n < 2 || per_image * double(s.n) < 5e5) return 1;
  if (s.n >= int64_t(nt) || per_image < 4e6) return int(s.n < nt ? s.n : nt);
  return 1;
}

int inner_threads(int64_t work) { return threads_for(work); }

// Fixed groups of the batch whose weight gradients are summed separately (see conv2d_backward).
constexpr int64_t kWeightGradGroups = 8;

// Output rows per im2col chunk. Splitting the batch gives each thread its own
// single-threaded GEMMs, whose packed B is the whole column block: kept to half
// the L2 (rows of OW columns) so it and its packed copy stay in that core's
// L2; otherwise two threads stream columns from the shared L3 and barely beat
// one. Smaller chunks cost more than they save: each chunk's GEMMs repack the
// weights, and the 16x16 layers of a CIFAR net (CKK = 576) then ran in three
// chunks per image at 256 KiB, with backward 6% slower than in one (2 MiB L2).
// A GEMM that is itself parallel gets the whole image in one chunk.
template <class T>
int64_t chunk_rows(const ConvShape& s, bool split_batch) {
  if (!split_batch) return s.oh;
  const int64_t ckk = s.c * s.kh * s.kw;
  const int64_t cols = conv_cache_budget() / (ckk * int64_t(sizeof(T)));
  const int64_t rows = cols / s.ow;
  return rows < 1 ? 1 : (rows > s.oh ? s.oh : rows);
}

// cols (CKK, (oh1 - oh0) * OW) of output rows [oh0, oh1) of one image x (C, H, W).
template <class T>
void im2col(const ConvShape& s, const T* x, T* cols, int64_t oh0, int64_t oh1, bool parallel) {
  const int64_t ckk = s.c * s.kh * s.kw, pc = (oh1 - oh0) * s.ow;
  const int nthreads = parallel ? inner_threads(ckk * pc) : 1;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t r = 0; r < ckk; ++r) {
    const int64_t c = r / (s.kh * s.kw), ki = (r / s.kw) % s.kh, kj = r % s.kw;
    int64_t ow0, ow1;
    valid_cols(s, kj, &ow0, &ow1);
    const T* xc = x + c * s.h * s.w;
    T* dst = cols + r * pc;
    for (int64_t oh = oh0; oh < oh1; ++oh, dst += s.ow) {
      const int64_t ih = oh * s.sh - s.ph + ki;
      if (ih < 0 || ih >= s.h) {
        for (int64_t ow = 0; ow < s.ow; ++ow) dst[ow] = T(0);
        continue;
      }
      const T* src = xc + ih * s.w + (kj - s.pw);  // src[ow*sw] = x[c, ih, ow*sw - pw + kj]
      for (int64_t ow = 0; ow < ow0; ++ow) dst[ow] = T(0);
      if (s.sw == 1) {
        std::memcpy(dst + ow0, src + ow0, size_t(ow1 - ow0) * sizeof(T));
      } else {
        for (int64_t ow = ow0; ow < ow1; ++ow) dst[ow] = src[ow * s.sw];
      }
      for (int64_t ow = ow1; ow < s.ow; ++ow) dst[ow] = T(0);
    }
  }
}

// dx (C, H, W) of one image += the scatter-add of cols (CKK, (oh1 - oh0) * OW);
// channels are independent, so threads take channels and never collide.
template <class T>
void col2im(const ConvShape& s, const T* cols, T* dx, int64_t oh0, int64_t oh1, bool parallel) {
  const int64_t pc = (oh1 - oh0) * s.ow, hw = s.h * s.w;
  const int nthreads = parallel ? inner_threads(s.c * s.kh * s.kw * pc) : 1;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t c = 0; c < s.c; ++c) {
    T* dxc = dx + c * hw;
    for (int64_t ki = 0; ki < s.kh; ++ki)
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        int64_t ow0, ow1;
        valid_cols(s, kj, &ow0, &ow1);
        const T* src = cols + ((c * s.kh + ki) * s.kw + kj) * pc;
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          const int64_t ih = oh * s.sh - s.ph + ki;
          if (ih < 0 || ih >= s.h) continue;
          T* drow = dxc + ih * s.w + (kj - s.pw);
          const T* srow = src + (oh - oh0) * s.ow;
          if (s.sw == 1) {
#pragma omp simd
            for (int64_t ow = ow0; ow < ow1; ++ow) drow[ow] += srow[ow];
          } else {
            for (int64_t ow = ow0; ow < ow1; ++ow) drow[ow * s.sw] += srow[ow];
          }
        }
      }
  }
}

// `ep` is the bias + activation epilogue with z unset (visit_bias_act); each
// GEMM gets a copy pointing at its own part of z.
template <class T, class Ep>
void forward_image(const Conv2dForwardArgs<T>& a, int64_t i, bool split_batch, const Ep& ep) {
  const ConvShape& s = a.s;
  const int64_t ckk = s.c * s.kh * s.kw, p = s.oh * s.ow;
  const T* xi = a.x + i * s.c * s.h * s.w;
  T* yi = a.y + i * s.f * p;
  T* zi = gemm_detail::saves_preactivation(ep) ? a.z + i * s.f * p : nullptr;
  auto at_z = [&](T* z) {
    Ep e = ep;
    e.z = z;
    return e;
  };
  if (is_pointwise(s)) {
    gemm_engine(GemmArgs<T>{s.f, p, ckk, a.weight, ckk, 1, xi, p, 1, yi, p, T(0)}, at_z(zi));
    return;
  }
  const int64_t rows = chunk_rows<T>(s, split_batch);
  T* cols = static_cast<T*>(scratch(kConvColumns, size_t(ckk * rows * s.ow) * sizeof(T)));
  for (int64_t oh0 = 0; oh0 < s.oh; oh0 += rows) {
    const int64_t oh1 = oh0 + rows < s.oh ? oh0 + rows : s.oh, off = oh0 * s.ow, pc = (oh1 - oh0) * s.ow;
    im2col(s, xi, cols, oh0, oh1, !split_batch);
    // y_i[:, off:off+pc] (ldc P) = W (F, CKK) @ cols (CKK, pc), bias + act in the epilogue
    gemm_engine(GemmArgs<T>{s.f, pc, ckk, a.weight, ckk, 1, cols, pc, 1, yi + off, p, T(0)},
                at_z(zi ? zi + off : nullptr));
  }
}

// dz = dy * act'(z or y) over (N, F, P); dbias[f] = sum over n, p, in a fixed
// order per channel (threads take channels).
template <class T, class F>
void conv_dz(const Conv2dBackwardArgs<T>& a) {
  const ConvShape& s = a.s;
  const int64_t p = s.oh * s.ow;
  const int nthreads = inner_threads(s.n * s.f * p);
  double dalpha = 0.0;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static) reduction(+ : dalpha)
  for (int64_t f = 0; f < s.f; ++f) {
    double bsum = 0.0, asum = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      const int64_t off = (n * s.f + f) * p;
      const T* dy = a.dy + off;
      T rsum = T(0);
      if constexpr (std::is_same_v<F, act::Identity>) {
#pragma omp simd reduction(+ : rsum)
        for (int64_t j = 0; j < p; ++j) rsum += dy[j];
      } else {
        const T* y = a.y + off;
        const T* z = F::kGradFromOutput ? y : a.z + off;
        T* dz = a.dz_work + off;
        // Lane-wise partial sums (the order is fixed by the vector width, not the
        // thread count), so the loop vectorizes: a serial running sum kept this
        // pass at a fraction of the memory bandwidth.
#pragma omp simd reduction(+ : rsum)
        for (int64_t j = 0; j < p; ++j) {
          T d = act_backward_epilogue<T, F>(dy[j], z[j], y[j], a.alpha);
          dz[j] = d;
          rsum += d;
        }
        if constexpr (std::is_same_v<F, act::Prelu>) {
          T r = T(0);
          for (int64_t j = 0; j < p; ++j) r += dy[j] * act::Prelu::grad_alpha(z[j]);
          asum += double(r);
        }
      }
      bsum += double(rsum);
    }
    if (a.dbias) a.dbias[f] = T(bsum);
    dalpha += asum;
  }
  if (a.dalpha) *a.dalpha = T(dalpha);
}

// dweight (+)= dz_i @ cols_i^T into dw; dx_i = col2im(W^T @ dz_i) when dx is asked for.
template <class T>
void backward_image(const Conv2dBackwardArgs<T>& a, const T* dz, int64_t i, T* dw, bool accumulate,
                    bool split_batch) {
  const ConvShape& s = a.s;
  const int64_t ckk = s.c * s.kh * s.kw, p = s.oh * s.ow;
  const T* xi = a.x + i * s.c * s.h * s.w;
  const T* dzi = dz + i * s.f * p;
  T* dxi = a.dx ? a.dx + i * s.c * s.h * s.w : nullptr;
  if (is_pointwise(s)) {  // cols_i = x_i, dx_i = W^T @ dz_i directly
    gemm_engine(GemmArgs<T>{s.f, ckk, p, dzi, p, 1, xi, 1, p, dw, ckk, accumulate ? T(1) : T(0)}, NoEpilogue{});
    if (dxi) gemm_engine(GemmArgs<T>{ckk, p, s.f, a.weight, 1, ckk, dzi, p, 1, dxi, p, T(0)}, NoEpilogue{});
    return;
  }
  // The K split of dw's sum (output rows per chunk) must not depend on how the
  // batch is threaded, or the bits of dw would: always the cache-sized chunks.
  const int64_t rows = chunk_rows<T>(s, true);
  T* cols = static_cast<T*>(scratch(kConvColumns, size_t(ckk * rows * s.ow) * sizeof(T)));
  if (dxi)
    for (int64_t e = 0; e < s.c * s.h * s.w; ++e) dxi[e] = T(0);
  for (int64_t oh0 = 0; oh0 < s.oh; oh0 += rows) {
    const int64_t oh1 = oh0 + rows < s.oh ? oh0 + rows : s.oh, off = oh0 * s.ow, pc = (oh1 - oh0) * s.ow;
    im2col(s, xi, cols, oh0, oh1, !split_batch);
    // dw (F, CKK) (+)= dz_i[:, off:off+pc] (F, pc) @ cols^T (pc, CKK)
    gemm_engine(GemmArgs<T>{s.f, ckk, pc, dzi + off, p, 1, cols, 1, pc, dw, ckk,
                            accumulate || oh0 > 0 ? T(1) : T(0)},
                NoEpilogue{});
    if (!dxi) continue;
    // dcols (CKK, pc) = W^T (CKK, F) @ dz_i[:, off:off+pc]; the columns buffer is free again.
    gemm_engine(GemmArgs<T>{ckk, pc, s.f, a.weight, 1, ckk, dzi + off, p, 1, cols, pc, T(0)}, NoEpilogue{});
    col2im(s, cols, dxi, oh0, oh1, !split_batch);
  }
}

}  // namespace

int64_t conv_cache_budget() {
  static const int64_t budget = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    const int64_t half = l2 > 0 ? int64_t(l2) / 2 : (int64_t(256) << 10);
    return clamp64(half, int64_t(256) << 10, int64_t(1) << 20);
  }();
  return budget;
}

template <class T>
void conv2d_forward(const Conv2dForwardArgs<T>& a) {
  const ConvShape& s = a.s;
  if (winograd_applies(s)) {
    winograd_forward(a);
    return;
  }
  const int64_t p = s.oh * s.ow;
  gemm_detail::visit_bias_act<T, BiasAxis::rows>(a.act, a.bias, static_cast<T*>(nullptr), p, a.alpha, [&](const auto& ep) {
    const int bt = batch_threads(s);
    if (bt > 1) {
      // Images are independent here, so a dynamic schedule costs nothing in
      // reproducibility and lets a thread whose core is busy with another
      // process fall behind without holding the rest back.
#pragma omp parallel for num_threads(bt) schedule(dynamic, 1)
      for (int64_t i = 0; i < s.n; ++i) forward_image(a, i, true, ep);
    } else {
      for (int64_t i = 0; i < s.n; ++i) forward_image(a, i, false, ep);
    }
  });
}

template <class T>
void conv2d_backward(const Conv2dBackwardArgs<T>& a) {
  const ConvShape& s = a.s;
  const int64_t wsize = s.f * s.c * s.kh * s.kw;
  const bool winograd = s.n > 0 && winograd_applies(s);
  if (winograd && a.act == Act::identity) {  // dz = dy; dbias comes out of the dweight transform
    winograd_backward(a, a.dy, s.n < kWeightGradGroups ? s.n : kWeightGradGroups, true);
    return;
  }
  visit_act(a.act, [&](auto f) { conv_dz<T, decltype(f)>(a); });
  const T* dz = a.act == Act::identity ? a.dy : a.dz_work;
  if (s.n == 0) {
    for (int64_t e = 0; e < wsize; ++e) a.dweight[e] = T(0);
    return;
  }
  if (winograd) {
    winograd_backward(a, dz, s.n < kWeightGradGroups ? s.n : kWeightGradGroups, false);
    return;
  }
  // dw is summed over images in kWeightGradGroups fixed groups of the batch,
  // each group into its own partial, the partials then added in group order:
  // the same bits at any thread count (threads only decide who computes which
  // group), so adaptive threading and set_num_threads never change a result.
  const int64_t groups = s.n < kWeightGradGroups ? s.n : kWeightGradGroups;
  T* partial = groups > 1 ? static_cast<T*>(scratch(kConvWeightGrad, size_t(groups * wsize) * sizeof(T)))
                          : a.dweight;
  const int bt = batch_threads(s);
  auto run_group = [&](int64_t g, bool split) {
    const int64_t i0 = s.n * g / groups, i1 = s.n * (g + 1) / groups;
    T* dw = partial + g * wsize;
    for (int64_t i = i0; i < i1; ++i) backward_image(a, dz, i, dw, i > i0, split);
  };
  if (bt > 1) {
#pragma omp parallel for num_threads(bt) schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) run_group(g, true);
  } else {
    for (int64_t g = 0; g < groups; ++g) run_group(g, false);
  }
  if (groups > 1) {
    const int st = inner_threads(groups * wsize);
#pragma omp parallel for num_threads(st) if (st > 1) schedule(static)
    for (int64_t e = 0; e < wsize; ++e) {
      T acc = partial[e];
      for (int64_t g = 1; g < groups; ++g) acc += partial[g * wsize + e];
      a.dweight[e] = acc;
    }
  }
}

#define FASTNN_INSTANTIATE(T)                                        \
  template void conv2d_forward<T>(const Conv2dForwardArgs<T>&);      \
  template void conv2d_backward<T>(const Conv2dBackwardArgs<T>&);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
