// GEMM and the fused Linear + bias + activation layer on the CPU.
//
// Shapes: x (N, D), weight (D, M), bias (M,), y/z/dy/dz (N, M), dx (N, D).
//   forward   y = act(x @ weight + bias)      one GEMM, bias+act in its epilogue
//   backward  dweight = x^T @ dz, with dz = dy * act'(z or y) and dbias = sum_rows dz
//             computed while packing dz for that GEMM;  dx = dz @ weight^T
//             GEMMs on strided views: transposes are absorbed by the packing
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
  gemm_detail::visit_bias_act<T, BiasAxis::cols>(a.act, a.bias, a.z, a.m, a.alpha, [&](const auto& ep) { gemm_engine(g, ep); });
}

// dz = dy * act'(.) and dbias = column sums of dz, in one pass over (N, M)
// (used only for degenerate shapes; see linear_act_backward_fused).
// Threads split the columns, so each dbias entry is summed by one thread in
// row order: the result does not depend on the thread count.
template <class T, class F>
void activation_backward_dz(const LinearActBackwardArgs<T>& a) {
  const int64_t n = a.n, m = a.m;
  constexpr int64_t kColBlock = 256;
  const int64_t nblocks = (m + kColBlock - 1) / kColBlock;
  const int nthreads = threads_for(n * m);
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
        T d = act_backward_epilogue<T, F>(dy[j], z[j], y[j], a.alpha);
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

// The B operand of dweight = x^T @ dz: dz = dy * act'(z or y) computed while
// packing. The first time a panel is packed (the engine's first row block) it
// also adds the panel's column sums to dbias (and prelu's d/d alpha terms to
// dalpha_col), in row order within a K block and K blocks in order, so the
// sums do not depend on the thread count; and writes dz to dz_out for the dx GEMM.
// The activation is picked at run time through `fn`, one call per packed panel
// (kc x NR), so the engine is compiled once for all activations, not per activation.
template <class T>
struct DzSource {
  const T* dy; const T* y; const T* z; int64_t m; T alpha;
  T* dz_out;      // (N, M) or null
  T* dbias;       // (M,) or null
  T* dalpha_col;  // (M,) or null (prelu only)
  void (*fn)(const DzSource& s, int64_t p0, int64_t kc, int64_t j0, int cols, T* dst, bool first);

  template <int NR>
  FASTNN_INLINE void pack(int64_t p0, int64_t kc, int64_t j0, int cols, T* __restrict dst, bool first) const {
    static_assert(NR == gemm_detail::Blocking<T>::NR, "dz_pack is compiled for the engine's panel width");
    fn(*this, p0, kc, j0, cols, dst, first);
  }
};

template <class T, class F>
void dz_pack(const DzSource<T>& s, int64_t p0, int64_t kc, int64_t j0, int cols, T* __restrict dst, bool first) {
  constexpr int NR = gemm_detail::Blocking<T>::NR;
  alignas(64) T colsum[NR];
  alignas(64) T alphasum[NR];
  for (int jj = 0; jj < NR; ++jj) colsum[jj] = alphasum[jj] = T(0);
  for (int64_t p = 0; p < kc; ++p) {
    const int64_t row = (p0 + p) * s.m + j0;
    const T* __restrict dyr = s.dy + row;
    const T* __restrict yr = s.y + row;
    const T* __restrict zr = F::kGradFromOutput ? yr : s.z + row;
    T* __restrict d = dst + p * NR;
    if constexpr (simd::VecAct<F>::kAvailable) {
      using S = simd::Vec<T>;
      const auto va = S::set1(s.alpha);
      auto dz = [&](const T* const* q) {
        return simd::VecAct<F>::template backward<S>(S::load(q[0]), S::load(q[1]), S::load(q[2]), va);
      };
      if (cols == NR) {
#pragma GCC unroll 8
        for (int jj = 0; jj < NR; jj += S::W) {
          const T* q[3] = {dyr + jj, zr + jj, yr + jj};
          S::store(d + jj, dz(q));
        }
      } else {  // a last panel partly inside: the same vector formula (simd::vec_run), zeros past `cols`
        const T* const in[3] = {dyr, zr, yr};
        simd::vec_run<S>(cols, d, in, dz);
        for (int jj = cols; jj < NR; ++jj) d[jj] = T(0);
      }
    } else {
      int jj = 0;
      for (; jj < cols; ++jj) d[jj] = act_backward_epilogue<T, F>(dyr[jj], zr[jj], yr[jj], s.alpha);
      for (; jj < NR; ++jj) d[jj] = T(0);
    }
    if (first) {
#pragma GCC unroll 64
      for (int jj = 0; jj < NR; ++jj) colsum[jj] += d[jj];
      if (s.dz_out) {
        T* __restrict o = s.dz_out + row;
        for (int jj = 0; jj < cols; ++jj) o[jj] = d[jj];
      }
      if constexpr (std::is_same_v<F, act::Prelu>) {
        for (int jj = 0; jj < cols; ++jj) alphasum[jj] += dyr[jj] * act::Prelu::grad_alpha(zr[jj]);
      }
    }
  }
  if (!first) return;
  if (s.dbias) {
    for (int jj = 0; jj < cols; ++jj) s.dbias[j0 + jj] = (p0 == 0 ? T(0) : s.dbias[j0 + jj]) + colsum[jj];
  }
  if constexpr (std::is_same_v<F, act::Prelu>) {
    for (int jj = 0; jj < cols; ++jj)
      s.dalpha_col[j0 + jj] = (p0 == 0 ? T(0) : s.dalpha_col[j0 + jj]) + alphasum[jj];
  }
}

// dz = dy * act'(.) is never a pass of its own: the dweight GEMM computes it
// while packing its B operand (reducing dbias there too) and leaves it in
// dz_work, which the dx GEMM then packs as its A operand.
template <class T>
void linear_act_backward_fused(const LinearActBackwardArgs<T>& a) {
  using gemm_detail::StridedA;
  using gemm_detail::StridedB;
  const bool prelu = a.act == Act::prelu;
  T* dalpha_col = prelu ? static_cast<T*>(scratch(kWork, size_t(a.m) * sizeof(T))) : nullptr;
  const auto fn = visit_act(a.act, [](auto f) { return &dz_pack<T, decltype(f)>; });
  // dweight (D, M) = x^T (D, N) @ dz (N, M)
  gemm_engine(a.d, a.m, a.n, StridedA<T>{a.x, 1, a.d},
              DzSource<T>{a.dy, a.y, a.z, a.m, a.alpha, a.dx ? a.dz_work : nullptr, a.dbias, dalpha_col, fn},
              a.dweight, a.m, false, NoEpilogue{});
  if (prelu && a.dalpha) {
    double total = 0.0;
    for (int64_t j = 0; j < a.m; ++j) total += double(dalpha_col[j]);
    *a.dalpha = T(total);
  }
  // dx (N, D) = dz (N, M) @ weight^T (M, D)
  if (a.dx)
    gemm_engine(a.n, a.d, a.m, StridedA<T>{a.dz_work, a.m, 1}, StridedB<T>{a.weight, 1, a.m}, a.dx, a.d,
                false, NoEpilogue{});
}

template <class T>
void linear_act_backward(const LinearActBackwardArgs<T>& a) {
  if (a.n > 0 && a.d > 0 && a.m > 0) {
    linear_act_backward_fused(a);
    return;
  }
  // Degenerate shapes (an empty batch or layer): the GEMMs never pack, so dz
  // and dbias come from the plain pass.
  visit_act(a.act, [&](auto f) { activation_backward_dz<T, decltype(f)>(a); });
  gemm_engine(GemmArgs<T>{a.d, a.m, a.n, a.x, 1, a.d, a.dz_work, a.m, 1, a.dweight, a.m, T(0)},
              NoEpilogue{});
  if (a.dx)
    gemm_engine(GemmArgs<T>{a.n, a.d, a.m, a.dz_work, a.m, 1, a.weight, 1, a.m, a.dx, a.d, T(0)},
                NoEpilogue{});
}

#define FASTNN_INSTANTIATE(T)                                          \
  template void gemm<T>(const GemmArgs<T>&);                           \
  template void linear_act_forward<T>(const LinearActForwardArgs<T>&); \
  template void linear_act_backward<T>(const LinearActBackwardArgs<T>&);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
