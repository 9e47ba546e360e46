// The packed, cache-blocked GEMM engine: C (m, n) = epilogue(A (m, k) @ B (k, n) [+ C]).
//
// Follows Goto & van de Geijn, "Anatomy of High-Performance Matrix
// Multiplication" (2008) in the BLIS five-loop form, with the roles of the
// operands arranged as BLIS's Skylake-X kernels arrange them (seen from C^T):
//
//   for ic in M step MCB          A block  (MCB x KC): each thread packs the row panels
//     for pc in K step KC                  it multiplies (all of them in a column split), in L3
//       for jc in N step NCB      B block  (KC x NCB) each thread packs the slice it
//                                          uses, KC x NCL2 in its own L2
//         for ir in rows step MR  A micro-panel (MR x KC), reused along the tile row
//           for jr in cols step NR   B micro-panel (KC x NR) streams from L2 (prefetched)
//             MR x NR register tile: acc += A_panel * B_panel (broadcast A, vector B)
//
// Threads split the tile grid of each block by columns (each packs only its own
// B slice and its own copy of the A block, and they meet once per block) or,
// when there are too few column panels, by rows (then the B block is packed
// together and shared, and each thread packs only the A rows it multiplies).
// A skinny GEMM with a B too large for the caches (a batch of 64 against 4096 x
// 4096 weights) streams B instead: the loops swap to panel by panel, each B panel
// packed right before the few row panels it serves while their tiles prefetch the
// next panel's source from DRAM, so memory and the FMAs work at the same time.
// The epilogue (ops/epilogue.h) is a template parameter applied to each output
// tile right after its last K block, in registers when it has a vector form
// (cpu/vec_act.h), otherwise from an L1 buffer. Operands are read through
// "sources" that pack them, so transposed operands and fused producers (the
// dz = dy * act'(.) of linear_act's backward) cost nothing extra: they are
// absorbed by the packing. Every size works; edge tiles are zero-padded in the
// packed panels and stored through a buffer.
// Included only by per-ISA sources (cpu/isa.h), inside namespace <isa>.
#pragma once

#include <omp.h>

#include <type_traits>

#include "cpu/isa.h"
#include "cpu/simd.h"
#include "cpu/vec_act.h"
#include "ops/epilogue.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace gemm_detail {

FASTNN_INLINE int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTNN_INLINE int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
FASTNN_INLINE int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
struct Blocking {
  using S = simd::Vec<T>;
  static constexpr int VW = S::W;  // lanes per register
  // Register tile MR x (NV registers): MR*NV accumulators + NV B loads + one
  // broadcast must fit in the register file (32 with AVX-512, 16 otherwise).
  // AVX-512 uses 8 x 3: 24 FMAs per 8 broadcasts + 3 loads, so the two load
  // ports keep up with the two FMA ports (12 x 2 needs 14 loads for 24 FMAs and
  // measured ~10% slower in-L1).
  static constexpr int NV = FASTNN_VBYTES == 64 ? 3 : 2;
  static constexpr int MR = FASTNN_VBYTES == 64 ? 8 : 6;
  static constexpr int NR = NV * VW;
  // Depth of one rank-KC update (A micro-panel MR x KC: 12 KiB fp32, 16 KiB fp64).
  static constexpr int64_t KC = FASTNN_VBYTES == 64 ? (sizeof(T) == 4 ? 384 : 256) : 256;
  // One thread's B slice KC x NCL2 in its L2 (about 780 KiB with AVX-512).
  static constexpr int64_t NCL2 = FASTNN_VBYTES == 64 ? (sizeof(T) == 4 ? 528 : 384) : 256;
  // The B slice of a row split, shared by the threads (each streams its own A
  // rows past it): 7 panels with AVX-512 fp32, leaving a thread's L2 room for
  // those A panels and C (2 threads: 1024^3 +1-2%, 2048^3-4096^3 +1-3%).
  static constexpr int64_t NCL2_ROWS = FASTNN_VBYTES == 64 && sizeof(T) == 4 ? 336 : NCL2;
  // The shared A block MCB x KC in L3 (3 MiB fp32, 4 MiB fp64 with AVX-512).
  static constexpr int64_t MCB = MR * 256;
  // Prefetch distance for the streamed B micro-panel, in k steps; 0: none.
  // AVX-512 goes without: the packed panel is read sequentially, so the
  // hardware prefetchers already have it, and the NV prefetches per k step
  // measured 3-4% slower (1 thread, thread CPU time, bench/README.md).
  static constexpr int PFB = FASTNN_VBYTES == 64 ? 0 : 16;
};

// --- operand sources: pack one micro-panel --------------------------------------

// A (m, k) given by strides: A[i, p] = a[i * rs + p * cs].
template <class T>
struct StridedA {
  const T* a; int64_t rs, cs;

  // Rows [i0, i0 + rows) x cols [p0, p0 + kc) -> dst[p * MR + ii], zero rows past `rows`.
  template <int MR>
  FASTNN_INLINE void pack(int64_t i0, int rows, int64_t p0, int64_t kc, T* __restrict dst) const {
    const T* src = a + i0 * rs + p0 * cs;
    if (rs == 1) {  // transposed A: the MR rows of one column are contiguous
      if (rows == MR) {
        for (int64_t p = 0; p < kc; ++p) {
          const T* s = src + p * cs;
#pragma GCC unroll 16
          for (int ii = 0; ii < MR; ++ii) dst[p * MR + ii] = s[ii];
        }
      } else {
        for (int64_t p = 0; p < kc; ++p) {
          const T* s = src + p * cs;
          int ii = 0;
          for (; ii < rows; ++ii) dst[p * MR + ii] = s[ii];
          for (; ii < MR; ++ii) dst[p * MR + ii] = T(0);
        }
      }
    } else if (rows == MR && cs == 1) {  // row-major A: MR row streams -> k-major panel
      const T* s[MR];
#pragma GCC unroll 16
      for (int ii = 0; ii < MR; ++ii) s[ii] = src + ii * rs;
      for (int64_t p = 0; p < kc; ++p)
#pragma GCC unroll 16
        for (int ii = 0; ii < MR; ++ii) dst[p * MR + ii] = s[ii][p];
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        int ii = 0;
        for (; ii < rows; ++ii) dst[p * MR + ii] = src[ii * rs + p * cs];
        for (; ii < MR; ++ii) dst[p * MR + ii] = T(0);
      }
    }
  }
};

