// Reduce kernels: per-channel (per-slot) pairs of sums over the data, written once over the kind
// of terms they sum: the forward's Σ(x − pivot) and Σ(x − pivot)², the backward's Σdy and
// Σdy·(x − mean); and the pivots the forward subtracts. The data is of a storage type S, loaded
// through the storage layer (storage.hpp) and computed in T = compute_t<S>, the type of the
// centers. Part of the kernels compiled once per ISA: include only from kernels_impl.hpp.
#pragma once

#include <algorithm>
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
  /// add() into an accumulator that holds nothing yet, without adding to its zeros.
  void set(const xsimd::batch<float, Arch>& s, const xsimd::batch<float, Arch>& q) noexcept {
    xsimd::batch<double, Arch> lo, hi;
    widen(s, lo, hi);
    sum = lo + hi;
    widen(q, lo, hi);
    sum_sq = lo + hi;
  }
  void set(const xsimd::batch<double, Arch>& s, const xsimd::batch<double, Arch>& q) noexcept {
    sum = s;
    sum_sq = q;
  }
};

/// 0, 1, 2, ... as T, for lane masks.
template <class T>
struct lane_index {
  alignas(64) static constexpr T values[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                               8, 9, 10, 11, 12, 13, 14, 15};
};

/// Which lanes of a vector a kernel takes (fresh_lanes).
template <class T, class Arch>
using lane_mask = xsimd::batch_bool<T, Arch>;

/// The lanes of a vector at or after lane `counted`: the last values of a run of at least one
/// vector read as its last whole vector, the lanes already counted masked out (so that they add
/// zero): no read past the run, no scalar loop.
template <class Arch, class T>
lane_mask<T, Arch> fresh_lanes(std::size_t counted) noexcept {
  using vec = xsimd::batch<T, Arch>;
  return vec::load_aligned(lane_index<T>::values) >= vec(static_cast<T>(counted));
}

/// How many float64 vectors a vector of T holds lane for lane: float's low and high halves, or
/// float64's own.
template <class T>
constexpr std::size_t halves_of = std::is_same<T, float>::value ? 2 : 1;

/// A vector of T as halves_of<T> float64 vectors, lane for lane.
template <class Arch, class T>
void as_f64_halves(const xsimd::batch<T, Arch>& v, xsimd::batch<double, Arch> (&out)[2]) noexcept {
  if constexpr (std::is_same<T, float>::value) {
    widen(v, out[0], out[1]);
  } else {
    out[0] = out[1] = v;
  }
}

// The terms a reduce kernel sums: per lane, two sums (s, q) of terms of the elements at offset
// i from the terms' base pointers, given the channel's (slot's) center k. Every reduce kernel is
// written once over them, so the forward statistics and the backward's gradient sums share
// their traversal, blocking and overflow handling. Each kind provides:
//   add(i, k, s, q)               one vector of terms, in T
//   add_masked(i, fresh, k, s, q)    the vector at i, only its lanes `fresh` (fresh_lanes)
//   add_pair(i, k0, k1, s0, q0, s1, q1)  two vectors of terms from i into two chains, in the
//                                 order of load_elements_in_any_order, each chain's centers
//   add_exact(i, k, acc)          one vector of terms in float64 (float32: both halves)
//   add_exact_masked(i, fresh, k, acc)  likewise, only its lanes `fresh`
//   add_exact_lanes(i, k, acc)    one vector of terms in float64 lane for lane (rows: each lane
//                                 its own slot), its halves (as_f64_halves) into acc[0], acc[1],
//                                 around the center's halves k[0], k[1]
//   add_scalar(i, k, s, q)        one element in float64
//   finite(s, q)                  whether T partials kept every bit they should (no overflow,
//                                 no NaN): else the block is summed again with add_exact.
//   aligned_to(bytes)             whether every source starts on a multiple of `bytes`
//   prefetch(i, bytes)            the cache line `bytes` past the element at i (see fetch_line),
//                                 ahead of its use
//   storage                       the storage type S
//   sources                       how many tensors the terms read (x; or x and dy)

/// The forward statistics: Σd and Σd², d = x − k.
template <class Arch, class S>
struct deviation_terms {
  using storage = S;
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  static constexpr std::size_t sources = 1;
  const S* x;

  void prefetch(std::size_t i, std::size_t bytes_ahead) const noexcept {
    fetch_line(x + i, bytes_ahead);
  }
  bool aligned_to(std::size_t bytes) const noexcept { return is_aligned(x, bytes); }

  void add(std::size_t i, const vec& k, vec& s, vec& q) const noexcept {
    // −d = k − x, so that a float load folds into the subtraction: s − (−d) and (−d)² are
    // s + d and d² to the bit (and s, started at +0, is never −0).
    const vec minus_d = k - load_elements<Arch>(x + i);
    s -= minus_d;
    q = fmadd(minus_d, minus_d, q);
  }
  /// The 2 × lanes elements from i into two chains, in the storage's order (see
  /// load_elements_in_any_order): which lane of which chain adds an element never shows in a
  /// run's sums but through their rounding, the same in every call.
  /// k0, k1: the centers of the lanes of each chain in that order (rows: to_even_and_odd).
  void add_pair(std::size_t i, const vec& k0, const vec& k1, vec& s0, vec& q0, vec& s1,
                vec& q1) const noexcept {
    vec v0, v1;
    load_elements_in_any_order<Arch>(x + i, v0, v1);
    const vec minus_d0 = k0 - v0, minus_d1 = k1 - v1;
    s0 -= minus_d0;
    q0 = fmadd(minus_d0, minus_d0, q0);
    s1 -= minus_d1;
    q1 = fmadd(minus_d1, minus_d1, q1);
  }
  void add_masked(std::size_t i, const lane_mask<T, Arch>& fresh, const vec& k, vec& s,
                  vec& q) const noexcept {
    const vec d = xsimd::select(fresh, load_elements<Arch>(x + i), k) - k;
    s += d;
    q = fmadd(d, d, q);
  }
  void add_exact(std::size_t i, const vec& k, f64_accumulator<Arch>& acc) const noexcept {
    add_in_f64(load_elements<Arch>(x + i), k, acc);
  }
  void add_exact_masked(std::size_t i, const lane_mask<T, Arch>& fresh, const vec& k,
                        f64_accumulator<Arch>& acc) const noexcept {
    add_in_f64(xsimd::select(fresh, load_elements<Arch>(x + i), k), k, acc);
  }
  void add_exact_lanes(std::size_t i, const xsimd::batch<double, Arch> (&k)[2],
                       f64_accumulator<Arch> (&acc)[2]) const noexcept {
    xsimd::batch<double, Arch> v[2];
    as_f64_halves<Arch>(load_elements<Arch>(x + i), v);
    for (std::size_t h = 0; h < halves_of<T>; ++h) add_in_f64(v[h], k[h], acc[h]);
  }
  void add_scalar(std::size_t i, double k, double& s, double& q) const noexcept {
    const double d = static_cast<double>(to_compute(x[i])) - k;
    s += d;
    q += d * d;
  }
  /// q sums squares: it is finite only if every square and every d is.
  static bool finite(const vec&, const vec& q) noexcept { return xsimd::all(xsimd::isfinite(q)); }

