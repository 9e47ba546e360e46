// Bindings of the dense CUDA kernels: gemm, linear_act, act, dropout, the
// fused optimizer step and max-norm. Argument names and order are those of the
// fastnn._C bindings of the same names (csrc/bindings.cpp).
#include <pybind11/numpy.h>

#include "cuda/bind.h"

namespace fastnn::cuda::bind {
namespace {

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

void gemm_binding(py::object a, py::object b, py::object c, bool trans_a, bool trans_b, double beta) {
  if (beta != 0.0 && beta != 1.0) throw py::value_error("beta must be 0 or 1, got " + std::to_string(beta));
  by_dtype(a, "a", [&](auto tag) {
    using T = decltype(tag);
    int64_t ar = dim(a, "a", 2, 0), ac = dim(a, "a", 2, 1);
    int64_t m = trans_a ? ac : ar, k = trans_a ? ar : ac;
    int64_t n = trans_b ? dim(b, "b", 2, 0) : dim(b, "b", 2, 1);
    const T* pa = checked<T>(a, "a", {ar, ac});
    const T* pb = checked<T>(b, "b", trans_b ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n});
    T* pc = checked<T>(c, "c", {m, n}, true);
    GemmArgs<T> g{m, n, k, pa, trans_a ? 1 : k, trans_a ? m : 1, pb, trans_b ? 1 : n, trans_b ? k : 1, pc, n, T(beta)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    gemm<T>(g, stream);
  });
}

void linear_act_forward_binding(py::object x, py::object weight, py::object bias, py::object y, py::object z, int act,
                                double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act);
    int64_t n = dim(x, "x", 2, 0), d = dim(x, "x", 2, 1), m = dim(weight, "weight", 2, 1);
    LinearActForwardArgs<T> args{n, d, m, checked<T>(x, "x", {n, d}), checked<T>(weight, "weight", {d, m}),
                                 checked_or_null<T>(bias, "bias", {m}), checked<T>(y, "y", {n, m}, true),
                                 checked_or_null<T>(z, "z", {n, m}, true), a, T(alpha)};
    if (act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (pre-activation buffer) is required for this activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    linear_act_forward<T>(args, stream);
  });
}

void linear_act_backward_binding(py::object dy, py::object x, py::object weight, py::object y, py::object z,
                                 py::object dz_work, py::object dx, py::object dweight, py::object dbias,
                                 py::object dalpha, int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act);
    int64_t n = dim(dy, "dy", 2, 0), m = dim(dy, "dy", 2, 1), d = dim(x, "x", 2, 1);
    LinearActBackwardArgs<T> args{n, d, m,
                                  checked<T>(dy, "dy", {n, m}), checked<T>(x, "x", {n, d}),
                                  checked<T>(weight, "weight", {d, m}), checked<T>(y, "y", {n, m}),
                                  checked_or_null<T>(z, "z", {n, m}), checked<T>(dz_work, "dz_work", {n, m}, true),
                                  checked_or_null<T>(dx, "dx", {n, d}, true), checked<T>(dweight, "dweight", {d, m}, true),
                                  checked_or_null<T>(dbias, "dbias", {m}, true),
                                  checked_or_null<T>(dalpha, "dalpha", {1}, true), a, T(alpha)};
    if (act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (saved pre-activation) is required for this activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    linear_act_backward<T>(args, stream);
  });
}

void act_forward_binding(py::object x, py::object y, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act);
    auto shape = shape_of(x, "x");
    ActForwardArgs<T> args{numel(shape), checked<T>(x, "x", shape), checked<T>(y, "y", shape, true), a, T(alpha)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    act_forward<T>(args, stream);
  });
}

void act_backward_binding(py::object dy, py::object x, py::object y, py::object dx, py::object dalpha, int act,
                          double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act);
    auto shape = shape_of(dy, "dy");
    ActBackwardArgs<T> args{numel(shape), checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
                            checked<T>(y, "y", shape), checked<T>(dx, "dx", shape, true),
                            checked_or_null<T>(dalpha, "dalpha", {1}, true), a, T(alpha)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    act_backward<T>(args, stream);
  });
}

void dropout_binding(py::object x, py::object y, uint64_t seed, uint64_t offset, uint64_t threshold, double scale) {
  if (threshold > (uint64_t(1) << 32)) throw py::value_error("threshold must be <= 2**32");
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    auto shape = shape_of(x, "x");
    DropoutArgs<T> args{numel(shape), checked<T>(x, "x", shape), checked<T>(y, "y", shape, true), seed, offset,
                        threshold, T(scale)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    dropout<T>(args, stream);
  });
}

// A host (NumPy) array argument: C-contiguous, dtype H, the given shape.
template <class H>
const H* host_checked(const py::object& obj, const char* name, const std::vector<int64_t>& shape) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray (a host array: the kernel takes it by value), got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<H>()))
    throw py::type_error(std::string(name) + " must have dtype " + py::str(py::dtype::of<H>()).cast<std::string>() +
                         ", got " + py::str(a.dtype()).cast<std::string>());
  std::vector<int64_t> got;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) got.push_back(int64_t(a.shape(d)));
  bool ok = got.size() == shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || shape[d] == got[d];
  if (!ok) throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " + shape_str(got));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  return static_cast<const H*>(a.data());
}

