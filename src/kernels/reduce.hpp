// Reduce kernels: per-channel (per-slot) sums over the data, Σ(x − pivot) and Σ(x − pivot)²,
// and the pivots they subtract. The data is of a storage type S, loaded through the storage
// layer (storage.hpp) and computed in T = compute_t<S>, the type of the pivots. Part of the kernels
// compiled once per ISA: include only from kernels_impl.hpp.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "kernels/storage.hpp"
#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

// float32 statistics accumulate d = x - pivot in float32 over short blocks (each lane adds at
// most block_vectors + 1 values) and add each block's partials into float64. d is small next to x,
// the block partials carry ~8 ulp of rounding at worst, and float64 does the long sums: the
// statistics stay within a few 1e-8 relative while the hot loop needs no conversions
// (docs/design.md: widening every element is half the speed).
constexpr std::size_t block_vectors = 8;

template <class Arch>
struct f64_accumulator {
  // Parentheses, not braces: xsimd 8.1 reads {0.0} as an array of all the lanes.
  xsimd::batch<double, Arch> sum = xsimd::batch<double, Arch>(0.0);
  xsimd::batch<double, Arch> sum_sq = xsimd::batch<double, Arch>(0.0);
  void add(const xsimd::batch<float, Arch>& s, const xsimd::batch<float, Arch>& q) noexcept {
    xsimd::batch<double, Arch> lo, hi;
    widen(s, lo, hi);
    sum += lo + hi;
    widen(q, lo, hi);
    sum_sq += lo + hi;
  }
  void add(const xsimd::batch<double, Arch>& s, const xsimd::batch<double, Arch>& q) noexcept {
    sum += s;
    sum_sq += q;
  }
  /// x - pivot and its square in float64: for values whose float32 square would overflow.
  void add_exact(const xsimd::batch<float, Arch>& x,
                 const xsimd::batch<float, Arch>& pivot) noexcept {
    xsimd::batch<double, Arch> x_lo, x_hi, k_lo, k_hi;
    widen(x, x_lo, x_hi);
    widen(pivot, k_lo, k_hi);
    const auto d_lo = x_lo - k_lo, d_hi = x_hi - k_hi;
    sum += d_lo + d_hi;
    sum_sq = fmadd(d_lo, d_lo, fmadd(d_hi, d_hi, sum_sq));
  }
  void add_exact(const xsimd::batch<double, Arch>& x,
                 const xsimd::batch<double, Arch>& pivot) noexcept {
    const auto d = x - pivot;
    sum += d;
    sum_sq = fmadd(d, d, sum_sq);
  }
};

/// False when a float32 block partial overflowed (|x - pivot| beyond ~1.8e19 squares to inf) or
/// holds a NaN: the block is then summed again in float64.
template <class Arch, class T>
bool partial_is_finite(const xsimd::batch<T, Arch>& q) noexcept {
  return xsimd::all(xsimd::isfinite(q));
}

/// 0, 1, 2, ... as T, for lane masks.
template <class T>
struct lane_index {
  alignas(64) static constexpr T values[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                               8, 9, 10, 11, 12, 13, 14, 15};
};

/// The last `count` (< lanes) values of a run of at least one vector, read as the run's last
/// whole vector with the lanes already counted replaced by the pivot (so that they add zero):
/// no read past the run, no scalar loop.
template <class Arch, class S, class T = compute_t<S>>
xsimd::batch<T, Arch> masked_tail(const S* run_end, std::size_t count,
                                  const xsimd::batch<T, Arch>& pivot) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const vec index = vec::load_aligned(lane_index<T>::values);
  const auto fresh = index >= vec(static_cast<T>(lanes - count));
  return xsimd::select(fresh, load_elements<Arch>(run_end - lanes), pivot);
}

