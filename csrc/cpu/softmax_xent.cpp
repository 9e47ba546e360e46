// Softmax cross-entropy on the CPU: scores (N, C), labels (N,) or soft targets
// (N, C), probs (N, C). Forward saves probs; backward is (probs - target) * scale. Rows in parallel;
// the row losses are summed in double, in row order, after the parallel loop,
// so the loss does not depend on the thread count.
#include "cpu/isa.h"
#include "ops/softmax.h"

namespace fastnn::cpu::FASTNN_ISA {

template <class T>
void softmax_xent_forward(const SoftmaxXentForwardArgs<T>& a) {
  const int nthreads = threads_for(a.n * a.c);
  double* row_loss = static_cast<double*>(scratch(kWork, size_t(a.n > 0 ? a.n : 1) * sizeof(double)));
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t i = 0; i < a.n; ++i) {
    const T* s = a.scores + i * a.c;
    T* p = a.probs + i * a.c;
    T mx;
    row_loss[i] = a.labels    ? double(softmax_xent_row(s, a.c, a.labels[i], p))
                  : a.targets ? double(softmax_xent_soft_row(s, a.c, a.targets + i * a.c, p))
                              : (softmax_row(s, a.c, p, &mx), 0.0);
  }
  double total = 0.0;  // the rows in order: the same bits at any thread count
  for (int64_t i = 0; i < a.n; ++i) total += row_loss[i];
  *a.loss = a.n > 0 ? T(total / double(a.n)) : T(0);
}

template <class T>
void softmax_xent_backward(const SoftmaxXentBackwardArgs<T>& a) {
  const int nthreads = threads_for(a.n * a.c);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t i = 0; i < a.n; ++i) {
    const T* p = a.probs + i * a.c;
    T* d = a.dscores + i * a.c;
    if (a.labels) {
      for (int64_t j = 0; j < a.c; ++j) d[j] = p[j] * a.scale;
      d[a.labels[i]] -= a.scale;
    } else {
      const T* t = a.targets + i * a.c;
      for (int64_t j = 0; j < a.c; ++j) d[j] = (p[j] - t[j]) * a.scale;
    }
  }
}

template void softmax_xent_forward<float>(const SoftmaxXentForwardArgs<float>&);
template void softmax_xent_forward<double>(const SoftmaxXentForwardArgs<double>&);
template void softmax_xent_backward<float>(const SoftmaxXentBackwardArgs<float>&);
template void softmax_xent_backward<double>(const SoftmaxXentBackwardArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