void optim_step_binding(int rule, py::object param, py::object grad, py::object state1, py::object state2,
                        py::object seg_begin, py::object hyper) {
  if (rule < 0 || rule >= kNumRules)
    throw py::value_error("rule must be an optimizer rule code in [0, " + std::to_string(kNumRules - 1) + "], got " +
                          std::to_string(rule));
  by_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(param, "param", 1, 0);
    if (!py::isinstance<py::array>(hyper)) throw py::type_error("hyper must be a numpy.ndarray");
    int64_t s = int64_t(py::reinterpret_borrow<py::array>(hyper).shape(0));
    const int64_t* seg = host_checked<int64_t>(seg_begin, "seg_begin", {s + 1});
    const double* hy = host_checked<double>(hyper, "hyper", {s, fastnn::kNumHyperFields});
    if (s < 1 || seg[0] != 0 || seg[s] != n) throw py::value_error("seg_begin must start at 0 and end at len(param)");
    for (int64_t i = 0; i < s; ++i)
      if (seg[i + 1] < seg[i]) throw py::value_error("seg_begin must be non-decreasing");
    Rule r = Rule(rule);
    bool needs1 = r != Rule::sgd, needs2 = r == Rule::adam || r == Rule::adamw;
    std::vector<OptimHyper<T>> h(static_cast<size_t>(s));
    for (int64_t i = 0; i < s; ++i)
      h[size_t(i)] = fastnn::optim_hyper_from_row<T>(hy + i * fastnn::kNumHyperFields);
    OptimStepArgs<T> args{n, checked<T>(param, "param", {n}, true), checked<T>(grad, "grad", {n}),
                          needs1 ? checked<T>(state1, "state1", {n}, true) : nullptr,
                          needs2 ? checked<T>(state2, "state2", {n}, true) : nullptr, s, seg, h.data(), r};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    optim_step<T>(args, stream);
  });
}

void max_norm_binding(py::object param, py::object offset, py::object rows, py::object cols, py::object limit) {
  by_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(param, "param", 1, 0);
    if (!py::isinstance<py::array>(offset)) throw py::type_error("offset must be a numpy.ndarray");
    int64_t k = int64_t(py::reinterpret_borrow<py::array>(offset).shape(0));
    MaxNormArgs<T> args{checked<T>(param, "param", {n}, true), k, host_checked<int64_t>(offset, "offset", {k}),
                        host_checked<int64_t>(rows, "rows", {k}), host_checked<int64_t>(cols, "cols", {k}),
                        host_checked<double>(limit, "max_norm", {k})};
    for (int64_t i = 0; i < k; ++i) {
      if (args.offset[i] < 0 || args.rows[i] < 0 || args.cols[i] < 0 || args.offset[i] + args.rows[i] * args.cols[i] > n)
        throw py::value_error("matrix " + std::to_string(i) + " (offset, rows, cols) lies outside param");
    }
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    max_norm<T>(args, stream);
  });
}

void sum_squares_binding(py::object x, py::object out) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(x, "x", 1, 0);
    const T* xp = checked<T>(x, "x", {n});
    double* o = checked<double>(out, "out", {1}, true);
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    sum_squares<T>(xp, n, o, stream);
  });
}

}  // namespace

void bind_dense(py::module_& m) {
  m.def("gemm", &gemm_binding, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("beta") = 0.0);
  m.def("linear_act_forward", &linear_act_forward_binding, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("y"), py::arg("z"), py::arg("act"), py::arg("alpha"));
  m.def("linear_act_backward", &linear_act_backward_binding, py::arg("dy"), py::arg("x"), py::arg("weight"),
        py::arg("y"), py::arg("z"), py::arg("dz_work"), py::arg("dx"), py::arg("dweight"), py::arg("dbias"),
        py::arg("dalpha"), py::arg("act"), py::arg("alpha"));
  m.def("act_forward", &act_forward_binding, py::arg("x"), py::arg("y"), py::arg("act"), py::arg("alpha"));
  m.def("act_backward", &act_backward_binding, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("dx"),
        py::arg("dalpha"), py::arg("act"), py::arg("alpha"));
  m.def("dropout", &dropout_binding, py::arg("x"), py::arg("y"), py::arg("seed"), py::arg("offset"),
        py::arg("threshold"), py::arg("scale"));
  m.def("optim_step", &optim_step_binding, py::arg("rule"), py::arg("param"), py::arg("grad"), py::arg("state1"),
        py::arg("state2"), py::arg("seg_begin"), py::arg("hyper"));
  m.def("sum_squares", &sum_squares_binding, py::arg("x"), py::arg("out"),
        "out[0] = sum(x**2) (x 1-D float32/float64, out float64 (1,)), in double, deterministic, rounded to "
        "x's dtype; no synchronization.");
  m.def("max_norm", &max_norm_binding, py::arg("param"), py::arg("offset"), py::arg("rows"), py::arg("cols"),
        py::arg("max_norm"));
}

}  // namespace fastnn::cuda::bind
