// fastnn._cuda: the CUDA kernels' Python module. Each binding takes CuPy arrays
// (any object with __cuda_array_interface__) in the argument order of the
// fastnn._C binding of the same name, checks them (bind.h), releases the GIL
// and launches on CuPy's current stream. fastnn/backend/cuda.py registers them.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/bind.h"
#include "cuda/cublaslt_api.h"

namespace py = pybind11;

namespace {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

py::dict device_info(int device) {
  cudaDeviceProp p{};
  fastnn::cuda::check(cudaGetDeviceProperties(&p, device), "device_info");
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  py::dict d;
  d["name"] = std::string(p.name);
  d["compute_capability"] = py::make_tuple(p.major, p.minor);
  d["multiprocessors"] = p.multiProcessorCount;
  d["memory_bytes"] = p.totalGlobalMem;
  d["l2_bytes"] = p.l2CacheSize;
  d["driver_version"] = driver;
  d["runtime_version"] = runtime;
  return d;
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "fastnn CUDA kernels on CuPy arrays; see csrc/cuda/kernels.cuh";
  m.def("device_count", &device_count);
  m.def("device_info", &device_info, py::arg("device") = 0);
  m.def("cublaslt_version", [] { return std::string(fastnn::cuda::cublaslt_version()); },
        "Version of the cuBLASLt library loaded at run time (loads it).");
  m.def("set_allow_tf32", &fastnn::cuda::set_allow_tf32, py::arg("on"),
        "Let float32 matmuls use TF32 tensor cores (off by default, as PyTorch's allow_tf32 for matmul).");
  m.def("allow_tf32", &fastnn::cuda::allow_tf32);
  m.attr("CUDART_VERSION") = CUDART_VERSION;
  // Where pip puts the nvidia-cublas wheel's libraries: <entry>/nvidia/cu13/lib for every sys.path entry.
  {
    std::vector<std::string> dirs;
    for (auto entry : py::module_::import("sys").attr("path"))
      if (py::isinstance<py::str>(entry)) dirs.push_back(entry.cast<std::string>() + "/nvidia/cu13/lib");
    fastnn::cuda::lt::set_search_dirs(std::move(dirs));
  }
  fastnn::cuda::bind::bind_dense(m);
  fastnn::cuda::bind::bind_softmax(m);
  fastnn::cuda::bind::bind_batchnorm(m);
  fastnn::cuda::bind::bind_conv(m);
  fastnn::cuda::bind::bind_pool(m);
}
