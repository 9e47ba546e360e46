// Argument checks of the CUDA bindings (bind.h).
#include "cuda/bind.h"

#include <sstream>

namespace fastnn::cuda::bind {

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) o << ", ";
    if (s[i] < 0) o << "*"; else o << s[i];
  }
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

namespace {

// cupy.ndarray, or null when CuPy does not import (looked up once, leaked on purpose).
PyObject* cupy_ndarray_type() {
  static PyObject* type = [] () -> PyObject* {
    try {
      return py::object(py::module_::import("cupy").attr("ndarray")).release().ptr();
    } catch (const py::error_already_set&) {
      return nullptr;
    }
  }();
  return type;
}

}  // namespace

DevView view_of(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw py::type_error(std::string(name) + " must be a CuPy array, got None");
  // CuPy arrays directly from their attributes: building __cuda_array_interface__'s
  // dict costs several microseconds per array, a good part of a small kernel's time.
  PyObject* cupy_type = cupy_ndarray_type();
  if (cupy_type && PyObject_TypeCheck(obj.ptr(), reinterpret_cast<PyTypeObject*>(cupy_type))) {
    DevView v;
    v.ptr = reinterpret_cast<void*>(obj.attr("data").attr("ptr").cast<uintptr_t>());
    for (auto d : py::tuple(obj.attr("shape"))) v.shape.push_back(d.cast<int64_t>());
    v.typestr = obj.attr("dtype").attr("str").cast<std::string>();
    v.contiguous = obj.attr("flags").attr("c_contiguous").cast<bool>();
    return v;
  }
  if (!py::hasattr(obj, "__cuda_array_interface__")) {
    std::string type = py::str(py::type::of(obj).attr("__module__")).cast<std::string>() + "." +
                       py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
    throw py::type_error(std::string(name) + " must be a CuPy array (the cuda backend runs on GPU arrays), got " +
                         type + "; move it with cupy.asarray() or call with NumPy arrays throughout");
  }
  py::dict cai = obj.attr("__cuda_array_interface__");
  DevView v;
  py::tuple data = cai["data"];
  v.ptr = reinterpret_cast<void*>(data[0].cast<uintptr_t>());
  v.readonly = data[1].cast<bool>();
  for (auto d : py::tuple(cai["shape"])) v.shape.push_back(d.cast<int64_t>());
  v.typestr = cai["typestr"].cast<std::string>();
  if (cai.contains("mask") && !cai["mask"].is_none())
    throw py::value_error(std::string(name) + " must not be a masked array");
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    py::tuple strides = cai["strides"];
    int64_t expect = int64_t(v.typestr.size() > 2 ? std::stoi(v.typestr.substr(2)) : 1);
    for (size_t d = v.shape.size(); d-- > 0;) {
      if (v.shape[d] != 1 && strides[d].cast<int64_t>() != expect) v.contiguous = false;
      expect *= v.shape[d];
    }
  }
  return v;
}

void check_view(const DevView& v, const char* name, const char* typestr, const std::vector<int64_t>& shape,
                bool writable) {
  if (v.typestr != typestr) {
    static const char* names[][2] = {{"<f4", "float32"}, {"<f8", "float64"}, {"<i8", "int64"}, {"<i4", "int32"}};
    auto nice = [&](const std::string& t) -> std::string {
      for (auto& n : names)
        if (t == n[0]) return n[1];
      return "typestr " + t;
    };
    throw py::type_error(std::string(name) + " must have dtype " + nice(typestr) + " (matching the other inputs), got " +
                         nice(v.typestr));
  }
  bool ok = v.shape.size() == shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || shape[d] == v.shape[d];
  if (!ok)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(v.shape));
  if (!v.contiguous)
    throw py::value_error(std::string(name) + " must be C-contiguous (pass cupy.ascontiguousarray(" + name + "))");
  if (writable && v.readonly) throw py::value_error(std::string(name) + " must be writable");
  int64_t size = 1;
  for (auto s : v.shape) size *= s;
  if (size > 0 && v.ptr == nullptr) throw py::value_error(std::string(name) + " has a null data pointer");
}

int64_t dim(const py::handle& obj, const char* name, int ndim, int axis) {
  DevView v = view_of(obj, name);
  if (int(v.shape.size()) != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(v.shape));
  return v.shape[size_t(axis)];
}

std::vector<int64_t> shape_of(const py::handle& obj, const char* name) { return view_of(obj, name).shape; }

cudaStream_t current_stream() {
  // Looked up once; leaked on purpose (no Python calls at interpreter teardown).
  static py::object* get = new py::object(py::module_::import("cupy.cuda").attr("get_current_stream"));
  keep_pool_memory();
  return reinterpret_cast<cudaStream_t>((*get)().attr("ptr").cast<uintptr_t>());
}

Act act_of(int code) {
  if (code < 0 || code >= kNumActs)
    throw py::value_error("act must be an activation code in [0, " + std::to_string(kNumActs) + "), got " +
                          std::to_string(code));
  return Act(code);
}

}  // namespace fastnn::cuda::bind
