// The standalone activation layer on the CPU (an activation not fused into a
// GEMM or BatchNorm): y = act(x) and dx = dy * act'(x or y), n elements, and
// prelu's d loss / d alpha. The math is ops/activation.h; the backward
// epilogue ops/epilogue.h.
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_act.h"
#include "ops/epilogue.h"

namespace fastnn::cpu::FASTNN_ISA {

// Elements per task of the vector loops (fixed, so the work split never
// depends on the thread count).
constexpr int64_t kVecBlock = 4096;

// out = f over n elements of the inputs `in`, in blocks of kVecBlock
// (simd::vec_run: the same vector formula for every element).
template <class T, int K, class Fn>
void elementwise(int64_t n, T* out, const T* const (&in)[K], Fn f) {
  using S = simd::Vec<T>;
  const int64_t nblocks = (n + kVecBlock - 1) / kVecBlock;
  const int nthreads = threads_for(n);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t i0 = b * kVecBlock, len = (b + 1) * kVecBlock < n ? kVecBlock : n - i0;
    const T* blk[K];
    for (int k = 0; k < K; ++k) blk[k] = in[k] + i0;
    simd::vec_run<S>(len, out + i0, blk, f);
  }
}

template <class T>
void act_forward(const ActForwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (simd::VecAct<F>::kAvailable) {
      using S = simd::Vec<T>;
      const auto va = S::set1(a.alpha);
      const T* const in[1] = {a.x};
      elementwise(a.n, a.y, in, [&](const T* const* p) {
        return simd::VecAct<F>::template forward<S>(S::load(p[0]), va);
      });
    } else {
      const int nthreads = threads_for(a.n);
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t i = 0; i < a.n; ++i) a.y[i] = F::forward(a.x[i], a.alpha);
    }
  });
}

// prelu's d loss / d alpha is summed per fixed block of kReduceBlock elements
// (in kLanes interleaved double lanes, then the lanes in order), then over the
// blocks in order: the same bits at any thread count, and the same order as the
// Numba mirror.
constexpr int64_t kReduceBlock = 4096;
constexpr int64_t kLanes = 256;

template <class T>
void act_backward(const ActBackwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    const int nthreads = threads_for(a.n);
    if constexpr (!std::is_same_v<F, act::Prelu>) {
      if constexpr (simd::VecAct<F>::kAvailable) {
        using S = simd::Vec<T>;
        const auto va = S::set1(a.alpha);
        const T* const in[3] = {a.dy, a.x, a.y};
        elementwise(a.n, a.dx, in, [&](const T* const* p) {
          return simd::VecAct<F>::template backward<S>(S::load(p[0]), S::load(p[1]), S::load(p[2]), va);
        });
      } else {
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
        for (int64_t i = 0; i < a.n; ++i) a.dx[i] = act_backward_epilogue<T, F>(a.dy[i], a.x[i], a.y[i], a.alpha);
      }
      if (a.dalpha) *a.dalpha = T(0);
    } else {
      const int64_t nblocks = (a.n + kReduceBlock - 1) / kReduceBlock;
      double* parts = static_cast<double*>(scratch(kWork, size_t(nblocks > 0 ? nblocks : 1) * sizeof(double)));
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t end = (b + 1) * kReduceBlock < a.n ? (b + 1) * kReduceBlock : a.n;
        const int64_t begin = b * kReduceBlock;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) a.dx[i] = act_backward_epilogue<T, F>(a.dy[i], a.x[i], a.y[i], a.alpha);
        // Element i adds into lane (i - begin) % kLanes, the lanes summed in
        // order: independent chains (one running double sum was a chain of
        // dependent adds: the PReLU layer's backward ran 8.9 ms fwd+bwd at
        // (64, 32, 32, 32), now 1.6), and the same order as the Numba mirror,
        // whose loop of kLanes vectorizes too.
        double lanes[kLanes] = {};
        for (int64_t j0 = begin; j0 < end; j0 += kLanes) {
          const int64_t len = end - j0 < kLanes ? end - j0 : kLanes;
          // dy * grad_alpha(x) written as a select of two products: with the
          // product feeding the add directly, -ffp-contract=fast fused them into
          // one FMA for double on the FMA paths (not on generic x86-64, not in
          // Numba), and the sums differed in the last bit.
#pragma omp simd
          for (int64_t j = 0; j < len; ++j) {
            const T dy = a.dy[j0 + j], z = a.x[j0 + j];
            lanes[j] += double(z > T(0) ? dy * T(0) : dy * z);
          }
        }
        double sum = 0.0;
        for (int l = 0; l < kLanes; ++l) sum += lanes[l];
        parts[b] = sum;
      }
      double total = 0.0;
      for (int64_t b = 0; b < nblocks; ++b) total += parts[b];
      if (a.dalpha) *a.dalpha = T(total);
    }
  });
}

template void act_forward<float>(const ActForwardArgs<float>&);
template void act_forward<double>(const ActForwardArgs<double>&);
template void act_backward<float>(const ActBackwardArgs<float>&);
template void act_backward<double>(const ActBackwardArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
