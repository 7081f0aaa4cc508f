// Kernel definitions, written once over xsimd and instantiated per ISA by kernels_<isa>.cpp.
// Include only from those units: each is compiled with its own -m flags.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/kernels.hpp"
#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

// ------------------------------------------------------------------------------ statistics

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
template <class Arch, class T>
xsimd::batch<T, Arch> masked_tail(const T* run_end, std::size_t count,
                                  const xsimd::batch<T, Arch>& pivot) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const vec index = vec::load_aligned(lane_index<T>::values);
  const auto fresh = index >= vec(static_cast<T>(lanes - count));
  return xsimd::select(fresh, vec::load_unaligned(run_end - lanes), pivot);
}

/// Σ(x - pivot) and Σ(x - pivot)² of one run of at least one vector.
template <class Arch, class T>
void run_stats(const T* x, std::size_t len, const xsimd::batch<T, Arch>& k,
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
      const vec d0 = vec::load_unaligned(x + i) - k;
      const vec d1 = vec::load_unaligned(x + i + lanes) - k;
      s0 += d0;
      s1 += d1;
      q0 = fmadd(d0, d0, q0);
      q1 = fmadd(d1, d1, q1);
    }
    if (i + lanes <= end) {
      const vec d = vec::load_unaligned(x + i) - k;
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
        acc.add_exact(vec::load_unaligned(x + j), k);
      }
      if (whole_end < i) acc.add_exact(tail, k);
    }
  }
}

