// The standalone activation layer on the CPU (an activation not fused into a
// GEMM or BatchNorm): y = act(x) and dx = dy * act'(x or y), n elements, and
// prelu's d loss / d alpha. The math is ops/activation.h; the backward
// epilogue ops/epilogue.h.
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/vec_act.h"
#include "ops/epilogue.h"

namespace fastnn::cpu::FASTNN_ISA {

// Elements per task of the vector loops: which elements take the vector form
// and which the scalar tail depends on the block, never on the thread count.
constexpr int64_t kVecBlock = 4096;

// out[i] = vec(i) for the whole vectors of each block, scalar(i) for the rest.
template <class T, class VecFn, class ScalarFn>
void elementwise(int64_t n, T* out, VecFn vec, ScalarFn scalar) {
  using S = simd::Vec<T>;
  const int64_t nblocks = (n + kVecBlock - 1) / kVecBlock;
  const int nthreads = threads_for(n);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t i1 = (b + 1) * kVecBlock < n ? (b + 1) * kVecBlock : n;
    int64_t i = b * kVecBlock;
    for (; i + S::W <= i1; i += S::W) S::store(out + i, vec(i));
    for (; i < i1; ++i) out[i] = scalar(i);
  }
}

template <class T>
void act_forward(const ActForwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    if constexpr (simd::VecAct<F>::kAvailable) {
      using S = simd::Vec<T>;
      const auto va = S::set1(a.alpha);
      elementwise(
          a.n, a.y, [&](int64_t i) { return simd::VecAct<F>::template forward<S>(S::load(a.x + i), va); },
          [&](int64_t i) { return F::forward(a.x[i], a.alpha); });
    } else {
      const int nthreads = threads_for(a.n);
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t i = 0; i < a.n; ++i) a.y[i] = F::forward(a.x[i], a.alpha);
    }
  });
}

// prelu's d loss / d alpha is summed per fixed block of kReduceBlock elements
// (in order, in double), then over the blocks in order: the same bits at any
// thread count, and the same order as the Numba mirror.
constexpr int64_t kReduceBlock = 4096;

template <class T>
void act_backward(const ActBackwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    const int nthreads = threads_for(a.n);
    if constexpr (!std::is_same_v<F, act::Prelu>) {
      if constexpr (simd::VecAct<F>::kAvailable) {
        using S = simd::Vec<T>;
        const auto va = S::set1(a.alpha);
        elementwise(
            a.n, a.dx,
            [&](int64_t i) {
              return simd::VecAct<F>::template backward<S>(S::load(a.dy + i), S::load(a.x + i), S::load(a.y + i), va);
            },
            [&](int64_t i) { return act_backward_epilogue<T, F>(a.dy[i], a.x[i], a.y[i], a.alpha); });
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
        double sum = 0.0;
        for (int64_t i = b * kReduceBlock; i < end; ++i) {
          a.dx[i] = act_backward_epilogue<T, F>(a.dy[i], a.x[i], a.y[i], a.alpha);
          sum += double(a.dy[i] * act::Prelu::grad_alpha(a.x[i]));
        }
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
