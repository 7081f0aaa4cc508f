// The per-ISA kernel interface. Declarations only: no xsimd types, so the baseline translation
// units can include it without pulling in any ISA-specific code.
#pragma once

#include <cmath>
#include <cstddef>

#include "bnorm/plan.hpp"
#include "element_types.hpp"

namespace bnorm::kernels {

/// A pivot farther than this from the mean of a channel of `count` values, in variances
/// ((mean − pivot)² above this many times the variance), leaves the float32 squares large next
/// to the variance: their rounding grows 1 + (mean − pivot)²/variance times in it. The caller
/// moves the pivot to the mean and sums again. Short channels average their blocks' rounding
/// least: 98 values tolerate 1.5 standard deviations (y's error up to 1.1e-6 there), and the
/// bound grows as count^0.4, to 2 standard deviations from 413 values on (docs/design.md,
/// "Pivots"; 3 let data built to sit in blocks of the float32 sums, a pivot 2.98 standard
/// deviations off, reach 1.27e-6). Pivots from eight values or more pass 1.5 standard
/// deviations on ordinary data in fewer than one channel of 45,000, 2 in one of 60 million.
inline double max_pivot_offset_squared(double count) noexcept {
  return count <= 98.0 ? 2.25 : std::fmin(4.0, 2.25 * std::pow(count / 98.0, 0.4));
}

/// The per-channel (channels-last: per-slot) normalization coefficients, one array each:
/// y = (x·min(h, 1) − center)·max(h, 1)·scale + shift, h the prescale. h is 1 for all but
/// extreme channels, and then the expression is (x − center)·scale + shift exactly. Where x −
/// center could overflow (a center of at least half an ulp of the largest finite value) or the
/// scale is outside T's normal range, h is a power of two (see prescale_for) that keeps the
/// deviation finite and the scale normal: h < 1 multiplies x and the center, h > 1 (a scale
/// beyond T) the difference; the same result, rounded once more at most. `Value` is T or
/// const T.
template <class Value>
struct coefficients {
  Value* center = nullptr;
  Value* scale = nullptr;
  Value* shift = nullptr;
  Value* prescale = nullptr;

