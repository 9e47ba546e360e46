// 2-D max and average pooling on the CPU (windows, tie/NaN rules and divisors:
// ops/pool.h; argument structures and the shape legend: kernels.h).
//
// Shape legend: N batch, C channels, H x W input plane, KH x KW window, SH/SW
// stride, PH/PW padding, OH x OW output plane. Threads split the N*C planes
// (one plane's work is sequential, so every result, and the scatter order of
// the backward passes, is the same for any thread count).
//
// Within a plane one output row is built at a time and vectorized over its OW
// columns: for each window element (ih, kj) in row-major order, one pass over
// the columns whose window holds that element, a strided load (stride SW,
// a compile-time 1 or 2 where it is, so the loads become shuffles, not
// gathers) and a compare/blend (max) or add (average) into the output row.
// Visiting the window in row-major order per column keeps exactly the scalar
// definition's order: the first maximum wins, sums add in window order.
#include <cstring>
#include <limits>
#include <type_traits>

#include "cpu/isa.h"
#include "ops/pool.h"

namespace fastnn::cpu::FASTNN_ISA {
namespace {

// The output columns [lo, hi) whose window holds input column oj * sw + off
// inside [0, w): 0 <= oj * sw + off < w.
inline void column_span(int64_t off, int64_t sw, int64_t w, int64_t ow, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
  hi = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
  if (hi > ow) hi = ow;
}

template <class T, int SW>
void max_pool_plane(const PoolShape& s, const T* x, T* y, int32_t* index) {
  const int64_t sw = SW > 0 ? SW : s.sw;
  for (int64_t oi = 0; oi < s.oh; ++oi) {
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    T* yr = y + oi * s.ow;
    int32_t* ir = index + oi * s.ow;
    // Start from -inf at the window's first element inside the plane (clamped,
    // so even an all-padding window's index stays inside the plane): a window
    // of -inf keeps that first element, as the first-maximum rule says.
    const int64_t ih0 = rows.begin < s.h ? rows.begin : s.h - 1;
    for (int64_t oj = 0; oj < s.ow; ++oj) {
      int64_t iw0 = oj * sw - s.pw;
      iw0 = iw0 < 0 ? 0 : (iw0 < s.w ? iw0 : s.w - 1);
      yr[oj] = -std::numeric_limits<T>::infinity();
      ir[oj] = int32_t(ih0 * s.w + iw0);
    }
    for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
      const T* xr = x + ih * s.w;
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const int64_t off = kj - s.pw;
        int64_t lo, hi;
        column_span(off, sw, s.w, s.ow, lo, hi);
        const int32_t base = int32_t(ih * s.w + off);
#pragma omp simd
        for (int64_t oj = lo; oj < hi; ++oj) {
          const T v = xr[oj * sw + off];
          const bool take = max_pool_takes(v, yr[oj]);
          yr[oj] = take ? v : yr[oj];
          ir[oj] = take ? base + int32_t(oj * sw) : ir[oj];
        }
      }
    }
  }
}

// The common windows (no column padding, KW and SW compile-time constants):
// one pass per window row, the KW candidates of a column compared in the loop
// body, so the loads of a row form one interleaved group (shuffles, no
// per-element inserts) and the output row is read and written once per pass.
// VL: the row loops' simdlen (by_row_length).
template <class T, int KW, int SW, int VL>
void max_pool_plane_fixed(const PoolShape& s, const T* x, T* y, int32_t* index) {
  for (int64_t oi = 0; oi < s.oh; ++oi) {
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    T* yr = y + oi * s.ow;
    int32_t* ir = index + oi * s.ow;
    if (rows.begin >= rows.end) {  // all padding (ops.py refuses such padding; stay inside x anyway)
      const int64_t ih0 = rows.begin < s.h ? rows.begin : s.h - 1;
      for (int64_t oj = 0; oj < s.ow; ++oj) {
        yr[oj] = -std::numeric_limits<T>::infinity();
        ir[oj] = int32_t(ih0 * s.w + oj * SW);
      }
      continue;
    }
    const T* xr = x + rows.begin * s.w;
    const int32_t base = int32_t(rows.begin * s.w);
#pragma omp simd simdlen(VL)
    for (int64_t oj = 0; oj < s.ow; ++oj) {
      T best = xr[oj * SW];
      int32_t at = base + int32_t(oj * SW);
      for (int kj = 1; kj < KW; ++kj) {
        const T v = xr[oj * SW + kj];
        const bool take = max_pool_takes(v, best);
        best = take ? v : best;
        at = take ? base + int32_t(oj * SW + kj) : at;
      }
      yr[oj] = best;
      ir[oj] = at;
    }
    for (int64_t ih = rows.begin + 1; ih < rows.end; ++ih) {
      const T* xh = x + ih * s.w;
      const int32_t row = int32_t(ih * s.w);
#pragma omp simd simdlen(VL)
      for (int64_t oj = 0; oj < s.ow; ++oj) {
        T best = yr[oj];
        int32_t at = ir[oj];
        for (int kj = 0; kj < KW; ++kj) {
          const T v = xh[oj * SW + kj];
          const bool take = max_pool_takes(v, best);
          best = take ? v : best;
          at = take ? row + int32_t(oj * SW + kj) : at;
        }
        yr[oj] = best;
        ir[oj] = at;
      }
    }
  }
}

