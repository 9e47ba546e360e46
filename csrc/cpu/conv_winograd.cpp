// Winograd F(2x2, 3x3) convolution (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", CVPR 2016) for 3x3 stride-1 convolutions,
// multiplied on the GEMM engine's micro-kernel.
//
// Each 2x2 block of outputs (a tile) of output channel f is
//   Y = A^T [ sum_c U[f, c] (.) V[c] ] A,   U = G g G^T  (4x4, from the 3x3 filter g[f, c])
//                                          V = B^T d B  (4x4, from the tile's input patch d[c])
// so the 36 multiply-adds per (f, c) and tile of a direct 3x3 convolution
// become 16: one GEMM for each of the 16 positions xi of the 4x4 transform domain,
//   M[xi] (F, tiles) = U[xi] (F, C) @ V[xi] (C, tiles).
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
// Backward:
//   dx is the same convolution of dz with each filter turned 180 degrees and C,
//      F swapped, padding 2 - p (hence p <= 2);
//   dweight = G^T dU G with dU[xi] (F, C) = sum over tiles dM[xi] (F, tiles) @
//      V[xi]^T (tiles, C), dM = A dY A^T: a GEMM whose depth is the tiles.
// Outputs past OH/OW (odd sizes) are computed and dropped; their dY is zero.
// Every transform is a few adds, vectorized along a tile row.
//
// Forward and dx run in blocks of whole tile rows (any image), sized so the
// block's V and M stay in half the core's L2; threads take blocks. V is written
// straight into the micro-kernel's B-panel layout, U is packed once per call as
// its A panels. dweight sums fixed groups of the batch in block order, so its
// bits do not depend on the thread count (as conv.cpp's im2col path).
#include "cpu/conv_winograd.h"

#include <omp.h>

#include <cstring>

#include "cpu/gemm_engine.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace {

using gemm_detail::ceil_div;
using gemm_detail::max64;
using gemm_detail::min64;

// One 3x3 stride-1 convolution: x (N, C, H, W) -> y (N, F, OH, OW).
struct Geom {
  int64_t n, c, h, w, f, ph, pw, oh, ow;
  int64_t th, tw;  // 2x2 output tiles down / across: ceil(OH / 2), ceil(OW / 2)
};

Geom make_geom(int64_t n, int64_t c, int64_t h, int64_t w, int64_t f, int64_t ph, int64_t pw) {
  const int64_t oh = h + 2 * ph - 2, ow = w + 2 * pw - 2;
  return Geom{n, c, h, w, f, ph, pw, oh, ow, ceil_div(oh, 2), ceil_div(ow, 2)};
}

// Where transform-domain values go: (xi, row r, tile l) lives at
//   base + xi * plane + (l / nr) * pstride + r * rstride + l % nr,
// so a run of tiles is contiguous up to the next multiple of nr.
// Micro-kernel B panels: nr = NR, pstride = rows * NR, rstride = NR.
// Plain rows of length ld: nr = ld, pstride = 0, rstride = ld.
template <class T>
struct Layout {
  T* base;
  int64_t plane, nr, pstride, rstride;
  FASTNN_INLINE T* at(int xi, int64_t r, int64_t l) const {
    return base + xi * plane + (l / nr) * pstride + r * rstride + l % nr;
  }
};

#if FASTNN_VBYTES >= 32
// Maps up to 2 W wide (W: float lanes, 16 with AVX-512, 8 with AVX2; CIFAR's
// 32 and 16, MNIST's 28 and 14, ...) have at most W tiles per tile row. The
// per-row code below runs such short rows mostly scalar (its loops' vector
// bodies are W wide); these take up to W tiles per register instead: two tile
// rows of a map at most W wide with at most W / 2 tiles per row (a pair: lanes
// [0, TW) row A, [TW, 2 TW) row B), or one tile row (lanes [0, TW); image
// columns 0 .. W - 1 in one register, W .. 2 W - 1 in another). The values of a
// tile position come from those two registers by one two-source permutation,
// lanes outside the image zeroed; the adds are the per-row code's, in its
// order, so the results are the same bits.
namespace wide {
// L: simd::Vec<float> (zero, add, store, W) plus what these transforms need.
#if FASTNN_VBYTES == 64
struct L : simd::Vec<float> {
  using simd::Vec<float>::store;  // unmasked, beside the masked one below
  using Mask = __mmask16;
  struct Pick {
    __m512i idx;  // b's lanes as W + lane
    __mmask16 valid;
  };
  static Pick make(const int32_t* idx, unsigned valid) {
    return Pick{_mm512_loadu_si512(idx), __mmask16(valid)};
  }
  static FASTNN_INLINE V pick(V a, const Pick& p, V b) { return _mm512_maskz_permutex2var_ps(p.valid, a, p.idx, b); }
  static FASTNN_INLINE Mask first(int64_t n) { return __mmask16(n >= 16 ? 0xFFFF : (1u << n) - 1); }
  static FASTNN_INLINE V load(const float* p, int64_t n) {
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(first(n), p);
  }
  static FASTNN_INLINE void store(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static FASTNN_INLINE V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static FASTNN_INLINE V neg(V v) { return _mm512_xor_ps(v, _mm512_set1_ps(-0.0f)); }
  // Lane j: e[j / 2 + shift] for even j, o[j / 2 + shift] for odd j.
  static FASTNN_INLINE V interleave(V e, V o, int64_t shift) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    return _mm512_permutex2var_ps(e, _mm512_add_epi32(lo, _mm512_set1_epi32(int(shift))), o);
  }
};
#else
struct L : simd::Vec<float> {
  using simd::Vec<float>::store;
  using Mask = __m256i;
  struct Pick {
    __m256i idx;  // the lane within its source
    __m256 from_b, valid;  // all ones where the lane comes from b / is inside
  };
  static Pick make(const int32_t* idx, unsigned valid) {
    alignas(32) int32_t lane[8], from_b[8], ok[8];
    for (int t = 0; t < 8; ++t) lane[t] = idx[t] & 7, from_b[t] = idx[t] >= 8 ? -1 : 0, ok[t] = (valid >> t) & 1 ? -1 : 0;
    return Pick{_mm256_load_si256(reinterpret_cast<const __m256i*>(lane)),
                _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(from_b))),
                _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(ok)))};
  }
  static FASTNN_INLINE V pick(V a, const Pick& p, V b) {
    const V v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(a, p.idx), _mm256_permutevar8x32_ps(b, p.idx), p.from_b);
    return _mm256_and_ps(v, p.valid);
  }
  static FASTNN_INLINE Mask first(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static FASTNN_INLINE V load(const float* p, int64_t n) { return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first(n)); }
  static FASTNN_INLINE void store(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static FASTNN_INLINE V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static FASTNN_INLINE V neg(V v) { return _mm256_xor_ps(v, _mm256_set1_ps(-0.0f)); }
  static FASTNN_INLINE V interleave(V e, V o, int64_t shift) {
    const __m256i half = _mm256_add_epi32(_mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), _mm256_set1_epi32(int(shift)));
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(e, half), _mm256_permutevar8x32_ps(o, half), 0xAA);
  }
};
#endif
using V = L::V;
constexpr int W = L::W;

