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
  const kernels::kernel_table* kernels = nullptr;
  partition part;
  thread_limit threads;
  std::string description;  // plan::describe()
};

}  // namespace bnorm::detail
