// The engine API: validation of problems and arguments, scratch, and the no-throw boundary.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <new>

#include "bnorm/plan.hpp"
#include "cpu_isa.hpp"
#include "execute.hpp"
#include "plan_impl.hpp"

namespace bnorm {

tensor_shape::tensor_shape(std::initializer_list<std::int64_t> dims) noexcept
    : tensor_shape(dims.begin(), dims.size()) {}

tensor_shape::tensor_shape(const std::int64_t* dims, std::size_t rank) noexcept
    : rank_(rank), stored_(rank < capacity ? rank : capacity) {
  for (std::size_t i = 0; i < stored_; ++i) dims_[i] = dims[i];
}

namespace {

using detail::plan_impl;

// "[2, 4, 3]" for messages.
struct shape_text {
  char text[128] = {};
  explicit shape_text(const tensor_shape& shape) {
    int at = std::snprintf(text, sizeof(text), "[");
    for (std::size_t i = 0; i < shape.rank() && at < static_cast<int>(sizeof(text)); ++i) {
      at += std::snprintf(text + at, sizeof(text) - at, i ? ", %lld" : "%lld",
                          static_cast<long long>(shape[i]));
    }
    if (at < static_cast<int>(sizeof(text))) std::snprintf(text + at, sizeof(text) - at, "]");
  }
};


status validate_problem(const problem& prob, const plan_options& options) noexcept {
  const tensor_shape& shape = prob.shape;
  if (shape.rank() < 2 || shape.rank() > max_rank) {
    return status::failure(status_code::invalid_argument,
                           "shape: expected rank 2 to 5 (N, C[, D][, H][, W]), got rank %zu %s",
                           shape.rank(), shape_text(shape).text);
  }
  for (std::size_t d = 0; d < shape.rank(); ++d) {
    if (shape[d] < 0) {
      return status::failure(status_code::invalid_argument,
                             "shape: expected dimensions >= 0, got %lld at dimension %zu of %s",
                             static_cast<long long>(shape[d]), d, shape_text(shape).text);
    }
  }
  if (shape[1] < 1) {
    return status::failure(status_code::invalid_argument,
                           "num_features (C = shape[1]): expected >= 1, got %lld",
                           static_cast<long long>(shape[1]));
  }
  // The element count and the byte count must fit, so index arithmetic cannot wrap.
  std::uint64_t elements = 1;
  for (std::size_t d = 0; d < shape.rank(); ++d) {
    if (__builtin_mul_overflow(elements, static_cast<std::uint64_t>(shape[d]), &elements) ||
        elements > (std::uint64_t{1} << 60)) {
      return status::failure(status_code::invalid_argument,
                             "shape: expected at most 2^60 elements, got %s",
                             shape_text(shape).text);
    }
  }
  if (prob.layout != layout::channels_first && prob.layout != layout::channels_last) {
    return status::failure(status_code::invalid_argument,
                           "layout: expected channels_first or channels_last, got %d",
                           static_cast<int>(prob.layout));
  }
  if (prob.dtype != dtype::f32 && prob.dtype != dtype::f64) {
    return status::failure(status_code::invalid_argument, "dtype: expected f32 or f64, got %d",
                           static_cast<int>(prob.dtype));
  }
  if (!std::isfinite(prob.epsilon) || prob.epsilon < 0.0) {
    return status::failure(status_code::invalid_argument,
                           "epsilon: expected a finite value >= 0, got %g", prob.epsilon);
  }
  if (!std::isfinite(options.momentum) || options.momentum < 0.0 || options.momentum > 1.0) {
    return status::failure(status_code::invalid_argument,
                           "momentum: expected a finite value in [0, 1], got %g", options.momentum);
  }
  if (options.convention != momentum_convention::pytorch &&
      options.convention != momentum_convention::mindspore &&
      options.convention != momentum_convention::onnx) {
    return status::failure(status_code::invalid_argument,
                           "convention: expected pytorch, mindspore or onnx, got %d",
                           static_cast<int>(options.convention));
  }
  if (options.cumulative_average && options.convention != momentum_convention::pytorch) {
    return status::failure(status_code::invalid_argument,
                           "cumulative_average: expected the pytorch convention (momentum=None), "
                           "got convention %d",
                           static_cast<int>(options.convention));
  }
  if (options.stores != store_policy::automatic && options.stores != store_policy::cached &&
      options.stores != store_policy::streaming) {
    return status::failure(status_code::invalid_argument,
                           "stores: expected automatic, cached or streaming, got %d",
                           static_cast<int>(options.stores));
  }
  if (options.max_threads < 0) {
    return status::failure(status_code::invalid_argument,
                           "max_threads: expected 0 (caller's arena) or a count >= 1, got %d",
                           options.max_threads);
  }
  return {};
}

// A per-channel buffer: omitted ({}), or C values. `required` names why it may not be omitted.
struct channel_buffer {
  const char* name;
  const void* data;
  std::size_t size;
  const char* required = nullptr;
};

status check_channel_buffers(std::initializer_list<channel_buffer> buffers,
                             std::size_t channels) noexcept {
  for (const channel_buffer& b : buffers) {
    if (b.data == nullptr) {
      if (b.required != nullptr) {
        return status::failure(status_code::invalid_argument,
                               "%s: expected %zu values, got a null pointer (required %s)", b.name,
                               channels, b.required);
      }
      if (b.size != 0) {
        return status::failure(status_code::invalid_argument,
                               "%s: expected data for the given size %zu, got a null pointer",
                               b.name, b.size);
      }
    } else if (b.size != channels) {
      return status::failure(status_code::invalid_argument,
                             "%s: expected %zu values (one per channel, C = %zu), got %zu", b.name,
                             channels, channels, b.size);
    }
  }
  return {};
}

status check_tensors(const plan_impl& plan, const void* src, const void* dst) noexcept {
  if (plan.part.elements == 0 || (src != nullptr && dst != nullptr)) return {};
  return status::failure(status_code::invalid_argument,
                         "%s: expected %zu elements of shape %s, got a null pointer",
                         src == nullptr ? "src" : "dst", plan.part.elements,
                         shape_text(plan.prob.shape).text);
}

/// Scratch from the caller, the stack, or the heap, in that order of preference.
class scratch_buffer {
 public:
  status acquire(std::size_t bytes, void* given, std::size_t given_size) noexcept {
    if (given != nullptr) {
      if (given_size < bytes) {
        return status::failure(status_code::invalid_argument,
                               "scratch: expected at least %zu bytes (plan::scratch_size()), got %zu",
                               bytes, given_size);
      }
      if (reinterpret_cast<std::uintptr_t>(given) % 64 != 0) {
        return status::failure(status_code::invalid_argument,
                               "scratch: expected a 64-byte aligned address, got %p", given);
      }
      data_ = static_cast<unsigned char*>(given);
      return {};
    }
    if (bytes <= sizeof(local_)) {
      data_ = local_;
      return {};
    }
    owned_ = new (std::nothrow) unsigned char[bytes + 63];
    if (owned_ == nullptr) {
      return status::failure(status_code::out_of_memory,
                             "scratch: could not allocate %zu bytes", bytes);
    }
    data_ = owned_ + (64 - reinterpret_cast<std::uintptr_t>(owned_) % 64) % 64;
    return {};
  }
  ~scratch_buffer() { delete[] owned_; }
  unsigned char* data() const noexcept { return data_; }

