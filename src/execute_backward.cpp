// The backward paths, composed of the generic passes (passes.hpp) on the training partition.
// Training: the sums Σdy and Σdy·(x − mean) per unit (reduce) → per channel in float64, dγ, dβ
// and the dx coefficients → dx (map); where a unit holds whole channels that fit in cache, the
// three back to back on each block, in one parallel pass (one read of x and dy). Frozen: dx =
// dy·γ/sqrt(running_var + eps) is the inference map with a zero mean (one read of dy); dγ and
// dβ, when asked, take a reduce pass around the running mean. The caller's dγ and dβ are
// written once their channels' sums are whole: after the reduce pass, or by the fused block that
// summed them (never before every check has passed).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

#include "element_types.hpp"
#include "execute.hpp"
#include "passes.hpp"
#include "statistics.hpp"

namespace bnorm::detail {
namespace {

/// The gradient sums as a reduce operation (see passes.hpp), around per-channel (per-slot)
/// centers.
template <class S, class T = kernels::compute_of_t<S>>
struct gradient_reduce {
  const kernels::kernel_set<S>& kern;
  const S* src;
  const S* diff_dst;
  const T* center;
  std::size_t period;
  std::size_t read_ahead_bytes;  // partition::gradient_read_ahead_bytes
  bool in_row_order;             // partition::gradient_sums_in_row_order

  void planes(std::size_t at, std::size_t len, std::size_t planes, std::size_t stride,
              std::size_t channels, std::size_t c0, double* sum, double* sum_sq) const {
    kern.plane_gradient_sums(src + at, diff_dst + at,
                             {len, planes, stride, channels, read_ahead_bytes}, center + c0, sum,
                             sum_sq);
  }
  void rows(std::size_t at, std::size_t rows, std::size_t width, std::size_t slot, double* sum,
            double* sum_sq, kernels::sums_mode mode) const {
    kern.interleaved_gradient_sums(src + at, diff_dst + at,
                                   {rows, width, period, read_ahead_bytes, in_row_order},
                                   center + slot, sum, sum_sq, mode);
  }
};

/// dx as a map operation (see passes.hpp), holding the kernels' params for the pass.
template <class S, class T = kernels::compute_of_t<S>>
struct gradient_map {
  const kernels::kernel_set<S>& kern;
  const S* src;
  const S* diff_dst;
  S* diff_src;
  std::size_t period;
  bool fetch_next_block;  // the fused planes' (partition::fetch_next_fused_backward_block)
  std::size_t row_read_ahead_bytes;  // partition::row_gradient_read_ahead_bytes
  kernels::gradient_params<T> params;

  void planes(std::size_t at, std::size_t len, std::size_t planes, std::size_t stride,
              std::size_t channels, std::size_t first) const {
    kern.plane_gradient(src + at, diff_dst + at, diff_src + at,
                        {len, planes, stride, channels, 0, fetch_next_block}, params, first);
  }
  void rows(std::size_t at, std::size_t rows, std::size_t width, std::size_t first) const {
    kern.interleaved_gradient(src + at, diff_dst + at, diff_src + at,
                              {rows, width, period, row_read_ahead_bytes}, params, first);
  }
};

template <class T>
const T* data_of(const channel_input& buffer) {
  return static_cast<const T*>(buffer.data);
}

/// One backward call that needs the sums: the training backward, and a frozen backward that
/// computes dγ or dβ.
template <class S>
class gradient_step {
  using T = kernels::compute_of_t<S>;

 public:
  gradient_step(const plan_impl& plan, const backward_args& args, bool frozen,
                unsigned char* scratch)
      : plan_(plan),
        p_(plan.part),
        kern_(plan.backward_kernels->get<S>()),
        args_(args),
        // dβ alone needs no x: dy stands in for it (its Σdy·(x − 0) is left unused).
        src_(static_cast<const S*>(args.src ? args.src : args.diff_dst)),
        diff_dst_(static_cast<const S*>(args.diff_dst)),
        diff_src_(frozen ? nullptr : static_cast<S*>(args.diff_src)),
        streams_(diff_src_ && streams_into(diff_src_, plans_backward_streams(plan))),
        center_(reinterpret_cast<T*>(scratch + p_.scratch.pivot)),
        sum_(reinterpret_cast<double*>(scratch + p_.scratch.sum)),
        sum_sq_(reinterpret_cast<double*>(scratch + p_.scratch.sum_sq)),
        sum_dy_(reinterpret_cast<double*>(scratch + p_.scratch.mean)),
        sum_dy_d_(reinterpret_cast<double*>(scratch + p_.scratch.variance)) {
    T* base = reinterpret_cast<T*>(scratch + p_.scratch.coeffs);
    const std::size_t stride = p_.scratch.coeff_stride;
    coeffs_ = {base,
               base + stride,
               base + 2 * stride,
               base + 3 * stride,
               base + 4 * stride,
               base + 5 * stride,
               base + 6 * stride};
    readable_ = coeffs_;
  }

