// Training: pivots → partial sums per unit (parallel) → per-channel moments and coefficients →
// normalize (parallel) → commit the statistics. Where a unit holds whole channels that fit in
// cache (channels-first channels; channels-last blocks of channels over few rows), all but
// the commit runs unit by unit in one parallel pass. Inference: coefficients → normalize; in
// one parallel pass where units own their channels (channel-major planes, channels-last blocks
// of channels of 2 KiB rows or more); other channels-last tensors in chunks of whole rows. The
// caller's buffers other than dst are written only in the final commit. Distributed training
// splits a training call at its moments: a rank's moments into its exchange block
// (run_local_statistics), then coefficients, normalize and commit from the merged block
// (run_training_merged). Data of any storage type S; the arithmetic in compute_of_t<S>.
#include "execute.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "commit_journal.hpp"
#include "passes.hpp"
#include "statistics.hpp"

namespace bnorm::detail {
namespace {

/// The coefficient arrays in scratch, writable, and `readable`: the view the normalize kernels
/// take (with the slot to start at), made once per call.
template <class T>
struct coefficient_arrays : kernels::coefficients<T> {
  kernels::coefficients<const T> readable;

  /// The arrays of copy `copy` (inference_schedule::row_tasks keeps one a task).
  coefficient_arrays(unsigned char* scratch, const scratch_layout& s, std::size_t copy = 0) {
    T* base = reinterpret_cast<T*>(scratch + s.coeffs) + copy * 4 * s.coeff_stride;
    this->center = base;
    this->scale = base + s.coeff_stride;
    this->shift = base + 2 * s.coeff_stride;
    this->prescale = base + 3 * s.coeff_stride;
    readable = *this;
  }

  /// Per slot for interleaved passes (see replicate_slots), zeros past the period (prescale
  /// 1). The prescales are read only where some channel has one: without, they are left alone.
  void replicate(std::size_t channels, std::size_t period, bool prescaled) const {
    replicate_slots(this->center, channels, period, T(0));
    replicate_slots(this->scale, channels, period, T(0));
    replicate_slots(this->shift, channels, period, T(0));
    if (prescaled) replicate_slots(this->prescale, channels, period, T(1));
  }
};

template <class T>
double value_or(const channel_input& buffer, std::size_t c, double fallback) {
  return buffer.data ? static_cast<double>(static_cast<const T*>(buffer.data)[c]) : fallback;
}

/// The forward statistics as a reduce operation (see passes.hpp): Σd, Σd² around the pivots.
template <class S, class T = kernels::compute_of_t<S>>
struct statistics_reduce {
  const kernels::kernel_set<S>& kern;
  const S* src;
  const T* pivot;
  std::size_t period;
  std::size_t read_ahead_bytes;  // partition::statistics_read_ahead_bytes

  void planes(std::size_t at, std::size_t len, std::size_t planes, std::size_t stride,
              std::size_t channels, std::size_t c0, double* sum, double* sum_sq) const {
    kern.plane_stats(src + at, {len, planes, stride, channels, read_ahead_bytes}, pivot + c0, sum,
                     sum_sq);
  }
  void rows(std::size_t at, std::size_t rows, std::size_t width, std::size_t slot, double* sum,
            double* sum_sq, kernels::sums_mode mode) const {
    kern.interleaved_stats(src + at, {rows, width, period, read_ahead_bytes}, pivot + slot, sum,
                           sum_sq, mode);
  }
};

/// The normalization, through the plan's epilogue, as a map operation (see passes.hpp). It
/// holds the kernels' params for the whole pass: they take them by reference, never as a
/// struct made just before the call.
template <class S, class T = kernels::compute_of_t<S>>
struct normalize_map {
  const kernels::kernel_set<S>& kern;
  const S* src;
  S* dst;
  const S* residual;  // add_relu's z, else null
  std::size_t period;
  kernels::normalize_params<T> params;
  std::size_t residual_read_ahead_bytes = 0;  // the fused planes' (see fused_block)
  bool fetch_next_block = false;              // the fused planes' (see fused_block)

