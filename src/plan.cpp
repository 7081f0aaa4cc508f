// The engine API: validation of problems and arguments, scratch, and the no-throw boundary.
// Every check runs before anything is written.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "bnorm/distributed.hpp"
#include "bnorm/plan.hpp"
#include "cpu_isa.hpp"
#include "element_types.hpp"
#include "execute.hpp"
#include "fp_environment.hpp"
#include "plan_impl.hpp"
#include "statistics.hpp"
#include "validation.hpp"

namespace bnorm {

tensor_shape::tensor_shape(std::initializer_list<std::int64_t> dims) noexcept
    : tensor_shape(dims.begin(), dims.size()) {}

tensor_shape::tensor_shape(const std::int64_t* dims, std::size_t rank) noexcept
    : rank_(rank),
      stored_(dims == nullptr   ? 0
              : rank < capacity ? rank
                                : capacity) {
  for (std::size_t i = 0; i < stored_; ++i) dims_[i] = dims[i];
}

const char* to_string(bnorm::layout value) noexcept {
  switch (value) {
    case layout::channels_first: return "channels_first";
    case layout::channels_last: return "channels_last";
  }
  return "unknown";
}

const char* to_string(dtype value) noexcept {
  switch (value) {
    case dtype::f32: return "f32";
    case dtype::f64: return "f64";
    case dtype::bf16: return "bf16";
    case dtype::f16: return "f16";
  }
  return "unknown";
}

const char* to_string(momentum_convention value) noexcept {
  switch (value) {
    case momentum_convention::pytorch: return "pytorch";
    case momentum_convention::mindspore: return "mindspore";
    case momentum_convention::onnx: return "onnx";
  }
  return "unknown";
}

double default_momentum(momentum_convention convention) noexcept {
  return convention == momentum_convention::mindspore || convention == momentum_convention::onnx
             ? 0.9
             : 0.1;
}

const char* to_string(activation value) noexcept {
  switch (value) {
    case activation::none: return "none";
    case activation::relu: return "relu";
    case activation::clamp: return "clamp";
    case activation::add_relu: return "add_relu";
  }
  return "unknown";
}

const char* to_string(store_policy value) noexcept {
  switch (value) {
    case store_policy::automatic: return "automatic";
    case store_policy::cached: return "cached";
    case store_policy::streaming: return "streaming";
  }
  return "unknown";
}

namespace {

using detail::check_alignment;
using detail::check_channel_buffers;
using detail::check_separate;
using detail::element_size;
using detail::enum_text;
using detail::number_text;
using detail::parameter_dtype;
using detail::plan_impl;
using detail::region;
using detail::shape_text;

// No address space holds more; below it, every size computation of the planner (products of
// element counts with small factors) fits in 64 bits.
constexpr std::uint64_t max_tensor_bytes = std::uint64_t{1} << 60;

status validate_problem(const problem& prob, const plan_options& options) noexcept {
  const tensor_shape& shape = prob.shape;
  if (shape.rank() < 2 || shape.rank() > max_rank) {
    return status::failure(status_code::invalid_argument,
                           "shape: expected rank 2 to 5 (N, C[, D][, H][, W]), got rank %zu %s",
                           shape.rank(), shape_text(shape).text);
  }
  if (status s = detail::check_dimensions(shape); !s) return s;
  if (shape[1] < 1) {
    return status::failure(status_code::invalid_argument,
                           "num_features (C = shape[1]): expected >= 1, got %lld",
                           static_cast<long long>(shape[1]));
  }
  if (prob.dtype != dtype::f32 && prob.dtype != dtype::f64 && prob.dtype != dtype::bf16 &&
      prob.dtype != dtype::f16) {
    return status::failure(status_code::invalid_argument,
                           "dtype: expected f32, f64, bf16 or f16, got %s",
                           enum_text(prob.dtype).text);
  }
  const std::optional<dtype>& parameters = options.parameter_dtype;
  if (parameters && *parameters != detail::compute_dtype(prob.dtype) &&
      !(*parameters == prob.dtype && element_size(prob.dtype) == 2)) {
    return status::failure(status_code::invalid_argument,
                           "parameter_dtype: expected %s%s%s (the per-channel buffers of %s data), "
                           "got %s",
                           to_string(detail::compute_dtype(prob.dtype)),
                           element_size(prob.dtype) == 2 ? " or " : "",
                           element_size(prob.dtype) == 2 ? to_string(prob.dtype) : "",
                           to_string(prob.dtype), enum_text(*parameters).text);
  }
  // The tensor and its per-channel buffers must fit in an address space, so that no index or
  // size computation can wrap.
  std::uint64_t elements = 0, extent = 0;
  const std::uint64_t largest = max_tensor_bytes / element_size(prob.dtype);
  if (!detail::element_count(shape, &elements, &extent) || extent > largest) {
    return status::failure(status_code::invalid_argument,
                           "shape: expected at most 2^60 bytes of %s (%llu elements, and as "
                           "many channels), got %s",
                           to_string(prob.dtype), static_cast<unsigned long long>(largest),
                           shape_text(shape).text);
  }
  if (prob.layout != layout::channels_first && prob.layout != layout::channels_last) {
    return status::failure(status_code::invalid_argument,
                           "layout: expected channels_first or channels_last, got %s",
                           enum_text(prob.layout).text);
  }
  if (status s = detail::check_epsilon("epsilon", prob.epsilon); !s) return s;
  if (options.momentum) {
    if (status s = detail::check_momentum("momentum", *options.momentum); !s) return s;
  }
  if (options.convention != momentum_convention::pytorch &&
      options.convention != momentum_convention::mindspore &&
      options.convention != momentum_convention::onnx) {
    return status::failure(status_code::invalid_argument,
                           "convention: expected pytorch, mindspore or onnx, got %s",
                           enum_text(options.convention).text);
  }
  if (options.cumulative_average && options.convention != momentum_convention::pytorch) {
    return status::failure(status_code::invalid_argument,
                           "cumulative_average: expected the pytorch convention (momentum=None), "
                           "got the %s convention",
                           enum_text(options.convention).text);
  }
  if (options.stores != store_policy::automatic && options.stores != store_policy::cached &&
      options.stores != store_policy::streaming) {
    return status::failure(status_code::invalid_argument,
                           "stores: expected automatic, cached or streaming, got %s",
                           enum_text(options.stores).text);
  }
  if (options.activation != activation::none && options.activation != activation::relu &&
      options.activation != activation::clamp && options.activation != activation::add_relu) {
    return status::failure(status_code::invalid_argument,
                           "activation: expected none, relu, clamp or add_relu, got %s",
                           enum_text(options.activation).text);
  }
  if (options.activation == activation::clamp && !(options.clamp_min <= options.clamp_max)) {
    return status::failure(status_code::invalid_argument,
                           "clamp_min, clamp_max: expected clamp_min <= clamp_max (neither NaN), "
                           "got %s and %s",
                           detail::number_text(options.clamp_min).text,
                           detail::number_text(options.clamp_max).text);
  }
  if (options.max_threads < 0) {
    return status::failure(status_code::invalid_argument,
                           "max_threads: expected 0 (caller's arena) or a count >= 1, got %d",
                           options.max_threads);
  }
  return {};
}

status check_tensors(const plan_impl& plan, const void* src, const void* dst) noexcept {
  if (plan.part.elements == 0) {  // an empty tensor: pointers may be null, but not misaligned
    if (status s = check_alignment("src", src, plan.prob.dtype); !s) return s;
    return check_alignment("dst", dst, plan.prob.dtype);
  }
  if (src == nullptr || dst == nullptr) {
    return status::failure(
        status_code::invalid_argument, "%s: expected %zu elements of shape %s, got a null pointer",
        src == nullptr ? "src" : "dst", plan.part.elements, shape_text(plan.prob.shape).text);
  }
  if (status s = check_alignment("src", src, plan.prob.dtype); !s) return s;
  return check_alignment("dst", dst, plan.prob.dtype);
}

/// The residual tensor: given exactly when the plan's activation adds it.
status check_residual(const plan_impl& plan, const void* residual) noexcept {
  if (plan.options.activation != activation::add_relu) {
    if (residual == nullptr) return {};
    return status::failure(status_code::invalid_argument,
                           "residual: expected none (the plan's activation is %s), got a buffer",
                           to_string(plan.options.activation));
  }
  if (residual == nullptr && plan.part.elements > 0) {
    return status::failure(status_code::invalid_argument,
                           "residual: expected %zu elements of shape %s, got a null pointer "
                           "(required by the activation add_relu)",
                           plan.part.elements, shape_text(plan.prob.shape).text);
  }
  return check_alignment("residual", residual, plan.prob.dtype);
}

status check_counter(const std::int64_t* counter) noexcept {
  if (counter == nullptr) return {};
  if (status s = check_alignment("num_batches_tracked", counter, alignof(std::int64_t), "int64");
      !s) {
    return s;
  }
  if (*counter < 0) {
    return status::failure(status_code::invalid_argument,
                           "num_batches_tracked: expected a count >= 0, got %lld",
                           static_cast<long long>(*counter));
  }
  if (*counter == INT64_MAX) {
    return status::failure(status_code::invalid_argument,
                           "num_batches_tracked: expected a count below %lld (this step would "
                           "overflow it), got %lld",
                           static_cast<long long>(INT64_MAX), static_cast<long long>(*counter));
  }
  return {};
}

/// The caller's scratch (data, size) for a call that lays out `needed` bytes (see
/// plan::`size_function`()): data where a size is given, on a cache line, and enough of it
/// where the call takes it (beyond the stack's); checked before its overlaps, which take its
/// needed size.
status check_scratch(const void* data, std::size_t size, std::size_t needed,
                     const char* size_function) noexcept {
  if (data == nullptr) {
    if (size == 0) return {};
    return status::failure(status_code::invalid_argument,
                           "scratch: expected data for the given size %zu, got a null pointer",
                           size);
  }
  if (status s = check_alignment("scratch", data, 64, "a cache line"); !s) return s;
  if (needed > detail::stack_scratch_bytes && size < needed) {
    return status::failure(status_code::invalid_argument,
                           "scratch: expected at least %zu bytes (plan::%s()), got %zu", needed,
                           size_function, size);
  }
  return {};
}

/// Scratch from the caller, or the stack, or the heap. `needed` is what the call lays out;
/// only scratch beyond the stack's is taken from the caller, whose size check_scratch checked.
class scratch_buffer {
 public:
  status acquire(std::size_t needed, void* given) noexcept {
    if (needed <= detail::stack_scratch_bytes) {
      data_ = local_;
      return {};
    }
    if (given != nullptr) {
      data_ = static_cast<unsigned char*>(given);
      return {};
    }
    owned_ = new (std::nothrow) unsigned char[needed + 63];
    if (owned_ == nullptr) {
      return status::failure(status_code::out_of_memory, "scratch: could not allocate %zu bytes",
                             needed);
    }
    data_ = owned_ + (64 - reinterpret_cast<std::uintptr_t>(owned_) % 64) % 64;
    return {};
  }
  ~scratch_buffer() { delete[] owned_; }
  unsigned char* data() const noexcept { return data_; }