  void run() {
    if (fused()) {
      // Vector loads of the last block's coefficients read past the period: keep it defined
      // (the blocks' slots are their channels: nothing to replicate).
      if (p_.kind == traversal::interleaved) replicate_coefficients();
      // Each block's centers and gradients are set and written by the thread that sums it,
      // while they are in its cache (as the forward's commit, execute.cpp).
      fused_pass(
          plan_,
          [this](std::size_t c0, std::size_t c1) {
            set_centers(c0, c1);
            reduce_channels(p_, reduce(), c0, c1, sum_dy_, sum_dy_d_);
            channel_math(c0, c1);
            if (diff_src_) map_channels(p_, map(true), c0, c1, c0);
          },
          [this](std::size_t c0, std::size_t c1) { write_gradients(c0, c1); });
      return;
    }
    set_centers();
    reduce_pass(plan_, reduce(), sum_, sum_sq_);
    for_each_channel_block(plan_, p_.channels_per_finalize_task,
                           [this](std::size_t c0, std::size_t c1) {
                             merge_partials(p_, c0, c1, sum_, sum_sq_, sum_dy_, sum_dy_d_);
                             channel_math(c0, c1);
                           });
    if (diff_src_) {
      if (p_.kind == traversal::interleaved) replicate_coefficients();
      map_pass(plan_, map());
    }
    write_gradients(0, p_.channels);
  }

  /// dβ and dγ of channels [c0, c1), from Σdy and the dγ in place of Σdy·(x − mean).
  void write_gradients(std::size_t c0, std::size_t c1) const {
    if (T* out = static_cast<T*>(args_.diff_shift.data)) {
      kern_.narrow(c1 - c0, sum_dy_ + c0, out + c0, plan_.half_parameters);
    }
    if (T* out = static_cast<T*>(args_.diff_scale.data)) {
      kern_.narrow(c1 - c0, sum_dy_d_ + c0, out + c0, plan_.half_parameters);
    }
  }

  /// Distributed training: this rank's count, Σdy and Σdy·(x − mean) into `exchange`.
  void run_local(double* exchange) {
    set_centers();
    if (fused()) {
      fused_pass(plan_, [this](std::size_t c0, std::size_t c1) {
        reduce_channels(p_, reduce(), c0, c1, sum_dy_, sum_dy_d_);
        sum_small_products_exactly(c0, c1);
      });
    } else {
      reduce_pass(plan_, reduce(), sum_, sum_sq_);
      for_each_channel_block(plan_, p_.channels_per_finalize_task,
                             [this](std::size_t c0, std::size_t c1) {
                               merge_partials(p_, c0, c1, sum_, sum_sq_, sum_dy_, sum_dy_d_);
                               sum_small_products_exactly(c0, c1);
                             });
    }
    const std::size_t channels = p_.channels;
    exchange[0] = static_cast<double>(p_.per_channel);
    std::copy(sum_dy_, sum_dy_ + channels, exchange + 1);
    std::copy(sum_dy_d_, sum_dy_d_ + channels, exchange + 1 + channels);
  }