/// Channel k of `channels` has its first plane at src + k·len and pivot pivot[k].
template <class Arch, class T>
void plane_stats(const T* src, std::size_t len, std::size_t planes, std::size_t stride,
                 std::size_t channels, const T* pivot, double* sum, double* sum_sq) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const T* first = src + ch * len;
    const vec k(pivot[ch]);
    const double pivot64 = static_cast<double>(pivot[ch]);
    f64_accumulator<Arch> acc;
    double s = 0.0, q = 0.0;
    for (std::size_t p = 0; p < planes; ++p) {
      const T* x = first + p * stride;
      if (len >= lanes) {
        run_stats<Arch>(x, len, k, acc);
      } else {
        for (std::size_t i = 0; i < len; ++i) {  // runs shorter than a vector
          const double d = static_cast<double>(x[i]) - pivot64;
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
template <std::size_t Group, class Arch, class T>
void column_partials(const T* block, std::size_t count, std::size_t stride, const T* pivot,
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
    const T* x = block + r * stride;
    for (std::size_t g = 0; g < Group; ++g) {
      const vec d = vec::load_unaligned(x + g * lanes) - k[g];
      s[g] += d;
      q[g] = fmadd(d, d, q[g]);
    }
  }
}

/// One slot after the last whole vector: Σ(x − pivot), Σ(x − pivot)² over a block's rows, added
/// into sum and sum_sq in float64.
template <class T>
void column_sums_scalar(const T* block, std::size_t count, std::size_t stride, T pivot, double& sum,
                        double& sum_sq) noexcept {
  for (std::size_t r = 0; r < count; ++r) {
    const double d = static_cast<double>(block[r * stride]) - static_cast<double>(pivot);
    sum += d;
    sum_sq += d * d;
  }
}

template <class Arch, class T>
void interleaved_stats(const T* src, std::size_t rows, std::size_t width, std::size_t stride,
                       const T* pivot, double* sum, double* sum_sq, bool accumulate) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  if (rows == 0 && !accumulate) {
    for (std::size_t j = 0; j < width; ++j) sum[j] = sum_sq[j] = 0.0;
  }
  for (std::size_t first = 0; first < rows; first += rows_per_block) {
    const std::size_t count = rows - first < rows_per_block ? rows - first : rows_per_block;
    const T* block = src + first * stride;
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
        widen(vec::load_unaligned(block + r * stride + j), x_lo, x_hi);
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
/// two: the pivot of exactly representable data stays exact.
constexpr std::size_t plane_pivot_runs = 4;
constexpr std::size_t plane_pivot_samples = 16;
constexpr std::size_t row_pivot_samples = 4;

template <class Arch, class T>
void plane_pivots(const T* src, std::size_t len, std::size_t planes, std::size_t stride,
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
      const T* x = src + ch * len;
      const dvec first(static_cast<double>(x[0]));
      dvec differences(0.0);
      for (std::size_t r = 0; r < plane_pivot_runs; ++r) {
        differences += load_as_f64<Arch>(x + at[r]) - first;
      }
      pivot[ch] = static_cast<T>(x[0] + sum_lanes<Arch>(differences / divisor));
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
    const T* x = src + ch * len;
    const double first = static_cast<double>(x[0]);
    double differences = 0.0;
    for (std::size_t i = 1; i < count; ++i) differences += static_cast<double>(x[at[i]]) - first;
    pivot[ch] = static_cast<T>(first + differences / static_cast<double>(count));
  }
}

/// row_pivots for a sample count known at compile time (the common ones): the loop unrolled,
/// the same additions in the same order.
template <std::size_t Samples, class Arch, class T>
void row_pivots_of(const T* src, std::size_t rows, std::size_t stride, std::size_t width,
                   T* pivot) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  const std::size_t count = Samples > 0 ? Samples : rows;
  const T* row[row_pivot_samples];
  for (std::size_t i = 0; i < count; ++i) row[i] = src + i * rows / count * stride;
  const dvec divisor(static_cast<double>(count));
  std::size_t j = 0;
  for (; j + lanes <= width; j += lanes) {
    const dvec first = load_as_f64<Arch>(row[0] + j);
    dvec differences(0.0);
    for (std::size_t i = 1; i < count; ++i) differences += load_as_f64<Arch>(row[i] + j) - first;
    store_as<Arch>(pivot + j, first + differences / divisor);
  }
  for (; j < width; ++j) {
    const double first = static_cast<double>(row[0][j]);
    double differences = 0.0;
    for (std::size_t i = 1; i < count; ++i) differences += static_cast<double>(row[i][j]) - first;
    pivot[j] = static_cast<T>(first + differences / static_cast<double>(count));
  }
}

template <class Arch, class T>
void row_pivots(const T* src, std::size_t rows, std::size_t stride, std::size_t width,
                T* pivot) noexcept {
  if (rows >= row_pivot_samples) {
    row_pivots_of<row_pivot_samples, Arch>(src, rows, stride, width, pivot);
  } else if (rows == 1) {
    row_pivots_of<1, Arch>(src, rows, stride, width, pivot);
  } else if (rows > 0) {
    row_pivots_of<0, Arch>(src, rows, stride, width, pivot);
  }
}

// --------------------------------------------------------------------------- normalization

template <class Arch, class T>
xsimd::batch<T, Arch> normalize(const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
                                const xsimd::batch<T, Arch>& scale,
                                const xsimd::batch<T, Arch>& shift) noexcept {
  return fmadd(x - center, scale, shift);
}

/// The three forms of y = (x·prescale − center)·scale + shift: with every prescale 1 and every
/// center +0 (two coefficient streams), with every prescale 1 (three), and the general one of
/// extreme channels (four). Each drops only operations that change no bit.
enum class form { uncentered, centered, prescaled };

template <form Form, class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> normalize_as(
    const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
    const xsimd::batch<T, Arch>& scale, const xsimd::batch<T, Arch>& shift,
    const xsimd::batch<T, Arch>& prescale) noexcept {
  if (Form == form::uncentered) return fmadd(x, scale, shift);
  if (Form == form::centered) return normalize(x, center, scale, shift);
  return fmadd(fms(x, prescale, center), scale, shift);
}

/// Runs `count` (< one vector) elements through the vector code via a padded copy, so every
/// element of a tensor is rounded the same way, whatever its position.
template <class Arch, class T, class Compute>
void normalize_partial(const T* src, T* dst, std::size_t count, Compute compute) noexcept {
  using vec = xsimd::batch<T, Arch>;
  alignas(64) T padded[vec::size] = {};
  for (std::size_t i = 0; i < count; ++i) padded[i] = src[i];
  compute(vec::load_aligned(padded)).store_aligned(padded);
  for (std::size_t i = 0; i < count; ++i) dst[i] = padded[i];
}

template <class Arch, class T>
std::size_t misalignment(const T* p) noexcept {
  constexpr std::size_t bytes = xsimd::batch<T, Arch>::size * sizeof(T);
  return reinterpret_cast<std::uintptr_t>(p) % bytes;
}

/// y[j] for j in [begin, end) with ordinary stores; compute(j, x) gives the vector at j. The
/// helpers take `compute` by value: a store through y could alias a closure held by
/// reference, and the loop would reload its coefficient pointers at every vector.
template <class Arch, class T, class Compute>
void store_run(const T* x, T* y, std::size_t begin, std::size_t end, Compute compute) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  std::size_t j = begin;
  for (; j + lanes <= end; j += lanes)
    compute(j, vec::load_unaligned(x + j)).store_unaligned(y + j);
  if (j < end) {
    normalize_partial<Arch>(x + j, y + j, end - j, [&](const vec& v) { return compute(j, v); });
  }
}

