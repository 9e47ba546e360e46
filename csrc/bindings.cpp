// fastnn._C: the one Python module of the CPU kernels. Each binding checks its
// arguments (type, dtype, rank, shape, contiguity, writability), raising
// TypeError/ValueError that name the argument, then releases the GIL and calls
// kernels.h. No logic lives here beyond that.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <omp.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using fastnn::Act;
using fastnn::Rule;

namespace {

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

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s(size_t(a.ndim()));
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s[size_t(d)] = int64_t(a.shape(d));
  return s;
}

// The checked data pointer of argument `name`: a C-contiguous ndarray of dtype
// T whose shape matches `shape` (-1 = any size along that axis).
template <class T>
T* checked(const py::handle& obj, const char* name, const std::vector<int64_t>& shape,
           bool writable = false) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " +
                         std::string(py::str(py::dtype::of<T>())) + " (the dtype of the first input), got " +
                         std::string(py::str(a.dtype())));
  auto got = shape_of(a);
  bool ok = got.size() == shape.size();
  for (size_t d = 0; ok && d < shape.size(); ++d) ok = shape[d] < 0 || shape[d] == got[d];
  if (!ok)
    throw py::value_error(std::string(name) + " must have shape " + shape_str(shape) + ", got " +
                          shape_str(got));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) +
                          " must be C-contiguous (pass numpy.ascontiguousarray(" + name + "))");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + " must be writable");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

template <class T>
T* checked_or_null(const py::object& obj, const char* name, const std::vector<int64_t>& shape,
                   bool writable = false) {
  return obj.is_none() ? nullptr : checked<T>(obj, name, shape, writable);
}

int64_t dim(const py::handle& obj, const char* name, int ndim, int axis) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) + "-D, got shape " +
                          shape_str(shape_of(a)));
  return int64_t(a.shape(axis));
}

// Calls f(T{}) with T the floating dtype of `ref` (float32 or float64).
template <class F>
auto by_dtype(const py::handle& ref, const char* name, F&& f) {
  if (!py::isinstance<py::array>(ref))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(ref).attr("__name__"))));
  auto dt = py::reinterpret_borrow<py::array>(ref).dtype();
  if (dt.is(py::dtype::of<float>())) return f(float{});
  if (dt.is(py::dtype::of<double>())) return f(double{});
  throw py::type_error(std::string(name) + " must have dtype float32 or float64, got " +
                       std::string(py::str(dt)));
}

Act act_of(int code, double /*alpha: checked in ops.py*/) {
  if (code < 0 || code >= fastnn::kNumActs)
    throw py::value_error("act must be an activation code in [0, " + std::to_string(fastnn::kNumActs) +
                          "), got " + std::to_string(code));
  // Semantic checks (alpha's range per activation, max_norm > 0, ...) live in
  // fastnn/ops.py, the one place every backend goes through; the bindings check
  // what memory safety needs (codes, shapes, dtypes, layouts, index ranges).
  return Act(code);
}

void gemm(py::object a, py::object b, py::object c, bool trans_a, bool trans_b, double beta) {
  by_dtype(a, "a", [&](auto tag) {
    using T = decltype(tag);
    int64_t ar = dim(a, "a", 2, 0), ac = dim(a, "a", 2, 1);
    int64_t m = trans_a ? ac : ar, k = trans_a ? ar : ac;
    int64_t n = trans_b ? dim(b, "b", 2, 0) : dim(b, "b", 2, 1);
    const T* pa = checked<T>(a, "a", {ar, ac});
    const T* pb = checked<T>(b, "b", trans_b ? std::vector<int64_t>{n, k} : std::vector<int64_t>{k, n});
    T* pc = checked<T>(c, "c", {m, n}, true);
    fastnn::GemmArgs<T> g{m, n, k,
                          pa, trans_a ? 1 : k, trans_a ? m : 1,
                          pb, trans_b ? 1 : n, trans_b ? k : 1,
                          pc, n, T(beta)};
    py::gil_scoped_release nogil;
    fastnn::gemm(g);
  });
}

void linear_act_forward(py::object x, py::object weight, py::object bias, py::object y, py::object z,
                        int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    int64_t n = dim(x, "x", 2, 0), d = dim(x, "x", 2, 1), m = dim(weight, "weight", 2, 1);
    fastnn::LinearActForwardArgs<T> args{
        n, d, m,
        checked<T>(x, "x", {n, d}), checked<T>(weight, "weight", {d, m}),
        checked_or_null<T>(bias, "bias", {m}),
        checked<T>(y, "y", {n, m}, true), checked_or_null<T>(z, "z", {n, m}, true),
        a, T(alpha)};
    if (fastnn::act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (pre-activation buffer) is required for this activation");
    py::gil_scoped_release nogil;
    fastnn::linear_act_forward(args);
  });
}