// Where lane t finds column 2 u + first of its tile row (u: its tile in the row);
// zero where that column is outside [0, width) or the lane holds no tile.
inline L::Pick pick_of(bool pair, int64_t tw, int64_t width, int64_t first) {
  int32_t idx[W];
  unsigned valid = 0;
  const int64_t lanes = pair ? 2 * tw : tw;
  for (int t = 0; t < W; ++t) {
    const int64_t u = pair && t >= tw ? t - tw : t, col = 2 * u + first;
    const bool ok = t < lanes && col >= 0 && col < width;
    idx[t] = ok ? int32_t((pair && t >= tw ? W : 0) + col) : 0;
    valid |= unsigned(ok) << t;
  }
  return L::make(idx, valid);
}
// n (<= W) values at p, zeros past them; zeros when p is null (a row outside).
FASTNN_INLINE V row(const float* p, int64_t n) { return p ? L::load(p, n) : L::zero(); }
// A tile row's two source registers: the pair's rows (p: row A, q: row B, each
// `width` long) or one row's columns 0 .. W - 1 and W .. 2 W - 1 (q unused).
FASTNN_INLINE void sources(bool pair, const float* p, const float* q, int64_t width, V& a, V& b) {
  if (pair) {
    a = row(p, width), b = row(q, width);
  } else {
    a = row(p, width < W ? width : W), b = row(p && width > W ? p + W : nullptr, width - W);
  }
}

// The input transform's picks (padded column 2t + j is image column 2t + j - pw).
struct InputPicks {
  L::Pick e0, o0, e1, o1;  // E[t], O[t], E[t + 1], O[t + 1]: padded columns 2t .. 2t + 3
  L::Mask store;
};
inline InputPicks input_picks(bool pair, int64_t tw, int64_t w, int64_t pw) {
  return {pick_of(pair, tw, w, -pw), pick_of(pair, tw, w, 1 - pw), pick_of(pair, tw, w, 2 - pw),
          pick_of(pair, tw, w, 3 - pw), L::first(pair ? 2 * tw : tw)};
}

// V = B^T d B of a register of tiles: a[i], b[i] the two source registers of
// the tiles' padded row i. Per row combination k: (E[t] - E[t + 1], O[t] +
// E[t + 1], E[t + 1] - O[t], O[t] - O[t + 1]). v: position 0's run.
FASTNN_INLINE void input_tiles(const V* a, const V* b, const InputPicks& ip, float* v, int64_t plane) {
  const V ca[4] = {L::sub(a[0], a[2]), L::add(a[1], a[2]), L::sub(a[2], a[1]), L::sub(a[1], a[3])};
  const V cb[4] = {L::sub(b[0], b[2]), L::add(b[1], b[2]), L::sub(b[2], b[1]), L::sub(b[1], b[3])};
#pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    const V e0 = L::pick(ca[k], ip.e0, cb[k]), o = L::pick(ca[k], ip.o0, cb[k]);
    const V e1 = L::pick(ca[k], ip.e1, cb[k]), o1 = L::pick(ca[k], ip.o1, cb[k]);
    float* v0 = v + 4 * k * plane;
    L::store(v0, ip.store, L::sub(e0, e1));
    L::store(v0 + plane, ip.store, L::add(o, e1));
    L::store(v0 + 2 * plane, ip.store, L::sub(e1, o));
    L::store(v0 + 3 * plane, ip.store, L::sub(o, o1));
  }
}

// dM = A dY A^T of a register of tiles: (u0, u1) the source registers of the
// tiles' first dY row, (w0, w1) of their second; a, b, c, e are its columns
// 2t, 2t + 1 of those rows (zero past OW). d: position 0's run.
struct GradPicks {
  L::Pick even, odd;
  L::Mask store;
};
inline GradPicks grad_picks(bool pair, int64_t tw, int64_t ow) {
  return {pick_of(pair, tw, ow, 0), pick_of(pair, tw, ow, 1), L::first(pair ? 2 * tw : tw)};
}
FASTNN_INLINE void grad_tiles(V u0, V u1, V w0, V w1, const GradPicks& gp, float* d, int64_t plane) {
  const V a = L::pick(u0, gp.even, u1), b = L::pick(u0, gp.odd, u1);
  const V c = L::pick(w0, gp.even, w1), e = L::pick(w0, gp.odd, w1);
  const V s1 = L::add(a, c), t1 = L::add(b, e), s2 = L::sub(a, c), t2 = L::sub(b, e), nc = L::neg(c);
  const V m[16] = {a,  L::add(a, b),   L::sub(a, b),   L::neg(b),  s1, L::add(s1, t1), L::sub(s1, t1), L::neg(t1),
                   s2, L::add(s2, t2), L::sub(s2, t2), L::neg(t2), nc, L::sub(nc, e),  L::sub(e, c),   e};
#pragma GCC unroll 16
  for (int xi = 0; xi < 16; ++xi) L::store(d + xi * plane, gp.store, m[xi]);
}