 private:
  static void add_in_f64(const xsimd::batch<float, Arch>& v, const xsimd::batch<float, Arch>& k,
                         f64_accumulator<Arch>& acc) noexcept {
    xsimd::batch<double, Arch> x_lo, x_hi, k_lo, k_hi;
    widen(v, x_lo, x_hi);
    widen(k, k_lo, k_hi);
    const auto d_lo = x_lo - k_lo, d_hi = x_hi - k_hi;
    acc.sum += d_lo + d_hi;
    acc.sum_sq = fmadd(d_lo, d_lo, fmadd(d_hi, d_hi, acc.sum_sq));
  }
  static void add_in_f64(const xsimd::batch<double, Arch>& v, const xsimd::batch<double, Arch>& k,
                         f64_accumulator<Arch>& acc) noexcept {
    const auto d = v - k;
    acc.sum += d;
    acc.sum_sq = fmadd(d, d, acc.sum_sq);
  }
};

/// The backward's sums: Σdy and Σdy·d, d = x − k (k the saved mean, or the running mean).
template <class Arch, class S>
struct gradient_terms {
  using storage = S;
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  static constexpr std::size_t sources = 2;
  const S* x;
  const S* dy;

  void prefetch(std::size_t i, std::size_t bytes_ahead) const noexcept {
    fetch_line(x + i, bytes_ahead);
    fetch_line(dy + i, bytes_ahead);
  }
  bool aligned_to(std::size_t bytes) const noexcept {
    return is_aligned(x, bytes) && is_aligned(dy, bytes);
  }

  void add(std::size_t i, const vec& k, vec& s, vec& q) const noexcept {
    const vec g = load_elements<Arch>(dy + i);
    s += g;
    // q − g·(k − x) is q + g·(x − k) to the bit, with the load of x folded (see
    // deviation_terms::add).
    q = fnmadd(g, k - load_elements<Arch>(x + i), q);
  }
  /// As deviation_terms::add_pair: x and dy in the same order.
  void add_pair(std::size_t i, const vec& k0, const vec& k1, vec& s0, vec& q0, vec& s1,
                vec& q1) const noexcept {
    vec g0, g1, v0, v1;
    load_elements_in_any_order<Arch>(dy + i, g0, g1);
    load_elements_in_any_order<Arch>(x + i, v0, v1);
    s0 += g0;
    q0 = fnmadd(g0, k0 - v0, q0);
    s1 += g1;
    q1 = fnmadd(g1, k1 - v1, q1);
  }
  void add_masked(std::size_t i, const lane_mask<T, Arch>& fresh, const vec& k, vec& s,
                  vec& q) const noexcept {
    const vec g = xsimd::select(fresh, load_elements<Arch>(dy + i), vec(T(0)));
    s += g;
    q = fmadd(g, xsimd::select(fresh, load_elements<Arch>(x + i), k) - k, q);
  }
  void add_exact(std::size_t i, const vec& k, f64_accumulator<Arch>& acc) const noexcept {
    add_in_f64(load_elements<Arch>(x + i), load_elements<Arch>(dy + i), k, acc);
  }
  void add_exact_masked(std::size_t i, const lane_mask<T, Arch>& fresh, const vec& k,
                        f64_accumulator<Arch>& acc) const noexcept {
    add_in_f64(xsimd::select(fresh, load_elements<Arch>(x + i), k),
               xsimd::select(fresh, load_elements<Arch>(dy + i), vec(T(0))), k, acc);
  }
  void add_exact_lanes(std::size_t i, const xsimd::batch<double, Arch> (&k)[2],
                       f64_accumulator<Arch> (&acc)[2]) const noexcept {
    xsimd::batch<double, Arch> v[2], g[2];
    as_f64_halves<Arch>(load_elements<Arch>(x + i), v);
    as_f64_halves<Arch>(load_elements<Arch>(dy + i), g);
    for (std::size_t h = 0; h < halves_of<T>; ++h) add_in_f64(v[h], g[h], k[h], acc[h]);
  }
  void add_scalar(std::size_t i, double k, double& s, double& q) const noexcept {
    const double g = static_cast<double>(to_compute(dy[i]));
    s += g;
    q += g * (static_cast<double>(to_compute(x[i])) - k);
  }
  /// Σdy can overflow where Σdy·d does not: both are checked (an infinity in s makes s − s NaN).
  static bool finite(const vec& s, const vec& q) noexcept {
    return xsimd::all(xsimd::isfinite(q + (s - s)));
  }

 private:
  static void add_in_f64(const xsimd::batch<float, Arch>& v, const xsimd::batch<float, Arch>& g,
                         const xsimd::batch<float, Arch>& k, f64_accumulator<Arch>& acc) noexcept {
    xsimd::batch<double, Arch> x_lo, x_hi, g_lo, g_hi, k_lo, k_hi;
    widen(v, x_lo, x_hi);
    widen(g, g_lo, g_hi);
    widen(k, k_lo, k_hi);
    acc.sum += g_lo + g_hi;
    acc.sum_sq = fmadd(g_lo, x_lo - k_lo, fmadd(g_hi, x_hi - k_hi, acc.sum_sq));
  }
  static void add_in_f64(const xsimd::batch<double, Arch>& v, const xsimd::batch<double, Arch>& g,
                         const xsimd::batch<double, Arch>& k, f64_accumulator<Arch>& acc) noexcept {
    acc.sum += g;
    acc.sum_sq = fmadd(g, v - k, acc.sum_sq);
  }
};

/// Group channels' runs shorter than one_block_runs_below at once: run g from offset at[g], its
/// center k[g], into acc[g]. Per lane in T over the run's whole vectors and its last partial one
/// (lanes `fresh`), one chain a channel, then into float64 (at most block_vectors + 1 values a
/// lane, see block_vectors); a channel whose T partials overflowed (or hold a NaN) is summed
/// again in float64. Channels side by side share the loop (on 7×7 planes its overhead was as
/// large as the sums); each channel's lanes add the same values in the same order whatever the
/// group, so its bits never depend on its neighbours. First: acc holds nothing yet (the first
/// plane), and takes the partials instead of adding them to zeros.
template <bool First, std::size_t Group, class Arch, class Terms, class T = typename Terms::T>
[[gnu::always_inline]] inline void short_run_sums(const Terms& terms,
                                                  const std::size_t (&at)[Group], std::size_t len,
                                                  const lane_mask<T, Arch>& fresh,
                                                  const xsimd::batch<T, Arch> (&k)[Group],
                                                  f64_accumulator<Arch> (&acc)[Group]) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t whole = len - len % lanes;
  vec s[Group], q[Group];