  void planes(std::size_t at, std::size_t len, std::size_t planes, std::size_t stride,
              std::size_t channels, std::size_t first) const {
    kern.plane_normalize(
        src + at, dst + at, residual ? residual + at : nullptr,
        {len, planes, stride, channels, residual_read_ahead_bytes, fetch_next_block}, params,
        first);
  }
  void rows(std::size_t at, std::size_t rows, std::size_t width, std::size_t first) const {
    kern.interleaved_normalize(src + at, dst + at, residual ? residual + at : nullptr,
                               {rows, width, period}, params, first);
  }
};

/// The normalization through `post` (the plan's epilogue unless the call is plain), with
/// streaming stores where `stream` (the partition's choice for the call's path) and dst allows
/// (streams_into).
template <class S, class T = kernels::compute_of_t<S>>
normalize_map<S> make_normalize(const plan_impl& plan, const S* src, S* dst, const void* residual,
                                const kernels::coefficients<const T>& coeffs, bool prescaled,
                                const kernels::epilogue<T>& post, bool stream) {
  return {
      plan.kernels->get<S>(),
      src,
      dst,
      static_cast<const S*>(residual),
      plan.part.period,
      {coeffs, prescaled, streams_into(dst, stream), post},
  };
}

/// One training call: the scratch arrays and the steps over them. Data of storage type S,
/// pivots, coefficients and per-channel values in T.
template <class S>
class training_step {
  using T = kernels::compute_of_t<S>;

 public:
  training_step(const plan_impl& plan, const training_args& args, unsigned char* scratch)
      : plan_(plan),
        p_(plan.part),
        args_(args),
        src_(static_cast<const S*>(args.src)),
        dst_(static_cast<S*>(args.dst)),
        pivot_(reinterpret_cast<T*>(scratch + p_.scratch.pivot)),
        sum_(reinterpret_cast<double*>(scratch + p_.scratch.sum)),
        sum_sq_(reinterpret_cast<double*>(scratch + p_.scratch.sum_sq)),
        mean_(reinterpret_cast<double*>(scratch + p_.scratch.mean)),
        variance_(reinterpret_cast<double*>(scratch + p_.scratch.variance)),
        inv_std_(reinterpret_cast<double*>(scratch + p_.scratch.inv_std)),
        scale_(reinterpret_cast<double*>(scratch + p_.scratch.scale)),
        scratch_(scratch),
        coeffs_(scratch, p_.scratch),
        streams_(plans_training_streams(plan)) {}

  void run() {
    switch (p_.training) {
      case training_schedule::direct:
        tiny_statistics();
        map_pass(plan_, normalize());
        break;
      case training_schedule::fused_planes:
      case training_schedule::fused_column_blocks: fused_training(); return;
      case training_schedule::row_tasks: row_task_training(); return;
      case training_schedule::two_passes:
        two_pass_statistics();
        map_pass(plan_, normalize());
        break;
    }
    commit();
  }

  /// Distributed training: this rank's count, means and biased variances into `exchange`.
  void run_local_statistics(double* exchange) {
    switch (p_.training) {
      case training_schedule::direct: tiny_statistics(); break;
      case training_schedule::row_tasks:
        // In parallel over the units: blocks of whole channels where they are (the backward's
        // fused blocks), else the two passes' chunks. The same bits either way.
        if (!p_.fused_backward) {
          two_pass_statistics();
          break;
        }
        [[fallthrough]];
      case training_schedule::fused_planes:
      case training_schedule::fused_column_blocks:
        fused_pass(plan_, [this](std::size_t c0, std::size_t c1) {
          compute_pivots(c0, c1);
          statistics_of(c0, c1,
                        [&] { reduce_channels(p_, statistics(), c0, c1, mean_, variance_); });
        });
        break;
      case training_schedule::two_passes: two_pass_statistics(); break;
    }
    exchange[0] = local_count();
    std::copy(mean_, mean_ + p_.channels, exchange + 1);
    std::copy(variance_, variance_ + p_.channels, exchange + 1 + p_.channels);
  }