// Y = A^T M A of a register of tiles (M[xi] at m + xi * mplane, `lanes` tiles):
// out[0] = the first output row of the tiles from lane 0 (columns 2t, 2t + 1
// of tile t), out[1] = that of the tiles from lane `shift` (a pair's row B, or
// a single row's columns W .. 2 W - 1), out[2], out[3] the second output rows.
FASTNN_INLINE void output_tiles(const float* m, int64_t mplane, int64_t lanes, int64_t shift, V* out) {
  V q[16];
#pragma GCC unroll 16
  for (int xi = 0; xi < 16; ++xi) q[xi] = L::load(m + xi * mplane, lanes);
  auto sum3 = [](V u, V v, V w) { return L::add(L::add(u, v), w); };
  auto dif3 = [](V u, V v, V w) { return L::sub(L::sub(u, v), w); };
  const V a0 = sum3(q[0], q[4], q[8]), a1 = sum3(q[1], q[5], q[9]);
  const V a2 = sum3(q[2], q[6], q[10]), a3 = sum3(q[3], q[7], q[11]);
  const V b0 = dif3(q[4], q[8], q[12]), b1 = dif3(q[5], q[9], q[13]);
  const V b2 = dif3(q[6], q[10], q[14]), b3 = dif3(q[7], q[11], q[15]);
  const V ea = sum3(a0, a1, a2), oa = dif3(a1, a2, a3), eb = sum3(b0, b1, b2), ob = dif3(b1, b2, b3);
  out[0] = L::interleave(ea, oa, 0), out[1] = L::interleave(ea, oa, shift);
  out[2] = L::interleave(eb, ob, 0), out[3] = L::interleave(eb, ob, shift);
}
}  // namespace wide
#endif

// Elements of scratch input_transform needs.
int64_t input_transform_buf(const Geom& g) { return (2 * g.tw + 2) + 8 * (g.tw + 1); }

// V = B^T d B of every tile of tile rows [g0, g1) (tile row gi: image gi / TH,
// row gi % TH; tile l = (gi - g0) * TW + column) of x (N, C, H, W), into dst
// (rows: channels). Rows of B^T d first, over the four image rows of the tile
// row (padded column j is image column j - pw), split into even (E) and odd (O)
// columns; then the columns of each tile:
//   (E[t] - E[t+1], O[t] + E[t+1], E[t+1] - O[t], O[t] - O[t+1]).
// Rows outside the image read a zero row; columns outside it are handled by a
// scalar loop at both ends, so the image is read in place, never copied.
template <class T>
void input_transform(const Geom& g, const T* x, int64_t g0, int64_t g1, const Layout<T>& dst, T* buf) {
  const int64_t wp = 2 * g.tw + 2, te = g.tw + 1;
  T* zero = buf;         // wp zeros
  T* eo = buf + wp;      // E_k at eo + 2k te, O_k at eo + (2k + 1) te
  for (int64_t j = 0; j < wp; ++j) zero[j] = T(0);
  T *e0 = eo, *o0 = eo + te, *e1 = eo + 2 * te, *o1 = eo + 3 * te;
  T *e2 = eo + 4 * te, *o2 = eo + 5 * te, *e3 = eo + 6 * te, *o3 = eo + 7 * te;
  // t in [t_lo, t_hi): padded columns 2t and 2t + 1 both inside the image.
  const int64_t t_lo = min64((g.pw + 1) / 2, te);
  const int64_t t_hi = max64(t_lo, min64(te, (g.pw + g.w) / 2));
#if FASTNN_VBYTES >= 32
  wide::InputPicks picks[2];  // single tile rows, pairs
  bool picks_ready[2] = {false, false};
#endif
  for (int64_t gi = g0; gi < g1; ++gi) {
    const int64_t n = gi / g.th, ih0 = 2 * (gi % g.th) - g.ph, l0 = (gi - g0) * g.tw;
#if FASTNN_VBYTES >= 32
    if constexpr (sizeof(T) == 4) {
      // Up to W tiles per register (namespace wide): tile rows gi and gi + 1 of
      // an image at most W wide with at most W / 2 tiles per row, else tile row
      // gi alone (image rows ih0 .. ih0 + 3, or .. ih0 + 5 for a pair).
      using wide::W;
      if (g.w <= 2 * W && g.tw <= W) {
        const bool pair = g.w <= W && 2 * g.tw <= W && gi + 1 < g1 && (gi + 1) / g.th == n;
        if (dst.nr - l0 % dst.nr >= (pair ? 2 : 1) * g.tw) {
          if (!picks_ready[pair]) picks[pair] = wide::input_picks(pair, g.tw, g.w, g.pw), picks_ready[pair] = true;
          for (int64_t c = 0; c < g.c; ++c) {
            const float* xc = x + (n * g.c + c) * g.h * g.w;
            auto image_row = [&](int64_t i) { return ih0 + i >= 0 && ih0 + i < g.h ? xc + (ih0 + i) * g.w : nullptr; };
            wide::V ra[4], rb[4];
            for (int i = 0; i < 4; ++i) wide::sources(pair, image_row(i), image_row(i + 2), g.w, ra[i], rb[i]);
            wide::input_tiles(ra, rb, picks[pair], dst.at(0, c, l0), dst.plane);
          }
          gi += pair;
          continue;
        }
      }
    }
#endif
    for (int64_t c = 0; c < g.c; ++c) {
      const T* xc = x + (n * g.c + c) * g.h * g.w;
      const T* d[4];  // padded rows: d[i][j] = x[ih0 + i, j - pw]
      bool inside[4];
      for (int i = 0; i < 4; ++i) {
        const int64_t ih = ih0 + i;
        inside[i] = ih >= 0 && ih < g.h;
        d[i] = inside[i] ? xc + ih * g.w - g.pw : zero;
      }
      auto at = [&](int i, int64_t j) {
        return inside[i] && j >= g.pw && j < g.pw + g.w ? d[i][j] : T(0);
      };
      auto edge = [&](int64_t t) {
        const T a0 = at(0, 2 * t), a1 = at(1, 2 * t), a2 = at(2, 2 * t), a3 = at(3, 2 * t);
        const T b0 = at(0, 2 * t + 1), b1 = at(1, 2 * t + 1), b2 = at(2, 2 * t + 1), b3 = at(3, 2 * t + 1);
        e0[t] = a0 - a2, o0[t] = b0 - b2, e1[t] = a1 + a2, o1[t] = b1 + b2;
        e2[t] = a2 - a1, o2[t] = b2 - b1, e3[t] = a1 - a3, o3[t] = b1 - b3;
      };
      for (int64_t t = 0; t < t_lo; ++t) edge(t);
      const T *d0 = d[0], *d1 = d[1], *d2 = d[2], *d3 = d[3];
#pragma omp simd
      for (int64_t t = t_lo; t < t_hi; ++t) {
        e0[t] = d0[2 * t] - d2[2 * t];
        o0[t] = d0[2 * t + 1] - d2[2 * t + 1];
        e1[t] = d1[2 * t] + d2[2 * t];
        o1[t] = d1[2 * t + 1] + d2[2 * t + 1];
        e2[t] = d2[2 * t] - d1[2 * t];
        o2[t] = d2[2 * t + 1] - d1[2 * t + 1];
        e3[t] = d1[2 * t] - d3[2 * t];
        o3[t] = d1[2 * t + 1] - d3[2 * t + 1];
      }
      for (int64_t t = t_hi; t < te; ++t) edge(t);
      for (int64_t t0 = 0; t0 < g.tw;) {
        const int64_t l = l0 + t0, len = min64(g.tw - t0, dst.nr - l % dst.nr);
        T* run = dst.at(0, c, l);
        for (int k = 0; k < 4; ++k) {
          const T* E = eo + 2 * k * te + t0;
          const T* O = E + te;
          T* v0 = run + 4 * k * dst.plane;
          T* v1 = v0 + dst.plane;
          T* v2 = v1 + dst.plane;
          T* v3 = v2 + dst.plane;
#pragma omp simd
          for (int64_t t = 0; t < len; ++t) {
            v0[t] = E[t] - E[t + 1];
            v1[t] = O[t] + E[t + 1];
            v2[t] = E[t + 1] - O[t];
            v3[t] = O[t] - O[t + 1];
          }
        }
        t0 += len;
      }
    }
  }
}

