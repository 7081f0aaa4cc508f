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
// No processor has more last-level cache per core than this (AMD's 3D V-Cache parts have 12 MiB,
// server parts 1.5 to 5). A virtual machine can be shown its host's whole L3 as shared by its
// own few CPUs (a 2-CPU guest of a Xeon: 260 MiB shared by 2), most of which other tenants use.
// Such a guest counts on twice its CPUs' L2s, their own and about as much of the L3: that puts
// the streaming crossovers where they were measured there (docs/design.md, "The L3 of a host").
constexpr std::size_t max_last_level_bytes_per_cpu = 16u << 20;
constexpr std::size_t guest_l2s_counted = 2;

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

}  // namespace

std::size_t count_cpu_list(const char* list) noexcept {
  std::size_t cpus = 0;
  unsigned long first = 0, last = 0;
  int used = 0;
  while (std::sscanf(list, "%lu%n", &first, &used) == 1) {
    list += used;
    last = first;
    if (*list == '-') {
      if (std::sscanf(list + 1, "%lu%n", &last, &used) != 1 || last < first) return 0;
      list += used + 1;
    }
    cpus += last - first + 1;
    if (*list != ',') break;
    ++list;
  }
  return cpus;
}

namespace {

cache_readings read_caches() noexcept {
  cache_readings found;
  int level = 0;
  bool holds_data = false;
  std::size_t bytes = 0;
  int last_index = -1;
  for (int index = 0; index < 8 && read_cache(index, &level, &holds_data, &bytes); ++index) {
    if (!holds_data || bytes == 0) continue;
    if (level == 2) found.l2_bytes = bytes;
    if (level >= found.last_level) {
      found.last_level = level;
      found.last_level_bytes = bytes;
      last_index = index;
    }
  }
  if (last_index >= 0) {
    char path[96], line[1024];
    std::snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/shared_cpu_list",
                  last_index);
    if (read_line(path, line, sizeof line)) found.last_level_cpus = count_cpu_list(line);
  }
  return found;
}

}  // namespace

cache_sizes planning_cache_sizes(const cache_readings& read) noexcept {
  cache_sizes sizes;
  sizes.l2_bytes =
      read.l2_bytes == 0 ? default_l2_bytes : std::clamp(read.l2_bytes, min_l2_bytes, max_l2_bytes);
  sizes.last_level_bytes = read.last_level_bytes;
  if (read.last_level < 3 || read.last_level_bytes < sizes.l2_bytes) {
    sizes.last_level_bytes = default_last_level_bytes;
  } else if (read.last_level_cpus > 0 &&
             read.last_level_bytes / read.last_level_cpus > max_last_level_bytes_per_cpu) {
    sizes.last_level_bytes = guest_l2s_counted * sizes.l2_bytes * read.last_level_cpus;
    sizes.last_level_from_l2s = true;
  }
  return sizes;
}

const cache_sizes& detected_cache_sizes() noexcept {
  static const cache_sizes sizes = planning_cache_sizes(read_caches());
  return sizes;
}

}  // namespace bnorm::detail