  /// Distributed training: normalize and commit with the whole batch's statistics, `merged`
  /// (count, means, biased variances).
  void run_merged(const double* merged) {
    total_count_ = merged[0];
    const std::size_t channels = p_.channels;
    for (std::size_t c = 0; c < channels; ++c) {
      mean_[c] = merged[1 + c];
      variance_[c] = merged[1 + channels + c];
      inv_std_[c] = inverse_std(variance_[c], plan_.prob.epsilon);
      scale_[c] = value_or<T>(args_.scale, c, 1.0) * inv_std_[c];
    }
    const T* beta = static_cast<const T*>(args_.shift.data);
    prescaled_ = plan_.kernels->get<S>().channel_coefficients(channels, mean_, inv_std_, scale_,
                                                              beta, coeffs_, 0);
    if (p_.kind == traversal::interleaved) {
      coeffs_.replicate(channels, p_.period, prescaled_);
    }
    if (p_.elements > 0) map_pass(plan_, normalize());
    commit();
  }

 private:
  /// Whether finalize_block may still move a pivot that landed far from its channel's mean.
  enum class correction { allowed, done };

  statistics_reduce<S> statistics() const {
    return {plan_.kernels->get<S>(), src_, pivot_, p_.period, p_.statistics_read_ahead_bytes};
  }
  normalize_map<S> normalize() const {
    return make_normalize(plan_, src_, dst_, args_.residual, coeffs_.readable, prescaled_,
                          plan_.epilogue<T>(), streams_);
  }

  /// Pivots, the reduce pass and the merge of its partials into the moments; where some pivot
  /// was far from its mean, the sums again around the mean.
  void two_pass_statistics() {
    compute_pivots();
    reduce_pass(plan_, statistics(), sum_, sum_sq_);
    merge(correction::allowed);
    if (repivoted_) {
      if (p_.kind == traversal::interleaved) replicate_pivots();
      reduce_pass(plan_, statistics(), sum_, sum_sq_);
      merge(correction::done);
    }
  }

  /// Each channel's pivot (see the pivot kernels); rows hold it per slot.
  void compute_pivots() {
    compute_pivots(0, p_.channels);
    if (p_.kind == traversal::interleaved) replicate_pivots();
  }

  void replicate_pivots() {
    for (std::size_t j = p_.channels; j < p_.period; ++j) pivot_[j] = pivot_[j - p_.channels];
  }

  void compute_pivots(std::size_t c0, std::size_t c1) {
    const kernels::kernel_set<S>& kern = plan_.kernels->get<S>();
    if (p_.kind == traversal::planes) {
      kern.plane_pivots(src_ + c0 * p_.spatial,
                        {p_.spatial, p_.batch, p_.channels * p_.spatial, c1 - c0}, pivot_ + c0);
    } else {
      kern.row_pivots(src_ + c0, {p_.rows, c1 - c0, p_.channels}, pivot_ + c0);
    }
  }

  /// The fused schedules' work on a block of whole channels in cache: pivots, statistics,
  /// coefficients and normalization back to back. A block owns its channels: its sums go
  /// straight into mean_ and variance_.
  auto fused_block() {
    if (p_.kind == traversal::interleaved) {
      // Vector loads of the last block's coefficients read the padding: keep it defined (the
      // prescales too: a block may need them).
      coeffs_.replicate(p_.channels, p_.period, true);
    }
    return [this](std::size_t c0, std::size_t c1) {
      compute_pivots(c0, c1);
      const finalized block = statistics_of(
          c0, c1, [&] { reduce_channels(p_, statistics(), c0, c1, mean_, variance_); });
      normalize_map<S> normalize =
          make_normalize(plan_, src_, dst_, args_.residual, coeffs_.readable, block.prescaled,
                         plan_.epilogue<T>(), streams_);
      // x comes from cache here, the residual and the next block's x from memory
      // (partition::residual_read_ahead_bytes, fetch_next_fused_block).
      normalize.residual_read_ahead_bytes = p_.residual_read_ahead_bytes;
      normalize.fetch_next_block = p_.fetch_next_fused_block;
      map_channels(p_, normalize, c0, c1, c0);
    };
  }

  /// A tiny tensor: Σd, Σd² per channel in float64 in one walk over memory, each channel
  /// pivoted on its first value (d = x − pivot is exact in float64 for float32 data), then
  /// finalize_block.
  void tiny_statistics() {
    const std::size_t run = p_.kind == traversal::planes ? p_.spatial : 1;
    for (std::size_t c = 0; c < p_.channels; ++c) {
      pivot_[c] = static_cast<T>(kernels::to_double(src_[c * run]));
    }
    prescaled_ = statistics_of(0, p_.channels, [this] { tiny_sums(); }).prescaled;
    if (p_.kind == traversal::interleaved) {
      coeffs_.replicate(p_.channels, p_.period, prescaled_);
    }
  }