template <class T, int KW, int SW, int VL>
void avg_pool_plane_fixed(const PoolShape& s, const T* x, T* y, bool count_include_pad) {
  for (int64_t oi = 0; oi < s.oh; ++oi) {
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    T* yr = y + oi * s.ow;
    for (int64_t oj = 0; oj < s.ow; ++oj) yr[oj] = T(0);
    for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
      const T* xh = x + ih * s.w;
#pragma omp simd simdlen(VL)
      for (int64_t oj = 0; oj < s.ow; ++oj) {
        T sum = yr[oj];
        for (int kj = 0; kj < KW; ++kj) sum += xh[oj * SW + kj];
        yr[oj] = sum;
      }
    }
    const T divisor = T(avg_pool_divisor(rows.end - rows.begin, KW, s.kh, KW, count_include_pad));
#pragma omp simd simdlen(VL)
    for (int64_t oj = 0; oj < s.ow; ++oj) yr[oj] /= divisor;
  }
}

// Calls f(KW, SW) as compile-time constants for the windows with a fixed path
// (no column padding; 2 or 3 wide, stride 1 or 2); returns false otherwise.
template <class F>
bool by_fixed_window(const PoolShape& s, F&& f) {
  if (s.pw != 0) return false;
  if (s.kw == 2 && s.sw == 2) return f(std::integral_constant<int, 2>{}, std::integral_constant<int, 2>{}), true;
  if (s.kw == 2 && s.sw == 1) return f(std::integral_constant<int, 2>{}, std::integral_constant<int, 1>{}), true;
  if (s.kw == 3 && s.sw == 2) return f(std::integral_constant<int, 3>{}, std::integral_constant<int, 2>{}), true;
  if (s.kw == 3 && s.sw == 1) return f(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{}), true;
  return false;
}

template <class T, int SW>
void avg_pool_plane(const PoolShape& s, const T* x, T* y, bool count_include_pad) {
  const int64_t sw = SW > 0 ? SW : s.sw;
  for (int64_t oi = 0; oi < s.oh; ++oi) {
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    T* yr = y + oi * s.ow;
    for (int64_t oj = 0; oj < s.ow; ++oj) yr[oj] = T(0);
    for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
      const T* xr = x + ih * s.w;
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const int64_t off = kj - s.pw;
        int64_t lo, hi;
        column_span(off, sw, s.w, s.ow, lo, hi);
#pragma omp simd
        for (int64_t oj = lo; oj < hi; ++oj) yr[oj] += xr[oj * sw + off];
      }
    }
    for (int64_t oj = 0; oj < s.ow; ++oj) {
      const PoolRange cols = pool_window(oj, sw, s.pw, s.kw, s.w);
      yr[oj] /= T(avg_pool_divisor(rows.end - rows.begin, cols.end - cols.begin, s.kh, s.kw, count_include_pad));
    }
  }
}