/// y[0, n) with streaming stores for its whole cache lines and ordinary ones for the partial
/// lines at either end: an ordinary store into a line that streaming stores are filling makes
/// the core flush the line and read it back (docs/design.md). y must be aligned to its element.
template <class Arch, class T, class Compute>
void stream_run(const T* x, T* y, std::size_t n, Compute compute) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  constexpr std::size_t line = 64 / sizeof(T);  // a multiple of the lanes on every ISA
  const std::size_t into_line = reinterpret_cast<std::uintptr_t>(y) % 64 / sizeof(T);
  const std::size_t head = std::min(n, (line - into_line) % line);
  const std::size_t body_end = head + (n - head) / line * line;
  if (head > 0) store_run<Arch>(x, y, 0, head, compute);
  for (std::size_t i = head; i < body_end; i += lanes) {
    store_stream(y + i, compute(i, vec::load_unaligned(x + i)));
  }
  if (body_end < n) store_run<Arch>(x, y, body_end, n, compute);
}

/// Whether v is +0.0, bit for bit: x − (+0) is x for every x (−0, NaN and infinities
/// included), so such a center can be left out without changing a bit. −0 is not (−0 − (−0)
/// is +0).
template <class T>
bool is_positive_zero(T v) noexcept {
  std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t> bits;
  std::memcpy(&bits, &v, sizeof bits);
  return bits == 0;
}

/// Whether every one of the n values is +0.0 (see is_positive_zero).
template <class Arch, class T>
bool all_positive_zero(const T* a, std::size_t n) noexcept {
  using bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  using vec = xsimd::batch<T, Arch>;
  using bits_vec = xsimd::batch<bits_t, Arch>;
  bits_vec any(bits_t(0));
  std::size_t j = 0;
  for (; j + vec::size <= n; j += vec::size) {
    any = any | xsimd::bitwise_cast<bits_vec>(vec::load_unaligned(a + j));
  }
  alignas(64) bits_t lanes[bits_vec::size];
  any.store_aligned(lanes);
  bits_t all = 0;
  for (const bits_t lane : lanes) all |= lane;
  bool zero = all == 0;
  for (; j < n; ++j) zero = zero && is_positive_zero(a[j]);
  return zero;
}

/// Whether every one of the n values is 1 (no channel needs a prescale).
template <class Arch, class T>
bool all_one(const T* a, std::size_t n) noexcept {
  using vec = xsimd::batch<T, Arch>;
  const vec one(T(1));
  auto differs = one != one;  // all false
  std::size_t j = 0;
  for (; j + vec::size <= n; j += vec::size)
    differs = differs | (vec::load_unaligned(a + j) != one);
  bool same = !xsimd::any(differs);
  for (; j < n; ++j) same = same && a[j] == T(1);
  return same;
}

template <class T>
bool element_aligned(const T* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % sizeof(T) == 0;
}

/// `planes` planes of len values, `stride` apart, through compute(x vector).
template <class Arch, class T, class Compute>
void normalize_planes(const T* src, T* dst, std::size_t len, std::size_t planes, std::size_t stride,
                      bool stream, Compute compute) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  for (std::size_t p = 0; p < planes; ++p) {
    const T* x = src + p * stride;
    T* y = dst + p * stride;
    if (stream) {
      stream_run<Arch>(x, y, len, [compute](std::size_t, const vec& v) { return compute(v); });
      continue;
    }
    if (len < lanes) {
      normalize_partial<Arch>(x, y, len, compute);
      continue;
    }
    // The last vector overlaps the one before it when len is not a multiple of the lanes.
    // It is computed before anything is stored, so in place it still reads x, and stored
    // last.
    const std::size_t last = len - lanes;
    const vec tail = compute(vec::load_unaligned(x + last));
    std::size_t i = 0;
    for (; i + lanes < last; i += 2 * lanes) {
      const vec y0 = compute(vec::load_unaligned(x + i));
      const vec y1 = compute(vec::load_unaligned(x + i + lanes));
      y0.store_unaligned(y + i);
      y1.store_unaligned(y + i + lanes);
    }
    for (; i < last; i += lanes) compute(vec::load_unaligned(x + i)).store_unaligned(y + i);
    tail.store_unaligned(y + last);
  }
}

