// oneDNN's batch_normalization_forward on the same buffers, for the comparison (built when
// Debian's libdnnl-dev is found).
#pragma once

#include <memory>

#include "bnorm/plan.hpp"

namespace bnorm_bench {

class onednn_peer {
 public:
  /// Training: batch statistics with scale and shift. Inference: use_global_stats with the given
  /// mean and variance. All pointers stay owned by the caller.
  onednn_peer(const bnorm::tensor_shape& shape, bnorm::layout l, bool training, double eps,
              const float* src, float* dst, const float* scale, const float* shift, float* mean,
              float* var);
  ~onednn_peer();
  void run(int threads);
  static const char* version();

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace bnorm_bench
