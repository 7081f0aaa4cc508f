// bnorm framework-level API: modules that behave like torch.nn.BatchNorm1d/2d/3d and
// mindspore.nn.BatchNorm1d/2d/3d. They own their parameters and buffers, keep the train/eval
// state, and throw bnorm::error on bad input (nothing is written when they do); every failure,
// out of memory included, is a bnorm::error carrying a status.
//
//   auto bn = bnorm::torch::BatchNorm2d(64);                 // train mode, momentum 0.1
//   bn.forward(src, dst, {32, 64, 56, 56});
//   bn.eval();
//
//   bnorm::mindspore::options opts;
//   opts.data_format = "NHWC";
//   auto ms = bnorm::mindspore::BatchNorm2d(64, opts);      // eval mode, momentum 0.9
//
// A module is not safe to call from several threads at once (it updates its buffers); its
// plans are, for engines that share them. Once warm (a shape's plans made, its buffers sized by
// two steps), forward and backward through pointers allocate nothing.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bnorm/element_types.hpp"
#include "bnorm/fold.hpp"
#include "bnorm/plan.hpp"

namespace bnorm {

/// Initial values of a parameter or buffer: "ones", "zeros", a constant, or C given values.
class BNORM_API initializer {
 public:
  /// "ones" or "zeros" ("one", "zero"; any case, as MindSpore's); another name fails when
  /// the module fills its parameters.
  initializer(const char* name);
  initializer(const std::string& name) : initializer(name.c_str()) {}
  initializer(double constant) : kind_(kind::constant), constant_(constant) {}
  initializer(int constant) : initializer(static_cast<double>(constant)) {}
  initializer(std::vector<double> values) : kind_(kind::values), values_(std::move(values)) {}

  /// Fills `out` with `channels` values, or throws bnorm::error naming `parameter`.
  template <class T>
  void fill(const char* parameter, std::size_t channels, std::vector<T>& out) const;

 private:
  enum class kind { constant, values, unknown_name };
  kind kind_ = kind::constant;
  double constant_ = 0.0;
  std::vector<double> values_;
  std::string name_;
};

/// Which framework's semantics a module follows.
enum class framework { pytorch, mindspore };

/// Everything that defines a module; the framework factories below fill it in.
struct module_config {
  bnorm::framework framework = framework::pytorch;
  std::int64_t num_features = 0;
  /// Input ranks the module accepts: BatchNorm1d takes 2 or 3, 2d takes 4, 3d takes 5.
  std::size_t min_rank = 4, max_rank = 4;
  double eps = 1e-5;
  /// PyTorch: nullopt is momentum=None (cumulative average). MindSpore: always set.
  std::optional<double> momentum = 0.1;
  bool affine = true;
  bool track_running_stats = true;                // PyTorch
  std::optional<bool> use_batch_statistics;       // MindSpore
  bnorm::layout layout = layout::channels_first;  // MindSpore data_format, PyTorch memory_format
  initializer weight_init = "ones", bias_init = "zeros";
  initializer running_mean_init = "zeros", running_var_init = "ones";
  /// Engine knobs: see plan_options.
  int max_threads = 0;
  std::optional<bnorm::isa> max_isa;
};

/// How a module's training steps reach the statistics of the whole batch. The default is one
/// process: the plan's forward_training and backward_training. SyncBatchNorm (bnorm/mpi.hpp)
/// runs them over every rank of a communicator; an engine with its own transport implements
/// this interface over the steps of bnorm/distributed.hpp. Each call returns a status and
/// writes nothing when it fails; a collective one fails on every rank alike.
class BNORM_API training_exchange {
 public:
  virtual ~training_exchange() = default;
  virtual status forward_training(const plan& p, const training_args& args) const = 0;
  virtual status backward_training(const plan& p, const backward_args& args) const = 0;
  /// Called in place of forward_training or backward_training when the module refuses the
  /// call before it reaches them (an input of the wrong shape, a buffer): a collective
  /// exchange joins the other ranks' call with the refusal, so that theirs fails too instead of
  /// waiting for this rank. The default does nothing.
  virtual void refuse(const status& reason) const { (void)reason; }
};

/// A module over tensors of T: float, double, bnorm::bfloat16 or bnorm::float16. Its
/// parameters, buffers and gradients are of parameter_type: T for float and double, float for
/// the half-precision types (as PyTorch keeps a bfloat16 network's batch norm parameters under
/// autocast, and as its CPU kernel takes them).
template <class T>
class BNORM_API batch_norm {
 public:
  using config = module_config;
  using element_type = T;
  using parameter_type = parameter_type_t<T>;

  explicit batch_norm(const config& cfg);

