// The standalone activation layer on the CPU (an activation not fused into a
// GEMM or BatchNorm): y = act(x) and dx = dy * act'(x or y), n elements, and
// prelu's d loss / d alpha. The math is ops/activation.h; the backward
// epilogue ops/epilogue.h.
#include <type_traits>

#include "cpu/isa.h"
#include "ops/epilogue.h"

namespace fastnn::cpu::FASTNN_ISA {

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
      a.dx[i] = act_backward_epilogue<T, F>(a.dy[i], a.x[i], a.y[i], a.alpha);
      if constexpr (std::is_same_v<F, act::Prelu>) dalpha += double(a.dy[i] * act::Prelu::grad_alpha(a.x[i]));
    }
    if (a.dalpha) *a.dalpha = T(dalpha);
  });
}

template void act_forward<float>(const ActForwardArgs<float>&);
template void act_forward<double>(const ActForwardArgs<double>&);
template void act_backward<float>(const ActBackwardArgs<float>&);
template void act_backward<double>(const ActBackwardArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