/// Channel k of `channels` has its first plane at src + k·len (dst likewise) and the
/// coefficients center[k], scale[k], shift[k]. Where every center is +0 it is left out (same
/// bits, one operation less per vector).
/// plane_normalize's channels [ch0, ch1), in one form.
template <form Form, class Arch, class T>
void normalize_channel_planes(const T* src, T* dst, std::size_t len, std::size_t planes,
                              std::size_t stride, std::size_t ch0, std::size_t ch1,
                              coefficients<const T> k, bool stream) noexcept {
  using vec = xsimd::batch<T, Arch>;
  for (std::size_t ch = ch0; ch < ch1; ++ch) {
    const auto run = [&](auto compute) {
      normalize_planes<Arch>(src + ch * len, dst + ch * len, len, planes, stride, stream, compute);
    };
    // Each closure holds only the coefficients its form reads: normalize_planes copies it.
    const vec a(k.scale[ch]), b(k.shift[ch]);
    if constexpr (Form == form::uncentered) {
      run([a, b](const vec& v) { return fmadd(v, a, b); });
    } else if constexpr (Form == form::centered) {
      const vec c(k.center[ch]);
      run([c, a, b](const vec& v) { return normalize(v, c, a, b); });
    } else {
      const vec c(k.center[ch]), h(k.prescale[ch]);
      run([c, a, b, h](const vec& v) { return normalize_as<form::prescaled>(v, c, a, b, h); });
    }
  }
}

template <class Arch, class T>
void plane_normalize(const T* src, T* dst, std::size_t len, std::size_t planes, std::size_t stride,
                     std::size_t channels, coefficients<const T> k, bool prescaled,
                     bool stream) noexcept {
  stream = stream && element_aligned(dst);
  if (prescaled && !all_one<Arch>(k.prescale, channels)) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      if (k.prescale[ch] != T(1)) {
        normalize_channel_planes<form::prescaled, Arch>(src, dst, len, planes, stride, ch, ch + 1,
                                                        k, stream);
      } else {
        normalize_channel_planes<form::centered, Arch>(src, dst, len, planes, stride, ch, ch + 1, k,
                                                       stream);
      }
    }
  } else if (all_positive_zero<Arch>(k.center, channels)) {
    normalize_channel_planes<form::uncentered, Arch>(src, dst, len, planes, stride, 0, channels, k,
                                                     stream);
  } else {
    normalize_channel_planes<form::centered, Arch>(src, dst, len, planes, stride, 0, channels, k,
                                                   stream);
  }
  if (stream) stream_fence<Arch>();
}

/// Rows of exactly `Vectors` whole vectors: the coefficients stay in registers for all the
/// rows (small C, whose period the planner makes four vectors long), instead of three loads
/// from L1 per vector of data.
template <std::size_t Vectors, class Arch, class T>
void narrow_rows_normalize(const T* src, T* dst, std::size_t rows, std::size_t stride,
                           const T* center, const T* scale, const T* shift, bool stream) noexcept {
  // (Prescale 1 in every slot: the caller checked.)
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec c[Vectors], a[Vectors], b[Vectors];
  for (std::size_t v = 0; v < Vectors; ++v) {
    c[v] = vec::load_unaligned(center + v * lanes);
    a[v] = vec::load_unaligned(scale + v * lanes);
    b[v] = vec::load_unaligned(shift + v * lanes);
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const T* x = src + r * stride;
    T* y = dst + r * stride;
    for (std::size_t v = 0; v < Vectors; ++v) {
      const vec out = normalize(vec::load_unaligned(x + v * lanes), c[v], a[v], b[v]);
      if (stream) {
        store_stream(y + v * lanes, out);
      } else {
        out.store_unaligned(y + v * lanes);
      }
    }
  }
}

/// `Rows` rows, `stride` apart, of `Vectors` whole vectors from x (y likewise): the coefficients
/// loaded once for all the rows, and every row's values loaded before any is stored. The
/// caller takes two vectors (a whole 64-byte line on AVX2) per row and step: the next step's
/// loads then start on lines the step's stores did not touch, faster and in fewer instructions
/// than one vector per step (docs/design.md). Always inlined: as a call, each step paid a call
/// and a vzeroupper.
template <std::size_t Rows, std::size_t Vectors, form Form, class Arch, class T>
[[gnu::always_inline]] inline void normalize_rows(const T* x, T* y, std::size_t stride,
                                                  const coefficients<const T>& k,
                                                  std::size_t j) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec c[Vectors], a[Vectors], b[Vectors], h[Vectors], v[Rows][Vectors];
  for (std::size_t g = 0; g < Vectors; ++g) {
    if (Form != form::uncentered) c[g] = vec::load_unaligned(k.center + j + g * lanes);
    if (Form == form::prescaled) h[g] = vec::load_unaligned(k.prescale + j + g * lanes);
    a[g] = vec::load_unaligned(k.scale + j + g * lanes);
    b[g] = vec::load_unaligned(k.shift + j + g * lanes);
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    for (std::size_t g = 0; g < Vectors; ++g)
      v[r][g] = vec::load_unaligned(x + r * stride + g * lanes);
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    for (std::size_t g = 0; g < Vectors; ++g) {
      normalize_as<Form, Arch>(v[r][g], c[g], a[g], b[g], h[g])
          .store_unaligned(y + r * stride + g * lanes);
    }
  }
}

