// Training: pivots → partial sums per unit (parallel) → per-channel moments and coefficients →
// normalize (parallel) → commit the statistics. Where a unit holds whole channels that fit in
// cache (channels-first channels; channels-last blocks of channels over few rows), all but
// the commit runs unit by unit in one parallel pass. Inference: coefficients → normalize; in
// one parallel pass where units own their channels (channel-major planes, channels-last blocks
// of channels of 2 KiB rows or more); other channels-last tensors in chunks of whole rows. The
// caller's buffers other than dst are written only in the final commit.
#include "execute.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <type_traits>

#include "statistics.hpp"

namespace bnorm::detail {
namespace {

/// The coefficient arrays in scratch, writable, and `readable`: the view the normalize kernels
/// take (with the slot to start at), made once per call.
template <class T>
struct coefficient_arrays : kernels::coefficients<T> {
  kernels::coefficients<const T> readable;

  coefficient_arrays(unsigned char* scratch, const scratch_layout& s) {
    T* base = reinterpret_cast<T*>(scratch + s.coeffs);
    this->center = base;
    this->scale = base + s.coeff_stride;
    this->shift = base + 2 * s.coeff_stride;
    this->prescale = base + 3 * s.coeff_stride;
    readable = *this;
  }

  /// Interleaved passes read per slot: slot j holds channel j % C. Vector loads of the last
  /// slots read up to one vector (of the widest ISA) past the period: zeros there (prescale 1).
  /// The prescales are read only where some channel has one: without, they are left alone.
  void replicate(std::size_t channels, std::size_t period, bool prescaled) const {
    const auto fill = [&](T* a, T padding) {
      for (std::size_t j = channels; j < period; ++j) a[j] = a[j - channels];
      std::fill(a + period, a + period + 64 / sizeof(T), padding);
    };
    fill(this->center, T(0));
    fill(this->scale, T(0));
    fill(this->shift, T(0));
    if (prescaled) fill(this->prescale, T(1));
  }
};

template <class T>
double value_or(const channel_input& buffer, std::size_t c, double fallback) {
  return buffer.data ? static_cast<double>(static_cast<const T*>(buffer.data)[c]) : fallback;
}

/// Calls run(ptr offset, length) for the contiguous pieces of a run [begin, end) of one
/// channel's N·spatial values in channels-first memory.
template <class Run>
void for_each_plane_piece(const partition& p, std::size_t c, std::size_t begin, std::size_t end,
                          const Run& run) {
  for (std::size_t idx = begin; idx < end;) {
    const std::size_t n = idx / p.spatial, s = idx % p.spatial;
    const std::size_t len = std::min(p.spatial - s, end - idx);
    run((n * p.channels + c) * p.spatial + s, len);
    idx += len;
  }
}

/// Interleaved traversal, unit u: its rows' whole periods, restricted to its column block, and
/// the partial period that may end the last chunk.
struct interleaved_unit {
  std::size_t chunk;      // row chunk: index of its partial sums
  std::size_t offset;     // first element of its rows
  std::size_t column;     // first slot of its column block
  std::size_t width;      // slots in its column block
  std::size_t periods;    // whole periods in its rows
  std::size_t remainder;  // elements of a last, partial period (column block 0 only)

  interleaved_unit(const partition& p, std::size_t u)
      : interleaved_unit(p, u, p.rows_per_chunk, p.column_blocks, p.block_width) {}

