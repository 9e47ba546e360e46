// The packed, cache-blocked GEMM engine (Goto & van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication", 2008; the BLIS five-loop form):
//
//   for jc in N step NC            B block  (KC x NC) packed once, in L3
//     for pc in K step KC
//       for ic in M step MC        A block  (MC x KC) packed per thread, in L2
//         for jr in NC step NR     B micro-panel (KC x NR) stays in L1
//           for ir in MC step MR   MR x NR register tile: C += A_panel * B_panel
//
// The epilogue (ops/epilogue.h) is a template parameter applied to each output
// tile right after its last K block, while the tile is in registers/L1.
// Operands are strided views, so transposes are absorbed by the packing.
// Threads (OpenMP) share the packed B block and split (ic, jr-chunk) tasks.
// Included only by per-ISA sources (cpu/isa.h), inside namespace <isa>.
#pragma once

#include <omp.h>

#include <cstring>

#include "cpu/isa.h"
#include "ops/epilogue.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace gemm_detail {

#define FASTNN_INLINE inline __attribute__((always_inline))

template <class T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(FASTNN_VBYTES))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(FASTNN_VBYTES))); };

template <class T>
struct Blocking {
  using V = typename VecOf<T>::type;
  static constexpr int VW = FASTNN_VBYTES / int(sizeof(T));  // lanes per register
  static constexpr int NV = 2;                               // registers per tile row
  static constexpr int NR = NV * VW;
  // Accumulators: MR * NV registers, leaving room for NV B loads + 1 broadcast
  // (32 registers with AVX-512, 16 otherwise).
  static constexpr int MR = FASTNN_VBYTES == 64 ? 12 : 6;
  static constexpr int64_t KC = 256;       // B micro-panel KC*NR*sizeof(T) <= 32 KiB (L1)
  static constexpr int64_t MC = MR * 24;   // A block <= 576 KiB (L2)
  static constexpr int64_t NC = NR * 128;  // B block <= 4 MiB (L3)
};

template <class V, class T> FASTNN_INLINE V load_unaligned(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V, class T> FASTNN_INLINE void store_unaligned(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

FASTNN_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTNN_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A rows [i0, i0+mc) x cols [p0, p0+kc) -> MR-row panels, k-major inside a panel,
// zero-padded past row m.
template <class T>
void pack_a(const GemmArgs<T>& g, int64_t i0, int64_t mc, int64_t p0, int64_t kc, T* dst) {
  constexpr int MR = Blocking<T>::MR;
  for (int64_t r = 0; r < mc; r += MR, dst += MR * kc) {
    int64_t rows = min64(MR, mc - r);
    const T* src = g.a + (i0 + r) * g.a_rs + p0 * g.a_cs;
    if (g.a_rs == 1) {  // transposed A: rows are contiguous for a fixed p
      for (int64_t p = 0; p < kc; ++p) {
        const T* s = src + p * g.a_cs;
        T* d = dst + p * MR;
        int64_t ii = 0;
        for (; ii < rows; ++ii) d[ii] = s[ii];
        for (; ii < MR; ++ii) d[ii] = T(0);
      }
    } else {
      for (int64_t ii = 0; ii < rows; ++ii) {
        const T* s = src + ii * g.a_rs;
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + ii] = s[p * g.a_cs];
      }
      for (int64_t ii = rows; ii < MR; ++ii)
        for (int64_t p = 0; p < kc; ++p) dst[p * MR + ii] = T(0);
    }
  }
}

// B rows [p0, p0+kc) x cols [j0 + q*NR, ...) for one NR-column panel q,
// zero-padded past column n.
template <class T>
void pack_b_panel(const GemmArgs<T>& g, int64_t p0, int64_t kc, int64_t j, T* dst) {
  constexpr int NR = Blocking<T>::NR;
  int64_t cols = min64(NR, g.n - j);
  const T* src = g.b + p0 * g.b_rs + j * g.b_cs;
  if (g.b_cs == 1) {
    for (int64_t p = 0; p < kc; ++p) {
      const T* s = src + p * g.b_rs;
      T* d = dst + p * NR;
      int64_t jj = 0;
      for (; jj < cols; ++jj) d[jj] = s[jj];
      for (; jj < NR; ++jj) d[jj] = T(0);
    }
  } else {  // transposed B: a column is contiguous in k
    for (int64_t jj = 0; jj < cols; ++jj) {
      const T* s = src + jj * g.b_cs;
      for (int64_t p = 0; p < kc; ++p) dst[p * NR + jj] = s[p * g.b_rs];
    }
    for (int64_t jj = cols; jj < NR; ++jj)
      for (int64_t p = 0; p < kc; ++p) dst[p * NR + jj] = T(0);
  }
}

// One MR x NR output tile: acc (+)= A_panel (MR x kc) * B_panel (kc x NR), then
// store, or on the last K block apply the epilogue. mr/nr < MR/NR at the edges.
template <class T, class Ep>
FASTNN_INLINE void tile(int64_t kc, const T* __restrict ap, const T* __restrict bp,
                        T* c, int64_t ldc, int64_t i0, int64_t j0, int mr, int nr,
                        bool load_c, bool last, const Ep& ep) {
  using B = Blocking<T>;
  using V = typename B::V;
  constexpr int MR = B::MR, NV = B::NV, NR = B::NR, VW = B::VW;
  const bool full = mr == MR && nr == NR;

  V acc[MR][NV];
  if (full && load_c) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = load_unaligned<V>(c + i * ldc + v * VW);
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  }

  for (int64_t p = 0; p < kc; ++p) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const V*>(bp + v * VW);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      V a = V{} + ap[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += a * b[v];
    }
    ap += MR;
    bp += NR;
  }

  if (full && (Ep::kIdentity || !last)) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) store_unaligned(c + i * ldc + v * VW, acc[i][v]);
    return;
  }

  alignas(64) T buf[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(buf + i * NR + v * VW) = acc[i][v];
  const bool add_c = load_c && !full;
  for (int i = 0; i < mr; ++i) {
    T* crow = c + i * ldc;
    const T* brow = buf + i * NR;
    if (last) {
      if (add_c) {
        for (int j = 0; j < nr; ++j) crow[j] = ep.apply(i0 + i, j0 + j, brow[j] + crow[j]);
      } else {
        for (int j = 0; j < nr; ++j) crow[j] = ep.apply(i0 + i, j0 + j, brow[j]);
      }
    } else if (add_c) {
      for (int j = 0; j < nr; ++j) crow[j] += brow[j];
    } else {
      for (int j = 0; j < nr; ++j) crow[j] = brow[j];
    }
  }
}

}  // namespace gemm_detail

