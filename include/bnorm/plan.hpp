// bnorm engine API: validate a problem once into a plan, then execute it on caller-owned buffers.
//
//   bnorm::problem prob{{32, 64, 56, 56}, bnorm::layout::channels_first, bnorm::dtype::f32, 1e-5};
//   bnorm::plan plan;
//   bnorm::status st = bnorm::make_plan(prob, bnorm::plan_options{}, &plan);
//   st = plan.forward_training({src, dst, {gamma, 64}, {beta, 64}, ...});
//
// No call throws. Every failure of validation (a bad problem, option or buffer) is reported
// before anything is written. Should oneTBB itself fail during the passes (out_of_memory,
// internal_error), dst is left unspecified; the batch and running statistics and
// num_batches_tracked are still untouched (written last, or put back). A failed backward leaves
// its outputs (diff_src, diff_scale, diff_shift, diff_residual) unspecified. One failure oneTBB
// 2021.8 does not report: an allocation failing inside its task spawn (growing a thread's task
// pool) leaves its parallel_for waiting for good, bnorm's call with it (a plain parallel_for
// hangs alike); on one thread (max_threads = 1) no oneTBB call is made.
//
// The contract on buffers, checked by every call (a breach is an invalid_argument status):
// - Every pointer is aligned to its element: 4 bytes for f32 data and per-channel values, 8 for
//   f64 and for num_batches_tracked, 64 for scratch.
// - A buffer that the call writes (dst, batch_mean, batch_inv_std, running_mean, running_var,
//   num_batches_tracked, the scratch it uses) overlaps no other buffer of the call, except
//   dst == src exactly (in place).
// - Results are computed in one floating-point environment whatever the caller's: round to
//   nearest even, subnormals kept (no flush-to-zero or denormals-are-zero), exceptions masked.
//   bnorm sets it for the duration of its work on each thread it uses and restores the
//   thread's own modes after; so the bits are the same for any thread count and any caller's
//   environment.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <vector>

#include "bnorm/status.hpp"