  /// Unit u of a tiling in chunks of rows_per_chunk rows and column blocks of block_width slots.
  interleaved_unit(const partition& p, std::size_t u, std::size_t rows_per_chunk,
                   std::size_t column_blocks, std::size_t block_width) {
    chunk = u / column_blocks;
    column = (u % column_blocks) * block_width;
    width = std::min(block_width, p.period - column);
    const std::size_t row = chunk * rows_per_chunk;
    const std::size_t elements = std::min(rows_per_chunk, p.rows - row) * p.channels;
    offset = row * p.channels;
    periods = elements / p.period;
    remainder = column == 0 ? elements - periods * p.period : 0;
  }
};

/// Planes of whole channels [c0, c1) in one kernel call: Σd, Σd² per channel added into sum,
/// sum_sq. The per-channel arrays start at channel c0.
template <class T>
void stats_channels(const plan_impl& plan, std::size_t c0, std::size_t c1, const T* src,
                    const T* pivot, double* sum, double* sum_sq) {
  const partition& p = plan.part;
  plan.kernels->get<T>().plane_stats(src + c0 * p.spatial, p.spatial, p.batch,
                                     p.channels * p.spatial, c1 - c0, pivot, sum, sum_sq);
}

/// Planes of whole channels [c0, c1) in one kernel call; channel c0's coefficients are at
/// index `first` of k's arrays.
template <class T>
void normalize_channels(const plan_impl& plan, std::size_t c0, std::size_t c1, const T* src, T* dst,
                        const kernels::coefficients<const T>& k, std::size_t first,
                        bool prescaled) {
  const partition& p = plan.part;
  const std::size_t at = c0 * p.spatial;
  plan.kernels->get<T>().plane_normalize(src + at, dst + at, p.spatial, p.batch,
                                         p.channels * p.spatial, c1 - c0, k, first, prescaled,
                                         p.stream_stores);
}

/// Planes traversal, unit u: Σd, Σd² of its run added into *sum, *sum_sq; `pivot` points to
/// its channel's pivot.
template <class T>
void stats_unit(const plan_impl& plan, std::size_t u, const T* src, const T* pivot, double* sum,
                double* sum_sq) {
  const partition& p = plan.part;
  const std::size_t c = u / p.chunks_per_channel;
  if (p.chunks_per_channel == 1) {
    stats_channels(plan, c, c + 1, src, pivot, sum, sum_sq);
    return;
  }
  const std::size_t begin = (u % p.chunks_per_channel) * p.chunk_len;
  const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
  for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
    plan.kernels->get<T>().plane_stats(src + at, len, 1, 0, 1, pivot, sum, sum_sq);
  });
}

/// Planes traversal, unit u: normalize its run; its channel's coefficients are at index
/// `first` of k's arrays.
template <class T>
void normalize_unit(const plan_impl& plan, std::size_t u, const T* src, T* dst,
                    const kernels::coefficients<const T>& k, std::size_t first, bool prescaled) {
  const partition& p = plan.part;
  const std::size_t c = u / p.chunks_per_channel;
  if (p.chunks_per_channel == 1) {
    normalize_channels(plan, c, c + 1, src, dst, k, first, prescaled);
    return;
  }
  const std::size_t begin = (u % p.chunks_per_channel) * p.chunk_len;
  const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
  for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
    plan.kernels->get<T>().plane_normalize(src + at, dst + at, len, 1, 0, 1, k, first, prescaled,
                                           p.stream_stores);
  });
}

/// Interleaved normalization of `units` units, unit u being unit_at(u).
template <class T, class UnitAt>
void normalize_interleaved_units(const plan_impl& plan, std::size_t units, const UnitAt& unit_at,
                                 const T* src, T* dst, const coefficient_arrays<T>& k,
                                 bool prescaled) {
  const partition& p = plan.part;
  const kernels::kernel_set<T>& kern = plan.kernels->get<T>();
  plan.threads.for_each(units, 1, p.serial, [&](std::size_t b, std::size_t e) {
    for (std::size_t u = b; u < e; ++u) {
      const interleaved_unit w = unit_at(u);
      const std::size_t at = w.offset + w.column;
      kern.interleaved_normalize(src + at, dst + at, w.periods, w.width, p.period, k.readable,
                                 w.column, prescaled, p.stream_stores);
      if (w.remainder) {
        const std::size_t tail = w.offset + w.periods * p.period;
        kern.interleaved_normalize(src + tail, dst + tail, 1, w.remainder, p.period, k.readable, 0,
                                   prescaled, p.stream_stores);
      }
    }
  });
}

