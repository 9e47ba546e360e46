// Shared by the CPU (C++) and CUDA builds: the host/device qualifier and the
// few math functions the op headers use, spelled once for both compilers.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTNN_HD __host__ __device__ __forceinline__
#else
#define FASTNN_HD inline __attribute__((always_inline))
#endif

namespace fastnn::math {

#if defined(__CUDACC__)
#define FASTNN_MATH_NS
#else
#define FASTNN_MATH_NS std
#endif

template <class T> FASTNN_HD T exp(T x) { return FASTNN_MATH_NS::exp(x); }
template <class T> FASTNN_HD T expm1(T x) { return FASTNN_MATH_NS::expm1(x); }
template <class T> FASTNN_HD T log(T x) { return FASTNN_MATH_NS::log(x); }
template <class T> FASTNN_HD T log1p(T x) { return FASTNN_MATH_NS::log1p(x); }
template <class T> FASTNN_HD T tanh(T x) { return FASTNN_MATH_NS::tanh(x); }
template <class T> FASTNN_HD T erf(T x) { return FASTNN_MATH_NS::erf(x); }
template <class T> FASTNN_HD T sqrt(T x) { return FASTNN_MATH_NS::sqrt(x); }
template <class T> FASTNN_HD T abs(T x) { return x < T(0) ? -x : x; }
template <class T> FASTNN_HD T max(T a, T b) { return a > b ? a : b; }
template <class T> FASTNN_HD T min(T a, T b) { return a < b ? a : b; }

#undef FASTNN_MATH_NS

}  // namespace fastnn::math