namespace bnorm {

/// Memory order of the tensor. The channel is always logical dimension 1.
enum class layout {
  channels_first,  ///< N, C, spatial... contiguous (PyTorch contiguous, NCHW, NCDHW).
  channels_last,   ///< N, spatial..., C contiguous (PyTorch channels_last, NHWC, NDHWC).
};

/// Element type of the data. f32 and f64 data take per-channel buffers (gamma, beta, the
/// statistics) of the same type; bf16 (bfloat16) and f16 (IEEE binary16) data take float32
/// ones, as PyTorch's mixed types do, and compute in float32.
enum class dtype { f32, f64, bf16, f16 };

/// "channels_first", "channels_last"; "unknown" for another value.
BNORM_API const char* to_string(bnorm::layout value) noexcept;
/// "f32", "f64", "bf16", "f16"; "unknown" for another value.
BNORM_API const char* to_string(dtype value) noexcept;

/// Instruction sets with a compiled kernel. Order within a family is the dispatch order.
enum class isa {
  sse2,     ///< x86-64 baseline.
  avx2,     ///< AVX2 with FMA3 (xsimd's fma3<avx2>).
  avx512f,  ///< AVX-512 Foundation.
  neon64,   ///< AArch64 Advanced SIMD.
  /// avx512f's kernels, with bfloat16 stores through AVX512_BF16 (and AVX512DQ): the same
  /// bits as avx512f (its subnormal and NaN inputs take the integer rounding), fewer
  /// instructions. Above avx512f in the x86 dispatch order.
  avx512bf16,
};

BNORM_API const char* to_string(isa value) noexcept;

/// Parses "sse2", "avx2", "avx512f", "avx512bf16" or "neon64". Returns nullopt for anything
/// else.
BNORM_API std::optional<isa> parse_isa(const char* name) noexcept;

/// The ISAs this build has kernels for and this CPU (and OS) can run, lowest first. The
/// environment variable BNORM_MAX_ISA does not change this list: see select_isa.
BNORM_API std::vector<isa> available_isas();

/// The ISA that make_plan picks for `max_isa`: the best available one at or below both
/// `max_isa` (when given) and the environment variable BNORM_MAX_ISA (when set), which caps
/// every plan of the process. Without either cap, on AVX-512 machines two kinds of problem run
/// AVX2's kernels, where they are faster: float32 channels-first planes of fewer than 256
/// values (64 for the backward) that the AVX-512 kernels do not map in channel groups (ResNet's
/// 14×14 at batch 1 does not take them; its 7×7 does), and tensors of at most 64 values with
/// fewer channels than a float64 vector holds. plan::isa() tells the forward's ISA,
/// plan::describe() the backward's where it differs. Fails as make_plan would (a malformed
/// BNORM_MAX_ISA, no ISA under the cap).
BNORM_API status select_isa(std::optional<isa> max_isa, isa* out) noexcept;

/// How the running statistics follow the batch statistics. Always explicit: the same momentum
/// number means opposite things in PyTorch and MindSpore.
enum class momentum_convention {
  /// torch.nn.BatchNorm*d: r = (1 - m)·r + m·batch; the running variance takes the unbiased
  /// batch variance (× n/(n-1)).
  pytorch,
  /// mindspore.nn.BatchNorm*d: r = m·r + (1 - m)·batch; unbiased running variance.
  mindspore,
  /// ONNX BatchNormalization (training_mode=1): MindSpore's formula with the biased variance.
  onnx,
};

BNORM_API const char* to_string(momentum_convention value) noexcept;  ///< "pytorch", ...; "unknown"
/// The momentum a convention's framework defaults to: PyTorch 0.1, MindSpore and ONNX 0.9 (the
/// same running statistics: r = 0.9·r + 0.1·batch); 0.1 for an unknown value.
BNORM_API double default_momentum(momentum_convention convention) noexcept;

/// How normalization writes dst.
enum class store_policy {
  /// Non-temporal stores where cached output would push out of the last-level cache the input
  /// that is read again: for training and the backward (which read their input twice) from
  /// tensors of an eighth of its size, for inference from a quarter on one thread and from half
  /// on more (where x and y no longer fit in it together); ordinary stores below.
  automatic,
  /// Ordinary stores: best when the next layer reads y while it is still in cache.
  cached,
  /// Non-temporal stores, which skip the read of each destination line: best for outputs that
  /// do not fit in cache.
  streaming,
};

BNORM_API const char* to_string(store_policy value) noexcept;  ///< "automatic", ...; "unknown"

/// What the forward writes: the normalized y, or an activation of it fused into the same pass
/// over memory (no second pass, no intermediate tensor).
enum class activation {
  none,      ///< y
  relu,      ///< max(y, 0)
  clamp,     ///< min(max(y, clamp_min), clamp_max): ReLU6 with 0 and 6, hardtanh
  add_relu,  ///< max(y + z, 0), z the call's residual tensor: the ResNet block's tail
};

BNORM_API const char* to_string(activation value) noexcept;  ///< "none", "relu", ...; "unknown"

/// Maximum tensor rank (N, C, D, H, W).
inline constexpr std::size_t max_rank = 5;

/// Dimensions of a tensor in logical order (N, C, spatial...). Any rank can be stored so that a
/// wrong one is reported, not truncated.
class BNORM_API tensor_shape {
 public:
  /// Dimensions stored; a longer shape keeps its rank (and is refused by make_plan).
  static constexpr std::size_t capacity = 8;

  tensor_shape() noexcept = default;
  tensor_shape(std::initializer_list<std::int64_t> dims) noexcept;
  /// dims may be null only with rank 0; a null dims of rank > 0 keeps the rank, stores no
  /// dimension and is refused by every call that takes the shape.
  tensor_shape(const std::int64_t* dims, std::size_t rank) noexcept;

  std::size_t rank() const noexcept { return rank_; }
  /// False for a null dims of rank > 0.
  bool has_dimensions() const noexcept { return stored_ > 0 || rank_ == 0; }
  /// Dimension i; 0 when i >= rank() or beyond the `capacity` stored dimensions.
  std::int64_t operator[](std::size_t i) const noexcept { return i < stored_ ? dims_[i] : 0; }