  /// Distributed training: dγ and dβ from this rank's sums (`local`), then dx from the whole
  /// batch's (`summed`, with its count).
  void run_merged(const double* local, const double* summed) {
    const std::size_t channels = p_.channels;
    // This rank's dβ and dγ wait in the partials' arrays (at least C long) until the end.
    double* local_dbeta = sum_;
    double* local_dgamma = sum_sq_;
    if (args_.diff_scale.data || args_.diff_shift.data) {
      std::copy(local + 1, local + 1 + channels, sum_dy_);
      std::copy(local + 1 + channels, local + 1 + 2 * channels, sum_dy_d_);
      S* const dx = diff_src_;
      diff_src_ = nullptr;               // the sums alone: dγ in place of Σdy·(x − mean)
      channel_math(0, channels, false);  // (run_local took them exactly where they had to)
      diff_src_ = dx;
      std::copy(sum_dy_, sum_dy_ + channels, local_dbeta);
      std::copy(sum_dy_d_, sum_dy_d_ + channels, local_dgamma);
    }
    if (diff_src_) {
      set_centers();
      count_ = summed[0];
      std::copy(summed + 1, summed + 1 + channels, sum_dy_);
      std::copy(summed + 1 + channels, summed + 1 + 2 * channels, sum_dy_d_);
      channel_math(0, channels, false);
      if (p_.kind == traversal::interleaved) replicate_coefficients();
      map_pass(plan_, map());
    }
    const bool odd = plan_.half_parameters;
    if (T* out = static_cast<T*>(args_.diff_shift.data)) {
      kern_.narrow(channels, local_dbeta, out, odd);
    }
    if (T* out = static_cast<T*>(args_.diff_scale.data)) {
      kern_.narrow(channels, local_dgamma, out, odd);
    }
  }

 private:
  bool fused() const { return p_.fused_backward; }

  /// The centers of the sums and of dx: the mean per channel, per slot for rows (slot j is
  /// channel j % C).
  void set_centers() const {
    set_centers(0, p_.channels);
    if (p_.kind == traversal::interleaved) {
      for (std::size_t j = p_.channels; j < p_.period; ++j) center_[j] = center_[j - p_.channels];
    }
  }
  /// Channels [c0, c1)'s centers (slots c0... : the fused column blocks' period is C).
  void set_centers(std::size_t c0, std::size_t c1) const {
    const T* mean = data_of<T>(args_.mean);
    if (mean) {
      std::copy(mean + c0, mean + c1, center_ + c0);
    } else {
      std::fill(center_ + c0, center_ + c1, T(0));
    }
  }

  /// Distributed training: this rank's channels whose sums hold small products (see
  /// kernels::sums_small_products) summed again in float64 before they are exchanged.
  void sum_small_products_exactly(std::size_t c0, std::size_t c1) const {
    if constexpr (std::is_same_v<T, float>) {
      sum_exactly(
          c0, c1,
          [this](std::size_t c) {
            return kernels::sums_small_products(sum_dy_d_[c], sum_dy_[c], inv_std_at(c));
          },
          [](std::size_t, std::size_t) {});
    }
  }

  /// Channel c's 1/std, given or from the variance; 0 where neither is (dβ alone).
  double inv_std_at(std::size_t c) const {
    if (const T* inv_std = data_of<T>(args_.inv_std)) return static_cast<double>(inv_std[c]);
    if (const T* var = data_of<T>(args_.var)) return inverse_std(var[c], plan_.prob.epsilon);
    return 0.0;
  }

  /// The Σdy and Σdy·(x − mean) of the channels c of [c0, c1) for which `needs(c)` (which reads
  /// channel c's sums alone), summed again in float64 (the kernels' *_f64 sums); then `then(a,
  /// b)` for each run [a, b) of such channels, so that their math is done again a run at a time.
  /// Planes: each run's planes. Rows: the columns from one such channel to the last within a
  /// chunk, every row read once a chunk.
  template <class Needs, class Then>
  void sum_exactly(std::size_t c0, std::size_t c1, const Needs& needs, const Then& then) const {
    if (p_.kind == traversal::planes) {
      for (std::size_t c = c0; c < c1;) {
        if (!needs(c)) {
          ++c;
          continue;
        }
        const std::size_t first = c;
        while (c < c1 && needs(c)) ++c;
        const std::size_t at = p_.element(0, first, 0);
        kern_.plane_gradient_sums_f64(src_ + at, diff_dst_ + at,
                                      {p_.spatial, p_.batch, p_.channels * p_.spatial, c - first},
                                      center_ + first, sum_dy_ + first, sum_dy_d_ + first);
        then(first, c);
      }
      return;
    }
    // Rows of C values (each spatial position of each sample), slot j channel first + j. A
    // chunk as wide as a finalize task's channels reads each row's run of them once.
    constexpr std::size_t chunk = 512;
    const kernels::row_block rows{p_.elements / p_.channels, 0, p_.channels};
    for (std::size_t c = c0; c < c1;) {
      if (!needs(c)) {
        ++c;
        continue;
      }
      bool chosen[chunk];
      kernels::row_block columns = rows;
      for (std::size_t j = 0; j < chunk && c + j < c1; ++j) {
        chosen[j] = needs(c + j);
        if (chosen[j]) columns.width = j + 1;
      }
      double sum[chunk], sum_d[chunk];
      kern_.interleaved_gradient_sums_f64(src_ + c, diff_dst_ + c, columns, center_ + c, sum,
                                          sum_d);
      for (std::size_t j = 0; j < columns.width;) {
        if (!chosen[j]) {
          ++j;
          continue;
        }
        const std::size_t first = j;
        for (; j < columns.width && chosen[j]; ++j) {
          sum_dy_[c + j] = sum[j];
          sum_dy_d_[c + j] = sum_d[j];
        }
        then(c + first, c + j);
      }
      c += columns.width;
    }
  }

