// CUDA bindings of conv2d_forward / conv2d_backward: the names, argument order
// and checks of fastnn._C's (csrc/bindings.cpp), on CuPy arrays (bind.h).
#include <string>
#include <vector>

#include "cuda/bind.h"

namespace fastnn::cuda::bind {
namespace {

// The convolution geometry of x (N, C, H, W) and weight (F, C, KH, KW), checked.
ConvShape conv_shape(const py::object& x, const py::object& weight, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  const int64_t n = dim(x, "x", 4, 0), c = dim(x, "x", 4, 1), h = dim(x, "x", 4, 2), w = dim(x, "x", 4, 3);
  const int64_t f = dim(weight, "weight", 4, 0), wc = dim(weight, "weight", 4, 1);
  const int64_t kh = dim(weight, "weight", 4, 2), kw = dim(weight, "weight", 4, 3);
  if (wc != c)
    throw py::value_error("weight must have shape (F, " + std::to_string(c) + ", KH, KW) to match the " +
                          std::to_string(c) + " channels of x, got " + shape_str(shape_of(weight, "weight")));
  if (sh < 1 || sw < 1)
    throw py::value_error("stride must be >= 1, got (" + std::to_string(sh) + ", " + std::to_string(sw) + ")");
  if (ph < 0 || pw < 0)
    throw py::value_error("padding must be >= 0, got (" + std::to_string(ph) + ", " + std::to_string(pw) + ")");
  if (kh < 1 || kw < 1 || f < 1 || c < 1)
    throw py::value_error("weight must have a nonzero shape, got " + shape_str(shape_of(weight, "weight")));
  if (kh > h + 2 * ph || kw > w + 2 * pw)
    throw py::value_error("kernel (" + std::to_string(kh) + ", " + std::to_string(kw) +
                          ") is larger than the padded input (" + std::to_string(h + 2 * ph) + ", " +
                          std::to_string(w + 2 * pw) + ")");
  return {n, c, h, w, f, kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1};
}

void conv2d_forward_binding(py::object x, py::object weight, py::object bias, py::object y, py::object z,
                            int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int act, double alpha) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const Act a = act_of(act);
    const ConvShape s = conv_shape(x, weight, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.f, s.oh, s.ow};
    Conv2dForwardArgs<T> args{s,
                              checked<T>(x, "x", {s.n, s.c, s.h, s.w}),
                              checked<T>(weight, "weight", {s.f, s.c, s.kh, s.kw}),
                              checked_or_null<T>(bias, "bias", {s.f}),
                              checked<T>(y, "y", out, true),
                              checked_or_null<T>(z, "z", out, true),
                              a,
                              T(alpha)};
    if (act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (pre-activation buffer) is required for this activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::conv2d_forward<T>(args, stream);
  });
}

void conv2d_backward_binding(py::object dy, py::object x, py::object weight, py::object y, py::object z,
                             py::object dz_work, py::object dx, py::object dweight, py::object dbias,
                             py::object dalpha, int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w,
                             int act, double alpha) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const Act a = act_of(act);
    const ConvShape s = conv_shape(x, weight, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.f, s.oh, s.ow}, in{s.n, s.c, s.h, s.w};
    Conv2dBackwardArgs<T> args{s,
                               checked<T>(dy, "dy", out),
                               checked<T>(x, "x", in),
                               checked<T>(weight, "weight", {s.f, s.c, s.kh, s.kw}),
                               checked<T>(y, "y", out),
                               checked_or_null<T>(z, "z", out),
                               checked<T>(dz_work, "dz_work", out, true),
                               checked_or_null<T>(dx, "dx", in, true),
                               checked<T>(dweight, "dweight", {s.f, s.c, s.kh, s.kw}, true),
                               checked_or_null<T>(dbias, "dbias", {s.f}, true),
                               checked_or_null<T>(dalpha, "dalpha", {1}, true),
                               a,
                               T(alpha)};
    if (act_saves_preactivation(a) && !args.z)
      throw py::value_error("z (saved pre-activation) is required for this activation");
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::conv2d_backward<T>(args, stream);
  });
}

}  // namespace

void bind_conv(py::module_& m) {
  m.def("conv2d_forward", &conv2d_forward_binding, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("y"),
        py::arg("z"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("act"),
        py::arg("alpha"));
  m.def("conv2d_backward", &conv2d_backward_binding, py::arg("dy"), py::arg("x"), py::arg("weight"), py::arg("y"),
        py::arg("z"), py::arg("dz_work"), py::arg("dx"), py::arg("dweight"), py::arg("dbias"), py::arg("dalpha"),
        py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"), py::arg("act"),
        py::arg("alpha"));
}

}  // namespace fastnn::cuda::bind
