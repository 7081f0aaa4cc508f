// The undo journal of the fused training schedules, which commit each block's per-channel
// results (batch mean, its residual and 1/std, running mean and variance) inside the parallel pass,
// on the core whose cache holds them: a serial commit after the pass would read every block's
// statistics from the other cores' caches (docs/design.md, "Per-channel results stay on their
// core"). Each block keeps the values it is about to replace; should the pass fail midway
// (oneTBB throws), restore() puts back the blocks already committed, so the caller's
// statistics stay untouched on failure as plan.hpp promises.
#pragma once

#include <algorithm>
#include <cstddef>

namespace bnorm::detail {

template <class T>
class commit_journal {
 public:
  static constexpr std::size_t max_outputs = 5;

  /// `outputs`: the buffers a commit writes, nullptr for those it does not; `kept`:
  /// max_outputs × channels values; `committed`: one flag a channel.
  commit_journal(T* const (&outputs)[max_outputs], std::size_t channels, T* kept,
                 unsigned char* committed) noexcept
      : channels_(channels), kept_(kept), committed_(committed) {
    std::copy(outputs, outputs + max_outputs, outputs_);
  }

  /// Before the pass: no channel committed yet.
  void open() const noexcept { std::fill_n(committed_, channels_, static_cast<unsigned char>(0)); }

  /// Keeps channels [c0, c1)'s current values: the block commits them next.
  void keep(std::size_t c0, std::size_t c1) const noexcept {
    for (std::size_t k = 0; k < max_outputs; ++k) {
      if (outputs_[k]) std::copy(outputs_[k] + c0, outputs_[k] + c1, kept_ + k * channels_ + c0);
    }
    std::fill(committed_ + c0, committed_ + c1, static_cast<unsigned char>(1));
  }

  /// After a failed pass: the kept values back in every channel a block committed.
  void restore() const noexcept {
    for (std::size_t c = 0; c < channels_; ++c) {
      if (!committed_[c]) continue;
      for (std::size_t k = 0; k < max_outputs; ++k) {
        if (outputs_[k]) outputs_[k][c] = kept_[k * channels_ + c];
      }
    }
  }

 private:
  T* outputs_[max_outputs] = {};
  std::size_t channels_;
  T* kept_;
  unsigned char* committed_;
};

}  // namespace bnorm::detail
