// Distributed training (SyncBatchNorm) without a communicator: the steps of a training step
// that exchange per-channel values between ranks, so that an engine can run them over its own
// transport (MPI, gloo, a parameter server). bnorm/mpi.hpp runs them over MPI.
//
// Forward, on every rank r of R:
//   plan.local_statistics(args, exchange + r·S, S)        // S = statistics_exchange_size(C)
//   all-gather the R blocks of S doubles, in rank order
//   merge_statistics(C, exchange, R, merged, S)            // the same bits on every rank
//   plan.forward_training_merged(args, merged, S)          // y, saved and running statistics
// Backward (args.mean and args.inv_std or args.var: the merged ones forward_training_merged
// saved):
//   plan.local_gradient_sums(args, sums + r·G, G)          // G = gradient_exchange_size(C)
//   all-gather the R blocks of G doubles, in rank order
//   sum_gradient_exchanges(C, sums, R, summed, G)
//   plan.backward_training_merged(args, sums + r·G, summed, G)
//
// Exchange blocks are float64: the count of values per channel on the rank, then C values of
// each per-channel quantity. Statistics: the mean and the biased variance (not E[x²], which
// cancels when |mean| ≫ std). Gradients: Σdy and Σdy·(x − mean). Merging in rank order after an
// all-gather, rather than an all-reduce whose order depends on the MPI implementation, gives
// every rank the same bits, and the same as one process given the same blocks.
//
// The local steps validate everything the merged steps will need and write only their exchange
// block: a rank whose arguments are refused can tell the others before any output is written.
#pragma once

#include <cstddef>
#include <cstdint>

#include "bnorm/plan.hpp"

namespace bnorm {

/// Doubles in one rank's statistics block: its count, C means and C biased variances; 0 where
/// that many do not fit a size_t (no plan has so many channels).
constexpr std::size_t statistics_exchange_size(std::size_t channels) noexcept {
  return channels > (SIZE_MAX - 1) / 2 ? 0 : 1 + 2 * channels;
}

/// Doubles in one rank's gradient block: its count, C values of Σdy and C of Σdy·(x − mean);
/// 0 where that many do not fit a size_t.
constexpr std::size_t gradient_exchange_size(std::size_t channels) noexcept {
  return channels > (SIZE_MAX - 1) / 2 ? 0 : 1 + 2 * channels;
}

/// The statistics of the whole batch from `ranks` consecutive blocks of
/// statistics_exchange_size(channels) doubles, merged in rank order (Chan's update); ranks of
/// no values leave the rest as they are. `merged` (of merged_size doubles) may not overlap the
/// blocks.
BNORM_API status merge_statistics(std::size_t channels, const double* blocks, std::size_t ranks,
                                  double* merged, std::size_t merged_size) noexcept;

/// The gradient sums of the whole batch: the ranks' blocks added in rank order.
BNORM_API status sum_gradient_exchanges(std::size_t channels, const double* blocks,
                                        std::size_t ranks, double* summed,
                                        std::size_t summed_size) noexcept;

}  // namespace bnorm
