// Conv2d 3x3 pad 1 forward or backward (N = 64) on the C++ kernels alone, im2col
// or Winograd F(2x2, 3x3), timed per call (best of `iters`; thread CPU time on 1
// thread, wall time otherwise), for perf record / perf annotate without Python.
// conv.cpp and conv_winograd.cpp are compiled in under their own ISA namespace
// (kp512), linked with the kernel libraries of a build directory (scratch(),
// num_threads(), set_conv_algorithm()):
//
//   g++ -g -DFASTNN_ISA=kp512 -DFASTNN_VBYTES=64 -Icsrc -O3 -DNDEBUG -std=gnu++17 \
//       -fno-math-errno -fno-trapping-math -ffp-contract=fast -mavx512f -mavx512vl \
//       -mavx512bw -mavx512dq -mavx2 -mfma -mf16c -mbmi2 -mprefer-vector-width=512 -fopenmp \
//       bench/conv_profile.cpp csrc/cpu/conv.cpp csrc/cpu/conv_winograd.cpp -o /tmp/conv_profile \
//       build/<tag>/kernels/libfastnn_cpu.a build/<tag>/kernels/libfastnn_cpu_{avx512,avx2,generic}.a
//   /tmp/conv_profile C F HW ITERS ALGO(1 im2col, 2 winograd) PASS(0 fwd, 1 bwd, 2 dweight only) [THREADS [ACT code]]
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cpu/isa.h"

namespace fastnn::cpu::kp512 {
template <class T> void conv2d_forward(const Conv2dForwardArgs<T>&);
template <class T> void conv2d_backward(const Conv2dBackwardArgs<T>&);
}  // namespace fastnn::cpu::kp512
using namespace fastnn;

static double now(bool cpu) {
  timespec ts;
  clock_gettime(cpu ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s C F HW ITERS ALGO PASS [THREADS [ACT]]\n", argv[0]);
    return 2;
  }
  const int c = atoi(argv[1]), f = atoi(argv[2]), hw = atoi(argv[3]), iters = atoi(argv[4]), algo = atoi(argv[5]);
  const int pass = atoi(argv[6]), threads = argc > 7 ? atoi(argv[7]) : 1;
  const Act act = Act(argc > 8 ? atoi(argv[8]) : int(Act::relu));
  const int n = 64;
  set_num_threads(threads);
  set_adaptive_threads(false);
  set_conv_algorithm(algo);
  const ConvShape s{n, c, hw, hw, f, 3, 3, 1, 1, 1, 1, hw, hw};
  std::vector<float> x(size_t(n) * c * hw * hw), w(size_t(f) * c * 9), b(f), y(size_t(n) * f * hw * hw);
  std::vector<float> dy(y.size()), z(y.size()), dz(y.size()), dx(x.size()), dw(w.size()), db(f);
  for (auto& v : x) v = rand() / float(RAND_MAX) - 0.5f;
  for (auto& v : w) v = rand() / float(RAND_MAX) - 0.5f;
  for (auto& v : dy) v = rand() / float(RAND_MAX) - 0.5f;
  const Conv2dForwardArgs<float> fa{s, x.data(), w.data(), b.data(), y.data(), z.data(), act, 0.f};
  const Conv2dBackwardArgs<float> ba{s, dy.data(), x.data(), w.data(), y.data(), z.data(), dz.data(),
                                     dx.data(), dw.data(), db.data(), nullptr, act, 0.f};
  Conv2dBackwardArgs<float> wa = ba;  // PASS 2: the weight gradient alone (no dx)
  wa.dx = nullptr;
  cpu::kp512::conv2d_forward(fa);
  double best = 1e9;
  for (int i = 0; i < iters; ++i) {
    const double t = now(threads == 1);
    if (pass == 0) cpu::kp512::conv2d_forward(fa);
    else cpu::kp512::conv2d_backward(pass == 2 ? wa : ba);
    const double dt = now(threads == 1) - t;
    if (dt < best) best = dt;
  }
  const double flops = 2.0 * n * c * f * 9 * hw * hw * (pass == 1 ? 2 : 1);
  std::printf("%d->%d %dx%d %s %s, %d thread(s): %.2f ms, %.0f GFLOP/s of the direct convolution\n", c, f, hw, hw,
              algo == 2 ? "winograd" : "im2col", pass == 2 ? "dweight" : pass ? "backward" : "forward", threads, best * 1e3,
              flops / best / 1e9);
}