// g (OW,) scratch: dy / divisor of the current output row.
template <class T, int SW>
void avg_pool_backward_plane(const PoolShape& s, const T* dy, T* dx, T* g, bool count_include_pad) {
  const int64_t sw = SW > 0 ? SW : s.sw;
  std::memset(dx, 0, sizeof(T) * size_t(s.h * s.w));
  for (int64_t oi = 0; oi < s.oh; ++oi) {
    const PoolRange rows = pool_window(oi, s.sh, s.ph, s.kh, s.h);
    for (int64_t oj = 0; oj < s.ow; ++oj) {
      const PoolRange cols = pool_window(oj, sw, s.pw, s.kw, s.w);
      g[oj] = dy[oi * s.ow + oj] /
              T(avg_pool_divisor(rows.end - rows.begin, cols.end - cols.begin, s.kh, s.kw, count_include_pad));
    }
    for (int64_t ih = rows.begin; ih < rows.end; ++ih) {
      T* dxr = dx + ih * s.w;
      for (int64_t kj = 0; kj < s.kw; ++kj) {
        const int64_t off = kj - s.pw;
        int64_t lo, hi;
        column_span(off, sw, s.w, s.ow, lo, hi);
        // Distinct columns oj hit distinct inputs oj * sw + off: no conflicts.
#pragma omp simd
        for (int64_t oj = lo; oj < hi; ++oj) dxr[oj * sw + off] += g[oj];
      }
    }
  }
}

// Calls f.template operator()<SW>() with the column stride as a constant where
// that is common (1, 2), else 0 (read at run time).
template <class F>
void by_column_stride(int64_t sw, F&& f) {
  if (sw == 1) f(std::integral_constant<int, 1>{});
  else if (sw == 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 0>{});
}

// Calls f(VL) with VL, the simdlen of a fixed window's row loops, a constant:
// 16 where an output row is that long, else 8 or 4. With AVX-512's 16 float
// lanes an 8-column row (a 16x16 map pooled 2x2) never reached the vector body
// and ran the scalar remainder: MaxPool2d 2x2 over (64, 64, 16, 16) took 0.75
// ms against 0.15 over the 4x larger (64, 32, 32, 32); with VL = 8, 0.12 ms
// (8x8 maps: 0.39 -> 0.05 ms).
template <class F>
void by_row_length(int64_t ow, F&& f) {
  if (ow >= 16) f(std::integral_constant<int, 16>{});
  else if (ow >= 8) f(std::integral_constant<int, 8>{});
  else f(std::integral_constant<int, 4>{});
}

// Runs the pooling of every plane p in parallel: fixed_plane(p, KW, SW, VL) where
// by_fixed_window has a kernel for the window (width, column stride and row
// simdlen as constants), else plane(p, SW) (SW constant where common).
template <class FixedPlane, class Plane>
void for_each_plane(const PoolShape& s, int64_t planes, int nthreads, FixedPlane&& fixed_plane, Plane&& plane) {
  const bool fixed = by_fixed_window(s, [&](auto kw_const, auto sw_const) {
    by_row_length(s.ow, [&](auto vl_const) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
      for (int64_t p = 0; p < planes; ++p) fixed_plane(p, kw_const, sw_const, vl_const);
    });
  });
  if (fixed) return;
  by_column_stride(s.sw, [&](auto sw_const) {
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
    for (int64_t p = 0; p < planes; ++p) plane(p, sw_const);
  });
}

}  // namespace

template <class T>
void max_pool2d_forward(const MaxPool2dForwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, out = s.oh * s.ow;
  if (planes <= 0 || out <= 0) return;
  const int nthreads = threads_for(planes * in);
  for_each_plane(
      s, planes, nthreads,
      [&](int64_t p, auto kw, auto sw, auto vl) {
        max_pool_plane_fixed<T, decltype(kw)::value, decltype(sw)::value, decltype(vl)::value>(
            s, a.x + p * in, a.y + p * out, a.index + p * out);
      },
      [&](int64_t p, auto sw) {
        max_pool_plane<T, decltype(sw)::value>(s, a.x + p * in, a.y + p * out, a.index + p * out);
      });
}

template <class T>
void max_pool2d_regions_forward(const MaxPool2dRegionsForwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, out = s.oh * s.ow;
  if (planes <= 0 || out <= 0) return;
  const int nthreads = threads_for(planes * in);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const T* x = a.x + p * in;
    T* y = a.y + p * out;
    int32_t* index = a.index + p * out;
    for (int64_t oi = 0; oi < s.oh; ++oi) {
      for (int64_t oj = 0; oj < s.ow; ++oj) {
        T best = -std::numeric_limits<T>::infinity();
        int64_t at = a.row_begin[oi] * s.w + a.col_begin[oj];
        for (int64_t ih = a.row_begin[oi]; ih < a.row_end[oi]; ++ih)
          for (int64_t iw = a.col_begin[oj]; iw < a.col_end[oj]; ++iw) {
            const T v = x[ih * s.w + iw];
            if (max_pool_takes(v, best)) best = v, at = ih * s.w + iw;
          }
        y[oi * s.ow + oj] = best;
        index[oi * s.ow + oj] = int32_t(at);
      }
    }
  }
}

