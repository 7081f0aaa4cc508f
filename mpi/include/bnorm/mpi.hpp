// bnorm over MPI: SyncBatchNorm for data-parallel training on CPUs. Library bnorm_mpi, target
// bnorm::mpi (built where CMake finds MPI). The core library has no MPI in it: these run the
// steps of bnorm/distributed.hpp, exchanging their per-channel blocks with MPI_Allgather and
// merging them in rank order, so every rank computes the same bits.
//
//   MPI_Init(&argc, &argv);
//   auto bn = bnorm::mpi::SyncBatchNorm(64);          // process group: MPI_COMM_WORLD
//   bn.forward(x, y, {local_batch, 64, 56, 56});      // statistics of every rank's batch
//   bn.backward(x, dy, dx);                           // dx of the whole batch
//
// Every call is collective: each rank of the communicator makes it, with its own share of the
// batch (ranks may hold different batch sizes, or none). Before any output is written the
// ranks exchange what they were asked: ranks that disagree on the channels, dtype, layout or
// options, or whose arguments their own rank refuses, make the call fail on every rank, each
// with a message that names the rank and the reason, and nothing is written anywhere. (A rank
// whose own checks fail before the call, as the modules' do, joins it through refuse().)
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>

#include "bnorm/bnorm.hpp"

namespace bnorm::mpi {

/// plan::forward_training over the whole batch of every rank of `comm`: the statistics of all
/// ranks' values, y of this rank's, the same batch and running statistics on every rank.
/// args.batch_mean and args.batch_inv_std (the merged ones) are what backward_training needs.
BNORM_API status forward_training(const plan& p, const training_args& args, MPI_Comm comm) noexcept;

/// plan::backward_training over the whole batch: dx of this rank's values from the sums of
/// every rank; dγ and dβ of this rank's values, as torch.nn.SyncBatchNorm leaves them for the
/// data-parallel all-reduce of the parameters' gradients. args.mean and args.inv_std (or var)
/// are those forward_training saved.
BNORM_API status backward_training(const plan& p, const backward_args& args,
                                   MPI_Comm comm) noexcept;

/// For a rank that refuses a collective call before making it (its own checks failed): joins
/// the other ranks' forward_training or backward_training with `reason`, so that theirs fail
/// too, naming this rank and the reason, instead of waiting for it. Returns `reason` (or why
/// the exchange itself failed). A communicator that is not one (MPI_COMM_NULL, an
/// intercommunicator, MPI not running) is refused on the calling rank, with no exchange.
BNORM_API status refuse(const status& reason, MPI_Comm comm) noexcept;

/// A module's training exchange over `comm` (see batch_norm::set_training_exchange). The
/// communicator is used, not duplicated or freed: it must outlive the module's calls.
BNORM_API std::shared_ptr<const training_exchange> make_training_exchange(MPI_Comm comm);

/// torch.nn.SyncBatchNorm(num_features, eps, momentum, affine, track_running_stats,
/// process_group): inputs of rank 2 to 5, statistics over every rank of `process_group` in
/// train mode, this rank's running statistics in eval mode. Throws bnorm::error as the other
/// modules do.
template <class T = float>
batch_norm<T> SyncBatchNorm(std::int64_t num_features, const torch::options& opts = {},
                            MPI_Comm process_group = MPI_COMM_WORLD) {
  batch_norm<T> module(torch::make_config(num_features, opts, 2, 5));
  module.set_training_exchange(make_training_exchange(process_group));
  return module;
}

/// torch.nn.SyncBatchNorm.convert_sync_batchnorm for one module: from now on its training
/// steps take the statistics of every rank of `process_group`; its parameters, buffers and
/// mode stay as they are.
template <class T>
batch_norm<T>& convert_sync_batchnorm(batch_norm<T>& module,
                                      MPI_Comm process_group = MPI_COMM_WORLD) {
  module.set_training_exchange(make_training_exchange(process_group));
  return module;
}

}  // namespace bnorm::mpi