template <class T>
void normalize_pass(const plan_impl& plan, const T* src, T* dst, const coefficient_arrays<T>& k,
                    bool prescaled) {
  const partition& p = plan.part;
  const kernels::kernel_set<T>& kern = plan.kernels->get<T>();
  if (p.kind == traversal::planes && p.planes_per_unit > 0) {
    plan.threads.for_each(p.plane_units, 1, p.serial, [&](std::size_t b, std::size_t e) {
      const std::size_t planes = p.batch * p.channels;
      std::size_t q = b * p.planes_per_unit;
      const std::size_t end = std::min(e * p.planes_per_unit, planes);
      while (q < end) {  // one kernel call per run of consecutive channels
        const std::size_t c = q % p.channels;
        const std::size_t run = std::min(p.channels - c, end - q);
        const std::size_t at = q * p.spatial;
        kern.plane_normalize(src + at, dst + at, p.spatial, 1, 0, run, k.readable, c, prescaled,
                             p.stream_stores);
        q += run;
      }
    });
  } else if (p.kind == traversal::planes) {
    plan.threads.for_each(p.units, p.units_per_task, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const std::size_t c = u / p.chunks_per_channel;
        normalize_unit<T>(plan, u, src, dst, k.readable, c, prescaled);
      }
    });
  } else {
    normalize_interleaved_units<T>(
        plan, p.units, [&p](std::size_t u) { return interleaved_unit(p, u); }, src, dst, k,
        prescaled);
  }
}

/// Calls body(c_begin, c_end) over blocks of channels, in parallel when C is large.
template <class Body>
void for_each_channel_block(const plan_impl& plan, const Body& body) {
  const partition& p = plan.part;
  const std::size_t block = p.channels_per_finalize_task;
  const std::size_t blocks = (p.channels + block - 1) / block;
  plan.threads.for_each(blocks, 1, p.serial, [&](std::size_t b, std::size_t e) {
    body(b * block, std::min(e * block, p.channels));
  });
}

/// One training call: the scratch arrays and the steps over them.
template <class T>
class training_step {
 public:
  training_step(const plan_impl& plan, const training_args& args, unsigned char* scratch)
      : plan_(plan),
        p_(plan.part),
        args_(args),
        src_(static_cast<const T*>(args.src)),
        dst_(static_cast<T*>(args.dst)),
        pivot_(reinterpret_cast<T*>(scratch + p_.scratch.pivot)),
        sum_(reinterpret_cast<double*>(scratch + p_.scratch.sum)),
        sum_sq_(reinterpret_cast<double*>(scratch + p_.scratch.sum_sq)),
        mean_(reinterpret_cast<double*>(scratch + p_.scratch.mean)),
        variance_(reinterpret_cast<double*>(scratch + p_.scratch.variance)),
        inv_std_(reinterpret_cast<double*>(scratch + p_.scratch.inv_std)),
        scale_(reinterpret_cast<double*>(scratch + p_.scratch.scale)),
        coeffs_(scratch, p_.scratch) {}

  void run() {
    switch (p_.training) {
      case training_schedule::direct:
        tiny_statistics();
        normalize_pass<T>(plan_, src_, dst_, coeffs_, prescaled_);
        break;
      case training_schedule::fused_planes: fused_planes_pass(); break;
      case training_schedule::fused_column_blocks: fused_interleaved_pass(); break;
      case training_schedule::two_passes:
        compute_pivots();
        stats_pass();
        merge_pass(correction::allowed);
        if (repivoted_) {  // some pivot was far from its mean: the sums again, around the mean
          if (p_.kind == traversal::interleaved) replicate_pivots();
          stats_pass();
          merge_pass(correction::done);
        }
        normalize_pass<T>(plan_, src_, dst_, coeffs_, prescaled_);
        break;
    }
    commit();
  }

 private:
  /// Whether finalize_block may still move a pivot that landed far from its channel's mean.
  enum class correction { allowed, done };

  /// Each channel's pivot (see the pivot kernels); rows hold it per slot.
  void compute_pivots() {
    if (p_.kind == traversal::planes) {
      compute_plane_pivots(0, p_.channels);
    } else {
      compute_row_pivots(0, p_.channels);
      replicate_pivots();
    }
  }

