// What softmax_xent.cu's launcher throws when a hard label lies outside [0, C)
// (checked on the device, inside the forward kernel): the binding turns it into
// a Python ValueError, as fastnn._C's host-side check does.
#pragma once

#include "cuda/common.cuh"

namespace fastnn::cuda {

struct LabelRangeError : Error {
  using Error::Error;
};

}  // namespace fastnn::cuda
