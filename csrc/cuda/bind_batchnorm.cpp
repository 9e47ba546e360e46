// fastnn._cuda's batchnorm_* bindings: the names, argument order and checks of
// fastnn._C's (csrc/bindings.cpp), on CuPy arrays; the float64 (C,) sums and
// means of the split kernels are float64 CuPy arrays.
#include <string>
#include <vector>

#include "cuda/bind.h"

namespace fastnn::cuda::bind {
namespace {

// x of rank 2 (N, C) or more (N, C, *spatial) -> (N, C, S).
std::vector<int64_t> ncs_of(const py::handle& x, const char* name) {
  const std::vector<int64_t> shape = shape_of(x, name);
  if (shape.size() < 2)
    throw py::value_error(std::string(name) + " must be (N, C) or (N, C, H, W), got shape " + shape_str(shape));
  int64_t s = 1;
  for (size_t d = 2; d < shape.size(); ++d) s *= shape[d];
  return {shape[0], shape[1], s};
}

// The fused activation must be one whose derivative reads y (ops.py checks it
// too; the kernels have no other form).
Act output_act(int code) {
  Act a = act_of(code);
  if (act_saves_preactivation(a))
    throw py::value_error(std::string("act ") + kActNames[code] +
                          " cannot be fused into batchnorm (its derivative needs the input)");
  return a;
}

void batchnorm_forward(py::object x, py::object gamma, py::object beta, py::object running_mean,
                       py::object running_var, py::object save_mean, py::object save_invstd, py::object y,
                       bool training, double momentum, double eps, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = output_act(act);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(x, "x");
    const int64_t c = ncs[1];
    BatchNormForwardArgs<T> args{
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
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_forward(args, stream);
  });
}

void batchnorm_backward(py::object dy, py::object x, py::object y, py::object gamma, py::object save_mean,
                        py::object save_invstd, py::object dx, py::object dgamma, py::object dbeta, bool training,
                        int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = output_act(act);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(dy, "dy");
    const int64_t c = ncs[1];
    BatchNormBackwardArgs<T> args{
        ncs[0], c, ncs[2],
        checked<T>(dy, "dy", shape), checked<T>(x, "x", shape), checked_or_null<T>(y, "y", shape),
        checked_or_null<T>(gamma, "gamma", {c}), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked_or_null<T>(dx, "dx", shape, true),
        checked_or_null<T>(dgamma, "dgamma", {c}, true), checked_or_null<T>(dbeta, "dbeta", {c}, true),
        training, a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_backward(args, stream);
  });
}

void batchnorm_stats(py::object x, py::object shift, py::object sum, py::object sumsq) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(x, "x");
    const int64_t c = ncs[1];
    BatchNormStatsArgs<T> args{ncs[0], c, ncs[2], checked<T>(x, "x", shape), checked<T>(shift, "shift", {c}),
                               checked<double>(sum, "sum", {c}, true), checked<double>(sumsq, "sumsq", {c}, true)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_stats(args, stream);
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
    BatchNormGatherStatsArgs<T> args{
        c, checked<double>(sum, "sum", {c}), checked<double>(sumsq, "sumsq", {c}), count,
        checked<T>(shift, "shift", {c}), checked_or_null<T>(running_mean, "running_mean", {c}, true),
        checked_or_null<T>(running_var, "running_var", {c}, true), checked<T>(save_mean, "save_mean", {2, c}, true),
        checked<T>(save_invstd, "save_invstd", {c}, true), T(momentum), T(eps)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_gather_stats(args, stream);
  });
}

void batchnorm_elemt(py::object x, py::object gamma, py::object beta, py::object save_mean, py::object save_invstd,
                     py::object y, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    Act a = output_act(act);
    auto ncs = ncs_of(x, "x");
    auto shape = shape_of(x, "x");
    const int64_t c = ncs[1];
    BatchNormElemtArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(x, "x", shape), checked_or_null<T>(gamma, "gamma", {c}),
        checked_or_null<T>(beta, "beta", {c}), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked<T>(y, "y", shape, true), a, T(alpha)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_elemt(args, stream);
  });
}

