// Per-channel arithmetic in float64: moments, and the running-statistics rules of each
// framework. (The normalization coefficients are computed by the kernels: see kernels.hpp.)
#pragma once

#include <cmath>
#include <cstdint>

#include "bnorm/plan.hpp"

namespace bnorm::detail {

struct moments {
  double mean;
  double variance;  // biased (population)
};

inline double inverse_std(double variance, double epsilon) noexcept {
  return 1.0 / std::sqrt(variance + epsilon);  // exact, unlike a vector rsqrt estimate
}

/// How one training step moves the running statistics: r = (1 - w)·r + w·batch (the
/// blend_running kernel).
struct running_rule {
  double batch_weight;
  bool unbiased_variance;
};

/// `batches_tracked` is num_batches_tracked after this step's increment.
inline running_rule make_running_rule(const plan_options& options,
                                      std::int64_t batches_tracked) noexcept {
  switch (options.convention) {
    case momentum_convention::pytorch:
      return {options.cumulative_average ? 1.0 / static_cast<double>(batches_tracked)
                                         : options.momentum,
              true};
    case momentum_convention::mindspore: return {1.0 - options.momentum, true};
    case momentum_convention::onnx: return {1.0 - options.momentum, false};
  }
  return {options.momentum, true};
}

}  // namespace bnorm::detail
