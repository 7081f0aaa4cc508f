// What a plan holds once make_plan has validated its problem.
#pragma once

#include <memory>
#include <string>

#include "bnorm/plan.hpp"
#include "kernels/kernels.hpp"
#include "partition.hpp"
#include "threading.hpp"

namespace bnorm::detail {

/// A call whose scratch fits in this many bytes takes it from its own stack frame.
inline constexpr std::size_t stack_scratch_bytes = 4096;

struct plan_impl {
  problem prob;
  plan_options options;
  /// The forward's kernels (and the frozen backward's dx, inference's map of dy), and the
  /// training backward's sums and dx: the same table but for short planes (see kernels_for).
  const kernels::kernel_table* kernels = nullptr;
  const kernels::kernel_table* backward_kernels = nullptr;
  partition part;
  thread_limit threads;
  std::string description;  // plan::describe()
  /// plan_options::activation as the map kernels take it, in each dtype.
  kernels::epilogue<float> epilogue_f32;
  kernels::epilogue<double> epilogue_f64;
  /// kernels::max_pivot_offset_squared of this plan's channels (computed once: a pow).
  double max_pivot_offset_squared = 0;
  /// Per-channel buffers of a half type (plan_options::parameter_dtype): the calls stage them as
  /// float32, and the kernels round the outputs to odd for their second rounding.
  bool half_parameters = false;

  template <class T>
  const kernels::epilogue<T>& epilogue() const noexcept;
};

template <>
inline const kernels::epilogue<float>& plan_impl::epilogue<float>() const noexcept {
  return epilogue_f32;
}
template <>
inline const kernels::epilogue<double>& plan_impl::epilogue<double>() const noexcept {
  return epilogue_f64;
}

}  // namespace bnorm::detail
