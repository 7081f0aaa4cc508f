// The machine's cache sizes, detected once: the one place the planner learns them from.
#pragma once

#include <cstddef>

namespace bnorm::detail {

struct cache_sizes {
  std::size_t l2_bytes = 0;          // one core's L2 (or the closest private level)
  std::size_t last_level_bytes = 0;  // the last-level cache, shared by the cores
};

/// The caches of CPU 0 as the kernel describes them to this process (on a VM, the guest's
/// description, not the host's), clamped to sizes a planner can trust; defaults where the
/// system says nothing (non-Linux, restricted /sys).
const cache_sizes& detected_cache_sizes() noexcept;

}  // namespace bnorm::detail
