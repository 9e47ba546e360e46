// cuBLASLt, loaded at run time, and the row-major GEMM every CUDA matmul goes
// through (kernels.cuh gemm_rm).
//
// Row-major C (m, n) is column-major C^T (n, m), and C^T = op(B)^T op(A)^T, so
// one column-major cuBLASLt matmul with the operands swapped computes it:
// cuBLASLt's A is our B (n x k, or k x n transposed), its B is our A. A bias
// per column of the row-major C is a bias per row of cuBLASLt's D, which is
// what its BIAS epilogues add.
#include <dlfcn.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "cuda/cublaslt_api.h"
#include "cuda/kernels.cuh"

namespace fastnn::cuda {
namespace lt {
namespace {

std::mutex g_dirs_mu;
std::vector<std::string> g_search_dirs;

std::string folder_of_this_library() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&folder_of_this_library), &info) == 0 || !info.dli_fname) return "";
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

void* open_library(std::string& tried) {
  // The nvidia-cublas wheel installs into site-packages/nvidia/cu13/lib (older
  // wheels: nvidia/cublas/lib); fastnn/_cuda*.so sits in site-packages/fastnn.
  const std::string here = folder_of_this_library();
  std::vector<std::string> candidates = {here + "/../nvidia/cu13/lib/libcublasLt.so.13",
                                         here + "/../nvidia/cublas/lib/libcublasLt.so.13"};
  {
    std::lock_guard<std::mutex> lock(g_dirs_mu);
    for (const auto& d : g_search_dirs) candidates.push_back(d + "/libcublasLt.so.13");
  }
  for (const char* name : {"libcublasLt.so.13", "/usr/local/cuda/lib64/libcublasLt.so.13", "libcublasLt.so"})
    candidates.push_back(name);
  for (const auto& path : candidates) {
    if (void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL)) return h;
    tried += (tried.empty() ? "" : ", ") + path;
  }
  return nullptr;
}

template <class F>
void resolve(void* lib, const char* name, F& fn) {
  void* sym = dlsym(lib, name);
  if (!sym) throw Error(std::string("cuBLASLt: symbol ") + name + " not found in the loaded libcublasLt");
  std::memcpy(&fn, &sym, sizeof(sym));
}

Api load() {
  std::string tried;
  void* lib = open_library(tried);
  if (!lib)
    throw Error("cuBLASLt (libcublasLt.so.13) not found; install it with `pip install nvidia-cublas` "
                "(the fastnn-train[cuda] extra does) or put the CUDA 13 libraries on LD_LIBRARY_PATH. Tried: " +
                tried);
  Api a{};
  resolve(lib, "cublasLtCreate", a.create);
  resolve(lib, "cublasLtGetVersion", a.get_version);
  resolve(lib, "cublasLtMatmulDescCreate", a.desc_create);
  resolve(lib, "cublasLtMatmulDescDestroy", a.desc_destroy);
  resolve(lib, "cublasLtMatmulDescSetAttribute", a.desc_set);
  resolve(lib, "cublasLtMatrixLayoutCreate", a.layout_create);
  resolve(lib, "cublasLtMatrixLayoutDestroy", a.layout_destroy);
  resolve(lib, "cublasLtMatmulPreferenceCreate", a.pref_create);
  resolve(lib, "cublasLtMatmulPreferenceDestroy", a.pref_destroy);
  resolve(lib, "cublasLtMatmulPreferenceSetAttribute", a.pref_set);
  resolve(lib, "cublasLtMatmulAlgoGetHeuristic", a.heuristic);
  resolve(lib, "cublasLtMatmul", a.matmul);
  return a;
}

}  // namespace

void set_search_dirs(std::vector<std::string> dirs) {
  std::lock_guard<std::mutex> lock(g_dirs_mu);
  g_search_dirs = std::move(dirs);
}

const Api& api() {
  static const Api a = load();  // thread-safe; a failed load throws and is retried on the next call
  return a;
}

}  // namespace lt

