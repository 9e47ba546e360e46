// CUDA bindings of the pooling kernels: the names, argument order and checks
// of fastnn._C's (csrc/bindings.cpp), on CuPy arrays (bind.h). Two checks
// differ in where they run: the region bounds of max_pool2d_regions_forward
// are copied back (OH + OW small integers, one stream synchronization) and
// checked here as the CPU binding checks them; the indices of
// max_pool2d_backward are checked by the kernel itself (it skips an index
// outside the plane), since scanning a device array here would cost a pass
// and a synchronization on every backward.
#include <string>
#include <vector>

#include "cuda/bind.h"

namespace fastnn::cuda::bind {
namespace {

// The pooling geometry of x (N, C, H, W): every window starts inside the
// padded plane and the output is non-empty (padding <= kernel / 2 is checked in ops.py).
PoolShape pool_shape(const py::object& x, const char* name, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
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
                          shape_str(shape_of(x, name)));
  if (kh > h + 2 * ph || kw > w + 2 * pw)
    throw py::value_error("kernel_size (" + std::to_string(kh) + ", " + std::to_string(kw) +
                          ") is larger than the padded input (" + std::to_string(h + 2 * ph) + ", " +
                          std::to_string(w + 2 * pw) + ")");
  if (h * w > int64_t(INT32_MAX))
    throw py::value_error(std::string(name) + " planes must hold < 2**31 elements (int32 index), got " +
                          std::to_string(h) + " x " + std::to_string(w));
  return {n, c, h, w, kh, kw, sh, sw, ph, pw, (h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1};
}

void max_pool2d_forward_binding(py::object x, py::object y, py::object index, int64_t kernel_h, int64_t kernel_w,
                                int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const PoolShape s = pool_shape(x, "x", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    const std::vector<int64_t> out{s.n, s.c, s.oh, s.ow};
    MaxPool2dForwardArgs<T> args{s, checked<T>(x, "x", {s.n, s.c, s.h, s.w}), checked<T>(y, "y", out, true),
                                 checked<int32_t>(index, "index", out, true)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::max_pool2d_forward<T>(args, stream);
  });
}

void max_pool2d_regions_forward_binding(py::object x, py::object y, py::object index, py::object row_begin,
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
    const std::vector<int64_t> out{n, c, oh, ow};
    PoolShape s{n, c, h, w, 0, 0, 0, 0, 0, 0, oh, ow};
    MaxPool2dRegionsForwardArgs<T> args{s, checked<T>(x, "x", {n, c, h, w}), rb, re, cb, ce,
                                        checked<T>(y, "y", out, true), checked<int32_t>(index, "index", out, true)};
    cudaStream_t stream = current_stream();
    // The bounds are device arrays: copy them back (in stream order) to check them.
    const size_t nrows = static_cast<size_t>(oh), ncols = static_cast<size_t>(ow);
    std::vector<int64_t> hrb(nrows), hre(nrows), hcb(ncols), hce(ncols);
    {
      py::gil_scoped_release nogil;
      const char* what = "max_pool2d_regions_forward (copy the region bounds to check them)";
      if (oh > 0) {
        check(cudaMemcpyAsync(hrb.data(), rb, size_t(oh) * sizeof(int64_t), cudaMemcpyDeviceToHost, stream), what);
        check(cudaMemcpyAsync(hre.data(), re, size_t(oh) * sizeof(int64_t), cudaMemcpyDeviceToHost, stream), what);
      }
      if (ow > 0) {
        check(cudaMemcpyAsync(hcb.data(), cb, size_t(ow) * sizeof(int64_t), cudaMemcpyDeviceToHost, stream), what);
        check(cudaMemcpyAsync(hce.data(), ce, size_t(ow) * sizeof(int64_t), cudaMemcpyDeviceToHost, stream), what);
      }
      check(cudaStreamSynchronize(stream), what);
    }
    for (int64_t i = 0; i < oh; ++i)
      if (!(0 <= hrb[size_t(i)] && hrb[size_t(i)] < hre[size_t(i)] && hre[size_t(i)] <= h))
        throw py::value_error("region row " + std::to_string(i) + " [" + std::to_string(hrb[size_t(i)]) + ", " +
                              std::to_string(hre[size_t(i)]) + ") must be non-empty and inside [0, " +
                              std::to_string(h) + ")");
    for (int64_t j = 0; j < ow; ++j)
      if (!(0 <= hcb[size_t(j)] && hcb[size_t(j)] < hce[size_t(j)] && hce[size_t(j)] <= w))
        throw py::value_error("region column " + std::to_string(j) + " [" + std::to_string(hcb[size_t(j)]) + ", " +
                              std::to_string(hce[size_t(j)]) + ") must be non-empty and inside [0, " +
                              std::to_string(w) + ")");
    py::gil_scoped_release nogil;
    fastnn::cuda::max_pool2d_regions_forward<T>(args, stream);
  });
}

