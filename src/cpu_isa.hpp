// ISA detection and selection: which kernel table a plan binds to.
#pragma once

#include <optional>

#include "bnorm/plan.hpp"
#include "kernels/kernels.hpp"

namespace bnorm::detail {

/// True when this build has kernels for `value` and the CPU and OS can run them.
bool cpu_supports(isa value) noexcept;

/// The kernel table compiled for `value` (the baseline's for an ISA of another architecture),
/// whether or not this CPU runs it: see cpu_supports.
const kernels::kernel_table& table_for(isa value) noexcept;

/// Picks the best ISA at or below `cap` and below BNORM_MAX_ISA (when set). Fails, naming the
/// source of the cap, when the environment variable is malformed or no ISA qualifies.
status select_kernels(std::optional<isa> cap, const kernels::kernel_table** out) noexcept;

/// Whether an ISA cap is in force: plan_options::max_isa or BNORM_MAX_ISA.
bool isa_capped(std::optional<isa> cap) noexcept;

/// The kernels a problem runs by default, given the best the CPU has: those, except on AVX-512
/// machines, where AVX2's are faster (docs/design.md) for float32 channels-first planes shorter
/// than `short_plane` values (but those of a batch of one image that go in channel groups:
/// kernels::in_channel_groups), and for tensors of at most tiny_tensor_elements values with
/// fewer channels than a float64 vector holds (the per-channel float64 kernels would run them one
/// channel at a time, where AVX2 has a vector for four). A cap in force is taken as it is: it
/// names the kernels to run, and the tests run every ISA through it.
const kernels::kernel_table& kernels_for(const problem& prob, const kernels::kernel_table& best,
                                         std::size_t short_plane) noexcept;
/// The forward's bound (ResNet's 7×7 and 14×14), and the training backward's (7×7 alone: its
/// AVX-512 kernels are the faster ones at 14×14).
inline constexpr std::size_t forward_short_plane = 256;
inline constexpr std::size_t backward_short_plane = 64;
inline constexpr std::size_t tiny_tensor_elements = 64;

}  // namespace bnorm::detail