#pragma GCC unroll 8
  for (std::size_t g = 0; g < Group; ++g) s[g] = q[g] = vec(T(0));
  for (std::size_t i = 0; i < whole; i += lanes) {
#pragma GCC unroll 8
    for (std::size_t g = 0; g < Group; ++g) terms.add(at[g] + i, k[g], s[g], q[g]);
  }
  if (whole < len) {
#pragma GCC unroll 8
    for (std::size_t g = 0; g < Group; ++g) {
      terms.add_masked(at[g] + len - lanes, fresh, k[g], s[g], q[g]);
    }
  }
  // One test for the group where it can: a sum of the partials is finite only if each is (an
  // infinity stays, or meets one of the other sign and makes a NaN).
  vec all_s = s[0], all_q = q[0];
#pragma GCC unroll 8
  for (std::size_t g = 1; g < Group; ++g) {
    all_s += s[g];
    all_q += q[g];
  }
  const bool all_finite = Terms::finite(all_s, all_q);
#pragma GCC unroll 8
  for (std::size_t g = 0; g < Group; ++g) {
    if (all_finite || Terms::finite(s[g], q[g])) {
      if constexpr (First) {
        acc[g].set(s[g], q[g]);
      } else {
        acc[g].add(s[g], q[g]);
      }
      continue;
    }
    if constexpr (First) acc[g] = f64_accumulator<Arch>();
    for (std::size_t j = 0; j < whole; j += lanes) terms.add_exact(at[g] + j, k[g], acc[g]);
    if (whole < len) terms.add_exact_masked(at[g] + len - lanes, fresh, k[g], acc[g]);
  }
}

/// Elements of one 64-byte cache line.
template <class Terms>
constexpr std::size_t line_elements = 64 / sizeof(typename Terms::storage);

/// Runs shorter than this are one block (see run_sums): block_vectors vectors and a partial one.
template <class T, class Arch>
constexpr std::size_t one_block_runs_below = (block_vectors + 1) * xsimd::batch<T, Arch>::size;

/// The terms of one run [base, base + len) of at least one vector, in blocks of four chains of
/// block_vectors vectors each, in T (each lane of a chain adds block_vectors values, as a short
/// run's one chain, and at most one more at the end of a run), each block then into float64
/// (float64 data: the accumulators themselves, flushed as often, which costs nothing next to the
/// loads); the last values, fewer than a vector, join the last block: short planes would
/// otherwise pay a float64 step for them. Runs shorter than one_block_runs_below take
/// short_run_sums. Unless `read_ahead` is 0, the lines that many elements on (no farther than a
/// run) are fetched as the run is read: past its end, those of the run read next, from
/// `next_run`.
template <class Arch, class Terms, class T = typename Terms::T>
[[gnu::always_inline]] inline void run_sums(const Terms& all_terms, std::size_t base,
                                            std::size_t len, std::size_t next_run,
                                            std::size_t read_ahead, const xsimd::batch<T, Arch>& k,
                                            f64_accumulator<Arch>& acc) noexcept {
  // A copy whose address never leaves the function: its pointers stay in registers instead of
  // being loaded again at every block.
  const Terms terms = all_terms;
  // Each add waits for the one before it in its chain: four chains keep the adders busy on
  // data in cache, where two left them half idle.
  constexpr std::size_t chains = 4;
  constexpr std::size_t block = chains * block_vectors * xsimd::batch<T, Arch>::size;
  const std::size_t end_of_run = base + len;
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  // `read_ahead` elements on, no farther than a run.
  const std::size_t distance = len < read_ahead ? len : read_ahead;
  // Element i's line `distance` on, as bytes past i: in the run, or (i + distance − end) into
  // the next run (unsigned: a next run below this one wraps around, as the address it moves).
  constexpr std::size_t size = sizeof(typename Terms::storage);
  const std::size_t within_run = distance * size;
  const std::size_t into_next_run = (next_run - end_of_run + distance) * size;
  // The groups at i < end_of_run − distance, those with i + chains·lanes ≤ next_group_at,
  // fetch within the run.
  const std::size_t next_group_at = end_of_run - distance + chains * lanes - 1;
  std::size_t i = base;
  while (i < end_of_run) {
    vec s[chains], q[chains];
    for (std::size_t c = 0; c < chains; ++c) s[c] = q[c] = vec(T(0));
    const std::size_t begin = i;
    const std::size_t end = end_of_run - i < block ? end_of_run : i + block;
    // Whole groups of `chains` vectors up to `limit`, fetching the lines `bytes` past each
    // where `fetches`.
    const auto sum_groups = [&](auto fetches, std::size_t limit, std::size_t bytes) {
      for (; i + chains * lanes <= limit; i += chains * lanes) {
        if constexpr (decltype(fetches)::value) {
          for (std::size_t e = 0; e < chains * lanes; e += line_elements<Terms>) {
            terms.prefetch(i + e, bytes);
          }
        }
        for (std::size_t c = 0; c < chains; c += 2) {
          terms.add_pair(i + c * lanes, k, k, s[c], q[c], s[c + 1], q[c + 1]);
        }
      }
    };
    if (read_ahead == 0) {
      sum_groups(std::false_type(), end, 0);
    } else {  // the groups that fetch within the run, then those that fetch in the next
      sum_groups(std::true_type(), end < next_group_at ? end : next_group_at, within_run);
      sum_groups(std::true_type(), end, into_next_run);
    }
    // The last whole vectors (at most three) and the partial one, each into a chain of its own
    // (at most one value more a lane).
    if (i + 2 * lanes <= end) {
      terms.add(i, k, s[0], q[0]);
      terms.add(i + lanes, k, s[1], q[1]);
      i += 2 * lanes;
    }
    if (i + lanes <= end) {
      terms.add(i, k, s[2], q[2]);
      i += lanes;
    }
    const std::size_t whole_end = i;
    if (i < end_of_run && end_of_run - i < lanes) {
      terms.add_masked(end_of_run - lanes, fresh_lanes<Arch, T>(lanes - (end_of_run - i)), k, s[3],
                       q[3]);
      i = end_of_run;
    }
    const vec all_s = (s[0] + s[1]) + (s[2] + s[3]), all_q = (q[0] + q[1]) + (q[2] + q[3]);
    if (Terms::finite(all_s, all_q)) {
      acc.add(all_s, all_q);
    } else {
      for (std::size_t j = begin; j < whole_end; j += lanes) terms.add_exact(j, k, acc);
      if (whole_end < i) {
        terms.add_exact_masked(end_of_run - lanes,
                               fresh_lanes<Arch, T>(lanes - (end_of_run - whole_end)), k, acc);
      }
    }
  }
}

/// The sums of channel `ch` of plane_sums (its planes' runs of at least one vector) into acc,
/// each run fetching `read_ahead` elements ahead (see run_sums) on into the run read after it.
template <class Arch, class Terms, class T = typename Terms::T>
[[gnu::always_inline]] inline void channel_sums(const Terms& terms, std::size_t len,
                                                std::size_t planes, std::size_t stride,
                                                std::size_t ch, std::size_t read_ahead,
                                                const T* center,
                                                f64_accumulator<Arch>& acc) noexcept {
  const xsimd::batch<T, Arch> k(center[ch]);
  for (std::size_t p = 0; p < planes; ++p) {
    const std::size_t next = p + 1 < planes ? ch * len + (p + 1) * stride : (ch + 1) * len;
    run_sums<Arch>(terms, ch * len + p * stride, len, next, read_ahead, k, acc);
  }
}