 private:
  std::size_t rank_ = 0;
  std::size_t stored_ = 0;
  std::array<std::int64_t, capacity> dims_{};
};

/// What to compute: shape, layout, element type and epsilon.
struct problem {
  tensor_shape shape;
  bnorm::layout layout = layout::channels_first;
  bnorm::dtype dtype = dtype::f32;
  double epsilon = 1e-5;
};

/// How a plan runs and how its training path treats the running statistics.
struct plan_options {
  /// Training updates running_mean/running_var (PyTorch track_running_stats in train mode,
  /// MindSpore's bn_train) and counts the step in num_batches_tracked. When false,
  /// forward_training uses batch statistics only and leaves those buffers alone.
  bool update_running_stats = true;
  momentum_convention convention = momentum_convention::pytorch;
  /// In the convention's own meaning, in [0, 1]. Unset: the convention's default, PyTorch's 0.1,
  /// MindSpore's and ONNX's 0.9 (default_momentum), so that a convention set alone keeps its
  /// framework's running statistics.
  std::optional<double> momentum;
  /// PyTorch momentum=None: the factor is 1/num_batches_tracked, a cumulative average.
  /// Only with the pytorch convention; needs num_batches_tracked at every training call.
  bool cumulative_average = false;
  /// 0 runs in the caller's current oneTBB arena, honouring its limit. N > 0 caps the threads
  /// at N (1 runs on the calling thread alone), in one arena shared by every plan of that cap,
  /// so that consecutive layers run their shares of the work on the same threads. Results are
  /// bitwise the same for any value.
  int max_threads = 0;
  /// Highest ISA the plan may use; the plan uses the best at or below it. The environment
  /// variable BNORM_MAX_ISA caps it too, and wins when lower; select_isa tells which ISA the
  /// two caps leave.
  std::optional<bnorm::isa> max_isa;
  /// The outputs are the same bits under every policy; only the speed differs.
  store_policy stores = store_policy::automatic;
  /// Fused into both forward paths; NaN stays NaN. Its bounds (activation::clamp):
  /// clamp_min <= clamp_max, either may be infinite. The backward of such a plan takes the
  /// forward's output (backward_args::dst) to pass dy through the activation first.
  bnorm::activation activation = activation::none;
  double clamp_min = 0.0;
  double clamp_max = 6.0;
  /// The type of the per-channel buffers (gamma, beta, the statistics and their gradients):
  /// by default the data's for f32 and f64, float32 for bf16 and f16 (PyTorch's mixed type).
  /// bf16 and f16 data may take them in their own type instead; the arithmetic stays float32
  /// (the statistics and dγ, dβ float64) and each output is its float64 value rounded to
  /// nearest even once (through float32 by round-to-odd). As in PyTorch's half running
  /// statistics, a value beyond the half type's range rounds to an infinity (a float16
  /// running_var past 65504 is +inf, and a later step's blend of it inf or NaN): float32
  /// parameters keep data of such spread finite.
  std::optional<bnorm::dtype> parameter_dtype;
};

/// A per-channel input buffer: `size` values of the plan's parameter type (float for f32, bf16
/// and f16 data, double for f64, unless plan_options::parameter_dtype says otherwise), and
/// `size` must be C. Leave it empty ({}) to omit an optional one.
struct channel_input {
  const void* data = nullptr;
  std::size_t size = 0;
};

/// A per-channel output (or in-out) buffer: C values of the plan's parameter type.
struct channel_output {
  void* data = nullptr;
  std::size_t size = 0;
};

/// Buffers of one training step. All per-channel buffers hold C values of the plan's parameter
/// type (see plan_options::parameter_dtype: float32 for bf16 and f16 data unless it says
/// otherwise).
struct training_args {
  const void* src = nullptr;     ///< Input, N×C×spatial elements in the plan's layout.
  void* dst = nullptr;           ///< Output, same shape and layout; may equal src (in place).
  channel_input scale;           ///< gamma; omitted means 1.
  channel_input shift;           ///< beta; omitted means 0.
  channel_output batch_mean;     ///< Optional: the batch mean (for a backward pass).
  channel_output batch_inv_std;  ///< Optional: 1/sqrt(biased batch variance + eps).
  /// Optional: the batch mean less batch_mean (its rounding to the parameter type), rounded:
  /// with float32 parameters, the mean to about twice float32's precision, for
  /// backward_args::mean_residual (the gradient of data whose mean is large against its
  /// spread). float64 data's is 0: its mean is float64, the kernels' own. Not with half-type
  /// parameters (plan_options::parameter_dtype bf16 or f16).
  channel_output batch_mean_residual;
  channel_output running_mean;  ///< Required when the plan updates running statistics.
  channel_output running_var;   ///< Required when the plan updates running statistics.
  /// Incremented by one per tracked step when non-null; required with cumulative_average. It
  /// must hold a count from 0 to INT64_MAX − 1: a negative count, or one that the step would
  /// overflow, is refused before anything is written (PyTorch would divide by zero or wrap).
  std::int64_t* num_batches_tracked = nullptr;
  /// activation::add_relu: z, same shape and layout as src, added before the ReLU; it may
  /// equal dst (y written over z). Other activations: none.
  const void* residual = nullptr;
  /// Optional caller-owned scratch, 64-byte aligned, of at least
  /// plan::training_scratch_size() bytes when that is not 0. Without it a call that needs
  /// scratch allocates it; calls whose scratch fits on the stack do not use it (its alignment
  /// is checked all the same).
  void* scratch = nullptr;
  std::size_t scratch_size = 0;
};

/// Buffers of one inference call.
struct inference_args {
  const void* src = nullptr;
  void* dst = nullptr;             ///< May equal src.
  channel_input scale;             ///< gamma; omitted means 1.
  channel_input shift;             ///< beta; omitted means 0.
  channel_input mean;              ///< Running mean (required).
  channel_input var;               ///< Running variance (required).
  const void* residual = nullptr;  ///< As training_args::residual.
  /// As training_args::scratch, with plan::inference_scratch_size().
  void* scratch = nullptr;
  std::size_t scratch_size = 0;
};

/// Buffers of one backward call. The gradients it computes are the outputs it is given
/// (PyTorch's grad_input_mask, oneDNN's backward_data): any of diff_src, diff_scale and
/// diff_shift, at least one. What it needs besides diff_dst:
/// - backward_training (batch statistics): src, mean and one of inv_std or var, except for dβ
///   alone;
/// - backward_frozen (running statistics): var for dx; src, mean and var for dγ.
struct backward_args {
  const void* src = nullptr;       ///< x, as the forward took it.
  const void* diff_dst = nullptr;  ///< dy (grad_output), same shape and layout.
  void* diff_src = nullptr;        ///< dx (grad_input), or null; may equal diff_dst (in place).
  channel_input scale;             ///< gamma; omitted means 1 (affine = false).
  /// Training: the forward's batch mean (forward_training's batch_mean, PyTorch's save_mean).
  /// Frozen: the running mean.
  channel_input mean;
  /// Training only, optional: forward_training's batch_mean_residual. The gradient is then that
  /// of the mean mean + mean_residual, as the forward normalized with it; without, that of
  /// `mean` as given (PyTorch's), whose rounding moves x̂ by up to |mean|·2^-24/std in float32
  /// and dx by as much where dy's mean is large against its spread (docs/design.md, "Numerical
  /// policy", the backward's mean).
  channel_input mean_residual;
  /// Training only: 1/sqrt(biased batch variance + eps), as forward_training's batch_inv_std
  /// and PyTorch's save_invstd. Give this or var, not both.
  channel_input inv_std;
  /// Training: the biased batch variance (as oneDNN and MindSpore pass it); frozen: the running
  /// variance. 1/sqrt(var + eps) with the plan's epsilon.
  channel_input var;
  channel_output diff_scale;  ///< dγ = Σ dy·x̂, or omitted.
  channel_output diff_shift;  ///< dβ = Σ dy, or omitted.
  /// A plan with an activation (plan_options::activation): the forward's output, whose mask
  /// the gradient passes through first (ReLU, add+ReLU: y > 0, +inf included; clamp:
  /// clamp_min < y < clamp_max, the bounds as the storage type holds them, a clamp_min of −inf
  /// or a clamp_max of +inf clamping nothing on its side). Required there, none otherwise.
  const void* dst = nullptr;
  /// add_relu: dz, the residual's gradient (dy through the mask), or null; may equal
  /// diff_dst (in place). Other activations: none.
  void* diff_residual = nullptr;
  /// As training_args::scratch, with plan::backward_scratch_size(); a frozen dx alone (no dγ,
  /// dβ) runs as inference and needs plan::inference_scratch_size().
  void* scratch = nullptr;
  std::size_t scratch_size = 0;
};

namespace detail {
struct plan_impl;
}

/// A validated problem bound to one ISA and one work partition. Cheap to copy (shared state);
/// const and safe to execute from many threads at once.
class BNORM_API plan {
 public:
  plan() noexcept = default;