/// Rows [0, rows − rows % Together) of interleaved_normalize's in-cache path, Together at a
/// time.
template <std::size_t Together, form Form, class Arch, class T, class Compute>
std::size_t normalize_row_groups(const T* src, T* dst, std::size_t rows, std::size_t width,
                                 std::size_t stride, coefficients<const T> k,
                                 Compute compute) noexcept {
  constexpr std::size_t lanes = xsimd::batch<T, Arch>::size;
  constexpr std::size_t together = Together;
  const std::size_t whole = width - width % lanes;
  std::size_t r = 0;
  for (; r + together <= rows; r += together) {
    const T* x = src + r * stride;
    T* y = dst + r * stride;
    std::size_t j = 0;
    for (; j + 2 * lanes <= whole; j += 2 * lanes) {
      normalize_rows<together, 2, Form, Arch>(x + j, y + j, stride, k, j);
    }
    if (j < whole) normalize_rows<together, 1, Form, Arch>(x + j, y + j, stride, k, j);
    for (std::size_t i = 0; whole < width && i < together; ++i) {
      store_run<Arch>(x + i * stride, y + i * stride, whole, width, compute);
    }
  }
  return r;
}

/// interleaved_normalize for rows wider than the narrow kernels take, in one of the forms.
template <form Form, class Arch, class T>
void wide_rows_normalize(const T* src, T* dst, std::size_t rows, std::size_t width,
                         std::size_t stride, coefficients<const T> k, bool stream) noexcept {
  using vec = xsimd::batch<T, Arch>;
  // The coefficient arrays are padded by one vector past the width: the loads for a partial
  // last vector stay in bounds.
  const T* center = k.center;
  const T* scale = k.scale;
  const T* shift = k.shift;
  const T* prescale = k.prescale;
  const auto compute = [center, scale, shift, prescale](std::size_t j, const vec& v) {
    return normalize_as<Form, Arch>(
        v, Form == form::uncentered ? vec(T(0)) : vec::load_unaligned(center + j),
        vec::load_unaligned(scale + j), vec::load_unaligned(shift + j),
        Form == form::prescaled ? vec::load_unaligned(prescale + j) : vec(T(1)));
  };
  std::size_t r = 0;
  if (!stream) {
    // Column blocks (width < stride) take four rows per coefficient load, and load all four
    // before storing any: a block's row r + 1 then never loads from the 4 KiB offsets where
    // row r's stores are still pending (a 4 KiB stride puts them there). Whole rows (width ==
    // stride) of 1 KiB or more are one contiguous run, walked one row at a time, as fast as a
    // plain y = a·x + b pass over the same bytes; shorter rows keep the four-row walk, and
    // streamed rows go one at a time (docs/design.md has the timings of each).
    if (width == stride && width * sizeof(T) >= 1024) {
      r = normalize_row_groups<1, Form, Arch>(src, dst, rows, width, stride, k, compute);
    } else {
      r = normalize_row_groups<4, Form, Arch>(src, dst, rows, width, stride, k, compute);
    }
  }
  for (; r < rows; ++r) {
    if (stream) {
      stream_run<Arch>(src + r * stride, dst + r * stride, width, compute);
    } else {
      store_run<Arch>(src + r * stride, dst + r * stride, 0, width, compute);
    }
  }
}

template <class Arch, class T>
void interleaved_normalize(const T* src, T* dst, std::size_t rows, std::size_t width,
                           std::size_t stride, coefficients<const T> k, bool prescaled,
                           bool stream) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const T* center = k.center;
  const T* scale = k.scale;
  const T* shift = k.shift;
  // Extreme channels (see coefficients) take the general form, on the wide-row path.
  prescaled = prescaled && !all_one<Arch>(k.prescale, width);
  // Narrow rows stream whole vectors, so every row must start aligned: an aligned dst and a
  // stride of whole vectors. Other rows stream their whole cache lines, wherever they start.
  const bool aligned_rows = misalignment<Arch>(dst) == 0 && stride % lanes == 0;
  if (!prescaled && width % lanes == 0 && width <= 4 * lanes && (aligned_rows || !stream)) {
    switch (width / lanes) {
      case 1:
        narrow_rows_normalize<1, Arch>(src, dst, rows, stride, center, scale, shift, stream);
        break;
      case 2:
        narrow_rows_normalize<2, Arch>(src, dst, rows, stride, center, scale, shift, stream);
        break;
      case 3:
        narrow_rows_normalize<3, Arch>(src, dst, rows, stride, center, scale, shift, stream);
        break;
      case 4:
        narrow_rows_normalize<4, Arch>(src, dst, rows, stride, center, scale, shift, stream);
        break;
      default: break;  // width 0: nothing to do
    }
    if (stream) stream_fence<Arch>();
    return;
  }
  stream = stream && element_aligned(dst);
  // A block whose centers are all +0 (see store_coefficients) reads two coefficient streams,
  // not three: the third costs about 10% from L3 (docs/design.md).
  if (prescaled) {
    wide_rows_normalize<form::prescaled, Arch>(src, dst, rows, width, stride, k, stream);
  } else if (all_positive_zero<Arch>(center, width)) {
    wide_rows_normalize<form::uncentered, Arch>(src, dst, rows, width, stride, k, stream);
  } else {
    wide_rows_normalize<form::centered, Arch>(src, dst, rows, width, stride, k, stream);
  }
  if (stream) stream_fence<Arch>();
}

