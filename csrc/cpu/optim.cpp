// Fused optimizer step on the CPU: one pass over the flat parameter buffer
// (param, grad, state read once, written once), segment by segment (parameter
// groups), each element updated by the rule in ops/optim.h.
#include "cpu/isa.h"
#include "ops/optim.h"

namespace fastnn::cpu::FASTNN_ISA {

template <Rule R, class T>
void optim_loop(const OptimStepArgs<T>& a) {
  const int nthreads = threads_for(a.n);
  for (int64_t s = 0; s < a.num_segments; ++s) {
    const OptimHyper<T> h = a.hyper[s];
    const int64_t b = a.seg_begin[s], e = a.seg_begin[s + 1];
    T* __restrict p = a.param;
    const T* __restrict g = a.grad;
    T* __restrict s1 = a.state1;
    T* __restrict s2 = a.state2;
    if (s1 && s2) {
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t i = b; i < e; ++i) optim_update<R>(p[i], g[i], s1[i], s2[i], h);
    } else if (s1) {
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t i = b; i < e; ++i) {
        T unused = T(0);
        optim_update<R>(p[i], g[i], s1[i], unused, h);
      }
    } else {
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t i = b; i < e; ++i) {
        T u1 = T(0), u2 = T(0);
        optim_update<R>(p[i], g[i], u1, u2, h);
      }
    }
  }
}

template <class T>
void optim_step(const OptimStepArgs<T>& a) {
  switch (a.rule) {
#define FASTNN_RULE_CASE(name) \
  case Rule::name: return optim_loop<Rule::name>(a);
    FASTNN_OPTIM_RULES(FASTNN_RULE_CASE)
#undef FASTNN_RULE_CASE
  }
}

template <class T>
void max_norm(const MaxNormArgs<T>& a) {
  const int nthreads = a.num > 1 ? num_threads() : 1;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(dynamic, 1)
  for (int64_t k = 0; k < a.num; ++k) {
    T* w = a.param + a.offset[k];
    const int64_t rows = a.rows[k], cols = a.cols[k];
    double* norm = static_cast<double*>(scratch(kWork, size_t(cols) * sizeof(double)));
    for (int64_t j = 0; j < cols; ++j) norm[j] = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      const T* row = w + i * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) norm[j] += double(row[j]) * double(row[j]);
    }
    for (int64_t j = 0; j < cols; ++j) {
      norm[j] = max_norm_scale(math::sqrt(norm[j]), a.max_norm[k]);
    }
    for (int64_t i = 0; i < rows; ++i) {
      T* row = w + i * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) row[j] = T(double(row[j]) * norm[j]);
    }
  }
}

template void max_norm<float>(const MaxNormArgs<float>&);
template void max_norm<double>(const MaxNormArgs<double>&);
template void optim_step<float>(const OptimStepArgs<float>&);
template void optim_step<double>(const OptimStepArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
