// The CUDA bindings' argument checks: CuPy (or any __cuda_array_interface__)
// arrays in, checked device pointers out. Each failure raises TypeError or
// ValueError naming the argument, as fastnn._C's checks do for NumPy arrays.
// The bindings of each kernel family live in bind_<family>.cpp and register
// themselves from bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cuda/kernels.cuh"

namespace fastnn::cuda::bind {

namespace py = pybind11;

// A parsed __cuda_array_interface__.
struct DevView {
  void* ptr = nullptr;
  std::vector<int64_t> shape;
  std::string typestr;  // "<f4", "<f8", "<i8", "<i4", ...
  bool contiguous = true;
  bool readonly = false;
};

DevView view_of(const py::handle& obj, const char* name);
std::string shape_str(const std::vector<int64_t>& s);

template <class T> constexpr const char* typestr_of();
template <> constexpr const char* typestr_of<float>() { return "<f4"; }
template <> constexpr const char* typestr_of<double>() { return "<f8"; }
template <> constexpr const char* typestr_of<int64_t>() { return "<i8"; }
template <> constexpr const char* typestr_of<int32_t>() { return "<i4"; }

// The device pointer of argument `name`: a C-contiguous device array of T whose
// shape matches `shape` (-1: any size along that axis).
void check_view(const DevView& v, const char* name, const char* typestr, const std::vector<int64_t>& shape,
                bool writable);

template <class T>
T* checked(const py::handle& obj, const char* name, const std::vector<int64_t>& shape, bool writable = false) {
  DevView v = view_of(obj, name);
  check_view(v, name, typestr_of<T>(), shape, writable);
  return static_cast<T*>(v.ptr);
}

template <class T>
T* checked_or_null(const py::object& obj, const char* name, const std::vector<int64_t>& shape,
                   bool writable = false) {
  return obj.is_none() ? nullptr : checked<T>(obj, name, shape, writable);
}

// Size of axis `axis` of argument `name`, which must have rank `ndim`.
int64_t dim(const py::handle& obj, const char* name, int ndim, int axis);
// The whole shape of argument `name`.
std::vector<int64_t> shape_of(const py::handle& obj, const char* name);

// Calls f(T{}) with T the floating dtype of `ref` (float32 or float64).
template <class F>
auto by_dtype(const py::handle& ref, const char* name, F&& f) {
  DevView v = view_of(ref, name);
  if (v.typestr == "<f4") return f(float{});
  if (v.typestr == "<f8") return f(double{});
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got typestr " + v.typestr);
}

// CuPy's current stream on the current device.
cudaStream_t current_stream();

Act act_of(int code);

// Registration of each family's bindings (bind_<family>.cpp).
void bind_dense(py::module_& m);      // gemm, linear_act, act, dropout, optim_step, max_norm
void bind_softmax(py::module_& m);    // softmax_xent
void bind_batchnorm(py::module_& m);  // batchnorm_*
void bind_conv(py::module_& m);       // conv2d_*
void bind_pool(py::module_& m);       // *pool2d_*

}  // namespace fastnn::cuda::bind