/// The sums of channels [ch, ch + Group) of plane_sums whose runs are shorter than
/// one_block_runs_below into acc[0, Group), side by side (see short_run_sums).
template <std::size_t Group, class Arch, class Terms, class T = typename Terms::T>
[[gnu::always_inline]] inline void short_channel_sums(
    const Terms& terms, std::size_t len, std::size_t planes, std::size_t stride, std::size_t ch,
    const T* center, const lane_mask<T, Arch>& fresh,
    f64_accumulator<Arch> (&acc)[Group]) noexcept {
  xsimd::batch<T, Arch> k[Group];
  for (std::size_t g = 0; g < Group; ++g) k[g] = xsimd::batch<T, Arch>(center[ch + g]);
  if (planes == 1) {  // batch 1: no loop over planes to carry (and spill) in registers
    std::size_t at[Group];
    for (std::size_t g = 0; g < Group; ++g) at[g] = (ch + g) * len;
    short_run_sums<true, Group, Arch>(terms, at, len, fresh, k, acc);
    return;
  }
  for (std::size_t p = 0; p < planes; ++p) {
    std::size_t at[Group];
    for (std::size_t g = 0; g < Group; ++g) at[g] = (ch + g) * len + p * stride;
    if (p == 0) {
      short_run_sums<true, Group, Arch>(terms, at, len, fresh, k, acc);
    } else {
      short_run_sums<false, Group, Arch>(terms, at, len, fresh, k, acc);
    }
  }
}

/// Channel k of `channels` has its first plane at offset k·len of the terms and center
/// center[k]; its sums are added into sum[k], sum_sq[k]. A vector of channels (one per float64
/// lane) is reduced across lanes at once (sum_lanes_of): on short planes (7×7) one channel's
/// reduction cost as much as its sums. A channel's sums are the same bits in a vector of
/// channels or alone, so how a schedule groups channels never shows. Runs of a vector or more
/// fetch `read_ahead_bytes` (of all the terms' sources) ahead.
template <class Arch, class Terms, class T = typename Terms::T>
void plane_sums(const Terms& terms, std::size_t len, std::size_t planes, std::size_t stride,
                std::size_t channels, std::size_t read_ahead_bytes, const T* center, double* sum,
                double* sum_sq) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  constexpr std::size_t group = dvec::size;
  if (len < lanes) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const double center64 = static_cast<double>(center[ch]);
      double s = 0.0, q = 0.0;
      for (std::size_t p = 0; p < planes; ++p) {
        const std::size_t at = ch * len + p * stride;
        for (std::size_t i = 0; i < len; ++i) terms.add_scalar(at + i, center64, s, q);
      }
      sum[ch] += s;
      sum_sq[ch] += q;
    }
    return;
  }
  const auto store_sums = [&](std::size_t ch, const dvec* s, const dvec* q) {
    (dvec::load_unaligned(sum + ch) + sum_lanes_of<Arch>(s)).store_unaligned(sum + ch);
    (dvec::load_unaligned(sum_sq + ch) + sum_lanes_of<Arch>(q)).store_unaligned(sum_sq + ch);
  };
  const auto store_one = [&](std::size_t ch, const f64_accumulator<Arch>& acc) {
    sum[ch] += sum_lanes<Arch>(acc.sum);
    sum_sq[ch] += sum_lanes<Arch>(acc.sum_sq);
  };
  // Elements of each source.
  const std::size_t read_ahead =
      read_ahead_bytes / Terms::sources / sizeof(typename Terms::storage);
  std::size_t ch = 0;
  if (len < one_block_runs_below<T, Arch>) {
    const lane_mask<T, Arch> fresh = fresh_lanes<Arch, T>(lanes - len % lanes);
    // Where 32 vector registers hold them, the statistics take two vectors of channels side by
    // side: a short run's adds are one dependent chain a channel. Not the backward's terms (two
    // loads and a product a vector), which then spilled (docs/design.md, "Short runs on 32
    // registers (stop 61)").
    constexpr std::size_t wide_group =
        vector_registers<Arch> >= 32 && Terms::sources == 1 ? 2 * group : group;
    // Channels `Width` at a time (a multiple of group), each vector of them stored at once.
    const auto side_by_side = [&](auto width) {
      constexpr std::size_t Width = decltype(width)::value;
      for (; ch + Width <= channels; ch += Width) {
        f64_accumulator<Arch> acc[Width];
        short_channel_sums<Width, Arch>(terms, len, planes, stride, ch, center, fresh, acc);
        for (std::size_t first = 0; first < Width; first += group) {
          dvec s[group], q[group];
          for (std::size_t g = 0; g < group; ++g) {
            s[g] = acc[first + g].sum;
            q[g] = acc[first + g].sum_sq;
          }
          store_sums(ch + first, s, q);
        }
      }
    };
    side_by_side(std::integral_constant<std::size_t, wide_group>());
    side_by_side(std::integral_constant<std::size_t, group>());
    for (; ch < channels; ++ch) {
      f64_accumulator<Arch> acc[1];
      short_channel_sums<1, Arch>(terms, len, planes, stride, ch, center, fresh, acc);
      store_one(ch, acc[0]);
    }
    return;
  }
  for (; ch + group <= channels; ch += group) {
    dvec s[group], q[group];
    for (std::size_t g = 0; g < group; ++g) {
      f64_accumulator<Arch> acc;
      channel_sums<Arch>(terms, len, planes, stride, ch + g, read_ahead, center, acc);
      s[g] = acc.sum;
      q[g] = acc.sum_sq;
    }
    store_sums(ch, s, q);
  }
  for (; ch < channels; ++ch) {
    f64_accumulator<Arch> acc;
    channel_sums<Arch>(terms, len, planes, stride, ch, read_ahead, center, acc);
    store_one(ch, acc);
  }
}

// The interleaved sums walk a block of this many periods (rows) per slot vector, so each
// accumulator vector is loaded and stored once per block rather than once per row. Each lane's
// float32 partial adds this many values: fewer instructions than 8, with the same worst error
// in the accuracy tests (docs/design.md).
constexpr std::size_t rows_per_block = 16;

/// Whether the interleaved sums of column blocks (rows wider than the block) read the next
/// block's lines ahead of use: for half-precision storage, whose column walks the hardware
/// prefetcher followed too late (docs/design.md, "Measurements behind the choices"). Whole rows
/// are one run, read ahead as the planner says (row_block::read_ahead_bytes).
template <class Terms>
constexpr bool reads_ahead = sizeof(typename Terms::storage) == 2;