  /// Training: batch mean and biased variance per channel, y = (x-mean)/sqrt(var+eps)·gamma+beta,
  /// then the running statistics and num_batches_tracked. Errors (including "Expected more than
  /// 1 value per channel when training" under the pytorch convention, whose running variance
  /// is the unbiased one; mindspore and onnx train on one value: y = beta, NaN with eps 0 as
  /// any constant channel) are returned before anything is written.
  status forward_training(const training_args& args) const noexcept;

  /// Inference: y = (x - mean)/sqrt(var + eps)·gamma + beta with the given statistics.
  status forward_inference(const inference_args& args) const noexcept;

  /// Training backward, from the batch statistics the forward saved: with x̂ = (x − mean)·inv_std
  /// and M values per channel, dβ = Σ dy, dγ = Σ dy·x̂, dx = γ·inv_std·(dy − dβ/M − x̂·dγ/M).
  /// dγ and dβ are overwritten, not accumulated. Errors are returned before anything is written.
  status backward_training(const backward_args& args) const noexcept;

  /// Backward of inference (eval mode, frozen batch norm, PyTorch's backward with training
  /// false): dx = γ·dy/sqrt(running_var + eps), one read of dy and one write of dx; dβ = Σ dy
  /// and dγ = Σ dy·(x − running_mean)/sqrt(running_var + eps) when asked.
  status backward_frozen(const backward_args& args) const noexcept;