namespace {

std::atomic<bool> g_allow_tf32{false};
constexpr size_t kMaxWorkspace = size_t(32) << 20;

void lt_check(lt::Status s, const char* what) {
  if (s != lt::kSuccess) throw Error(std::string("cuBLASLt ") + what + " failed with status " + std::to_string(s));
}

lt::Handle handle_for_current_device() {
  static std::mutex mu;
  static std::map<int, lt::Handle> handles;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = handles.find(device);
  if (it != handles.end()) return it->second;
  lt::Handle h = nullptr;
  lt_check(lt::api().create(&h), "cublasLtCreate");
  keep_pool_memory();
  handles[device] = h;
  return h;
}

// The largest power of two (up to 256) dividing the address: cuBLASLt picks
// algorithms for the alignment it is told (parameters are views into a flat
// buffer, so they can sit at any 4-byte offset).
uint32_t alignment_of(const void* p) {
  uintptr_t v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && (v % a) != 0) a >>= 1;
  return a;
}

// RAII holders of the descriptors of one matmul.
struct Desc {
  lt::MatmulDesc d = nullptr;
  ~Desc() { if (d) lt::api().desc_destroy(d); }
};
struct Layout {
  lt::MatrixLayout l = nullptr;
  ~Layout() { if (l) lt::api().layout_destroy(l); }
};
struct Pref {
  lt::Preference p = nullptr;
  ~Pref() { if (p) lt::api().pref_destroy(p); }
};

// Heuristic results are cached per problem: the query costs tens of
// microseconds, more than a small matmul.
using Key = std::tuple<int, int, int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, uint32_t,
                       uint32_t, uint32_t, bool>;
struct Cached {
  bool found;
  lt::HeuristicResult result;
};

}  // namespace

void set_allow_tf32(bool on) { g_allow_tf32 = on; }
bool allow_tf32() { return g_allow_tf32; }

const char* cublaslt_version() {
  static std::string v = [] {
    size_t n = lt::api().get_version();
    return std::to_string(n / 10000) + "." + std::to_string((n / 100) % 100) + "." + std::to_string(n % 100);
  }();
  return v.c_str();
}