  coefficients() noexcept = default;
  coefficients(Value* center_, Value* scale_, Value* shift_, Value* prescale_) noexcept
      : center(center_), scale(scale_), shift(shift_), prescale(prescale_) {}
  /// A writable set reads as a read-only one.
  template <class Other>
  coefficients(const coefficients<Other>& o) noexcept  // NOLINT: implicit on purpose
      : center(o.center), scale(o.scale), shift(o.shift), prescale(o.prescale) {}
  /// The coefficients from channel (slot) j on.
  coefficients operator+(std::size_t j) const noexcept {
    return {center + j, scale + j, shift + j, prescale + j};
  }
};

/// What the map writes after normalizing (plan_options::activation): y itself, relu(y),
/// clamp(y, lo, hi), or relu(y + z) with z a residual tensor at the same offsets as the data.
enum class epilogue_kind { identity, relu, clamp, add_relu };

template <class T>
struct epilogue {
  epilogue_kind kind = epilogue_kind::identity;
  T lo = 0, hi = 0;  // clamp's bounds
};

/// A block of channels-first planes: `channels` consecutive channels of `planes` contiguous runs
/// of `len` values each, a channel's runs `stride` elements apart and channel k's first run at
/// offset k·len: the N planes of channels-first channels, or a piece of one channel
/// (channels = 1).
struct plane_block {
  std::size_t len = 0;
  std::size_t planes = 0;
  std::size_t stride = 0;
  std::size_t channels = 0;
  /// How far ahead of their use to fetch the lines read from memory, in bytes of all the
  /// tensors read together (0: not at all): for the reduce kernels, what they sum; for the map,
  /// add+ReLU's residual, streamed. The planner's choice (partition::statistics_read_ahead_bytes,
  /// gradient_read_ahead_bytes, residual_read_ahead_bytes).
  std::size_t read_ahead_bytes = 0;
  /// For the maps of a fused block, streamed: fetch the next block's x (and the backward's
  /// dy), channels·len on, line for line (partition::fetch_next_fused_block,
  /// fetch_next_fused_backward_block).
  bool fetch_next_block = false;
};

/// A block of interleaved channels: `rows` rows of `width` slots, `stride` elements apart. Slot
/// j of every row shares the per-slot arrays' entry j (pivot, sums, coefficients); the planner
/// makes slot j channel j % C.
struct row_block {
  std::size_t rows = 0;
  std::size_t width = 0;
  std::size_t stride = 0;
  /// As plane_block's; for the backward's map, how far ahead of each line it reads the map
  /// fetches x's and dy's where it streams dx.
  std::size_t read_ahead_bytes = 0;
  /// For the reduce kernels of float32 and float64 storage: walk each block of rows in memory
  /// order, the partials in the L1, rather than a group of columns at a time with the partials
  /// in registers (the same bits; partition::gradient_sums_in_row_order).
  bool in_row_order = false;
};

/// interleaved_gradient's rows of at least this many slots go two at a time in cache and one at
/// a time streamed; narrower ones four at a time in cache, and streamed where they are whole
/// cache lines from an aligned dx (else one at a time) (docs/design.md, "Fused groups of whole
/// vectors; the backward's dx two rows at a time (stop 48)", "The backward's dx rows together,
/// streamed (stop 63)"). Streamed, the four-row walk and the one-row walk over the wider rows
/// fetch ahead (row_block::read_ahead_bytes); the narrower rows a row at a time do not.
constexpr std::size_t two_row_gradient_slots = 512;

/// Whether a reduce kernel starts the per-slot sums (overwrites them) or adds to them: zeroing
/// the arrays first would cost as much as a pass over short tensors.
enum class sums_mode { start, add };

/// How a normalization writes, the same for every call of a pass: the coefficients (channel
/// j's at index first + j of the arrays, `first` given per call), whether some channel's
/// prescale may differ from 1 (the coefficient kernels tell: without, no kernel looks at the
/// prescales), non-temporal stores for whole aligned vectors (outputs that do not fit in cache:
/// no read of each destination line before it is written), and the epilogue. A pass holds one
/// and the kernels take it by reference: a struct stored just before each call would be loaded
/// back in it, at every call.
template <class T>
struct normalize_params {
  coefficients<const T> coeffs;
  bool prescaled = false;
  bool stream = false;
  epilogue<T> post;
};

/// The backward's per-channel (per-slot) coefficients, one array each:
/// dx = (dy − dy_center)·g·dy_scale + (x·min(h, 1) − center)·max(h, 1)·x_scale + shift, h the
/// prescale and g the dy prescale. Training: center the saved mean, dy_center = Σdy/M rounded to
/// T, dy_scale = γ·inv_std, x_scale = −γ·inv_std²·Σdy·(x − mean)/M, shift = −γ·inv_std·(Σdy/M −
/// dy_center), and h and g as a scale's prescale (see coefficients; g with a center of 0, so
/// dy·g, which overflows only where dy·dy_scale does): x_scale grows as inv_std³ while the
/// x − mean it multiplies shrinks as std, so it can pass T's largest value where dx does not;
/// dy_scale, the forward's scale, can with a small dy. dy − dy_center is exact where dy is near
/// its mean (as x − center in the forward): the terms dy·dy_scale and −γ·inv_std·Σdy/M, each
/// rounded at the size of γ·inv_std·|Σdy/M|, would leave that rounding in a dx that is far
/// smaller (dy constant at 65536, a loss scale: dx ≈ 0 came out as 0.0078). A dy_center from
/// which dy − dy_center could overflow (see overflowing_center; the test is the rounded mean's)
/// is 0.
template <class Value>
struct gradient_coefficients {
  Value* center = nullptr;
  Value* dy_center = nullptr;
  Value* dy_scale = nullptr;
  Value* x_scale = nullptr;
  Value* shift = nullptr;
  Value* prescale = nullptr;
  Value* dy_prescale = nullptr;

