// The framework-level modules: PyTorch's and MindSpore's mode logic over two cached plans.
#include "bnorm/module.hpp"

#include <cmath>
#include <cstring>

namespace bnorm {

initializer::initializer(const char* name) {
  if (name != nullptr && std::strcmp(name, "ones") == 0) {
    constant_ = 1.0;
  } else if (name != nullptr && std::strcmp(name, "zeros") == 0) {
    constant_ = 0.0;
  } else {
    kind_ = kind::unknown_name;
    name_ = name ? name : "(null)";
  }
}

template <class T>
void initializer::fill(const char* parameter, std::size_t channels, std::vector<T>& out) const {
  switch (kind_) {
    case kind::constant: out.assign(channels, static_cast<T>(constant_)); return;
    case kind::values:
      if (values_.size() != channels) {
        throw error(status::failure(status_code::invalid_argument,
                                    "%s: expected %zu values (num_features), got %zu", parameter,
                                    channels, values_.size()));
      }
      out.assign(values_.begin(), values_.end());
      return;
    case kind::unknown_name:
      throw error(status::failure(status_code::invalid_argument,
                                  "%s: expected 'ones', 'zeros', a number or %zu values, got '%.64s'",
                                  parameter, channels, name_.c_str()));
  }
}

namespace {

const char* rank_text(std::size_t min_rank, std::size_t max_rank, char* buf, std::size_t n) {
  if (min_rank == max_rank) {
    std::snprintf(buf, n, "%zuD", min_rank);
  } else {
    std::snprintf(buf, n, "%zuD or %zuD", min_rank, max_rank);
  }
  return buf;
}

template <class T>
channel_input in(const std::vector<T>& v) {
  return v.empty() ? channel_input{} : channel_input{v.data(), v.size()};
}

template <class T>
channel_output out(std::vector<T>& v) {
  return v.empty() ? channel_output{} : channel_output{v.data(), v.size()};
}

}  // namespace

template <class T>
batch_norm<T>::batch_norm(const config& cfg)
    : config_(cfg), training_(cfg.framework == framework::pytorch) {
  if (cfg.num_features < 1) {
    throw error(status::failure(status_code::invalid_argument,
                                "num_features: expected >= 1, got %lld",
                                static_cast<long long>(cfg.num_features)));
  }
  if (!std::isfinite(cfg.eps) || cfg.eps < 0.0) {
    throw error(status::failure(status_code::invalid_argument,
                                "eps: expected a finite value >= 0, got %g", cfg.eps));
  }
  if (cfg.momentum && (!std::isfinite(*cfg.momentum) || *cfg.momentum < 0.0 || *cfg.momentum > 1.0)) {
    throw error(status::failure(status_code::invalid_argument,
                                "momentum: expected a finite value in [0, 1], got %g",
                                *cfg.momentum));
  }
  if (!cfg.momentum && cfg.framework != framework::pytorch) {
    throw error(status(status_code::invalid_argument,
                       "momentum: expected a value; only PyTorch defines momentum=None"));
  }
  reset_parameters();
}

template <class T>
void batch_norm<T>::reset_running_stats() {
  const auto channels = static_cast<std::size_t>(config_.num_features);
  const bool has_running = config_.framework == framework::mindspore || config_.track_running_stats;
  std::vector<T> mean, var;
  if (has_running) {
    config_.running_mean_init.fill(
        config_.framework == framework::mindspore ? "moving_mean_init" : "running_mean", channels,
        mean);
    config_.running_var_init.fill(
        config_.framework == framework::mindspore ? "moving_var_init" : "running_var", channels,
        var);
  }
  running_mean_ = std::move(mean);
  running_var_ = std::move(var);
  num_batches_tracked_ = 0;
}

template <class T>
void batch_norm<T>::reset_parameters() {
  const auto channels = static_cast<std::size_t>(config_.num_features);
  // PyTorch drops weight and bias without affine; MindSpore keeps them, frozen.
  const bool has_affine = config_.framework == framework::mindspore || config_.affine;
  std::vector<T> weight, bias;
  if (has_affine) {
    config_.weight_init.fill(config_.framework == framework::mindspore ? "gamma_init" : "weight",
                             channels, weight);
    config_.bias_init.fill(config_.framework == framework::mindspore ? "beta_init" : "bias",
                           channels, bias);
  }
  reset_running_stats();
  weight_ = std::move(weight);
  bias_ = std::move(bias);
}

template <class T>
bool batch_norm<T>::uses_batch_statistics() const noexcept {
  if (config_.framework == framework::mindspore) {
    return config_.use_batch_statistics.value_or(training_);
  }
  // torch: bn_training = training or (running_mean is None and running_var is None)
  return training_ || !config_.track_running_stats;
}

template <class T>
bool batch_norm<T>::updates_running_stats() const noexcept {
  if (config_.framework == framework::mindspore) {
    return config_.use_batch_statistics.value_or(training_);
  }
  return training_ && config_.track_running_stats;
}

template <class T>
const plan& batch_norm<T>::plan_for(const tensor_shape& shape, bool training_path) {
  plan& cached = training_path ? training_plan_ : inference_plan_;
  const bool update = training_path && updates_running_stats();
  if (cached.valid()) {
    const problem& p = cached.get_problem();
    bool same = p.shape.rank() == shape.rank() && cached.options().update_running_stats == update;
    for (std::size_t d = 0; same && d < shape.rank(); ++d) same = p.shape[d] == shape[d];
    if (same) return cached;
  }
  problem prob{shape, config_.layout, sizeof(T) == sizeof(float) ? dtype::f32 : dtype::f64,
               config_.eps};
  plan_options options;
  options.update_running_stats = update;
  options.max_threads = config_.max_threads;
  options.max_isa = config_.max_isa;
  if (config_.framework == framework::pytorch) {
    options.convention = momentum_convention::pytorch;
    options.cumulative_average = !config_.momentum.has_value();
    options.momentum = config_.momentum.value_or(0.0);
  } else {
    options.convention = momentum_convention::mindspore;
    options.momentum = *config_.momentum;
  }
  plan fresh;
  throw_if_failed(make_plan(prob, options, &fresh));
  cached = std::move(fresh);
  return cached;
}

template <class T>
void batch_norm<T>::forward(const T* src, T* dst, const tensor_shape& shape) {
  if (shape.rank() < config_.min_rank || shape.rank() > config_.max_rank) {
    char expected[32];
    throw error(status::failure(
        status_code::invalid_argument, "input: expected %s input (got %zuD input)",
        rank_text(config_.min_rank, config_.max_rank, expected, sizeof(expected)), shape.rank()));
  }
  if (shape[1] != config_.num_features) {
    throw error(status::failure(status_code::invalid_argument,
                                "input: expected %lld channels (num_features) in dimension 1, "
                                "got %lld",
                                static_cast<long long>(config_.num_features),
                                static_cast<long long>(shape[1])));
  }
  const bool batch_stats = uses_batch_statistics();
  const plan& p = plan_for(shape, batch_stats);
  if (batch_stats) {
    // The saved statistics are written only by a successful call: stage them.
    std::vector<T> mean(static_cast<std::size_t>(config_.num_features));
    std::vector<T> inv_std(mean.size());
    training_args args;
    args.src = src;
    args.dst = dst;
    args.scale = in(weight_);
    args.shift = in(bias_);
    args.batch_mean = out(mean);
    args.batch_inv_std = out(inv_std);
    if (p.options().update_running_stats) {
      args.running_mean = out(running_mean_);
      args.running_var = out(running_var_);
      args.num_batches_tracked = &num_batches_tracked_;
    }
    throw_if_failed(p.forward_training(args));
    saved_mean_ = std::move(mean);
    saved_inv_std_ = std::move(inv_std);
  } else {
    inference_args args;
    args.src = src;
    args.dst = dst;
    args.scale = in(weight_);
    args.shift = in(bias_);
    args.mean = in(running_mean_);
    args.var = in(running_var_);
    throw_if_failed(p.forward_inference(args));
  }
}

template <class T>
std::vector<T> batch_norm<T>::forward(const std::vector<T>& src, const tensor_shape& shape) {
  std::size_t expected = 1;
  for (std::size_t d = 0; d < shape.rank(); ++d) {
    expected *= static_cast<std::size_t>(shape[d] < 0 ? 0 : shape[d]);
  }
  if (src.size() != expected) {
    throw error(status::failure(status_code::invalid_argument,
                                "src: expected %zu values for the given shape, got %zu", expected,
                                src.size()));
  }
  std::vector<T> dst(src.size());
  forward(src.data(), dst.data(), shape);
  return dst;
}

template <class T>
isa batch_norm<T>::isa() const {
  if (training_plan_.valid()) return training_plan_.isa();
  if (inference_plan_.valid()) return inference_plan_.isa();
  const std::vector<bnorm::isa> all = available_isas();
  return all.back();
}

template class batch_norm<float>;
template class batch_norm<double>;

// ---------------------------------------------------------------- the frameworks' factories

namespace {

// What both frameworks' modules share.
module_config common_config(framework which, std::int64_t num_features, std::size_t min_rank,
                            std::size_t max_rank, double eps, std::optional<double> momentum,
                            bool affine) {
  module_config cfg;
  cfg.framework = which;
  cfg.num_features = num_features;
  cfg.min_rank = min_rank;
  cfg.max_rank = max_rank;
  cfg.eps = eps;
  cfg.momentum = momentum;
  cfg.affine = affine;
  return cfg;
}

}  // namespace

namespace torch {

module_config make_config(std::int64_t num_features, const options& opts, std::size_t min_rank,
                          std::size_t max_rank) {
  module_config cfg = common_config(framework::pytorch, num_features, min_rank, max_rank,
                                    opts.eps, opts.momentum, opts.affine);
  cfg.track_running_stats = opts.track_running_stats;
  cfg.layout = opts.memory_format;
  return cfg;
}

}  // namespace torch

namespace mindspore {

module_config make_config(std::int64_t num_features, const options& opts, std::size_t min_rank,
                          std::size_t max_rank) {
  module_config cfg = common_config(framework::mindspore, num_features, min_rank, max_rank,
                                    opts.eps, opts.momentum, opts.affine);
  cfg.use_batch_statistics = opts.use_batch_statistics;
  if (opts.data_format == "NCHW") {
    cfg.layout = layout::channels_first;
  } else if (opts.data_format == "NHWC") {
    cfg.layout = layout::channels_last;
  } else {
    throw error(status::failure(status_code::invalid_argument,
                                "data_format: expected 'NCHW' or 'NHWC', got '%.64s'",
                                opts.data_format.c_str()));
  }
  cfg.weight_init = opts.gamma_init;
  cfg.bias_init = opts.beta_init;
  cfg.running_mean_init = opts.moving_mean_init;
  cfg.running_var_init = opts.moving_var_init;
  return cfg;
}

}  // namespace mindspore
}  // namespace bnorm