// B (k, n) given by strides: B[p, j] = b[p * rs + j * cs].
template <class T>
struct StridedB {
  const T* b; int64_t rs, cs;

  // Rows [p0, p0 + kc) x cols [j0, j0 + cols) -> dst[p * NR + jj], zero cols past `cols`.
  // `first` is true the first time this part of B is packed (unused here).
  // A row-major B's whole panels also prefetch, for each row p copied, row
  // p + ahead when p + ahead < reach (the rows left in the K block; 0: none).
  template <int NR>
  FASTNN_INLINE void pack(int64_t p0, int64_t kc, int64_t j0, int cols, T* __restrict dst, bool first,
                          int64_t ahead = 0, int64_t reach = 0) const {
    const T* src = b + p0 * rs + j0 * cs;
    if (cs == 1) {
      if (cols == NR) {
        for (int64_t p = 0; p < kc; ++p) {
          const T* s = src + p * rs;
          if (p + ahead < reach) {
#pragma GCC unroll 8
            for (int jj = 0; jj < NR; jj += 64 / int(sizeof(T))) simd::prefetch_l1(s + ahead * rs + jj);
          }
#pragma GCC unroll 64
          for (int jj = 0; jj < NR; ++jj) dst[p * NR + jj] = s[jj];
        }
      } else {
        // A last, partial panel (n = 1024: 21 x 48 + 16 columns): each row zeroed
        // whole, then its whole vectors copied, in loops of fixed length the
        // compiler vectorizes. Element by element (runtime bounds: scalar moves)
        // it took 8% of (256, 1024, 1024)'s time on one core, as much as
        // packing the 21 whole panels.
        constexpr int VW = simd::Vec<T>::W;
        const int whole = cols / VW * VW;
        for (int64_t p = 0; p < kc; ++p) {
          const T* s = src + p * rs;
          T* d = dst + p * NR;
#pragma GCC unroll 64
          for (int jj = 0; jj < NR; ++jj) d[jj] = T(0);
          for (int j = 0; j < whole; j += VW) {
#pragma GCC unroll 16
            for (int jj = 0; jj < VW; ++jj) d[j + jj] = s[j + jj];
          }
          for (int jj = whole; jj < cols; ++jj) d[jj] = s[jj];
        }
      }
    } else if (rs == 1) {
      // Transposed B (dX = dZ @ W^T, conv's dW): each column is contiguous in p.
      // VW columns x VW rows are loaded as VW vectors along p, transposed in
      // registers and stored as VW rows of the panel: whole-vector loads and
      // stores instead of one scalar gather per element (a column past `cols`
      // is a zero vector). (64, 4096, 4096) dX: 36% -> see bench/README.md.
      using S = simd::Vec<T>;
      using V = typename S::V;
      constexpr int VW = S::W;
      const int64_t kv = kc / VW * VW;
      // One group of VW columns at a time down the whole kc: VW streams for the
      // prefetchers to follow, not NR (more than the L2 streamer tracks).
      // Each column's stream is prefetched 4 lines ahead of its loads (the
      // prefetchers do not keep VW streams a page apart going): +3-7% at
      // (256, 1024, 1024) dX on one core.
      constexpr int64_t kAhead = 4 * 64 / int64_t(sizeof(T));
#pragma GCC unroll 1
      for (int j = 0; j < NR; j += VW)
        for (int64_t p = 0; p < kv; p += VW) {
          if (p + kAhead < kc && j + VW <= cols) {
#pragma GCC unroll 16
            for (int jj = 0; jj < VW; ++jj) simd::prefetch_l1(src + (j + jj) * cs + p + kAhead);
          }
          V r[VW];
#pragma GCC unroll 16
          for (int jj = 0; jj < VW; ++jj) r[jj] = j + jj < cols ? S::load(src + (j + jj) * cs + p) : S::zero();
          S::transpose(r);
#pragma GCC unroll 16
          for (int pp = 0; pp < VW; ++pp) S::store(dst + (p + pp) * NR + j, r[pp]);
        }
      int64_t p = kv;
      for (; p < kc; ++p) {
        int jj = 0;
        for (; jj < cols; ++jj) dst[p * NR + jj] = src[jj * cs + p];
        for (; jj < NR; ++jj) dst[p * NR + jj] = T(0);
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        int jj = 0;
        for (; jj < cols; ++jj) dst[p * NR + jj] = src[p * rs + jj * cs];
        for (; jj < NR; ++jj) dst[p * NR + jj] = T(0);
      }
    }
  }
};

// --- epilogues in vector form ----------------------------------------------------

template <class S, class Ep> struct VecEpilogue { static constexpr bool kAvailable = false; };

template <class S> struct VecEpilogue<S, NoEpilogue> {
  static constexpr bool kAvailable = true;
  template <class V> static FASTNN_INLINE V apply(const NoEpilogue&, int64_t, int64_t, V acc) { return acc; }
};

template <class S, class T, class F, BiasAxis A> struct VecEpilogue<S, BiasAct<T, F, A>> {
  static constexpr bool kAvailable = simd::VecAct<F>::kAvailable;
  template <class V> static FASTNN_INLINE V apply(const BiasAct<T, F, A>& ep, int64_t i, int64_t j, V acc) {
    V pre = acc;
    if (ep.bias) pre = S::add(acc, A == BiasAxis::cols ? S::load(ep.bias + j) : S::set1(ep.bias[i]));
    if constexpr (BiasAct<T, F, A>::kSavesPreactivation) S::store(ep.z + i * ep.ldz + j, pre);
    return simd::VecAct<F>::template forward<S>(pre, S::set1(ep.alpha));
  }
};

// --- bias + any activation as a block epilogue ---------------------------------

