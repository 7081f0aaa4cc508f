// The element types a bnorm tensor holds: float, double, and the half-precision storage types
// bnorm::bfloat16 and bnorm::float16 (two bytes each, the bits of torch.bfloat16 and
// torch.float16), with their conversions and the traits that map a C++ type to its dtype and to
// the type of its per-channel values.
//
//   std::vector<bnorm::bfloat16> x(n);
//   for (std::size_t i = 0; i < n; ++i) x[i] = bnorm::bfloat16::from_float(data[i]);
//   auto bn = bnorm::torch::BatchNorm2d<bnorm::bfloat16>(64);  // float32 weight, bias, stats
#pragma once

#include <cstdint>
#include <type_traits>

#include "bnorm/plan.hpp"

namespace bnorm {

/// The top half of a float32: 8 exponent bits, 7 of fraction (torch.bfloat16).
struct BNORM_API bfloat16 {
  std::uint16_t bits;

  /// Rounded to nearest even, as PyTorch rounds: a NaN becomes the quiet NaN 0x7FC0, a value
  /// beyond the largest bfloat16 an infinity.
  static bfloat16 from_float(float value) noexcept;
  /// Exact.
  float to_float() const noexcept;
};

/// IEEE 754 binary16: 5 exponent bits, 10 of fraction (torch.float16).
struct BNORM_API float16 {
  std::uint16_t bits;

  /// Rounded to nearest even, as F16C and the compiler's _Float16 round: subnormals kept,
  /// from 65520 an infinity, a NaN stays a quiet NaN.
  static float16 from_float(float value) noexcept;
  /// Exact.
  float to_float() const noexcept;
};

static_assert(sizeof(bfloat16) == 2 && sizeof(float16) == 2 &&
                  std::is_trivially_copyable<bfloat16>::value &&
                  std::is_trivially_copyable<float16>::value,
              "a tensor of half-precision elements is an array of their bits");

/// What bnorm calls a C++ element type, and the type of the per-channel values (gamma, beta,
/// the statistics) that go with it: the type itself for float and double, float for the
/// half-precision types (PyTorch's mixed types).
template <class T>
struct element_traits;
template <>
struct element_traits<float> {
  static constexpr bnorm::dtype value = bnorm::dtype::f32;
  using parameter_type = float;
};
template <>
struct element_traits<double> {
  static constexpr bnorm::dtype value = bnorm::dtype::f64;
  using parameter_type = double;
};
template <>
struct element_traits<bfloat16> {
  static constexpr bnorm::dtype value = bnorm::dtype::bf16;
  using parameter_type = float;
};
template <>
struct element_traits<float16> {
  static constexpr bnorm::dtype value = bnorm::dtype::f16;
  using parameter_type = float;
};

template <class T>
inline constexpr bnorm::dtype dtype_of = element_traits<T>::value;
template <class T>
using parameter_type_t = typename element_traits<T>::parameter_type;

}  // namespace bnorm
