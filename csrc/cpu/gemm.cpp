// GEMM and the fused Linear + bias + activation layer on the CPU.
//
// Shapes: x (N, D), weight (D, M), bias (M,), y/z/dy/dz (N, M), dx (N, D).
//   forward   y = act(x @ weight + bias)      one GEMM, bias+act in its epilogue
//   backward  dz = dy * act'(z or y), dbias = sum_rows dz   one fused pass
//             dweight = x^T @ dz,  dx = dz @ weight^T        GEMMs on strided views
// The math of each activation lives in ops/activation.h; the loops are here.
#include <type_traits>

#include "cpu/gemm_engine.h"

namespace fastnn::cpu::FASTNN_ISA {

template <class T>
void gemm(const GemmArgs<T>& g) {
  gemm_engine(g, NoEpilogue{});
}

template <class T>
void linear_act_forward(const LinearActForwardArgs<T>& a) {
  const GemmArgs<T> g{a.n, a.m, a.d, a.x, a.d, 1, a.weight, a.m, 1, a.y, a.m, T(0)};
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    gemm_engine(g, BiasAct<T, F>{a.bias, a.z, a.m, a.alpha});
  });
}

// dz = dy * act'(.) and dbias = column sums of dz, in one pass over (N, M).
// Threads split the columns, so each dbias entry is summed by one thread in
// row order: the result does not depend on the thread count.
template <class T, class F>
void activation_backward_dz(const LinearActBackwardArgs<T>& a) {
  const int64_t n = a.n, m = a.m;
  constexpr int64_t kColBlock = 256;
  const int64_t nblocks = (m + kColBlock - 1) / kColBlock;
  const int nthreads = n * m < 32768 ? 1 : num_threads();
  double dalpha = 0.0;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static) reduction(+ : dalpha)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t j0 = blk * kColBlock;
    const int64_t j1 = j0 + kColBlock < m ? j0 + kColBlock : m;
    alignas(64) T colsum[kColBlock];
    for (int64_t j = 0; j < j1 - j0; ++j) colsum[j] = T(0);
    T alpha_sum = T(0);
    for (int64_t i = 0; i < n; ++i) {
      const T* dy = a.dy + i * m;
      const T* y = a.y + i * m;
      const T* z = F::kGradFromOutput ? y : a.z + i * m;
      T* dz = a.dz_work + i * m;
      for (int64_t j = j0; j < j1; ++j) {
        T d = dy[j] * F::grad(z[j], y[j], a.alpha);
        dz[j] = d;
        colsum[j - j0] += d;
      }
      if constexpr (std::is_same_v<F, act::Prelu>) {
        for (int64_t j = j0; j < j1; ++j) alpha_sum += dy[j] * act::Prelu::grad_alpha(z[j]);
      }
    }
    if (a.dbias)
      for (int64_t j = j0; j < j1; ++j) a.dbias[j] = colsum[j - j0];
    dalpha += double(alpha_sum);
  }
  if (a.dalpha) *a.dalpha = T(dalpha);
}

template <class T>
void linear_act_backward(const LinearActBackwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) { activation_backward_dz<T, decltype(f)>(a); });
  // dweight (D, M) = x^T (D, N) @ dz (N, M)
  gemm_engine(GemmArgs<T>{a.d, a.m, a.n, a.x, 1, a.d, a.dz_work, a.m, 1, a.dweight, a.m, T(0)},
              NoEpilogue{});
  // dx (N, D) = dz (N, M) @ weight^T (M, D)
  if (a.dx)
    gemm_engine(GemmArgs<T>{a.n, a.d, a.m, a.dz_work, a.m, 1, a.weight, 1, a.m, a.dx, a.d, T(0)},
                NoEpilogue{});
}

template <class T>
void act_forward(const ActForwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    const int nthreads = a.n < 65536 ? 1 : num_threads();
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
    for (int64_t i = 0; i < a.n; ++i) a.y[i] = F::forward(a.x[i], a.alpha);
  });
}

template <class T>
void act_backward(const ActBackwardArgs<T>& a) {
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    const int nthreads = a.n < 65536 ? 1 : num_threads();
    double dalpha = 0.0;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static) reduction(+ : dalpha)
    for (int64_t i = 0; i < a.n; ++i) {
      a.dx[i] = a.dy[i] * F::grad(a.x[i], a.y[i], a.alpha);
      if constexpr (std::is_same_v<F, act::Prelu>) dalpha += double(a.dy[i] * act::Prelu::grad_alpha(a.x[i]));
    }
    if (a.dalpha) *a.dalpha = T(dalpha);
  });
}

#define FASTNN_INSTANTIATE(T)                                          \
  template void gemm<T>(const GemmArgs<T>&);                           \
  template void linear_act_forward<T>(const LinearActForwardArgs<T>&); \
  template void linear_act_backward<T>(const LinearActBackwardArgs<T>&); \
  template void act_forward<T>(const ActForwardArgs<T>&);              \
  template void act_backward<T>(const ActBackwardArgs<T>&);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