void batchnorm_backward_reduce(py::object dy, py::object x, py::object y, py::object save_mean,
                               py::object save_invstd, py::object sum_dz, py::object sum_dz_xhat, py::object dgamma,
                               py::object dbeta, int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = output_act(act);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(dy, "dy");
    const int64_t c = ncs[1];
    BatchNormBackwardReduceArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
        checked_or_null<T>(y, "y", shape), checked<T>(save_mean, "save_mean", {2, c}),
        checked<T>(save_invstd, "save_invstd", {c}), checked<double>(sum_dz, "sum_dz", {c}, true),
        checked<double>(sum_dz_xhat, "sum_dz_xhat", {c}, true), checked_or_null<T>(dgamma, "dgamma", {c}, true),
        checked_or_null<T>(dbeta, "dbeta", {c}, true), a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_backward_reduce(args, stream);
  });
}

void batchnorm_backward_elemt(py::object dy, py::object x, py::object y, py::object gamma, py::object save_mean,
                              py::object save_invstd, py::object mean_dz, py::object mean_dz_xhat, py::object dx,
                              int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    Act a = output_act(act);
    auto ncs = ncs_of(dy, "dy");
    auto shape = shape_of(dy, "dy");
    const int64_t c = ncs[1];
    BatchNormBackwardElemtArgs<T> args{
        ncs[0], c, ncs[2], checked<T>(dy, "dy", shape), checked<T>(x, "x", shape),
        checked_or_null<T>(y, "y", shape), checked_or_null<T>(gamma, "gamma", {c}),
        checked<T>(save_mean, "save_mean", {2, c}), checked<T>(save_invstd, "save_invstd", {c}),
        checked_or_null<double>(mean_dz, "mean_dz", {c}), checked_or_null<double>(mean_dz_xhat, "mean_dz_xhat", {c}),
        checked<T>(dx, "dx", shape, true), a, T(alpha)};
    if (a != Act::identity && !args.y) throw py::value_error("y (forward output) is required for a fused activation");
    if (!args.mean_dz != !args.mean_dz_xhat)
      throw py::value_error("mean_dz and mean_dz_xhat must both be given (training) or both be None (eval)");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::batchnorm_backward_elemt(args, stream);
  });
}

}  // namespace

void bind_batchnorm(py::module_& m) {
  m.def("batchnorm_forward", &batchnorm_forward, py::arg("x"), py::arg("gamma"), py::arg("beta"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("y"),
        py::arg("training"), py::arg("momentum"), py::arg("eps"), py::arg("act"), py::arg("alpha"));
  m.def("batchnorm_backward", &batchnorm_backward, py::arg("dy"), py::arg("x"), py::arg("y"), py::arg("gamma"),
        py::arg("save_mean"), py::arg("save_invstd"), py::arg("dx"), py::arg("dgamma"), py::arg("dbeta"),
        py::arg("training"), py::arg("act"), py::arg("alpha"));
  m.def("batchnorm_stats", &batchnorm_stats, py::arg("x"), py::arg("shift"), py::arg("sum"), py::arg("sumsq"));
  m.def("batchnorm_gather_stats", &batchnorm_gather_stats, py::arg("sum"), py::arg("sumsq"), py::arg("count"),
        py::arg("shift"), py::arg("running_mean"), py::arg("running_var"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("momentum"), py::arg("eps"));
  m.def("batchnorm_elemt", &batchnorm_elemt, py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("y"), py::arg("act"), py::arg("alpha"));
  m.def("batchnorm_backward_reduce", &batchnorm_backward_reduce, py::arg("dy"), py::arg("x"), py::arg("y"),
        py::arg("save_mean"), py::arg("save_invstd"), py::arg("sum_dz"), py::arg("sum_dz_xhat"), py::arg("dgamma"),
        py::arg("dbeta"), py::arg("act"), py::arg("alpha"));
  m.def("batchnorm_backward_elemt", &batchnorm_backward_elemt, py::arg("dy"), py::arg("x"), py::arg("y"),
        py::arg("gamma"), py::arg("save_mean"), py::arg("save_invstd"), py::arg("mean_dz"), py::arg("mean_dz_xhat"),
        py::arg("dx"), py::arg("act"), py::arg("alpha"));
}

}  // namespace fastnn::cuda::bind
