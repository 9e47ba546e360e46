// Compile-time check that csrc/cuda/cublaslt_api.h (fastnn's own declarations
// of the cuBLASLt entry points it opens at run time) matches the real
// cuBLASLt headers: every enum value, and the layout of the structs passed by
// pointer. Built by bench/gpu_check.sh wherever cublasLt.h is installed:
//   nvcc -std=c++17 -Icsrc -I<dir of cublasLt.h> bench/cuda_api_check.cu -o api_check && ./api_check
#include <cublasLt.h>

#include <cstddef>
#include <cstdio>

#include "cuda/cublaslt_api.h"

namespace lt = fastnn::cuda::lt;

static_assert(CUBLAS_STATUS_SUCCESS == lt::kSuccess);
static_assert(CUBLAS_COMPUTE_32F == lt::kCompute32F);
static_assert(CUBLAS_COMPUTE_32F_FAST_TF32 == lt::kCompute32FFastTF32);
static_assert(CUBLAS_COMPUTE_64F == lt::kCompute64F);
static_assert(CUBLAS_OP_N == lt::kOpN && CUBLAS_OP_T == lt::kOpT);
static_assert(CUBLASLT_MATMUL_DESC_TRANSA == lt::kDescTransA);
static_assert(CUBLASLT_MATMUL_DESC_TRANSB == lt::kDescTransB);
static_assert(CUBLASLT_MATMUL_DESC_EPILOGUE == lt::kDescEpilogue);
static_assert(CUBLASLT_MATMUL_DESC_BIAS_POINTER == lt::kDescBiasPointer);
static_assert(CUBLASLT_EPILOGUE_DEFAULT == lt::kEpilogueDefault);
static_assert(CUBLASLT_EPILOGUE_RELU == lt::kEpilogueRelu);
static_assert(CUBLASLT_EPILOGUE_BIAS == lt::kEpilogueBias);
static_assert(CUBLASLT_EPILOGUE_RELU_BIAS == lt::kEpilogueReluBias);
static_assert(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES == lt::kPrefMaxWorkspaceBytes);
static_assert(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES == lt::kPrefMinAlignmentA);
static_assert(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES == lt::kPrefMinAlignmentB);
static_assert(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES == lt::kPrefMinAlignmentC);
static_assert(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES == lt::kPrefMinAlignmentD);
static_assert(sizeof(cublasLtMatmulAlgo_t) == sizeof(lt::MatmulAlgo));
static_assert(sizeof(cublasLtMatmulHeuristicResult_t) == sizeof(lt::HeuristicResult));
static_assert(offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize) == offsetof(lt::HeuristicResult, workspaceSize));
static_assert(offsetof(cublasLtMatmulHeuristicResult_t, state) == offsetof(lt::HeuristicResult, state));
static_assert(sizeof(cublasStatus_t) == sizeof(lt::Status));
static_assert(sizeof(cublasLtEpilogue_t) == sizeof(int) && sizeof(cublasOperation_t) == sizeof(int));

int main() {
  std::printf("cublaslt_api.h matches cublasLt.h %d.%d.%d\n", CUBLAS_VER_MAJOR, CUBLAS_VER_MINOR, CUBLAS_VER_PATCH);
  return 0;
}