void linear_act_backward(py::object dy, py::object x, py::object weight, py::object y, py::object z,
                         py::object dz_work, py::object dx, py::object dweight, py::object dbias,
                         py::object dalpha, int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    int64_t n = dim(dy, "dy", 2, 0), m = dim(dy, "dy", 2, 1), d = dim(x, "x", 2, 1);
    fastnn::LinearActBackwardArgs<T> args{
        n, d, m,
        checked<T>(dy, "dy", {n, m}), checked<T>(x, "x", {n, d}), checked<T>(weight, "weight", {d, m}),
        checked<T>(y, "y", {n, m}), checked_or_null<T>(z, "z", {n, m}),
        checked<T>(dz_work, "dz_work", {n, m}, true), checked_or_null<T>(dx, "dx", {n, d}, true),
        checked<T>(dweight, "dweight", {d, m}, true), checked_or_null<T>(dbias, "dbias", {m}, true),
        checked_or_null<T>(dalpha, "dalpha", {1}, true),
        a, T(alpha)};
    if (fastnn::act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (saved pre-activation) is required for this activation");
    py::gil_scoped_release nogil;
    fastnn::linear_act_backward(args);
  });
}

void act_forward(py::object x, py::object y, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto shape = shape_of(py::reinterpret_borrow<py::array>(x));
    int64_t n = 1;
    for (auto s : shape) n *= s;
    fastnn::ActForwardArgs<T> args{n, checked<T>(x, "x", shape), checked<T>(y, "y", shape, true), a, T(alpha)};
    py::gil_scoped_release nogil;
    fastnn::act_forward(args);
  });
}

void act_backward(py::object dy, py::object x, py::object y, py::object dx, py::object dalpha, int act,
                  double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto shape = shape_of(py::reinterpret_borrow<py::array>(dy));
    int64_t n = 1;
    for (auto s : shape) n *= s;
    fastnn::ActBackwardArgs<T> args{n, checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
                                    checked<T>(y, "y", shape), checked<T>(dx, "dx", shape, true),
                                    checked_or_null<T>(dalpha, "dalpha", {1}, true), a, T(alpha)};
    py::gil_scoped_release nogil;
    fastnn::act_backward(args);
  });
}

template <class T>
const int64_t* checked_labels(const py::object& labels, int64_t n, int64_t c) {
  const int64_t* lab = checked<int64_t>(labels, "labels", {n});
  int64_t bad = -1;
  for (int64_t i = 0; i < n && bad < 0; ++i)
    if (lab[i] < 0 || lab[i] >= c) bad = i;
  if (bad >= 0)
    throw py::value_error("labels must be in [0, " + std::to_string(c) + "), got labels[" +
                          std::to_string(bad) + "] = " + std::to_string(lab[bad]));
  return lab;
}

// labels (N,) int64 or None; targets (N, C) of the scores' dtype or None: at most
// one (forward; neither computes only probs), exactly one (backward).
void one_target(const py::object& labels, const py::object& targets, bool required) {
  if (!labels.is_none() && !targets.is_none())
    throw py::value_error("give labels or targets, not both");
  if (required && labels.is_none() && targets.is_none())
    throw py::value_error("labels or targets is required");
}

double softmax_xent_forward(py::object scores, py::object labels, py::object targets, py::object probs) {
  one_target(labels, targets, false);
  return by_dtype(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(scores, "scores", 2, 0), c = dim(scores, "scores", 2, 1);
    if (c < 1) throw py::value_error("scores must have at least one class column");
    T loss = T(0);
    fastnn::SoftmaxXentForwardArgs<T> args{n, c, checked<T>(scores, "scores", {n, c}),
                                           labels.is_none() ? nullptr : checked_labels<T>(labels, n, c),
                                           checked_or_null<T>(targets, "targets", {n, c}),
                                           checked<T>(probs, "probs", {n, c}, true), &loss};
    {
      py::gil_scoped_release nogil;
      fastnn::softmax_xent_forward(args);
    }
    return double(loss);
  });
}

void softmax_xent_backward(py::object probs, py::object labels, py::object targets, py::object dscores,
                           double scale) {
  one_target(labels, targets, true);
  by_dtype(probs, "probs", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(probs, "probs", 2, 0), c = dim(probs, "probs", 2, 1);
    fastnn::SoftmaxXentBackwardArgs<T> args{n, c, checked<T>(probs, "probs", {n, c}),
                                            labels.is_none() ? nullptr : checked_labels<T>(labels, n, c),
                                            checked_or_null<T>(targets, "targets", {n, c}),
                                            checked<T>(dscores, "dscores", {n, c}, true), T(scale)};
    py::gil_scoped_release nogil;
    fastnn::softmax_xent_backward(args);
  });
}