  gradient_reduce<S> reduce() const {
    return {kern_,
            src_,
            diff_dst_,
            center_,
            p_.period,
            p_.gradient_read_ahead_bytes,
            p_.gradient_sums_in_row_order};
  }
  /// dx's map; of a fused block, fetching the next block's x and dy as it streams where the
  /// plan says (partition::fetch_next_fused_backward_block).
  gradient_map<S> map(bool of_fused_block = false) const {
    const bool prescaled = prescaled_.load(std::memory_order_relaxed);
    return {kern_,
            src_,
            diff_dst_,
            diff_src_,
            p_.period,
            of_fused_block && p_.fetch_next_fused_backward_block,
            p_.row_gradient_read_ahead_bytes,
            {readable_, prescaled, streams_}};
  }

  /// dγ (in place of Σdy·(x − mean)) and the dx coefficients of channels [c0, c1), from sums
  /// of this call's data (`own_data`) or of the whole distributed batch.
  void channel_math(std::size_t c0, std::size_t c1, bool own_data = true) const {
    if (!args_.inv_std.data && !args_.var.data) return;  // dβ alone: Σdy is all it takes
    kernels::gradient_flags flags =
        kern_.channel_gradients(channels_of(c0, c1), diff_src_ ? &coeffs_ : nullptr, c0);
    if (flags.small_products && own_data) {
      // The kernel's sums were replaced by dγ = inv_std·Σdy·(x − mean); the channels whose Σ
      // is small are summed again and their math done again.
      sum_exactly(
          c0, c1,
          [this](std::size_t c) {
            const double inv = inv_std_at(c);
            return kernels::sums_small_products(sum_dy_d_[c] / inv, sum_dy_[c], inv);
          },
          [this, &flags](std::size_t first, std::size_t end) {
            flags.prescaled = kern_
                                  .channel_gradients(channels_of(first, end),
                                                     diff_src_ ? &coeffs_ : nullptr, first)
                                  .prescaled ||
                              flags.prescaled;
          });
    }
    // Blocks run in parallel: an OR in any order. A block's map reads its own channels'
    // prescales whatever the flag says of others.
    if (flags.prescaled) prescaled_.store(true, std::memory_order_relaxed);
  }

  /// The per-channel inputs of channels [c0, c1).
  kernels::gradient_channels<T> channels_of(std::size_t c0, std::size_t c1) const {
    const auto at = [c0](const channel_input& buffer) {
      return buffer.data ? data_of<T>(buffer) + c0 : nullptr;
    };
    kernels::gradient_channels<T> in;
    in.channels = c1 - c0;
    in.count = count_;
    in.epsilon = plan_.prob.epsilon;
    in.mean = at(args_.mean);
    in.mean_residual = at(args_.mean_residual);
    in.inv_std = at(args_.inv_std);
    in.variance = at(args_.var);
    in.gamma = at(args_.scale);
    in.sum_dy = sum_dy_ + c0;
    in.sum_dy_d = sum_dy_d_ + c0;
    return in;
  }

  /// Per slot for interleaved passes, zeros past the period (prescale 1; see replicate_slots).
  void replicate_coefficients() const {
    for (T* a :
         {coeffs_.center, coeffs_.dy_center, coeffs_.dy_scale, coeffs_.x_scale, coeffs_.shift}) {
      replicate_slots(a, p_.channels, p_.period, T(0));
    }
    replicate_slots(coeffs_.prescale, p_.channels, p_.period, T(1));
    replicate_slots(coeffs_.dy_prescale, p_.channels, p_.period, T(1));
  }