template <class T>
void max_pool2d_backward(const MaxPool2dBackwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, out = s.oh * s.ow;
  if (planes <= 0 || in <= 0) return;
  const int nthreads = threads_for(planes * in);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    T* dx = a.dx + p * in;
    const T* dy = a.dy + p * out;
    const int32_t* index = a.index + p * out;
    std::memset(dx, 0, sizeof(T) * size_t(in));
    for (int64_t o = 0; o < out; ++o) dx[index[o]] += dy[o];
  }
}

template <class T>
void avg_pool2d_forward(const AvgPool2dForwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, out = s.oh * s.ow;
  if (planes <= 0 || out <= 0) return;
  const int nthreads = threads_for(planes * in);
  for_each_plane(
      s, planes, nthreads,
      [&](int64_t p, auto kw, auto sw, auto vl) {
        avg_pool_plane_fixed<T, decltype(kw)::value, decltype(sw)::value, decltype(vl)::value>(
            s, a.x + p * in, a.y + p * out, a.count_include_pad);
      },
      [&](int64_t p, auto sw) {
        avg_pool_plane<T, decltype(sw)::value>(s, a.x + p * in, a.y + p * out, a.count_include_pad);
      });
}

template <class T>
void avg_pool2d_backward(const AvgPool2dBackwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w, out = s.oh * s.ow;
  if (planes <= 0 || in <= 0) return;
  const int nthreads = threads_for(planes * in);
  by_column_stride(s.sw, [&](auto sw_const) {
    constexpr int SW = decltype(sw_const)::value;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
      T* g = static_cast<T*>(scratch(kWork, sizeof(T) * size_t(s.ow > 0 ? s.ow : 1)));
#pragma omp for schedule(static)
      for (int64_t p = 0; p < planes; ++p)
        avg_pool_backward_plane<T, SW>(s, a.dy + p * out, a.dx + p * in, g, a.count_include_pad);
    }
  });
}

template <class T>
void global_avg_pool2d_forward(const GlobalAvgPool2dForwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w;
  if (planes <= 0) return;
  const int nthreads = threads_for(planes * in);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const T* x = a.x + p * in;
    T sum = T(0);
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < in; ++i) sum += x[i];
    a.y[p] = sum / T(in > 0 ? in : 1);
  }
}

template <class T>
void global_avg_pool2d_backward(const GlobalAvgPool2dBackwardArgs<T>& a) {
  const PoolShape& s = a.s;
  const int64_t planes = s.n * s.c, in = s.h * s.w;
  if (planes <= 0 || in <= 0) return;
  const int nthreads = threads_for(planes * in);
#pragma omp parallel for num_threads(nthreads) if (nthreads > 1) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const T g = a.dy[p] / T(in);
    T* dx = a.dx + p * in;
#pragma omp simd
    for (int64_t i = 0; i < in; ++i) dx[i] = g;
  }
}

#define FASTNN_INSTANTIATE(name, Args)            \
  template void name<float>(const Args<float>&); \
  template void name<double>(const Args<double>&);
FASTNN_INSTANTIATE(max_pool2d_forward, MaxPool2dForwardArgs)
FASTNN_INSTANTIATE(max_pool2d_regions_forward, MaxPool2dRegionsForwardArgs)
FASTNN_INSTANTIATE(max_pool2d_backward, MaxPool2dBackwardArgs)
FASTNN_INSTANTIATE(avg_pool2d_forward, AvgPool2dForwardArgs)
FASTNN_INSTANTIATE(avg_pool2d_backward, AvgPool2dBackwardArgs)
FASTNN_INSTANTIATE(global_avg_pool2d_forward, GlobalAvgPool2dForwardArgs)
FASTNN_INSTANTIATE(global_avg_pool2d_backward, GlobalAvgPool2dBackwardArgs)
#undef FASTNN_INSTANTIATE

}  // namespace fastnn::cpu::FASTNN_ISA
