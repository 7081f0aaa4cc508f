#include "cache_sizes.hpp"

#include <algorithm>
#include <cstdio>

namespace bnorm::detail {
namespace {

// Where the system does not say: a common server core (1 MiB L2, 32 MiB shared L3).
constexpr std::size_t default_l2_bytes = 1u << 20;
constexpr std::size_t default_last_level_bytes = 32u << 20;
// A reported L2 outside this range is more likely a misreport than a cache to plan for.
constexpr std::size_t min_l2_bytes = 128u << 10;
constexpr std::size_t max_l2_bytes = 8u << 20;

/// The first line of a small sysfs file, or false.
bool read_line(const char* path, char* buffer, int size) noexcept {
  std::FILE* f = std::fopen(path, "r");
  if (f == nullptr) return false;
  const bool read = std::fgets(buffer, size, f) != nullptr;
  std::fclose(f);
  return read;
}

/// Cache index `index` of CPU 0: its level, whether it holds data, and its size in bytes.
bool read_cache(int index, int* level, bool* holds_data, std::size_t* bytes) noexcept {
  char path[96], line[64];
  const char* base = "/sys/devices/system/cpu/cpu0/cache/index";
  std::snprintf(path, sizeof path, "%s%d/level", base, index);
  if (!read_line(path, line, sizeof line) || std::sscanf(line, "%d", level) != 1) return false;
  std::snprintf(path, sizeof path, "%s%d/type", base, index);
  if (!read_line(path, line, sizeof line)) return false;
  *holds_data = line[0] == 'D' || line[0] == 'U';  // Data or Unified, not Instruction
  std::snprintf(path, sizeof path, "%s%d/size", base, index);
  unsigned long value = 0;
  char unit = 0;
  if (!read_line(path, line, sizeof line) || std::sscanf(line, "%lu%c", &value, &unit) < 1) {
    return false;
  }
  *bytes = value * (unit == 'K' ? 1024ul : unit == 'M' ? 1024ul * 1024 : 1ul);
  return true;
}

cache_sizes detect() noexcept {
  cache_sizes found;
  int last_level = 0;
  int level = 0;
  bool holds_data = false;
  std::size_t bytes = 0;
  for (int index = 0; index < 8 && read_cache(index, &level, &holds_data, &bytes); ++index) {
    if (!holds_data || bytes == 0) continue;
    if (level == 2) found.l2_bytes = bytes;
    if (level >= last_level) {
      last_level = level;
      found.last_level_bytes = bytes;
    }
  }
  found.l2_bytes = found.l2_bytes == 0 ? default_l2_bytes
                                       : std::clamp(found.l2_bytes, min_l2_bytes, max_l2_bytes);
  if (last_level < 3 || found.last_level_bytes < found.l2_bytes) {
    found.last_level_bytes = default_last_level_bytes;
  }
  return found;
}

}  // namespace

const cache_sizes& detected_cache_sizes() noexcept {
  static const cache_sizes sizes = detect();
  return sizes;
}

}  // namespace bnorm::detail
