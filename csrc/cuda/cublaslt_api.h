// The part of the cuBLASLt API fastnn calls, declared here and resolved at run
// time (dlopen, blas.cpp), so that fastnn._cuda builds with nvcc alone and
// finds cuBLASLt where PyTorch does: the nvidia-cublas wheel beside the package,
// else the system's CUDA. The values are cuBLASLt 13's (cublasLt.h,
// cublas_api.h); bench/gpu_check.sh compiles cuda_api_check.cu against the real
// headers, whose static_asserts compare every value and the struct sizes.
#pragma once

#include <cuda_runtime.h>
#include <library_types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace fastnn::cuda::lt {

using Status = int;                        // cublasStatus_t
constexpr Status kSuccess = 0;             // CUBLAS_STATUS_SUCCESS
using Handle = struct cublasLtContext*;    // cublasLtHandle_t
using MatmulDesc = void*;                  // cublasLtMatmulDesc_t
using MatrixLayout = void*;                // cublasLtMatrixLayout_t
using Preference = void*;                  // cublasLtMatmulPreference_t

// cublasComputeType_t
constexpr int kCompute32F = 68;            // CUBLAS_COMPUTE_32F
constexpr int kCompute32FFastTF32 = 77;    // CUBLAS_COMPUTE_32F_FAST_TF32
constexpr int kCompute64F = 70;            // CUBLAS_COMPUTE_64F
// cublasOperation_t
constexpr int kOpN = 0, kOpT = 1;
// cublasLtMatmulDescAttributes_t
constexpr int kDescTransA = 3, kDescTransB = 4, kDescEpilogue = 7, kDescBiasPointer = 8;
// cublasLtEpilogue_t
constexpr int kEpilogueDefault = 1, kEpilogueRelu = 2, kEpilogueBias = 4, kEpilogueReluBias = 6;
// cublasLtMatmulPreferenceAttributes_t
constexpr int kPrefMaxWorkspaceBytes = 1;
constexpr int kPrefMinAlignmentA = 5, kPrefMinAlignmentB = 6, kPrefMinAlignmentC = 7, kPrefMinAlignmentD = 8;

struct MatmulAlgo {                        // cublasLtMatmulAlgo_t
  uint64_t data[8];
};

struct HeuristicResult {                   // cublasLtMatmulHeuristicResult_t
  MatmulAlgo algo;
  size_t workspaceSize;
  Status state;
  float wavesCount;
  int reserved[4];
};

// The entry points, filled by load() (blas.cpp).
struct Api {
  Status (*create)(Handle*);
  size_t (*get_version)();
  Status (*desc_create)(MatmulDesc*, int compute, cudaDataType_t scale);
  Status (*desc_destroy)(MatmulDesc);
  Status (*desc_set)(MatmulDesc, int attr, const void* buf, size_t size);
  Status (*layout_create)(MatrixLayout*, cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld);
  Status (*layout_destroy)(MatrixLayout);
  Status (*pref_create)(Preference*);
  Status (*pref_destroy)(Preference);
  Status (*pref_set)(Preference, int attr, const void* buf, size_t size);
  Status (*heuristic)(Handle, MatmulDesc, MatrixLayout, MatrixLayout, MatrixLayout, MatrixLayout, Preference,
                      int requested, HeuristicResult* results, int* returned);
  Status (*matmul)(Handle, MatmulDesc, const void* alpha, const void* a, MatrixLayout, const void* b, MatrixLayout,
                   const void* beta, const void* c, MatrixLayout, void* d, MatrixLayout, const MatmulAlgo* algo,
                   void* workspace, size_t workspace_size, cudaStream_t stream);
};

// Extra folders to look for libcublasLt.so.13 in, before the system's (the
// module passes every sys.path entry's nvidia/cu13/lib at import).
void set_search_dirs(std::vector<std::string> dirs);

// The loaded API (loads libcublasLt on first use; throws fastnn::cuda::Error
// saying where it looked when it is not found).
const Api& api();

}  // namespace fastnn::cuda::lt