// The engine is a template over its epilogue, so one instantiation per
// activation would compile the whole engine a dozen times per dtype and ISA
// (most of the build's time). Identity and ReLU, the activations of every hot
// path, keep their epilogue in registers (BiasAct); every other one goes
// through ActBlock: the tile is stored as for a plain GEMM, then `fn`, chosen
// per activation at run time, applies bias + activation to the tile while it
// is in L1 (and writes z when the activation needs it for backward).
template <class T, BiasAxis A>
struct ActBlock {
  static constexpr bool kIdentity = false;
  const T* bias;
  T* z;  // (rows, ldz) when `saves`, else unused
  int64_t ldz;
  T alpha;
  bool saves;
  // Applies the epilogue to rows [i0, i0 + mr) x cols [j0, j0 + nr) stored at c.
  void (*fn)(const ActBlock& ep, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mr, int64_t nr);
};

template <class Ep> struct IsActBlock { static constexpr bool value = false; };
template <class T, BiasAxis A> struct IsActBlock<ActBlock<T, A>> { static constexpr bool value = true; };

template <class T, class F, BiasAxis A>
void act_block(const ActBlock<T, A>& ep, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mr, int64_t nr) {
  using S = simd::Vec<T>;
  constexpr bool kZ = !F::kGradFromOutput;
  const auto va = S::set1(ep.alpha);
  for (int64_t i = 0; i < mr; ++i) {
    T* row = c + i * ldc;
    T* zrow = kZ ? ep.z + (i0 + i) * ep.ldz + j0 : nullptr;
    const T* brow = ep.bias && A == BiasAxis::cols ? ep.bias + j0 : nullptr;
    const T bi = ep.bias && A == BiasAxis::rows ? ep.bias[i0 + i] : T(0);
    for (int64_t j = 0; j < nr; ++j) {
      const T pre = row[j] + (brow ? brow[j] : bi);
      if constexpr (kZ) zrow[j] = pre;
      row[j] = pre;
    }
    if constexpr (simd::VecAct<F>::kAvailable) {
      const T* const in[1] = {row};
      simd::vec_run<S>(nr, row, in, [&](const T* const* p) {
        return simd::VecAct<F>::template forward<S>(S::load(p[0]), va);
      });
    } else {
      for (int64_t j = 0; j < nr; ++j) row[j] = F::forward(row[j], ep.alpha);
    }
  }
}

// Calls f(epilogue) for C = act(acc + bias) (z = acc + bias saved at z, ldz,
// when the activation needs it): BiasAct in registers for identity and ReLU,
// ActBlock for the rest.
template <class T, BiasAxis A, class Fn>
decltype(auto) visit_bias_act(Act act, const T* bias, T* z, int64_t ldz, T alpha, Fn&& f) {
  if (act == Act::identity) return f(BiasAct<T, act::Identity, A>{bias, z, ldz, alpha});
  if (act == Act::relu) return f(BiasAct<T, act::Relu, A>{bias, z, ldz, alpha});
  return f(visit_act(act, [&](auto fa) {
    using F = decltype(fa);
    return ActBlock<T, A>{bias, z, ldz, alpha, !F::kGradFromOutput, &act_block<T, F, A>};
  }));
}

// Whether the epilogue writes z (for forward callers that offset z per image).
template <class T, class F, BiasAxis A>
constexpr bool saves_preactivation(const BiasAct<T, F, A>&) { return BiasAct<T, F, A>::kSavesPreactivation; }
template <class T, BiasAxis A>
bool saves_preactivation(const ActBlock<T, A>& ep) { return ep.saves; }

// --- software prefetch of the next B panel's source ---------------------------------

// No prefetching (every tile but those of a skinny GEMM's B-streaming path).
struct NoPrefetch {
  static constexpr bool kOn = false;
  FASTNN_INLINE void step() {}
};

// The cache lines of a B panel's source, as `rows` runs of `lines` lines
// (run r, line l at base + r * run_stride + l * line_stride elements), handed out
// one per step() to the tiles that multiply the panel before it: each tile takes
// an equal share of the lines, spread over its K loop (one every other k step),
// so the next panel arrives from DRAM while this one is multiplied without a
// burst of misses stalling the FMAs.
template <class T>
struct PanelPrefetch {
  static constexpr bool kOn = true;
  const T* addr;
  int64_t line_stride, wrap;  // wrap: from past a run's last line to the next run's first
  int line, lines, left;

  FASTNN_INLINE void step() {
    if (left > 0) {
      simd::prefetch_l1(addr);
      --left;
      addr += line_stride;
      if (++line == lines) line = 0, addr += wrap;
    }
  }
};

// The source lines of one packed B panel (kc rows from p0, cols columns from j0)
// of a strided B (row-major or transposed), and which share of them tile `part` of `parts` prefetches.
template <int NR, class T>
FASTNN_INLINE PanelPrefetch<T> panel_prefetch(const StridedB<T>& B, int64_t p0, int64_t kc, int64_t j0, int64_t cols,
                                              int64_t part, int64_t parts, int64_t steps) {
  constexpr int64_t LW = 64 / int64_t(sizeof(T));  // elements per cache line
  // Row-major B: kc runs (rows) of cols elements; transposed: cols runs (columns) of kc.
  const bool rows = B.cs == 1;
  const int64_t runs = rows ? kc : cols, len = rows ? cols : kc, run_stride = rows ? B.rs : B.cs;
  const T* start = B.b + p0 * B.rs + j0 * B.cs;
  // Runs start at line boundaries only if the base and the stride are line-aligned;
  // otherwise a run of len elements touches one line more.
  const bool aligned = reinterpret_cast<uintptr_t>(start) % 64 == 0 && run_stride % LW == 0;
  const int64_t lines = ceil_div(len, LW) + (aligned ? 0 : 1);
  const int64_t total = runs * lines;
  const int64_t first = total * part / parts, count = min64(total * (part + 1) / parts - first, steps);
  const T* line0 = reinterpret_cast<const T*>(reinterpret_cast<uintptr_t>(start) & ~uintptr_t(63));
  const int64_t r = first / lines, l = first % lines;
  // Lines are addressed from the aligned start; a stride that is not a whole
  // number of lines shifts later runs by less than a line, which the extra line covers.
  return PanelPrefetch<T>{line0 + r * run_stride + l * LW, LW, run_stride - lines * LW, int(l), int(lines), int(count)};
}

// Where tile_nv reads B: the packed panel (NoSourceB), or a row-major source
// row by row (SourceRowsB), storing each row into the packed panel as it goes,
// so the first tile on a panel packs it for the others without a pass of its own.
struct NoSourceB {
  static constexpr bool kOn = false;
};

