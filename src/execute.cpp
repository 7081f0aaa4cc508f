// Training: shifts → partial sums per unit (parallel) → per-channel moments and coefficients →
// normalize (parallel) → commit the statistics. Inference: coefficients → normalize.
// User-visible buffers other than dst are written only in the final commit.
#include "execute.hpp"

#include <algorithm>

#include "statistics.hpp"

namespace bnorm::detail {
namespace {

template <class T>
struct coefficient_arrays {
  T* center;
  T* scale;
  T* shift;

  coefficient_arrays(unsigned char* scratch, const scratch_layout& s) {
    T* base = reinterpret_cast<T*>(scratch + s.coeffs);
    center = base;
    scale = base + s.coeff_stride;
    shift = base + 2 * s.coeff_stride;
  }

  void set(std::size_t c, const coefficients<T>& k) const {
    center[c] = k.center;
    scale[c] = k.scale;
    shift[c] = k.shift;
  }

  /// Interleaved passes read per slot: slot j holds channel j % C; the padding holds zeros.
  void replicate(std::size_t channels, std::size_t period, std::size_t stride) const {
    for (T* a : {center, scale, shift}) {
      for (std::size_t j = channels; j < period; ++j) a[j] = a[j - channels];
      std::fill(a + period, a + stride, T(0));
    }
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

template <class T>
void normalize_pass(const plan_impl& plan, const T* src, T* dst,
                    const coefficient_arrays<T>& k) {
  const partition& p = plan.part;
  const kernels::kernel_set<T>& kern = plan.kernels->get<T>();
  if (p.kind == traversal::planes) {
    plan.threads.for_each(p.units, p.units_per_task, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const std::size_t c = u / p.chunks_per_channel, j = u % p.chunks_per_channel;
        const std::size_t begin = j * p.chunk_len;
        const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
        for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
          kern.plane_normalize(src + at, dst + at, len, k.center[c], k.scale[c], k.shift[c],
                               p.stream_stores);
        });
      }
    });
  } else {
    plan.threads.for_each(p.units, 1, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) {
        const std::size_t row = i * p.rows_per_chunk;
        const std::size_t rows = std::min(p.rows_per_chunk, p.rows - row);
        const std::size_t at = row * p.channels;
        kern.interleaved_normalize(src + at, dst + at, rows * p.channels, p.period, k.center,
                                   k.scale, k.shift, p.stream_stores);
      }
    });
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

}  // namespace