void max_pool2d_backward_binding(py::object dy, py::object index, py::object dx) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(dy, "dy", 4, 0), c = dim(dy, "dy", 4, 1), oh = dim(dy, "dy", 4, 2), ow = dim(dy, "dy", 4, 3);
    const int64_t h = dim(dx, "dx", 4, 2), w = dim(dx, "dx", 4, 3);
    const std::vector<int64_t> out{n, c, oh, ow};
    // Index values are bounds-checked in the kernel (see the top of this file).
    MaxPool2dBackwardArgs<T> args{PoolShape{n, c, h, w, 0, 0, 0, 0, 0, 0, oh, ow}, checked<T>(dy, "dy", out),
                                  checked<int32_t>(index, "index", out), checked<T>(dx, "dx", {n, c, h, w}, true)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::max_pool2d_backward<T>(args, stream);
  });
}

void avg_pool2d_forward_binding(py::object x, py::object y, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                                int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const PoolShape s = pool_shape(x, "x", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    AvgPool2dForwardArgs<T> args{s, checked<T>(x, "x", {s.n, s.c, s.h, s.w}),
                                 checked<T>(y, "y", {s.n, s.c, s.oh, s.ow}, true), count_include_pad};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::avg_pool2d_forward<T>(args, stream);
  });
}

void avg_pool2d_backward_binding(py::object dy, py::object dx, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                                 int64_t stride_w, int64_t pad_h, int64_t pad_w, bool count_include_pad) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const PoolShape s = pool_shape(dx, "dx", kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w);
    AvgPool2dBackwardArgs<T> args{s, checked<T>(dy, "dy", {s.n, s.c, s.oh, s.ow}),
                                  checked<T>(dx, "dx", {s.n, s.c, s.h, s.w}, true), count_include_pad};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::avg_pool2d_backward<T>(args, stream);
  });
}

void global_avg_pool2d_forward_binding(py::object x, py::object y) {
  by_dtype(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(x, "x", 4, 0), c = dim(x, "x", 4, 1), h = dim(x, "x", 4, 2), w = dim(x, "x", 4, 3);
    GlobalAvgPool2dForwardArgs<T> args{PoolShape{n, c, h, w, h, w, 1, 1, 0, 0, 1, 1},
                                       checked<T>(x, "x", {n, c, h, w}), checked<T>(y, "y", {n, c}, true)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::global_avg_pool2d_forward<T>(args, stream);
  });
}

void global_avg_pool2d_backward_binding(py::object dy, py::object dx) {
  by_dtype(dy, "dy", [&](auto tag) {
    using T = decltype(tag);
    const int64_t n = dim(dx, "dx", 4, 0), c = dim(dx, "dx", 4, 1), h = dim(dx, "dx", 4, 2), w = dim(dx, "dx", 4, 3);
    GlobalAvgPool2dBackwardArgs<T> args{PoolShape{n, c, h, w, h, w, 1, 1, 0, 0, 1, 1},
                                        checked<T>(dy, "dy", {n, c}), checked<T>(dx, "dx", {n, c, h, w}, true)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::global_avg_pool2d_backward<T>(args, stream);
  });
}

}  // namespace

void bind_pool(py::module_& m) {
  m.def("max_pool2d_forward", &max_pool2d_forward_binding, py::arg("x"), py::arg("y"), py::arg("index"),
        py::arg("kernel_h"), py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"));
  m.def("max_pool2d_regions_forward", &max_pool2d_regions_forward_binding, py::arg("x"), py::arg("y"),
        py::arg("index"), py::arg("row_begin"), py::arg("row_end"), py::arg("col_begin"), py::arg("col_end"));
  m.def("max_pool2d_backward", &max_pool2d_backward_binding, py::arg("dy"), py::arg("index"), py::arg("dx"));
  m.def("avg_pool2d_forward", &avg_pool2d_forward_binding, py::arg("x"), py::arg("y"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("count_include_pad"));
  m.def("avg_pool2d_backward", &avg_pool2d_backward_binding, py::arg("dy"), py::arg("dx"), py::arg("kernel_h"),
        py::arg("kernel_w"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"), py::arg("pad_w"),
        py::arg("count_include_pad"));
  m.def("global_avg_pool2d_forward", &global_avg_pool2d_forward_binding, py::arg("x"), py::arg("y"));
  m.def("global_avg_pool2d_backward", &global_avg_pool2d_backward_binding, py::arg("dy"), py::arg("dx"));
}

}  // namespace fastnn::cuda::bind