/// The lines column_partials fetches ahead of use: row r of its block fetches the lines
/// `bytes` past the Group·lanes elements from at + r·step; none where step is 0.
struct fetch_ahead {
  std::size_t at = 0;
  std::size_t step = 0;
  std::size_t bytes = 0;
};

/// One block of `count` rows from offset `at` of the terms: per lane, the sums in T over the
/// rows for `Group` adjacent vectors of slots (k from `center`). Several columns at once keep
/// that many independent add chains in flight (one column's 16 rows are a chain of dependent
/// adds) and share the loop's overhead; each lane still adds its rows in order, whatever the
/// group. Each row fetches the lines `fetch` names ahead of their use.
template <std::size_t Group, class Arch, bool InPairs = false, class Terms,
          class T = typename Terms::T>
void column_partials(const Terms& terms, std::size_t at, std::size_t count, std::size_t stride,
                     fetch_ahead fetch, const T* center, xsimd::batch<T, Arch> (&s)[Group],
                     xsimd::batch<T, Arch> (&q)[Group]) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec k[Group];
  for (std::size_t g = 0; g < Group; ++g) {
    k[g] = vec::load_unaligned(center + g * lanes);
    s[g] = q[g] = vec(T(0));
  }
  // InPairs: pairs of vectors of slots in the storage's order (load_elements_in_any_order),
  // their centers put in that order, their partials back in order: each slot's the same bits.
  constexpr bool in_pairs =
      InPairs && Group % 2 == 0 && loads_pairs_in_any_order<Arch, typename Terms::storage>();
  if constexpr (in_pairs) {
    for (std::size_t g = 0; g < Group; g += 2) to_even_and_odd(k[g], k[g + 1]);
  }
  for (std::size_t r = 0; r < count; ++r) {
    const std::size_t row = at + r * stride;
    for (std::size_t e = 0; fetch.step != 0 && e < Group * lanes; e += line_elements<Terms>) {
      terms.prefetch(fetch.at + r * fetch.step + e, fetch.bytes);
    }
    if constexpr (in_pairs) {
      for (std::size_t g = 0; g < Group; g += 2) {
        terms.add_pair(row + g * lanes, k[g], k[g + 1], s[g], q[g], s[g + 1], q[g + 1]);
      }
    } else {
      for (std::size_t g = 0; g < Group; ++g) terms.add(row + g * lanes, k[g], s[g], q[g]);
    }
  }
  if constexpr (in_pairs) {
    for (std::size_t g = 0; g < Group; g += 2) {
      from_even_and_odd(s[g], s[g + 1]);
      from_even_and_odd(q[g], q[g + 1]);
    }
  }
}

/// Rows in float64 throughout, one slot: its sums over `count` rows from offset `at` added to
/// sum, sum_sq or, unless `add`, started there (the slots after the last whole vector).
template <class Terms, class T = typename Terms::T>
void exact_column(const Terms& terms, std::size_t at, std::size_t count, std::size_t stride,
                  T center, double& sum, double& sum_sq, bool add) noexcept {
  double s = add ? sum : 0.0, q = add ? sum_sq : 0.0;
  const double k = static_cast<double>(center);
  for (std::size_t r = 0; r < count; ++r) terms.add_scalar(at + r * stride, k, s, q);
  sum = s;
  sum_sq = q;
}

/// Rows in float64 throughout: the sums of `Group` vectors of slots over `count` rows from
/// offset `at` (each lane its own slot: add_exact_lanes), added to sum[0...], sum_sq[0...] or,
/// unless `add`, started there; centers from center[0...]. Each vector's halves are
/// independent chains.
template <std::size_t Group, class Arch, class Terms, class T = typename Terms::T>
void exact_columns(const Terms& terms, std::size_t at, std::size_t count, std::size_t stride,
                   const T* center, double* sum, double* sum_sq, bool add) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size, half = dvec::size;
  dvec k[Group][2];
  f64_accumulator<Arch> acc[Group][2];
  for (std::size_t g = 0; g < Group; ++g) {
    as_f64_halves<Arch>(vec::load_unaligned(center + g * lanes), k[g]);
    for (std::size_t h = 0; add && h < halves_of<T>; ++h) {
      const std::size_t j = g * lanes + h * half;
      acc[g][h].set(dvec::load_unaligned(sum + j), dvec::load_unaligned(sum_sq + j));
    }
  }
  for (std::size_t r = 0; r < count; ++r) {
    for (std::size_t g = 0; g < Group; ++g) {
      terms.add_exact_lanes(at + r * stride + g * lanes, k[g], acc[g]);
    }
  }
  for (std::size_t g = 0; g < Group; ++g) {
    for (std::size_t h = 0; h < halves_of<T>; ++h) {
      const std::size_t j = g * lanes + h * half;
      acc[g][h].sum.store_unaligned(sum + j);
      acc[g][h].sum_sq.store_unaligned(sum_sq + j);
    }
  }
}

/// interleaved_sums' flush of a block of `count` rows from offset `at`, `vectors` vectors of
/// slots, where some lane's float32 partials overflowed (or hold a NaN): those lanes' sums again
/// in float64 (see block_vectors), the others' as the partials give them (taken again one
/// vector at a time: the same bits), so that no slot's bits depend on its neighbours'. Out of
/// line, so that the common flush keeps its partials in registers.
template <class Arch, class Terms, class T = typename Terms::T>
[[gnu::noinline]] void flush_with_exact_lanes(const Terms& terms, std::size_t at, std::size_t count,
                                              std::size_t stride, const T* center,
                                              std::size_t vectors, double* sum, double* sum_sq,
                                              bool add) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  for (std::size_t g = 0; g < vectors; ++g) {
    const std::size_t j = g * lanes;
    vec s[1], q[1];
    column_partials<1, Arch>(terms, at + j, count, stride, {}, center + j, s, q);
    alignas(64) T s_lanes[lanes], q_lanes[lanes];
    alignas(64) double exact_s[lanes] = {}, exact_q[lanes] = {};  // read only where not finite
    s[0].store_aligned(s_lanes);
    q[0].store_aligned(q_lanes);
    if (!Terms::finite(s[0], q[0])) {
      exact_columns<1, Arch>(terms, at + j, count, stride, center + j, exact_s, exact_q, false);
    }
    for (std::size_t l = 0; l < lanes; ++l) {
      const bool finite = std::isfinite(s_lanes[l]) && std::isfinite(q_lanes[l]);
      const double block_s = finite ? static_cast<double>(s_lanes[l]) : exact_s[l];
      const double block_q = finite ? static_cast<double>(q_lanes[l]) : exact_q[l];
      sum[j + l] = add ? sum[j + l] + block_s : block_s;
      sum_sq[j + l] = add ? sum_sq[j + l] + block_q : block_q;
    }
  }
}

