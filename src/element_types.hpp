// The storage types of tensor elements beside float and double: bfloat16 and IEEE float16, and
// their scalar conversions. Both compute in float (compute_of_t). The conversions here are
// the reference ones, exact by construction; the kernels' vector conversions give the same
// bits (tests/test_kernels.cpp checks them against these and against the compiler's _Float16).
//
// Everything with a body is in an unnamed namespace: the per-ISA kernel units and the baseline
// units include this header with different compiler flags, and one inline function shared
// between them would be a weak symbol the linker may take from the AVX-512 unit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "bnorm/element_types.hpp"

namespace bnorm::kernels {

// The public types (bnorm/element_types.hpp): their member conversions are these functions.
using bfloat16 = ::bnorm::bfloat16;
using float16 = ::bnorm::float16;

template <class S>
struct compute_of {
  using type = S;  // float and double compute in themselves
};
template <>
struct compute_of<bfloat16> {
  using type = float;
};
template <>
struct compute_of<float16> {
  using type = float;
};
/// The type the kernels compute in for elements stored as S.
template <class S>
using compute_of_t = typename compute_of<S>::type;

template <class S>
inline constexpr bool is_half_storage =
    std::is_same<S, bfloat16>::value || std::is_same<S, float16>::value;

namespace {

inline std::uint32_t float_bits(float v) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits;
}

inline float bits_float(std::uint32_t bits) noexcept {
  float v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

inline float to_float(bfloat16 v) noexcept {
  return bits_float(static_cast<std::uint32_t>(v.bits) << 16);
}

/// Rounded to nearest even, as PyTorch rounds (c10::round_to_nearest_even): a NaN becomes the
/// quiet NaN 0x7FC0, a value beyond the largest bfloat16 an infinity.
inline bfloat16 to_bfloat16(float v) noexcept {
  if (std::isnan(v)) return {0x7FC0};
  const std::uint32_t bits = float_bits(v);
  const std::uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return {static_cast<std::uint16_t>((bits + rounding) >> 16)};
}

inline float to_float(float16 v) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(v.bits & 0x8000) << 16;
  const std::uint32_t exponent = (v.bits >> 10) & 0x1F;
  const std::uint32_t fraction = v.bits & 0x3FF;
  if (exponent == 0) {  // zero or subnormal: fraction · 2^-24, exact in float
    const float magnitude = std::ldexp(static_cast<float>(fraction), -24);
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) {  // infinity, or NaN with its payload (quieted, as F16C converts it)
    return bits_float(sign | 0x7F800000 | (fraction << 13) | (fraction ? 0x400000 : 0));
  }
  return bits_float(sign | ((exponent + 112) << 23) | (fraction << 13));
}

/// Rounded to nearest even, as F16C's vcvtps2ph and the compiler's _Float16: subnormals kept,
/// beyond 65504 + half an ulp an infinity, a NaN stays a (quiet) NaN with its payload's top bits.
inline float16 to_float16(float v) noexcept {
  const std::uint32_t bits = float_bits(v);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000);
  const std::uint32_t magnitude = bits & 0x7FFFFFFF;
  if (magnitude > 0x7F800000) {
    return {static_cast<std::uint16_t>(sign | 0x7E00 | ((magnitude >> 13) & 0x3FF))};
  }
  if (magnitude >= 0x477FF000) return {static_cast<std::uint16_t>(sign | 0x7C00)};  // ≥ 65520
  if (magnitude < 0x38800000) {
    // Below 2^-14: the nearest multiple of 2^-24 (ties to even), in integers, whatever the
    // caller's rounding mode: the significand shifted down by 126 − exponent bits (14 to 24;
    // below 2^-25, float subnormals too, it rounds to zero). 1024 units is 2^-14, float16's
    // smallest normal, encoded as such.
    const std::uint32_t exponent = magnitude >> 23;
    if (exponent < 102) return {sign};
    const std::uint32_t significand = (magnitude & 0x7FFFFF) | 0x800000;
    const std::uint32_t shift = 126 - exponent;
    const std::uint32_t units = significand >> shift;
    const std::uint32_t rest = significand & ((1u << shift) - 1), half = 1u << (shift - 1);
    const std::uint32_t rounded = units + (rest > half || (rest == half && (units & 1)) ? 1 : 0);
    return {static_cast<std::uint16_t>(sign | rounded)};
  }
  // Round at bit 13, then take the exponent from float's bias to float16's; a carry out of the
  // fraction steps the exponent up, as it should.
  const std::uint32_t rounded = magnitude + 0xFFF + ((magnitude >> 13) & 1);
  return {static_cast<std::uint16_t>(sign | ((rounded - 0x38000000) >> 13))};
}

/// An element as float64 (baseline code: exact moments, tests).
inline double to_double(float v) noexcept {
  return v;
}
inline double to_double(double v) noexcept {
  return v;
}
inline double to_double(bfloat16 v) noexcept {
  return to_float(v);
}
inline double to_double(float16 v) noexcept {
  return to_float(v);
}

/// The element of type S nearest to a float64 (ties to even). A half type goes through a
/// float rounded to odd (toward zero, its last bit set when inexact), which has more bits than
/// the half type needs for its rounding: so no double rounding (folding writes these).
template <class S>
S from_double(double v) noexcept {
  if constexpr (is_half_storage<S>) {
    float f = static_cast<float>(v);
    if (static_cast<double>(f) != v && std::isfinite(f)) {
      if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
      f = bits_float(float_bits(f) | 1u);
    }
    if constexpr (std::is_same<S, bfloat16>::value) {
      return to_bfloat16(f);
    } else {
      return to_float16(f);
    }
  } else {
    return static_cast<S>(v);
  }
}

/// The largest finite value of S.
template <class S>
double largest_finite() noexcept {
  if constexpr (std::is_same<S, bfloat16>::value) {
    return to_float(bfloat16{0x7F7F});
  } else if constexpr (std::is_same<S, float16>::value) {
    return 65504.0;
  } else {
    return static_cast<double>(std::numeric_limits<S>::max());
  }
}

}  // namespace
}  // namespace bnorm::kernels