 private:
  alignas(64) unsigned char local_[detail::stack_scratch_bytes];
  unsigned char* owned_ = nullptr;
  unsigned char* data_ = nullptr;
};

/// Per-channel buffers of a half type (plan_options::parameter_dtype bf16 or f16), staged as the
/// float32 the kernels read and write: inputs converted in, outputs converted back by
/// commit(), after the call succeeded. The outputs a call does not write (`writes_outputs`
/// false: the local steps of a distributed call, which write their exchange block alone; the
/// running statistics of a plan that does not update them) leave its arguments: nothing is
/// committed to them. Otherwise, without half buffers, stage() changes nothing.
class staged_parameters {
 public:
  explicit staged_parameters(const plan_impl& p) noexcept
      : type_(parameter_dtype(p.prob, p.options)),
        channels_(p.part.channels),
        updates_running_(p.options.update_running_stats) {}

  status stage(training_args& a, bool writes_outputs) noexcept {
    if (!writes_outputs) a.batch_mean = a.batch_inv_std = {};
    if (!writes_outputs || !updates_running_) a.running_mean = a.running_var = {};
    return stage_all({&a.scale, &a.shift}, {&a.batch_mean, &a.batch_inv_std},
                     {&a.running_mean, &a.running_var});
  }
  status stage(inference_args& a, bool) noexcept {
    return stage_all({&a.scale, &a.shift, &a.mean, &a.var}, {}, {});
  }
  status stage(backward_args& a, bool writes_outputs) noexcept {
    if (!writes_outputs) a.diff_scale = a.diff_shift = {};
    return stage_all({&a.scale, &a.mean, &a.inv_std, &a.var}, {&a.diff_scale, &a.diff_shift}, {});
  }
  /// The staged outputs into the caller's buffers, rounded to nearest even.
  void commit() noexcept {
    for (std::size_t i = 0; i < output_count_; ++i) {
      const output& o = outputs_[i];
      for (std::size_t c = 0; c < channels_; ++c) {
        const std::uint16_t bits = type_ == dtype::bf16 ? kernels::to_bfloat16(o.staged[c]).bits
                                                        : kernels::to_float16(o.staged[c]).bits;
        std::memcpy(static_cast<unsigned char*>(o.caller) + 2 * c, &bits, 2);
      }
    }
  }