template <class T>
bool gemm_rm(cudaStream_t stream, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
             int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, GemmEpilogue epilogue, const T* bias) {
  if (m <= 0 || n <= 0) return true;
  if (k <= 0) {
    // op(A) op(B) is zero: C = beta C (beta is 0 or 1).
    if (beta == T(0)) check(cudaMemset2DAsync(c, size_t(ldc) * sizeof(T), 0, size_t(n) * sizeof(T), size_t(m), stream),
                            "gemm (k = 0)");
    return epilogue == GemmEpilogue::none;
  }
  const lt::Api& L = lt::api();
  lt::Handle h = handle_for_current_device();
  constexpr bool is_f32 = sizeof(T) == 4;
  const cudaDataType_t type = is_f32 ? CUDA_R_32F : CUDA_R_64F;
  const int compute = is_f32 ? (g_allow_tf32 ? lt::kCompute32FFastTF32 : lt::kCompute32F) : lt::kCompute64F;
  const int op_a = trans_b ? lt::kOpT : lt::kOpN;   // cuBLASLt's A is our B
  const int op_b = trans_a ? lt::kOpT : lt::kOpN;   // cuBLASLt's B is our A
  const uint32_t align_a = alignment_of(b), align_b = alignment_of(a), align_c = alignment_of(c);
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");

  auto run = [&](GemmEpilogue ep) -> bool {
    Desc desc;
    lt_check(L.desc_create(&desc.d, compute, type), "MatmulDescCreate");
    lt_check(L.desc_set(desc.d, lt::kDescTransA, &op_a, sizeof(op_a)), "set TRANSA");
    lt_check(L.desc_set(desc.d, lt::kDescTransB, &op_b, sizeof(op_b)), "set TRANSB");
    if (ep != GemmEpilogue::none) {
      const int e = ep == GemmEpilogue::relu_bias ? lt::kEpilogueReluBias : lt::kEpilogueBias;
      lt_check(L.desc_set(desc.d, lt::kDescEpilogue, &e, sizeof(e)), "set EPILOGUE");
      const void* bp = bias;
      lt_check(L.desc_set(desc.d, lt::kDescBiasPointer, &bp, sizeof(bp)), "set BIAS_POINTER");
    }
    Layout la, lb, lc;
    lt_check(L.layout_create(&la.l, type, uint64_t(trans_b ? k : n), uint64_t(trans_b ? n : k), ldb), "layout A");
    lt_check(L.layout_create(&lb.l, type, uint64_t(trans_a ? m : k), uint64_t(trans_a ? k : m), lda), "layout B");
    lt_check(L.layout_create(&lc.l, type, uint64_t(n), uint64_t(m), ldc), "layout C");

    Key key{device, is_f32 ? 4 : 8, op_a, op_b, m, n, k, lda, ldb, ldc, int(ep) * 2 + (compute == lt::kCompute32FFastTF32),
            align_a, align_b, align_c, beta != T(0)};
    static std::mutex mu;
    static std::map<Key, Cached> cache;
    Cached found{};
    bool known = false;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = cache.find(key);
      if (it != cache.end()) { found = it->second; known = true; }
    }
    if (!known) {
      Pref pref;
      lt_check(L.pref_create(&pref.p), "PreferenceCreate");
      uint64_t ws = kMaxWorkspace;
      lt_check(L.pref_set(pref.p, lt::kPrefMaxWorkspaceBytes, &ws, sizeof(ws)), "set MAX_WORKSPACE_BYTES");
      lt_check(L.pref_set(pref.p, lt::kPrefMinAlignmentA, &align_a, sizeof(align_a)), "set MIN_ALIGNMENT_A");
      lt_check(L.pref_set(pref.p, lt::kPrefMinAlignmentB, &align_b, sizeof(align_b)), "set MIN_ALIGNMENT_B");
      lt_check(L.pref_set(pref.p, lt::kPrefMinAlignmentC, &align_c, sizeof(align_c)), "set MIN_ALIGNMENT_C");
      lt_check(L.pref_set(pref.p, lt::kPrefMinAlignmentD, &align_c, sizeof(align_c)), "set MIN_ALIGNMENT_D");
      int returned = 0;
      lt::Status s = L.heuristic(h, desc.d, la.l, lb.l, lc.l, lc.l, pref.p, 1, &found.result, &returned);
      found.found = s == lt::kSuccess && returned > 0 && found.result.state == lt::kSuccess;
      std::lock_guard<std::mutex> lock(mu);
      cache[key] = found;
    }
    if (!found.found) {
      if (ep != GemmEpilogue::none) return false;
      throw Error("cuBLASLt found no algorithm for a " + std::string(is_f32 ? "float32" : "float64") + " matmul (m=" +
                  std::to_string(m) + ", n=" + std::to_string(n) + ", k=" + std::to_string(k) + ")");
    }
    Scratch<char> workspace(int64_t(found.result.workspaceSize), stream, "gemm workspace");
    const T one = T(1);
    lt::Status s = L.matmul(h, desc.d, &one, b, la.l, a, lb.l, &beta, c, lc.l, c, lc.l, &found.result.algo,
                            workspace.get(), found.result.workspaceSize, stream);
    if (s != lt::kSuccess) {
      if (ep != GemmEpilogue::none) return false;
      lt_check(s, "Matmul");
    }
    return true;
  };

  if (epilogue != GemmEpilogue::none && run(epilogue)) return true;
  run(GemmEpilogue::none);
  return epilogue == GemmEpilogue::none;
}

template bool gemm_rm<float>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                             int64_t, float, float*, int64_t, GemmEpilogue, const float*);
template bool gemm_rm<double>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, const double*, int64_t,
                              const double*, int64_t, double, double*, int64_t, GemmEpilogue, const double*);

int num_sms() {
  static std::mutex mu;
  static std::map<int, int> counts;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mu);
  auto it = counts.find(device);
  if (it != counts.end()) return it->second;
  int sms = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  counts[device] = sms;
  return sms;
}

void keep_pool_memory() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return;
  static std::mutex mu;
  static std::map<int, bool> done;
  std::lock_guard<std::mutex> lock(mu);
  if (done[device]) return;
  done[device] = true;
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, device) != cudaSuccess) return;
  uint64_t threshold = UINT64_MAX;
  cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
}

}  // namespace fastnn::cuda