// hyper: (S, kNumHyperFields) float64 rows, one field per OptimHyper member in
// FASTNN_OPTIM_HYPER's order (exported as HYPER_FIELDS).
void optim_step(int rule, py::object param, py::object grad, py::object state1, py::object state2,
                py::object seg_begin, py::object hyper) {
  if (rule < 0 || rule >= fastnn::kNumRules)
    throw py::value_error("rule must be an optimizer rule code in [0, " + std::to_string(fastnn::kNumRules - 1) +
                          "], got " + std::to_string(rule));
  if (!py::isinstance<py::array>(seg_begin) || !py::isinstance<py::array>(hyper))
    throw py::type_error("seg_begin and hyper must be numpy arrays");
  by_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(param, "param", 1, 0);
    int64_t s = dim(hyper, "hyper", 2, 0);
    const int64_t* seg = checked<int64_t>(seg_begin, "seg_begin", {s + 1});
    const double* hy = checked<double>(hyper, "hyper", {s, fastnn::kNumHyperFields});
    if (s < 1 || seg[0] != 0 || seg[s] != n)
      throw py::value_error("seg_begin must start at 0 and end at len(param)");
    for (int64_t i = 0; i < s; ++i)
      if (seg[i + 1] < seg[i]) throw py::value_error("seg_begin must be non-decreasing");
    Rule r = Rule(rule);
    bool needs1 = r != Rule::sgd, needs2 = r == Rule::adam || r == Rule::adamw;
    std::vector<fastnn::OptimHyper<T>> h(static_cast<size_t>(s));
    for (int64_t i = 0; i < s; ++i)
      h[size_t(i)] = fastnn::optim_hyper_from_row<T>(hy + i * fastnn::kNumHyperFields);
    fastnn::OptimStepArgs<T> args{n, checked<T>(param, "param", {n}, true), checked<T>(grad, "grad", {n}),
                                  needs1 ? checked<T>(state1, "state1", {n}, true) : nullptr,
                                  needs2 ? checked<T>(state2, "state2", {n}, true) : nullptr,
                                  s, seg, h.data(), r};
    py::gil_scoped_release nogil;
    fastnn::optim_step(args);
  });
}

// x of rank 2 (N, C) or more (N, C, *spatial) -> (N, C, S).
std::vector<int64_t> ncs_of(const py::object& x, const char* name) {
  if (!py::isinstance<py::array>(x))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         std::string(py::str(py::type::of(x).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(x);
  if (a.ndim() < 2)
    throw py::value_error(std::string(name) + " must be (N, C) or (N, C, H, W), got shape " + shape_str(shape_of(a)));
  int64_t s = 1;
  for (py::ssize_t d = 2; d < a.ndim(); ++d) s *= int64_t(a.shape(d));
  return {int64_t(a.shape(0)), int64_t(a.shape(1)), s};
}

void batchnorm_forward(py::object x, py::object gamma, py::object beta, py::object running_mean,
                       py::object running_var, py::object save_mean, py::object save_invstd, py::object y,
                       bool training, double momentum, double eps, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(x));
    const int64_t c = ncs[1];
    fastnn::BatchNormForwardArgs<T> args{
        ncs[0], c, ncs[2],
        checked<T>(x, "x", shape), checked_or_null<T>(gamma, "gamma", {c}), checked_or_null<T>(beta, "beta", {c}),
        checked_or_null<T>(running_mean, "running_mean", {c}, true),
        checked_or_null<T>(running_var, "running_var", {c}, true),
        checked<T>(save_mean, "save_mean", {2, c}, true), checked<T>(save_invstd, "save_invstd", {c}, true),
        checked<T>(y, "y", shape, true), training, T(momentum), T(eps), a, T(alpha)};
    if (!training && (!args.running_mean || !args.running_var))
      throw py::value_error("running_mean and running_var are required in eval mode");
    if (training && double(ncs[0]) * double(ncs[2]) < 2.0)
      throw py::value_error("x must have more than one value per channel in training mode, got shape " +
                            shape_str(shape));
    py::gil_scoped_release nogil;
    fastnn::batchnorm_forward(args);
  });
}

void batchnorm_backward(py::object dy, py::object x, py::object y, py::object gamma, py::object save_mean,
                        py::object save_invstd, py::object dx, py::object dgamma, py::object dbeta, bool training,
                        int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(dy));
    const int64_t c = ncs[1];
    fastnn::BatchNormBackwardArgs<T> args{
        ncs[0], c, ncs[2],
        checked<T>(dy, "dy", shape), checked<T>(x, "x", shape), checked_or_null<T>(y, "y", shape),
        checked_or_null<T>(gamma, "gamma", {c}), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked_or_null<T>(dx, "dx", shape, true),
        checked_or_null<T>(dgamma, "dgamma", {c}, true), checked_or_null<T>(dbeta, "dbeta", {c}, true),
        training, a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    py::gil_scoped_release nogil;
    fastnn::batchnorm_backward(args);
  });
}

void batchnorm_stats(py::object x, py::object shift, py::object sum, py::object sumsq) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(x));
    const int64_t c = ncs[1];
    fastnn::BatchNormStatsArgs<T> args{ncs[0], c, ncs[2], checked<T>(x, "x", shape), checked<T>(shift, "shift", {c}),
                                       checked<double>(sum, "sum", {c}, true),
                                       checked<double>(sumsq, "sumsq", {c}, true)};
    py::gil_scoped_release nogil;
    fastnn::batchnorm_stats(args);
  });
}

