// fastnn._cuda's softmax_xent_* bindings: the names, argument order and checks
// of fastnn._C's (csrc/bindings.cpp), on CuPy arrays. The label range check
// runs on the device inside the forward kernel (fastnn._C's runs on the host);
// the launcher's LabelRangeError becomes the same ValueError here. The backward
// kernel skips an out-of-range label (no out-of-bounds access either way).
#include <string>

#include "cuda/bind.h"
#include "cuda/softmax_xent.h"

namespace fastnn::cuda::bind {
namespace {

// labels (N,) int64 or None; targets (N, C) of the scores' dtype or None: at most
// one (forward; neither computes only probs), exactly one (backward).
void one_target(const py::object& labels, const py::object& targets, bool required) {
  if (!labels.is_none() && !targets.is_none()) throw py::value_error("give labels or targets, not both");
  if (required && labels.is_none() && targets.is_none()) throw py::value_error("labels or targets is required");
}

// The checked forward arguments (labels or targets may be None); loss is a host pointer.
template <class T>
SoftmaxXentForwardArgs<T> forward_args(const py::object& scores, const py::object& labels,
                                       const py::object& targets, const py::object& probs, T* loss) {
  int64_t n = dim(scores, "scores", 2, 0), c = dim(scores, "scores", 2, 1);
  if (c < 1) throw py::value_error("scores must have at least one class column");
  return {n, c, checked<T>(scores, "scores", {n, c}), checked_or_null<int64_t>(labels, "labels", {n}),
          checked_or_null<T>(targets, "targets", {n, c}), checked<T>(probs, "probs", {n, c}, true), loss};
}

double softmax_xent_forward(py::object scores, py::object labels, py::object targets, py::object probs) {
  one_target(labels, targets, false);
  return by_dtype(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    T loss = T(0);
    SoftmaxXentForwardArgs<T> args = forward_args<T>(scores, labels, targets, probs, &loss);
    cudaStream_t stream = current_stream();
    try {
      py::gil_scoped_release nogil;
      fastnn::cuda::softmax_xent_forward(args, stream);
    } catch (const LabelRangeError& e) {
      throw py::value_error(e.what());
    }
    return double(loss);
  });
}

// softmax_xent_forward's kernels with the loss and the label check left on the
// device in result (int64 (2,): the loss's float64 bits, the first bad row or -1).
void softmax_xent_forward_device(py::object scores, py::object labels, py::object probs, py::object result) {
  one_target(labels, py::none(), true);
  by_dtype(scores, "scores", [&](auto tag) {
    using T = decltype(tag);
    SoftmaxXentForwardArgs<T> args = forward_args<T>(scores, labels, py::none(), probs, nullptr);
    auto* out = reinterpret_cast<unsigned long long*>(checked<int64_t>(result, "result", {2}, true));
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::softmax_xent_forward_device(args, out, stream);
  });
}

void softmax_xent_backward(py::object probs, py::object labels, py::object targets, py::object dscores,
                           double scale) {
  one_target(labels, targets, true);
  by_dtype(probs, "probs", [&](auto tag) {
    using T = decltype(tag);
    int64_t n = dim(probs, "probs", 2, 0), c = dim(probs, "probs", 2, 1);
    SoftmaxXentBackwardArgs<T> args{n, c, checked<T>(probs, "probs", {n, c}),
                                    checked_or_null<int64_t>(labels, "labels", {n}),
                                    checked_or_null<T>(targets, "targets", {n, c}),
                                    checked<T>(dscores, "dscores", {n, c}, true), T(scale)};
    cudaStream_t stream = current_stream();
    py::gil_scoped_release nogil;
    fastnn::cuda::softmax_xent_backward(args, stream);
  });
}

}  // namespace

void bind_softmax(py::module_& m) {
  m.def("softmax_xent_forward", &softmax_xent_forward, py::arg("scores"), py::arg("labels"), py::arg("targets"),
        py::arg("probs"));
  m.def("softmax_xent_forward_device", &softmax_xent_forward_device, py::arg("scores"), py::arg("labels"),
        py::arg("probs"), py::arg("result"),
        "softmax_xent_forward with hard labels, its loss and label check left on the device: result (int64 (2,)) "
        "receives the loss's float64 bits and the first row whose label is outside [0, C), or -1. No "
        "synchronization.");
  m.def("softmax_xent_backward", &softmax_xent_backward, py::arg("probs"), py::arg("labels"), py::arg("targets"),
        py::arg("dscores"), py::arg("scale"));
}

}  // namespace fastnn::cuda::bind