  void replicate_pivots() {
    for (std::size_t j = p_.channels; j < p_.period; ++j) pivot_[j] = pivot_[j - p_.channels];
  }

  void compute_row_pivots(std::size_t c0, std::size_t c1) {
    plan_.kernels->get<T>().row_pivots(src_ + c0, p_.rows, p_.channels, c1 - c0, pivot_ + c0);
  }

  void compute_plane_pivots(std::size_t c0, std::size_t c1) {
    plan_.kernels->get<T>().plane_pivots(src_ + c0 * p_.spatial, p_.spatial, p_.batch,
                                         p_.channels * p_.spatial, c1 - c0, pivot_ + c0);
  }

  /// Planes of whole channels: statistics, coefficients and normalization of a group of
  /// channels back to back, their planes still in cache for the second read, in a single
  /// parallel pass: the statistics of the group in one kernel call, its float64 arithmetic in
  /// another, then its normalization in a third.
  void fused_planes_pass() {
    plan_.threads.for_each(
        p_.units, p_.units_per_task, p_.serial, [&](std::size_t b, std::size_t e) {
          for (std::size_t c0 = b; c0 < e; c0 += p_.fused_group) {
            const std::size_t c1 = std::min(c0 + p_.fused_group, e);
            compute_plane_pivots(c0, c1);
            const auto sums = [&] {
              std::fill(mean_ + c0, mean_ + c1, 0.0);
              std::fill(variance_ + c0, variance_ + c1, 0.0);
              stats_channels(plan_, c0, c1, src_, pivot_ + c0, mean_ + c0, variance_ + c0);
            };
            const finalized block = statistics_of(c0, c1, sums);
            normalize_channels<T>(plan_, c0, c1, src_, dst_, coeffs_.readable, c0, block.prescaled);
          }
        });
  }