template <class T>
struct SourceRowsB {
  static constexpr bool kOn = true;
  const T* src;
  int64_t rs;
  T* dst;
};

// --- the micro-kernel ----------------------------------------------------------

// One MR x (NV * VW) output tile at c (rows i0.., cols j0..): acc = A_panel
// (MR x kc) * the first NV vectors of B_panel (kc x NR); then C = acc (+ C when
// load_c), with the epilogue applied when `last` (the final K block). mr/nr <
// MR/(NV * VW) at the matrix edges. tile() picks NV: a last column panel only
// partly inside the matrix (n = 1024 = 21 x 48 + 16) multiplies only the
// vectors it needs instead of zero padding (3-4% of the FMAs at n = 784, 1024).
// `pf` (PanelPrefetch) prefetches one line every other k step; `sb`
// (SourceRowsB) reads B from its source instead of bp, packing it to sb.dst.
template <int NV, class T, class Ep, class Pf = NoPrefetch, class SB = NoSourceB>
FASTNN_INLINE void tile_nv(int64_t kc, const T* __restrict ap, const T* __restrict bp, T* c, int64_t ldc,
                           int64_t i0, int64_t j0, int mr, int nr, bool load_c, bool last, const Ep& ep,
                           Pf pf = {}, SB sb = {}) {
  using Bl = Blocking<T>;
  using S = typename Bl::S;
  using V = typename S::V;
  constexpr int MR = Bl::MR, NR = Bl::NR, VW = Bl::VW, PFB = Bl::PFB;
  using VE = VecEpilogue<S, Ep>;

  // The C tile is needed only after the K loop: start fetching it now, every
  // line of each row (NV or NV + 1 lines: a NumPy row need not start on a line).
  constexpr int LW = 64 / int(sizeof(T));
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
    if (i < mr) {
#pragma GCC unroll 8
      for (int j = 0; j < NV * VW; j += LW)
        if (j < nr) simd::prefetch_l1_write(c + i * ldc + j);
      simd::prefetch_l1_write(c + i * ldc + nr - 1);
    }

  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = S::zero();

#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    V b[NV];
    if constexpr (SB::kOn) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        b[v] = S::load(sb.src + v * VW);
        S::store(sb.dst + v * VW, b[v]);
      }
      sb.src += sb.rs;
      sb.dst += NR;
    } else {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = S::load(bp + v * VW);
    }
    // One cache line of B ahead per register (NR * sizeof(T) is NV lines with AVX-512).
    if constexpr (PFB > 0) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) simd::prefetch_l1(bp + PFB * NR + v * VW);
    }
    if constexpr (Pf::kOn) {
      if (p & 1) pf.step();
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      V a = S::broadcast(ap + i);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = S::fma(a, b[v], acc[i][v]);
    }
    ap += MR;
    bp += NR;
  }

  constexpr bool kBlock = IsActBlock<Ep>::value;
  const bool full = mr == MR && nr == NV * VW;
  if (full && (!last || kBlock || VE::kAvailable)) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* cp = c + i * ldc + v * VW;
        V r = load_c ? S::add(acc[i][v], S::load(cp)) : acc[i][v];
        if constexpr (!kBlock && VE::kAvailable && !Ep::kIdentity) {
          if (last) r = VE::apply(ep, i0 + i, j0 + v * VW, r);
        }
        S::store(cp, r);
      }
    if constexpr (kBlock) {
      if (last) ep.fn(ep, c, ldc, i0, j0, mr, nr);
    }
    return;
  }

  alignas(64) T buf[MR * NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(buf + i * NR + v * VW, acc[i][v]);
  for (int i = 0; i < mr; ++i) {
    T* crow = c + i * ldc;
    const T* brow = buf + i * NR;
    if constexpr (!kBlock) {
      if (last) {
        if (load_c) {
          for (int j = 0; j < nr; ++j) crow[j] = ep.apply(i0 + i, j0 + j, brow[j] + crow[j]);
        } else {
          for (int j = 0; j < nr; ++j) crow[j] = ep.apply(i0 + i, j0 + j, brow[j]);
        }
        continue;
      }
    }
    if (load_c) {
      for (int j = 0; j < nr; ++j) crow[j] += brow[j];
    } else {
      for (int j = 0; j < nr; ++j) crow[j] = brow[j];
    }
  }
  if constexpr (kBlock) {
    if (last) ep.fn(ep, c, ldc, i0, j0, mr, nr);
  }
}

// A SourceRowsB `sb` packs whole panels only (nr == NR): its loads are NR wide.
template <class T, class Ep, class Pf = NoPrefetch, class SB = NoSourceB>
FASTNN_INLINE void tile(int64_t kc, const T* __restrict ap, const T* __restrict bp, T* c, int64_t ldc,
                        int64_t i0, int64_t j0, int mr, int nr, bool load_c, bool last, const Ep& ep,
                        Pf pf = {}, SB sb = {}) {
  constexpr int NV = Blocking<T>::NV, VW = Blocking<T>::VW;
  if (nr > (NV - 1) * VW) {
    tile_nv<NV>(kc, ap, bp, c, ldc, i0, j0, mr, nr, load_c, last, ep, pf, sb);
  } else if constexpr (NV > 2) {
    if (nr > VW) tile_nv<2>(kc, ap, bp, c, ldc, i0, j0, mr, nr, load_c, last, ep, pf);
    else tile_nv<1>(kc, ap, bp, c, ldc, i0, j0, mr, nr, load_c, last, ep, pf);
  } else {
    tile_nv<1>(kc, ap, bp, c, ldc, i0, j0, mr, nr, load_c, last, ep, pf);
  }
}

template <class B> struct IsStridedB { static constexpr bool value = false; };
template <class T> struct IsStridedB<StridedB<T>> { static constexpr bool value = true; };