  /// Runs the training forward and backward (batch statistics) through `exchange`, or, with
  /// null, in this process alone. Eval mode never exchanges (the running statistics are the
  /// same on every rank), as torch.nn.SyncBatchNorm.
  void set_training_exchange(std::shared_ptr<const training_exchange> exchange) {
    exchange_ = std::move(exchange);
  }
  const std::shared_ptr<const training_exchange>& get_training_exchange() const noexcept {
    return exchange_;
  }

  /// y = BatchNorm(x) on N×C×spatial values in the module's layout. dst may equal src.
  void forward(const T* src, T* dst, const tensor_shape& shape);
  std::vector<T> forward(const std::vector<T>& src, const tensor_shape& shape);

  /// The gradients of the most recent forward, as autograd (PyTorch) or GradOperation
  /// (MindSpore) gives them: dL/dx into grad_input (null: not computed; may equal
  /// grad_output), and dL/dweight, dL/dbias added to weight_grad() and bias_grad() as PyTorch
  /// accumulates .grad (not with affine=false). A forward that used batch statistics takes the
  /// training backward with its saved mean and 1/std; one that used the running statistics
  /// (eval mode) the frozen backward. The module does not keep a copy of the input: `input` is
  /// the forward's input again, of the forward's shape and layout.
  void backward(const T* input, const T* grad_output, T* grad_input);
  /// As above, returning grad_input.
  std::vector<T> backward(const std::vector<T>& input, const std::vector<T>& grad_output);
  /// Accumulated gradients of weight and bias; empty until a backward (PyTorch's None).
  const std::vector<parameter_type>& weight_grad() const noexcept { return weight_grad_; }
  const std::vector<parameter_type>& bias_grad() const noexcept { return bias_grad_; }
  const std::vector<parameter_type>& gamma_grad() const noexcept {
    return weight_grad_;
  }  // MindSpore names
  const std::vector<parameter_type>& beta_grad() const noexcept { return bias_grad_; }
  /// Clears the accumulated gradients: to none (PyTorch 2's default), or to zeros (those that
  /// are none stay none, as PyTorch's).
  void zero_grad(bool set_to_none = true);

  /// Folds this batch norm, as inference runs it (eval mode, running statistics), into the
  /// layer before it: weight and bias become the fused layer's (see fold_into_layer); an empty
  /// bias (a layer without one) becomes C values. Refused with a bnorm::error, the layer left
  /// untouched, for a module that normalizes with batch statistics (train mode, PyTorch's
  /// track_running_stats=False, MindSpore's use_batch_statistics=True): "fold_into: expected a
  /// module that normalizes with its running statistics (eval mode), ...".
  void fold_into(std::vector<T>& weight, std::vector<T>& bias, const tensor_shape& weight_shape,
                 weight_layout layout = weight_layout::output_first, std::int64_t groups = 1) const;

  /// PyTorch modules start in train mode, MindSpore cells in eval mode.
  batch_norm& train(bool mode = true) {
    training_ = mode;
    return *this;
  }
  batch_norm& eval() { return train(false); }
  bool is_training() const noexcept { return training_; }

  /// Running statistics back to their initial values and num_batches_tracked to 0.
  void reset_running_stats();
  /// The above plus weight and bias back to their initial values.
  void reset_parameters();

  // Parameters and buffers, resizable by the caller; forward() checks they hold C values, or
  // none where the module has no such buffer: with PyTorch's affine=false, weight and bias are
  // empty; with track_running_stats=false the running statistics are. MindSpore keeps all four
  // (frozen when affine=false). Errors name them as the module does (weight or gamma, ...).
  std::vector<parameter_type>& weight() noexcept { return weight_; }
  std::vector<parameter_type>& bias() noexcept { return bias_; }
  std::vector<parameter_type>& running_mean() noexcept { return running_mean_; }
  std::vector<parameter_type>& running_var() noexcept { return running_var_; }
  std::int64_t& num_batches_tracked() noexcept { return num_batches_tracked_; }
  std::vector<parameter_type>& gamma() noexcept { return weight_; }  // MindSpore names
  std::vector<parameter_type>& beta() noexcept { return bias_; }
  std::vector<parameter_type>& moving_mean() noexcept { return running_mean_; }
  std::vector<parameter_type>& moving_variance() noexcept { return running_var_; }

  /// Batch mean and 1/sqrt(var + eps) of the last forward that used batch statistics.
  const std::vector<parameter_type>& saved_mean() const noexcept { return saved_mean_; }
  const std::vector<parameter_type>& saved_inv_std() const noexcept { return saved_inv_std_; }

  const config& get_config() const noexcept { return config_; }
  /// The ISA of the most recent forward's plan; before the first forward, the best its plans
  /// may take (see select_isa: short float32 planes may take a narrower one).
  bnorm::isa isa() const;
  /// Whether forward() in the current mode uses batch statistics / updates the running ones.
  bool uses_batch_statistics() const noexcept;
  bool updates_running_stats() const noexcept;
  /// Whether batch statistics go through exchange_: PyTorch's SyncBatchNorm in training mode
  /// only (in eval, track_running_stats=false takes each process's own batch); MindSpore's
  /// whenever it uses them.
  bool exchanges_batch_statistics() const noexcept;

