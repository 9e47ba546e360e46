// Run-time choice of the CPU code path and the definitions of kernels.h.
// Compiled once, for baseline x86-64: it must run on any processor so it can
// ask the processor which of the per-ISA tables it may use.
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/scratch.h"
#include "cpu/table.h"
#include "kernels.h"

namespace fastnn {
namespace cpu {
namespace {

bool supports(const char* isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(isa, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
  if (std::strcmp(isa, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
#endif
  return std::strcmp(isa, "generic") == 0;
}

const KernelTable* table_named(const char* isa) {
#if defined(FASTNN_HAVE_AVX512)
  if (std::strcmp(isa, "avx512") == 0) return &table_avx512();
#endif
#if defined(FASTNN_HAVE_AVX2)
  if (std::strcmp(isa, "avx2") == 0) return &table_avx2();
#endif
  if (std::strcmp(isa, "generic") == 0) return &table_generic();
  return nullptr;
}

const KernelTable* best_table() {
  // FASTNN_ISA=generic|avx2|avx512 narrows the choice (never widens it).
  const char* forced = std::getenv("FASTNN_ISA");
  if (forced && *forced && supports(forced) && table_named(forced)) return table_named(forced);
  for (const char* isa : {"avx512", "avx2", "generic"})
    if (supports(isa) && table_named(isa)) return table_named(isa);
  return &table_generic();
}

std::atomic<const KernelTable*> g_table{nullptr};
std::atomic<int> g_threads{0};

const KernelTable& table() {
  const KernelTable* t = g_table.load(std::memory_order_acquire);
  if (!t) {
    t = best_table();
    g_table.store(t, std::memory_order_release);
  }
  return *t;
}

template <class T> const KernelSet<T>& kernels();
template <> const KernelSet<float>& kernels<float>() { return table().f32; }
template <> const KernelSet<double>& kernels<double>() { return table().f64; }

struct Scratch {
  void* ptr = nullptr;
  size_t bytes = 0;
  ~Scratch() { std::free(ptr); }
};
thread_local Scratch t_scratch[kNumScratchSlots];

}  // namespace

void* scratch(int slot, size_t bytes) {
  Scratch& s = t_scratch[slot];
  if (s.bytes < bytes) {
    std::free(s.ptr);
    size_t rounded = (bytes + 4095) & ~size_t(4095);
    s.ptr = std::aligned_alloc(64, rounded);
    s.bytes = s.ptr ? rounded : 0;
    if (!s.ptr) std::abort();  // out of memory inside a kernel: nothing sane to return
  }
  return s.ptr;
}

namespace {

// --- threads that the machine can actually give us ---------------------------
// Every parallel kernel meets its threads at barriers. When another process
// keeps a core busy, the thread that lands on it runs only when the scheduler
// lets it, and every barrier waits for it: a small MLP step went from 0.2 ms to
// 20 ms. So, at most every 100 ms, the kernels look at how much CPU the rest of
// the machine used since the last look (/proc/stat busy minus this process's
// own utime+stime) and use only the cores it left idle. The MLP kernels are
// deterministic across thread counts, so this changes no result bits there.
// FASTNN_ADAPTIVE_THREADS=0 (or set_adaptive_threads(false)) turns it off.

std::atomic<bool> g_adaptive{[] {
  const char* e = std::getenv("FASTNN_ADAPTIVE_THREADS");
  return !(e && std::strcmp(e, "0") == 0);
}()};
std::atomic<int64_t> g_next_check_ns{0};
std::atomic<int> g_free_cores{0};  // 0: not measured yet
std::atomic_flag g_checking = ATOMIC_FLAG_INIT;
unsigned long long g_prev_busy = 0, g_prev_total = 0, g_prev_self = 0;  // guarded by g_checking

bool read_cpu_times(unsigned long long& busy, unsigned long long& total, unsigned long long& self) {
  unsigned long long v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return false;
  int got = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                        &v[6], &v[7]);
  std::fclose(f);
  if (got < 5) return false;
  total = 0;
  for (unsigned long long x : v) total += x;
  busy = total - v[3] - v[4];  // minus idle and iowait
  char line[1024];
  f = std::fopen("/proc/self/stat", "r");
  if (!f) return false;
  size_t n = std::fread(line, 1, sizeof(line) - 1, f);
  std::fclose(f);
  line[n] = 0;
  const char* p = std::strrchr(line, ')');  // the command name may hold spaces and parentheses
  unsigned long long ut = 0, st = 0;
  if (!p || std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
    return false;
  self = ut + st;
  return true;
}

void refresh_free_cores() {
  unsigned long long busy, total, self;
  if (!read_cpu_times(busy, total, self)) {
    g_adaptive.store(false, std::memory_order_relaxed);  // no /proc: use the configured count
    return;
  }
  const long ncpu = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  if (g_prev_total && total > g_prev_total) {
    const double window = double(total - g_prev_total) / double(ncpu);  // ticks of wall time per core
    const double others = double(busy - g_prev_busy) - double(self - g_prev_self);
    const double other_cores = std::max(0.0, others / window);
    // Use a core unless others kept it more than ~70% busy.
    g_free_cores.store(std::max(1, int(std::floor(double(ncpu) - other_cores + 0.3))), std::memory_order_relaxed);
  }
  g_prev_busy = busy, g_prev_total = total, g_prev_self = self;
}

int free_cores() {
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now >= g_next_check_ns.load(std::memory_order_relaxed) && !g_checking.test_and_set(std::memory_order_acquire)) {
    g_next_check_ns.store(now + 100000000, std::memory_order_relaxed);
    refresh_free_cores();
    g_checking.clear(std::memory_order_release);
  }
  return g_free_cores.load(std::memory_order_relaxed);
}

}  // namespace

int configured_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

std::atomic<int> g_conv_algo{kConvAuto};
int conv_algorithm() { return g_conv_algo.load(std::memory_order_relaxed); }

int num_threads() {
  // Inside a parallel region (a kernel's batch split calling the GEMM engine)
  // the caller's thread does the work alone. Not left to OpenMP's nesting
  // setting: Numba's OpenMP threading layer turns nesting on for the whole
  // process (max-active-levels 255), and a nested team of two on each of two
  // threads ran the convolutions 4x slower (oversubscribed, meeting at barriers).
  if (omp_in_parallel()) return 1;
  const int n = configured_threads();
  if (n == 1 || !g_adaptive.load(std::memory_order_relaxed)) return n;
  const int free = free_cores();
  return free > 0 ? std::min(n, free) : n;
}

}  // namespace cpu

#define FASTNN_DEFINE(name, Args)                                                   \
  template <class T> void name(const Args<T>& args) { cpu::kernels<T>().name(args); } \
  template void name<float>(const Args<float>&);                                   \
  template void name<double>(const Args<double>&);
FASTNN_CPU_KERNELS(FASTNN_DEFINE)
#undef FASTNN_DEFINE

const char* cpu_isa() { return cpu::table().isa; }

bool set_cpu_isa(const char* name) {
  if (!cpu::supports(name)) return false;
  const cpu::KernelTable* t = cpu::table_named(name);
  if (!t) return false;
  cpu::g_table.store(t, std::memory_order_release);
  return true;
}

const char* cpu_isas_supported() {
  static std::string list = [] {
    std::string s;
    for (const char* isa : {"avx512", "avx2", "generic"})
      if (cpu::supports(isa) && cpu::table_named(isa)) s += s.empty() ? isa : std::string(",") + isa;
    return s;
  }();
  return list.c_str();
}

void set_conv_algorithm(int algo) { cpu::g_conv_algo.store(algo, std::memory_order_relaxed); }
int get_conv_algorithm() { return cpu::conv_algorithm(); }
void set_num_threads(int n) { cpu::g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }
int get_num_threads() { return cpu::configured_threads(); }
int effective_num_threads() { return cpu::num_threads(); }
void set_adaptive_threads(bool on) { cpu::g_adaptive.store(on, std::memory_order_relaxed); }
bool adaptive_threads() { return cpu::g_adaptive.load(std::memory_order_relaxed); }

}  // namespace fastnn
