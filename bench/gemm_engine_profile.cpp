// Single-thread analysis of the GEMM engine (csrc/cpu/gemm_engine.h), timed in
// thread CPU time (CLOCK_THREAD_CPUTIME_ID), so other processes sharing the
// cores do not count: the FMA peak of one core, the micro-kernel tile() alone
// (A panel in L1, B panels in L1/L2), and the whole engine on one thread at
// the square and training shapes, each as a fraction of that peak. Compiled
// against the engine header under its own ISA namespace (kp512), linked with
// the kernel libraries of a build directory (for scratch() and num_threads()):
//
//   g++ -DFASTNN_ISA=kp512 -DFASTNN_VBYTES=64 -Icsrc -O3 -DNDEBUG -std=gnu++17 \
//       -fno-math-errno -fno-trapping-math -ffp-contract=fast -mavx512f -mavx512vl \
//       -mavx512bw -mavx512dq -mavx2 -mfma -mf16c -mbmi2 -mprefer-vector-width=512 \
//       -fopenmp -include cstring bench/gemm_engine_profile.cpp -o /tmp/gemm_profile \
//       build/<tag>/kernels/libfastnn_cpu.a build/<tag>/kernels/libfastnn_cpu_{avx512,avx2,generic}.a
//   OMP_NUM_THREADS=1 /tmp/gemm_profile [shape-substring]
#include <time.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include "cpu/gemm_engine.h"
using namespace fastnn; using namespace fastnn::cpu::FASTNN_ISA;
using namespace fastnn::cpu::FASTNN_ISA::gemm_detail;
// FASTNN_PROFILE_WALL=1: wall time instead (for the engine on several threads,
// OMP_NUM_THREADS=2; its figures are then against nthreads x the 1-core probe).
static const bool kWall = getenv("FASTNN_PROFILE_WALL") != nullptr;
static double cpu_s() {
  timespec t; clock_gettime(kWall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}
template <class F> double best(F f, int reps = 7) { std::vector<double> v; for (int r = 0; r < reps; ++r) { double t = cpu_s(); f(); v.push_back(cpu_s() - t);} std::sort(v.begin(), v.end()); return v[reps/2]; }
__attribute__((noinline)) double peak(long iters) {
  using S = simd::Vec<float>; using V = S::V;
  V a = S::set1(0.999999f), b = S::set1(1e-6f);
  V c0=S::set1(1),c1=c0,c2=c0,c3=c0,c4=c0,c5=c0,c6=c0,c7=c0,c8=c0,c9=c0,c10=c0,c11=c0,c12=c0,c13=c0,c14=c0,c15=c0;
  for (long i = 0; i < iters; ++i) {
#define ST(j) c##j = S::fma(c##j, a, b); __asm__ volatile("" : "+x"(c##j));
    ST(0)ST(1)ST(2)ST(3)ST(4)ST(5)ST(6)ST(7)ST(8)ST(9)ST(10)ST(11)ST(12)ST(13)ST(14)ST(15)
  }
  float t[16]; S::store(t, S::add(c0, c15)); return t[0];
}
// 64-byte aligned buffer plus `off` floats: the packed panels are aligned, but a
// large NumPy array starts 16 bytes past a line (malloc's mmap header), so
// FASTNN_PROFILE_OFFSET=4 times the engine as it sees NumPy operands.
struct Buf {
  float* base; float* p;
  Buf(size_t n, float v, int off) : base(static_cast<float*>(aligned_alloc(64, ((n + off) * 4 + 63) / 64 * 64))), p(base + off) {
    std::fill(p, p + n, v);
  }
  ~Buf() { free(base); }
};
int main(int argc, char** argv) {
  const int off = getenv("FASTNN_PROFILE_OFFSET") ? atoi(getenv("FASTNN_PROFILE_OFFSET")) : 0;
  using Bl = Blocking<float>;
  constexpr int MR = Bl::MR, NR = Bl::NR;
  long it = 2000000;
  double tp = best([&] { peak(it); });
  double pk = 2.0 * it * 16 * simd::Vec<float>::W / tp / 1e9;
  printf("MR %d NR %d KC %ld NCL2 %ld  probe 1 core (cpu time) %.1f GFLOP/s\n", MR, NR, (long)Bl::KC, (long)Bl::NCL2, pk);
  // micro-kernel: one A panel, npan B panels of kc, C in L1
  for (int kc : {64, 128, 256, 384}) for (int npan : {1, 4, 11}) {
    Buf ap(MR * kc, 1.f, 0), bp(size_t(NR) * kc * npan, 0.5f, 0), c(MR * NR * npan, 0.f, 0);
    int reps = std::max(1, 20000000 / (MR * NR * kc * npan));
    double t = best([&] { for (int r = 0; r < reps; ++r) for (int q = 0; q < npan; ++q)
      tile(kc, ap.p, bp.p + size_t(q) * NR * kc, c.p + q * NR, NR * npan, 0, 0, MR, NR, true, false, NoEpilogue{}); });
    double g = 2.0 * MR * NR * kc * npan * reps / t / 1e9;
    printf("tile kc %3d panels %2d (B %5.0f KiB): %.1f GFLOP/s = %.0f%%\n", kc, npan, NR * kc * npan * 4 / 1024.0, g, 100 * g / pk);
  }
  // whole engine, 1 thread, shapes (m, n, k, ta, tb)
  struct Sh { long m, n, k; int ta, tb; const char* name; } shapes[] = {
    {1024,1024,1024,0,0,"1024^3"}, {2048,2048,2048,0,0,"2048^3"}, {4096,4096,4096,0,0,"4096^3"},
    {256,1024,784,0,0,"(256,784,1024) fwd"}, {256,784,1024,0,1,"(256,784,1024) dx"}, {784,1024,256,1,0,"(256,784,1024) dw"},
    {256,1024,1024,0,0,"(256,1024,1024) fwd"}, {256,1024,1024,0,1,"(256,1024,1024) dx"}, {1024,1024,256,1,0,"(256,1024,1024) dw"},
    {64,4096,4096,0,0,"(64,4096,4096) fwd"}, {64,4096,4096,0,1,"(64,4096,4096) dx"}, {4096,4096,64,1,0,"(64,4096,4096) dw"},
    // the per-image GEMMs of the ConvNet's 3x3 convs (M = F, N = OH*OW, K = 9C)
    {32,1024,288,0,0,"conv 32->32 32x32"}, {64,1024,288,0,0,"conv 32->64 32x32"},
    {64,256,576,0,0,"conv 64->64 16x16"}, {128,1024,288,0,0,"conv m128 k288"}, {64,4096,288,0,0,"conv m64 n4096"},
    // conv 32->32 32x32 backward per image: dW (F, CKK) = dz (F, P) @ cols^T, dX cols = W^T @ dz (K = F)
    {32,288,1024,0,1,"conv bwd dW 32->32"}, {288,1024,32,1,0,"conv bwd dX 32->32"},
    {64,576,256,0,1,"conv bwd dW 64->64"}, {576,256,64,1,0,"conv bwd dX 64->64"},
  };
  const char* only = argc > 1 ? argv[1] : "";
  for (auto& s : shapes) {
    if (*only && !strstr(s.name, only)) continue;
    Buf a(s.m * s.k, 0.1f, off), b(s.k * s.n, 0.2f, off), c(s.m * s.n, 0.f, off);
    GemmArgs<float> g{s.m, s.n, s.k, a.p, s.ta ? 1 : s.k, s.ta ? s.m : 1, b.p, s.tb ? 1 : s.n, s.tb ? s.k : 1, c.p, s.n, 0.f};
    double fl = 2.0 * s.m * s.n * s.k;
    int reps = std::max(1, int(2e9 / fl));
    double t = best([&] { for (int r = 0; r < reps; ++r) gemm_engine(g, NoEpilogue{}); }, 5);
    double gf = fl * reps / t / 1e9;
    const int nth = kWall ? fastnn::cpu::num_threads() : 1;
    printf("engine %d thread %-22s %.1f GFLOP/s = %.0f%%\n", nth, s.name, gf, 100 * gf / (pk * nth));
  }
}