// Packs the B panels [q0, q1) (columns q * NR ..) of rows [p0, p0 + kc) to
// dst + (q - q0) * pstride. A row-major B is packed in strips of a few rows
// across all the panels, so each source row is read as one long contiguous run
// (the prefetchers follow it) instead of NR-wide pieces a row stride apart,
// which leave a skinny GEMM (few rows of A, each packed B element used only
// m times) waiting on memory latency while it packs: (64, 4096, 4096) went
// from 49% to 53-55% of the probe on one thread. Only when `skinny` (at most 32 row
// panels share the packed B; with many the packing is amortized and the strips
// measured slightly slower at k = 64). Other sources (transposed B, fused
// producers with their row-ordered reductions) pack panel by panel.
template <int NR, class T, class BSrc>
FASTNN_INLINE void pack_b_panels(const BSrc& B, int64_t p0, int64_t kc, int64_t q0, int64_t q1, int64_t n,
                                 T* dst, int64_t pstride, bool first, bool skinny) {
  if constexpr (IsStridedB<BSrc>::value) {
    if (skinny && B.cs == 1 && q1 - q0 > 1) {
      // Each row copied prefetches the row two strips below it: a row of B is
      // a new 4 KiB page (n = 1024) and each strip's runs (one per panel, 3
      // lines) are too short for the hardware prefetchers to follow, so
      // without it the pack waited on L3 for each line (10% of (256, 1024,
      // 1024)'s time on one core, 78% -> 83-85% of the probe with it).
      constexpr int64_t kStrip = 8, kAhead = 2 * kStrip;
      for (int64_t pp = 0; pp < kc; pp += kStrip)
        for (int64_t q = q0; q < q1; ++q)
          B.template pack<NR>(p0 + pp, min64(kStrip, kc - pp), q * NR, int(min64(NR, n - q * NR)),
                              dst + (q - q0) * pstride + pp * NR, first, kAhead, kc - pp);
      return;
    }
  }
  for (int64_t q = q0; q < q1; ++q)
    B.template pack<NR>(p0, kc, q * NR, int(min64(NR, n - q * NR)), dst + (q - q0) * pstride, first);
}

// Runs team(nt, tid) on nth threads. One thread runs it as a plain call: an
// OpenMP region of one thread still builds a team, and inside another region
// (conv's Winograd dweight: 16 GEMMs of M = F, N = C per block, about 2 us of
// arithmetic each) that nested team cost about as much as the GEMM itself.
// The team's barriers are skipped when nt == 1 (orphaned, they would bind to
// the caller's region).
template <class F>
void run_team(int nth, F&& team) {
  if (nth > 1) {
#pragma omp parallel num_threads(nth)
    team(omp_get_num_threads(), omp_get_thread_num());
  } else {
    team(1, 0);
  }
}

// Splits [0, total) into `parts` nearly equal steps no longer than `step`.
FASTNN_INLINE int64_t balanced_step(int64_t total, int64_t step, int64_t align) {
  const int64_t nsteps = ceil_div(total, step);
  return min64(step, ceil_div(ceil_div(total, nsteps), align) * align);
}

// --- a transposed B read in place: skinny dX ------------------------------------
//
// dX = dZ @ W^T at a small batch (64 x 4096 against 4096 x 4096 weights): B is
// larger than the caches and each of its elements serves only m rows, and the
// general path packs every B panel through a 16 x 16 register transpose, about
// a sixth of the time on one core (77% of the probe against the forward's 86%).
// The columns of this B are W's rows, contiguous in k, so here B is never
// packed: the tile broadcasts it from NC of those rows in place, and its
// vectors run down C's columns instead, over A packed k-major in groups of G
// rows (RV vectors). A is small and is packed once, whole. Each thread
// accumulates the C^T columns of the chunk it claimed across the K blocks in
// a buffer of its own (contiguous vectors), and writes them to C transposed
// after the last. Each C element is summed in k order, K block by K block, as
// in the general path: the same bits at any thread count.
template <class T>
struct TallTB {
  using S = simd::Vec<T>;
  static constexpr int VW = S::W, RV = 4, G = RV * VW;
  static constexpr int NC = 6;             // B columns per tile: RV * NC = 24 accumulators
  static constexpr int64_t kChunkTiles = 8;  // tiles a thread claims at a time (48 columns)
  // Used where rows fill the groups to within 1/8 (m = 57..64, 114..128, ...).
  static bool fits(int64_t m) { return m >= G - G / 8 && ceil_div(m, G) * G * 8 <= m * 9; }
};

// ct[jj * ldct + i] (+)= sum_p ap[p * G + i] * bcol[jj][p] for the G rows i and
// the NC columns jj of one tile; `pf` prefetches the next tile's B lines.
template <class T>
FASTNN_INLINE void tile_tb(int64_t kc, const T* __restrict ap, const T* const (&bcol)[TallTB<T>::NC],
                           T* __restrict ct, int64_t ldct, bool load, PanelPrefetch<T> pf) {
  using L = TallTB<T>;
  using S = typename L::S;
  using V = typename S::V;
  constexpr int RV = L::RV, NC = L::NC, VW = L::VW, G = L::G;
  const T* b[NC];
#pragma GCC unroll 8
  for (int jj = 0; jj < NC; ++jj) b[jj] = bcol[jj];
  V acc[RV][NC];
#pragma GCC unroll 8
  for (int v = 0; v < RV; ++v)
#pragma GCC unroll 8
    for (int jj = 0; jj < NC; ++jj) acc[v][jj] = S::zero();
#pragma GCC unroll 2
  for (int64_t p = 0; p < kc; ++p) {
    V a[RV];
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) a[v] = S::load(ap + p * G + v * VW);
    if (p & 1) pf.step();
#pragma GCC unroll 8
    for (int jj = 0; jj < NC; ++jj) {
      const V bb = S::broadcast(b[jj] + p);
#pragma GCC unroll 8
      for (int v = 0; v < RV; ++v) acc[v][jj] = S::fma(a[v], bb, acc[v][jj]);
    }
  }
#pragma GCC unroll 8
  for (int jj = 0; jj < NC; ++jj)
#pragma GCC unroll 8
    for (int v = 0; v < RV; ++v) {
      T* cp = ct + jj * ldct + v * VW;
      S::store(cp, load ? S::add(S::load(cp), acc[v][jj]) : acc[v][jj]);
    }
}