// Elements of scratch grad_transform needs.
int64_t grad_transform_buf(const Geom& g) { return 2 * g.tw; }

// dM = A dY A^T of every tile of tile rows [g0, g1) of dy (N, F, OH, OW) (zero
// past OH/OW), into dst (rows: output channels). With the tile's rows (a, b)
// and (c, e): A dY = rows (a, b), (a + c, b + e), (a - c, b - e), (-c, -e),
// and each row (u, v) becomes (u, u + v, u - v, -v). Read in place: a second
// row past OH reads a zero row, a last column past OW is done by scalar code.
// bsum (F,), when given, gets += each channel's sum of dY: position 5 of dM is
// a + b + c + e, the tile's sum, so the bias gradient needs no pass of its own.
template <class T>
void grad_transform(const Geom& g, const T* dy, int64_t g0, int64_t g1, const Layout<T>& dst, T* buf,
                    double* bsum) {
  const int64_t p = g.oh * g.ow, tfull = g.ow / 2;  // tiles with both columns inside
  T* zero = buf;
  for (int64_t j = 0; j < 2 * g.tw; ++j) zero[j] = T(0);
#if FASTNN_VBYTES >= 32
  wide::GradPicks picks[2];  // single tile rows, pairs
  bool picks_ready[2] = {false, false};
#endif
  for (int64_t gi = g0; gi < g1; ++gi) {
    const int64_t n = gi / g.th, oh0 = 2 * (gi % g.th), l0 = (gi - g0) * g.tw;
#if FASTNN_VBYTES >= 32
    if constexpr (sizeof(T) == 4) {
      // Up to W tiles per register: tile rows gi and gi + 1 of a dY at most W
      // wide, else tile row gi alone (dY rows past OH read as zeros).
      using wide::W;
      if (g.ow <= 2 * W) {
        const bool pair = g.ow <= W && gi + 1 < g1 && (gi + 1) / g.th == n;
        if (dst.nr - l0 % dst.nr >= (pair ? 2 : 1) * g.tw) {
          if (!picks_ready[pair]) picks[pair] = wide::grad_picks(pair, g.tw, g.ow), picks_ready[pair] = true;
          for (int64_t f = 0; f < g.f; ++f) {
            const float* plane = dy + (n * g.f + f) * p;
            auto dy_row = [&](int64_t r) { return oh0 + r < g.oh ? plane + (oh0 + r) * g.ow : nullptr; };
            wide::V u0, u1, w0, w1;
            wide::sources(pair, dy_row(0), dy_row(2), g.ow, u0, u1);
            wide::sources(pair, dy_row(1), dy_row(3), g.ow, w0, w1);
            wide::grad_tiles(u0, u1, w0, w1, picks[pair], dst.at(0, f, l0), dst.plane);
          }
          gi += pair;
          continue;
        }
      }
    }
#endif
    for (int64_t f = 0; f < g.f; ++f) {
      const T* r0 = dy + (n * g.f + f) * p + oh0 * g.ow;
      const T* r1 = oh0 + 1 < g.oh ? r0 + g.ow : zero;
      T* d[16];
      d[0] = dst.at(0, f, l0);
      for (int xi = 1; xi < 16; ++xi) d[xi] = d[xi - 1] + dst.plane;
      T *m0 = d[0], *m1 = d[1], *m2 = d[2], *m3 = d[3], *m4 = d[4], *m5 = d[5], *m6 = d[6], *m7 = d[7];
      T *m8 = d[8], *m9 = d[9], *m10 = d[10], *m11 = d[11], *m12 = d[12], *m13 = d[13], *m14 = d[14], *m15 = d[15];
      auto one = [&](int64_t t, T a, T b, T c, T e) {
        const T s1 = a + c, t1 = b + e, s2 = a - c, t2 = b - e;
        m0[t] = a, m1[t] = a + b, m2[t] = a - b, m3[t] = -b;
        m4[t] = s1, m5[t] = s1 + t1, m6[t] = s1 - t1, m7[t] = -t1;
        m8[t] = s2, m9[t] = s2 + t2, m10[t] = s2 - t2, m11[t] = -t2;
        m12[t] = -c, m13[t] = -c - e, m14[t] = e - c, m15[t] = e;
      };
#pragma omp simd
      for (int64_t t = 0; t < tfull; ++t) one(t, r0[2 * t], r0[2 * t + 1], r1[2 * t], r1[2 * t + 1]);
      if (tfull < g.tw) one(tfull, r0[2 * tfull], T(0), r1[2 * tfull], T(0));
    }
  }
  // Each channel's sum of dY over the block: position 5 of its tiles, one run
  // of the layout at a time (one reduction per block, not per tile row).
  if (bsum) {
    const int64_t tiles = (g1 - g0) * g.tw;
    for (int64_t f = 0; f < g.f; ++f) {
      T rs = T(0);
      for (int64_t l = 0; l < tiles;) {
        const int64_t len = min64(tiles - l, dst.nr - l % dst.nr);
        const T* m5 = dst.at(5, f, l);
#pragma omp simd reduction(+ : rs)
        for (int64_t t = 0; t < len; ++t) rs += m5[t];
        l += len;
      }
      bsum[f] += double(rs);
    }
  }
}

