// Per-channel arithmetic in float64: moments, and the running-statistics rules of each
// framework. (The normalization coefficients are computed by the kernels: see kernels.hpp.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "bnorm/plan.hpp"

namespace bnorm::detail {

struct moments {
  double mean;
  double variance;  // biased (population); infinite where it exceeds the double range
  double inv_std;   // 1/sqrt(variance + epsilon), finite even then
};

/// 1/sqrt(variance + epsilon), from the quarters where the sum overflows though both terms are
/// finite (the kernels' inverse_std, xsimd_compat.hpp). A square root and a division, each
/// rounded: within about an ulp, as the kernels' inverse_sqrt (on AVX-512 an estimate refined by
/// Newton steps) is.
inline double inverse_std(double variance, double epsilon) noexcept {
  const double sum = variance + epsilon;
  if (sum == std::numeric_limits<double>::infinity()) {
    return 0.5 / std::sqrt(variance * 0.25 + epsilon * 0.25);
  }
  return 1.0 / std::sqrt(sum);
}

/// A channel's moments from its values value_at(n, s), n < batch, s < spatial, in passes of
/// float64 over values scaled by a power of two near the largest magnitude: no sum or square
/// overflows, whatever the values (float64 data spread beyond ~1e154 would square to
/// infinity). As the direct sums (PyTorch's): infinities of one sign among the values give that
/// infinite mean and a NaN variance; a NaN, or infinities of both signs, NaN moments.
template <class ValueAt>
moments exact_moments(std::size_t batch, std::size_t spatial, double epsilon,
                      const ValueAt& value_at) noexcept {
  const double count = static_cast<double>(batch) * static_cast<double>(spatial);
  double largest = 0.0;
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t s = 0; s < spatial; ++s)
      largest = std::fmax(largest, std::fabs(value_at(n, s)));
  int exponent = 0;
  std::frexp(largest, &exponent);
  // An infinity: no scaling (largest is inf), and the sums give inf or NaN moments; a NaN
  // (which fmax passes over) gives NaN sums whatever the scale.
  const double unit = std::isfinite(largest) && largest > 0.0 ? std::ldexp(1.0, exponent - 1) : 1.0;
  double total = 0.0;
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t s = 0; s < spatial; ++s) total += value_at(n, s) / unit;
  const double first_mean = total / count;
  // The deviations from that mean and their sum, which corrects it: total/count of a constant
  // channel can be an ulp away from its value (twelve float64 copies of -5.7e-29: with eps
  // 4.9e-324 every y was 1), and the correction, n times that ulp over n, gives the value back
  // exactly, and a variance of exactly 0.
  double deviations = 0.0, squares = 0.0;
  for (std::size_t n = 0; n < batch; ++n)
    for (std::size_t s = 0; s < spatial; ++s) {
      const double d = value_at(n, s) / unit - first_mean;
      deviations += d;
      squares += d * d;
    }
  // An infinite mean is left as it is: its deviations (inf − inf) are NaN.
  const double mean = std::isinf(first_mean) ? first_mean : first_mean + deviations / count;
  squares -= deviations * (deviations / count);
  if (squares < 0.0) squares = 0.0;  // rounding only; a NaN stays NaN
  const double scaled_variance = squares / count;
  const double variance = scaled_variance * unit * unit;
  // Where the variance overflows, or underflows to a subnormal or zero (float64 values within
  // ~1e-154 of each other, eps 0), 1/std still fits: take it from the scaled variance while
  // eps, scaled alike, stays finite (else eps outweighs the variance by far).
  const double scaled_epsilon = epsilon / unit / unit;  // unit² itself may underflow
  const bool beyond = std::isinf(variance) || (unit < 1.0 && std::isfinite(scaled_epsilon));
  const double inv_std = beyond && std::isfinite(scaled_variance)
                             ? 1.0 / (unit * std::sqrt(scaled_variance + scaled_epsilon))
                             : inverse_std(variance, epsilon);
  return {mean * unit, variance, inv_std};
}

/// How one training step moves the running statistics: r = (1 - w)·r + w·batch (the
/// commit_statistics kernel).
struct running_rule {
  double batch_weight;
  bool unbiased_variance;
  /// What the biased batch variance of `count` values is multiplied by in the running
  /// variance: n/(n − 1) where it is the unbiased one, MindSpore nnacl's n/1 at n = 1 (PyTorch
  /// refuses one value, refuses_one_value_per_channel), 1 where it is the biased one.
  double variance_factor(double count) const noexcept {
    return unbiased_variance ? count / std::max(count - 1.0, 1.0) : 1.0;
  }
};

/// Whether the convention's running variance takes the unbiased batch variance, n/(n − 1) times
/// the biased one (PyTorch; MindSpore's GPU and Ascend kernels and its nnacl one). ONNX's takes
/// the biased one, as MindSpore's CPU kernel does.
inline bool unbiased_running_variance(momentum_convention convention) noexcept {
  return convention != momentum_convention::onnx;
}

/// Whether training refuses one value per channel, where n/(n − 1) divides by zero: PyTorch's
/// check. MindSpore trains on it (its nnacl kernel divides by 1 there, its CPU kernel's variance
/// is biased), as ONNX's reference does (biased).
inline bool refuses_one_value_per_channel(momentum_convention convention) noexcept {
  return convention == momentum_convention::pytorch;
}

/// `batches_tracked` is num_batches_tracked after this step's increment.
inline running_rule make_running_rule(const plan_options& options,
                                      std::int64_t batches_tracked) noexcept {
  const double momentum = options.momentum.value_or(default_momentum(options.convention));
  switch (options.convention) {
    case momentum_convention::pytorch:
      return {options.cumulative_average ? 1.0 / static_cast<double>(batches_tracked) : momentum,
              unbiased_running_variance(options.convention)};
    case momentum_convention::mindspore:
    case momentum_convention::onnx:
      return {1.0 - momentum, unbiased_running_variance(options.convention)};
  }
  return {momentum, true};
}

}  // namespace bnorm::detail

namespace bnorm::detail {

/// The statistics of values in two groups, from each group's count, mean and biased variance
/// (Chan, Golub and LeVeque's pairwise update, in weights so that nothing grows past the
/// variance itself): the distributed merge of per-rank statistics. A group of no values leaves
/// the other as it is.
struct group_statistics {
  double count;
  double mean;
  double variance;
};

inline group_statistics merge_groups(const group_statistics& a,
                                     const group_statistics& b) noexcept {
  if (b.count == 0.0) return a;
  if (a.count == 0.0) return b;
  const double count = a.count + b.count;
  const double wa = a.count / count, wb = b.count / count;
  const double delta = b.mean - a.mean;
  // Where δ overflows (means ±1e308), the weighted mean still fits; the variance is then
  // beyond the range, as it is. Two means of the same infinity (ranks with infinite values of
  // one sign) give it too, where δ is NaN.
  const bool weighted = std::isinf(delta) || (std::isinf(a.mean) && a.mean == b.mean);
  const double mean = weighted ? wa * a.mean + wb * b.mean : a.mean + delta * wb;
  // (δ·wa)·(δ·wb), not δ²·wa·wb: δ² overflows where the term itself fits (means ±1.2e154).
  double variance = wa * a.variance + wb * b.variance + (delta * wa) * (delta * wb);
  // Means that differ give a variance above 0: where it rounds to 0 (float64 means within
  // ~1e-162), the least subnormal keeps it apart from a constant channel's exact 0.
  if (variance == 0.0 && delta != 0.0) variance = std::numeric_limits<double>::denorm_min();
  return {count, mean, variance};
}

}  // namespace bnorm::detail