  void tiny_sums() {
    const bool planes = p_.kind == traversal::planes;
    const std::size_t run = planes ? p_.spatial : 1;  // consecutive values of one channel
    std::fill(mean_, mean_ + p_.channels, 0.0);
    std::fill(variance_, variance_ + p_.channels, 0.0);
    const S* x = src_;  // memory order: N planes of C channels, or rows of C values
    const std::size_t outer = planes ? p_.batch : p_.rows;
    for (std::size_t o = 0; o < outer; ++o) {
      for (std::size_t c = 0; c < p_.channels; ++c, x += run) {
        const double k = static_cast<double>(pivot_[c]);
        double sum = 0.0, sum_sq = 0.0;
        for (std::size_t j = 0; j < run; ++j) {
          const double d = kernels::to_double(x[j]) - k;
          sum += d;
          sum_sq += d * d;
        }
        mean_[c] += sum;
        variance_[c] += sum_sq;
      }
    }
  }

  /// The reduce pass's partials merged into Σd, Σd² per channel (held in mean_ and variance_),
  /// then finalized.
  void merge(correction pivots) {
    prescaled_ = false;
    for_each_channel_block(plan_, p_.channels_per_finalize_task,
                           [&](std::size_t c0, std::size_t c1) {
                             merge_partials(p_, c0, c1, sum_, sum_sq_, mean_, variance_);
                             const finalized block = finalize_block(c0, c1, pivots);
                             if (block.prescaled) prescaled_ = true;  // in any order: an OR
                             if (block.repivoted) repivoted_ = true;
                           });
    if (p_.kind == traversal::interleaved) {
      coeffs_.replicate(p_.channels, p_.period, prescaled_);
    }
  }

  struct finalized {
    bool prescaled = false;  // some channel needs a prescale (see kernels::coefficients)
    bool repivoted = false;  // some pivot moved: the block's sums are to be taken again
  };

  /// Channels [c0, c1) whose sums sums() takes into mean_ and variance_ (from their pivots)
  /// and that one unit finalizes: where finalize_block moves a pivot, the sums again (from
  /// cache), once.
  template <class Sums>
  finalized statistics_of(std::size_t c0, std::size_t c1, const Sums& sums) {
    sums();
    finalized block = finalize_block(c0, c1, correction::allowed);
    if (block.repivoted) {
      sums();
      block = finalize_block(c0, c1, correction::done);
    }
    return block;
  }

  /// Σd, Σd² in mean_ and variance_ over channels [c0, c1) → the moments there, 1/sqrt and the
  /// scale, then the coefficients rounded to T, in float64 vectors.
  finalized finalize_block(std::size_t c0, std::size_t c1, correction pivots) {
    const kernels::kernel_set<S>& kern = plan_.kernels->get<S>();
    const T* gamma = static_cast<const T*>(args_.scale.data);
    const T* beta = static_cast<const T*>(args_.shift.data);
    // The kernels square float32 differences: below ~1e-19 those squares lose bits or vanish.
    // That only shows when var + eps is that small too (an eps far below any framework's), so
    // such a channel is summed again, exactly, instead of slowing every block. float64 squares
    // lose theirs below ~1e-308 (subnormal, then zero): a float64 var + eps below 1e-290 is
    // summed again likewise. Beyond ~1e154 they overflow: a channel whose variance is not
    // finite is summed again too, scaled (and stays NaN where its data holds a NaN or an
    // infinity).
    //
    // A pivot far from its channel's mean (the values it was taken from did not represent the
    // channel: zero padding, an outlier, stripes) leaves the float32 squares large next to the
    // variance, and their rounding shows in it: beyond the plan's bound (1.5 to 2 standard
    // deviations, kernels::max_pivot_offset_squared) the pivot moves to the mean and the caller
    // takes the sums again, once.
    const double resum_below = std::is_same<T, float>::value ? 1e-30 : 1e-290;
    finalized result;
    kernels::moment_channels<T> moments;
    moments.channels = c1 - c0;
    moments.count = local_count();
    moments.epsilon = plan_.prob.epsilon;
    moments.pivot = pivot_ + c0;
    moments.gamma = gamma ? gamma + c0 : nullptr;
    moments.sum_to_mean = mean_ + c0;
    moments.sum_sq_to_variance = variance_ + c0;
    moments.inv_std = inv_std_ + c0;
    moments.scale = scale_ + c0;
    moments.resum_below = resum_below;
    const double max_offset_squared = plan_.max_pivot_offset_squared;
    moments.max_offset_squared = max_offset_squared;
    if (kern.channel_moments(moments)) {
      for (std::size_t c = c0; c < c1; ++c) {
        const double variance = variance_[c];
        if (!std::isfinite(variance) || variance + plan_.prob.epsilon < resum_below) {
          set_exact_moments(c);
          continue;
        }
        const double offset = mean_[c] - static_cast<double>(pivot_[c]);
        if (pivots == correction::allowed && offset * offset > max_offset_squared * variance) {
          const T moved = static_cast<T>(mean_[c]);
          result.repivoted = result.repivoted || moved != pivot_[c];
          pivot_[c] = moved;
        }
      }
    }
    result.prescaled = kern.channel_coefficients(c1 - c0, mean_ + c0, inv_std_ + c0, scale_ + c0,
                                                 beta ? beta + c0 : nullptr, coeffs_, c0);
    return result;
  }