  // Distributed training (SyncBatchNorm): the steps around an exchange between ranks, with
  // the exchange format and its merge in bnorm/distributed.hpp.

  /// This rank's statistics (count, per-channel mean and biased variance) into `exchange` of
  /// statistics_exchange_size(C) doubles. `args` is validated as forward_training_merged will
  /// take it; only `exchange` is written. A rank may hold one value per channel, or none.
  status local_statistics(const training_args& args, double* exchange,
                          std::size_t exchange_size) const noexcept;
  /// forward_training with the whole batch's statistics (merge_statistics): y, the batch mean
  /// and 1/std, and the running statistics (unbiased with the merged count) as one call over
  /// the whole batch gives them. "Expected more than 1 value per channel" (pytorch convention)
  /// counts every rank.
  status forward_training_merged(const training_args& args, const double* merged,
                                 std::size_t merged_size) const noexcept;
  /// This rank's Σdy and Σdy·(x − mean) into `exchange` of gradient_exchange_size(C)
  /// doubles; args.mean is the merged mean. `args` is validated as backward_training_merged
  /// will take it; only `exchange` is written.
  status local_gradient_sums(const backward_args& args, double* exchange,
                             std::size_t exchange_size) const noexcept;
  /// dx (and dz) from the whole batch's sums (`summed`, from sum_gradient_exchanges), and dγ,
  /// dβ from this rank's own block (`local`): as torch.nn.SyncBatchNorm, the parameters'
  /// gradients stay per rank for the data-parallel all-reduce that follows.
  status backward_training_merged(const backward_args& args, const double* local,
                                  const double* summed, std::size_t exchange_size) const noexcept;

  bool valid() const noexcept { return impl_ != nullptr; }
  /// The ISA whose kernels this plan's forward runs (its backward's: see describe()).
  bnorm::isa isa() const noexcept;
  /// One line that says what the plan runs: ISA, dtype, traversal, the schedule of each path
  /// with its units, stores and threading, e.g. "avx512f · f32 · channels-last rows (3136 ×
  /// 256) · training: two passes, 25 row chunks × 1 column blocks · inference: row chunks,
  /// 25 × 128 rows · cached stores · parallel". For logs and benchmark reports; its wording
  /// may change between versions.
  const char* describe() const noexcept;
  /// Bytes of caller scratch with which a training (inference) call allocates nothing; 0 when
  /// the call needs none (its scratch fits on the stack; an empty tensor's inference). The
  /// training size serves the distributed steps too, on any rank's batch, empty or not. Two
  /// calls allocate beyond it: any call with per-channel buffers in a half type
  /// (parameter_dtype bf16 or f16: 4 bytes a channel for each buffer, staged as float32), and
  /// the backward of a fused activation that asks for neither dx nor dz, or its local step
  /// (dy through the activation's mask into a tensor of its own).
  std::size_t training_scratch_size() const noexcept;
  std::size_t inference_scratch_size() const noexcept;
  /// Bytes of caller scratch with which a backward call (either kind) allocates nothing.
  std::size_t backward_scratch_size() const noexcept;
  /// The largest of them: scratch enough for any path.
  std::size_t scratch_size() const noexcept;
  const bnorm::problem& get_problem() const noexcept;
  const plan_options& options() const noexcept;

 private:
  friend status make_plan(const problem&, const plan_options&, plan*) noexcept;
  std::shared_ptr<const detail::plan_impl> impl_;
};

/// Validates `prob` and `options`, picks the ISA and the work partition, and stores the plan in
/// `*out` (left untouched on failure).
BNORM_API status make_plan(const problem& prob, const plan_options& options, plan* out) noexcept;

}  // namespace bnorm
