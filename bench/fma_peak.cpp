// FMA-peak probe: the floating-point ceiling of this machine for one of
// fastnn's CPU code paths, on one core and on all cores.
//
// Built by bench/fma_peak.py once per path, with that path's flags:
//   avx512   -mavx512f -mfma   16 independent 512-bit FMA chains per thread
//   avx2     -mavx2 -mfma      12 independent 256-bit FMA chains per thread
//   generic  (SSE2 baseline)   12 independent 128-bit multiply+add chains per
//                              thread: the baseline has no FMA, so its peak is
//                              what mulps/addps (fp32) and mulpd/addpd reach,
//                              counted as 2 flops per lane, as an FMA.
// Each chain is c = c * a + b with |a| < 1, so the values stay normal.
// More chains than (FMA latency x FMA ports) keep both FMA ports busy.
//
// Built as a shared library (bench/fma_peak.py loads it with ctypes, so the
// probe runs in the benchmark's own process, interleaved with the GEMMs it
// is compared with), or with -DFMA_PEAK_MAIN as a standalone program.
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>

#if defined(__AVX512F__)
#include <immintrin.h>
#define PATH "avx512"
constexpr int kChains = 16;
struct F32 {
  using V = __m512; static constexpr int W = 16;
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V c, V a, V b) { return _mm512_fmadd_ps(c, a, b); }
  static float sum(V v) { float t[16]; _mm512_storeu_ps(t, v); float s = 0; for (float x : t) s += x; return s; }
};
struct F64 {
  using V = __m512d; static constexpr int W = 8;
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V fma(V c, V a, V b) { return _mm512_fmadd_pd(c, a, b); }
  static double sum(V v) { double t[8]; _mm512_storeu_pd(t, v); double s = 0; for (double x : t) s += x; return s; }
};
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PATH "avx2"
constexpr int kChains = 12;
struct F32 {
  using V = __m256; static constexpr int W = 8;
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V c, V a, V b) { return _mm256_fmadd_ps(c, a, b); }
  static float sum(V v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (float x : t) s += x; return s; }
};
struct F64 {
  using V = __m256d; static constexpr int W = 4;
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V fma(V c, V a, V b) { return _mm256_fmadd_pd(c, a, b); }
  static double sum(V v) { double t[4]; _mm256_storeu_pd(t, v); double s = 0; for (double x : t) s += x; return s; }
};
#else
#define PATH "generic"
constexpr int kChains = 12;
template <class T> struct Gen {
  typedef T V __attribute__((vector_size(16)));
  static constexpr int W = 16 / sizeof(T);
  static V set1(T x) { V v; for (int i = 0; i < W; ++i) v[i] = x; return v; }
  static V fma(V c, V a, V b) { return c * a + b; }
  static T sum(V v) { T s = 0; for (int i = 0; i < W; ++i) s += v[i]; return s; }
};
using F32 = Gen<float>;
using F64 = Gen<double>;
#endif

// One thread: `iters` x kChains x W FMAs. The chains are named locals (an
// array would live on the stack at -O2); the empty asm keeps each in a register
// and keeps the compiler from folding the chains away.
#define FP_CHAINS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define FP_CHAINS16(X) FP_CHAINS12(X) X(12) X(13) X(14) X(15)
#if defined(__AVX512F__)
#define FP_CHAINS FP_CHAINS16
#else
#define FP_CHAINS FP_CHAINS12
#endif
template <class S>
__attribute__((noinline)) double chains(long iters, double seed) {
  using V = typename S::V;
  const V a = S::set1(0.999999), b = S::set1(1e-6);
#define FP_INIT(j) V c##j = S::set1(seed + 0.01 * j);
#define FP_STEP(j) c##j = S::fma(c##j, a, b);
#define FP_KEEP(j) __asm__ volatile("" : "+x"(c##j));
#define FP_SUM(j) s += S::sum(c##j);
  FP_CHAINS(FP_INIT)
  for (long it = 0; it < iters; ++it) {
    FP_CHAINS(FP_STEP)
    FP_CHAINS(FP_KEEP)
  }
  double s = 0;
  FP_CHAINS(FP_SUM)
  return s;
}

// Seconds for `threads` threads to run `iters` steps of the chains together,
// from a common start to the last thread's end; the FLOPs are
// fma_peak_flops(threads, fp64, iters).
template <class S>
double timed(int threads, long iters) {
  double sink = 0;
  auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
  { sink += chains<S>(iters, 0.5 + omp_get_thread_num()); }
  auto t1 = std::chrono::steady_clock::now();
  if (sink == 12345.678) std::printf("#\n");  // keep the result alive
  return std::chrono::duration<double>(t1 - t0).count();
}

extern "C" {

const char* fma_peak_path() { return PATH; }
int fma_peak_chains() { return kChains; }

double fma_peak_flops(int threads, int fp64, long iters) {
  return 2.0 * threads * double(iters) * kChains * (fp64 ? F64::W : F32::W);
}

double fma_peak_seconds(int threads, int fp64, long iters) {
  return fp64 ? timed<F64>(threads, iters) : timed<F32>(threads, iters);
}

// Steps that take about `seconds` on one thread.
long fma_peak_iters(int fp64, double seconds) {
  long iters = 1 << 14;
  for (;;) {
    const double s = fma_peak_seconds(1, fp64, iters);
    if (s > seconds / 4) return long(iters * seconds / s) + 1;
    iters *= 4;
  }
}

}  // extern "C"

#ifdef FMA_PEAK_MAIN
// Standalone: fma_peak [reps] [seconds_per_rep] prints GFLOP/s per repetition.
int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  const double seconds = argc > 2 ? std::atof(argv[2]) : 0.05;
  const int all = omp_get_max_threads();
  std::printf("path %s chains %d threads %d\n", PATH, kChains, all);
  for (int fp64 = 0; fp64 < 2; ++fp64) {
    const long iters = fma_peak_iters(fp64, seconds);
    for (int threads : {1, all}) {
      fma_peak_seconds(threads, fp64, iters / 4);  // warm-up
      std::printf("%s %d", fp64 ? "fp64" : "fp32", threads);
      for (int r = 0; r < reps; ++r)
        std::printf(" %.2f", fma_peak_flops(threads, fp64, iters) / fma_peak_seconds(threads, fp64, iters) / 1e9);
      std::printf("\n");
    }
  }
  return 0;
}
#endif