  /// Channel c's moments, 1/sqrt and scale from exact float64 passes over its values.
  void set_exact_moments(std::size_t c) {
    const moments m =
        exact_moments(p_.batch, p_.spatial, plan_.prob.epsilon, [&](std::size_t n, std::size_t s) {
          return kernels::to_double(src_[p_.element(n, c, s)]);
        });
    mean_[c] = m.mean;
    variance_[c] = m.variance;
    inv_std_[c] = m.inv_std;
    scale_[c] = value_or<T>(args_.scale, c, 1.0) * inv_std_[c];
  }

  /// The fused schedules: each block commits its own channels as soon as they are final, on
  /// the core that holds them (commit_journal.hpp has why, and how a failed pass undoes it;
  /// a pass on the calling thread alone cannot fail and keeps no journal); the step counter
  /// last.
  void fused_training() {
    const running_update update = this_step();
    const commit_journal<T> journal = journal_of(update);
    const bool journaled = !fused_pass_runs_inline(plan_);
    if (journaled) journal.open();
    try {
      fused_pass(plan_, fused_block(), [&](std::size_t c0, std::size_t c1) {
        if (journaled) journal.keep(c0, c1);
        commit_channels(update, c0, c1);
      });
    } catch (...) {
      if (journaled) journal.restore();
      throw;
    }
    count_step(update);
  }

  /// training_schedule::row_tasks: each body of tasks [b, e) takes every channel's statistics
  /// over all the rows in task b's copy of the arrays (on one thread, once for all the tasks)
  /// and normalizes the tasks' rows; task 0's body commits, journaled as the fused schedules'
  /// blocks are; the step counter last. In place on several threads, the statistics first.
  void row_task_training() {
    const bool parallel = !plan_.threads.runs_inline(p_.row_tasks, 1, p_.serial);
    if (parallel && static_cast<const void*>(dst_) == static_cast<const void*>(src_)) {
      // In place, a task's rows would be overwritten while another task still reads them for
      // its statistics: the statistics once, on this thread, before any row is written.
      const bool prescaled = all_row_statistics().prescaled;
      plan_.threads.for_each(p_.row_tasks, 1, p_.serial, [&](std::size_t b, std::size_t e) {
        normalize_rows(b * p_.rows_per_row_task, std::min(p_.rows, e * p_.rows_per_row_task),
                       prescaled);
      });
      commit();
      return;
    }
    const running_update update = this_step();
    const commit_journal<T> journal = journal_of(update);
    if (parallel) journal.open();
    try {
      plan_.threads.for_each(p_.row_tasks, 1, p_.serial, [&](std::size_t b, std::size_t e) {
        training_step task(plan_, args_, scratch_ + b * p_.scratch.training_copy_bytes);
        task.statistics_and_rows(b * p_.rows_per_row_task,
                                 std::min(p_.rows, e * p_.rows_per_row_task));
        if (b == 0) {
          if (parallel) journal.keep(0, p_.channels);
          task.commit_channels(update, 0, p_.channels);
        }
      });
    } catch (...) {
      if (parallel) journal.restore();
      throw;
    }
    count_step(update);
  }

