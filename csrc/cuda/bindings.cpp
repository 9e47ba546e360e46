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

void act_forward(uintptr_t x, uintptr_t y, int64_t n, const std::string& dtype, int act, double alpha,
                 uintptr_t stream) {
  if (act < 0 || act >= fastnn::kNumActs) throw py::value_error("act code out of range");
  auto s = reinterpret_cast<cudaStream_t>(stream);
  py::gil_scoped_release nogil;
  if (dtype == "float32")
    check(fastnn::cuda::act_forward(reinterpret_cast<const float*>(x), reinterpret_cast<float*>(y), n,
                                    fastnn::Act(act), float(alpha), s), "act_forward");
  else if (dtype == "float64")
    check(fastnn::cuda::act_forward(reinterpret_cast<const double*>(x), reinterpret_cast<double*>(y), n,
                                    fastnn::Act(act), alpha, s), "act_forward");
  else
    throw py::type_error("x must have dtype float32 or float64, got " + dtype);
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
  mod.def("device_count", &device_count);
  mod.attr("CUDART_VERSION") = CUDART_VERSION;
}