void batchnorm_gather_stats(py::object sum, py::object sumsq, double count, py::object shift, py::object running_mean,
                            py::object running_var, py::object save_mean, py::object save_invstd, double momentum,
                            double eps) {
  by_dtype(shift, "shift", [&](auto tag) {
    using T = decltype(tag);
    const int64_t c = dim(shift, "shift", 1, 0);
    if (!(count > 1.0))
      throw py::value_error("count must be more than 1 value per channel when training, got " +
                            std::to_string(count));
    fastnn::BatchNormGatherStatsArgs<T> args{
        c, checked<double>(sum, "sum", {c}), checked<double>(sumsq, "sumsq", {c}), count,
        checked<T>(shift, "shift", {c}), checked_or_null<T>(running_mean, "running_mean", {c}, true),
        checked_or_null<T>(running_var, "running_var", {c}, true), checked<T>(save_mean, "save_mean", {2, c}, true),
        checked<T>(save_invstd, "save_invstd", {c}, true), T(momentum), T(eps)};
    py::gil_scoped_release nogil;
    fastnn::batchnorm_gather_stats(args);
  });
}

void batchnorm_elemt(py::object x, py::object gamma, py::object beta, py::object save_mean, py::object save_invstd,
                     py::object y, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(x));
    const int64_t c = ncs[1];
    fastnn::BatchNormElemtArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(x, "x", shape), checked_or_null<T>(gamma, "gamma", {c}),
        checked_or_null<T>(beta, "beta", {c}), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked<T>(y, "y", shape, true), a, T(alpha)};
    py::gil_scoped_release nogil;
    fastnn::batchnorm_elemt(args);
  });
}

void batchnorm_backward_reduce(py::object dy, py::object x, py::object y, py::object save_mean,
                               py::object save_invstd, py::object sum_dz, py::object sum_dz_xhat, py::object dgamma,
                               py::object dbeta, int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(dy));
    const int64_t c = ncs[1];
    fastnn::BatchNormBackwardReduceArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
        checked_or_null<T>(y, "y", shape), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked<double>(sum_dz, "sum_dz", {c}, true),
        checked<double>(sum_dz_xhat, "sum_dz_xhat", {c}, true), checked_or_null<T>(dgamma, "dgamma", {c}, true),
        checked_or_null<T>(dbeta, "dbeta", {c}, true), a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    py::gil_scoped_release nogil;
    fastnn::batchnorm_backward_reduce(args);
  });
}

void batchnorm_backward_elemt(py::object dy, py::object x, py::object y, py::object gamma, py::object save_mean,
                              py::object save_invstd, py::object mean_dz, py::object mean_dz_xhat, py::object dx,
                              int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(py::reinterpret_borrow<py::array>(dy));
    const int64_t c = ncs[1];
    fastnn::BatchNormBackwardElemtArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
        checked_or_null<T>(y, "y", shape), checked_or_null<T>(gamma, "gamma", {c}),
        checked<T>(save_mean, "save_mean", {2, c}), checked<T>(save_invstd, "save_invstd", {c}),
        checked_or_null<double>(mean_dz, "mean_dz", {c}), checked_or_null<double>(mean_dz_xhat, "mean_dz_xhat", {c}),
        checked<T>(dx, "dx", shape, true), a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    if (!args.mean_dz != !args.mean_dz_xhat)
      throw py::value_error("mean_dz and mean_dz_xhat must both be given (training) or both be None (eval)");
    py::gil_scoped_release nogil;
    fastnn::batchnorm_backward_elemt(args);
  });
}

void dropout(py::object x, py::object y, uint64_t seed, uint64_t offset, uint64_t threshold, double scale) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    auto shape = shape_of(py::reinterpret_borrow<py::array>(x));
    int64_t n = 1;
    for (auto d : shape) n *= d;
    if (threshold > (uint64_t(1) << 32)) throw py::value_error("threshold must be <= 2**32");
    fastnn::DropoutArgs<T> args{n, checked<T>(x, "x", shape), checked<T>(y, "y", shape, true),
                                seed, offset, threshold, T(scale)};
    py::gil_scoped_release nogil;
    fastnn::dropout(args);
  });
}

void stream_triad(py::object a, py::object b, py::object c, double scalar) {
  by_dtype(a, "a", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(a, "a", 1, 0);
    fastnn::StreamTriadArgs<T> args{n, checked<T>(a, "a", {n}, true), checked<T>(b, "b", {n}),
                                    checked<T>(c, "c", {n}), T(scalar)};
    py::gil_scoped_release nogil;
    fastnn::stream_triad(args);
  });
}

void max_norm(py::object param, py::object offset, py::object rows, py::object cols, py::object limit) {
  by_dtype(param, "param", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(param, "param", 1, 0);
    int64_t k = dim(offset, "offset", 1, 0);
    fastnn::MaxNormArgs<T> args{checked<T>(param, "param", {n}, true), k, checked<int64_t>(offset, "offset", {k}),
                                checked<int64_t>(rows, "rows", {k}), checked<int64_t>(cols, "cols", {k}),
                                checked<double>(limit, "max_norm", {k})};
    for (int64_t i = 0; i < k; ++i) {
      if (args.offset[i] < 0 || args.rows[i] < 0 || args.cols[i] < 0 ||
          args.offset[i] + args.rows[i] * args.cols[i] > n)
        throw py::value_error("matrix " + std::to_string(i) + " (offset, rows, cols) lies outside param");
    }
    py::gil_scoped_release nogil;
    fastnn::max_norm(args);
  });
}