// -------------------------------------------------------------------------- per channel

template <class Arch, class T>
bool channel_moments(std::size_t channels, double count, double eps, const T* pivot, const T* gamma,
                     double* sum_to_mean, double* sum_sq_to_variance, double* inv_std,
                     double* scale, double resum_below) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  bool scalar_below = false;
  const auto one = [&](std::size_t c) {  // the same operations, one channel
    const double offset = sum_to_mean[c] / count;
    double variance = (sum_sq_to_variance[c] - sum_to_mean[c] * offset) / count;
    if (variance < 0.0) variance = 0.0;  // rounding only; a NaN stays NaN
    sum_to_mean[c] = static_cast<double>(pivot[c]) + offset;
    sum_sq_to_variance[c] = variance;
    scalar_below |= variance + eps < resum_below || !std::isfinite(variance) ||
                    offset * offset > max_pivot_offset_squared * variance;
    inv_std[c] = 1.0 / std::sqrt(variance + eps);
    scale[c] = (gamma ? static_cast<double>(gamma[c]) : 1.0) * inv_std[c];
  };
  const dvec n(count), e(eps), zero(0.0), unit(1.0), small(resum_below),
      bound(max_pivot_offset_squared);
  auto below = zero < zero;  // all false
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) {
    const dvec s = dvec::load_unaligned(sum_to_mean + c);
    const dvec q = dvec::load_unaligned(sum_sq_to_variance + c);
    const dvec offset = s / n;
    dvec variance = (q - s * offset) / n;
    variance = xsimd::select(variance < zero, zero, variance);
    (load_as_f64<Arch>(pivot + c) + offset).store_unaligned(sum_to_mean + c);
    variance.store_unaligned(sum_sq_to_variance + c);
    below = below | (variance + e < small) | !xsimd::isfinite(variance) |
            (offset * offset > bound * variance);
    const dvec inv = unit / xsimd::sqrt(variance + e);
    inv.store_unaligned(inv_std + c);
    (gamma ? load_as_f64<Arch>(gamma + c) * inv : inv).store_unaligned(scale + c);
  }
  for (; c < channels; ++c) one(c);
  return scalar_below || xsimd::any(below);
}

// y = (x − center)·scale + shift. The center is the mean rounded to T, so x − center is exact
// for x near the mean (Sterbenz); the part of the mean T cannot hold goes into the shift, where
// it is small. Folding the whole mean into the shift (x·a + b) would cancel when |mean| ≫ std.
// Where |mean| ≤ std/4 it does not: the center is then +0 and the shift takes mean·scale, whose
// magnitude is at most |gamma|/4, so the roundings of x·scale and of the shift grow by at most
// half an ulp of |gamma|. A block of such channels normalizes from two arrays instead of three.

/// A finite float64 value beyond T's range becomes T's largest finite value of its sign, not an
/// infinity: a constant channel with a tiny var + eps then still gives exactly 0·scale = 0, as
/// the float64 reference does, instead of 0·inf = NaN. Infinities and NaN stay.
template <class Arch, class T>
xsimd::batch<double, Arch> saturate_to(const xsimd::batch<double, Arch>& v) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  const dvec largest(static_cast<double>(std::numeric_limits<T>::max()));
  const dvec finite_limit(std::numeric_limits<double>::max());
  const dvec magnitude = xsimd::abs(v);
  const auto beyond = (magnitude > largest) & (magnitude <= finite_limit);
  return xsimd::select(beyond, xsimd::select(v > dvec(0.0), largest, -largest), v);
}

/// saturate_to for one value, for the channels after the last whole vector.
template <class T>
T saturate_scalar(double v) noexcept {
  constexpr double largest = static_cast<double>(std::numeric_limits<T>::max());
  const double magnitude = std::fabs(v);
  if (magnitude > largest && magnitude <= std::numeric_limits<double>::max()) {
    return v > 0.0 ? std::numeric_limits<T>::max() : -std::numeric_limits<T>::max();
  }
  return static_cast<T>(v);
}