  gradient_coefficients() noexcept = default;
  gradient_coefficients(Value* center_, Value* dy_center_, Value* dy_scale_, Value* x_scale_,
                        Value* shift_, Value* prescale_, Value* dy_prescale_) noexcept
      : center(center_),
        dy_center(dy_center_),
        dy_scale(dy_scale_),
        x_scale(x_scale_),
        shift(shift_),
        prescale(prescale_),
        dy_prescale(dy_prescale_) {}
  template <class Other>
  gradient_coefficients(const gradient_coefficients<Other>& o) noexcept  // NOLINT: implicit
      : center(o.center),
        dy_center(o.dy_center),
        dy_scale(o.dy_scale),
        x_scale(o.x_scale),
        shift(o.shift),
        prescale(o.prescale),
        dy_prescale(o.dy_prescale) {}
};

/// The per-channel arithmetic of the forward statistics, in float64 and in place, channels
/// [0, channels) of the arrays given (the caller offsets them).
template <class T>
struct moment_channels {
  std::size_t channels = 0;
  double count = 0;  // values per channel
  double epsilon = 0;
  const T* pivot = nullptr;  // d = x − pivot
  const T* gamma = nullptr;  // null: 1
  /// In: Σd and Σd². Out: the mean and the biased variance.
  double* sum_to_mean = nullptr;
  double* sum_sq_to_variance = nullptr;
  double* inv_std = nullptr;  // out: 1/sqrt(variance + eps)
  double* scale = nullptr;    // out: gamma·inv_std
  /// A variance + eps below this asks for another look (float32's squares lose their bits
  /// near the bottom of the range), and so does a pivot farther from the mean than this
  /// (max_pivot_offset_squared(count)).
  double resum_below = 0;
  double max_offset_squared = 0;
};

/// The batch statistics a training step commits, channels [0, channels): mean and inv_std
/// rounded to T where asked for (non-null), and the running mean and variance where the step
/// updates them (both non-null), in float64 rounded to T: running mean = weight·mean +
/// (1 − weight)·running mean, running variance = weight·(variance·factor) + (1 − weight)·running
/// variance, the factor 1 or the Bessel correction n/(n − 1).
template <class T>
struct statistics_commit {
  std::size_t channels = 0;
  const double* mean = nullptr;
  const double* variance = nullptr;
  const double* inv_std = nullptr;
  T* batch_mean = nullptr;
  /// The mean less its rounding to T, rounded to T: with batch_mean, a float32 mean to about
  /// twice float32's precision (float64's is 0), for the backward's mean_residual.
  T* batch_mean_residual = nullptr;
  T* batch_inv_std = nullptr;
  T* running_mean = nullptr;
  T* running_var = nullptr;
  double variance_factor = 1.0;
  double batch_weight = 0.0;
  /// float outputs that are then rounded to a half type (staged half-type parameters): rounded
  /// to odd here, so that the second rounding gives the float64 value's own (see round_to_odd).
  bool round_to_odd = false;
};

/// float32 products dy·(x − mean) below the normal range (dy of 1e-45) keep only some of their
/// bits, and an inv_std of 1e22 brings them back into dγ and dx. A channel whose float32
/// Σdy·(x − mean) is nonzero and below 2^-100 may hold them, and is summed again in float64:
/// where it reaches 2^-100, the products' roundings (2^-150 each) stay below 2^-24 of it up to
/// 2^26 values a channel. A zero sum is summed again too where Σdy is not zero: subnormal
/// products that cancel to exactly zero in float32 may hold a sum that dx's x − mean term
/// multiplies by inv_std³·(x − mean)/M (x of ±1e-23 and ±3e-23, dy 1e-22 and 0.95e-22, the
/// data's own statistics: dx 4.6% off, dγ 0 for −6.7e-24); x − mean all zero, the other way to
/// it, is rare. Where Σdy is zero as well (dy all zero: a channel that a ReLU after it left
/// without gradient) it keeps its bits unless inv_std reaches 2^80: its products may all have
/// rounded to zero (subnormal dy times subnormal x − mean), and inv_std·M·2^-150, what they can
/// hold, may then be more than dγ's rounding (below 2^-70·M where inv_std does not reach it).
constexpr double small_products_below = 0x1p-100;
constexpr double zero_products_from_inv_std = 0x1p80;
inline bool sums_small_products(double sum_dy_d, double sum_dy, double inv_std) noexcept {
  const double magnitude = std::fabs(sum_dy_d);
  return magnitude < small_products_below &&
         (magnitude != 0.0 || sum_dy != 0.0 || inv_std >= zero_products_from_inv_std);
}

/// What channel_gradients found: some prescale other than 1; some channel of float32 data
/// whose sums are to be taken again (sums_small_products).
struct gradient_flags {
  bool prescaled = false;
  bool small_products = false;
};

/// How the backward's dx is written, the same for every call of a pass (see normalize_params):
/// `prescaled` says whether some channel's prescale may differ from 1.
template <class T>
struct gradient_params {
  gradient_coefficients<const T> coeffs;
  bool prescaled = false;
  bool stream = false;
};

/// The per-channel arithmetic of a backward call, in float64, channels [0, channels) of the
/// arrays given (the caller offsets them).
template <class T>
struct gradient_channels {
  std::size_t channels = 0;
  double count = 0;         // M: values per channel
  double epsilon = 0;       // with `variance`
  const T* mean = nullptr;  // the centers the sums were taken around
  /// null, or the batch mean less `mean` (its rounding to T): the sums and the centered x are
  /// those of the mean itself, x − mean − residual, as the forward's.
  const T* mean_residual = nullptr;
  const T* inv_std = nullptr;  // 1/sqrt(variance + eps), or null and:
  const T* variance = nullptr;
  const T* gamma = nullptr;  // null: 1
  const double* sum_dy = nullptr;
  /// In: Σdy·(x − mean). Out: dγ = inv_std·Σdy·(x − mean).
  double* sum_dy_d = nullptr;
};

/// The bounds of a fused activation's output, as its backward masks dy: lo < y where
/// `clamps_below`, y < hi where `clamps_above`. A side that clamps nothing (ReLU's top, a bound
/// given as the infinity of its side: −inf below, +inf above) passes every y, infinite ones
/// too; a finite bound that the storage type holds as an infinity still clamps (hi = +inf then
/// masks y = +inf, the clamped outputs), as +inf below or −inf above do (every output is the
/// bound). A NaN y passes nothing.
template <class T>
struct mask_bounds {
  T lo = T(0), hi = T(0);
  bool clamps_below = true, clamps_above = true;
};

/// Pure loops over caller-validated memory. They assert nothing, allocate nothing, never throw.
/// Statistics accumulate values relative to a pivot, d = x − pivot, in float64: sum += Σd,
/// sum_sq += Σd².
/// Normalization computes y = (x − center)·scale + shift (prescaled: see coefficients), with the
/// center the mean rounded to T (x·a + b with the mean folded into b would cancel when
/// |mean| ≫ std), written as normalize_params say.
template <class S>
struct kernel_set {
  /// Data of storage type S (float, double, bfloat16, float16); pivots, coefficients and the
  /// per-channel values in T (float for the half types).
  using T = compute_of_t<S>;