// Y = A^T M A of the tiles of tile rows [g0, g1) for output channel f, M[xi]
// at m + xi * mplane (tile l at [l]); then bias, activation and z as the GEMM
// epilogue would, into y (N, F, OH, OW). r0, r1: 2 TW elements each.
template <class T, class Fa>
void output_transform(const Geom& g, const T* m, int64_t mplane, int64_t g0, int64_t g1, int64_t f,
                      const T* bias, T* y, T* z, T alpha, T* r0, T* r1) {
  const int64_t p = g.oh * g.ow;
  for (int64_t gi = g0; gi < g1; ++gi) {
    const int64_t n = gi / g.th, oh0 = 2 * (gi % g.th), l0 = (gi - g0) * g.tw;
#if FASTNN_VBYTES >= 32
    if constexpr (sizeof(T) == 4) {
      // Up to W tiles per register: tile rows gi and gi + 1 of an output at most
      // W wide, else tile row gi alone; output rows past OH are dropped.
      using wide::W;
      if (g.ow <= 2 * W) {
        const bool pair = g.ow <= W && gi + 1 < g1 && (gi + 1) / g.th == n;
        wide::V out[4];
        wide::output_tiles(m + l0, mplane, (pair ? 2 : 1) * g.tw, pair ? g.tw : W / 2, out);
        // Rows oh0 .. oh0 + 3 (a pair) or oh0, oh0 + 1, each ow long: a pair's are
        // out[0], out[2] (row A), out[1], out[3] (row B); a single row's columns
        // 0 .. W - 1 and W .. 2 W - 1 are out[0], out[1] (first row), out[2], out[3].
        alignas(64) T rows[4 * W];
        const int order[4] = {0, pair ? 2 : 1, pair ? 1 : 2, 3};
        for (int i = 0; i < 4; ++i) wide::L::store(rows + i * W, out[order[i]]);
        const int64_t nrows = pair ? 4 : 2, stride = pair ? W : 2 * W;  // between rows in `rows`
        const BiasAct<T, Fa, BiasAxis::rows> ep{bias, z ? z + n * g.f * p : nullptr, p, alpha};
        T* yf = y + (n * g.f + f) * p;
        if (stride == g.ow && oh0 + nrows <= g.oh) {  // W or 2 W wide: the rows are contiguous in y too
          const int64_t j0 = oh0 * g.ow;
#pragma omp simd
          for (int64_t j = 0; j < 4 * W; ++j) yf[j0 + j] = ep.apply(f, j0 + j, rows[j]);
        } else {
          for (int64_t r = 0; r < nrows && oh0 + r < g.oh; ++r) {
            const T* src = rows + r * stride;
            const int64_t j0 = (oh0 + r) * g.ow;
#pragma omp simd
            for (int64_t j = 0; j < g.ow; ++j) yf[j0 + j] = ep.apply(f, j0 + j, src[j]);
          }
        }
        gi += pair;
        continue;
      }
    }
#endif
    const T* q[16];
    for (int xi = 0; xi < 16; ++xi) q[xi] = m + xi * mplane + l0;
    const T *q0 = q[0], *q1 = q[1], *q2 = q[2], *q3 = q[3], *q4 = q[4], *q5 = q[5], *q6 = q[6], *q7 = q[7];
    const T *q8 = q[8], *q9 = q[9], *q10 = q[10], *q11 = q[11], *q12 = q[12], *q13 = q[13], *q14 = q[14],
            *q15 = q[15];
#pragma omp simd
    for (int64_t t = 0; t < g.tw; ++t) {
      const T a0 = q0[t] + q4[t] + q8[t], a1 = q1[t] + q5[t] + q9[t];
      const T a2 = q2[t] + q6[t] + q10[t], a3 = q3[t] + q7[t] + q11[t];
      const T b0 = q4[t] - q8[t] - q12[t], b1 = q5[t] - q9[t] - q13[t];
      const T b2 = q6[t] - q10[t] - q14[t], b3 = q7[t] - q11[t] - q15[t];
      r0[2 * t] = a0 + a1 + a2;
      r0[2 * t + 1] = a1 - a2 - a3;
      r1[2 * t] = b0 + b1 + b2;
      r1[2 * t + 1] = b1 - b2 - b3;
    }
    const BiasAct<T, Fa, BiasAxis::rows> ep{bias, z ? z + n * g.f * p : nullptr, p, alpha};
    T* yf = y + (n * g.f + f) * p;
    for (int64_t rr = 0; rr < 2 && oh0 + rr < g.oh; ++rr) {
      const T* src = rr ? r1 : r0;
      const int64_t j0 = (oh0 + rr) * g.ow;
#pragma omp simd
      for (int64_t j = 0; j < g.ow; ++j) yf[j0 + j] = ep.apply(f, j0 + j, src[j]);
    }
  }
}

