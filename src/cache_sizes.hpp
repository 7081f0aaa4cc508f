// The machine's cache sizes, detected once: the one place the planner learns them from.
#pragma once

#include <cstddef>

namespace bnorm::detail {

struct cache_sizes {
  std::size_t l2_bytes = 0;          // one core's L2 (or the closest private level)
  std::size_t last_level_bytes = 0;  // the share of the last-level cache a call can count on
  /// Whether last_level_bytes counts the CPUs' L2s in place of a host's L3: caches private to
  /// each core, whose share of x and y no other thread adds to (see streaming_threshold).
  bool last_level_from_l2s = false;
};

/// What the system says of CPU 0's caches; 0 where it says nothing.
struct cache_readings {
  std::size_t l2_bytes = 0;
  std::size_t last_level_bytes = 0;
  int last_level = 0;               // 3 for an L3
  std::size_t last_level_cpus = 0;  // how many of this machine's CPUs share the last level
};

/// How many CPUs a sysfs CPU list names ("0-1", "0,2,4-7"); 0 if it is not one.
std::size_t count_cpu_list(const char* list) noexcept;

/// The sizes the planner works with, from the readings: clamped to sizes a planner can trust,
/// defaults where the system says nothing, and, where the last level is more per CPU than any
/// processor has (a virtual machine shown its host's whole L3), twice the L2s of the CPUs that
/// share it in its place (cache_sizes.cpp says why).
cache_sizes planning_cache_sizes(const cache_readings& read) noexcept;

/// The caches of CPU 0 as the kernel describes them to this process (on a VM, the guest's
/// description, not the host's), through planning_cache_sizes; defaults where the system says
/// nothing (non-Linux, restricted /sys).
const cache_sizes& detected_cache_sizes() noexcept;

}  // namespace bnorm::detail
