// Winograd F(2x2, 3x3) convolution for 3x3, stride-1 convolutions (conv_winograd.cpp).
// Included only by per-ISA sources (cpu/isa.h), inside namespace <isa>.
#pragma once

#include "cpu/isa.h"

namespace fastnn::cpu::FASTNN_ISA {

// Bytes a convolution's per-thread working set may take: half this core's L2,
// 256 KiB to 1 MiB (conv.cpp).
int64_t conv_cache_budget();

// Whether conv2d_forward/backward take the Winograd path for this shape (3x3,
// stride 1, padding 0..2, enough channels; conv_algorithm() can force either way).
bool winograd_applies(const ConvShape& s);

// y = act(conv(x, weight) + bias), as conv2d_forward.
template <class T>
void winograd_forward(const Conv2dForwardArgs<T>& a);

// dweight (and dx when asked for) from dz (N, F, OH, OW), as conv2d_backward;
// dw is summed over `groups` fixed groups of the batch (bit-identical at any
// thread count). dbias_here: also dbias (when asked for) from dz, summed in the
// same pass (the identity activation, where dz is dy and needs no pass of its own).
template <class T>
void winograd_backward(const Conv2dBackwardArgs<T>& a, const T* dz, int64_t groups, bool dbias_here);

}  // namespace fastnn::cpu::FASTNN_ISA