/// A block's partials of `Group` vectors of slots, the block's `count` rows from offset `at`
/// (the first slot's), into the float64 sums from sum, sum_sq (started there unless `add`).
/// One check for the group (see flush_with_exact_lanes where it fails).
template <std::size_t Group, class Arch, class Terms, class T = typename Terms::T>
[[gnu::always_inline]] inline void flush_partials(const Terms& terms, std::size_t at,
                                                  std::size_t count, std::size_t stride,
                                                  const T* center,
                                                  const xsimd::batch<T, Arch> (&s)[Group],
                                                  const xsimd::batch<T, Arch> (&q)[Group],
                                                  double* sum, double* sum_sq, bool add) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = vec::size;
  const auto store = [&](std::size_t j, const dvec& block_s, const dvec& block_q) {
    (add ? dvec::load_unaligned(sum + j) + block_s : block_s).store_unaligned(sum + j);
    (add ? dvec::load_unaligned(sum_sq + j) + block_q : block_q).store_unaligned(sum_sq + j);
  };
  if constexpr (std::is_same<T, float>::value) {
    vec all_s = s[0], all_q = q[0];
    for (std::size_t g = 1; g < Group; ++g) {
      all_s += s[g];
      all_q += q[g];
    }
    if (!Terms::finite(all_s, all_q)) {
      flush_with_exact_lanes<Arch>(terms, at, count, stride, center, Group, sum, sum_sq, add);
      return;
    }
#pragma GCC unroll 4
    for (std::size_t g = 0; g < Group; ++g) {
      dvec s_lo, s_hi, q_lo, q_hi;
      widen(s[g], s_lo, s_hi);
      widen(q[g], q_lo, q_hi);
      store(g * lanes, s_lo, q_lo);
      store(g * lanes + lanes / 2, s_hi, q_hi);
    }
  } else {
#pragma GCC unroll 4
    for (std::size_t g = 0; g < Group; ++g) store(g * lanes, s[g], q[g]);
  }
}

/// Most slots a strip of row_order_sums holds: its partials, two of this many values of T, on
/// the stack.
constexpr std::size_t row_order_slots = 1024;

/// interleaved_sums walking each block's rows in memory order (row_block::in_row_order): the
/// partials of a strip of up to row_order_slots slots in arrays in the L1, loaded and stored
/// at every row, where the column walk keeps them in registers. The same values added in the
/// same order, from zeros, each block's partials flushed the same way: the same bits as the
/// column walk. Fetches `read_ahead_bytes` (of all the terms' sources) ahead along each row.
/// Storage that computes only (float32, float64): half precision gained nothing so.
template <class Arch, class Terms, class T = typename Terms::T>
void row_order_sums(const Terms& terms, std::size_t rows, std::size_t width, std::size_t stride,
                    std::size_t read_ahead_bytes, const T* center, double* sum, double* sum_sq,
                    bool accumulate) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  static_assert(row_order_slots % (4 * lanes) == 0, "a strip holds whole groups");
  const std::size_t whole = width - width % lanes;
  const std::size_t source_read_ahead_bytes = read_ahead_bytes / Terms::sources;
  // Elements of a line (at least a vector's: float64 vectors of AVX-512 are a line).
  constexpr std::size_t line = std::max(line_elements<Terms>, lanes);
  alignas(64) T s_part[row_order_slots], q_part[row_order_slots];
  for (std::size_t first = 0; first < rows; first += rows_per_block) {
    const std::size_t count = rows - first < rows_per_block ? rows - first : rows_per_block;
    const std::size_t block = first * stride;
    const bool add = accumulate || first > 0;
    for (std::size_t j0 = 0; j0 < whole; j0 += row_order_slots) {
      const std::size_t strip = whole - j0 < row_order_slots ? whole - j0 : row_order_slots;
      const T* k = center + j0;
      // One row into the partials: the first row's terms added to zeros (as the column walk's),
      // the others' to the partials stored by the row before. A line of each source a step, its
      // fetch ahead once.
      const auto add_row = [&](auto first_row, std::size_t row) {
        const auto add_vector = [&](std::size_t j) {
          vec s(T(0)), q(T(0));
          if constexpr (!decltype(first_row)::value) {
            s = vec::load_aligned(s_part + j);
            q = vec::load_aligned(q_part + j);
          }
          terms.add(row + j, vec::load_unaligned(k + j), s, q);
          s.store_aligned(s_part + j);
          q.store_aligned(q_part + j);
        };
        std::size_t j = 0;
        for (; j + line <= strip; j += line) {
          if (source_read_ahead_bytes != 0) terms.prefetch(row + j, source_read_ahead_bytes);
#pragma GCC unroll 4
          for (std::size_t v = 0; v < line; v += lanes) add_vector(j + v);
        }
        for (; j < strip; j += lanes) add_vector(j);
      };
      add_row(std::true_type(), block + j0);
      for (std::size_t r = 1; r < count; ++r) add_row(std::false_type(), block + r * stride + j0);
      std::size_t j = 0;
      for (; j + 4 * lanes <= strip; j += 4 * lanes) {
        vec s[4], q[4];
        for (std::size_t g = 0; g < 4; ++g) {
          s[g] = vec::load_aligned(s_part + j + g * lanes);
          q[g] = vec::load_aligned(q_part + j + g * lanes);
        }
        flush_partials<4, Arch>(terms, block + j0 + j, count, stride, k + j, s, q, sum + j0 + j,
                                sum_sq + j0 + j, add);
      }
      for (; j < strip; j += lanes) {
        vec s[1] = {vec::load_aligned(s_part + j)}, q[1] = {vec::load_aligned(q_part + j)};
        flush_partials<1, Arch>(terms, block + j0 + j, count, stride, k + j, s, q, sum + j0 + j,
                                sum_sq + j0 + j, add);
      }
    }
    for (std::size_t j = whole; j < width; ++j) {
      exact_column(terms, block + j, count, stride, center[j], sum[j], sum_sq[j], add);
    }
  }
}