// U = G g G^T of every filter, packed as the micro-kernel's A panels:
// upack[xi][r][k][ii] = U[xi][r MR + ii][k] (zero rows past `rows`). Forward:
// rows = F, k = C, g = weight[f, c]. For dx: rows = C, k = F, g = weight[f, c]
// turned 180 degrees. Returns the plane size (elements per xi).
template <class T>
int64_t transform_weights(const T* w, int64_t f, int64_t c, bool for_dx, T* upack) {
  constexpr int MR = gemm_detail::Blocking<T>::MR;
  const int64_t rows = for_dx ? c : f, cols = for_dx ? f : c;
  const int64_t plane = ceil_div(rows, MR) * MR * cols;
  if (rows % MR)  // the last panel's rows past `rows`: every other element is written below
    for (int xi = 0; xi < 16; ++xi)
      for (int64_t k = 0; k < cols; ++k)
        for (int64_t o = rows; o < ceil_div(rows, MR) * MR; ++o)
          upack[xi * plane + (o / MR) * MR * cols + k * MR + o % MR] = T(0);
  const T h = T(0.5);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t k = 0; k < cols; ++k) {
      const T* gf = for_dx ? w + (k * c + o) * 9 : w + (o * c + k) * 9;
      T g[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) g[i][j] = for_dx ? gf[(2 - i) * 3 + (2 - j)] : gf[i * 3 + j];
      T gg[4][3];
      for (int j = 0; j < 3; ++j) {
        gg[0][j] = g[0][j];
        gg[1][j] = h * (g[0][j] + g[1][j] + g[2][j]);
        gg[2][j] = h * (g[0][j] - g[1][j] + g[2][j]);
        gg[3][j] = g[2][j];
      }
      T* dst = upack + (o / MR) * MR * cols + k * MR + o % MR;
      for (int i = 0; i < 4; ++i) {
        dst[(4 * i + 0) * plane] = gg[i][0];
        dst[(4 * i + 1) * plane] = h * (gg[i][0] + gg[i][1] + gg[i][2]);
        dst[(4 * i + 2) * plane] = h * (gg[i][0] - gg[i][1] + gg[i][2]);
        dst[(4 * i + 3) * plane] = gg[i][2];
      }
    }
  return plane;
}

// y = act(conv(x, U) + bias) for geometry g, U packed by transform_weights.
template <class T, class Fa>
void winograd_conv(const Geom& g, const T* x, const T* upack, int64_t uplane, const T* bias, T* y, T* z, T alpha) {
  using Bl = gemm_detail::Blocking<T>;
  constexpr int MR = Bl::MR, NR = Bl::NR;
  constexpr int64_t KC = Bl::KC;
  const int64_t mpan = ceil_div(g.f, MR), rows_total = g.n * g.th;
  // Tile rows per block: the block's V (16 x C x tiles) and M (16 x MR x tiles) in half the L2.
  const int64_t tiles_cap = max64(NR, conv_cache_budget() / (16 * (g.c + MR) * int64_t(sizeof(T))));
  const double flops = 32.0 * double(g.f) * double(g.c) * double(rows_total * g.tw);
  const int64_t threads = flops < 1e6 ? 1 : num_threads();
  // As many blocks as the cap asks for, rounded up to a multiple of the thread
  // count so the last round of claims is even (16x16 images, C = 32: 11 blocks
  // left one of two threads a block behind). Blocking changes no result bit.
  const int64_t want = ceil_div(rows_total, max64(1, tiles_cap / g.tw));
  const int64_t rb = ceil_div(rows_total, ceil_div(want, threads) * threads);
  const int64_t nblocks = ceil_div(rows_total, rb);
  const int64_t npan_max = ceil_div(rb * g.tw, NR), ld = npan_max * NR;
  const int64_t vplane = npan_max * NR * g.c;
  const int nt = int(min64(threads, nblocks));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    T* vbuf = static_cast<T*>(scratch(kWinoV, size_t(16 * vplane + input_transform_buf(g)) * sizeof(T)));
    T* mbuf = static_cast<T*>(scratch(kWinoM, size_t(16 * MR * ld + 4 * g.tw) * sizeof(T)));
    T* r0 = mbuf + 16 * MR * ld;
    const Layout<T> vl{vbuf, vplane, NR, g.c * NR, NR};
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t g0 = b * rb, g1 = min64(g0 + rb, rows_total), tiles = (g1 - g0) * g.tw;
      const int64_t npan = ceil_div(tiles, NR);
      input_transform(g, x, g0, g1, vl, vbuf + 16 * vplane);
      for (int64_t r = 0; r < mpan; ++r) {
        for (int xi = 0; xi < 16; ++xi) {
          const T* ap = upack + xi * uplane + r * MR * g.c;
          const T* vp = vbuf + xi * vplane;
          T* mp = mbuf + xi * MR * ld;
          for (int64_t q = 0; q < npan; ++q)
            for (int64_t pc = 0; pc < g.c; pc += KC) {
              const int64_t kc = min64(KC, g.c - pc);
              gemm_detail::tile(kc, ap + pc * MR, vp + q * g.c * NR + pc * NR, mp + q * NR, ld, 0, q * NR, MR,
                                int(min64(NR, tiles - q * NR)), pc > 0, pc + kc >= g.c, NoEpilogue{});
            }
        }
        const int64_t mr = min64(MR, g.f - r * MR);
        for (int64_t ii = 0; ii < mr; ++ii)
          output_transform<T, Fa>(g, mbuf + ii * ld, MR * ld, g0, g1, r * MR + ii, bias, y, z, alpha, r0,
                                  r0 + 2 * g.tw);
      }
    }
  }
}

