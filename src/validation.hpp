// The rules that the engine API and the modules share, each in one place, and the text of
// their messages: shapes, numbers and enum values printed so that a message shows exactly why
// a value was refused.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bnorm/plan.hpp"

namespace bnorm::detail {

/// "[2, 4, 3]"; a rank beyond the dimensions a tensor_shape stores ends in "…".
struct shape_text {
  char text[192];
  explicit shape_text(const tensor_shape& shape) noexcept;
};

/// The shortest decimal that reads back as the same double: 1.0000001 prints as 1.0000001,
/// not as 1.
struct number_text {
  char text[32];
  explicit number_text(double value) noexcept;
};

/// An enum's name, or "an unknown value (7)" for a value outside it.
struct enum_text {
  char text[48];
  template <class Enum>
  explicit enum_text(Enum value) noexcept : enum_text(to_string(value), static_cast<int>(value)) {}

 private:
  enum_text(const char* name, int value) noexcept;
};

/// epsilon (named `name`, "eps" in the modules): finite and >= 0.
status check_epsilon(const char* name, double value) noexcept;

/// momentum: finite and in [0, 1].
status check_momentum(const char* name, double value) noexcept;

/// Rejects a dimension below 0, naming it and the shape.
status check_dimensions(const tensor_shape& shape) noexcept;

/// Elements of a shape whose dimensions were checked, and (when asked) its extent: the product
/// of its nonzero dimensions, which bounds every product of some of them (the planner's
/// spatial extent, rows, ...) even in an empty tensor. False when the extent does not fit in
/// 64 bits, wherever a zero dimension stands.
bool element_count(const tensor_shape& shape, std::uint64_t* elements,
                   std::uint64_t* extent = nullptr) noexcept;

}  // namespace bnorm::detail