// The convolution geometry of x (N, C, H, W) and weight (F, C, KH, KW), checked.
fastnn::ConvShape conv_shape(const py::object& x, const py::object& weight, int64_t sh, int64_t sw, int64_t ph,
                             int64_t pw) {
  const int64_t n = dim(x, "x", 4, 0), c = dim(x, "x", 4, 1), h = dim(x, "x", 4, 2), w = dim(x, "x", 4, 3);
  const int64_t f = dim(weight, "weight", 4, 0), wc = dim(weight, "weight", 4, 1);
  const int64_t kh = dim(weight, "weight", 4, 2), kw = dim(weight, "weight", 4, 3);
  if (wc != c)
    throw py::value_error("weight must have shape (F, " + std::to_string(c) + ", KH, KW) to match the " +
                          std::to_string(c) + " channels of x, got " +
                          shape_str(shape_of(py::reinterpret_borrow<py::array>(weight))));
  if (sh < 1 || sw < 1)
    throw py::value_error("stride must be >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) + ")");
  if (ph < 0 || pw < 0)
    throw py::value_error("padding must be >= 0, got (" + std::to_string(ph) + ", " + std::to_string(pw) + ")");
  if (kh < 1 || kw < 1 || f < 1 || c < 1)
    throw py::value_error("weight must have a nonzero shape, got " +
                          shape_str(shape_of(py::reinterpret_borrow<py::array>(weight))));
  if (kh > h + 2 * ph || kw > w + 2 * pw)
    throw py::value_error("kernel (" + std::to_string(kh) + ", " + std::to_string(kw) +
                          ") is larger than the padded input (" + std::to_string(h + 2 * ph) + ", " +
                          std::to_string(w + 2 * pw) + ")");
  return {n, c, h, w, f, kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1};
}

void conv2d_forward(py::object x, py::object weight, py::object bias, py::object y, py::object z, int64_t stride_h,
                    int64_t stride_w, int64_t pad_h, int64_t pad_w, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    const fastnn::ConvShape s = conv_shape(x, weight, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.f, s.oh, s.ow};
    fastnn::Conv2dForwardArgs<T> args{
        s, checked<T>(x, "x", {s.n, s.c, s.h, s.w}), checked<T>(weight, "weight", {s.f, s.c, s.kh, s.kw}),
        checked_or_null<T>(bias, "bias", {s.f}), checked<T>(y, "y", out, true),
        checked_or_null<T>(z, "z", out, true), a, T(alpha)};
    if (fastnn::act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (pre-activation buffer) is required for this activation");
    py::gil_scoped_release nogil;
    fastnn::conv2d_forward(args);
  });
}

void conv2d_backward(py::object dy, py::object x, py::object weight, py::object y, py::object z,
                     py::object dz_work, py::object dx, py::object dweight, py::object dbias, py::object dalpha,
                     int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = act_of(act, alpha);
    const fastnn::ConvShape s = conv_shape(x, weight, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.f, s.oh, s.ow}, in{s.n, s.c, s.h, s.w};
    fastnn::Conv2dBackwardArgs<T> args{
        s, checked<T>(dy, "dy", out), checked<T>(x, "x", in), checked<T>(weight, "weight", {s.f, s.c, s.kh, s.kw}),
        checked<T>(y, "y", out), checked_or_null<T>(z, "z", out),
        checked<T>(dz_work, "dz_work", out, true), checked_or_null<T>(dx, "dx", in, true),
        checked<T>(dweight, "dweight", {s.f, s.c, s.kh, s.kw}, true), checked_or_null<T>(dbias, "dbias", {s.f}, true),
        checked_or_null<T>(dalpha, "dalpha", {1}, true), a, T(alpha)};
    if (fastnn::act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (saved pre-activation) is required for this activation");
    py::gil_scoped_release nogil;
    fastnn::conv2d_backward(args);
  });
}

// The pooling geometry of x (N, C, H, W): every window starts inside the
// padded plane and the output is non-empty. (PyTorch's padding <= kernel / 2
// is a semantic rule, checked in ops.py.)
fastnn::PoolShape pool_shape(const py::object& x, const char* name, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                             int64_t ph, int64_t pw) {
  const int64_t n = dim(x, name, 4, 0), c = dim(x, name, 4, 1), h = dim(x, name, 4, 2), w = dim(x, name, 4, 3);
  if (kh < 1 || kw < 1)
    throw py::value_error("kernel_size must be >= 1, got (" + std::to_string(kh) + ", " + std::to_string(kw) + ")");
  if (sh < 1 || sw < 1)
    throw py::value_error("stride must be >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) + ")");
  if (ph < 0 || pw < 0)
    throw py::value_error("padding must be >= 0, got (" + std::to_string(ph) + ", " + std::to_string(pw) + ")");
  if (h < 1 || w < 1)
    throw py::value_error(std::string(name) + " must have a nonzero plane (H, W), got " +
                          shape_str(shape_of(py::reinterpret_borrow<py::array>(x))));
  if (kh > h + 2 * ph || kw > w + 2 * pw)
    throw py::value_error("kernel_size (" + std::to_string(kh) + ", " + std::to_string(kw) +
                          ") is larger than the padded input (" + std::to_string(h + 2 * ph) + ", " +
                          std::to_string(w + 2 * pw) + ")");
  if (h * w > int64_t(INT32_MAX))
    throw py::value_error(std::string(name) + " planes must hold < 2**31 elements (int32 index), got " +
                          std::to_string(h) + " x " + std::to_string(w));
  return {n, c, h, w, kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1};
}

