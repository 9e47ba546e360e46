// What every CUDA launcher shares: the error type (a failed launch or library
// call throws fastnn::cuda::Error naming the op; the bindings turn it into a
// Python RuntimeError), grid sizing, and stream-ordered scratch buffers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastnn::cuda {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw Error(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

// After a <<<...>>> launch: a bad configuration shows up here, not at the launch.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

// Blocks for a grid-stride loop over `work` items, `threads` per block (at
// least 1, at most enough for 8 waves of 65535).
inline int grid_for(int64_t work, int threads) {
  const int64_t want = (work + threads - 1) / threads;
  return int(want < 65535 * 8 ? (want > 0 ? want : 1) : 65535 * 8);
}

// The device's multiprocessor count (cached per device).
int num_sms();

// A device buffer of n elements for the duration of one launcher, allocated
// and freed in stream order (cudaMallocAsync from the device's default pool,
// whose freed blocks stay cached, so a buffer per call costs no cudaMalloc).
template <class T>
class Scratch {
 public:
  Scratch(int64_t n, cudaStream_t stream, const char* what) : stream_(stream) {
    if (n > 0) check(cudaMallocAsync(reinterpret_cast<void**>(&p_), size_t(n) * sizeof(T), stream), what);
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, stream_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t stream_;
};

// Keep freed pool memory cached instead of returning it to the driver at every
// synchronization (called once per device before the first Scratch).
void keep_pool_memory();

}  // namespace fastnn::cuda
