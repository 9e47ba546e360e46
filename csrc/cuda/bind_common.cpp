// Argument checks of the CUDA bindings (bind.h).
#include "cuda/bind.h"

namespace fastnn::cuda::bind {

// Without iostreams: formatting an integer through std::ostringstream crashed
// inside this module on the H200 machine's toolchain (a segfault in the stream's
// number formatting, seen on the first shape error a test provoked there).
std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "(";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) o += ", ";
    o += s[i] < 0 ? std::string("*") : std::to_string(s[i]);
  }
  return o + (s.size() == 1 ? ",)" : ")");
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

// The attribute names the CuPy fast path reads, interned once (leaked on purpose).
struct CupyNames {
  PyObject* data = PyUnicode_InternFromString("data");
  PyObject* ptr = PyUnicode_InternFromString("ptr");
  PyObject* shape = PyUnicode_InternFromString("shape");
  PyObject* dtype = PyUnicode_InternFromString("dtype");
  PyObject* str = PyUnicode_InternFromString("str");
  PyObject* c_contiguous_attr = PyUnicode_InternFromString("_c_contiguous");
  PyObject* flags = PyUnicode_InternFromString("flags");
  PyObject* c_contiguous = PyUnicode_InternFromString("c_contiguous");
};

const CupyNames& cupy_names() {
  static const CupyNames* names = new CupyNames();
  return *names;
}

// NumPy's dtype objects of the types the kernels take (NumPy keeps one object per
// builtin type, and CuPy arrays hold those): their typestr without building a string.
struct KnownDtype {
  PyObject* dtype;
  const char* typestr;
};

const std::vector<KnownDtype>& known_dtypes() {
  static const std::vector<KnownDtype>* known = [] {
    auto* v = new std::vector<KnownDtype>();
    py::object np_dtype = py::module_::import("numpy").attr("dtype");
    for (const char* t : {"<f4", "<f8", "<i8", "<i4"}) v->push_back({np_dtype(t).release().ptr(), t});
    return v;
  }();
  return *known;
}

py::object get_attr(PyObject* obj, PyObject* name) {
  PyObject* r = PyObject_GetAttr(obj, name);
  if (!r) throw py::error_already_set();
  return py::reinterpret_steal<py::object>(r);
}

// A CuPy array's view from its Cython attributes, through the C API with interned
// names: the same facts as __cuda_array_interface__ at a fraction of a microsecond
// (building that dict, or pybind11's attribute chains, costs microseconds per array,
// and a binding reads up to a dozen arrays: a good part of a small kernel's time).
DevView cupy_view(PyObject* obj) {
  const CupyNames& n = cupy_names();
  DevView v;
  py::object mem = get_attr(obj, n.data);
  py::object ptr = get_attr(mem.ptr(), n.ptr);
  v.ptr = PyLong_AsVoidPtr(ptr.ptr());
  if (PyErr_Occurred()) throw py::error_already_set();
  py::object shape = get_attr(obj, n.shape);
  if (!PyTuple_Check(shape.ptr())) throw py::type_error("a CuPy array's shape is not a tuple");
  const Py_ssize_t ndim = PyTuple_GET_SIZE(shape.ptr());
  v.shape.resize(size_t(ndim));
  for (Py_ssize_t d = 0; d < ndim; ++d) {
    v.shape[size_t(d)] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), d));
    if (PyErr_Occurred()) throw py::error_already_set();
  }
  py::object dtype = get_attr(obj, n.dtype);
  for (const KnownDtype& k : known_dtypes())
    if (k.dtype == dtype.ptr()) v.typestr = k.typestr;
  if (v.typestr.empty()) v.typestr = get_attr(dtype.ptr(), n.str).cast<std::string>();
  PyObject* contiguous = PyObject_GetAttr(obj, n.c_contiguous_attr);
  if (!contiguous) {   // a CuPy without the attribute: its public flags
    PyErr_Clear();
    contiguous = get_attr(get_attr(obj, n.flags).ptr(), n.c_contiguous).release().ptr();
  }
  const int is_true = PyObject_IsTrue(contiguous);
  Py_DECREF(contiguous);
  if (is_true < 0) throw py::error_already_set();
  v.contiguous = is_true == 1;
  return v;
}

}  // namespace

DevView view_of(const py::handle& obj, const char* name) {
  if (obj.is_none()) throw py::type_error(std::string(name) + " must be a CuPy array, got None");
  PyObject* cupy_type = cupy_ndarray_type();
  if (cupy_type && PyObject_TypeCheck(obj.ptr(), reinterpret_cast<PyTypeObject*>(cupy_type)))
    return cupy_view(obj.ptr());
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