/// Σ(x - pivot) and Σ(x - pivot)² of one run of at least one vector.
template <class Arch, class S, class T = compute_t<S>>
void run_stats(const S* x, std::size_t len, const xsimd::batch<T, Arch>& k,
               f64_accumulator<Arch>& acc) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  // float32: blocks of block_vectors vectors per lane, then into float64. float64: the
  // accumulators themselves, flushed as often (it costs nothing next to the loads).
  std::size_t i = 0;
  while (i < len) {
    vec s0(T(0)), s1(T(0)), q0(T(0)), q1(T(0));
    const std::size_t begin = i;
    const std::size_t end = len - i < block_vectors * lanes ? len : i + block_vectors * lanes;
    for (; i + 2 * lanes <= end; i += 2 * lanes) {
      const vec d0 = load_elements<Arch>(x + i) - k;
      const vec d1 = load_elements<Arch>(x + i + lanes) - k;
      s0 += d0;
      s1 += d1;
      q0 = fmadd(d0, d0, q0);
      q1 = fmadd(d1, d1, q1);
    }
    if (i + lanes <= end) {
      const vec d = load_elements<Arch>(x + i) - k;
      s0 += d;
      q0 = fmadd(d, d, q0);
      i += lanes;
    }
    // The last values, fewer than a vector, join the last block (one more value per lane):
    // short planes (7×7) would otherwise pay a float64 step for them.
    const std::size_t whole_end = i;
    vec tail(T(0));
    if (i < len && len - i < lanes) {
      tail = masked_tail<Arch>(x + len, len - i, k);
      const vec d = tail - k;
      s1 += d;
      q1 = fmadd(d, d, q1);
      i = len;
    }
    if (partial_is_finite<Arch>(q0 + q1)) {
      acc.add(s0 + s1, q0 + q1);
    } else {
      for (std::size_t j = begin; j < whole_end; j += lanes) {
        acc.add_exact(load_elements<Arch>(x + j), k);
      }
      if (whole_end < i) acc.add_exact(tail, k);
    }
  }
}

/// Channel k of `channels` has its first plane at src + k·len and pivot pivot[k].
template <class Arch, class S, class T = compute_t<S>>
void plane_stats(const S* src, std::size_t len, std::size_t planes, std::size_t stride,
                 std::size_t channels, const T* pivot, double* sum, double* sum_sq) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const S* first = src + ch * len;
    const vec k(pivot[ch]);
    const double pivot64 = static_cast<double>(pivot[ch]);
    f64_accumulator<Arch> acc;
    double s = 0.0, q = 0.0;
    for (std::size_t p = 0; p < planes; ++p) {
      const S* x = first + p * stride;
      if (len >= lanes) {
        run_stats<Arch>(x, len, k, acc);
      } else {
        for (std::size_t i = 0; i < len; ++i) {  // runs shorter than a vector
          const double d = static_cast<double>(to_compute(x[i])) - pivot64;
          s += d;
          q += d * d;
        }
      }
    }
    sum[ch] += sum_lanes<Arch>(acc.sum) + s;
    sum_sq[ch] += sum_lanes<Arch>(acc.sum_sq) + q;
  }
}

// The interleaved statistics walk a block of this many periods (rows) per slot vector, so each
// accumulator vector is loaded and stored once per block rather than once per row. Each lane's
// float32 partial adds this many values: fewer instructions than 8, with the same worst error
// in the accuracy tests (docs/design.md).
constexpr std::size_t rows_per_block = 16;

/// One block of `count` rows: per lane, Σ(x − k) and Σ(x − k)² in T over the rows, for
/// `Group` adjacent vectors of slots from `block` (k from `pivot`). Several columns at once keep
/// that many independent add chains in flight (one column's 16 rows are a chain of dependent adds)
/// and share the loop's overhead; each lane still adds its rows in order, whatever the group.
template <std::size_t Group, class Arch, class S, class T = compute_t<S>>
void column_partials(const S* block, std::size_t count, std::size_t stride, const T* pivot,
                     xsimd::batch<T, Arch> (&s)[Group],
                     xsimd::batch<T, Arch> (&q)[Group]) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec k[Group];
  for (std::size_t g = 0; g < Group; ++g) {
    k[g] = vec::load_unaligned(pivot + g * lanes);
    s[g] = q[g] = vec(T(0));
  }
  for (std::size_t r = 0; r < count; ++r) {
    const S* x = block + r * stride;
    for (std::size_t g = 0; g < Group; ++g) {
      const vec d = load_elements<Arch>(x + g * lanes) - k[g];
      s[g] += d;
      q[g] = fmadd(d, d, q[g]);
    }
  }
}

/// One slot after the last whole vector: Σ(x − pivot), Σ(x − pivot)² over a block's rows, added
/// into sum and sum_sq in float64.
template <class S, class T = compute_t<S>>
void column_sums_scalar(const S* block, std::size_t count, std::size_t stride, T pivot, double& sum,
                        double& sum_sq) noexcept {
  for (std::size_t r = 0; r < count; ++r) {
    const double d =
        static_cast<double>(to_compute(block[r * stride])) - static_cast<double>(pivot);
    sum += d;
    sum_sq += d * d;
  }
}

