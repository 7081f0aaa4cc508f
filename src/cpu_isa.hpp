// ISA detection and selection: which kernel table a plan binds to.
#pragma once

#include <optional>

#include "bnorm/plan.hpp"
#include "kernels/kernels.hpp"

namespace bnorm::detail {

/// True when this build has kernels for `value` and the CPU and OS can run them.
bool cpu_supports(isa value) noexcept;

/// Picks the best ISA at or below `cap` and below BNORM_MAX_ISA (when set). Fails, naming the
/// source of the cap, when the environment variable is malformed or no ISA qualifies.
status select_kernels(std::optional<isa> cap, const kernels::kernel_table** out) noexcept;

}  // namespace bnorm::detail