/// `rows` rows of `width` slots, `stride` apart, from the terms' base; slot j's sums go to
/// sum[j], sum_sq[j] (started unless `accumulate`). Each block of rows_per_block rows goes a
/// group of columns at a time, its partials in registers, or `in_row_order` (row_order_sums).
/// The column walk fetches `read_ahead_bytes` (of all the terms' sources) ahead over whole rows
/// (width = stride), the row walk along each row.
template <class Arch, class Terms, class T = typename Terms::T>
void interleaved_sums(const Terms& terms, std::size_t rows, std::size_t width, std::size_t stride,
                      std::size_t read_ahead_bytes, bool in_row_order, const T* center, double* sum,
                      double* sum_sq, bool accumulate) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  if (rows == 0 && !accumulate) {
    for (std::size_t j = 0; j < width; ++j) sum[j] = sum_sq[j] = 0.0;
  }
  if constexpr (std::is_same<typename Terms::storage, T>::value) {
    if (in_row_order) {
      row_order_sums<Arch>(terms, rows, width, stride, read_ahead_bytes, center, sum, sum_sq,
                           accumulate);
      return;
    }
  }
  const std::size_t block_bytes = rows_per_block * stride * sizeof(typename Terms::storage);
  // Pairs of vectors in the storage's order where every row's pairs start on the pair's bytes:
  // misaligned, AVX-512's pairs (each a load across two cache lines) summed rows of bfloat16
  // slower than two widening loads, aligned faster (docs/design.md, stop 47).
  constexpr std::size_t pair_bytes = 2 * lanes * sizeof(typename Terms::storage);
  const bool in_pairs = loads_pairs_in_any_order<Arch, typename Terms::storage>() &&
                        stride * sizeof(typename Terms::storage) % pair_bytes == 0 &&
                        terms.aligned_to(pair_bytes);
  const std::size_t source_read_ahead_bytes = read_ahead_bytes / Terms::sources;
  for (std::size_t first = 0; first < rows; first += rows_per_block) {
    const std::size_t count = rows - first < rows_per_block ? rows - first : rows_per_block;
    const std::size_t block = first * stride;
    // The first block starts the sums unless asked to add to them: the caller does not zero.
    const bool add = accumulate || first > 0;
    // The lines a group of columns from j fetches ahead. Whole rows are one run, fetched in
    // order: each group fetches as many lines as it reads, from its share of the block (the run
    // from j·count on). Column blocks: the next block's rows, the group's own columns.
    const auto fetch = [&](std::size_t j, std::size_t group) -> fetch_ahead {
      if (width == stride) {
        if (source_read_ahead_bytes == 0) return {};
        return {block + j * count, group * lanes, source_read_ahead_bytes};
      }
      if (!reads_ahead<Terms>) return {};
      return {block + j, stride, block_bytes};
    };
    // The block's partials of a group of vectors of slots from j into the float64 sums.
    const auto flush = [&](std::size_t j, const auto& s, const auto& q) {
      flush_partials<std::extent<std::remove_reference_t<decltype(s)>>::value, Arch>(
          terms, block + j, count, stride, center + j, s, q, sum + j, sum_sq + j, add);
    };
    std::size_t j = 0;
    constexpr std::size_t group = 4;
    for (; j + group * lanes <= width; j += group * lanes) {
      vec s[group], q[group];
      if (in_pairs) {
        column_partials<group, Arch, true>(terms, block + j, count, stride, fetch(j, group),
                                           center + j, s, q);
      } else {
        column_partials<group, Arch>(terms, block + j, count, stride, fetch(j, group), center + j,
                                     s, q);
      }
      flush(j, s, q);
    }
    for (; j + lanes <= width; j += lanes) {
      vec s[1], q[1];
      column_partials<1, Arch>(terms, block + j, count, stride, fetch(j, 1), center + j, s, q);
      flush(j, s, q);
    }
    for (; j < width; ++j) {
      exact_column(terms, block + j, count, stride, center[j], sum[j], sum_sq[j], add);
    }
  }
}

/// plane_sums of the terms Terms<Arch, S> over `sources` (x; or x and dy), on half_width_arch's
/// vectors where the runs are short enough for short_run_sums.
template <template <class, class> class Terms, class Arch, class S, class T = compute_t<S>,
          class... Sources>
void plane_sums_of(const plane_block& b, const T* center, double* sum, double* sum_sq,
                   const Sources*... sources) noexcept {
  using narrow = half_width_arch<Arch>;
  if constexpr (!std::is_same<narrow, Arch>::value) {
    if (b.len < one_block_runs_below<T, Arch>) {
      plane_sums<narrow>(Terms<narrow, S>{sources...}, b.len, b.planes, b.stride, b.channels,
                         b.read_ahead_bytes, center, sum, sum_sq);
      return;
    }
  }
  plane_sums<Arch>(Terms<Arch, S>{sources...}, b.len, b.planes, b.stride, b.channels,
                   b.read_ahead_bytes, center, sum, sum_sq);
}

// The reduce kernels of the kernel table.

template <class Arch, class S, class T = compute_t<S>>
void plane_stats(const S* src, const plane_block& b, const T* pivot, double* sum,
                 double* sum_sq) noexcept {
  plane_sums_of<deviation_terms, Arch, S>(b, pivot, sum, sum_sq, src);
}

template <class Arch, class S, class T = compute_t<S>>
void interleaved_stats(const S* src, const row_block& b, const T* pivot, double* sum,
                       double* sum_sq, sums_mode mode) noexcept {
  interleaved_sums<Arch>(deviation_terms<Arch, S>{src}, b.rows, b.width, b.stride,
                         b.read_ahead_bytes, b.in_row_order, pivot, sum, sum_sq,
                         mode == sums_mode::add);
}

template <class Arch, class S, class T = compute_t<S>>
void plane_gradient_sums(const S* src, const S* diff_dst, const plane_block& b, const T* center,
                         double* sum_dy, double* sum_dy_d) noexcept {
  plane_sums_of<gradient_terms, Arch, S>(b, center, sum_dy, sum_dy_d, src, diff_dst);
}

template <class Arch, class S, class T = compute_t<S>>
void interleaved_gradient_sums(const S* src, const S* diff_dst, const row_block& b, const T* center,
                               double* sum_dy, double* sum_dy_d, sums_mode mode) noexcept {
  interleaved_sums<Arch>(gradient_terms<Arch, S>{src, diff_dst}, b.rows, b.width, b.stride,
                         b.read_ahead_bytes, b.in_row_order, center, sum_dy, sum_dy_d,
                         mode == sums_mode::add);
}

// The backward's sums in float64 throughout (each dy and x − center widened before they are
// multiplied and added: every product of two float32 values is exact in float64), for the
// channels whose float32 sums may have lost subnormal products (sums_small_products). They
// start the sums (overwrite them). Vectorized, each channel's data read once: an exact zero sum
// asks for them wherever Σdy·(x − mean) is exactly zero, which ordinary data reach too (dy of
// 1 on integer-valued x, a dead channel), so they must cost about one more reduce, not a scalar
// walk of one element per row.

/// Planes: channel k's runs as plane_sums walks them, in float64 (gradient_terms' add_exact).
template <class Arch, class S, class T = compute_t<S>>
void plane_gradient_sums_f64(const S* src, const S* diff_dst, const plane_block& b, const T* center,
                             double* sum_dy, double* sum_dy_d) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const gradient_terms<Arch, S> terms{src, diff_dst};
  const std::size_t len = b.len, whole = len - len % lanes;
  // The last values of a run of at least one vector: its last whole vector, the lanes already
  // counted masked out (unused where the runs are whole vectors).
  const lane_mask<T, Arch> fresh = fresh_lanes<Arch, T>(whole < len ? lanes - len % lanes : 0);
  for (std::size_t ch = 0; ch < b.channels; ++ch) {
    const vec k(center[ch]);
    const double k64 = static_cast<double>(center[ch]);
    f64_accumulator<Arch> acc;
    double s = 0.0, q = 0.0;  // runs shorter than a vector
    for (std::size_t p = 0; p < b.planes; ++p) {
      const std::size_t at = ch * len + p * b.stride;
      for (std::size_t i = 0; i < whole; i += lanes) terms.add_exact(at + i, k, acc);
      if (whole == len) continue;
      if (whole > 0) {
        terms.add_exact_masked(at + len - lanes, fresh, k, acc);
      } else {
        for (std::size_t i = 0; i < len; ++i) terms.add_scalar(at + i, k64, s, q);
      }
    }
    sum_dy[ch] = sum_lanes<Arch>(acc.sum) + s;
    sum_dy_d[ch] = sum_lanes<Arch>(acc.sum_sq) + q;
  }
}