/// Where the mean is within a quarter of the standard deviation: fold it into the shift.
inline bool folds(double mean, double inv_std) noexcept {
  return std::fabs(mean) * inv_std <= 0.25;
}

/// A center from which x − center can overflow for a finite x: within half an ulp of T's
/// largest value (2^103 for float, 2^970 for double).
template <class T>
constexpr double overflowing_center() noexcept {
  using limits = std::numeric_limits<T>;
  double value = 1.0;
  for (int i = 0; i < limits::max_exponent - limits::digits - 1; ++i) value *= 2.0;
  return value;
}

/// The prescale of a channel (see kernels::coefficients): 1 unless x − center could overflow
/// or the scale is outside T's normal range. Then a power of two h with scale/h in [1, 2), as
/// far as T holds h: at least T's least normal value (x·h and center·h stay exact near the
/// center), at most its largest power of two; at most 1/2 where the center overflows, so that
/// x·h − center·h cannot. A scale beyond T (1/std of subnormal data with eps 0) keeps the
/// prescale 1, and saturates, where center·h would overflow or h cannot bring it into range.
template <class T>
double prescale_for(double center, double scale) noexcept {
  using limits = std::numeric_limits<T>;
  const double least = static_cast<double>(limits::min());
  const double largest = static_cast<double>(limits::max());
  const double largest_power = std::ldexp(1.0, limits::max_exponent - 1);
  const double magnitude = std::fabs(scale);
  const bool wide = std::fabs(center) >= overflowing_center<T>();
  const bool subnormal_scale = scale != 0.0 && magnitude < least;
  const bool huge_scale = magnitude > largest;
  if (!(wide || subnormal_scale || huge_scale) || !std::isfinite(scale)) return 1.0;
  int exponent = 0;
  std::frexp(scale, &exponent);  // |scale| = m·2^exponent, m in [1/2, 1)
  const double h = std::fmin(std::fmax(std::ldexp(1.0, exponent - 1), least), largest_power);
  if (huge_scale) {
    const bool fits = !wide && std::fabs(center) * h <= largest && magnitude / h <= largest;
    return fits ? h : 1.0;
  }
  if (magnitude < 1.0) return h;
  return magnitude <= 0.5 * largest ? 0.5 : 1.0;
}

template <class T>
void store_coefficients_scalar(double mean, double inv_std, double scale, double beta,
                               coefficients<T> out) noexcept {
  const T center = folds(mean, inv_std) ? T(0) : static_cast<T>(mean);
  const double residual = mean - static_cast<double>(center);
  const double h = prescale_for<T>(center, scale);
  *out.center = static_cast<T>(static_cast<double>(center) * h);  // exact: h is a power of two
  *out.scale = saturate_scalar<T>(scale / h);
  *out.shift = saturate_scalar<T>(beta - residual * scale);
  *out.prescale = static_cast<T>(h);
}

/// The coefficients of `lanes` channels from their float64 mean, 1/std and scale: center = +0
/// where the mean folds, else the mean rounded to T; scale saturated to T; shift = beta −
/// (mean − center)·scale, saturated; prescale 1. The same operations as
/// store_coefficients_scalar, so vector and scalar channels agree to the bit. Returns the lanes
/// that need a prescale (extreme channels): the caller redoes those through the scalar code.
template <class Arch, class T>
auto store_coefficients(const xsimd::batch<double, Arch>& mean,
                        const xsimd::batch<double, Arch>& inv_std,
                        const xsimd::batch<double, Arch>& scale,
                        const xsimd::batch<double, Arch>& beta, coefficients<T> out) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  const auto fold = xsimd::abs(mean) * inv_std <= dvec(0.25);
  store_as<Arch>(out.center, xsimd::select(fold, dvec(0.0), mean));
  const dvec center = load_as_f64<Arch>(out.center);
  const auto residual = mean - center;
  store_as<Arch>(out.scale, saturate_to<Arch, T>(scale));
  store_as<Arch>(out.shift, saturate_to<Arch, T>(beta - residual * scale));
  store_as<Arch>(out.prescale, dvec(1.0));
  const dvec magnitude = xsimd::abs(scale);
  return (xsimd::abs(center) >= dvec(overflowing_center<T>())) |
         ((magnitude < dvec(static_cast<double>(std::numeric_limits<T>::min()))) &
          (magnitude > dvec(0.0))) |
         (magnitude > dvec(static_cast<double>(std::numeric_limits<T>::max())));
}