 private:
  alignas(64) unsigned char local_[4096];
  unsigned char* owned_ = nullptr;
  unsigned char* data_ = nullptr;
};

// The no-throw boundary: xsimd kernels are noexcept, but oneTBB may throw.
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

constexpr const char* not_planned = "plan: not initialized; create it with bnorm::make_plan";

}  // namespace

status make_plan(const problem& prob, const plan_options& options, plan* out) noexcept {
  if (out == nullptr) {
    return status(status_code::invalid_argument, "out: expected a plan to fill, got a null pointer");
  }
  if (status s = validate_problem(prob, options); !s) return s;
  const kernels::kernel_table* table = nullptr;
  if (status s = detail::select_kernels(options.max_isa, &table); !s) return s;
  try {
    auto impl = std::make_shared<plan_impl>();
    impl->prob = prob;
    impl->options = options;
    impl->kernels = table;
    impl->part = detail::make_partition(
        prob, options, prob.dtype == dtype::f32 ? table->f32_lanes : table->f64_lanes);
    impl->threads = detail::thread_limit(options.max_threads);
    out->impl_ = std::move(impl);
    return {};
  } catch (const std::bad_alloc&) {
    return status(status_code::out_of_memory, "make_plan: out of memory");
  } catch (...) {
    return status(status_code::internal_error, "make_plan: could not create the thread arena");
  }
}

status plan::forward_training(const training_args& args) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  const std::size_t channels = p.part.channels;
  const bool update = p.options.update_running_stats;
  if (status s = check_tensors(p, args.src, args.dst); !s) return s;
  const char* why_running = update ? "because plan_options.update_running_stats is true" : nullptr;
  if (status s = check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"shift", args.shift.data, args.shift.size},
           {"batch_mean", args.batch_mean.data, args.batch_mean.size},
           {"batch_inv_std", args.batch_inv_std.data, args.batch_inv_std.size},
           {"running_mean", args.running_mean.data, args.running_mean.size, why_running},
           {"running_var", args.running_var.data, args.running_var.size, why_running}},
          channels);
      !s) {
    return s;
  }
  if (update && p.options.cumulative_average && args.num_batches_tracked == nullptr) {
    return status(status_code::invalid_argument,
                  "num_batches_tracked: expected a counter (cumulative_average divides by it), "
                  "got a null pointer");
  }
  if (p.part.per_channel == 1) {
    return status::failure(status_code::invalid_argument,
                           "Expected more than 1 value per channel when training, got input size %s",
                           shape_text(p.prob.shape).text);
  }
  if (p.part.elements == 0) {
    // As PyTorch: an empty batch leaves the statistics alone but still counts as a step.
    if (update && args.num_batches_tracked) ++*args.num_batches_tracked;
    return {};
  }
  scratch_buffer scratch;
  if (status s = scratch.acquire(p.part.scratch.training_bytes, args.scratch, args.scratch_size);
      !s) {
    return s;
  }
  return guarded([&] {
    if (p.prob.dtype == dtype::f32) {
      detail::run_training<float>(p, args, scratch.data());
    } else {
      detail::run_training<double>(p, args, scratch.data());
    }
  });
}

