// The rules that the engine API and the modules share, each in one place, and the text of
// their messages: shapes, numbers and enum values printed so that a message shows exactly why
// a value was refused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "bnorm/fold.hpp"
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

/// The output channels of a fold_into_layer problem's layer (fold.cpp), refusing its shape,
/// groups and layout as fold_into_layer does: the module checks them against its own.
status fold_channels(const fold_problem& prob, std::size_t* channels) noexcept;

/// Rejects a dimension below 0, naming it and the shape (`name`: the parameter holding it).
status check_dimensions(const tensor_shape& shape, const char* name = "shape") noexcept;

/// Elements of a shape whose dimensions were checked, and (when asked) its extent: the product
/// of its nonzero dimensions, which bounds every product of some of them (the planner's
/// spatial extent, rows, ...) even in an empty tensor. False when the extent does not fit in
/// 64 bits, wherever a zero dimension stands.
bool element_count(const tensor_shape& shape, std::uint64_t* elements,
                   std::uint64_t* extent = nullptr) noexcept;

/// Bytes of one element of a dtype.
inline std::size_t element_size(dtype d) noexcept {
  return d == dtype::f64 ? 8 : d == dtype::f32 ? 4 : 2;
}

/// The type the kernels compute in for data of dtype d (and their per-channel values).
inline dtype compute_dtype(dtype d) noexcept {
  return d == dtype::f64 ? dtype::f64 : dtype::f32;
}

/// The type of a plan's per-channel buffers (see plan_options::parameter_dtype).
inline dtype parameter_dtype(const problem& prob, const plan_options& options) noexcept {
  return options.parameter_dtype.value_or(compute_dtype(prob.dtype));
}

// The buffer rules of every call.

/// `data` aligned to `alignment` bytes; `what` names the element ("int64", "a cache line").
status check_alignment(const char* name, const void* data, std::size_t alignment,
                       const char* what) noexcept;
/// `data` aligned to an element of `values`. Inline: every call checks a handful of pointers.
inline status check_alignment(const char* name, const void* data, dtype values) noexcept {
  const std::size_t alignment = element_size(values);
  if (reinterpret_cast<std::uintptr_t>(data) % alignment == 0) return {};
  return check_alignment(name, data, alignment, to_string(values));
}

/// A per-channel buffer: omitted ({}), or C values. `required` names why it may not be omitted.
struct channel_buffer {
  const char* name;
  const void* data;
  std::size_t size;
  const char* required = nullptr;
};

/// Each buffer omitted (unless required) or of `channels` values, aligned to `values`.
status check_channel_buffers(std::initializer_list<channel_buffer> buffers, std::size_t channels,
                             dtype values) noexcept;

/// The bytes of one buffer of a call, for the overlap rule.
struct region {
  const char* name;
  const void* data;
  std::size_t bytes;
  bool written;
  bool in_place = false;  // a buffer that may be the very same as another in_place one
};

/// A buffer that the call writes may overlap no other; the one exception is a written in_place
/// buffer that is exactly a read in_place one (dst == src). Empty and omitted buffers take no
/// memory.
status check_separate(std::initializer_list<region> regions) noexcept;

}  // namespace bnorm::detail