 private:
  struct output {
    void* caller;
    float* staged;
  };

  status stage_all(std::initializer_list<channel_input*> inputs,
                   std::initializer_list<channel_output*> outputs,
                   std::initializer_list<channel_output*> in_outs) noexcept {
    if (element_size(type_) != 2) return {};
    const std::size_t arrays = inputs.size() + outputs.size() + in_outs.size();
    storage_.reset(new (std::nothrow) float[arrays * channels_]);
    if (!storage_) {
      return status::failure(status_code::out_of_memory,
                             "parameters: could not allocate %zu bytes to stage them as float32",
                             arrays * channels_ * sizeof(float));
    }
    float* next = storage_.get();
    const auto read = [&](const void* caller, float* staged) {
      for (std::size_t c = 0; c < channels_; ++c) {
        std::uint16_t bits;
        std::memcpy(&bits, static_cast<const unsigned char*>(caller) + 2 * c, 2);
        staged[c] = type_ == dtype::bf16 ? kernels::to_float(kernels::bfloat16{bits})
                                         : kernels::to_float(kernels::float16{bits});
      }
    };
    for (channel_input* in : inputs) {
      if (in->data == nullptr) continue;
      read(in->data, next);
      in->data = next;
      next += channels_;
    }
    const auto stage_output = [&](channel_output* out, bool in_out) {
      if (out->data == nullptr) return;
      if (in_out) read(out->data, next);
      outputs_[output_count_++] = {out->data, next};
      out->data = next;
      next += channels_;
    };
    for (channel_output* out : outputs) stage_output(out, false);
    for (channel_output* out : in_outs) stage_output(out, true);
    return {};
  }

