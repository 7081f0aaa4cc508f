// The paths, run on validated arguments and a scratch buffer of the plan's size.
#pragma once

#include <cstdint>

#include "bnorm/plan.hpp"
#include "plan_impl.hpp"

namespace bnorm::detail {

/// Whether a map streams its output: where the plan chose to (`planned`) and the output starts
/// on a cache line. Into a buffer that does not (malloc's 16-byte alignment), streamed maps
/// ran 2–8 times slower than cached ones (docs/design.md, `streaming_threshold`).
inline bool streams_into(const void* dst, bool planned) noexcept {
  return planned && reinterpret_cast<std::uintptr_t>(dst) % 64 == 0;
}

/// The plan's store choice for the threads this call can use: `one_thread`'s on one,
/// `more_threads`' on more (partition.cpp, streaming_threshold). Stores change no bits: the
/// choice can follow the thread count.
inline bool plans_streams(const plan_impl& plan, bool one_thread, bool more_threads) {
  if (one_thread == more_threads) return one_thread;  // the same either way: no need to ask oneTBB
  return plan.threads.more_than_one_thread() ? more_threads : one_thread;
}

/// Whether training plans to stream its output.
inline bool plans_training_streams(const plan_impl& plan) {
  return plans_streams(plan, plan.part.stream_training_stores,
                       plan.part.stream_parallel_training_stores);
}

/// Whether the backward plans to stream dx.
inline bool plans_backward_streams(const plan_impl& plan) {
  return plans_streams(plan, plan.part.stream_training_stores,
                       plan.part.stream_parallel_backward_stores);
}

/// Whether inference (and the frozen backward's dx) plans to stream its output.
inline bool plans_inference_streams(const plan_impl& plan) {
  return plans_streams(plan, plan.part.stream_inference_stores,
                       plan.part.stream_parallel_inference_stores);
}

/// Each may throw what oneTBB throws; `plain`: inference without the plan's activation; the API
/// layer turns that into a status.
template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch);
template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch,
                   bool plain = false);
/// This rank's statistics block, and training from merged ones (bnorm/distributed.hpp).
template <class T>
void run_local_statistics(const plan_impl& plan, const training_args& args, unsigned char* scratch,
                          double* exchange);
template <class T>
void run_training_merged(const plan_impl& plan, const training_args& args, unsigned char* scratch,
                         const double* merged);

/// One step of the distributed training backward, `size` doubles a block: `local_sums` writes
/// this rank's sums into `local_out`; `merged` computes dx from the summed blocks (`summed`) and
/// dγ, dβ from the rank's own (`local`).
struct backward_exchange {
  enum class step { local_sums, merged };
  step kind;
  double* local_out;
  const double* local;
  const double* summed;
  std::size_t size;

  bool writes_local_sums() const noexcept { return kind == step::local_sums; }
};

/// The training backward, or with `frozen` the backward on the running statistics, or a step
/// of the distributed one (`exchange`). A plan with an activation puts dy through its mask
/// into `masked` (a tensor of the call's) first.
template <class T>
void run_backward(const plan_impl& plan, const backward_args& args, bool frozen,
                  unsigned char* scratch, void* masked,
                  const backward_exchange* exchange = nullptr);

}  // namespace bnorm::detail