// C (m, n) (+)= A @ B for a transposed B (B.rs == 1) read in place (see TallTB).
template <class T, class ASrc>
void gemm_tall_tb(int64_t m, int64_t n, int64_t k, const ASrc& A, const StridedB<T>& B, T* c, int64_t ldc,
                  bool accumulate) {
  using L = TallTB<T>;
  constexpr int G = L::G, NC = L::NC;
  constexpr int64_t kChunk = L::kChunkTiles;
  const int64_t groups = ceil_div(m, G), mp = groups * G;
  const int64_t kcb = balanced_step(k, Blocking<T>::KC, 8), nkb = ceil_div(k, kcb);
  const int64_t ntiles = ceil_div(n, NC), nchunks = ceil_div(ntiles, kChunk);
  // Group g of A: k x G, k-major, K block after K block (block pc starts at pc * G).
  T* apack = static_cast<T*>(scratch(kPackA, size_t(mp * k) * sizeof(T)));
  const int nth = int(min64(num_threads(), nchunks));
  int64_t next_chunk = 0;
  auto team = [&](const int nt, const int tid) {
    for (int64_t u = tid; u < groups * nkb; u += nt) {
      const int64_t g = u / nkb, pc = u % nkb * kcb;
      A.template pack<G>(g * G, int(min64(G, m - g * G)), pc, min64(kcb, k - pc), apack + g * G * k + pc * G);
    }
    if (nt > 1) {
#pragma omp barrier
    }
    T* ct = static_cast<T*>(scratch(kPackOwn, size_t(kChunk * NC * mp) * sizeof(T)));
    for (;;) {
      const int64_t ch = __atomic_fetch_add(&next_chunk, 1, __ATOMIC_RELAXED);
      if (ch >= nchunks) break;
      const int64_t t0 = ch * kChunk, t1 = min64(t0 + kChunk, ntiles);
      for (int64_t pc = 0; pc < k; pc += kcb) {
        const int64_t kc = min64(kcb, k - pc);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t j0 = t * NC;
          const T* bcol[NC];
          for (int jj = 0; jj < NC; ++jj) bcol[jj] = B.b + pc + min64(j0 + jj, n - 1) * B.cs;  // past n: a repeat
          // The next tile's B lines: the next in this chunk, or the chunk's first in the next K block.
          const int64_t tn = t + 1 < t1 ? t + 1 : t0, pn = t + 1 < t1 ? pc : pc + kc;
          for (int64_t g = 0; g < groups; ++g) {
            const auto pf = pn < k ? panel_prefetch<NC>(B, pn, min64(kcb, k - pn), tn * NC, min64(NC, n - tn * NC),
                                                         g, groups, kc / 2)
                                   : PanelPrefetch<T>{};
            tile_tb(kc, apack + g * G * k + pc * G, bcol, ct + (t - t0) * NC * mp + g * G, mp, pc > 0, pf);
          }
        }
      }
      const int64_t jb = t0 * NC, je = min64(t1 * NC, n);
      for (int64_t i = 0; i < m; ++i) {
        T* crow = c + i * ldc;
        for (int64_t j = jb; j < je; ++j) crow[j] = (accumulate ? crow[j] : T(0)) + ct[(j - jb) * mp + i];
      }
    }
  };
  run_team(nth, team);
}

}  // namespace gemm_detail