void max_pool2d_forward(py::object x, py::object y, py::object index, int64_t kernel_h, int64_t kernel_w,
                        int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const fastnn::PoolShape s = pool_shape(x, "x", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.c, s.oh, s.ow};
    fastnn::MaxPool2dForwardArgs<T> args{s, checked<T>(x, "x", {s.n, s.c, s.h, s.w}), checked<T>(y, "y", out, true),
                                         checked<int32_t>(index, "index", out, true)};
    py::gil_scoped_release nogil;
    fastnn::max_pool2d_forward(args);
  });
}

void max_pool2d_regions_forward(py::object x, py::object y, py::object index, py::object row_begin,
                                py::object row_end, py::object col_begin, py::object col_end) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(x, "x", 4, 0), c = dim(x, "x", 4, 1), h = dim(x, "x", 4, 2), w = dim(x, "x", 4, 3);
    const int64_t oh = dim(row_begin, "row_begin", 1, 0), ow = dim(col_begin, "col_begin", 1, 0);
    if (h * w > int64_t(INT32_MAX))
      throw py::value_error("x planes must hold < 2**31 elements (int32 index), got " + std::to_string(h) + " x " +
                            std::to_string(w));
    const int64_t* rb = checked<int64_t>(row_begin, "row_begin", {oh});
    const int64_t* re = checked<int64_t>(row_end, "row_end", {oh});
    const int64_t* cb = checked<int64_t>(col_begin, "col_begin", {ow});
    const int64_t* ce = checked<int64_t>(col_end, "col_end", {ow});
    for (int64_t i = 0; i < oh; ++i)
      if (!(0 <= rb[i] && rb[i] < re[i] && re[i] <= h))
        throw py::value_error("region row " + std::to_string(i) + " [" + std::to_string(rb[i]) + ", " +
                              std::to_string(re[i]) + ") must be non-empty and inside [0, " + std::to_string(h) + ")");
    for (int64_t j = 0; j < ow; ++j)
      if (!(0 <= cb[j] && cb[j] < ce[j] && ce[j] <= w))
        throw py::value_error("region column " + std::to_string(j) + " [" + std::to_string(cb[j]) + ", " +
                              std::to_string(ce[j]) + ") must be non-empty and inside [0, " + std::to_string(w) + ")");
    const std::vector<int64_t> out{n, c, oh, ow};
    fastnn::PoolShape s{n, c, h, w, 0, 0, 0, 0, 0, 0, oh, ow};
    fastnn::MaxPool2dRegionsForwardArgs<T> args{s, checked<T>(x, "x", {n, c, h, w}), rb, re, cb, ce,
                                                checked<T>(y, "y", out, true),
                                                checked<int32_t>(index, "index", out, true)};
    py::gil_scoped_release nogil;
    fastnn::max_pool2d_regions_forward(args);
  });
}

void max_pool2d_backward(py::object dy, py::object index, py::object dx) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(dy, "dy", 4, 0), c = dim(dy, "dy", 4, 1), oh = dim(dy, "dy", 4, 2), ow = dim(dy, "dy", 4, 3);
    const int64_t h = dim(dx, "dx", 4, 2), w = dim(dx, "dx", 4, 3);
    const std::vector<int64_t> out{n, c, oh, ow};
    fastnn::MaxPool2dBackwardArgs<T> args{fastnn::PoolShape{n, c, h, w, 0, 0, 0, 0, 0, 0, oh, ow},
                                          checked<T>(dy, "dy", out), checked<int32_t>(index, "index", out),
                                          checked<T>(dx, "dx", {n, c, h, w}, true)};
    // Every index must land inside its plane: one pass, min/max only.
    const int64_t total = n * c * oh * ow, plane = h * w;
    int32_t lo = 0, hi = 0;
    {
      py::gil_scoped_release nogil;
      const int32_t* ix = args.index;
      if (total > 0) lo = hi = ix[0];
#pragma omp simd reduction(min : lo) reduction(max : hi)
      for (int64_t i = 0; i < total; ++i) {
        lo = ix[i] < lo ? ix[i] : lo;
        hi = ix[i] > hi ? ix[i] : hi;
      }
    }
    if (total > 0 && (lo < 0 || int64_t(hi) >= plane))
      throw py::value_error("index must hold in-plane positions in [0, H*W = " + std::to_string(plane) +
                            "), got values in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    py::gil_scoped_release nogil;
    fastnn::max_pool2d_backward(args);
  });
}

void avg_pool2d_forward(py::object x, py::object y, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                        int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const fastnn::PoolShape s = pool_shape(x, "x", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    fastnn::AvgPool2dForwardArgs<T> args{s, checked<T>(x, "x", {s.n, s.c, s.h, s.w}),
                                         checked<T>(y, "y", {s.n, s.c, s.oh, s.ow}, true), count_include_pad};
    py::gil_scoped_release nogil;
    fastnn::avg_pool2d_forward(args);
  });
}