  /// Rows in blocks of whole channels (slot j is channel j): pivots, statistics, coefficients
  /// and normalization of a block back to back, its rows still in cache for the second read,
  /// in a single parallel pass. The sums go straight into mean_ and variance_: a block owns its
  /// channels.
  void fused_interleaved_pass() {
    const kernels::kernel_set<T>& kern = plan_.kernels->get<T>();
    // Vector loads of the last block's coefficients read the padding: keep it defined (the
    // prescales too: a block may need them).
    coeffs_.replicate(p_.channels, p_.period, true);
    plan_.threads.for_each(p_.units, 1, p_.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const interleaved_unit w(p_, u);
        const std::size_t c0 = w.column, c1 = w.column + w.width;
        compute_row_pivots(c0, c1);
        const auto sums = [&] {
          kern.interleaved_stats(src_ + c0, p_.rows, w.width, p_.period, pivot_ + c0, mean_ + c0,
                                 variance_ + c0, false);
        };
        const finalized block = statistics_of(c0, c1, sums);
        kern.interleaved_normalize(src_ + c0, dst_ + c0, p_.rows, w.width, p_.period,
                                   coeffs_.readable, c0, block.prescaled, p_.stream_stores);
      }
    });
  }

  /// A tiny tensor: Σd, Σd² per channel in float64 in one walk over memory, each channel
  /// pivoted on its first value (d = x − pivot is exact in float64 for float32 data), then
  /// finalize_block.
  void tiny_statistics() {
    const std::size_t run = p_.kind == traversal::planes ? p_.spatial : 1;
    for (std::size_t c = 0; c < p_.channels; ++c) pivot_[c] = src_[c * run];
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
    const T* x = src_;  // memory order: N planes of C channels, or rows of C values
    const std::size_t outer = planes ? p_.batch : p_.rows;
    for (std::size_t o = 0; o < outer; ++o) {
      for (std::size_t c = 0; c < p_.channels; ++c, x += run) {
        const double k = static_cast<double>(pivot_[c]);
        double sum = 0.0, sum_sq = 0.0;
        for (std::size_t j = 0; j < run; ++j) {
          const double d = static_cast<double>(x[j]) - k;
          sum += d;
          sum_sq += d * d;
        }
        mean_[c] += sum;
        variance_[c] += sum_sq;
      }
    }
  }

  /// Partial sums, one slot per unit: what a unit adds never depends on the thread running it.
  void stats_pass() {
    const kernels::kernel_set<T>& kern = plan_.kernels->get<T>();
    if (p_.kind == traversal::planes) {
      plan_.threads.for_each(
          p_.units, p_.units_per_task, p_.serial, [&](std::size_t b, std::size_t e) {
            for (std::size_t u = b; u < e; ++u) {
              sum_[u] = sum_sq_[u] = 0.0;
              stats_unit(plan_, u, src_, pivot_ + u / p_.chunks_per_channel, &sum_[u], &sum_sq_[u]);
            }
          });
    } else {
      plan_.threads.for_each(p_.units, 1, p_.serial, [&](std::size_t b, std::size_t e) {
        for (std::size_t u = b; u < e; ++u) {
          const interleaved_unit w(p_, u);
          double* sum = sum_ + w.chunk * p_.period;
          double* sum_sq = sum_sq_ + w.chunk * p_.period;
          kern.interleaved_stats(src_ + w.offset + w.column, w.periods, w.width, p_.period,
                                 pivot_ + w.column, sum + w.column, sum_sq + w.column, false);
          if (w.remainder) {
            kern.interleaved_stats(src_ + w.offset + w.periods * p_.period, 1, w.remainder,
                                   p_.period, pivot_, sum, sum_sq, true);
          }
        }
      });
    }
  }

  /// Merges the partials in a fixed order (unit by unit, slot by slot) into Σd, Σd² per channel
  /// (held in mean_ and variance_), then finalizes.
  void merge_pass(correction pivots) {
    prescaled_ = false;
    for_each_channel_block(plan_, [&](std::size_t c0, std::size_t c1) {
      if (p_.kind == traversal::planes) {
        for (std::size_t c = c0; c < c1; ++c) {
          double s = 0.0, q = 0.0;
          for (std::size_t j = 0; j < p_.chunks_per_channel; ++j) {
            s += sum_[c * p_.chunks_per_channel + j];
            q += sum_sq_[c * p_.chunks_per_channel + j];
          }
          mean_[c] = s;
          variance_[c] = q;
        }
      } else {
        // Contiguous runs of slots; for each channel the order is unit by unit, then slot c,
        // c + C, ... within the unit.
        std::fill(mean_ + c0, mean_ + c1, 0.0);
        std::fill(variance_ + c0, variance_ + c1, 0.0);
        for (std::size_t i = 0; i < p_.row_chunks; ++i) {
          for (std::size_t slot = 0; slot < p_.period; slot += p_.channels) {
            const double* s = sum_ + i * p_.period + slot;
            const double* q = sum_sq_ + i * p_.period + slot;
            for (std::size_t c = c0; c < c1; ++c) {
              mean_[c] += s[c];
              variance_[c] += q[c];
            }
          }
        }
      }
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
    const kernels::kernel_set<T>& kern = plan_.kernels->get<T>();
    const T* gamma = static_cast<const T*>(args_.scale.data);
    const T* beta = static_cast<const T*>(args_.shift.data);
    // The kernels square float32 differences: below ~1e-19 those squares lose bits or vanish.
    // That only shows when var + eps is that small too (an eps far below any framework's), so
    // such a channel is summed again, exactly, instead of slowing every block. float64 squares
    // keep their bits down to ~1e-300. Beyond ~1e154 they overflow: a channel whose variance
    // is not finite is summed again too, scaled (and stays NaN where its data holds a NaN or
    // an infinity).
    //
    // A pivot more than three standard deviations from its channel's mean (the values it was
    // taken from did not represent the channel: zero padding, an outlier, sorted data) leaves
    // the float32 squares large next to the variance, and their rounding shows in it: the
    // pivot moves to the mean and the caller takes the sums again, once. With pivots spread
    // over the channel, ordinary data never comes near that bound.
    const double resum_below = std::is_same<T, float>::value ? 1e-30 : 0.0;
    finalized result;
    if (kern.channel_moments(c1 - c0, count(), plan_.prob.epsilon, pivot_ + c0,
                             gamma ? gamma + c0 : nullptr, mean_ + c0, variance_ + c0,
                             inv_std_ + c0, scale_ + c0, resum_below)) {
      for (std::size_t c = c0; c < c1; ++c) {
        const double variance = variance_[c];
        if (!std::isfinite(variance) || variance + plan_.prob.epsilon < resum_below) {
          set_exact_moments(c);
          continue;
        }
        const double offset = mean_[c] - static_cast<double>(pivot_[c]);
        if (pivots == correction::allowed &&
            offset * offset > kernels::max_pivot_offset_squared * variance) {
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
    const bool first = plan_.prob.layout == layout::channels_first;
    const std::size_t spatial = p_.spatial, channels = p_.channels;
    const moments m =
        exact_moments(p_.batch, spatial, plan_.prob.epsilon, [&](std::size_t n, std::size_t s) {
          return static_cast<double>(
              src_[first ? (n * channels + c) * spatial + s : (n * spatial + s) * channels + c]);
        });
    mean_[c] = m.mean;
    variance_[c] = m.variance;
    inv_std_[c] = m.inv_std;
    scale_[c] = value_or<T>(args_.scale, c, 1.0) * inv_std_[c];
  }

  /// The batch statistics, then the running statistics and the step counter: the only writes
  /// to the caller's buffers besides dst, made once everything else has succeeded.
  void commit() {
    const kernels::kernel_set<T>& kern = plan_.kernels->get<T>();
    if (T* out = static_cast<T*>(args_.batch_mean.data)) kern.narrow(p_.channels, mean_, out);
    if (T* out = static_cast<T*>(args_.batch_inv_std.data)) {
      kern.narrow(p_.channels, inv_std_, out);
    }
    if (!plan_.options.update_running_stats) return;
    std::int64_t tracked = 0;
    if (args_.num_batches_tracked) tracked = ++*args_.num_batches_tracked;
    const running_rule rule = make_running_rule(plan_.options, tracked);
    const double bessel = rule.unbiased_variance ? count() / (count() - 1.0) : 1.0;
    kern.blend_running(p_.channels, mean_, 1.0, rule.batch_weight,
                       static_cast<T*>(args_.running_mean.data));
    kern.blend_running(p_.channels, variance_, bessel, rule.batch_weight,
                       static_cast<T*>(args_.running_var.data));
  }

  double count() const { return static_cast<double>(p_.per_channel); }

  const plan_impl& plan_;
  const partition& p_;
  const training_args& args_;
  const T* src_;
  T* dst_;
  T* pivot_;
  double* sum_;
  double* sum_sq_;
  double* mean_;
  double* variance_;
  double* inv_std_;
  double* scale_;
  coefficient_arrays<T> coeffs_;
  std::atomic<bool> prescaled_{false};  // some channel's prescale is not 1
  std::atomic<bool> repivoted_{false};  // some pivot moved: the sums are to be taken again
};

/// One inference call: coefficients from the running statistics, then the normalization.
template <class T>
class inference_step {
 public:
  inference_step(const plan_impl& plan, const inference_args& args, unsigned char* scratch)
      : plan_(plan),
        p_(plan.part),
        kern_(plan.kernels->get<T>()),
        args_(args),
        src_(static_cast<const T*>(args.src)),
        dst_(static_cast<T*>(args.dst)),
        coeffs_(scratch, p_.scratch) {}

  void run() {
    if (p_.inference == inference_schedule::channel_planes) {
      channel_planes_pass();
      return;
    }
    if (p_.inference == inference_schedule::column_blocks) {
      column_blocks_pass();
      return;
    }
    // Planes in memory order and row chunks need every channel's coefficients (laid out per
    // slot for rows) before the normalization.
    std::atomic<bool> prescaled{false};
    for_each_channel_block(plan_, [&](std::size_t c0, std::size_t c1) {
      if (set_coefficients(c0, c1, coeffs_, c0)) prescaled = true;  // any order: an OR
    });
    if (p_.kind == traversal::planes) {
      normalize_pass<T>(plan_, src_, dst_, coeffs_, prescaled);
      return;
    }
    coeffs_.replicate(p_.channels, p_.period, prescaled);
    normalize_interleaved_units<T>(
        plan_, p_.inference_row_chunks,
        [this](std::size_t u) {
          return interleaved_unit(p_, u, p_.inference_rows_per_chunk, 1, p_.period);
        },
        src_, dst_, coeffs_, prescaled);
  }

 private:
  /// The coefficients of channels [c0, c1), written from index `first` of out's arrays, in float64
  /// vectors: the kernel's division and square root are as exact as scalar ones, so how the
  /// channels are blocked does not change a bit.
  bool set_coefficients(std::size_t c0, std::size_t c1, const kernels::coefficients<T>& out,
                        std::size_t first) const {
    const auto at = [c0](const channel_input& buffer) {
      return buffer.data ? static_cast<const T*>(buffer.data) + c0 : nullptr;
    };
    return kern_.inference_coefficients(c1 - c0, plan_.prob.epsilon, at(args_.mean), at(args_.var),
                                        at(args_.scale), at(args_.shift), out, first);
  }

  /// Channel-major planes: each task works out its own channels' coefficients, 16 at a time,
  /// in one parallel pass (a pass of its own for them costs more than it saves on short
  /// planes: docs/design.md).
  void channel_planes_pass() const {
    plan_.threads.for_each(
        p_.units, p_.units_per_task, p_.serial, [&](std::size_t b, std::size_t e) {
          constexpr std::size_t group = 16;
          T center_k[group], scale_k[group], shift_k[group], prescale_k[group];
          const kernels::coefficients<T> k(center_k, scale_k, shift_k, prescale_k);
          const kernels::coefficients<const T> readable(k);
          for (std::size_t u0 = b; u0 < e; u0 += group) {
            const std::size_t u1 = std::min(u0 + group, e);
            const std::size_t c0 = u0 / p_.chunks_per_channel;
            const std::size_t c1 = (u1 - 1) / p_.chunks_per_channel + 1;
            const bool prescaled = set_coefficients(c0, c1, k, 0);
            if (p_.chunks_per_channel == 1) {
              normalize_channels<T>(plan_, c0, c1, src_, dst_, readable, 0, prescaled);
              continue;
            }
            for (std::size_t u = u0; u < u1; ++u) {
              normalize_unit<T>(plan_, u, src_, dst_, readable, u / p_.chunks_per_channel - c0,
                                prescaled);
            }
          }
        });
  }

  /// Few rows of many channels in blocks of whole channels (slot j is channel j), each block
  /// over all the rows: each unit works out its block's coefficients and normalizes the block,
  /// in one parallel pass.
  void column_blocks_pass() const {
    // Vector loads of the last block's coefficients read the padding: keep it defined (the
    // prescales too: a block may need them).
    coeffs_.replicate(p_.channels, p_.period, true);
    plan_.threads.for_each(p_.units, 1, p_.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const interleaved_unit w(p_, u);
        const std::size_t c0 = w.column;
        const bool prescaled = set_coefficients(c0, c0 + w.width, coeffs_, c0);
        kern_.interleaved_normalize(src_ + c0, dst_ + c0, p_.rows, w.width, p_.period,
                                    coeffs_.readable, c0, prescaled, p_.stream_stores);
      }
    });
  }

  const plan_impl& plan_;
  const partition& p_;
  const kernels::kernel_set<T>& kern_;
  const inference_args& args_;
  const T* src_;
  T* dst_;
  coefficient_arrays<T> coeffs_;
};

}  // namespace

template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch) {
  training_step<T>(plan, args, scratch).run();
}

template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch) {
  inference_step<T>(plan, args, scratch).run();
}

template void run_training<float>(const plan_impl&, const training_args&, unsigned char*);
template void run_training<double>(const plan_impl&, const training_args&, unsigned char*);
template void run_inference<float>(const plan_impl&, const inference_args&, unsigned char*);
template void run_inference<double>(const plan_impl&, const inference_args&, unsigned char*);

}  // namespace bnorm::detail