  /// A row task: every channel's statistics over all the rows, then rows [r0, r1) normalized.
  void statistics_and_rows(std::size_t r0, std::size_t r1) {
    normalize_rows(r0, r1, all_row_statistics().prescaled);
  }

  /// Every channel's statistics over all the rows, as one fused column block of all the
  /// channels takes them (the same bits), and their coefficients.
  finalized all_row_statistics() {
    coeffs_.replicate(p_.channels, p_.period, true);  // rows of C slots: the padding alone
    compute_pivots(0, p_.channels);
    return statistics_of(0, p_.channels, [&] {
      reduce_channels(p_, statistics(), 0, p_.channels, mean_, variance_);
    });
  }

  /// Rows [r0, r1) normalized with the coefficients all_row_statistics made.
  void normalize_rows(std::size_t r0, std::size_t r1, bool prescaled) const {
    if (r0 < r1) {
      make_normalize(plan_, src_, dst_, args_.residual, coeffs_.readable, prescaled,
                     plan_.epilogue<T>(), streams_)
          .rows(r0 * p_.period, r1 - r0, p_.period, 0);
    }
  }

  /// The batch statistics, the running statistics, then the step counter: the only writes to
  /// the caller's buffers besides dst, made once everything else has succeeded.
  void commit() {
    const running_update update = this_step();
    commit_channels(update, 0, p_.channels);
    count_step(update);
  }

  /// How this step blends the batch statistics into the running ones.
  struct running_update {
    bool active = false;
    std::int64_t batches_tracked = 0;  // num_batches_tracked after this step
    double batch_weight = 0.0;
    double bessel = 1.0;  // running_rule::variance_factor
  };
  running_update this_step() const {
    if (!plan_.options.update_running_stats) return {};
    const std::int64_t tracked = args_.num_batches_tracked ? *args_.num_batches_tracked + 1 : 0;
    const running_rule rule = make_running_rule(plan_.options, tracked);
    const double count = total_count_;
    return {true, tracked, rule.batch_weight, rule.variance_factor(count)};
  }
  void count_step(const running_update& update) const {
    if (update.active && args_.num_batches_tracked) {
      *args_.num_batches_tracked = update.batches_tracked;
    }
  }

  /// The journal of the commits a parallel pass makes (commit_journal.hpp): the batch
  /// statistics, and the running ones where this step updates them.
  commit_journal<T> journal_of(const running_update& update) const {
    T* const outputs[] = {static_cast<T*>(args_.batch_mean.data),
                          static_cast<T*>(args_.batch_mean_residual.data),
                          static_cast<T*>(args_.batch_inv_std.data),
                          update.active ? static_cast<T*>(args_.running_mean.data) : nullptr,
                          update.active ? static_cast<T*>(args_.running_var.data) : nullptr};
    return {outputs, p_.channels, scratch_as<T>(p_.scratch.kept),
            scratch_as<unsigned char>(p_.scratch.committed)};
  }

  /// Channels [c0, c1) of the batch and running statistics.
  void commit_channels(const running_update& update, std::size_t c0, std::size_t c1) const {
    const auto from_c0 = [c0](const channel_output& b) {
      return b.data ? static_cast<T*>(b.data) + c0 : nullptr;
    };
    kernels::statistics_commit<T> commit;
    commit.channels = c1 - c0;
    commit.mean = mean_ + c0;
    commit.variance = variance_ + c0;
    commit.inv_std = inv_std_ + c0;
    commit.round_to_odd = plan_.half_parameters;
    commit.batch_mean = from_c0(args_.batch_mean);
    commit.batch_mean_residual = from_c0(args_.batch_mean_residual);
    commit.batch_inv_std = from_c0(args_.batch_inv_std);
    if (update.active) {
      commit.running_mean = from_c0(args_.running_mean);
      commit.running_var = from_c0(args_.running_var);
      commit.variance_factor = update.bessel;
      commit.batch_weight = update.batch_weight;
    }
    plan_.kernels->get<S>().commit_statistics(commit);
  }