void avg_pool2d_backward(py::object dy, py::object dx, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                         int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const fastnn::PoolShape s = pool_shape(dx, "dx", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    fastnn::AvgPool2dBackwardArgs<T> args{s, checked<T>(dy, "dy", {s.n, s.c, s.oh, s.ow}),
                                          checked<T>(dx, "dx", {s.n, s.c, s.h, s.w}, true), count_include_pad};
    py::gil_scoped_release nogil;
    fastnn::avg_pool2d_backward(args);
  });
}

void global_avg_pool2d_forward(py::object x, py::object y) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(x, "x", 4, 0), c = dim(x, "x", 4, 1), h = dim(x, "x", 4, 2), w = dim(x, "x", 4, 3);
    fastnn::GlobalAvgPool2dForwardArgs<T> args{fastnn::PoolShape{n, c, h, w, h, w, 1, 1, 0, 0, 1, 1},
                                               checked<T>(x, "x", {n, c, h, w}), checked<T>(y, "y", {n, c}, true)};
    py::gil_scoped_release nogil;
    fastnn::global_avg_pool2d_forward(args);
  });
}

void global_avg_pool2d_backward(py::object dy, py::object dx) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(dx, "dx", 4, 0), c = dim(dx, "dx", 4, 1), h = dim(dx, "dx", 4, 2), w = dim(dx, "dx", 4, 3);
    fastnn::GlobalAvgPool2dBackwardArgs<T> args{fastnn::PoolShape{n, c, h, w, h, w, 1, 1, 0, 0, 1, 1},
                                                checked<T>(dy, "dy", {n, c}), checked<T>(dx, "dx", {n, c, h, w}, true)};
    py::gil_scoped_release nogil;
    fastnn::global_avg_pool2d_backward(args);
  });
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "fastnn CPU kernels (C++, SIMD, OpenMP); see csrc/kernels.h";
  mod.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("trans_a") = false,
          py::arg("trans_b") = false, py::arg("beta") = 0.0);
  mod.def("linear_act_forward", &linear_act_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
          py::arg("y"), py::arg("z"), py::arg("act"), py::arg("alpha"));
  mod.def("linear_act_backward", &linear_act_backward, py::arg("dy"), py::arg("x"), py::arg("weight"),
          py::arg("y"), py::arg("z"), py::arg("dz_work"), py::arg("dx"), py::arg("dweight"),
          py::arg("dbias"), py::arg("dalpha"), py::arg("act"), py::arg("alpha"));
  mod.def("act_forward", &act_forward, py::arg("x"), py::arg("y"), py::arg("act"), py::arg("alpha"));
  mod.def("act_backward", &act_backward, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("dx"),
          py::arg("dalpha"), py::arg("act"), py::arg("alpha"));
  mod.def("softmax_xent_forward", &softmax_xent_forward, py::arg("scores"), py::arg("labels"),
          py::arg("targets"), py::arg("probs"));
  mod.def("softmax_xent_backward", &softmax_xent_backward, py::arg("probs"), py::arg("labels"),
          py::arg("targets"), py::arg("dscores"), py::arg("scale"));
  mod.def("optim_step", &optim_step, py::arg("rule"), py::arg("param"), py::arg("grad"), py::arg("state1"),
          py::arg("state2"), py::arg("seg_begin"), py::arg("hyper"));

  mod.def("batchnorm_forward", &batchnorm_forward, py::arg("x"), py::arg("gamma"), py::arg("beta"),
          py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"), py::arg("save_invstd"),
          py::arg("y"), py::arg("training"), py::arg("momentum"), py::arg("eps"), py::arg("act"), py::arg("alpha"));
  mod.def("batchnorm_backward", &batchnorm_backward, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("gamma"),
          py::arg("save_mean"), py::arg("save_invstd"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"),
          py::arg("training"), py::arg("act"), py::arg("alpha"));
  mod.def("batchnorm_stats", &batchnorm_stats, py::arg("x"), py::arg("shift"), py::arg("sum"), py::arg("sumsq"));
  mod.def("batchnorm_gather_stats", &batchnorm_gather_stats, py::arg("sum"), py::arg("sumsq"), py::arg("count"),
          py::arg("shift"), py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"),
          py::arg("save_invstd"), py::arg("momentum"), py::arg("eps"));
  mod.def("batchnorm_elemt", &batchnorm_elemt, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("save_mean"),
          py::arg("save_invstd"), py::arg("y"), py::arg("act"), py::arg("alpha"));
  mod.def("batchnorm_backward_reduce", &batchnorm_backward_reduce, py::arg("dy"), py::arg("x"), py::arg("y"),
          py::arg("save_mean"), py::arg("save_invstd"), py::arg("sum_dz"), py::arg("sum_dz_xhat"), py::arg("dgamma"),
          py::arg("dbeta"), py::arg("act"), py::arg("alpha"));
  mod.def("batchnorm_backward_elemt", &batchnorm_backward_elemt, py::arg("dy"), py::arg("x"), py::arg("y"),
          py::arg("gamma"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("mean_dz"), py::arg("mean_dz_xhat"),
          py::arg("dx"), py::arg("act"), py::arg("alpha"));
  mod.def("dropout", &dropout, py::arg("x"), py::arg("y"), py::arg("seed"), py::arg("offset"),
          py::arg("threshold"), py::arg("scale"));

  mod.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"),
          py::arg("z"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("act"),
          py::arg("alpha"));
  mod.def("conv2d_backward", &conv2d_backward, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("y"),
          py::arg("z"), py::arg("dz_work"), py::arg("dx"), py::arg("dweight"), py::arg("dbias"), py::arg("dalpha"),
          py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("act"),
          py::arg("alpha"));

  mod.def("max_pool2d_forward", &max_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("index"),
          py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
          py::arg("pad_w"));
  mod.def("max_pool2d_regions_forward", &max_pool2d_regions_forward, py::arg("x"), py::arg("y"), py::arg("index"),
          py::arg("row_begin"), py::arg("row_end"), py::arg("col_begin"), py::arg("col_end"));
  mod.def("max_pool2d_backward", &max_pool2d_backward, py::arg("dy"), py::arg("index"), py::arg("dx"));
  mod.def("avg_pool2d_forward", &avg_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("kernel_h"),
          py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
          py::arg("count_include_pad"));
  mod.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("dy"), py::arg("dx"), py::arg("kernel_h"),
          py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
          py::arg("count_include_pad"));
  mod.def("global_avg_pool2d_forward", &global_avg_pool2d_forward, py::arg("x"), py::arg("y"));
  mod.def("global_avg_pool2d_backward", &global_avg_pool2d_backward, py::arg("dy"), py::arg("dx"));

  mod.def("max_norm", &max_norm, py::arg("param"), py::arg("offset"), py::arg("rows"), py::arg("cols"),
          py::arg("max_norm"));
  mod.def("stream_triad", &stream_triad, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("scalar"));

  mod.def("cpu_isa", &fastnn::cpu_isa, "The CPU code path in use: avx512, avx2 or generic.");
  mod.def("set_cpu_isa", [](const std::string& s) { return fastnn::set_cpu_isa(s.c_str()); },
          "Force a CPU code path; returns False if this processor cannot run it.");
  mod.def("cpu_isas_supported", [] { return std::string(fastnn::cpu_isas_supported()); });
  mod.def(
      "set_conv_algorithm",
      [](const std::string& name) {
        const int algo = name == "auto" ? 0 : name == "im2col" ? 1 : name == "winograd" ? 2 : -1;
        if (algo < 0)
          throw py::value_error("algorithm must be 'auto', 'im2col' or 'winograd', got '" + name + "'");
        fastnn::set_conv_algorithm(algo);
      },
      py::arg("algorithm"),
      "3x3 stride-1 convolutions: 'auto' (Winograd F(2x2,3x3) when both channel counts are >= 16), "
      "'im2col' (always im2col + GEMM) or 'winograd' (wherever it applies: padding <= 2).");
  mod.def("get_conv_algorithm", [] {
    const int a = fastnn::get_conv_algorithm();
    return std::string(a == 1 ? "im2col" : a == 2 ? "winograd" : "auto");
  });
  mod.def("set_num_threads", [](int n) {
    if (n < 1) throw py::value_error("n (threads) must be >= 1, got " + std::to_string(n));
    fastnn::set_num_threads(n);
  });
  mod.def("get_num_threads", &fastnn::get_num_threads);
  mod.def("effective_num_threads", &fastnn::effective_num_threads,
          "threads the next kernel uses: the configured count capped by the cores other processes leave idle");
  mod.def("set_adaptive_threads", &fastnn::set_adaptive_threads, py::arg("on"));
  mod.def("adaptive_threads", &fastnn::adaptive_threads);

  // The names tables, generated from the X-macros (ops/activation.h,
  // ops/optim.h, kernels.h); fastnn/backend/codes.py is the Python copy and
  // tests/test_backend.py compares the two.
  py::dict acts;
  py::list saves_preactivation;
  for (int i = 0; i < fastnn::kNumActs; ++i) {
    acts[fastnn::kActNames[i]] = i;
    if (fastnn::act_saves_preactivation(Act(i))) saves_preactivation.append(fastnn::kActNames[i]);
  }
  mod.attr("ACTIVATIONS") = acts;
  mod.attr("SAVES_PREACTIVATION") = py::tuple(saves_preactivation);
  py::dict rules;
  for (int i = 0; i < fastnn::kNumRules; ++i) rules[fastnn::kRuleNames[i]] = i;
  mod.attr("RULES") = rules;
  py::list hyper_fields;
  for (const char* name : fastnn::kHyperFields) hyper_fields.append(name);
  mod.attr("HYPER_FIELDS") = py::tuple(hyper_fields);
  py::list kernels;
#define FASTNN_KERNEL_NAME(name, Args) kernels.append(#name);
  FASTNN_CPU_KERNELS(FASTNN_KERNEL_NAME)
#undef FASTNN_KERNEL_NAME
  mod.attr("KERNELS") = py::tuple(kernels);
  mod.attr("OPENMP") = py::int_(_OPENMP);
}