  dtype type_;
  std::size_t channels_;
  bool updates_running_;
  std::unique_ptr<float[]> storage_;
  output outputs_[4] = {};
  std::size_t output_count_ = 0;
};

// The no-throw boundary: xsimd kernels are noexcept, but oneTBB may throw. The caller is an
// entry point, already in bnorm's floating-point environment (see forward_training).
template <class Fn>
status guarded(Fn&& fn) noexcept {
  try {
    fn();
    return {};
  } catch (const std::bad_alloc&) {
    return status(status_code::out_of_memory, "out of memory while running the parallel passes");
  } catch (const std::exception& e) {
    return status::failure(status_code::internal_error, "internal error: %.200s", e.what());
  } catch (...) {
    return status(status_code::internal_error, "internal error: unknown exception");
  }
}

/// Calls fn with a value of the storage type of dtype d: the one place a dtype becomes a type.
template <class Fn>
void with_storage(dtype d, const Fn& fn) {
  switch (d) {
    case dtype::f32: fn(float{}); return;
    case dtype::f64: fn(double{}); return;
    case dtype::bf16: fn(kernels::bfloat16{}); return;
    case dtype::f16: fn(kernels::float16{}); return;
  }
}

constexpr const char* not_planned = "plan: not initialized; create it with bnorm::make_plan";

/// Caller scratch a call of `layout_bytes` needs: none when it fits on the stack.
std::size_t caller_scratch(std::size_t layout_bytes) noexcept {
  return layout_bytes > detail::stack_scratch_bytes ? layout_bytes : 0;
}

}  // namespace

status select_isa(std::optional<isa> max_isa, isa* out) noexcept {
  if (out == nullptr) {
    return status(status_code::invalid_argument,
                  "out: expected an isa to fill, got a null pointer");
  }
  const kernels::kernel_table* table = nullptr;
  if (status s = detail::select_kernels(max_isa, &table); !s) return s;
  *out = table->id;
  return {};
}

status make_plan(const problem& prob, const plan_options& options, plan* out) noexcept {
  // The plan's float values (clamp bounds, the pivot bound) as in any caller's environment.
  const detail::fp_environment_scope environment;
  if (out == nullptr) {
    return status(status_code::invalid_argument,
                  "out: expected a plan to fill, got a null pointer");
  }
  if (status s = validate_problem(prob, options); !s) return s;
  const kernels::kernel_table* best = nullptr;
  if (status s = detail::select_kernels(options.max_isa, &best); !s) return s;
  const bool capped = detail::isa_capped(options.max_isa);
  const kernels::kernel_table* table =
      capped ? best : &detail::kernels_for(prob, *best, detail::forward_short_plane);
  const kernels::kernel_table* backward_table =
      capped ? best : &detail::kernels_for(prob, *best, detail::backward_short_plane);
  try {
    auto impl = std::make_shared<plan_impl>();
    impl->prob = prob;
    impl->options = options;
    impl->kernels = table;
    impl->backward_kernels = backward_table;
    if (!detail::make_partition(prob, options,
                                prob.dtype == dtype::f64 ? table->f64_lanes : table->f32_lanes,
                                detail::detected_cache_sizes(), &impl->part)) {
      return status::failure(status_code::invalid_argument,
                             "shape: expected a problem whose scratch fits in memory, got %s "
                             "(its per-channel scratch exceeds 2^63 bytes)",
                             shape_text(prob.shape).text);
    }
    impl->threads = detail::thread_limit(options.max_threads);
    static_assert(static_cast<int>(kernels::epilogue_kind::add_relu) ==
                      static_cast<int>(activation::add_relu),
                  "the kernels' epilogues follow the public activations");
    const auto kind = static_cast<kernels::epilogue_kind>(options.activation);
    impl->epilogue_f32 = {kind, static_cast<float>(options.clamp_min),
                          static_cast<float>(options.clamp_max)};
    impl->epilogue_f64 = {kind, options.clamp_min, options.clamp_max};
    impl->half_parameters = element_size(detail::parameter_dtype(prob, options)) == 2;
    impl->max_pivot_offset_squared =
        kernels::max_pivot_offset_squared(static_cast<double>(impl->part.per_channel));
    impl->description = std::string(to_string(table->id)) + " · " + to_string(prob.dtype) + " · " +
                        detail::describe(impl->part);
    // Channel groups map cached stores only (streamed ones go a plane at a time). The
    // backward's table differs only where the forward's is AVX2's, which has no groups.
    const detail::partition& part = impl->part;
    const bool cached = !part.stream_training_stores && !part.stream_inference_stores &&
                        !part.stream_parallel_inference_stores;
    if (cached && part.kind == detail::traversal::planes && prob.dtype == dtype::f32 &&
        kernels::in_channel_groups(table->f32_channel_groups, impl->part.batch, impl->part.spatial,
                                   table->f32_lanes)) {
      impl->description += " · maps in groups of " + std::to_string(table->f32_lanes) + " channels";
    }
    if (backward_table != table) {
      impl->description += std::string(" · backward ") + to_string(backward_table->id);
    }
    if (options.activation != activation::none) {
      impl->description += std::string(" · fused ") + to_string(options.activation);
    }
    out->impl_ = std::move(impl);
    return {};
  } catch (const std::bad_alloc&) {
    return status(status_code::out_of_memory, "make_plan: out of memory");
  } catch (...) {
    return status(status_code::internal_error, "make_plan: could not create the thread arena");
  }
}

namespace {

/// A mean's residual (training_args::batch_mean_residual, backward_args::mean_residual): in the
/// compute type's parameters alone (a half type's rounding is not the kernels' own).
status check_mean_residual(const plan_impl& p, const char* name) noexcept {
  const dtype parameters = parameter_dtype(p.prob, p.options);
  if (element_size(parameters) == 2) {
    return status::failure(status_code::invalid_argument,
                           "%s: expected none with %s parameters (a mean's residual is kept in "
                           "float32 or float64 parameters), got a buffer",
                           name, to_string(parameters));
  }
  return {};
}

/// Every rule of a training call's arguments; `exchange` is the distributed steps' block (none
/// otherwise), which may overlap no buffer of the call.
status check_training(const plan_impl& p, const training_args& args,
                      region exchange = {"exchange", nullptr, 0, false}) noexcept {
  const std::size_t channels = p.part.channels;
  const bool update = p.options.update_running_stats;
  if (status s = check_tensors(p, args.src, args.dst); !s) return s;
  if (status s = check_residual(p, args.residual); !s) return s;
  const char* why_running = update ? "because plan_options.update_running_stats is true" : nullptr;
  if (status s = check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"shift", args.shift.data, args.shift.size},
           {"batch_mean", args.batch_mean.data, args.batch_mean.size},
           {"batch_mean_residual", args.batch_mean_residual.data, args.batch_mean_residual.size},
           {"batch_inv_std", args.batch_inv_std.data, args.batch_inv_std.size},
           {"running_mean", args.running_mean.data, args.running_mean.size, why_running},
           {"running_var", args.running_var.data, args.running_var.size, why_running}},
          channels, parameter_dtype(p.prob, p.options));
      !s) {
    return s;
  }
  if (args.batch_mean_residual.data != nullptr) {
    if (status s = check_mean_residual(p, "batch_mean_residual"); !s) return s;
  }
  if (update && p.options.cumulative_average && args.num_batches_tracked == nullptr) {
    return status(status_code::invalid_argument,
                  "num_batches_tracked: expected a counter (cumulative_average divides by it), "
                  "got a null pointer");
  }
  const std::int64_t* counter = update ? args.num_batches_tracked : nullptr;
  if (status s = check_counter(counter); !s) return s;
  if (status s = check_scratch(args.scratch, args.scratch_size, p.part.scratch.training_bytes,
                               "training_scratch_size");
      !s) {
    return s;
  }
  const std::size_t data_bytes = p.part.elements * p.part.element_size;
  const std::size_t channel_bytes = channels * element_size(parameter_dtype(p.prob, p.options));
  const std::size_t running_bytes = update ? channel_bytes : 0;
  const std::size_t scratch_bytes = caller_scratch(p.part.scratch.training_bytes);
  return check_separate(
      {{"src", args.src, data_bytes, false, true},
       {"dst", args.dst, data_bytes, true, true},
       {"residual", args.residual, data_bytes, false, true},
       {"scale", args.scale.data, channel_bytes, false},
       {"shift", args.shift.data, channel_bytes, false},
       {"batch_mean", args.batch_mean.data, channel_bytes, true},
       {"batch_mean_residual", args.batch_mean_residual.data, channel_bytes, true},
       {"batch_inv_std", args.batch_inv_std.data, channel_bytes, true},
       {"running_mean", args.running_mean.data, running_bytes, true},
       {"running_var", args.running_var.data, running_bytes, true},
       {"num_batches_tracked", counter, sizeof(std::int64_t), true},
       {"scratch", args.scratch, scratch_bytes, true},
       exchange});
}