status plan::forward_inference(const inference_args& args) const noexcept {
  if (!impl_) return status(status_code::invalid_argument, not_planned);
  const plan_impl& p = *impl_;
  const std::size_t channels = p.part.channels;
  if (status s = check_tensors(p, args.src, args.dst); !s) return s;
  if (status s = check_channel_buffers(
          {{"scale", args.scale.data, args.scale.size},
           {"shift", args.shift.data, args.shift.size},
           {"mean", args.mean.data, args.mean.size, "by inference (the running mean)"},
           {"var", args.var.data, args.var.size, "by inference (the running variance)"}},
          channels);
      !s) {
    return s;
  }
  if (p.part.elements == 0) return {};
  scratch_buffer scratch;
  if (status s = scratch.acquire(p.part.scratch.inference_bytes, args.scratch, args.scratch_size);
      !s) {
    return s;
  }
  return guarded([&] {
    if (p.prob.dtype == dtype::f32) {
      detail::run_inference<float>(p, args, scratch.data());
    } else {
      detail::run_inference<double>(p, args, scratch.data());
    }
  });
}

isa plan::isa() const noexcept { return impl_ ? impl_->kernels->id : bnorm::isa::sse2; }

std::size_t plan::scratch_size() const noexcept {
  return impl_ ? impl_->part.scratch.training_bytes : 0;
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