template <class Arch, class S, class T = compute_t<S>>
void interleaved_stats(const S* src, std::size_t rows, std::size_t width, std::size_t stride,
                       const T* pivot, double* sum, double* sum_sq, bool accumulate) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  if (rows == 0 && !accumulate) {
    for (std::size_t j = 0; j < width; ++j) sum[j] = sum_sq[j] = 0.0;
  }
  for (std::size_t first = 0; first < rows; first += rows_per_block) {
    const std::size_t count = rows - first < rows_per_block ? rows - first : rows_per_block;
    const S* block = src + first * stride;
    // The first block starts the sums unless asked to add to them: the caller does not zero.
    const bool add = accumulate || first > 0;
    const auto store = [&](std::size_t j, const dvec& s, const dvec& q) {
      (add ? dvec::load_unaligned(sum + j) + s : s).store_unaligned(sum + j);
      (add ? dvec::load_unaligned(sum_sq + j) + q : q).store_unaligned(sum_sq + j);
    };
    // float32 only: slots [j, j + lanes) of the block again, in float64.
    const auto flush_exact = [&](auto j) {  // generic: instantiated for float32 only
      f64_accumulator<Arch> lo, hi;         // the low and the high lanes
      dvec k_lo, k_hi;
      widen(vec::load_unaligned(pivot + j), k_lo, k_hi);
      for (std::size_t r = 0; r < count; ++r) {
        dvec x_lo, x_hi;
        widen(load_elements<Arch>(block + r * stride + j), x_lo, x_hi);
        lo.add_exact(x_lo, k_lo);
        hi.add_exact(x_hi, k_hi);
      }
      store(j, lo.sum, lo.sum_sq);
      store(j + lanes / 2, hi.sum, hi.sum_sq);
    };
    // The block's partials of a group of vectors of slots from j into the float64 sums. One check
    // for the group: the q are sums of squares, so their sum is finite only if each is. float32
    // partials that overflowed (or hold a NaN) are summed again in float64 (see block_vectors).
    const auto flush = [&](auto group_tag, std::size_t j, const vec* s, const vec* q) {
      constexpr std::size_t group = decltype(group_tag)::value;
      if constexpr (std::is_same<T, float>::value) {
        vec all = q[0];
        for (std::size_t g = 1; g < group; ++g) all += q[g];
        if (!partial_is_finite<Arch>(all)) {
          for (std::size_t g = 0; g < group; ++g) flush_exact(j + g * lanes);
          return;
        }
#pragma GCC unroll 4
        for (std::size_t g = 0; g < group; ++g) {
          dvec s_lo, s_hi, q_lo, q_hi;
          widen(s[g], s_lo, s_hi);
          widen(q[g], q_lo, q_hi);
          store(j + g * lanes, s_lo, q_lo);
          store(j + g * lanes + lanes / 2, s_hi, q_hi);
        }
      } else {
#pragma GCC unroll 4
        for (std::size_t g = 0; g < group; ++g) store(j + g * lanes, s[g], q[g]);
      }
    };
    std::size_t j = 0;
    constexpr std::size_t group = 4;
    for (; j + group * lanes <= width; j += group * lanes) {
      vec s[group], q[group];
      column_partials<group, Arch>(block + j, count, stride, pivot + j, s, q);
      flush(std::integral_constant<std::size_t, group>(), j, s, q);
    }
    for (; j + lanes <= width; j += lanes) {
      vec s[1], q[1];
      column_partials<1, Arch>(block + j, count, stride, pivot + j, s, q);
      flush(std::integral_constant<std::size_t, 1>(), j, s, q);
    }
    for (; j < width; ++j) {
      if (!add) sum[j] = sum_sq[j] = 0.0;
      column_sums_scalar(block + j, count, stride, pivot[j], sum[j], sum_sq[j]);
    }
  }
}

// Pivots: per channel, the mean in float64 of a few of its values spread evenly over it,
// rounded to T: near the mean, so that Σd² − (Σd)²/n does not cancel, whatever the order of the
// values (zero padding in the first rows, a dark corner, an outlier first sample); a value of
// the data alone, so chunking cannot change it. Taken as the first sample plus the mean of the
// others' differences from it, it is exactly the value of a constant channel (every difference
// is 0), whose output is then exactly zero, in float64 too. A pivot that still lands far from
// its channel's mean is corrected by the caller (see finalize_block).