/// A distributed step's exchange block: `size` doubles, statistics_exchange_size(C).
status check_exchange(const char* name, const void* data, std::size_t size,
                      std::size_t channels) noexcept {
  const std::size_t expected = statistics_exchange_size(channels);
  if (data == nullptr || size != expected) {
    return status::failure(
        status_code::invalid_argument, "%s: expected %zu doubles (1 + 2 × %zu channels), got %s%zu",
        name, expected, channels, data == nullptr ? "a null pointer of size " : "", size);
  }
  return check_alignment(name, data, alignof(double), "double");
}

/// The count a merged block gives this rank's plan: a whole number, at least this rank's own.
status check_merged_count(const plan_impl& p, const char* name, double count) noexcept {
  const double local = static_cast<double>(p.part.per_channel);
  if (!(count >= local) || count != std::floor(count) || count > 9007199254740992.0) {
    return status::failure(status_code::invalid_argument,
                           "%s: expected a count of values per channel, a whole number of at "
                           "least this rank's %zu, got %s",
                           name, p.part.per_channel, number_text(count).text);
  }
  return {};
}

/// A validated call on its staged arguments (half-type parameters as float32, committed back
/// when it succeeds, those it writes: see staged_parameters): run(type, staged) with the
/// storage type, inside the no-throw boundary and its floating-point environment (the
/// commit's float16 rounding too).
template <class Args, class Run>
status run_staged(const plan_impl& p, const Args& args, bool writes_outputs,
                  const Run& run) noexcept {
  Args staged = args;
  staged_parameters parameters(p);
  if (status s = parameters.stage(staged, writes_outputs); !s) return s;
  return guarded([&] {
    with_storage(p.prob.dtype, [&](auto type) { run(type, staged); });
    parameters.commit();  // not reached when run throws
  });
}

/// A validated training call: scratch, the staged parameters, then run(type, scratch, args)
/// with the storage type and the arguments the kernels take. `writes_outputs`: whether it
/// writes the statistics (not the local step of a distributed call).
template <class Run>
status run_training_call(const plan_impl& p, const training_args& args, bool writes_outputs,
                         const Run& run) noexcept {
  scratch_buffer scratch;
  if (status s = scratch.acquire(p.part.scratch.training_bytes, args.scratch); !s) {
    return s;
  }
  return run_staged(p, args, writes_outputs, [&](auto type, const training_args& staged) {
    run(type, scratch.data(), staged);
  });
}

}  // namespace

status plan::forward_training(const training_args& args) const noexcept {
  // From the first check on: the checks compare floats, which a caller's DAZ would change and
  // whose NaNs an unmasked invalid-operation trap would fault on.
  const detail::fp_environment_scope environment;
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  if (status s = check_training(p, args); !s) return s;
  if (p.part.per_channel == 1 && detail::refuses_one_value_per_channel(p.options.convention)) {
    return status::failure(
        status_code::invalid_argument,
        "Expected more than 1 value per channel when training, got input size %s",
        shape_text(p.prob.shape).text);
  }
  if (p.part.elements == 0) {
    // As PyTorch: an empty batch leaves the statistics alone but still counts as a step.
    if (p.options.update_running_stats && args.num_batches_tracked) ++*args.num_batches_tracked;
    return {};
  }
  return run_training_call(p, args, true,
                           [&](auto type, unsigned char* scratch, const training_args& staged) {
                             detail::run_training<decltype(type)>(p, staged, scratch);
                           });
}

status plan::local_statistics(const training_args& args, double* exchange,
                              std::size_t exchange_size) const noexcept {
  const detail::fp_environment_scope environment;  // see forward_training
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  if (status s = check_exchange("exchange", exchange, exchange_size, p.part.channels); !s) {
    return s;
  }
  if (status s =
          check_training(p, args, {"exchange", exchange, exchange_size * sizeof(double), true});
      !s) {
    return s;
  }
  if (p.part.elements == 0) {
    std::fill_n(exchange, exchange_size, 0.0);
    return {};
  }
  return run_training_call(
      p, args, false, [&](auto type, unsigned char* scratch, const training_args& staged) {
        detail::run_local_statistics<decltype(type)>(p, staged, scratch, exchange);
      });
}

