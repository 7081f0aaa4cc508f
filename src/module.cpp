// The framework-level modules: PyTorch's and MindSpore's mode logic over two cached plans.
#include "bnorm/module.hpp"

#include <array>
#include <cctype>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include <unistd.h>

#include "fp_environment.hpp"
#include "validation.hpp"

namespace bnorm {

namespace {

/// Whether `name` is one of `names`, in any case (MindSpore looks its initializers up by
/// init.lower()).
bool names_one_of(const char* name, std::initializer_list<const char*> names) {
  for (const char* candidate : names) {
    std::size_t i = 0;
    while (name[i] != '\0' && candidate[i] != '\0' &&
           std::tolower(static_cast<unsigned char>(name[i])) == candidate[i]) {
      ++i;
    }
    if (name[i] == '\0' && candidate[i] == '\0') return true;
  }
  return false;
}

using name_pair = std::pair<const char*, const char*>;  // the engine's, the module's

/// The module's parameters and buffers as its framework names them.
struct parameter_names {
  const char* weight;
  const char* bias;
  const char* running_mean;
  const char* running_var;
  const char* weight_grad;
  const char* bias_grad;
};
constexpr parameter_names pytorch_names = {"weight",      "bias",        "running_mean",
                                           "running_var", "weight_grad", "bias_grad"};
constexpr parameter_names mindspore_names = {"gamma",           "beta",       "moving_mean",
                                             "moving_variance", "gamma_grad", "beta_grad"};
const parameter_names& names_of(framework f) {
  return f == framework::mindspore ? mindspore_names : pytorch_names;
}

/// fold_into(weight, bias, ...)'s refusal: the layer's weight and bias as the call names them
/// (the engine stages the folded bias apart), the module's parameters and statistics as it does.
constexpr name_pair pytorch_fold_names[] = {
    {"folded_weight", "weight"},    {"folded_bias", "bias"},  {"scale", "the module's weight"},
    {"shift", "the module's bias"}, {"mean", "running_mean"}, {"var", "running_var"}};
constexpr name_pair mindspore_fold_names[] = {
    {"folded_weight", "weight"}, {"folded_bias", "bias"}, {"scale", "gamma"},
    {"shift", "beta"},           {"mean", "moving_mean"}, {"var", "moving_variance"}};

/// A refusal of the engine in the module's words: each engine name in [first, last), in turn,
/// wherever the message has it as a whole word.
status in_module_names(const status& s, const name_pair* first, const name_pair* last) {
  if (s) return s;
  const auto word_character = [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
  };
  std::string text = s.message();
  for (const name_pair* name = first; name != last; ++name) {
    const auto& [engine, module] = *name;
    const std::size_t length = std::strlen(engine);
    for (std::size_t at = text.find(engine); at != std::string::npos; at = text.find(engine, at)) {
      const bool whole = (at == 0 || !word_character(text[at - 1])) &&
                         (at + length == text.size() || !word_character(text[at + length]));
      if (!whole) {
        at += length;
        continue;
      }
      text.replace(at, length, module);
      at += std::strlen(module);
    }
  }
  return status::failure(s.code(), "%s", text.c_str());
}

status in_module_names(const status& s, std::initializer_list<name_pair> names) {
  return in_module_names(s, names.begin(), names.end());
}
template <class Names>
status in_module_names(const status& s, const Names& names) {
  return in_module_names(s, std::data(names), std::data(names) + std::size(names));
}

/// A backward call's refusal in the words of backward(input, grad_output, grad_input), its
/// gradients and the module's buffers: the saved batch statistics, or (frozen) the running ones.
std::array<name_pair, 8> backward_names(const parameter_names& names, bool frozen) {
  return {{{"diff_src", "grad_input"},
           {"diff_dst", "grad_output"},
           {"diff_scale", names.weight_grad},
           {"diff_shift", names.bias_grad},
           {"src", "input"},
           {"scale", names.weight},
           {"mean", frozen ? names.running_mean : "saved_mean"},
           frozen ? name_pair{"var", names.running_var} : name_pair{"inv_std", "saved_inv_std"}}};
}

}  // namespace

initializer::initializer(const char* name) {
  if (name != nullptr && names_one_of(name, {"ones", "one"})) {
    constant_ = 1.0;
  } else if (name != nullptr && names_one_of(name, {"zeros", "zero"})) {
    constant_ = 0.0;
  } else {
    kind_ = kind::unknown_name;
    name_ = name ? name : "(null)";
  }
}

template <class T>
void initializer::fill(const char* parameter, std::size_t channels, std::vector<T>& out) const {
  // A finite value beyond T's range would be stored as an infinity (a conversion ISO C++ leaves
  // undefined): refused. NaN and infinities are kept as given, as the frameworks keep them.
  const auto check_range = [&](double v) {
    if (std::isfinite(v) && std::fabs(v) > static_cast<double>(std::numeric_limits<T>::max())) {
      throw error(status::failure(status_code::invalid_argument,
                                  "%s: expected values within the range of %s (at most %s in "
                                  "magnitude), got %s",
                                  parameter, sizeof(T) == 4 ? "float32" : "float64",
                                  detail::number_text(std::numeric_limits<T>::max()).text,
                                  detail::number_text(v).text));
    }
  };
  switch (kind_) {
    case kind::constant:
      check_range(constant_);
      out.assign(channels, static_cast<T>(constant_));
      return;
    case kind::values:
      if (values_.size() != channels) {
        throw error(status::failure(status_code::invalid_argument,
                                    "%s: expected %zu values (num_features), got %zu", parameter,
                                    channels, values_.size()));
      }
      for (double v : values_) check_range(v);
      out.assign(values_.begin(), values_.end());
      return;
    case kind::unknown_name:
      throw error(
          status::failure(status_code::invalid_argument,
                          "%s: expected 'ones', 'zeros', a number or %zu values, got '%.64s'",
                          parameter, channels, name_.c_str()));
  }
}

namespace {

/// Runs `fn` in bnorm's floating-point environment (the gradients' accumulation too), turning
/// the standard library's allocation failures into bnorm::error: every failure of the module
/// API is a bnorm::error with a status.
template <class Fn>
auto module_call(const char* what, Fn&& fn) -> decltype(fn()) {
  const detail::fp_environment_scope environment;
  try {
    return fn();
  } catch (const error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw error(status::failure(status_code::out_of_memory, "%s: out of memory", what));
  } catch (const std::length_error&) {
    throw error(status::failure(status_code::out_of_memory, "%s: out of memory (length)", what));
  }
}

/// A module call that may go through `exchange` (null: none): when it fails before reaching it,
/// the exchange hears of the refusal, so that a collective one fails on every rank instead of
/// waiting for this one.
template <class Fn>
auto refusing_through(const training_exchange* exchange, Fn&& fn)
    -> decltype(fn(std::declval<bool&>())) {
  bool reached = false;
  try {
    return fn(reached);
  } catch (const error& e) {
    if (exchange && !reached) exchange->refuse(e.get_status());
    throw;
  } catch (const std::bad_alloc&) {
    if (exchange && !reached) exchange->refuse(status(status_code::out_of_memory, "out of memory"));
    throw;
  } catch (const std::length_error&) {
    if (exchange && !reached) exchange->refuse(status(status_code::out_of_memory, "out of memory"));
    throw;
  }
}

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

// A module's parameters and buffers: at most this many channels (the engine's bound on
// per-channel buffers, 2^60 bytes, for the widest dtype).
constexpr std::int64_t max_num_features = std::int64_t{1} << 57;

// A function try block: copying the config (its strings and vectors) may fail too, and every
// failure of the module API is a bnorm::error.
template <class T>
batch_norm<T>::batch_norm(const config& cfg) try
    : config_(cfg), training_(cfg.framework == framework::pytorch) {
  // The checks compare floats: in bnorm's environment, as every call's (module_call).
  const detail::fp_environment_scope environment;
  if (cfg.num_features < 1 || cfg.num_features > max_num_features) {
    throw error(status::failure(status_code::invalid_argument,
                                "num_features: expected 1 to 2^57, got %lld",
                                static_cast<long long>(cfg.num_features)));
  }
  // Four per-channel vectors (weight, bias and the running statistics) beyond the machine's
  // memory are refused before they are tried: filling them would otherwise end in the
  // allocator's abort (sanitizers) or the out-of-memory killer (overcommit), not an exception.
  const double parameter_bytes =
      4.0 * static_cast<double>(cfg.num_features) * sizeof(parameter_type);
  const long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0 &&
      parameter_bytes > static_cast<double>(pages) * static_cast<double>(page_size)) {
    throw error(status::failure(status_code::out_of_memory,
                                "num_features: %lld channels need %.3g bytes of parameters and "
                                "buffers, more than this machine's %.3g bytes of memory",
                                static_cast<long long>(cfg.num_features), parameter_bytes,
                                static_cast<double>(pages) * static_cast<double>(page_size)));
  }
  if (cfg.framework != framework::pytorch && cfg.framework != framework::mindspore) {
    throw error(status::failure(status_code::invalid_argument,
                                "framework: expected pytorch or mindspore, got an unknown value "
                                "(%d)",
                                static_cast<int>(cfg.framework)));
  }
  if (cfg.min_rank < 2 || cfg.min_rank > cfg.max_rank || cfg.max_rank > 5) {
    throw error(
        status::failure(status_code::invalid_argument,
                        "min_rank, max_rank: expected input ranks 2 <= min_rank <= max_rank "
                        "<= 5, got %zu and %zu",
                        cfg.min_rank, cfg.max_rank));
  }
  // mindspore.ops.BatchNorm checks epsilon in (0, 1], which the plan's rule (finite, >= 0)
  // holds: its message names MindSpore's range for a negative or NaN eps too.
  if (cfg.framework == framework::mindspore && !(cfg.eps > 0.0 && cfg.eps <= 1.0)) {
    throw error(status::failure(status_code::invalid_argument,
                                "eps: expected a value in (0, 1] (MindSpore's BatchNorm), got %s",
                                detail::number_text(cfg.eps).text));
  }
  throw_if_failed(detail::check_epsilon("eps", cfg.eps));
  if (cfg.momentum) throw_if_failed(detail::check_momentum("momentum", *cfg.momentum));
  if (!cfg.momentum && cfg.framework != framework::pytorch) {
    throw error(status(status_code::invalid_argument,
                       "momentum: expected a value; only PyTorch defines momentum=None"));
  }
  reset_parameters();
} catch (const error&) {
  throw;
} catch (const std::bad_alloc&) {
  throw error(status(status_code::out_of_memory, "module: out of memory"));
} catch (const std::length_error&) {
  throw error(status(status_code::out_of_memory, "module: out of memory (length)"));
}

template <class T>
void batch_norm<T>::reset_running_stats() {
  module_call("reset_running_stats", [&] { reset_running_stats_unguarded(); });
}

template <class T>
void batch_norm<T>::reset_running_stats_unguarded() {
  const auto channels = static_cast<std::size_t>(config_.num_features);
  const bool has_running = config_.framework == framework::mindspore || config_.track_running_stats;
  std::vector<parameter_type> mean, var;
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
  module_call("reset_parameters", [&] {
    const auto channels = static_cast<std::size_t>(config_.num_features);
    // PyTorch drops weight and bias without affine; MindSpore keeps them, frozen.
    const bool has_affine = config_.framework == framework::mindspore || config_.affine;
    std::vector<parameter_type> weight, bias;
    if (has_affine) {
      config_.weight_init.fill(config_.framework == framework::mindspore ? "gamma_init" : "weight",
                               channels, weight);
      config_.bias_init.fill(config_.framework == framework::mindspore ? "beta_init" : "bias",
                             channels, bias);
    }
    reset_running_stats_unguarded();
    weight_ = std::move(weight);
    bias_ = std::move(bias);
  });
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
bool batch_norm<T>::exchanges_batch_statistics() const noexcept {
  // torch.nn.SyncBatchNorm: need_sync = bn_training and self.training
  return exchange_ && uses_batch_statistics() &&
         (config_.framework == framework::mindspore || training_);
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
  problem prob{shape, config_.layout, dtype_of<T>, config_.eps};
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
void batch_norm<T>::check_buffers() const {
  const auto channels = static_cast<std::size_t>(config_.num_features);
  const bool mindspore = config_.framework == framework::mindspore;
  // PyTorch drops weight and bias without affine and the running statistics without
  // track_running_stats; MindSpore keeps all four.
  const bool has_affine = mindspore || config_.affine;
  const bool has_running = mindspore || config_.track_running_stats;
  const char* affine_why = mindspore ? "a MindSpore cell keeps it" : "affine is true";
  const char* running_why = mindspore ? "a MindSpore cell keeps it" : "track_running_stats is true";
  struct buffer {
    const char* name;
    std::size_t size;
    bool kept;
    const char* why;
  };
  const buffer buffers[] = {
      {mindspore ? "gamma" : "weight", weight_.size(), has_affine, affine_why},
      {mindspore ? "beta" : "bias", bias_.size(), has_affine, affine_why},
      {mindspore ? "moving_mean" : "running_mean", running_mean_.size(), has_running, running_why},
      {mindspore ? "moving_variance" : "running_var", running_var_.size(), has_running,
       running_why}};
  for (const buffer& b : buffers) {
    if (b.kept && b.size != channels) {
      throw error(status::failure(status_code::invalid_argument,
                                  "%s: expected %zu values (num_features; %s), got %zu", b.name,
                                  channels, b.why, b.size));
    }
    if (!b.kept && b.size != 0) {
      throw error(status::failure(status_code::invalid_argument,
                                  "%s: expected no values (%s is false), got %zu", b.name,
                                  b.why == affine_why ? "affine" : "track_running_stats", b.size));
    }
  }
}

template <class T>
void batch_norm<T>::forward(const T* src, T* dst, const tensor_shape& shape) {
  module_call("forward", [&] {
    refusing_through(forward_exchange(),
                     [&](bool& reached) { forward_unguarded(src, dst, shape, reached); });
  });
}

template <class T>
void batch_norm<T>::check_input_shape(const tensor_shape& shape) const {
  if (shape.rank() < config_.min_rank || shape.rank() > config_.max_rank) {
    char expected[32];
    throw error(status::failure(
        status_code::invalid_argument, "input: expected %s input (got %zuD input)",
        rank_text(config_.min_rank, config_.max_rank, expected, sizeof(expected)), shape.rank()));
  }
  // The dimensions first: a null or negative shape is named as such, not as a channel count.
  throw_if_failed(detail::check_dimensions(shape));
  if (shape[1] != config_.num_features) {
    throw error(status::failure(status_code::invalid_argument,
                                "input: expected %lld channels (num_features) in dimension 1, "
                                "got %lld",
                                static_cast<long long>(config_.num_features),
                                static_cast<long long>(shape[1])));
  }
}

template <class T>
const training_exchange* batch_norm<T>::forward_exchange() const noexcept {
  return exchanges_batch_statistics() ? exchange_.get() : nullptr;
}

template <class T>
const training_exchange* batch_norm<T>::backward_exchange() const noexcept {
  return last_forward_ ? last_forward_->exchange.get() : forward_exchange();
}

template <class T>
void batch_norm<T>::forward_unguarded(const T* src, T* dst, const tensor_shape& shape,
                                      bool& reached_exchange) {
  check_input_shape(shape);
  check_buffers();
  const bool batch_stats = uses_batch_statistics();
  const plan& p = plan_for(shape, batch_stats);
  if (batch_stats) {
    // The saved statistics are written only by a successful call: staged.
    const auto channels = static_cast<std::size_t>(config_.num_features);
    for (auto* staged : {&staged_mean_, &staged_mean_residual_, &staged_inv_std_}) {
      staged->resize(channels);
    }
    training_args args;
    args.src = src;
    args.dst = dst;
    args.scale = in(weight_);
    args.shift = in(bias_);
    args.batch_mean = out(staged_mean_);
    // The backward's gradient is the forward's: the mean's residual too.
    args.batch_mean_residual = out(staged_mean_residual_);
    args.batch_inv_std = out(staged_inv_std_);
    if (p.options().update_running_stats) {
      args.running_mean = out(running_mean_);
      args.running_var = out(running_var_);
      args.num_batches_tracked = &num_batches_tracked_;
    }
    std::shared_ptr<const training_exchange> exchange;
    if (exchanges_batch_statistics()) exchange = exchange_;
    reached_exchange = exchange != nullptr;
    const parameter_names& names = names_of(config_.framework);
    throw_if_failed(
        in_module_names(exchange ? exchange->forward_training(p, args) : p.forward_training(args),
                        {{"scale", names.weight},
                         {"shift", names.bias},
                         {"running_mean", names.running_mean},
                         {"running_var", names.running_var}}));
    saved_mean_.swap(staged_mean_);
    saved_mean_residual_.swap(staged_mean_residual_);
    saved_inv_std_.swap(staged_inv_std_);
    last_forward_ = last_forward{shape, true, std::move(exchange), p.isa()};
  } else {
    inference_args args;
    args.src = src;
    args.dst = dst;
    args.scale = in(weight_);
    args.shift = in(bias_);
    args.mean = in(running_mean_);
    args.var = in(running_var_);
    const parameter_names& names = names_of(config_.framework);
    throw_if_failed(in_module_names(p.forward_inference(args), {{"scale", names.weight},
                                                                {"shift", names.bias},
                                                                {"mean", names.running_mean},
                                                                {"var", names.running_var}}));
    last_forward_ = last_forward{shape, false, nullptr, p.isa()};
  }
}

template <class T>
bool batch_norm<T>::trains_affine() const noexcept {
  // Without affine, PyTorch has no weight and bias and MindSpore keeps them frozen: neither
  // has their gradients.
  return config_.affine;
}

template <class T>
void batch_norm<T>::backward(const T* input, const T* grad_output, T* grad_input) {
  module_call("backward", [&] {
    refusing_through(backward_exchange(), [&](bool& reached) {
      backward_unguarded(input, grad_output, grad_input, reached);
    });
  });
}

template <class T>
std::vector<T> batch_norm<T>::backward(const std::vector<T>& input,
                                       const std::vector<T>& grad_output) {
  return module_call("backward", [&] {
    return refusing_through(backward_exchange(), [&](bool& reached) {
      if (!last_forward_) backward_unguarded(nullptr, nullptr, nullptr, reached);  // its error
      std::uint64_t expected = 0;
      detail::element_count(last_forward_->shape, &expected);
      for (const auto& [name, v] : {std::pair<const char*, const std::vector<T>*>{"input", &input},
                                    {"grad_output", &grad_output}}) {
        if (v->size() != expected) {
          throw error(status::failure(status_code::invalid_argument,
                                      "%s: expected %llu values (the last forward's shape %s), "
                                      "got %zu",
                                      name, static_cast<unsigned long long>(expected),
                                      detail::shape_text(last_forward_->shape).text, v->size()));
        }
      }
      std::vector<T> grad_input(grad_output.size());
      backward_unguarded(input.data(), grad_output.data(), grad_input.data(), reached);
      return grad_input;
    });
  });
}

template <class T>
void batch_norm<T>::backward_unguarded(const T* input, const T* grad_output, T* grad_input,
                                       bool& reached_exchange) {
  if (!last_forward_) {
    throw error(status(status_code::invalid_argument,
                       "backward: expected a forward before it (its statistics and shape), got "
                       "none"));
  }
  check_buffers();
  std::uint64_t elements = 0;
  detail::element_count(last_forward_->shape, &elements);
  // An empty batch's grad_input holds nothing: a std::vector of none may give a null data().
  if (grad_input == nullptr && elements > 0 && !trains_affine()) {
    throw error(status(status_code::invalid_argument,
                       "grad_input: expected a buffer for the input gradient (with affine=False "
                       "it is the only gradient), got a null pointer"));
  }
  const last_forward& last = *last_forward_;
  const plan& p = plan_for(last.shape, last.batch_statistics);
  const std::size_t channels = static_cast<std::size_t>(config_.num_features);
  const parameter_names& names = names_of(config_.framework);
  backward_args args;
  args.src = input;
  args.diff_dst = grad_output;
  args.diff_src = grad_input;
  args.scale = in(weight_);
  // The parameter gradients are staged: the accumulated ones change only on success.
  if (trains_affine()) {
    staged_weight_grad_.resize(channels);
    staged_bias_grad_.resize(channels);
    args.diff_scale = out(staged_weight_grad_);
    args.diff_shift = out(staged_bias_grad_);
  }
  if (last.batch_statistics) {
    args.mean = in(saved_mean_);
    args.mean_residual = in(saved_mean_residual_);
    args.inv_std = in(saved_inv_std_);
    reached_exchange = last.exchange != nullptr;
    throw_if_failed(in_module_names(
        last.exchange ? last.exchange->backward_training(p, args) : p.backward_training(args),
        backward_names(names, false)));
  } else {
    args.mean = in(running_mean_);
    args.var = in(running_var_);
    throw_if_failed(in_module_names(p.backward_frozen(args), backward_names(names, true)));
  }
  if (!trains_affine()) return;
  // Nothing below allocates or throws: both gradients change, or neither.
  const auto accumulate = [](std::vector<parameter_type>& into,
                             std::vector<parameter_type>& grad) noexcept {
    if (into.empty()) {
      into.swap(grad);
      return;
    }
    for (std::size_t c = 0; c < grad.size(); ++c) into[c] += grad[c];
  };
  accumulate(weight_grad_, staged_weight_grad_);
  accumulate(bias_grad_, staged_bias_grad_);
}

template <class T>
void batch_norm<T>::fold_into(std::vector<T>& weight, std::vector<T>& bias,
                              const tensor_shape& weight_shape, weight_layout layout,
                              std::int64_t groups) const {
  module_call("fold_into", [&] {
    if (uses_batch_statistics()) {
      throw error(status(status_code::invalid_argument,
                         "fold_into: expected a module that normalizes with its running "
                         "statistics (eval mode), got one that uses batch statistics"));
    }
    check_buffers();
    fold_problem prob;
    prob.layout = layout;
    prob.weight_shape = weight_shape;
    prob.groups = groups;
    prob.dtype = dtype_of<T>;
    prob.epsilon = config_.eps;
    // The layer's shape as fold_into_layer refuses it, then its output channels against this
    // module's (the layer's folded bias is staged here, num_features long).
    std::size_t layer_channels = 0;
    throw_if_failed(detail::fold_channels(prob, &layer_channels));
    if (layer_channels != static_cast<std::size_t>(config_.num_features)) {
      throw error(status::failure(status_code::invalid_argument,
                                  "weight_shape: expected a layer of %lld output channels "
                                  "(num_features), got %zu (%s, %s)",
                                  static_cast<long long>(config_.num_features), layer_channels,
                                  detail::shape_text(weight_shape).text, to_string(layout)));
    }
    std::uint64_t elements = 0;
    detail::element_count(weight_shape, &elements);  // fits: fold_channels took the shape
    if (weight.size() != elements) {
      throw error(status::failure(status_code::invalid_argument,
                                  "weight: expected %llu values for the shape %s, got %zu",
                                  static_cast<unsigned long long>(elements),
                                  detail::shape_text(weight_shape).text, weight.size()));
    }
    // Staged: the layer changes only when the fold succeeds.
    std::vector<T> folded_bias(static_cast<std::size_t>(config_.num_features));
    fold_args args;
    args.weight = weight.data();
    args.folded_weight = weight.data();
    args.bias = in(bias);
    args.folded_bias = out(folded_bias);
    args.scale = in(weight_);
    args.shift = in(bias_);
    args.mean = in(running_mean_);
    args.var = in(running_var_);
    throw_if_failed(in_module_names(
        fold_into_layer(prob, args),
        config_.framework == framework::mindspore ? mindspore_fold_names : pytorch_fold_names));
    bias = std::move(folded_bias);
  });
}

template <class T>
void batch_norm<T>::zero_grad(bool set_to_none) {
  module_call("zero_grad", [&] {
    if (set_to_none) {
      weight_grad_.clear();
      bias_grad_.clear();
    } else {  // as PyTorch: a gradient that is none stays none
      std::fill(weight_grad_.begin(), weight_grad_.end(), parameter_type(0));
      std::fill(bias_grad_.begin(), bias_grad_.end(), parameter_type(0));
    }
  });
}

template <class T>
std::vector<T> batch_norm<T>::forward(const std::vector<T>& src, const tensor_shape& shape) {
  return module_call("forward", [&] {
    return refusing_through(forward_exchange(), [&](bool& reached) {
      check_input_shape(shape);
      std::uint64_t expected = 0;
      // A shape beyond the plans' bound: the plan's refusal, which names it.
      if (!detail::element_count(shape, &expected)) {
        forward_unguarded(nullptr, nullptr, shape, reached);
      }
      if (src.size() != expected) {
        throw error(status::failure(
            status_code::invalid_argument, "src: expected %llu values for the shape %s, got %zu",
            static_cast<unsigned long long>(expected), detail::shape_text(shape).text, src.size()));
      }
      std::vector<T> dst(src.size());
      forward_unguarded(src.data(), dst.data(), shape, reached);
      return dst;
    });
  });
}

template <class T>
isa batch_norm<T>::isa() const {
  if (last_forward_) return last_forward_->isa;
  if (training_plan_.valid()) return training_plan_.isa();
  if (inference_plan_.valid()) return inference_plan_.isa();
  bnorm::isa selected = bnorm::isa::sse2;
  throw_if_failed(select_isa(config_.max_isa, &selected));
  return selected;
}

template class batch_norm<float>;
template class batch_norm<double>;
template class batch_norm<bfloat16>;
template class batch_norm<float16>;

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
  module_config cfg = common_config(framework::pytorch, num_features, min_rank, max_rank, opts.eps,
                                    opts.momentum, opts.affine);
  cfg.track_running_stats = opts.track_running_stats;
  cfg.layout = opts.memory_format;
  return cfg;
}

}  // namespace torch

namespace mindspore {

namespace {

module_config mindspore_config(std::int64_t num_features, const options& opts, std::size_t min_rank,
                               std::size_t max_rank) {
  module_config cfg = common_config(framework::mindspore, num_features, min_rank, max_rank,
                                    opts.eps, opts.momentum, opts.affine);
  cfg.use_batch_statistics = opts.use_batch_statistics;
  // BatchNorm3d names its formats NCDHW (MindSpore's) and NDHWC; NCHW and NHWC name the
  // layouts of every rank.
  const bool three_d = min_rank == 5;
  const std::string& format = opts.data_format;
  if (format == "NCHW" || (three_d && format == "NCDHW")) {
    cfg.layout = layout::channels_first;
  } else if (format == "NHWC" || (three_d && format == "NDHWC")) {
    cfg.layout = layout::channels_last;
  } else {
    throw error(status::failure(
        status_code::invalid_argument, "data_format: expected %s, got '%.64s'",
        three_d ? "'NCDHW', 'NDHWC', 'NCHW' or 'NHWC'" : "'NCHW' or 'NHWC'", format.c_str()));
  }
  cfg.weight_init = opts.gamma_init;
  cfg.bias_init = opts.beta_init;
  cfg.running_mean_init = opts.moving_mean_init;
  cfg.running_var_init = opts.moving_var_init;
  return cfg;
}

}  // namespace

// The copies of the initializers (names, values) may fail: make_config turns that into a
// bnorm::error like every other failure of the module API.
module_config make_config(std::int64_t num_features, const options& opts, std::size_t min_rank,
                          std::size_t max_rank) {
  return module_call("make_config",
                     [&] { return mindspore_config(num_features, opts, min_rank, max_rank); });
}

}  // namespace mindspore
}  // namespace bnorm