 private:
  const plan& plan_for(const tensor_shape& shape, bool training_path);
  void check_input_shape(const tensor_shape& shape) const;
  void check_buffers() const;
  /// The calls' work; `reached_exchange` set as they call the training exchange (after it, a
  /// failure is the exchange's own, every rank's).
  void forward_unguarded(const T* src, T* dst, const tensor_shape& shape, bool& reached_exchange);
  void backward_unguarded(const T* input, const T* grad_output, T* grad_input,
                          bool& reached_exchange);
  /// The exchange a forward (backward) called now would go through; null: none.
  const training_exchange* forward_exchange() const noexcept;
  const training_exchange* backward_exchange() const noexcept;
  bool trains_affine() const noexcept;
  void reset_running_stats_unguarded();

  config config_;
  bool training_;
  std::vector<parameter_type> weight_, bias_, running_mean_, running_var_;
  std::int64_t num_batches_tracked_ = 0;
  std::vector<parameter_type> saved_mean_, saved_mean_residual_, saved_inv_std_;
  std::vector<parameter_type> weight_grad_, bias_grad_;
  /// What a call writes before it has succeeded (the saved statistics, the parameter
  /// gradients), swapped with them after: once warm, a step allocates nothing.
  std::vector<parameter_type> staged_mean_, staged_mean_residual_, staged_inv_std_;
  std::vector<parameter_type> staged_weight_grad_, staged_bias_grad_;
  /// What the most recent successful forward was, for backward.
  struct last_forward {
    tensor_shape shape;
    bool batch_statistics = false;
    /// The exchange the forward's statistics went through (null: this process's own), which
    /// its backward takes too.
    std::shared_ptr<const training_exchange> exchange;
    /// Its plan's ISA: a refused forward of another shape may have replaced the cached plan.
    bnorm::isa isa = bnorm::isa::sse2;
  };
  std::optional<last_forward> last_forward_;
  plan training_plan_, inference_plan_;
  std::shared_ptr<const training_exchange> exchange_;
};

extern template class batch_norm<float>;
extern template class batch_norm<double>;
extern template class batch_norm<bfloat16>;
extern template class batch_norm<float16>;

namespace torch {

/// torch.nn.BatchNorm*d arguments (device/dtype aside).
struct options {
  double eps = 1e-5;
  std::optional<double> momentum = 0.1;  ///< nullopt = momentum=None
  bool affine = true;
  bool track_running_stats = true;
  bnorm::layout memory_format = layout::channels_first;  ///< torch.channels_last(_3d)
};

/// The module_config of torch.nn.BatchNorm*d for inputs of rank min_rank to max_rank.
BNORM_API module_config make_config(std::int64_t num_features, const options& opts,
                                    std::size_t min_rank, std::size_t max_rank);

template <class T = float>
batch_norm<T> BatchNorm1d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 2, 3));  // (N, C) or (N, C, L)
}
template <class T = float>
batch_norm<T> BatchNorm2d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 4, 4));
}
template <class T = float>
batch_norm<T> BatchNorm3d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 5, 5));
}

}  // namespace torch

namespace mindspore {

/// mindspore.nn.BatchNorm*d arguments.
struct options {
  double eps = 1e-5;
  double momentum = 0.9;  ///< r = momentum·r + (1 - momentum)·batch
  bool affine = true;
  initializer gamma_init = "ones";
  initializer beta_init = "zeros";
  initializer moving_mean_init = "zeros";
  initializer moving_var_init = "ones";
  std::optional<bool> use_batch_statistics;  ///< None / True / False
  /// "NCHW" or "NHWC"; BatchNorm3d also "NCDHW" (MindSpore's) or "NDHWC".
  std::string data_format = "NCHW";
};

/// The module_config of mindspore.nn.BatchNorm*d for inputs of rank min_rank to max_rank.
/// Throws bnorm::error for a data_format it does not name, or eps outside (0, 1].
BNORM_API module_config make_config(std::int64_t num_features, const options& opts,
                                    std::size_t min_rank, std::size_t max_rank);

template <class T = float>
batch_norm<T> BatchNorm1d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 2, 3));  // (N, C) or (N, C, L)
}
template <class T = float>
batch_norm<T> BatchNorm2d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 4, 4));
}
template <class T = float>
batch_norm<T> BatchNorm3d(std::int64_t num_features, const options& opts = {}) {
  return batch_norm<T>(make_config(num_features, opts, 5, 5));
}

}  // namespace mindspore
}  // namespace bnorm