status plan::forward_training_merged(const training_args& args, const double* merged,
                                     std::size_t merged_size) const noexcept {
  const detail::fp_environment_scope environment;  // see forward_training
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  if (status s = check_exchange("merged", merged, merged_size, p.part.channels); !s) return s;
  if (status s = check_training(p, args, {"merged", merged, merged_size * sizeof(double), false});
      !s) {
    return s;
  }
  if (status s = check_merged_count(p, "merged[0]", merged[0]); !s) return s;
  // merge_statistics gives variances >= 0 (NaN where some rank's data held one: it carries
  // through, as in a local call); a negative one is no block of it.
  // A variance that a block cannot carry is refused, where one call over the whole batch would
  // take 1/std from its scaled sums: beyond the float64 range from finite means (float64 data
  // spread over more than ~1.3e154), or below its normal range with eps 0 (ranks' float64
  // means within ~1.5e-154 of each other: the merge gives them at least the least subnormal).
  const std::size_t channels = p.part.channels;
  for (std::size_t c = 0; c < channels; ++c) {
    const double mean = merged[1 + c], variance = merged[1 + channels + c];
    if (variance < 0.0) {
      return status::failure(status_code::invalid_argument,
                             "merged[%zu]: expected channel %zu's variance, >= 0 (a block of "
                             "merge_statistics), got %s",
                             1 + channels + c, c, number_text(variance).text);
    }
    // A constant channel's variance is exactly 0 (its y NaN with eps 0, as one call's).
    const bool overflowed = std::isinf(variance) && std::isfinite(mean);
    const bool underflowed =
        p.prob.epsilon == 0.0 && variance > 0.0 && variance < DBL_MIN && merged[0] > 1.0;
    if (overflowed || underflowed) {
      return status::failure(status_code::invalid_argument,
                             "merged[%zu]: expected channel %zu's variance within float64's "
                             "normal range%s, got %s (an exchange block cannot carry the "
                             "variance of this data)",
                             1 + channels + c, c, underflowed ? " (eps is 0)" : "",
                             number_text(variance).text);
    }
  }
  if (merged[0] == 1.0 && detail::refuses_one_value_per_channel(p.options.convention)) {
    return status::failure(status_code::invalid_argument,
                           "Expected more than 1 value per channel when training, got %s over "
                           "every rank (input size %s here)",
                           number_text(merged[0]).text, shape_text(p.prob.shape).text);
  }
  if (merged[0] == 0.0) {  // every rank empty: a step, as forward_training's empty batch
    if (p.options.update_running_stats && args.num_batches_tracked) ++*args.num_batches_tracked;
    return {};
  }
  return run_training_call(
      p, args, true, [&](auto type, unsigned char* scratch, const training_args& staged) {
        detail::run_training_merged<decltype(type)>(p, staged, scratch, merged);
      });
}

status plan::forward_inference(const inference_args& args) const noexcept {
  const detail::fp_environment_scope environment;  // see forward_training
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  const std::size_t channels = p.part.channels;
  if (status s = check_tensors(p, args.src, args.dst); !s) return s;
  if (status s = check_residual(p, args.residual); !s) return s;
  if (status s = check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"shift", args.shift.data, args.shift.size},
           {"mean", args.mean.data, args.mean.size, "by inference (the running mean)"},
           {"var", args.var.data, args.var.size, "by inference (the running variance)"}},
          channels, parameter_dtype(p.prob, p.options));
      !s) {
    return s;
  }
  if (status s = check_scratch(args.scratch, args.scratch_size,
                               p.part.elements ? p.part.scratch.inference_bytes : 0,
                               "inference_scratch_size");
      !s) {
    return s;
  }
  const std::size_t data_bytes = p.part.elements * p.part.element_size;
  const std::size_t channel_bytes = channels * element_size(parameter_dtype(p.prob, p.options));
  const std::size_t scratch_bytes = caller_scratch(p.part.scratch.inference_bytes);
  if (status s =
          check_separate({{"src", args.src, data_bytes, false, true},
                          {"dst", args.dst, data_bytes, true, true},
                          {"residual", args.residual, data_bytes, false, true},
                          {"scale", args.scale.data, channel_bytes, false},
                          {"shift", args.shift.data, channel_bytes, false},
                          {"mean", args.mean.data, channel_bytes, false},
                          {"var", args.var.data, channel_bytes, false},
                          {"scratch", args.scratch, p.part.elements ? scratch_bytes : 0, true}});
      !s) {
    return s;
  }
  if (p.part.elements == 0) return {};
  scratch_buffer scratch;
  if (status s = scratch.acquire(p.part.scratch.inference_bytes, args.scratch); !s) {
    return s;
  }
  return run_staged(p, args, true, [&](auto type, const inference_args& staged) {
    detail::run_inference<decltype(type)>(p, staged, scratch.data());
  });
}

