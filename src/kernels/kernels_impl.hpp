// Kernel definitions, written once over xsimd and instantiated per ISA by kernels_<isa>.cpp.
// Include only from those units: each is compiled with its own -m flags.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.hpp"
#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

// ------------------------------------------------------------------------------ statistics

template <class Arch, class T>
void plane_stats(const T* src, std::size_t len, double shift, double* sum,
                 double* sum_sq) noexcept {
  using vec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  const vec k(shift);
  // Four independent chains: the adds and FMAs have a latency of 3-4 cycles, so one chain
  // would leave the vector units idle even on in-cache data.
  vec s0(0.0), s1(0.0), s2(0.0), s3(0.0);
  vec q0(0.0), q1(0.0), q2(0.0), q3(0.0);
  std::size_t i = 0;
  for (; i + 4 * lanes <= len; i += 4 * lanes) {
    const vec d0 = load_as_f64<Arch>(src + i) - k;
    const vec d1 = load_as_f64<Arch>(src + i + lanes) - k;
    const vec d2 = load_as_f64<Arch>(src + i + 2 * lanes) - k;
    const vec d3 = load_as_f64<Arch>(src + i + 3 * lanes) - k;
    s0 += d0;
    s1 += d1;
    s2 += d2;
    s3 += d3;
    q0 = fmadd(d0, d0, q0);
    q1 = fmadd(d1, d1, q1);
    q2 = fmadd(d2, d2, q2);
    q3 = fmadd(d3, d3, q3);
  }
  for (; i + lanes <= len; i += lanes) {
    const vec d = load_as_f64<Arch>(src + i) - k;
    s0 += d;
    q0 = fmadd(d, d, q0);
  }
  double s = sum_lanes<Arch>((s0 + s1) + (s2 + s3));
  double q = sum_lanes<Arch>((q0 + q1) + (q2 + q3));
  for (; i < len; ++i) {
    const double d = static_cast<double>(src[i]) - shift;
    s += d;
    q += d * d;
  }
  *sum += s;
  *sum_sq += q;
}

// The interleaved statistics walk a block of this many periods (rows) per slot vector, so each
// accumulator vector is loaded and stored once per block rather than once per row.
constexpr std::size_t rows_per_block = 8;

template <class Arch, class T>
void interleaved_stats(const T* src, std::size_t len, std::size_t period, const double* shift,
                       double* sum, double* sum_sq) noexcept {
  using vec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t periods = len / period;
  for (std::size_t first = 0; first < periods; first += rows_per_block) {
    const std::size_t rows = periods - first < rows_per_block ? periods - first : rows_per_block;
    const T* block = src + first * period;
    std::size_t j = 0;
    for (; j + lanes <= period; j += lanes) {
      const vec k = vec::load_unaligned(shift + j);
      vec s = first == 0 ? vec(0.0) : vec::load_unaligned(sum + j);
      vec q = first == 0 ? vec(0.0) : vec::load_unaligned(sum_sq + j);
      for (std::size_t r = 0; r < rows; ++r) {
        const vec d = load_as_f64<Arch>(block + r * period + j) - k;
        s += d;
        q = fmadd(d, d, q);
      }
      s.store_unaligned(sum + j);
      q.store_unaligned(sum_sq + j);
    }
    for (; j < period; ++j) {
      if (first == 0) sum[j] = sum_sq[j] = 0.0;
      for (std::size_t r = 0; r < rows; ++r) {
        const double d = static_cast<double>(block[r * period + j]) - shift[j];
        sum[j] += d;
        sum_sq[j] += d * d;
      }
    }
  }
  if (periods == 0) {
    for (std::size_t i = 0; i < period; ++i) sum[i] = sum_sq[i] = 0.0;
  }
  // The last, partial period (a whole number of rows of C).
  const T* rest = src + periods * period;
  const std::size_t count = len - periods * period;
  std::size_t j = 0;
  for (; j + lanes <= count; j += lanes) {
    const vec d = load_as_f64<Arch>(rest + j) - vec::load_unaligned(shift + j);
    (vec::load_unaligned(sum + j) + d).store_unaligned(sum + j);
    fmadd(d, d, vec::load_unaligned(sum_sq + j)).store_unaligned(sum_sq + j);
  }
  for (; j < count; ++j) {
    const double d = static_cast<double>(rest[j]) - shift[j];
    sum[j] += d;
    sum_sq[j] += d * d;
  }
}