// C (m, n) = epilogue(A @ B (+ C when accumulate)); A and B are sources (see
// StridedA/StridedB). Handles every size, including 0 and 1.
template <class T, class ASrc, class BSrc, class Ep>
void gemm_engine(int64_t m, int64_t n, int64_t k, const ASrc& A, const BSrc& B, T* c, int64_t ldc,
                 bool accumulate, const Ep& ep) {
  using namespace gemm_detail;
  using Bl = Blocking<T>;
  constexpr int MR = Bl::MR, NR = Bl::NR;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if constexpr (IsActBlock<Ep>::value) {
      if (!accumulate)
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = T(0);
      ep.fn(ep, c, ldc, 0, 0, m, n);
    } else {
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = ep.apply(i, j, accumulate ? c[i * ldc + j] : T(0));
    }
    return;
  }

  // A transposed B too large for the caches, against a few rows of A (dX of a
  // Linear layer at a small batch): read in place, without packing B.
  if constexpr (IsStridedB<BSrc>::value && std::is_same_v<Ep, NoEpilogue> && FASTNN_VBYTES == 64) {
    if (B.rs == 1 && B.cs != 1 && TallTB<T>::fits(m) && m <= 4 * TallTB<T>::G &&
        double(k) * double(n) * sizeof(T) > 8.0 * (1 << 20)) {
      gemm_tall_tb(m, n, k, A, B, c, ldc, accumulate);
      return;
    }
  }

  // Below ~1 MFLOP a second thread costs more than it saves.
  const double flops = 2.0 * double(m) * double(n) * double(k);
  const int nth = flops < 1e6 ? 1 : num_threads();

  // Block sizes, balanced so no block is a sliver (k = 784 -> 3 x 262, not 384+384+16).
  const int64_t kcb = balanced_step(k, Bl::KC, 8);
  const int64_t mcb = balanced_step(m, Bl::MCB, MR);
  const int64_t npan_total = ceil_div(n, NR);

  // Thread grid: split rows (tm = nth) when that balances clearly better, or
  // about as well while each thread gets 32 row panels or more; otherwise
  // columns, which share nothing but the barrier per block.
  // The row split shares the B block (each thread packs a part and reads the
  // others' from their caches) and packs each A row once; the column split
  // keeps B private but has each thread pack the whole A block. With many
  // rows, sharing B costs less than packing A twice (2 threads: 1024^3
  // 433 -> 450-464 GFLOP/s, 2048^3 438-442 -> 468-471, 4096^3 431-440 ->
  // 472-483, conv's dX GEMM (576, 256, 64) 327-339 -> 389-391; the AVX2 path
  // at 1024^3 and 2048^3 219-224 -> 247-251); with 16 row panels each it
  // cost 10-13% at (256, 1024, 1024), and more with fewer.
  int tn = nth, tm = 1;
  if (nth > 1) {
    const int64_t mpan_blk = ceil_div(mcb, MR);
    const int64_t cost_cols = ceil_div(min64(npan_total, nth * ceil_div(Bl::NCL2, NR)), nth) * mpan_blk;
    const int64_t cost_rows = ceil_div(mpan_blk, nth) * min64(npan_total, nth * ceil_div(Bl::NCL2, NR));
    const bool many_rows = mpan_blk >= 32 * nth;
    if (many_rows ? cost_rows <= cost_cols + cost_cols / 16 : cost_rows + cost_rows / 8 < cost_cols) tn = 1, tm = nth;
  }
  // Column block: tn slices of at most NCL2 each (a row split: one of NCL2_ROWS),
  // balanced across jc steps.
  const int64_t slice_pan = tm > 1 ? ceil_div(Bl::NCL2_ROWS, NR) : tn * ceil_div(Bl::NCL2, NR);
  const int64_t ncb = balanced_step(npan_total, slice_pan, tn) * NR;

  // The packed A block. No thread reads A panels another one packed: with a
  // row split each thread packs the row panels it multiplies, in this shared
  // buffer; with a column split each multiplies every row panel and packs the
  // whole block into a buffer of its own (see the team). Reading a half that
  // the other core packed (lines its cache holds modified) cost more than
  // packing it again: 2 threads, (256, 1024, 1024) 352-376 -> 399-418
  // GFLOP/s, 1024^3 403-406 -> 423-430, 2048^3 406-416 -> 428-433.
  const int64_t ablock = ceil_div(mcb, MR) * MR * kcb;
  T* const apack_rows = static_cast<T*>(scratch(kPackA, size_t(ablock) * sizeof(T)));
  // With a column split each thread keeps its slice at a fixed place in the B
  // buffer (slot tj, `slot` panels long), so it may repack without waiting.
  const int64_t slot = ceil_div(min64(ncb / NR, npan_total), tn);

  // Column split: threads take chunks of `chunk` column panels from a shared
  // counter (one per A block) instead of fixed halves, so a thread slowed down
  // by another process on its core does not hold the other one back. Each packs
  // the B panels of the chunk it took into its own slot. One thread takes the
  // same path (all the chunks are its own), so it streams B as two do.
  constexpr int kMaxBlocks = 512;
  // B is streamed (see the chunk loop) for blocks of 3 to 32 row panels (below 3 the
  // tiles are too few to prefetch a panel's lines one every other k step), and
  // only a B larger than 2 MiB, beyond a core's L2: a Linear layer's weights at a
  // batch of 256 or less (the chunk-by-chunk pack waited on L3 for them; 2 threads,
  // (256, 1024, 1024) forward 379-408 -> 443-464 GFLOP/s, (128, 1024, 1024)
  // 413-418 -> 473, dX (256, 784, 1024) 378-454 -> 435-457). A B that stays in
  // the caches is better packed chunk by chunk (each A micro-panel then stays in
  // L1 across the chunk's panels; conv 32->32's per-image GEMM, B 1.2 MiB, measured
  // 4% slower streamed).
  constexpr int64_t kStreamMinPanels = 3, kStreamMaxPanels = 32;
  const bool stream_b = double(k) * double(n) * sizeof(T) > 2.0 * (1 << 20);
  const int64_t nblocks = ceil_div(m, mcb) * ceil_div(k, kcb);
  const bool dynamic = tm == 1 && nblocks <= kMaxBlocks;
  // Chunks as large as a thread's L2 slice allows (NCL2), balanced: each A
  // micro-panel then serves up to NCL2 / NR B panels before the next one is read
  // (2 threads, 256..2048 x 1024..2048: 245-277 -> 272-306 GFLOP/s against
  // chunks of a quarter of a thread's share, 2 per thread at n = 1024).
  // The number of chunks is a multiple of the thread count, so the last round
  // of claims does not leave one thread a whole chunk behind (fp64 at n = 1024:
  // 43 panels in 3 chunks of 15 ran 54% of the probe on 2 threads).
  const int64_t chunk_cap = min64(ceil_div(npan_total, nth), ceil_div(Bl::NCL2, NR));
  const int64_t chunk = ceil_div(npan_total, ceil_div(ceil_div(npan_total, chunk_cap), nth) * nth);
  const int64_t nchunks = ceil_div(npan_total, chunk);
  // Chunk boundaries evenly spread (sizes differ by at most one panel, the larger
  // ones last), so the chunk holding a partial last panel is not also the one
  // short of panels: n = 784 is 16 panels + 16 columns, 9 + 8 panels gave the
  // threads 432 and 352 columns; 8 + 9 gives 384 and 400.
  auto chunk_begin = [&](int64_t ch) { return ch * npan_total / nchunks; };
  int64_t next_chunk[kMaxBlocks];
  if (dynamic)
    for (int64_t b = 0; b < nblocks; ++b) next_chunk[b] = 0;
  T* bpack = static_cast<T*>(scratch(kPackB, size_t(kcb * max64(tn * slot, nth * chunk) * NR) * sizeof(T)));

  // The team's work: thread tid of nt (see run_team).
  auto team = [&](const int nt, const int tid) {
    // A team smaller than asked for (nested call, OMP limits) falls back to rows x 1.
    const int gm = nt == nth ? tm : nt, gn = nt == nth ? tn : 1;
    const int ti = tid / gn, tj = tid % gn;
    T* const apack = gn > 1 ? static_cast<T*>(scratch(kPackOwn, size_t(ablock) * sizeof(T))) : apack_rows;
    const int64_t apart = gn > 1 ? 1 : nt, apart_id = gn > 1 ? 0 : tid;  // the part of A this thread packs
    int64_t block = 0;
    for (int64_t ic = 0; ic < m; ic += mcb) {
      const int64_t mc = min64(mcb, m - ic);
      const int64_t mpan = ceil_div(mc, MR);
      for (int64_t pc = 0; pc < k; pc += kcb) {
        const int64_t kc = min64(kcb, k - pc);
        const bool load_c = pc > 0 || accumulate;
        const bool last = pc + kc >= k;

        // Pack this A block. A shared B block (row split) must first be released
        // by every thread; column-split B slices are private.
        if (gm > 1 && block > 0) {
#pragma omp barrier
        }
        const int64_t this_block = block++;
        for (int64_t r = apart_id * mpan / apart; r < (apart_id + 1) * mpan / apart; ++r)
          A.template pack<MR>(ic + r * MR, int(min64(MR, mc - r * MR)), pc, kc, apack + r * MR * kc);

        if (dynamic && nt == nth) {
          // A skinny block (few row panels, each packed B panel used only mpan
          // times) with a B too large for the caches streams it (below). Its
          // threads take the chunks in a fixed order, thread tid the chunks tid,
          // tid + nt, ..., in every K block: each then owns its C columns, so it
          // goes on to the next block without waiting for the others, and
          // knows which chunk comes next (its first panel is prefetched while
          // this chunk's last is multiplied). The barrier per block cost 4-7%
          // at (64, 4096, 4096) forward on 2 threads (413-426 -> 441-444
          // GFLOP/s, the rate of two independent one-thread GEMMs).
          bool streams = false;
          if constexpr (IsStridedB<BSrc>::value)
            streams = stream_b && mpan >= kStreamMinPanels && mpan <= kStreamMaxPanels && (B.cs == 1 || B.rs == 1);
          // Otherwise no chunk of this block is claimed before every thread is
          // done with the last block's: C accumulates block after block.
          if (nt > 1 && !streams) {
#pragma omp barrier
          }
          T* my_slot = bpack + tid * chunk * NR * kcb;
          for (int64_t fixed = tid;; fixed += nt) {
            const int64_t ch = streams ? fixed : __atomic_fetch_add(&next_chunk[this_block], 1, __ATOMIC_RELAXED);
            if (ch >= nchunks) break;
            const int64_t q0 = chunk_begin(ch), q1 = chunk_begin(ch + 1);
            if constexpr (IsStridedB<BSrc>::value) {
              if (streams) {
                // B panel by panel, packed right before its tiles, with the next
                // panel's source prefetched by those tiles. A whole panel of a
                // row-major B is packed by its first tile as it multiplies
                // (SourceRowsB). After the chunk's last panel comes this thread's
                // next chunk: in this block, or its first in the next one.
                const bool more_here = ch + nt < nchunks;
                const int64_t next_q = more_here ? chunk_begin(ch + nt)
                                       : this_block + 1 < nblocks ? chunk_begin(tid) : -1;
                const int64_t next_pc = more_here ? pc : pc + kc < k ? pc + kc : 0;
                for (int64_t q = q0; q < q1; ++q) {
                  const int64_t j = q * NR;
                  const int nr = int(min64(NR, n - j));
                  const bool packs = B.cs == 1 && nr == NR;
                  if (!packs) B.template pack<NR>(pc, kc, j, nr, my_slot, ic == 0);
                  const int64_t pq = q + 1 < q1 ? q + 1 : next_q, ppc = q + 1 < q1 ? pc : next_pc;
                  for (int64_t r = 0; r < mpan; ++r) {
                    const int64_t i = ic + r * MR;
                    const int mr = int(min64(MR, m - i));
                    const T* ap = apack + r * MR * kc;
                    T* cp = c + i * ldc + j;
                    const auto pf = pq >= 0 ? panel_prefetch<NR>(B, ppc, min64(kcb, k - ppc), pq * NR,
                                                                 min64(NR, n - pq * NR), r, mpan, kc / 2)
                                            : PanelPrefetch<T>{};
                    if (r == 0 && packs) {
                      tile(kc, ap, my_slot, cp, ldc, i, j, mr, nr, load_c, last, ep, pf,
                           SourceRowsB<T>{B.b + pc * B.rs + j, B.rs, my_slot});
                    } else {
                      tile(kc, ap, my_slot, cp, ldc, i, j, mr, nr, load_c, last, ep, pf);
                    }
                  }
                }
                continue;
              }
            }
            pack_b_panels<NR>(B, pc, kc, q0, q1, n, my_slot, NR * kcb, ic == 0, mpan <= 32);
            for (int64_t r = 0; r < mpan; ++r) {
              const int64_t i = ic + r * MR;
              const int mr = int(min64(MR, m - i));
              const T* ap = apack + r * MR * kc;
              for (int64_t q = q0; q < q1; ++q) {
                const int64_t j = q * NR;
                tile(kc, ap, my_slot + (q - q0) * NR * kcb, c + i * ldc + j, ldc, i, j, mr, int(min64(NR, n - j)),
                     load_c, last, ep);
              }
            }
          }
          continue;
        }

        for (int64_t jc = 0; jc < n; jc += ncb) {
          const int64_t nc = min64(ncb, n - jc);
          const int64_t npan = ceil_div(nc, NR);
          const int64_t q0 = tj * npan / gn, q1 = (tj + 1) * npan / gn;
          if (gm > 1 && jc > 0) {
#pragma omp barrier
          }
          // Column split: pack exactly the slice this thread multiplies. Row split:
          // the threads sharing a slice pack it together.
          const int64_t pk0 = gm > 1 ? q0 + ti * (q1 - q0) / gm : q0;
          const int64_t pk1 = gm > 1 ? q0 + (ti + 1) * (q1 - q0) / gm : q1;
          // Panels at a fixed stride (kcb, not this block's kc): a thread that already
          // packs a shorter last K block must not reach into its neighbour's slot.
          auto bpanel = [&](int64_t q) { return bpack + (gm > 1 ? q : tj * slot + q - q0) * NR * kcb; };
          if (pk1 > pk0)
            pack_b_panels<NR>(B, pc, kc, jc / NR + pk0, jc / NR + pk1, n, bpanel(pk0), NR * kcb, ic == 0,
                              mpan <= 32);
          if (gm > 1) {
#pragma omp barrier
          }

          const int64_t r0 = ti * mpan / gm, r1 = (ti + 1) * mpan / gm;
          for (int64_t r = r0; r < r1; ++r) {
            const int64_t i = ic + r * MR;
            const int mr = int(min64(MR, m - i));
            const T* ap = apack + r * MR * kc;
            for (int64_t q = q0; q < q1; ++q) {
              const int64_t j = jc + q * NR;
              tile(kc, ap, bpanel(q), c + i * ldc + j, ldc, i, j, mr, int(min64(NR, n - j)),
                   load_c, last, ep);
            }
          }
        }
      }
    }
  };
  run_team(nth, team);
}

// GemmArgs form: strided A and B, beta 0 or 1.
template <class T, class Ep>
void gemm_engine(const GemmArgs<T>& g, const Ep& ep) {
  gemm_engine(g.m, g.n, g.k, gemm_detail::StridedA<T>{g.a, g.a_rs, g.a_cs},
              gemm_detail::StridedB<T>{g.b, g.b_rs, g.b_cs}, g.c, g.ldc, g.beta != T(0), ep);
}

}  // namespace fastnn::cpu::FASTNN_ISA
