// The merges of distributed training's exchange blocks (bnorm/distributed.hpp): in rank order,
// in float64, the same operations on every rank.
#include "bnorm/distributed.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "fp_environment.hpp"
#include "statistics.hpp"
#include "validation.hpp"

namespace bnorm {
namespace {

/// What a rank's block holds past its count: statistics (each channel's mean, then its biased
/// variance, >= 0 or NaN) or gradient sums (any values).
enum class block_kind { statistics, gradient_sums };

status check_blocks(block_kind kind, std::size_t channels, const double* blocks, std::size_t ranks,
                    const double* out, std::size_t out_size, const char* out_name) noexcept {
  // Both kinds: 1 + 2 × channels doubles (statistics_exchange_size, gradient_exchange_size).
  const std::size_t limit = SIZE_MAX / sizeof(double);
  if (channels > (limit - 1) / 2 || (ranks > 0 && 1 + 2 * channels > limit / ranks)) {
    return status::failure(status_code::invalid_argument,
                           "channels: expected blocks that fit in memory, got %zu channels of "
                           "%zu ranks",
                           channels, ranks);
  }
  const std::size_t block = statistics_exchange_size(channels);
  if (ranks == 0 || blocks == nullptr) {
    return status::failure(status_code::invalid_argument,
                           "blocks: expected at least one rank's block of %zu doubles, got %s",
                           block, ranks == 0 ? "0 ranks" : "a null pointer");
  }
  if (out == nullptr || out_size != block) {
    return status::failure(
        status_code::invalid_argument, "%s: expected %zu doubles (1 + 2 × %zu channels), got %s%zu",
        out_name, block, channels, out == nullptr ? "a null pointer of size " : "", out_size);
  }
  for (const auto& [name, data] :
       {std::pair<const char*, const void*>{"blocks", blocks}, {out_name, out}}) {
    if (status s = detail::check_alignment(name, data, alignof(double), "double"); !s) return s;
  }
  // Counts stay exact in float64 up to 2^53, each rank's and their total.
  constexpr double exact_counts = 9007199254740992.0;
  double total = 0.0;
  for (std::size_t r = 0; r < ranks; ++r) {
    const double* b = blocks + r * block;
    const double count = b[0];
    if (!(count >= 0.0) || count > exact_counts || count != std::floor(count)) {
      return status::failure(status_code::invalid_argument,
                             "blocks[%zu]: expected rank %zu's count of values per channel, a "
                             "whole number >= 0, got %s",
                             r * block, r, detail::number_text(count).text);
    }
    if (count > exact_counts - total) {
      return status::failure(status_code::invalid_argument,
                             "blocks[%zu]: expected counts summing to at most 2^53 over the "
                             "ranks, got rank %zu's %s on top of the %s before it",
                             r * block, r, detail::number_text(count).text,
                             detail::number_text(total).text);
    }
    total += count;
    if (kind != block_kind::statistics) continue;
    for (std::size_t c = 0; c < channels; ++c) {
      const double variance = b[1 + channels + c];
      if (variance < 0.0) {  // NaN passes: a rank's NaN data carries through, as in one call
        return status::failure(status_code::invalid_argument,
                               "blocks[%zu]: expected rank %zu's variance of channel %zu, >= 0, "
                               "got %s",
                               r * block + 1 + channels + c, r, c,
                               detail::number_text(variance).text);
      }
    }
  }
  return detail::check_separate({{"blocks", blocks, ranks * block * sizeof(double), false},
                                 {out_name, out, block * sizeof(double), true}});
}

}  // namespace

status merge_statistics(std::size_t channels, const double* blocks, std::size_t ranks,
                        double* merged, std::size_t merged_size) noexcept {
  const detail::fp_environment_scope environment;  // the same bits on every rank, every caller
  if (status s = check_blocks(block_kind::statistics, channels, blocks, ranks, merged, merged_size,
                              "merged");
      !s) {
    return s;
  }
  const std::size_t block = statistics_exchange_size(channels);
  double total = 0.0;
  for (std::size_t r = 0; r < ranks; ++r) total += blocks[r * block];
  merged[0] = total;
  for (std::size_t c = 0; c < channels; ++c) {
    detail::group_statistics all{0.0, 0.0, 0.0};
    for (std::size_t r = 0; r < ranks; ++r) {
      const double* b = blocks + r * block;
      all = detail::merge_groups(all, {b[0], b[1 + c], b[1 + channels + c]});
    }
    merged[1 + c] = all.mean;
    merged[1 + channels + c] = all.variance;
  }
  return {};
}

status sum_gradient_exchanges(std::size_t channels, const double* blocks, std::size_t ranks,
                              double* summed, std::size_t summed_size) noexcept {
  const detail::fp_environment_scope environment;
  if (status s = check_blocks(block_kind::gradient_sums, channels, blocks, ranks, summed,
                              summed_size, "summed");
      !s) {
    return s;
  }
  const std::size_t block = gradient_exchange_size(channels);
  std::copy(blocks, blocks + block, summed);
  for (std::size_t r = 1; r < ranks; ++r) {
    const double* b = blocks + r * block;
    for (std::size_t i = 0; i < block; ++i) summed[i] += b[i];
  }
  return {};
}

}  // namespace bnorm
