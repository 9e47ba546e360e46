// Launch declarations of the CUDA kernels (csrc/cuda/*.cu). Each launcher takes
// the kernel's argument structure from kernels.h (the same one the CPU kernel
// takes) and the stream to run on (the bindings pass CuPy's current stream);
// it throws fastnn::cuda::Error naming the op when a launch or a library call
// fails. Every pointer in the argument structures is a device pointer, except
// where a launcher's comment below says otherwise.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common.cuh"
#include "kernels.h"

namespace fastnn::cuda {

// Every CUDA kernel: X(name, argument structure). The names and the argument
// structures are the CPU's (kernels.h), so the Python registry maps the same
// op names to either backend.
//   optim_step: seg_begin and hyper are HOST pointers (the launcher passes the
//     segment table to the kernel by value, 24 segments per launch).
//   max_norm: offset, rows, cols and max_norm are HOST pointers (one launch per matrix).
//   softmax_xent_forward: loss is a HOST pointer (the launcher copies the mean
//     loss back, which synchronizes the stream).
#define FASTNN_CUDA_KERNELS(X)                  \
  X(gemm, GemmArgs)                             \
  X(linear_act_forward, LinearActForwardArgs)   \
  X(linear_act_backward, LinearActBackwardArgs) \
  X(act_forward, ActForwardArgs)                \
  X(act_backward, ActBackwardArgs)              \
  X(softmax_xent_forward, SoftmaxXentForwardArgs) \
  X(softmax_xent_backward, SoftmaxXentBackwardArgs) \
  X(optim_step, OptimStepArgs)                  \
  X(max_norm, MaxNormArgs)                      \
  X(dropout, DropoutArgs)                       \
  X(batchnorm_forward, BatchNormForwardArgs)    \
  X(batchnorm_backward, BatchNormBackwardArgs)  \
  X(batchnorm_stats, BatchNormStatsArgs)        \
  X(batchnorm_gather_stats, BatchNormGatherStatsArgs) \
  X(batchnorm_elemt, BatchNormElemtArgs)        \
  X(batchnorm_backward_reduce, BatchNormBackwardReduceArgs) \
  X(batchnorm_backward_elemt, BatchNormBackwardElemtArgs) \
  X(conv2d_forward, Conv2dForwardArgs)          \
  X(conv2d_backward, Conv2dBackwardArgs)        \
  X(max_pool2d_forward, MaxPool2dForwardArgs)   \
  X(max_pool2d_regions_forward, MaxPool2dRegionsForwardArgs) \
  X(max_pool2d_backward, MaxPool2dBackwardArgs) \
  X(avg_pool2d_forward, AvgPool2dForwardArgs)   \
  X(avg_pool2d_backward, AvgPool2dBackwardArgs) \
  X(global_avg_pool2d_forward, GlobalAvgPool2dForwardArgs) \
  X(global_avg_pool2d_backward, GlobalAvgPool2dBackwardArgs)

#define FASTNN_CUDA_DECLARE(name, Args) template <class T> void name(const Args<T>& args, cudaStream_t stream);
FASTNN_CUDA_KERNELS(FASTNN_CUDA_DECLARE)
#undef FASTNN_CUDA_DECLARE

// --- building blocks shared by the launchers -------------------------------------

// cuBLASLt epilogues the GEMM may fuse (bias per output column of the row-major C).
enum class GemmEpilogue : int { none, bias, relu_bias };

// Row-major C (m, n) = op(A) @ op(B) + beta * C through cuBLASLt, where op(A) is
// (m, k): A is stored (m, k) with leading dimension lda, or (k, m) when trans_a
// (likewise B: (k, n), or (n, k) when trans_b). With an epilogue, bias (n,) is
// added to every row (and relu applied). Returns false when cuBLASLt has no
// algorithm for the epilogue: the product was then computed without it and
// the caller applies bias/activation itself. TF32 when set_allow_tf32(true)
// (float32 only).
template <class T>
bool gemm_rm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
             int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc,
             GemmEpilogue epilogue = GemmEpilogue::none, const T* bias = nullptr);

void set_allow_tf32(bool on);
bool allow_tf32();
// "major.minor.patch" of the cuBLASLt library loaded at run time (loads it).
const char* cublaslt_version();

// y[i, j] = act(src[i, j] + bias[j]) over a row-major (rows, cols) block; bias
// may be null; z, when not null, receives the pre-activation. src may be y or z.
template <class T>
void bias_act(cudaStream_t stream, int64_t rows, int64_t cols, const T* src, const T* bias, T* y, T* z, Act act,
              T alpha);

// dz = dy * act'(z or y) over a row-major (rows, cols) block; dbias (cols,), when
// not null, receives the column sums of dz; dalpha (1,), when not null, receives
// sum dy * d act / d alpha (prelu). Sums in double, in an order fixed by the
// shape (deterministic).
template <class T>
void act_grad_colsum(cudaStream_t stream, int64_t rows, int64_t cols, const T* dy, const T* z, const T* y, T* dz,
                     T* dbias, T* dalpha, Act act, T alpha);

// softmax_xent_forward without the read-back: the launches only (no
// synchronization); result (2 device words) receives the bits of the mean loss
// as a double and the first row whose label lies outside [0, C) (all bits set
// when none), for the caller to read with its other results in one transfer.
template <class T>
void softmax_xent_forward_device(const SoftmaxXentForwardArgs<T>& args, unsigned long long* result,
                                 cudaStream_t stream);

// out[0] = sum of x[i]^2 over n elements, accumulated in double in an order
// fixed by n, then rounded to T (a float32 sum beyond float32's range is inf, as
// on the CPU): the optimizer's NaN/Inf check and clipping norm, on the device,
// with no synchronization.
template <class T>
void sum_squares(const T* x, int64_t n, double* out, cudaStream_t stream);

}  // namespace fastnn::cuda