/// The coefficients of channels [0, channels) through channel(c, out) for each vector of
/// channels at c (returning its extreme lanes) and channel_scalar(c, out) for single ones;
/// where some channel needs a prescale, all of them again through the scalar code (same bits
/// where the prescale is 1). Returns whether some channel needs one.
template <class Arch, class T, class Vector, class Scalar>
bool all_coefficients(std::size_t channels, coefficients<T> out, const Vector& channel,
                      const Scalar& channel_scalar) noexcept {
  constexpr std::size_t lanes = xsimd::batch<double, Arch>::size;
  const xsimd::batch<double, Arch> zero(0.0);
  auto extreme = zero != zero;  // all false
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) extreme = extreme | channel(c, out + c);
  bool prescaled = false;
  for (; c < channels; ++c) {
    channel_scalar(c, out + c);
    prescaled = prescaled || out.prescale[c] != T(1);
  }
  if (!xsimd::any(extreme)) return prescaled;
  for (c = 0; c < channels; ++c) channel_scalar(c, out + c);
  return true;
}

template <class Arch, class T>
bool channel_coefficients(std::size_t channels, const double* mean, const double* inv_std,
                          const double* scale, const T* beta, coefficients<T> out) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  return all_coefficients<Arch>(
      channels, out,
      [&](std::size_t c, coefficients<T> at) {
        return store_coefficients<Arch>(
            dvec::load_unaligned(mean + c), dvec::load_unaligned(inv_std + c),
            dvec::load_unaligned(scale + c), beta ? load_as_f64<Arch>(beta + c) : dvec(0.0), at);
      },
      [&](std::size_t c, coefficients<T> at) {
        store_coefficients_scalar(mean[c], inv_std[c], scale[c],
                                  beta ? static_cast<double>(beta[c]) : 0.0, at);
      });
}

template <class Arch, class T>
bool inference_coefficients(std::size_t channels, double eps, const T* mean, const T* variance,
                            const T* gamma, const T* beta, coefficients<T> out) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  const dvec e(eps), unit(1.0);
  return all_coefficients<Arch>(
      channels, out,
      [&](std::size_t c, coefficients<T> at) {
        const dvec inv = unit / xsimd::sqrt(load_as_f64<Arch>(variance + c) + e);
        return store_coefficients<Arch>(load_as_f64<Arch>(mean + c), inv,
                                        gamma ? load_as_f64<Arch>(gamma + c) * inv : inv,
                                        beta ? load_as_f64<Arch>(beta + c) : dvec(0.0), at);
      },
      [&](std::size_t c, coefficients<T> at) {
        const double inv = 1.0 / std::sqrt(static_cast<double>(variance[c]) + eps);
        store_coefficients_scalar(static_cast<double>(mean[c]), inv,
                                  (gamma ? static_cast<double>(gamma[c]) : 1.0) * inv,
                                  beta ? static_cast<double>(beta[c]) : 0.0, at);
      });
}

template <class Arch, class T>
void narrow(std::size_t channels, const double* in, T* out) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) store_as<Arch>(out + c, dvec::load_unaligned(in + c));
  for (; c < channels; ++c) out[c] = static_cast<T>(in[c]);
}

template <class Arch, class T>
void blend_running(std::size_t channels, const double* batch, double factor, double weight,
                   T* running) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  const double keep = 1.0 - weight;
  const dvec f(factor), w(weight), k(keep);
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) {
    const dvec b = dvec::load_unaligned(batch + c) * f;
    store_as<Arch>(running + c, w * b + k * load_as_f64<Arch>(running + c));
  }
  for (; c < channels; ++c) {  // the same operations, one channel
    running[c] =
        static_cast<T>(weight * (batch[c] * factor) + keep * static_cast<double>(running[c]));
  }
}

// ------------------------------------------------------------------------------- the table

template <class Arch, class T>
constexpr kernel_set<T> make_kernel_set() noexcept {
  return {
      &plane_pivots<Arch, T>,    &row_pivots<Arch, T>,           &plane_stats<Arch, T>,
      &plane_normalize<Arch, T>, &interleaved_stats<Arch, T>,    &interleaved_normalize<Arch, T>,
      &channel_moments<Arch, T>, &channel_coefficients<Arch, T>, &inference_coefficients<Arch, T>,
      &narrow<Arch, T>,          &blend_running<Arch, T>};
}

template <class Arch>
constexpr kernel_table make_kernel_table(bnorm::isa id) noexcept {
  return {id, xsimd::batch<float, Arch>::size, xsimd::batch<double, Arch>::size,
          make_kernel_set<Arch, float>(), make_kernel_set<Arch, double>()};
}

}  // namespace
}  // namespace bnorm::kernels