  template <class U>
  U* scratch_as(std::size_t offset) const {
    return reinterpret_cast<U*>(scratch_ + offset);
  }

  /// Values per channel in this call's tensor.
  double local_count() const { return static_cast<double>(p_.per_channel); }

  const plan_impl& plan_;
  const partition& p_;
  const training_args& args_;
  const S* src_;
  S* dst_;
  T* pivot_;
  double* sum_;
  double* sum_sq_;
  double* mean_;
  double* variance_;
  double* inv_std_;
  double* scale_;
  unsigned char* scratch_;
  coefficient_arrays<T> coeffs_;
  const bool streams_;  // whether the map streams y (plans_training_streams)
  // Values per channel in the batch whose statistics are committed: this call's, or every
  // rank's in a distributed step.
  double total_count_ = local_count();
  std::atomic<bool> prescaled_{false};  // some channel's prescale is not 1
  std::atomic<bool> repivoted_{false};  // some pivot moved: the sums are to be taken again
};

/// One inference call: coefficients from the running statistics, then the normalization.
template <class S>
class inference_step {
  using T = kernels::compute_of_t<S>;

 public:
  inference_step(const plan_impl& plan, const inference_args& args, unsigned char* scratch,
                 bool plain)
      : plan_(plan),
        post_(plain ? plain_epilogue : plan.epilogue<T>()),
        p_(plan.part),
        kern_(plan.kernels->get<S>()),
        args_(args),
        src_(static_cast<const S*>(args.src)),
        dst_(static_cast<S*>(args.dst)),
        scratch_(scratch),
        coeffs_(scratch, p_.scratch),
        streams_(plans_inference_streams(plan)) {}

  void run() {
    switch (p_.inference) {
      case inference_schedule::channel_planes: channel_planes_pass(); return;
      case inference_schedule::row_tasks: row_tasks_pass(); return;
      case inference_schedule::memory_order_planes:
      case inference_schedule::row_chunks: break;
    }
    // Planes in memory order and row chunks need every channel's coefficients (laid out per
    // slot for rows) before the normalization.
    std::atomic<bool> prescaled{false};
    for_each_channel_block(plan_, p_.channels_per_coefficient_task,
                           [&](std::size_t c0, std::size_t c1) {
                             if (set_coefficients(c0, c1, coeffs_, c0))
                               prescaled = true;  // any order: an OR
                           });
    const normalize_map<S> normalize = make_normalize(plan_, src_, dst_, args_.residual,
                                                      coeffs_.readable, prescaled, post_, streams_);
    if (p_.kind == traversal::interleaved) coeffs_.replicate(p_.channels, p_.period, prescaled);
    map_pass(plan_, normalize, placement());
  }

 private:
  /// The threads the passes' units go to (partition::inference_on_same_threads).
  unit_placement placement() const {
    return p_.inference_on_same_threads ? unit_placement::same_threads : unit_placement::balanced;
  }

  /// The coefficients of channels [c0, c1), written from index `first` of out's arrays, in float64
  /// vectors: each channel's operations are the same in any lane and in the kernel's scalar
  /// code, so how the channels are blocked does not change a bit.
  bool set_coefficients(std::size_t c0, std::size_t c1, const kernels::coefficients<T>& out,
                        std::size_t first) const {
    const auto at = [c0](const channel_input& buffer) {
      return buffer.data ? static_cast<const T*>(buffer.data) + c0 : nullptr;
    };
    return kern_.inference_coefficients(c1 - c0, plan_.prob.epsilon, at(args_.mean), at(args_.var),
                                        at(args_.scale), at(args_.shift), out, first);
  }