/// Rows: slot j's sums over the rows (exact_columns), the rows in blocks whose columns are
/// walked while they stay in cache, two vectors of slots at a time (independent chains).
template <class Arch, class S, class T = compute_t<S>>
void interleaved_gradient_sums_f64(const S* src, const S* diff_dst, const row_block& b,
                                   const T* center, double* sum_dy, double* sum_dy_d) noexcept {
  constexpr std::size_t lanes = xsimd::batch<T, Arch>::size;
  constexpr std::size_t block_rows = 64, group = 2;
  const gradient_terms<Arch, S> terms{src, diff_dst};
  if (b.rows == 0) {
    for (std::size_t j = 0; j < b.width; ++j) sum_dy[j] = sum_dy_d[j] = 0.0;
  }
  for (std::size_t first = 0; first < b.rows; first += block_rows) {
    const std::size_t count = b.rows - first < block_rows ? b.rows - first : block_rows;
    const std::size_t at = first * b.stride;
    const bool add = first > 0;
    std::size_t j = 0;
    for (; j + group * lanes <= b.width; j += group * lanes) {
      exact_columns<group, Arch>(terms, at + j, count, b.stride, center + j, sum_dy + j,
                                 sum_dy_d + j, add);
    }
    for (; j + lanes <= b.width; j += lanes) {
      exact_columns<1, Arch>(terms, at + j, count, b.stride, center + j, sum_dy + j, sum_dy_d + j,
                             add);
    }
    for (; j < b.width; ++j) {
      exact_column(terms, at + j, count, b.stride, center[j], sum_dy[j], sum_dy_d[j], add);
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
/// each, spread evenly over the channel (16 values on AVX2, and on AVX-512, whose kernel table
/// takes the half_width_arch instance), or from up to 16 single values
/// where a plane is shorter than a vector. Rows: from this many rows spread evenly. Powers of
/// two, so that the pivot of exactly representable data stays exact (short channels of fewer
/// samples divide by their count). At least 8 values: a pivot δ from the mean makes the float32
/// squares' rounding 1 + δ²/σ² times larger in the variance, and δ²/σ² shrinks as 1/samples;
/// from four rows it reached 4.7 and y's error 1.3e-6 (docs/design.md, "Pivots").
constexpr std::size_t plane_pivot_runs = 4;
constexpr std::size_t plane_pivot_samples = 16;
constexpr std::size_t row_pivot_samples = 8;

template <class Arch, class S, class T = compute_t<S>>
void plane_pivots(const S* src, const plane_block& block, T* pivot) noexcept {
  const std::size_t len = block.len, planes = block.planes, stride = block.stride;
  const std::size_t channels = block.channels;
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
    // The runs' differences from the first value, over the runs' count (a power of two: the
    // product by its reciprocal is the quotient, bit for bit), summed across lanes a vector of
    // channels at a time (sum_lanes_of: the same bits as one at a time).
    static_assert((plane_pivot_runs & (plane_pivot_runs - 1)) == 0, "a power of two");
    const dvec reciprocal(1.0 / static_cast<double>(plane_pivot_runs * lanes));
    const auto differences = [&](std::size_t ch, double first) {
      const S* x = src + ch * len;
      const dvec from(first);
      dvec sum(0.0);
      for (std::size_t r = 0; r < plane_pivot_runs; ++r) {
        sum += load_elements_as_f64<Arch>(x + at[r]) - from;
      }
      return sum * reciprocal;
    };
    std::size_t ch = 0;
    for (; ch + lanes <= channels; ch += lanes) {
      alignas(64) double first[lanes];
      dvec sums[lanes];
      for (std::size_t g = 0; g < lanes; ++g) {
        first[g] = static_cast<double>(to_compute(src[(ch + g) * len]));
        sums[g] = differences(ch + g, first[g]);
      }
      store_as<Arch>(pivot + ch, dvec::load_aligned(first) + sum_lanes_of<Arch>(sums));
    }
    for (; ch < channels; ++ch) {
      const double first = static_cast<double>(to_compute(src[ch * len]));
      pivot[ch] = static_cast<T>(first + sum_lanes<Arch>(differences(ch, first)));
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
/// the same additions in the same order. In T, a vector of T's lanes at a time: half the
/// instructions of float64 for float32 data, and the differences between values of one channel
/// are exact or nearly (the pivot need only be near the mean). Where a difference overflows T
/// (values of both signs near its largest), the lane's pivot is taken again in float64; per lane,
/// so that a slot's pivot is the same bits in a vector or alone.
template <std::size_t Samples, class Arch, class S, class T = compute_t<S>>
void row_pivots_of(const S* src, std::size_t rows, std::size_t stride, std::size_t width,
                   T* pivot) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t count = Samples > 0 ? Samples : rows;
  const S* row[row_pivot_samples];
  for (std::size_t i = 0; i < count; ++i) row[i] = src + i * rows / count * stride;
  const auto in_f64 = [&](std::size_t j) {
    const double first = static_cast<double>(to_compute(row[0][j]));
    double differences = 0.0;
    for (std::size_t i = 1; i < count; ++i) {
      differences += static_cast<double>(to_compute(row[i][j])) - first;
    }
    return static_cast<T>(first + differences / static_cast<double>(count));
  };
  const vec divisor(static_cast<T>(count));
  std::size_t j = 0;
  for (; j + lanes <= width; j += lanes) {
    const vec first = load_elements<Arch>(row[0] + j);
    vec differences(T(0));
    for (std::size_t i = 1; i < count; ++i) {
      differences += load_elements<Arch>(row[i] + j) - first;
    }
    vec p = first + differences / divisor;
    if (!xsimd::all(xsimd::isfinite(p))) {
      alignas(64) T values[lanes];
      p.store_aligned(values);
      for (std::size_t l = 0; l < lanes; ++l) {
        if (!std::isfinite(values[l])) values[l] = in_f64(j + l);
      }
      p = vec::load_aligned(values);
    }
    p.store_unaligned(pivot + j);
  }
  for (; j < width; ++j) {
    const T first = to_compute(row[0][j]);
    T differences(0);
    for (std::size_t i = 1; i < count; ++i) differences += to_compute(row[i][j]) - first;
    const T p = first + differences / static_cast<T>(count);
    pivot[j] = std::isfinite(p) ? p : in_f64(j);
  }
}

template <class Arch, class S, class T = compute_t<S>>
void row_pivots(const S* src, const row_block& block, T* pivot) noexcept {
  const std::size_t rows = block.rows, stride = block.stride, width = block.width;
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