  /// Per channel, the pivot that the statistics subtract (d = x − pivot): the mean in float64
  /// of a few of its values spread evenly over it (four runs of one float64 vector over a
  /// channel's planes, 256-bit on AVX-512, or 16 single values of short planes; eight rows),
  /// rounded to T.
  /// Planes: per channel of the block. Rows: per slot of the block.
  void (*plane_pivots)(const S* src, const plane_block& block, T* pivot) noexcept;
  void (*row_pivots)(const S* src, const row_block& block, T* pivot) noexcept;
  /// Per-channel arrays are indexed by the block's channel k; statistics add into sum[k],
  /// sum_sq[k]. One call for a block of channels: short planes (7×7) would otherwise pay a
  /// call per channel.
  void (*plane_stats)(const S* src, const plane_block& block, const T* pivot, double* sum,
                      double* sum_sq) noexcept;
  /// The map kernels write through the params' epilogue; `residual` (add_relu) is z at src's
  /// offset. Channel k's coefficients are at index first + k.
  void (*plane_normalize)(const S* src, S* dst, const S* residual, const plane_block& block,
                          const normalize_params<T>& params, std::size_t first) noexcept;
  void (*interleaved_stats)(const S* src, const row_block& block, const T* pivot, double* sum,
                            double* sum_sq, sums_mode mode) noexcept;
  /// Coefficient arrays are padded by one vector past the period.
  void (*interleaved_normalize)(const S* src, S* dst, const S* residual, const row_block& block,
                                const normalize_params<T>& params, std::size_t first) noexcept;
  /// Per channel (see moment_channels): Σd, Σd² become the mean and the biased variance; then
  /// inv_std and scale: products by 1/count and inverse_sqrt, each channel's operations the
  /// same in any lane and in the scalar code. Returns whether
  /// some channel needs another look (see finalize_block): variance + eps below
  /// `resum_below`, a variance that is not finite, or a pivot beyond max_pivot_offset_squared.
  bool (*channel_moments)(const moment_channels<T>& in) noexcept;
  /// Training, per channel from the float64 mean, 1/std and scale: center = +0 where the mean
  /// folds into the shift (kernels::folds), else the mean rounded to T; scale;
  /// shift = beta − (mean − center)·scale (beta null: 0); values beyond T's range saturate to
  /// its largest; then the prescale (see coefficients). Channel c's go to index first + c of
  /// the arrays. Returns whether some prescale is not 1.
  bool (*channel_coefficients)(std::size_t channels, const double* mean, const double* inv_std,
                               const double* scale, const T* beta, const coefficients<T>& out,
                               std::size_t first) noexcept;
  /// Inference, per channel from the running statistics: the same coefficients with
  /// scale = gamma·(1/sqrt(variance + eps)) in float64 (gamma null: 1; mean null: 0, as the
  /// frozen backward's dx = dy·gamma/sqrt(variance + eps) takes it).
  bool (*inference_coefficients)(std::size_t channels, double eps, const T* mean, const T* variance,
                                 const T* gamma, const T* beta, const coefficients<T>& out,
                                 std::size_t first) noexcept;
  /// The backward's sums, as plane_stats and interleaved_stats with the terms dy and
  /// dy·(x − center): sum_dy += Σdy, sum_dy_d += Σdy·(x − center), x and dy at the same offsets.
  void (*plane_gradient_sums)(const S* src, const S* diff_dst, const plane_block& block,
                              const T* center, double* sum_dy, double* sum_dy_d) noexcept;
  void (*interleaved_gradient_sums)(const S* src, const S* diff_dst, const row_block& block,
                                    const T* center, double* sum_dy, double* sum_dy_d,
                                    sums_mode mode) noexcept;
  /// The same sums in float64 throughout, started (overwritten), for the channels whose float32
  /// sums may have lost subnormal products (sums_small_products): every product exact.
  void (*plane_gradient_sums_f64)(const S* src, const S* diff_dst, const plane_block& block,
                                  const T* center, double* sum_dy, double* sum_dy_d) noexcept;
  void (*interleaved_gradient_sums_f64)(const S* src, const S* diff_dst, const row_block& block,
                                        const T* center, double* sum_dy, double* sum_dy_d) noexcept;
  /// The backward's dx from its coefficients (see gradient_coefficients), over planes or rows as
  /// plane_normalize and interleaved_normalize. diff_src may be diff_dst (in place).
  void (*plane_gradient)(const S* src, const S* diff_dst, S* diff_src, const plane_block& block,
                         const gradient_params<T>& params, std::size_t first) noexcept;
  void (*interleaved_gradient)(const S* src, const S* diff_dst, S* diff_src, const row_block& block,
                               const gradient_params<T>& params, std::size_t first) noexcept;
  /// The gradient through a fused activation: out = dy where y is inside the bounds, else 0,
  /// elementwise over n values (out may be dy).
  void (*activation_mask)(const S* dy, const S* y, S* out, std::size_t n,
                          const mask_bounds<T>& bounds) noexcept;
  /// dγ in place of the sums (see gradient_channels), and, unless `out` is null, the dx
  /// coefficients of training, to index first + c of its arrays: the prescale of extreme
  /// channels as channel_coefficients' (see gradient_coefficients), and values beyond T's range
  /// saturated to its largest. Returns whether some prescale is not 1, and (float) whether
  /// some channel's Σdy·(x − mean) asks to be summed again (sums_small_products).
  gradient_flags (*channel_gradients)(const gradient_channels<T>& in,
                                      const gradient_coefficients<T>* out,
                                      std::size_t first) noexcept;
  /// Per channel: out[c] = in[c] rounded to T (dγ, dβ), to odd where `round_to_odd` says so
  /// (as statistics_commit's).
  void (*narrow)(std::size_t channels, const double* in, T* out, bool round_to_odd) noexcept;
  /// The batch and running statistics of a training step, in one pass (see statistics_commit).
  void (*commit_statistics)(const statistics_commit<T>& in) noexcept;
};

/// Whether a map over `planes` planes of len values each (a block of channels-first channels)
/// goes in channel groups: on kernels that have them (`has_groups`: AVX-512's, for float32
/// storage), one image's planes (planes = 1) shorter than eight vectors of `lanes` floats. Then
/// `lanes` channels are whole vectors, each vector's lanes taking their channels' coefficients
/// by a permute (map.hpp's normalize_channel_groups), where a plane at a time pays an
/// overlapping last vector. bfloat16 and float16 ran slower so (docs/design.md, "Channel
/// groups"). The one home of the rule: the kernels, the choice of kernels and the plan's
/// description ask it.
constexpr bool in_channel_groups(bool has_groups, std::size_t planes, std::size_t len,
                                 std::size_t lanes) noexcept {
  return has_groups && planes == 1 && len < 8 * lanes;
}

struct kernel_table {
  bnorm::isa id;
  std::size_t f32_lanes;    // floats per vector register
  std::size_t f64_lanes;    // doubles per vector register
  bool f32_channel_groups;  // float32 plane maps go in channel groups (in_channel_groups)
  kernel_set<float> f32;
  kernel_set<double> f64;
  kernel_set<bfloat16> bf16;
  kernel_set<float16> f16;