// dw (F C, 3, 3) = G^T dU G per filter, dU (16, F C).
template <class T>
void weights_from_transform(const T* du, int64_t fc, T* dw) {
  const T h = T(0.5);
  for (int64_t e = 0; e < fc; ++e) {
    T k[3][4];
    for (int j = 0; j < 4; ++j) {
      const T u0 = du[j * fc + e], u1 = du[(4 + j) * fc + e], u2 = du[(8 + j) * fc + e], u3 = du[(12 + j) * fc + e];
      const T s = h * (u1 + u2);
      k[0][j] = u0 + s;
      k[1][j] = h * (u1 - u2);
      k[2][j] = s + u3;
    }
    T* w = dw + e * 9;
    for (int i = 0; i < 3; ++i) {
      const T s = h * (k[i][1] + k[i][2]);
      w[i * 3 + 0] = k[i][0] + s;
      w[i * 3 + 1] = h * (k[i][1] - k[i][2]);
      w[i * 3 + 2] = s + k[i][3];
    }
  }
}

// dweight (F, C, 3, 3) of the convolution g from x and dz, summed over `groups`
// fixed groups of the batch (each group's blocks in order into a per-thread dU,
// turned into the group's own 3x3 partial, then the partials in group order):
// the same bits at any thread count, and partials no larger than the im2col
// path's (groups x F x C x 9; dU partials would be 16/9 of that). dbias (F,),
// when given, is the sum of dz, taken from the same transform in the same order.
// out (rows_a x rows_b, row stride ldo) (+)= a (rows_a x k) b^T, a and b with
// row stride ld and k a multiple of the vector width (the caller zeroes the
// padding): the dweight transform's dU[xi] = dM[xi] dV[xi]^T, both operands
// already laid out along the tiles, so no packing. R x Q rows of a and b at a
// time, R * Q = W accumulators of W lanes each, then one register transpose and
// W - 1 adds give the W dot products (the lane order of every sum is fixed).
// Used where F C / (F + C) < 16 (the FLOPs per element the engine would pack):
// 16 -> 16 channels at 32x32, batch 64, 2 threads: dweight 1.11 ms against 1.49
// through gemm_engine (M = F, N = C, K = a block's tiles, packed per call), 16
// -> 32 1.84 against 2.10. From 32 -> 32 on the engine is faster (3.37 against
// 3.58 ms), once it no longer opened a one-thread OpenMP region per call.
template <class T>
void dot_rows(const T* a, int64_t rows_a, const T* b, int64_t rows_b, int64_t ld, int64_t k, T* out, int64_t ldo,
              bool accumulate) {
  using S = simd::Vec<T>;
  using V = typename S::V;
  constexpr int W = S::W, Q = W >= 16 ? 4 : (W >= 4 ? 2 : 1), R = W / Q;
  for (int64_t i0 = 0; i0 < rows_a; i0 += R) {
    const T* ar[R];
    for (int r = 0; r < R; ++r) ar[r] = a + min64(i0 + r, rows_a - 1) * ld;
    for (int64_t j0 = 0; j0 < rows_b; j0 += Q) {
      const T* br[Q];
      for (int q = 0; q < Q; ++q) br[q] = b + min64(j0 + q, rows_b - 1) * ld;
      V acc[W];
#pragma GCC unroll 16
      for (int e = 0; e < W; ++e) acc[e] = S::zero();
      for (int64_t t = 0; t < k; t += W) {
        V bv[Q];
#pragma GCC unroll 4
        for (int q = 0; q < Q; ++q) bv[q] = S::load(br[q] + t);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          const V av = S::load(ar[r] + t);
#pragma GCC unroll 4
          for (int q = 0; q < Q; ++q) acc[r * Q + q] = S::fma(av, bv[q], acc[r * Q + q]);
        }
      }
      S::transpose(acc);
      V sum = acc[0];
#pragma GCC unroll 16
      for (int e = 1; e < W; ++e) sum = S::add(sum, acc[e]);
      alignas(64) T lane[W];
      S::store(lane, sum);
      for (int r = 0; r < R && i0 + r < rows_a; ++r)
        for (int q = 0; q < Q && j0 + q < rows_b; ++q) {
          T& o = out[(i0 + r) * ldo + j0 + q];
          o = accumulate ? o + lane[r * Q + q] : lane[r * Q + q];
        }
    }
  }
}

