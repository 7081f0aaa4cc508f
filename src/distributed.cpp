// The merges of distributed training's exchange blocks (bnorm/distributed.hpp): in rank order,
// in float64, the same operations on every rank.
#include "bnorm/distributed.hpp"

#include <algorithm>

#include "fp_environment.hpp"
#include "statistics.hpp"
#include "validation.hpp"

namespace bnorm {
namespace {

status check_blocks(std::size_t channels, const double* blocks, std::size_t ranks,
                    const double* out, std::size_t out_size, const char* out_name) noexcept {
  const std::size_t block = statistics_exchange_size(channels);
  if (channels > (SIZE_MAX / sizeof(double) - 1) / 2 / (ranks > 0 ? ranks : 1)) {
    return status::failure(status_code::invalid_argument,
                           "channels: expected blocks that fit in memory, got %zu channels of "
                           "%zu ranks",
                           channels, ranks);
  }
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
  for (std::size_t r = 0; r < ranks; ++r) {
    const double count = blocks[r * block];
    if (!(count >= 0.0) || count > 9007199254740992.0) {
      return status::failure(status_code::invalid_argument,
                             "blocks: expected rank %zu's count of values per channel, a number "
                             ">= 0, got %s",
                             r, detail::number_text(count).text);
    }
  }
  return detail::check_separate({{"blocks", blocks, ranks * block * sizeof(double), false},
                                 {out_name, out, block * sizeof(double), true}});
}

}  // namespace

status merge_statistics(std::size_t channels, const double* blocks, std::size_t ranks,
                        double* merged, std::size_t merged_size) noexcept {
  const detail::fp_environment_scope environment;  // the same bits on every rank, every caller
  if (status s = check_blocks(channels, blocks, ranks, merged, merged_size, "merged"); !s) {
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
  if (status s = check_blocks(channels, blocks, ranks, summed, summed_size, "summed"); !s) {
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
