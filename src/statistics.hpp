// Per-channel arithmetic in float64: moments from shifted sums, the normalization coefficients,
// and the running-statistics rules of each framework.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "bnorm/plan.hpp"

namespace bnorm::detail {

struct moments {
  double mean;
  double variance;  // biased (population)
};

inline double inverse_std(double variance, double epsilon) noexcept {
  return 1.0 / std::sqrt(variance + epsilon);  // exact, unlike a vector rsqrt estimate
}

/// y = (x - center)·scale + shift. The center is the mean rounded to T, so x - center is exact
/// for x near the mean (Sterbenz); the part of the mean T cannot hold goes into the shift,
/// where it is small. Folding the whole mean into the shift (x·a + b) would cancel when
/// |mean| ≫ std.
template <class T>
struct coefficients {
  T center;
  T scale;
  T shift;
};

/// A finite float64 value beyond T's range becomes T's largest finite value, not an infinity:
/// a constant channel with a tiny var + eps then still gives exactly 0·scale = 0, as the float64
/// reference does, instead of 0·inf = NaN. A value that is already infinite or NaN stays so.
template <class T>
T saturate(double value) noexcept {
  constexpr double largest = static_cast<double>(std::numeric_limits<T>::max());
  if (value > largest && value <= std::numeric_limits<double>::max()) return std::numeric_limits<T>::max();
  if (value < -largest && value >= -std::numeric_limits<double>::max()) return -std::numeric_limits<T>::max();
  return static_cast<T>(value);
}

/// `scale` is gamma/sqrt(var + eps) in float64.
template <class T>
coefficients<T> make_coefficients(double mean, double scale, double beta) noexcept {
  const T center = static_cast<T>(mean);
  const double residual = mean - static_cast<double>(center);
  return {center, saturate<T>(scale), saturate<T>(beta - residual * scale)};
}

/// How one training step moves the running statistics: r = (1 - w)·r + w·batch.
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

inline double blend(double running, double batch, double batch_weight) noexcept {
  return batch_weight * batch + (1.0 - batch_weight) * running;
}

}  // namespace bnorm::detail