/// Planes: the pivot is taken from this many runs of one float64 vector's worth of values
/// each, spread evenly over the channel (16 values on AVX2), or from up to 16 single values
/// where a plane is shorter than a vector. Rows: from this many rows spread evenly. Powers of
/// two, so that the pivot of exactly representable data stays exact (short channels of fewer
/// samples divide by their count).
constexpr std::size_t plane_pivot_runs = 4;
constexpr std::size_t plane_pivot_samples = 16;
constexpr std::size_t row_pivot_samples = 4;

template <class Arch, class S, class T = compute_t<S>>
void plane_pivots(const S* src, std::size_t len, std::size_t planes, std::size_t stride,
                  std::size_t channels, T* pivot) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  const std::size_t total = len * planes;
  if (total == 0) return;
  if (len >= lanes) {
    // Run r starts at the r-th quarter of the channel's values, moved back within its plane so
    // that it stays in one contiguous run.
    std::size_t at[plane_pivot_runs];
    for (std::size_t r = 0; r < plane_pivot_runs; ++r) {
      const std::size_t k = r * total / plane_pivot_runs;
      at[r] = k / len * stride + std::min(k % len, len - lanes);
    }
    const dvec divisor(static_cast<double>(plane_pivot_runs * lanes));
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const S* x = src + ch * len;
      const double first_value = static_cast<double>(to_compute(x[0]));
      const dvec first(first_value);
      dvec differences(0.0);
      for (std::size_t r = 0; r < plane_pivot_runs; ++r) {
        differences += load_elements_as_f64<Arch>(x + at[r]) - first;
      }
      pivot[ch] = static_cast<T>(first_value + sum_lanes<Arch>(differences / divisor));
    }
    return;
  }
  const std::size_t count = total < plane_pivot_samples ? total : plane_pivot_samples;
  std::size_t at[plane_pivot_samples];
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t k = i * total / count;
    at[i] = k / len * stride + k % len;
  }
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const S* x = src + ch * len;
    const double first = static_cast<double>(to_compute(x[0]));
    double differences = 0.0;
    for (std::size_t i = 1; i < count; ++i) {
      differences += static_cast<double>(to_compute(x[at[i]])) - first;
    }
    pivot[ch] = static_cast<T>(first + differences / static_cast<double>(count));
  }
}

/// row_pivots for a sample count known at compile time (the common ones): the loop unrolled,
/// the same additions in the same order.
template <std::size_t Samples, class Arch, class S, class T = compute_t<S>>
void row_pivots_of(const S* src, std::size_t rows, std::size_t stride, std::size_t width,
                   T* pivot) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  const std::size_t count = Samples > 0 ? Samples : rows;
  const S* row[row_pivot_samples];
  for (std::size_t i = 0; i < count; ++i) row[i] = src + i * rows / count * stride;
  const dvec divisor(static_cast<double>(count));
  std::size_t j = 0;
  for (; j + lanes <= width; j += lanes) {
    const dvec first = load_elements_as_f64<Arch>(row[0] + j);
    dvec differences(0.0);
    for (std::size_t i = 1; i < count; ++i) {
      differences += load_elements_as_f64<Arch>(row[i] + j) - first;
    }
    store_as<Arch>(pivot + j, first + differences / divisor);
  }
  for (; j < width; ++j) {
    const double first = static_cast<double>(to_compute(row[0][j]));
    double differences = 0.0;
    for (std::size_t i = 1; i < count; ++i) {
      differences += static_cast<double>(to_compute(row[i][j])) - first;
    }
    pivot[j] = static_cast<T>(first + differences / static_cast<double>(count));
  }
}

template <class Arch, class S, class T = compute_t<S>>
void row_pivots(const S* src, std::size_t rows, std::size_t stride, std::size_t width,
                T* pivot) noexcept {
  if (rows >= row_pivot_samples) {
    row_pivots_of<row_pivot_samples, Arch>(src, rows, stride, width, pivot);
  } else if (rows == 1) {
    row_pivots_of<1, Arch>(src, rows, stride, width, pivot);
  } else if (rows > 0) {
    row_pivots_of<0, Arch>(src, rows, stride, width, pivot);
  }
}

}  // namespace
}  // namespace bnorm::kernels
