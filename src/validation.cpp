#include "validation.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace bnorm::detail {

shape_text::shape_text(const tensor_shape& shape) noexcept {
  std::size_t at = 0;
  const auto append = [&](const char* format, auto value) {
    if (at >= sizeof(text)) return;
    const int written = std::snprintf(text + at, sizeof(text) - at, format, value);
    at += written > 0 ? static_cast<std::size_t>(written) : 0;
  };
  append("%s", "[");
  const std::size_t stored =
      shape.rank() < tensor_shape::capacity ? shape.rank() : tensor_shape::capacity;
  for (std::size_t i = 0; i < stored; ++i) {
    append(i ? ", %lld" : "%lld", static_cast<long long>(shape[i]));
  }
  if (shape.rank() > stored) append("%s", ", …");
  append("%s", "]");
}

number_text::number_text(double value) noexcept {
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) return;
  }
}

enum_text::enum_text(const char* name, int value) noexcept {
  if (std::strcmp(name, "unknown") == 0) {
    std::snprintf(text, sizeof(text), "an unknown value (%d)", value);
  } else {
    std::snprintf(text, sizeof(text), "%s", name);
  }
}

status check_epsilon(const char* name, double value) noexcept {
  if (std::isfinite(value) && value >= 0.0) return {};
  return status::failure(status_code::invalid_argument, "%s: expected a finite value >= 0, got %s",
                         name, number_text(value).text);
}

status check_momentum(const char* name, double value) noexcept {
  if (std::isfinite(value) && value >= 0.0 && value <= 1.0) return {};
  return status::failure(status_code::invalid_argument,
                         "%s: expected a finite value in [0, 1], got %s", name,
                         number_text(value).text);
}

status check_dimensions(const tensor_shape& shape) noexcept {
  for (std::size_t d = 0; d < shape.rank() && d < tensor_shape::capacity; ++d) {
    if (shape[d] < 0) {
      return status::failure(status_code::invalid_argument,
                             "shape: expected dimensions >= 0, got %lld at dimension %zu of %s",
                             static_cast<long long>(shape[d]), d, shape_text(shape).text);
    }
  }
  return {};
}

bool element_count(const tensor_shape& shape, std::uint64_t* elements,
                   std::uint64_t* extent) noexcept {
  std::uint64_t product = 1;
  bool empty = false;
  for (std::size_t d = 0; d < shape.rank(); ++d) {
    const auto dimension = static_cast<std::uint64_t>(shape[d]);
    empty = empty || dimension == 0;
    if (__builtin_mul_overflow(product, dimension == 0 ? 1 : dimension, &product)) return false;
  }
  *elements = empty ? 0 : product;
  if (extent != nullptr) *extent = product;
  return true;
}

}  // namespace bnorm::detail
