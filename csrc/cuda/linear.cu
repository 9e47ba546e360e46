// GEMM and Linear + bias + activation on the GPU: cuBLASLt matmuls (blas.cpp
// gemm_rm) with the bias (and relu) in cuBLASLt's epilogue where it has one,
// otherwise one fused elementwise pass (activation.cu bias_act); the backward's
// dz = dy * act'(.) and dbias in one pass (act_grad_colsum), then dW = x^T dz
// and dx = dz W^T as two more matmuls.
#include "cuda/kernels.cuh"

namespace fastnn::cuda {

template <class T>
void gemm(const GemmArgs<T>& g, cudaStream_t stream) {
  // A[i, p] = a[i * a_rs + p * a_cs]: row-major (m, k) when a_cs == 1, its
  // transpose stored (k, m) when a_rs == 1 (likewise B).
  const bool ta = !(g.a_cs == 1), tb = !(g.b_cs == 1);
  if ((ta && g.a_rs != 1) || (tb && g.b_rs != 1))
    throw Error("gemm: operands must be row-major or transposed row-major (one unit stride)");
  const int64_t lda = ta ? g.a_cs : g.a_rs, ldb = tb ? g.b_cs : g.b_rs;
  gemm_rm<T>(stream, ta, tb, g.m, g.n, g.k, g.a, lda, g.b, ldb, g.beta, g.c, g.ldc);
}

template <class T>
void linear_act_forward(const LinearActForwardArgs<T>& a, cudaStream_t stream) {
  if (a.n <= 0 || a.m <= 0) return;
  const bool saves_z = act_saves_preactivation(a.act);
  if (a.act == Act::identity || a.act == Act::relu) {
    const GemmEpilogue ep = a.bias ? (a.act == Act::relu ? GemmEpilogue::relu_bias : GemmEpilogue::bias)
                                   : GemmEpilogue::none;
    const bool done = gemm_rm<T>(stream, false, false, a.n, a.m, a.d, a.x, a.d, a.weight, a.m, T(0), a.y, a.m, ep,
                                 a.bias);
    if (!done || (a.act == Act::relu && !a.bias))
      bias_act<T>(stream, a.n, a.m, a.y, a.bias, a.y, nullptr, a.act, a.alpha);
    return;
  }
  // Other activations: the matmul (+ bias when the epilogue takes it) into z
  // (or y when z is not kept), then act in one elementwise pass.
  T* pre = saves_z ? a.z : a.y;
  const bool with_bias = gemm_rm<T>(stream, false, false, a.n, a.m, a.d, a.x, a.d, a.weight, a.m, T(0), pre, a.m,
                                    a.bias ? GemmEpilogue::bias : GemmEpilogue::none, a.bias);
  bias_act<T>(stream, a.n, a.m, pre, (a.bias && !with_bias) ? a.bias : nullptr, a.y, saves_z ? a.z : nullptr, a.act,
              a.alpha);
}

template <class T>
void linear_act_backward(const LinearActBackwardArgs<T>& a, cudaStream_t stream) {
  act_grad_colsum<T>(stream, a.n, a.m, a.dy, act_saves_preactivation(a.act) ? a.z : nullptr, a.y, a.dz_work, a.dbias,
                     a.dalpha, a.act, a.alpha);
  // dW (D, M) = x^T (D, N) @ dz (N, M)
  gemm_rm<T>(stream, true, false, a.d, a.m, a.n, a.x, a.d, a.dz_work, a.m, T(0), a.dweight, a.m);
  // dx (N, D) = dz (N, M) @ W^T (M, D)
  if (a.dx) gemm_rm<T>(stream, false, true, a.n, a.d, a.m, a.dz_work, a.m, a.weight, a.m, T(0), a.dx, a.d);
}

#define FASTNN_INSTANTIATE(T)                                                        \
  template void gemm<T>(const GemmArgs<T>&, cudaStream_t);                           \
  template void linear_act_forward<T>(const LinearActForwardArgs<T>&, cudaStream_t); \
  template void linear_act_backward<T>(const LinearActBackwardArgs<T>&, cudaStream_t);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cuda
