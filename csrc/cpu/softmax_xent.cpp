// Softmax cross-entropy on the CPU: scores (N, C), labels (N,), probs (N, C).
// Forward saves probs; backward is (probs - onehot) * scale. Rows in parallel;
// the loss is summed in double so its value does not depend on the threads.
#include "cpu/isa.h"
#include "ops/softmax.h"

namespace fastnn::cpu::FASTNN_ISA {

template <class T>
void softmax_xent_forward(const SoftmaxXentForwardArgs<T>& a) {
  const int nthreads = a.n * a.c < 32768 ? 1 : num_threads();
  double total = 0.0;
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < a.n; ++i)
    total += double(softmax_xent_row(a.scores + i * a.c, a.c, a.labels[i], a.probs + i * a.c));
  *a.loss = a.n > 0 ? T(total / double(a.n)) : T(0);
}

template <class T>
void softmax_xent_backward(const SoftmaxXentBackwardArgs<T>& a) {
  const int nthreads = a.n * a.c < 32768 ? 1 : num_threads();
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t i = 0; i < a.n; ++i) {
    const T* p = a.probs + i * a.c;
    T* d = a.dscores + i * a.c;
    for (int64_t j = 0; j < a.c; ++j) d[j] = p[j] * a.scale;
    d[a.labels[i]] -= a.scale;
  }
}

template void softmax_xent_forward<float>(const SoftmaxXentForwardArgs<float>&);
template void softmax_xent_forward<double>(const SoftmaxXentForwardArgs<double>&);
template void softmax_xent_backward<float>(const SoftmaxXentBackwardArgs<float>&);
template void softmax_xent_backward<double>(const SoftmaxXentBackwardArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
