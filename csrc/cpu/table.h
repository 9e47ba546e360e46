// The per-ISA kernel tables: one function pointer per kernel in kernels.h.
#pragma once

#include "kernels.h"

namespace fastnn::cpu {

template <class T>
struct KernelSet {
#define FASTNN_FIELD(name, Args) void (*name)(const Args<T>&);
  FASTNN_CPU_KERNELS(FASTNN_FIELD)
#undef FASTNN_FIELD
};

struct KernelTable {
  const char* isa;
  KernelSet<float> f32;
  KernelSet<double> f64;
};

const KernelTable& table_avx512();
const KernelTable& table_avx2();
const KernelTable& table_generic();

}  // namespace fastnn::cpu