// C = epilogue(A @ B + beta * C). Handles every size, including 0 and 1.
template <class T, class Ep>
void gemm_engine(const GemmArgs<T>& g, const Ep& ep) {
  using namespace gemm_detail;
  using B = Blocking<T>;
  constexpr int MR = B::MR, NR = B::NR;
  constexpr int64_t KC = B::KC, MC = B::MC, NC = B::NC;
  const int64_t m = g.m, n = g.n, k = g.k;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T v = g.beta != T(0) ? g.c[i * g.ldc + j] : T(0);
        g.c[i * g.ldc + j] = ep.apply(i, j, v);
      }
    return;
  }

  // Below ~0.5 MFLOP a second thread costs more than it saves.
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int nthreads = flops < 5e5 ? 1 : num_threads();
  const int64_t nc_max = min64(NC, ceil_div(n, NR) * NR);
  T* bpack = static_cast<T*>(scratch(kPackB, size_t(KC * nc_max) * sizeof(T)));

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int nth = omp_get_num_threads();
    T* apack = static_cast<T*>(scratch(kPackA, size_t(MC * KC) * sizeof(T)));
    for (int64_t jc = 0; jc < n; jc += NC) {
      const int64_t nc = min64(NC, n - jc);
      const int64_t npanels = ceil_div(nc, NR);
      for (int64_t pc = 0; pc < k; pc += KC) {
        const int64_t kc = min64(KC, k - pc);
        const bool load_c = pc > 0 || g.beta != T(0);
        const bool last = pc + kc >= k;

#pragma omp for schedule(static)
        for (int64_t q = 0; q < npanels; ++q) pack_b_panel(g, pc, kc, jc + q * NR, bpack + q * NR * kc);

        // (ic block, jr chunk) tasks: at least ~4 per thread for balance; a
        // thread's tasks are contiguous, so it usually packs each A block once.
        const int64_t mblocks = ceil_div(m, MC);
        const int64_t nchunks = min64(npanels, nth > 1 ? ceil_div(4 * nth, mblocks) : 1);
        const int64_t ntasks = mblocks * nchunks;
        int64_t packed_ic = -1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntasks; ++t) {
          const int64_t ic = (t / nchunks) * MC;
          const int64_t mc = min64(MC, m - ic);
          const int64_t chunk = t % nchunks;
          if (ic != packed_ic) {
            pack_a(g, ic, mc, pc, kc, apack);
            packed_ic = ic;
          }
          const int64_t q0 = chunk * npanels / nchunks, q1 = (chunk + 1) * npanels / nchunks;
          for (int64_t q = q0; q < q1; ++q) {
            const int64_t j = jc + q * NR;
            const int nr = int(min64(NR, n - j));
            const T* bp = bpack + q * NR * kc;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int64_t i = ic + ir;
              const int mr = int(min64(MR, m - i));
              tile(kc, apack + ir * kc, bp, g.c + i * g.ldc + j, g.ldc, i, j, mr, nr, load_c, last, ep);
            }
          }
        }
      }
    }
  }
}

}  // namespace fastnn::cpu::FASTNN_ISA