  const plan_impl& plan_;
  const partition& p_;
  const kernels::kernel_set<S>& kern_;
  const backward_args& args_;
  const S* src_;
  const S* diff_dst_;
  S* diff_src_;         // null: dx is not computed here
  const bool streams_;  // whether the map streams dx (plans_backward_streams)
  double count_ = static_cast<double>(p_.per_channel);  // M: the whole batch's when distributed
  T* center_;
  double* sum_;
  double* sum_sq_;
  double* sum_dy_;
  double* sum_dy_d_;
  kernels::gradient_coefficients<T> coeffs_;
  kernels::gradient_coefficients<const T> readable_;
  mutable std::atomic<bool> prescaled_{false};  // some channel's prescale is not 1
};

/// dy through the plan's activation into `out`: elementwise, in parallel chunks (the result
/// does not depend on them).
template <class S>
void mask_gradient(const plan_impl& plan, const backward_args& args, S* out) {
  using T = kernels::compute_of_t<S>;
  const partition& p = plan.part;
  const kernels::epilogue<T>& post = plan.epilogue<T>();
  const bool clamp = post.kind == kernels::epilogue_kind::clamp;
  // A clamped output holds its bound as stored (rounded, in a half type): compared with the
  // stored bounds, every clamped output is masked. (An output that rounds to a bound counts as
  // clamped: its value no longer tells.) A bound clamps unless it is the infinity of its own
  // side (−inf below, +inf above): a finite one though the storage type may hold it as an
  // infinity (float16's clamp_max of 1e5), and +inf below or −inf above, which clamp every
  // output.
  const auto stored = [](T bound) {
    return static_cast<T>(kernels::to_double(kernels::from_double<S>(bound)));
  };
  kernels::mask_bounds<T> bounds;
  bounds.lo = clamp ? stored(post.lo) : T(0);
  bounds.hi = clamp ? stored(post.hi) : std::numeric_limits<T>::infinity();
  constexpr double inf = std::numeric_limits<double>::infinity();
  bounds.clamps_below = !clamp || plan.options.clamp_min != -inf;
  bounds.clamps_above = clamp && plan.options.clamp_max != inf;
  const S* dy = static_cast<const S*>(args.diff_dst);
  const S* y = static_cast<const S*>(args.dst);
  const std::size_t chunk = 32 * 1024;  // elements: about a unit's bytes
  const std::size_t chunks = (p.elements + chunk - 1) / chunk;
  plan.threads.for_each(chunks, 1, p.serial, [&](std::size_t b, std::size_t e) {
    const std::size_t begin = b * chunk, end = std::min(e * chunk, p.elements);
    plan.backward_kernels->get<S>().activation_mask(dy + begin, y + begin, out + begin, end - begin,
                                                    bounds);
  });
}

}  // namespace

template <class S>
void run_backward(const plan_impl& plan, const backward_args& given, bool frozen,
                  unsigned char* scratch, void* masked, const backward_exchange* exchange) {
  backward_args args = given;
  if (masked != nullptr) {  // a fused activation: the gradient of its input first
    mask_gradient<S>(plan, given, static_cast<S*>(masked));
    args.diff_dst = masked;
  }
  if (exchange != nullptr) {
    gradient_step<S> step(plan, args, false, scratch);
    if (exchange->writes_local_sums()) {
      step.run_local(exchange->local_out);
    } else {
      step.run_merged(exchange->local, exchange->summed);
    }
    return;
  }
  if (args.diff_scale.data || args.diff_shift.data || (!frozen && args.diff_src)) {
    gradient_step<S>(plan, args, frozen, scratch).run();
  }
  if (frozen && args.diff_src) {
    // dx = dy·γ/sqrt(running_var + eps): the inference map of dy with a zero mean and no shift
    // (and without the plan's activation).
    inference_args as_inference;
    as_inference.src = args.diff_dst;
    as_inference.dst = args.diff_src;
    as_inference.scale = args.scale;
    as_inference.var = args.var;
    run_inference<S>(plan, as_inference, scratch, true);
  }
}

template void run_backward<float>(const plan_impl&, const backward_args&, bool, unsigned char*,
                                  void*, const backward_exchange*);
template void run_backward<double>(const plan_impl&, const backward_args&, bool, unsigned char*,
                                   void*, const backward_exchange*);
template void run_backward<kernels::bfloat16>(const plan_impl&, const backward_args&, bool,
                                              unsigned char*, void*, const backward_exchange*);
template void run_backward<kernels::float16>(const plan_impl&, const backward_args&, bool,
                                             unsigned char*, void*, const backward_exchange*);

}  // namespace bnorm::detail