template <class T>
void winograd_dweight(const Geom& g, const T* x, const T* dz, int64_t groups, T* dweight, T* dbias) {
  const int64_t usize = 16 * g.f * g.c;
  // Tile rows per block: V (16 x C x tiles) and dM (16 x F x tiles) in half the L2.
  const int64_t tiles_cap = max64(64, conv_cache_budget() / (16 * (g.c + g.f) * int64_t(sizeof(T))));
  const int64_t rb = max64(1, min64(tiles_cap / g.tw, g.th * ceil_div(g.n, groups)));
  const int64_t ld = ceil_div(rb * g.tw, 16) * 16;
  const int64_t wsize = g.f * g.c * 9;
  const bool small_du = g.f * g.c < 16 * (g.f + g.c);  // dU[xi] by dot_rows, else gemm_engine
  T* partial = static_cast<T*>(scratch(kConvWeightGrad, size_t(groups * wsize) * sizeof(T)));
  double* bpart = dbias ? static_cast<double*>(scratch(kWork, size_t(groups * g.f) * sizeof(double))) : nullptr;
  if (bpart)
    for (int64_t e = 0; e < groups * g.f; ++e) bpart[e] = 0.0;
  const double flops = 32.0 * double(g.f) * double(g.c) * double(g.n * g.th * g.tw);
  const int nt = int(min64(flops < 1e6 ? 1 : num_threads(), groups));
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int64_t vbytes = (16 * g.c * ld + input_transform_buf(g)) * int64_t(sizeof(T));
    T* vbuf = static_cast<T*>(scratch(kWinoV, size_t(vbytes)));
    T* mbuf = static_cast<T*>(scratch(kWinoM, size_t(16 * g.f * ld + grad_transform_buf(g)) * sizeof(T)));
    const Layout<T> vl{vbuf, g.c * ld, ld, 0, ld};
    const Layout<T> ml{mbuf, g.f * ld, ld, 0, ld};
    T* du = static_cast<T*>(scratch(kWinoDU, size_t(usize) * sizeof(T)));
#pragma omp for schedule(dynamic, 1)
    for (int64_t grp = 0; grp < groups; ++grp) {
      const int64_t r0 = g.n * grp / groups * g.th, r1 = g.n * (grp + 1) / groups * g.th;
      for (int64_t g0 = r0; g0 < r1; g0 += rb) {
        const int64_t g1 = min64(g0 + rb, r1), tiles = (g1 - g0) * g.tw;
        input_transform(g, x, g0, g1, vl, vbuf + 16 * g.c * ld);
        grad_transform(g, dz, g0, g1, ml, mbuf + 16 * g.f * ld, bpart ? bpart + grp * g.f : nullptr);
        // dU[xi] (F, C) (+)= dM[xi] (F, tiles) @ V[xi]^T (tiles, C); one thread per
        // group: the engine (single-threaded inside this region), or for a small dU
        // dot_rows over the tiles padded to a whole vector with zeros.
        if (!small_du) {
          for (int xi = 0; xi < 16; ++xi)
            gemm_engine<T>(g.f, g.c, tiles, gemm_detail::StridedA<T>{mbuf + xi * g.f * ld, ld, 1},
                           gemm_detail::StridedB<T>{vbuf + xi * g.c * ld, 1, ld}, du + xi * g.f * g.c, g.c,
                           g0 > r0, NoEpilogue{});
          continue;
        }
        constexpr int64_t W = simd::Vec<T>::W;
        const int64_t kpad = ceil_div(tiles, W) * W;
        if (kpad > tiles) {
          for (int64_t r = 0; r < 16 * g.f; ++r)
            for (int64_t t = tiles; t < kpad; ++t) mbuf[r * ld + t] = T(0);
          for (int64_t r = 0; r < 16 * g.c; ++r)
            for (int64_t t = tiles; t < kpad; ++t) vbuf[r * ld + t] = T(0);
        }
        for (int xi = 0; xi < 16; ++xi)
          dot_rows<T>(mbuf + xi * g.f * ld, g.f, vbuf + xi * g.c * ld, g.c, ld, kpad, du + xi * g.f * g.c, g.c,
                      g0 > r0);
      }
      weights_from_transform(du, g.f * g.c, partial + grp * wsize);
    }
  }
  if (dbias)
    for (int64_t f = 0; f < g.f; ++f) {
      double acc = 0.0;
      for (int64_t grp = 0; grp < groups; ++grp) acc += bpart[grp * g.f + f];
      dbias[f] = T(acc);
    }
  // The groups' partials in group order.
#pragma omp parallel for num_threads(threads_for(groups * wsize)) schedule(static)
  for (int64_t e = 0; e < wsize; ++e) {
    T acc = partial[e];
    for (int64_t grp = 1; grp < groups; ++grp) acc += partial[grp * wsize + e];
    dweight[e] = acc;
  }
}

}  // namespace

bool winograd_applies(const ConvShape& s) {
  if (s.kh != 3 || s.kw != 3 || s.sh != 1 || s.sw != 1 || s.ph > 2 || s.pw > 2 || s.oh < 1 || s.ow < 1) return false;
  switch (conv_algorithm()) {
    case kConvIm2col: return false;
    case kConvWinograd: return true;
    default: return s.c >= 16 && s.f >= 16;
  }
}

template <class T>
void winograd_forward(const Conv2dForwardArgs<T>& a) {
  const ConvShape& s = a.s;
  const Geom g = make_geom(s.n, s.c, s.h, s.w, s.f, s.ph, s.pw);
  constexpr int MR = gemm_detail::Blocking<T>::MR;
  T* upack = static_cast<T*>(scratch(kWinoU, size_t(16 * ceil_div(s.f, MR) * MR * s.c) * sizeof(T)));
  const int64_t uplane = transform_weights(a.weight, s.f, s.c, false, upack);
  visit_act(a.act, [&](auto f) {
    using F = decltype(f);
    winograd_conv<T, F>(g, a.x, upack, uplane, a.bias, a.y, BiasAct<T, F>::kSavesPreactivation ? a.z : nullptr,
                        a.alpha);
  });
}

template <class T>
void winograd_backward(const Conv2dBackwardArgs<T>& a, const T* dz, int64_t groups, bool dbias_here) {
  const ConvShape& s = a.s;
  winograd_dweight(make_geom(s.n, s.c, s.h, s.w, s.f, s.ph, s.pw), a.x, dz, groups, a.dweight,
                   dbias_here ? a.dbias : nullptr);
  if (!a.dx) return;
  constexpr int MR = gemm_detail::Blocking<T>::MR;
  T* upack = static_cast<T*>(scratch(kWinoU, size_t(16 * ceil_div(s.c, MR) * MR * s.f) * sizeof(T)));
  const int64_t uplane = transform_weights(a.weight, s.f, s.c, true, upack);
  // dx (N, C, H, W) = conv(dz (N, F, OH, OW), turned weights), padding 2 - p: output H x W.
  const Geom gx = make_geom(s.n, s.f, s.oh, s.ow, s.c, 2 - s.ph, 2 - s.pw);
  winograd_conv<T, act::Identity>(gx, dz, upack, uplane, nullptr, a.dx, nullptr, T(0));
}

#define FASTNN_INSTANTIATE(T)                                                        \
  template void winograd_forward<T>(const Conv2dForwardArgs<T>&);                    \
  template void winograd_backward<T>(const Conv2dBackwardArgs<T>&, const T*, int64_t, bool);
FASTNN_INSTANTIATE(float)
FASTNN_INSTANTIATE(double)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
