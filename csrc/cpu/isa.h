// Included by every per-instruction-set CPU source. CMake compiles csrc/cpu/*.cpp
// (all but dispatch.cpp) once per code path with
//   -DFASTNN_ISA=avx512 -DFASTNN_VBYTES=64   (AVX-512F/VL/BW/DQ + FMA)
//   -DFASTNN_ISA=avx2   -DFASTNN_VBYTES=32   (AVX2 + FMA)
//   -DFASTNN_ISA=generic -DFASTNN_VBYTES=16  (baseline x86-64 / SSE2, or any CPU)
// and the matching -m flags; everything defined here lands in the namespace
// fastnn::cpu::<isa>, so the three copies never collide at link time. Shared
// math from ops/ is always inlined (FASTNN_HD) and containers are avoided in
// per-ISA code, so no out-of-line function compiled for a wider ISA can be
// picked by the linker for a narrower path.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/scratch.h"
#include "kernels.h"

#ifndef FASTNN_ISA
#error "csrc/cpu sources are compiled once per ISA with -DFASTNN_ISA=<name>"
#endif
#ifndef FASTNN_VBYTES
#error "FASTNN_VBYTES (SIMD register width in bytes) must be defined"
#endif

namespace fastnn::cpu {

namespace FASTNN_ISA {
#define FASTNN_DECLARE(name, Args) template <class T> void name(const Args<T>& args);
FASTNN_CPU_KERNELS(FASTNN_DECLARE)
#undef FASTNN_DECLARE
}  // namespace FASTNN_ISA

}  // namespace fastnn::cpu