// --------------------------------------------------------------------------- normalization

template <class Arch, class T>
xsimd::batch<T, Arch> normalize(const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
                                const xsimd::batch<T, Arch>& scale,
                                const xsimd::batch<T, Arch>& shift) noexcept {
  return fmadd(x - center, scale, shift);
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

template <class Arch, class T>
void plane_normalize(const T* src, T* dst, std::size_t len, T center, T scale, T shift,
                     bool stream) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const vec c(center), a(scale), b(shift);
  const auto compute = [&](const vec& x) { return normalize(x, c, a, b); };
  std::size_t i = 0;
  const std::size_t off = misalignment<Arch>(dst);
  if (stream && len >= 4 * lanes && off % sizeof(T) == 0) {
    // Peel up to the first aligned destination vector, then stream whole vectors.
    const std::size_t head = off == 0 ? 0 : lanes - off / sizeof(T);
    if (head) normalize_partial<Arch>(src, dst, head, compute);
    for (i = head; i + lanes <= len; i += lanes) {
      store_stream(dst + i, compute(vec::load_unaligned(src + i)));
    }
    stream_fence<Arch>();
  } else {
    for (; i + 2 * lanes <= len; i += 2 * lanes) {
      const vec x0 = vec::load_unaligned(src + i);
      const vec x1 = vec::load_unaligned(src + i + lanes);
      compute(x0).store_unaligned(dst + i);
      compute(x1).store_unaligned(dst + i + lanes);
    }
    for (; i + lanes <= len; i += lanes) compute(vec::load_unaligned(src + i)).store_unaligned(dst + i);
  }
  if (i < len) normalize_partial<Arch>(src + i, dst + i, len - i, compute);
}

template <class Arch, class T>
void interleaved_normalize(const T* src, T* dst, std::size_t len, std::size_t period,
                           const T* center, const T* scale, const T* shift, bool stream) noexcept {
  // Row by row: blocking rows here, as the statistics do, makes loads and stores 4 KiB apart
  // alias in the store buffer when C·sizeof(T) is a multiple of 4 KiB (3× slower, measured);
  // the coefficients come from L1 either way.
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  // Streaming needs every row to start aligned: an aligned dst and a period of whole vectors.
  stream = stream && misalignment<Arch>(dst) == 0 && period % lanes == 0;
  for (std::size_t base = 0; base < len; base += period) {
    const std::size_t count = len - base < period ? len - base : period;
    std::size_t j = 0;
    for (; j + lanes <= count; j += lanes) {
      const vec y = normalize(vec::load_unaligned(src + base + j), vec::load_unaligned(center + j),
                              vec::load_unaligned(scale + j), vec::load_unaligned(shift + j));
      if (stream) {
        store_stream(dst + base + j, y);
      } else {
        y.store_unaligned(dst + base + j);
      }
    }
    if (j < count) {
      // The coefficient arrays are padded by one vector, so these loads stay in bounds.
      const vec c = vec::load_unaligned(center + j), a = vec::load_unaligned(scale + j);
      const vec b = vec::load_unaligned(shift + j);
      normalize_partial<Arch>(src + base + j, dst + base + j, count - j,
                              [&](const vec& x) { return normalize(x, c, a, b); });
    }
  }
  if (stream) stream_fence<Arch>();
}

// ------------------------------------------------------------------------------- the table

template <class Arch, class T>
constexpr kernel_set<T> make_kernel_set() noexcept {
  return {&plane_stats<Arch, T>, &plane_normalize<Arch, T>, &interleaved_stats<Arch, T>,
          &interleaved_normalize<Arch, T>};
}

template <class Arch>
constexpr kernel_table make_kernel_table(bnorm::isa id) noexcept {
  return {id, xsimd::batch<float, Arch>::size, xsimd::batch<double, Arch>::size,
          make_kernel_set<Arch, float>(), make_kernel_set<Arch, double>()};
}

}  // namespace
}  // namespace bnorm::kernels