  template <class T>
  const kernel_set<T>& get() const noexcept;
  template <class T>
  std::size_t lanes() const noexcept;
};

template <>
inline const kernel_set<float>& kernel_table::get<float>() const noexcept {
  return f32;
}
template <>
inline const kernel_set<double>& kernel_table::get<double>() const noexcept {
  return f64;
}
template <>
inline const kernel_set<bfloat16>& kernel_table::get<bfloat16>() const noexcept {
  return bf16;
}
template <>
inline const kernel_set<float16>& kernel_table::get<float16>() const noexcept {
  return f16;
}
template <>
inline std::size_t kernel_table::lanes<float>() const noexcept {
  return f32_lanes;
}
template <>
inline std::size_t kernel_table::lanes<double>() const noexcept {
  return f64_lanes;
}

// One table per compiled ISA, each defined in its own translation unit (kernels_<isa>.cpp)
// built with that ISA's flags.
#if defined(__x86_64__) || defined(_M_X64)
const kernel_table& sse2_kernels() noexcept;
const kernel_table& avx2_kernels() noexcept;
const kernel_table& avx512f_kernels() noexcept;
const kernel_table& avx512bf16_kernels() noexcept;
#elif defined(__aarch64__)
const kernel_table& neon64_kernels() noexcept;
#endif

}  // namespace bnorm::kernels
