// Run-time choice of the CPU code path and the definitions of kernels.h.
// Compiled once, for baseline x86-64: it must run on any processor so it can
// ask the processor which of the per-ISA tables it may use.
#include <omp.h>

#include <atomic>
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

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
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

void set_num_threads(int n) { cpu::g_threads.store(n > 0 ? n : 0, std::memory_order_relaxed); }
int get_num_threads() { return cpu::num_threads(); }

}  // namespace fastnn
