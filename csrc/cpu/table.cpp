// Fills this ISA's kernel table (compiled once per ISA like the kernels).
#include "cpu/isa.h"
#include "cpu/table.h"

#define FASTNN_STR2(x) #x
#define FASTNN_STR(x) FASTNN_STR2(x)
#define FASTNN_CAT2(a, b) a##b
#define FASTNN_CAT(a, b) FASTNN_CAT2(a, b)

namespace fastnn::cpu {

const KernelTable& FASTNN_CAT(table_, FASTNN_ISA)() {
#define FASTNN_F32(name, Args) &FASTNN_ISA::name<float>,
#define FASTNN_F64(name, Args) &FASTNN_ISA::name<double>,
  static const KernelTable table = {
      FASTNN_STR(FASTNN_ISA),
      KernelSet<float>{FASTNN_CPU_KERNELS(FASTNN_F32)},
      KernelSet<double>{FASTNN_CPU_KERNELS(FASTNN_F64)},
  };
#undef FASTNN_F32
#undef FASTNN_F64
  return table;
}

}  // namespace fastnn::cpu