namespace {

/// A backward call, either kind: what it computes decides what it needs (see backward_args).
/// `exchange`: one of the distributed training backward's steps.
status backward(const plan_impl& p, const backward_args& args, bool frozen,
                const detail::backward_exchange* exchange = nullptr) noexcept {
  const detail::fp_environment_scope environment;  // see forward_training
  const std::size_t channels = p.part.channels;
  const bool dx = args.diff_src != nullptr, dgamma = args.diff_scale.data != nullptr,
             dbeta = args.diff_shift.data != nullptr, dz = args.diff_residual != nullptr;
  const activation fused = p.options.activation;
  // An empty tensor's dx and dz hold nothing, so their null pointers ask for them too: a rank
  // of a distributed backward whose local batch is empty still joins the exchange.
  if (!dx && !dgamma && !dbeta && !dz && p.part.elements > 0) {
    return status::failure(status_code::invalid_argument,
                           "diff_src, diff_scale, diff_shift%s: expected at least one output to "
                           "compute, got none",
                           fused == activation::add_relu ? ", diff_residual" : "");
  }
  if (dz && fused != activation::add_relu) {
    return status::failure(status_code::invalid_argument,
                           "diff_residual: expected none (the plan's activation is %s), got a "
                           "buffer",
                           to_string(fused));
  }
  if (fused == activation::none && args.dst != nullptr) {
    return status(status_code::invalid_argument,
                  "dst: expected none (the plan has no activation to mask dy with), got a "
                  "buffer");
  }
  if (fused != activation::none && p.part.elements > 0 && args.dst == nullptr) {
    return status::failure(status_code::invalid_argument,
                           "dst: expected %zu elements of shape %s, got a null pointer (required "
                           "by the fused %s: its output masks dy)",
                           p.part.elements, shape_text(p.prob.shape).text, to_string(fused));
  }
  // The local step of a distributed backward writes its exchange block only, which carries
  // Σdy·(x − mean) for every rank's dx, whatever this rank asks for.
  const bool local_step = exchange && exchange->writes_local_sums();
  // What the outputs asked for read: x̂ needs src, mean and the variance (or 1/std).
  const bool needs_x = dgamma || (dx && !frozen) || local_step;
  const bool needs_std = needs_x || (dx && frozen);
  const char* why = frozen ? (needs_x ? "by backward_frozen with diff_scale" : nullptr)
                    : local_step
                        ? "by local_gradient_sums: its block carries Σdy·(x − mean) for "
                          "every rank's dx"
                        : (needs_x ? "by backward_training with diff_src or diff_scale" : nullptr);
  const std::size_t elements = p.part.elements;
  if (elements > 0 && (args.diff_dst == nullptr || (needs_x && args.src == nullptr))) {
    return status::failure(
        status_code::invalid_argument,
        "%s: expected %zu elements of shape %s, got a null pointer (required %s)",
        args.diff_dst == nullptr ? "diff_dst" : "src", elements, shape_text(p.prob.shape).text,
        args.diff_dst == nullptr ? "by every backward" : why);
  }
  for (const auto& [name, data] : {std::pair<const char*, const void*>{"src", args.src},
                                   {"diff_dst", args.diff_dst},
                                   {"diff_src", args.diff_src},
                                   {"dst", args.dst},
                                   {"diff_residual", args.diff_residual}}) {
    if (status s = check_alignment(name, data, p.prob.dtype); !s) return s;
  }
  if (frozen && args.inv_std.data != nullptr) {
    return status(status_code::invalid_argument,
                  "inv_std: expected none (backward_frozen takes the running variance in var), "
                  "got a buffer");
  }
  if (args.inv_std.data != nullptr && args.var.data != nullptr) {
    return status(status_code::invalid_argument,
                  "inv_std, var: expected one of the two (the batch statistics' 1/std or their "
                  "variance), got both");
  }
  if (args.mean_residual.data != nullptr) {
    if (frozen) {
      return status(status_code::invalid_argument,
                    "mean_residual: expected none (backward_frozen takes the running mean as it "
                    "is), got a buffer");
    }
    if (status s = check_mean_residual(p, "mean_residual"); !s) return s;
    if (args.mean.data == nullptr) {
      return status(status_code::invalid_argument,
                    "mean_residual: expected none without mean (it is the residual of mean), "
                    "got a buffer");
    }
  }
  const bool has_std = args.inv_std.data != nullptr || args.var.data != nullptr;
  if (needs_std && !has_std) {
    return status::failure(status_code::invalid_argument,
                           "%s: expected %zu values, got a null pointer (required %s)",
                           frozen ? "var" : "inv_std or var", channels,
                           frozen       ? "by backward_frozen with diff_src or diff_scale"
                           : local_step ? why
                                        : "by backward_training with diff_src or diff_scale");
  }
  if (status s = check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"mean", args.mean.data, args.mean.size, why},
           {"mean_residual", args.mean_residual.data, args.mean_residual.size},
           {"inv_std", args.inv_std.data, args.inv_std.size},
           {"var", args.var.data, args.var.size},
           {"diff_scale", args.diff_scale.data, args.diff_scale.size},
           {"diff_shift", args.diff_shift.data, args.diff_shift.size}},
          channels, parameter_dtype(p.prob, p.options));
      !s) {
    return s;
  }
  // A frozen dx alone runs as inference: its scratch is inference's.
  const bool sums = !frozen || dgamma || dbeta;
  const std::size_t needed_scratch = elements == 0 ? 0
                                     : sums        ? p.part.scratch.training_bytes
                                                   : p.part.scratch.inference_bytes;
  if (status s = check_scratch(args.scratch, args.scratch_size, needed_scratch,
                               sums ? "backward_scratch_size" : "inference_scratch_size");
      !s) {
    return s;
  }
  const std::size_t data_bytes = elements * p.part.element_size;
  const std::size_t channel_bytes = channels * element_size(parameter_dtype(p.prob, p.options));
  const std::size_t scratch_bytes = caller_scratch(needed_scratch);
  const std::size_t exchange_bytes = exchange ? exchange->size * sizeof(double) : 0;
  const double* local = exchange ? exchange->local : nullptr;
  if (exchange) {
    const void* block = local_step ? static_cast<const void*>(exchange->local_out) : local;
    if (status s =
            check_exchange(local_step ? "exchange" : "local", block, exchange->size, channels);
        !s) {
      return s;
    }
    if (!local_step) {
      if (status s = check_exchange("summed", exchange->summed, exchange->size, channels); !s) {
        return s;
      }
      if (local[0] != static_cast<double>(p.part.per_channel)) {
        return status::failure(status_code::invalid_argument,
                               "local[0]: expected this rank's count of values per channel, %zu "
                               "(its own block from local_gradient_sums), got %s",
                               p.part.per_channel, number_text(local[0]).text);
      }
      if (status s = check_merged_count(p, "summed[0]", exchange->summed[0]); !s) return s;
    }
  }
  if (status s = check_separate(
          {{"exchange", exchange ? exchange->local_out : nullptr, exchange_bytes, true},
           {"local", local, exchange_bytes, false},
           {"summed", exchange ? exchange->summed : nullptr, exchange_bytes, false},
           {"src", args.src, data_bytes, false},
           {"diff_dst", args.diff_dst, data_bytes, false, true},
           {"diff_src", args.diff_src, data_bytes, true, true},
           {"dst", args.dst, data_bytes, false},
           {"diff_residual", args.diff_residual, data_bytes, true, true},
           {"scale", args.scale.data, channel_bytes, false},
           {"mean", args.mean.data, channel_bytes, false},
           {"mean_residual", args.mean_residual.data, channel_bytes, false},
           {"inv_std", args.inv_std.data, channel_bytes, false},
           {"var", args.var.data, channel_bytes, false},
           {"diff_scale", args.diff_scale.data, channel_bytes, true},
           {"diff_shift", args.diff_shift.data, channel_bytes, true},
           {"scratch", args.scratch, elements ? scratch_bytes : 0, true}});
      !s) {
    return s;
  }
  if (elements == 0 && local_step) {  // no values: a count of 0, zero sums
    std::fill_n(exchange->local_out, exchange->size, 0.0);
    return {};
  }
  if (elements == 0) {  // as PyTorch: sums over no values
    for (void* out : {args.diff_scale.data, args.diff_shift.data}) {
      if (out == nullptr) continue;
      std::memset(out, 0,
                  channels * element_size(parameter_dtype(p.prob, p.options)));  // +0 everywhere
    }
    return {};
  }
  scratch_buffer scratch;
  if (status s = scratch.acquire(needed_scratch, args.scratch); !s) {
    return s;
  }
  // With an activation, dy goes through its mask first, into dz, or dx (whose backward then
  // runs in place), or, with neither asked for (or the local step), a tensor of the call's own.
  std::unique_ptr<unsigned char[]> masked_own;
  void* masked = nullptr;
  if (fused != activation::none) {
    masked = local_step ? nullptr : dz ? args.diff_residual : args.diff_src;
    if (masked == nullptr) {
      masked_own.reset(new (std::nothrow) unsigned char[data_bytes]);
      if (!masked_own) {
        return status::failure(status_code::out_of_memory,
                               "backward: could not allocate %zu bytes for dy through the %s",
                               data_bytes, to_string(fused));
      }
      masked = masked_own.get();
    }
  }
  return run_staged(p, args, !local_step, [&](auto type, const backward_args& staged) {
    detail::run_backward<decltype(type)>(p, staged, frozen, scratch.data(), masked, exchange);
  });
}

}  // namespace

