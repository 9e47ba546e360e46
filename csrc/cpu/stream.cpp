// STREAM triad (McCalpin): a = b + scalar * c over n elements, threads split
// the range. Used by the benchmarks to measure the machine's memory bandwidth
// in the same run as the kernels they report in GB/s.
#include "cpu/isa.h"

namespace fastnn::cpu::FASTNN_ISA {

template <class T>
void stream_triad(const StreamTriadArgs<T>& a) {
  const int nthreads = threads_for(a.n);
#pragma omp parallel for simd num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t i = 0; i < a.n; ++i) a.a[i] = a.b[i] + a.scalar * a.c[i];
}

template void stream_triad<float>(const StreamTriadArgs<float>&);
template void stream_triad<double>(const StreamTriadArgs<double>&);

}  // namespace fastnn::cpu::FASTNN_ISA