  /// Tasks of whole rows, each working out every channel's coefficients in its own copy (a
  /// call given several tasks uses its first task's copy) before normalizing its rows: on
  /// one thread the coefficients are worked out once, on more each core writes and reads its
  /// own. Rows here hold one period of C slots, so only the padding is replicated.
  void row_tasks_pass() const {
    plan_.threads.for_each(
        p_.row_tasks, 1, p_.serial,
        [&](std::size_t b, std::size_t e) {
          const coefficient_arrays<T> copy(scratch_, p_.scratch, b);
          const bool prescaled = set_coefficients(0, p_.channels, copy, 0);
          copy.replicate(p_.channels, p_.period, true);
          const std::size_t r0 = b * p_.rows_per_row_task;
          const std::size_t r1 = std::min(p_.rows, e * p_.rows_per_row_task);
          if (r0 < r1) {
            make_normalize(plan_, src_, dst_, args_.residual, copy.readable, prescaled, post_,
                           streams_)
                .rows(r0 * p_.period, r1 - r0, p_.period, 0);
          }
        },
        placement());
  }

  /// Channel-major planes: each task works out its own channels' coefficients, 64 at a time,
  /// in one parallel pass (a pass of its own for them costs more than it saves on short
  /// planes: docs/design.md). A group pays the calls of its two kernels once, however many
  /// channels it holds (docs/design.md, `channel_planes_pass`).
  void channel_planes_pass() const {
    plan_.threads.for_each(
        p_.units, p_.units_per_task, p_.serial,
        [&](std::size_t b, std::size_t e) {
          constexpr std::size_t group = 64;
          T center_k[group], scale_k[group], shift_k[group], prescale_k[group];
          const kernels::coefficients<T> k(center_k, scale_k, shift_k, prescale_k);
          const kernels::coefficients<const T> readable(k);
          // Made once per task: only whether a group has prescales changes.
          normalize_map<S> normalize =
              make_normalize(plan_, src_, dst_, args_.residual, readable, false, post_, streams_);
          for (std::size_t u0 = b; u0 < e; u0 += group) {
            const std::size_t u1 = std::min(u0 + group, e);
            const std::size_t c0 = u0 / p_.chunks_per_channel;
            const std::size_t c1 = (u1 - 1) / p_.chunks_per_channel + 1;
            normalize.params.prescaled = set_coefficients(c0, c1, k, 0);
            if (p_.chunks_per_channel == 1) {
              map_channels(p_, normalize, c0, c1, 0);
              continue;
            }
            for (std::size_t u = u0; u < u1; ++u) {
              map_unit(p_, normalize, u, u / p_.chunks_per_channel - c0);
            }
          }
        },
        placement());
  }

  static constexpr kernels::epilogue<T> plain_epilogue{};

  const plan_impl& plan_;
  const kernels::epilogue<T>& post_;  // the plan's activation, or none (plain)
  const partition& p_;
  const kernels::kernel_set<S>& kern_;
  const inference_args& args_;
  const S* src_;
  S* dst_;
  unsigned char* scratch_;
  coefficient_arrays<T> coeffs_;
  const bool streams_;  // the plan streams y for this call's threads (plans_inference_streams)
};

}  // namespace

template <class S>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch) {
  training_step<S>(plan, args, scratch).run();
}

template <class S>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch,
                   bool plain) {
  inference_step<S>(plan, args, scratch, plain).run();
}

template <class S>
void run_local_statistics(const plan_impl& plan, const training_args& args, unsigned char* scratch,
                          double* exchange) {
  training_step<S>(plan, args, scratch).run_local_statistics(exchange);
}

template <class S>
void run_training_merged(const plan_impl& plan, const training_args& args, unsigned char* scratch,
                         const double* merged) {
  training_step<S>(plan, args, scratch).run_merged(merged);
}

#define BNORM_INSTANTIATE_FORWARD(S)                                                             \
  template void run_training<S>(const plan_impl&, const training_args&, unsigned char*);         \
  template void run_inference<S>(const plan_impl&, const inference_args&, unsigned char*, bool); \
  template void run_local_statistics<S>(const plan_impl&, const training_args&, unsigned char*,  \
                                        double*);                                                \
  template void run_training_merged<S>(const plan_impl&, const training_args&, unsigned char*,   \
                                       const double*);
BNORM_INSTANTIATE_FORWARD(float)
BNORM_INSTANTIATE_FORWARD(double)
BNORM_INSTANTIATE_FORWARD(kernels::bfloat16)
BNORM_INSTANTIATE_FORWARD(kernels::float16)
#undef BNORM_INSTANTIATE_FORWARD

}  // namespace bnorm::detail