status plan::backward_training(const backward_args& args) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  return backward(*impl_, args, false);
}

status plan::local_gradient_sums(const backward_args& args, double* exchange,
                                 std::size_t exchange_size) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const detail::backward_exchange step{detail::backward_exchange::step::local_sums, exchange,
                                       nullptr, nullptr, exchange_size};
  return backward(*impl_, args, false, &step);
}

status plan::backward_training_merged(const backward_args& args, const double* local,
                                      const double* summed,
                                      std::size_t exchange_size) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const detail::backward_exchange step{detail::backward_exchange::step::merged, nullptr, local,
                                       summed, exchange_size};
  return backward(*impl_, args, false, &step);
}

status plan::backward_frozen(const backward_args& args) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  return backward(*impl_, args, true);
}

isa plan::isa() const noexcept {
  return impl_ ? impl_->kernels->id : bnorm::isa::sse2;
}

const char* plan::describe() const noexcept {
  return impl_ ? impl_->description.c_str() : "plan: not initialized";
}

std::size_t plan::training_scratch_size() const noexcept {
  // Whatever the tensor: the distributed steps train on a rank's empty or one-value batch.
  if (!impl_) return 0;
  return caller_scratch(impl_->part.scratch.training_bytes);
}

std::size_t plan::inference_scratch_size() const noexcept {
  if (!impl_ || impl_->part.elements == 0) return 0;
  return caller_scratch(impl_->part.scratch.inference_bytes);
}

std::size_t plan::backward_scratch_size() const noexcept {
  if (!impl_ || impl_->part.elements == 0) return 0;
  return caller_scratch(impl_->part.scratch.training_bytes);
}

std::size_t plan::scratch_size() const noexcept {
  return std::max({training_scratch_size(), inference_scratch_size(), backward_scratch_size()});
}

const problem& plan::get_problem() const noexcept {
  static const problem empty{};
  return impl_ ? impl_->prob : empty;
}

const plan_options& plan::options() const noexcept {
  static const plan_options defaults{};
  return impl_ ? impl_->options : defaults;
}

}  // namespace bnorm