template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch) {
  const partition& p = plan.part;
  const scratch_layout& lay = p.scratch;
  const kernels::kernel_set<T>& kern = plan.kernels->get<T>();
  const T* src = static_cast<const T*>(args.src);
  T* dst = static_cast<T*>(args.dst);
  T* shift = reinterpret_cast<T*>(scratch + lay.shift);
  double* sum = reinterpret_cast<double*>(scratch + lay.sum);
  double* sum_sq = reinterpret_cast<double*>(scratch + lay.sum_sq);
  double* mean = reinterpret_cast<double*>(scratch + lay.mean);
  double* variance = reinterpret_cast<double*>(scratch + lay.variance);
  const coefficient_arrays<T> coeffs(scratch, lay);

  // Shifts: the channel's first value. Fixed by the data alone, so chunking cannot change it.
  if (p.kind == traversal::planes) {
    for (std::size_t c = 0; c < p.channels; ++c) shift[c] = src[c * p.spatial];
  } else {
    for (std::size_t j = 0; j < p.period; ++j) shift[j] = src[j % p.channels];
  }

  // Partial sums, one slot per unit: what a unit adds never depends on the thread running it.
  if (p.kind == traversal::planes) {
    plan.threads.for_each(p.units, p.units_per_task, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const std::size_t c = u / p.chunks_per_channel, j = u % p.chunks_per_channel;
        const std::size_t begin = j * p.chunk_len;
        const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
        sum[u] = 0.0;
        sum_sq[u] = 0.0;
        for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
          kern.plane_stats(src + at, len, shift[c], &sum[u], &sum_sq[u]);
        });
      }
    });
  } else {
    plan.threads.for_each(p.units, 1, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) {
        const std::size_t row = i * p.rows_per_chunk;
        const std::size_t rows = std::min(p.rows_per_chunk, p.rows - row);
        kern.interleaved_stats(src + row * p.channels, rows * p.channels, p.period, shift,
                               sum + i * p.period, sum_sq + i * p.period);
      }
    });
  }

  // Merge in a fixed order (unit by unit, slot by slot), then the per-channel coefficients.
  // mean[] and variance[] hold Σd and Σd² until finalize() turns them into moments.
  const double count = static_cast<double>(p.per_channel);
  const double epsilon = plan.prob.epsilon;
  const auto finalize = [&](std::size_t c) {
    const moments m =
        moments_from_shifted_sums(static_cast<double>(shift[c]), mean[c], variance[c], count);
    mean[c] = m.mean;
    variance[c] = m.variance;
    coeffs.set(c, make_coefficients<T>(m.mean, inverse_std(m.variance, epsilon),
                                       value_or<T>(args.scale, c, 1.0),
                                       value_or<T>(args.shift, c, 0.0)));
  };
  for_each_channel_block(plan, [&](std::size_t c0, std::size_t c1) {
    if (p.kind == traversal::planes) {
      for (std::size_t c = c0; c < c1; ++c) {
        double s = 0.0, q = 0.0;
        for (std::size_t j = 0; j < p.chunks_per_channel; ++j) {
          s += sum[c * p.chunks_per_channel + j];
          q += sum_sq[c * p.chunks_per_channel + j];
        }
        mean[c] = s;
        variance[c] = q;
      }
    } else {
      // Contiguous runs of slots: for each channel the order is unit by unit, then slot c,
      // c + C, ... within the unit.
      std::fill(mean + c0, mean + c1, 0.0);
      std::fill(variance + c0, variance + c1, 0.0);
      for (std::size_t i = 0; i < p.units; ++i) {
        for (std::size_t slot = 0; slot < p.period; slot += p.channels) {
          const double* s = sum + i * p.period + slot;
          const double* q = sum_sq + i * p.period + slot;
          for (std::size_t c = c0; c < c1; ++c) {
            mean[c] += s[c];
            variance[c] += q[c];
          }
        }
      }
    }
    for (std::size_t c = c0; c < c1; ++c) finalize(c);
  });
  if (p.kind == traversal::interleaved) {
    coeffs.replicate(p.channels, p.period, lay.coeff_stride);
  }

  normalize_pass<T>(plan, src, dst, coeffs);

  // Commit: the batch statistics, then the running statistics and the step counter.
  for (std::size_t c = 0; c < p.channels; ++c) {
    if (args.batch_mean.data) static_cast<T*>(args.batch_mean.data)[c] = static_cast<T>(mean[c]);
    if (args.batch_inv_std.data) {
      static_cast<T*>(args.batch_inv_std.data)[c] =
          static_cast<T>(inverse_std(variance[c], epsilon));
    }
  }
  if (plan.options.update_running_stats) {
    std::int64_t tracked = 0;
    if (args.num_batches_tracked) tracked = ++*args.num_batches_tracked;
    const running_rule rule = make_running_rule(plan.options, tracked);
    const double bessel = rule.unbiased_variance ? count / (count - 1.0) : 1.0;
    T* running_mean = static_cast<T*>(args.running_mean.data);
    T* running_var = static_cast<T*>(args.running_var.data);
    for (std::size_t c = 0; c < p.channels; ++c) {
      running_mean[c] = static_cast<T>(blend(running_mean[c], mean[c], rule.batch_weight));
      running_var[c] =
          static_cast<T>(blend(running_var[c], variance[c] * bessel, rule.batch_weight));
    }
  }
}

template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch) {
  const partition& p = plan.part;
  const coefficient_arrays<T> coeffs(scratch, p.scratch);
  const T* mean = static_cast<const T*>(args.mean.data);
  const T* var = static_cast<const T*>(args.var.data);
  const double epsilon = plan.prob.epsilon;
  for_each_channel_block(plan, [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) {
      coeffs.set(c, make_coefficients<T>(mean[c], inverse_std(var[c], epsilon),
                                         value_or<T>(args.scale, c, 1.0),
                                         value_or<T>(args.shift, c, 0.0)));
    }
  });
  if (p.kind == traversal::interleaved) {
    coeffs.replicate(p.channels, p.period, p.scratch.coeff_stride);
  }
  normalize_pass<T>(plan, static_cast<const T*>(args.src), static_cast<T*>(args.dst), coeffs);
}

template void run_training<float>(const plan_impl&, const training_args&, unsigned char*);
template void run_training<double>(const plan_impl&, const training_args&, unsigned char*);
template void run_inference<float>(const plan_impl&, const inference_args&, unsigned char*);
template void run_inference<double>(const plan_impl&, const inference_args&, unsigned char*);

}  // namespace bnorm::detail
