// fastnn._cuda: the CUDA kernels' Python module. Arrays arrive as raw device
// pointers with their sizes (fastnn/backend/cuda.py unpacks CuPy arrays and
// passes CuPy's current stream), so this module does not depend on CuPy.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <string>

#include "cuda/kernels.cuh"

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Runs launcher<float> or launcher<double> by dtype name, after the GIL is released.
template <class Launch>
void by_dtype(const std::string& dtype, const char* what, Launch&& launch) {
  if (dtype != "float32" && dtype != "float64")
    throw py::type_error(std::string(what) + ": x must have dtype float32 or float64, got " + dtype);
  py::gil_scoped_release nogil;
  if (dtype == "float32")
    check(launch(float{}), what);
  else
    check(launch(double{}), what);
}

void act_forward(uintptr_t x, uintptr_t y, int64_t n, const std::string& dtype, int act, double alpha,
                 uintptr_t stream) {
  if (act < 0 || act >= fastnn::kNumActs) throw py::value_error("act code out of range");
  by_dtype(dtype, "act_forward", [&](auto tag) {
    using T = decltype(tag);
    fastnn::ActForwardArgs<T> a{n, reinterpret_cast<const T*>(x), reinterpret_cast<T*>(y), fastnn::Act(act),
                                T(alpha)};
    return fastnn::cuda::act_forward(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

void dropout(uintptr_t x, uintptr_t y, int64_t n, const std::string& dtype, uint64_t seed, uint64_t offset,
             uint64_t threshold, double scale, uintptr_t stream) {
  if (threshold > (uint64_t(1) << 32)) throw py::value_error("threshold must be <= 2**32");
  by_dtype(dtype, "dropout", [&](auto tag) {
    using T = decltype(tag);
    fastnn::DropoutArgs<T> a{n, reinterpret_cast<const T*>(x), reinterpret_cast<T*>(y), seed, offset, threshold,
                             T(scale)};
    return fastnn::cuda::dropout(a, reinterpret_cast<cudaStream_t>(stream));
  });
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() = "fastnn CUDA kernels; see csrc/cuda/kernels.cuh";
  mod.def("act_forward", &act_forward, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("dtype"),
          py::arg("act"), py::arg("alpha"), py::arg("stream"));
  mod.def("dropout", &dropout, py::arg("x"), py::arg("y"), py::arg("n"), py::arg("dtype"), py::arg("seed"),
          py::arg("offset"), py::arg("threshold"), py::arg("scale"), py::arg("stream"));
  mod.def("device_count", &device_count);
  mod.attr("CUDART_VERSION") = CUDART_VERSION;
}
