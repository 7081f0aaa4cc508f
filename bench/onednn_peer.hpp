// oneDNN's batch normalization on the same buffers, for the comparison (built when Debian's
// libdnnl-dev is found).
#pragma once

#include <memory>

#include "bnorm/plan.hpp"

namespace bnorm_bench {

/// What the peer runs.
enum class peer_kind {
  training,        ///< batch_normalization_forward, forward_training, scale and shift
  inference,       ///< forward_inference with use_global_stats
  inference_relu,  ///< the same with fuse_norm_relu
  training_relu,   ///< training with fuse_norm_relu (and the ReLU mask's workspace)
  backward,        ///< batch_normalization_backward, prop_kind backward: dx, dscale, dshift
  frozen,          ///< backward_data with use_global_stats: dx (oneDNN takes no scale here)
};

/// The caller's buffers; the peer owns none. mean and var: the batch statistics (written by
/// training, read by backward) or the running ones (inference, frozen); var is the biased
/// variance, as oneDNN takes it.
struct peer_buffers {
  const void* src = nullptr;  // float, or bfloat16 for a bf16 peer
  void* dst = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  float* mean = nullptr;
  float* var = nullptr;
  const float* diff_dst = nullptr;
  float* diff_src = nullptr;
  float* diff_scale = nullptr;
  float* diff_shift = nullptr;
};

class onednn_peer {
 public:
  /// `data`: f32, or bf16 (float32 scale, shift and statistics). `threads`: the OpenMP threads
  /// it runs on, set before the primitive is created: oneDNN's batch norm fixes its thread
  /// count then (a primitive made under another count keeps that one).
  onednn_peer(const bnorm::tensor_shape& shape, bnorm::layout l, peer_kind kind, bnorm::dtype data,
              double eps, const peer_buffers& buffers, int threads);
  ~onednn_peer();
  void run();
  static const char* version();

 private:
  struct state;
  std::unique_ptr<state> state_;
  int threads_;
};

}  // namespace bnorm_bench
