#include "validation.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

namespace bnorm::detail {

shape_text::shape_text(const tensor_shape& shape) noexcept {
  std::size_t at = 0;
  const auto append = [&](const char* format, auto value) {
    if (at >= sizeof(text)) return;
    const int written = std::snprintf(text + at, sizeof(text) - at, format, value);
    at += written > 0 ? static_cast<std::size_t>(written) : 0;
  };
  if (!shape.has_dimensions()) {
    append("%s", "(null)");
    return;
  }
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

status check_dimensions(const tensor_shape& shape, const char* name) noexcept {
  if (!shape.has_dimensions()) {
    return status::failure(status_code::invalid_argument,
                           "%s: expected %zu dimensions, got a null pointer", name, shape.rank());
  }
  for (std::size_t d = 0; d < shape.rank() && d < tensor_shape::capacity; ++d) {
    if (shape[d] < 0) {
      return status::failure(status_code::invalid_argument,
                             "%s: expected dimensions >= 0, got %lld at dimension %zu of %s", name,
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

/// `what` names the element: a string, or a dtype whose name is looked up only on failure.
status check_alignment(const char* name, const void* data, std::size_t alignment,
                       const char* what) noexcept {
  if (reinterpret_cast<std::uintptr_t>(data) % alignment == 0) return {};
  return status::failure(status_code::invalid_argument,
                         "%s: expected an address aligned to %zu bytes (%s), got %p", name,
                         alignment, what, data);
}

status check_channel_buffers(std::initializer_list<channel_buffer> buffers, std::size_t channels,
                             dtype values) noexcept {
  for (const channel_buffer& b : buffers) {
    if (b.data == nullptr) {
      if (b.required != nullptr) {
        return status::failure(status_code::invalid_argument,
                               "%s: expected %zu values, got a null pointer (required %s)", b.name,
                               channels, b.required);
      }
      if (b.size != 0) {
        return status::failure(status_code::invalid_argument,
                               "%s: expected data for the given size %zu, got a null pointer",
                               b.name, b.size);
      }
      continue;
    }
    if (b.size != channels) {
      return status::failure(status_code::invalid_argument,
                             "%s: expected %zu values (one per channel, C = %zu), got %zu", b.name,
                             channels, channels, b.size);
    }
    if (status s = check_alignment(b.name, b.data, values); !s) return s;
  }
  return {};
}

// Every call runs this, so it is kept short: the buffers present are sorted by address (a dozen
// at most) and each is compared only with those that start before it ends.
status check_separate(std::initializer_list<region> regions) noexcept {
  constexpr std::size_t most = 16;
  std::uintptr_t begin[most], end[most];
  const region* of[most];
  unsigned char order[most];
  std::size_t count = 0;
  for (const region& r : regions) {
    if (r.data == nullptr || r.bytes == 0 || count == most) continue;
    begin[count] = reinterpret_cast<std::uintptr_t>(r.data);
    end[count] = begin[count] + r.bytes;
    of[count] = &r;
    std::size_t at = count;
    for (; at > 0 && begin[order[at - 1]] > begin[count]; --at) order[at] = order[at - 1];
    order[at] = static_cast<unsigned char>(count++);
  }
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t a = order[i];
    for (std::size_t k = i + 1; k < count && begin[order[k]] < end[a]; ++k) {
      const std::size_t b = order[k];
      if (!(of[a]->written || of[b]->written)) continue;
      // In place: a written buffer that is exactly one it reads (never two written ones).
      if (of[a]->in_place && of[b]->in_place && !(of[a]->written && of[b]->written) &&
          begin[a] == begin[b] && end[a] == end[b]) {
        continue;
      }
      // Named first: the written one; of two, the later argument.
      const region* w = of[a] > of[b] ? of[a] : of[b];
      const region* o = of[a] > of[b] ? of[b] : of[a];
      if (!w->written) std::swap(w, o);
      return status::failure(status_code::invalid_argument,
                             "%s: expected memory of its own (a written buffer may overlap no "
                             "other, except the very buffer it replaces, in place), got %zu "
                             "bytes at %p that overlap %s (%zu bytes at %p)",
                             w->name, w->bytes, w->data, o->name, o->bytes, o->data);
    }
  }
  return {};
}

}  // namespace bnorm::detail
