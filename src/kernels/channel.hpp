// Per-channel kernels in float64: moments from the sums, the normalization coefficients (and
// their prescale), and the commit of batch and running statistics. Part of the kernels compiled
// once per ISA: include only from kernels_impl.hpp.
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

// y = (x − center)·scale + shift. The center is the mean rounded to T, so x − center is exact
// for x near the mean (Sterbenz); the part of the mean T cannot hold goes into the shift, where
// it is small. Folding the whole mean into the shift (x·a + b) would cancel when |mean| ≫ std.
// Where |mean| ≤ std/4 it does not: the center is then +0 and the shift takes mean·scale, whose
// magnitude is at most |gamma|/4, so the roundings of x·scale and of the shift grow by at most
// half an ulp of |gamma|. A block of such channels normalizes from two arrays instead of three.
// Only while |mean·scale| ≤ fold_limit, though: with a huge gamma that half ulp is itself huge
// (1e11 at gamma 1e29), where the centered form gives exactly beta at x = mean; float16 output
// would round it to an infinity.

/// A finite float64 value beyond T's range becomes T's largest finite value of its sign, not an
/// infinity: a constant channel with a tiny var + eps then still gives exactly 0·scale = 0, as
/// the float64 reference does, instead of 0·inf = NaN. Infinities and NaN stay.
template <class T>
T saturate_scalar(double v) noexcept {
  constexpr double largest = static_cast<double>(std::numeric_limits<T>::max());
  const double magnitude = std::fabs(v);
  if (magnitude > largest && magnitude <= std::numeric_limits<double>::max()) {
    return v > 0.0 ? std::numeric_limits<T>::max() : -std::numeric_limits<T>::max();
  }
  return static_cast<T>(v);
}

/// The largest |mean·scale| a shift takes from a folded mean: its rounding, at most 2^-10, stays
/// far below float16's largest value, and no ordinary gamma (below 2^16) reaches it.
constexpr double fold_limit = 16384.0;

/// Where the mean is within a quarter of the standard deviation (and mean·scale within
/// fold_limit): fold it into the shift. D is double or a vector of doubles (then a lane mask), so
/// that the scalar and the vector coefficients decide alike.
template <class D>
[[gnu::always_inline]] inline auto folds(const D& mean, const D& inv_std, const D& scale) noexcept {
  using std::abs;
  return (abs(mean) * inv_std <= D(0.25)) & (abs(mean * scale) <= D(fold_limit));
}

/// The smallest center from which x − center can overflow for a finite x: half an ulp of T's
/// largest value (2^103 for float, 2^970 for double).
template <class T>
constexpr double overflowing_center() noexcept {
  using limits = std::numeric_limits<T>;
  double value = 1.0;
  for (int i = 0; i < limits::max_exponent - limits::digits - 1; ++i) value *= 2.0;
  return value;
}

/// The prescale h of a channel (see kernels::coefficients): 1 unless x − center could overflow
/// or the scale is outside T's normal range. A scale beyond T takes a power of two h > 1 with
/// scale/h in [1, 2), as far as T holds h, and the kernels multiply x − center by it: x − center
/// is exact near the center, and (x − center)·h overflows only where (x − center)·scale does,
/// whatever the center (x·h − center·h would overflow for any center above T's largest/h: a
/// mean of 4 with γ 1e36). Where x − center can overflow as well, any x but the center gives a
/// result beyond T: the scale keeps h = 1 and saturates. Otherwise a power of two h < 1 that
/// multiplies x and the center: with scale/h in [1, 2) for a subnormal scale, at least T's least
/// normal value (x·h and center·h stay exact near the center); at most 1/2 where the center
/// overflows, so that x·h − center·h cannot.
template <class T>
double prescale_for(double center, double scale) noexcept {
  using limits = std::numeric_limits<T>;
  const double least = static_cast<double>(limits::min());
  const double largest = static_cast<double>(limits::max());
  const double magnitude = std::fabs(scale);
  const bool wide = std::fabs(center) >= overflowing_center<T>();
  const bool subnormal_scale = scale != 0.0 && magnitude < least;
  const bool huge_scale = magnitude > largest;
  if (!(wide || subnormal_scale || huge_scale) || !std::isfinite(scale)) return 1.0;
  if (huge_scale && wide) return 1.0;
  int exponent = 0;
  std::frexp(scale, &exponent);  // |scale| = m·2^exponent, m in [1/2, 1)
  const double h = std::ldexp(1.0, exponent - 1);
  if (huge_scale) return std::fmin(h, std::ldexp(1.0, limits::max_exponent - 1));
  if (magnitude < 1.0) return std::fmax(h, least);
  return magnitude <= 0.5 * largest ? 0.5 : 1.0;
}

/// A scale p·q·r whose product in float64 overflows (or is inf·0), of finite p, q and r, divided by
/// `terms` (a power of two) and prescaled: its prescale h as prescale_for gives a huge scale (the
/// largest power of two T holds, or 1 where x − center can overflow too) and p·q·r/terms/h, from
/// the product's significand ((p·q)·r's own: the scalings by powers of two are exact) and exponent
/// apart.
struct prescaled_beyond_range {
  double prescale;
  double scaled;
};
template <class T>
prescaled_beyond_range prescale_beyond_range(double center, double p, double q, double r,
                                             double terms) noexcept {
  int p_exponent = 0, q_exponent = 0, r_exponent = 0, pq_exponent = 0, product_exponent = 0;
  const double pq =
      std::frexp(std::frexp(p, &p_exponent) * std::frexp(q, &q_exponent), &pq_exponent);
  const double product = std::frexp(pq * std::frexp(r, &r_exponent), &product_exponent);
  const int exponent =
      p_exponent + q_exponent + pq_exponent + r_exponent + product_exponent - std::ilogb(terms);
  if (product == 0.0) return {1.0, product};  // r = 0: p·q alone overflowed (inf·0 = NaN)
  // What is still beyond float64 saturates (saturate_scalar then gives T's largest).
  const double saturated = std::copysign(std::numeric_limits<double>::max(), product);
  if (std::fabs(center) >= overflowing_center<T>()) return {1.0, saturated};
  constexpr int top = std::numeric_limits<T>::max_exponent - 1;  // h = 2^top
  const double scaled = std::ldexp(product, exponent - top);
  return {std::ldexp(1.0, top), std::isinf(scaled) ? saturated : scaled};
}

/// Where a backward channel's dy coefficient a = γ·inv_std or its shift e = −a·Σdy/M reaches
/// this (2^64 for float), its terms dy·a, (x − mean)·b and e (of the size of a·dy) may overflow
/// where dx, what is left when they cancel, does not: three values a channel an ulp apart give
/// an inv_std of 4e6, and γ 1e32 then makes dy·a 5e38.
template <class T>
constexpr double terms_near_top() noexcept {
  double value = 1.0;
  for (int i = 0; i < std::numeric_limits<T>::max_exponent / 2; ++i) value *= 2.0;
  return value;
}

/// The backward's dy prescale g for a = γ·inv_std and the shift e: where max(|a|, |e|) reaches
/// terms_near_top, the power of two g > 1 with max(|a|, |e|)/g in [1, 2) (as far as T holds g)
/// that divides the three terms, whose sum the kernels multiply by g: it overflows only where dx
/// does. Elsewhere prescale_for with a center of 0: a subnormal a takes a g < 1 that multiplies
/// dy (dy·g·(a/g)).
template <class T>
double terms_prescale_for(double a, double shift) noexcept {
  const double top = std::fmax(std::fabs(a), std::fabs(shift));
  if (!(top >= terms_near_top<T>()) || !std::isfinite(top)) return prescale_for<T>(0.0, a);
  int exponent = 0;
  std::frexp(top, &exponent);
  return std::fmin(std::ldexp(1.0, exponent - 1),
                   std::ldexp(1.0, std::numeric_limits<T>::max_exponent - 1));
}

/// The center as the kernels take it with prescale h: multiplied by h where h < 1 (exact: a
/// power of two), itself where h ≥ 1 (see prescale_for).
template <class T>
T prescaled_center(T center, double h) noexcept {
  return h >= 1.0 ? center : static_cast<T>(static_cast<double>(center) * h);
}

/// Channel `at`'s coefficients (see store_coefficients). The arrays come with the index to
/// write at, not as a view made for the call: the view's pointers, stored just before and
/// loaded together in the callee, would stall store-to-load forwarding at every call.
template <class T>
void store_coefficients_scalar(double mean, double inv_std, double scale, double beta,
                               const coefficients<T>& out, std::size_t at) noexcept {
  const T center = folds(mean, inv_std, scale) ? T(0) : static_cast<T>(mean);
  // The shift's share of the mean's rounding, (mean − center)·scale: none where the mean is
  // infinite (it is its own center; inf − inf would make the whole channel NaN where y is
  // ∓inf) or the scale is (0·inf, or an infinite shift that x − center's infinity of the other
  // sign would cancel into NaN: y is then ±inf wherever x is not the center, NaN there).
  const double rounding_share =
      std::isinf(mean) || std::isinf(scale) ? 0.0 : (mean - static_cast<double>(center)) * scale;
  const double h = prescale_for<T>(center, scale);
  out.center[at] = prescaled_center(center, h);
  out.scale[at] = saturate_scalar<T>(h == 1.0 ? scale : scale / h);
  out.shift[at] = saturate_scalar<T>(beta - rounding_share);
  out.prescale[at] = static_cast<T>(h);
}

/// The coefficients of `lanes` channels from their float64 mean, 1/std and scale: center = +0
/// where the mean folds (folds), else the mean rounded to T; scale; shift = beta − (mean −
/// center)·scale; prescale 1. Returns the extreme lanes: a prescale needed, or a scale or shift at
/// or beyond T's largest value; the caller redoes all channels through the scalar code, which
/// saturates and prescales them. Elsewhere the scalar code's saturation and prescale are the
/// identity and its operations are these, so vector and scalar channels agree to the bit.
template <class Arch, class T>
[[gnu::always_inline]] inline auto store_coefficients(const xsimd::batch<double, Arch>& mean,
                                                      const xsimd::batch<double, Arch>& inv_std,
                                                      const xsimd::batch<double, Arch>& scale,
                                                      const xsimd::batch<double, Arch>& beta,
                                                      const coefficients<T>& out,
                                                      std::size_t at) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  store_as<Arch>(out.center + at, xsimd::select(folds(mean, inv_std, scale), dvec(0.0), mean));
  const dvec center = load_as_f64<Arch>(out.center + at);
  const dvec shift = beta - (mean - center) * scale;
  store_as<Arch>(out.scale + at, scale);
  store_as<Arch>(out.shift + at, shift);
  store_as<Arch>(out.prescale + at, dvec(1.0));
  const dvec magnitude = xsimd::abs(scale),
             largest(static_cast<double>(std::numeric_limits<T>::max()));
  return (xsimd::abs(center) >= dvec(overflowing_center<T>())) | (magnitude >= largest) |
         (xsimd::abs(shift) >= largest) |
         ((magnitude < dvec(static_cast<double>(std::numeric_limits<T>::min()))) &
          (scale != dvec(0.0)));
}

/// Channels [c0, c1) through channel_scalar(c, at, out), channel c's going to index at =
/// first + c. Returns whether some of them needs a prescale.
template <class T, class Scalar>
bool scalar_coefficients(std::size_t c0, std::size_t c1, const coefficients<T>& out,
                         std::size_t first, const Scalar& channel_scalar) noexcept {
  bool prescaled = false;
  for (std::size_t c = c0; c < c1; ++c) {
    channel_scalar(c, first + c, out);
    prescaled = prescaled || out.prescale[first + c] != T(1);
  }
  return prescaled;
}

/// The coefficients of channels [0, channels) through channel(c, at, out) for each vector of
/// channels at c (returning its extreme lanes) and channel_scalar(c, at, out) for single ones,
/// channel c's going to index at; where some channel is extreme, all of them again through the
/// scalar code (the same bits for the others). Returns whether some channel needs a prescale.
/// `out` is a copy: the arrays' pointers stay in registers, where through a reference every
/// store (may_alias) would load them again.
template <class Arch, class T, class Vector, class Scalar>
bool all_coefficients(std::size_t channels, const coefficients<T> out, std::size_t first,
                      const Vector& channel, const Scalar& channel_scalar) noexcept {
  constexpr std::size_t lanes = xsimd::batch<double, Arch>::size;
  const xsimd::batch<double, Arch> zero(0.0);
  auto extreme = zero != zero;  // all false
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) extreme = extreme | channel(c, first + c, out);
  const bool prescaled = scalar_coefficients(c, channels, out, first, channel_scalar);
  if (!xsimd::any(extreme)) return prescaled;
  return scalar_coefficients(0, channels, out, first, channel_scalar);
}

/// Calls with(std::bool_constant<b>) for b = condition: a test that would run once per vector
/// of channels runs once per call.
template <class With>
[[gnu::always_inline]] inline auto instantiate_both(bool condition, const With& with) noexcept {
  return condition ? with(std::true_type()) : with(std::false_type());
}

template <class Arch, class T>
bool channel_coefficients(std::size_t channels, const double* mean, const double* inv_std,
                          const double* scale, const T* beta, const coefficients<T>& out,
                          std::size_t first) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  using vector_out = const coefficients<T>&;
  return instantiate_both(beta != nullptr, [&](auto has_beta) {
    constexpr bool shifted = decltype(has_beta)::value;
    return all_coefficients<Arch>(
        channels, out, first,
        [&](std::size_t c, std::size_t at, vector_out k) {
          return store_coefficients<Arch>(dvec::load_unaligned(mean + c),
                                          dvec::load_unaligned(inv_std + c),
                                          dvec::load_unaligned(scale + c),
                                          shifted ? load_as_f64<Arch>(beta + c) : dvec(0.0), k, at);
        },
        [&](std::size_t c, std::size_t at, vector_out k) {
          store_coefficients_scalar(mean[c], inv_std[c], scale[c],
                                    shifted ? static_cast<double>(beta[c]) : 0.0, k, at);
        });
  });
}

/// channel_moments with and without gamma (Scaled), instantiated apart: the common cases test
/// nothing per vector of channels.
template <bool Scaled, class Arch, class T>
bool scaled_moments(const moment_channels<T>& in) noexcept {
  const std::size_t channels = in.channels;
  const double eps = in.epsilon, resum_below = in.resum_below;
  // Products by 1/count, not quotients: a division by count per value and vector of channels
  // kept the divider busy on short channels (docs/design.md); 1/count is exact for power-of-two
  // counts, and within an ulp of float64 elsewhere.
  const double per_value = 1.0 / in.count;
  const double bound_squared = in.max_offset_squared;
  // Copies: the pointers stay in registers, where through references every store (may_alias)
  // would load them again.
  const T* const pivot = in.pivot;
  const T* const gamma = in.gamma;
  double* const sum_to_mean = in.sum_to_mean;
  double* const sum_sq_to_variance = in.sum_sq_to_variance;
  double* const inv_std = in.inv_std;
  double* const scale = in.scale;
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  bool scalar_below = false;
  const auto one = [&](std::size_t c) {  // the same operations, one channel
    const double offset = sum_to_mean[c] * per_value;
    double variance = (sum_sq_to_variance[c] - sum_to_mean[c] * offset) * per_value;
    if (variance < 0.0) variance = 0.0;  // rounding only; a NaN stays NaN
    const double mean = static_cast<double>(pivot[c]) + offset;
    sum_to_mean[c] = mean;
    sum_sq_to_variance[c] = variance;
    // The pivot's distance as finalize_block measures it, from the rounded mean: the two
    // tests agree to the bit, so which channels move never depends on how they are blocked.
    const double moved = mean - static_cast<double>(pivot[c]);
    scalar_below |= variance + eps < resum_below || !std::isfinite(variance) ||
                    moved * moved > bound_squared * variance;
    inv_std[c] = inverse_std<Arch>(variance, eps);
    scale[c] = (Scaled ? static_cast<double>(gamma[c]) : 1.0) * inv_std[c];
  };
  const dvec per_value_v(per_value), e(eps), zero(0.0), small(resum_below), bound(bound_squared),
      infinity(std::numeric_limits<double>::infinity());
  // The vectors' test is the scalar one negated, with ordered compares: a NaN fails each one, so
  // !isfinite costs one compare (variance < infinity). A NaN pivot distance asks for another
  // look where the scalar test does not; finalize_block decides per channel either way.
  auto settled = zero == zero;  // all true
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) {
    const dvec s = dvec::load_unaligned(sum_to_mean + c);
    const dvec q = dvec::load_unaligned(sum_sq_to_variance + c);
    const dvec offset = s * per_value_v;
    dvec variance = (q - s * offset) * per_value_v;
    variance = at_least(variance, zero);
    const dvec p = load_as_f64<Arch>(pivot + c);
    const dvec mean = p + offset;
    mean.store_unaligned(sum_to_mean + c);
    variance.store_unaligned(sum_sq_to_variance + c);
    const dvec moved = mean - p;
    settled = settled & (variance + e >= small) & (variance < infinity) &
              (moved * moved <= bound * variance);
    const dvec inv = inverse_std(variance, e);
    inv.store_unaligned(inv_std + c);
    (Scaled ? load_as_f64<Arch>(gamma + c) * inv : inv).store_unaligned(scale + c);
  }
  for (; c < channels; ++c) one(c);
  return scalar_below || !xsimd::all(settled);
}

template <class Arch, class T>
bool channel_moments(const moment_channels<T>& in) noexcept {
  return instantiate_both(in.gamma != nullptr, [&](auto scaled) {
    return scaled_moments<decltype(scaled)::value, Arch>(in);
  });
}

template <class Arch, class T>
bool inference_coefficients(std::size_t channels, double eps, const T* mean, const T* variance,
                            const T* gamma, const T* beta, const coefficients<T>& out,
                            std::size_t first) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  using vector_out = const coefficients<T>&;
  const dvec e(eps);
  // With and without a mean (the frozen backward has none), with both affine parameters or
  // testing each: the common cases test nothing per vector.
  return instantiate_both(mean != nullptr, [&](auto has_mean) {
    return instantiate_both(gamma && beta, [&](auto has_affine) {
      constexpr bool centered = decltype(has_mean)::value;
      constexpr bool affine = decltype(has_affine)::value;
      return all_coefficients<Arch>(
          channels, out, first,
          [&](std::size_t c, std::size_t at, vector_out k) {
            const dvec inv = inverse_std(load_as_f64<Arch>(variance + c), e);
            return store_coefficients<Arch>(
                centered ? load_as_f64<Arch>(mean + c) : dvec(0.0), inv,
                affine || gamma ? load_as_f64<Arch>(gamma + c) * inv : inv,
                affine || beta ? load_as_f64<Arch>(beta + c) : dvec(0.0), k, at);
          },
          [&](std::size_t c, std::size_t at, vector_out k) {
            const double inv = inverse_std<Arch>(static_cast<double>(variance[c]), eps);
            store_coefficients_scalar(centered ? static_cast<double>(mean[c]) : 0.0, inv,
                                      (affine || gamma ? static_cast<double>(gamma[c]) : 1.0) * inv,
                                      affine || beta ? static_cast<double>(beta[c]) : 0.0, k, at);
          });
    });
  });
}

// The backward: dx = γ·inv_std·(dy − Σdy/M − (x − mean)·inv_std²·Σdy·(x − mean)/M), written as
// dx = dy·a + (x − mean)·b + e with a = γ·inv_std, b = −a·inv_std·(dγ/M), e = −a·(Σdy/M) and
// dγ = inv_std·Σdy·(x − mean): x − mean is exact near the mean (as the forward's x − center), and
// no term cancels against a large one when |mean| ≫ std. b grows as inv_std³ while the
// x − mean it multiplies shrinks as std: b can pass T's largest value where dx does not, and
// then takes a prescale (prescale_for), as do a subnormal b and a mean whose x − mean can
// overflow. a takes one too, g (terms_prescale_for): a subnormal a multiplies dy (dy·g·(a/g)), and
// where a or e is near the top of T, the three terms are divided by g and their sum multiplied
// by it.
template <class Arch, class T>
gradient_flags channel_gradients(const gradient_channels<T>& channels,
                                 const gradient_coefficients<T>* coefficients,
                                 std::size_t first) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  // Copies: the pointers stay in registers, where through references every store (may_alias)
  // would load them again.
  const gradient_channels<T> in = channels;
  const gradient_coefficients<T> out =
      coefficients
          ? *coefficients
          : gradient_coefficients<T>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
  const bool writes = coefficients != nullptr;
  // Products by 1/count, as channel_moments.
  const double per_value = 1.0 / in.count;
  const auto inv_std_of = [&in](std::size_t c) {
    return in.inv_std ? static_cast<double>(in.inv_std[c])
                      : inverse_std<Arch>(static_cast<double>(in.variance[c]), in.epsilon);
  };
  // Σdy·(x − mean − residual) = Σdy·(x − mean) − residual·Σdy, in float64; a residual of 0
  // (float64 data's, whose mean is the kernels' own) changes nothing, an infinite Σdy included.
  const auto residual_corrected = [&in](const dvec& sum_dy_d, std::size_t c) {
    if (!in.mean_residual) return sum_dy_d;
    const dvec r = load_as_f64<Arch>(in.mean_residual + c);
    return xsimd::select(r == dvec(0.0), sum_dy_d,
                         sum_dy_d - r * dvec::load_unaligned(in.sum_dy + c));
  };
  const auto residual_corrected_scalar = [&in](std::size_t c) {
    const double r = in.mean_residual ? static_cast<double>(in.mean_residual[c]) : 0.0;
    return r == 0.0 ? in.sum_dy_d[c] : in.sum_dy_d[c] - r * in.sum_dy[c];
  };
  // The shift's share of the residual, −residual·x_scale: none where the residual is 0.
  const auto residual_shift = [&in](std::size_t c, double x_scale) {
    const double r = in.mean_residual ? static_cast<double>(in.mean_residual[c]) : 0.0;
    return r == 0.0 ? 0.0 : r * x_scale;
  };
  bool prescaled = false;
  // Channel c's dx coefficients from its 1/std and dγ: the vector loop's operations, then the
  // saturation and the prescale.
  const double largest = static_cast<double>(std::numeric_limits<T>::max()),
               least = static_cast<double>(std::numeric_limits<T>::min()),
               near_top = terms_near_top<T>();
  const auto coefficients_of = [&](std::size_t c, double inv, double dgamma) {
    const double a = in.gamma ? static_cast<double>(in.gamma[c]) * inv : inv;
    const double x_scale = -(a * inv) * (dgamma * per_value);
    const double mean_dy = in.sum_dy[c] * per_value;
    const T rounded_mean_dy = static_cast<T>(mean_dy);  // the test is the rounded value's
    const T dy_center = std::fabs(static_cast<double>(rounded_mean_dy)) < overflowing_center<T>()
                            ? rounded_mean_dy
                            : T(0);
    const double shift =
        -a * (mean_dy - static_cast<double>(dy_center)) - residual_shift(c, x_scale);
    const T center = in.mean[c];
    const std::size_t at = first + c;
    out.dy_center[at] = dy_center;
    // x_scale beyond float64 from finite factors (float64 data spread below ~1e-154 with eps
    // 0: b grows as inv_std³ where (x − mean)·b does not), or their product inf·0.
    const bool beyond_f64 = !std::isfinite(x_scale) && std::isfinite(a) && std::isfinite(inv) &&
                            std::isfinite(dgamma * per_value);
    // The vector loop's test of extreme lanes, with its stores where it finds none.
    const double magnitude = std::fabs(x_scale), dy_magnitude = std::fabs(a);
    const bool extreme =
        beyond_f64 || std::fmax(dy_magnitude, std::fabs(shift)) >= near_top ||
        magnitude >= largest || std::fabs(static_cast<double>(center)) >= overflowing_center<T>() ||
        (magnitude < least && x_scale != 0.0) || (dy_magnitude < least && a != 0.0);
    if (!extreme) {
      out.center[at] = center;
      out.dy_scale[at] = static_cast<T>(a);
      out.dy_prescale[at] = T(1);
      out.x_scale[at] = static_cast<T>(x_scale);
      out.shift[at] = static_cast<T>(shift);
      out.prescale[at] = T(1);
      return;
    }
    const double g = terms_prescale_for<T>(a, shift), terms = g > 1.0 ? g : 1.0;
    double h = prescale_for<T>(center, x_scale / terms), scaled = x_scale / terms / h;
    if (beyond_f64) {  // its significand and exponent apart
      const prescaled_beyond_range split =
          prescale_beyond_range<T>(center, -a, inv, dgamma * per_value, terms);
      h = split.prescale;
      scaled = split.scaled;
    }
    out.center[at] = prescaled_center(center, h);
    out.dy_scale[at] = saturate_scalar<T>(a / g);
    out.dy_prescale[at] = static_cast<T>(g);
    out.x_scale[at] = saturate_scalar<T>(scaled);
    out.shift[at] = saturate_scalar<T>(shift / terms);
    out.prescale[at] = static_cast<T>(h);
    prescaled = prescaled || h != 1.0 || g != 1.0;
  };
  constexpr bool checks_products = std::is_same<T, float>::value;
  const dvec zero(0.0);
  auto small = zero != zero;  // all false
  // The vector loop, with its tests of the optional inputs made once per call.
  const auto vectors = [&](auto given_inv_std, auto affine, auto coefficients_too) {
    constexpr bool has_inv_std = decltype(given_inv_std)::value;
    constexpr bool has_gamma = decltype(affine)::value;
    constexpr bool has_out = decltype(coefficients_too)::value;
    const dvec per_value_v(per_value), eps(in.epsilon), unit(1.0),
        small_products(small_products_below), all_rounded_away(zero_products_from_inv_std);
    const dvec largest_v(largest), least_v(least), near_top_v(near_top),
        overflowing(overflowing_center<T>());
    std::size_t c = 0;
    for (; c + lanes <= in.channels; c += lanes) {
      const dvec inv = has_inv_std ? load_as_f64<Arch>(in.inv_std + c)
                                   : inverse_std(load_as_f64<Arch>(in.variance + c), eps);
      const dvec sum_dy_d = residual_corrected(dvec::load_unaligned(in.sum_dy_d + c), c);
      if (checks_products) {  // sums_small_products
        small = small | ((xsimd::abs(sum_dy_d) < small_products) &
                         ((sum_dy_d != zero) | (dvec::load_unaligned(in.sum_dy + c) != zero) |
                          (inv >= all_rounded_away)));
      }
      const dvec dgamma = sum_dy_d * inv;
      dgamma.store_unaligned(in.sum_dy_d + c);
      if (!has_out) continue;
      const dvec a = has_gamma ? load_as_f64<Arch>(in.gamma + c) * inv : inv;
      const dvec center = load_as_f64<Arch>(in.mean + c);
      const dvec x_scale = -(a * inv) * (dgamma * per_value_v);
      const dvec mean_dy = dvec::load_unaligned(in.sum_dy + c) * per_value_v;
      const std::size_t at = first + c;
      store_as<Arch>(out.dy_center + at, mean_dy);
      const dvec rounded_mean_dy = load_as_f64<Arch>(out.dy_center + at);
      const dvec dy_center =
          xsimd::select(xsimd::abs(rounded_mean_dy) < overflowing, rounded_mean_dy, zero);
      store_as<Arch>(out.dy_center + at, dy_center);
      dvec shift = -a * (mean_dy - dy_center);
      if (in.mean_residual) {
        const dvec r = load_as_f64<Arch>(in.mean_residual + c);
        shift = xsimd::select(r == zero, shift, shift - r * x_scale);
      }
      store_as<Arch>(out.center + at, center);
      store_as<Arch>(out.dy_scale + at, a);
      store_as<Arch>(out.x_scale + at, x_scale);
      store_as<Arch>(out.shift + at, shift);
      store_as<Arch>(out.prescale + at, unit);
      store_as<Arch>(out.dy_prescale + at, unit);
      // The lanes that prescale_for might not give 1, or that saturate: the scalar code again
      // (for the others it gives these bits; a NaN lane gives the same bits either way).
      const dvec magnitude = xsimd::abs(x_scale), dy_magnitude = xsimd::abs(a);
      const auto extreme = (xsimd::max(dy_magnitude, xsimd::abs(shift)) >= near_top_v) |
                           (magnitude >= largest_v) | (xsimd::abs(center) >= overflowing) |
                           ((magnitude < least_v) & (x_scale != zero)) |
                           ((dy_magnitude < least_v) & (a != zero)) |
                           (x_scale != x_scale);  // NaN: inf·0 from finite factors too
      if (xsimd::any(extreme)) {
        for (std::size_t k = c; k < c + lanes; ++k) {
          coefficients_of(k, inv_std_of(k), in.sum_dy_d[k]);
        }
      }
    }
    return c;
  };
  const std::size_t vectorized = instantiate_both(in.inv_std != nullptr, [&](auto given_inv_std) {
    if (!writes) return vectors(given_inv_std, std::false_type(), std::false_type());
    return instantiate_both(in.gamma != nullptr, [&](auto affine) {
      return vectors(given_inv_std, affine, std::true_type());
    });
  });
  for (std::size_t c = vectorized; c < in.channels; ++c) {  // the same operations, one channel
    const double inv = inv_std_of(c);
    const double sum_dy_d = residual_corrected_scalar(c);
    if (checks_products && sums_small_products(sum_dy_d, in.sum_dy[c], inv)) {
      small = zero == zero;
    }
    const double dgamma = sum_dy_d * inv;
    in.sum_dy_d[c] = dgamma;
    if (writes) coefficients_of(c, inv, dgamma);
  }
  return {prescaled, xsimd::any(small)};
}

/// v rounded to float by round-to-odd: toward zero, the last bit set where v is not a float.
/// Rounded again to nearest, to a type of at least two bits fewer (bfloat16's 8, float16's 11,
/// against float's 24), it gives v's own rounding to that type: rounded to nearest first, a
/// float64 value just past a half-type tie could land on it, and then to the even side.
inline float round_to_odd(double v) noexcept {
  if (std::isnan(v)) return static_cast<float>(v);
  const double largest = std::numeric_limits<float>::max();
  float f = std::fabs(v) > largest ? static_cast<float>(std::copysign(largest, v))
                                   : static_cast<float>(v);
  if (static_cast<double>(f) == v) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.0f);
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  bits |= 1;
  std::memcpy(&f, &bits, sizeof bits);
  return f;
}

/// One output value: rounded to nearest, or to odd for float outputs that are rounded again.
template <class T>
T rounded_output(double v, bool odd) noexcept {
  if constexpr (std::is_same<T, float>::value) {
    if (odd) return round_to_odd(v);
  }
  return static_cast<T>(v);
}

template <class Arch, class T>
void narrow(std::size_t channels, const double* in, T* out, bool odd) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  if (odd) {  // a half type's parameters: C values, one at a time
    for (std::size_t c = 0; c < channels; ++c) out[c] = rounded_output<T>(in[c], true);
    return;
  }
  std::size_t c = 0;
  for (; c + lanes <= channels; c += lanes) store_as<Arch>(out + c, dvec::load_unaligned(in + c));
  for (; c < channels; ++c) out[c] = static_cast<T>(in[c]);
}

/// commit_statistics with the batch statistics (Batch) and the running update (Running)
/// instantiated apart. Each output takes the operations narrow and the scalar loop give it,
/// whatever else the pass writes.
template <bool Batch, bool Running, class Arch, class T>
void commit_channels(const statistics_commit<T>& in) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  constexpr std::size_t lanes = dvec::size;
  const std::size_t channels = in.channels;
  const double* const mean = in.mean;
  const double* const variance = in.variance;
  const double* const inv_std = in.inv_std;
  T* const batch_mean = in.batch_mean;
  T* const residual = in.batch_mean_residual;
  T* const batch_inv_std = in.batch_inv_std;
  T* const running_mean = in.running_mean;
  T* const running_var = in.running_var;
  const double factor = in.variance_factor, weight = in.batch_weight, keep = 1.0 - weight;
  const dvec f(factor), w(weight), k(keep);
  std::size_t c = 0;
  // A half type's parameters round to odd first (C values, one at a time: the scalar loop).
  for (; !in.round_to_odd && c + lanes <= channels; c += lanes) {
    const dvec m = dvec::load_unaligned(mean + c);
    if constexpr (Batch) {
      if (batch_mean) store_as<Arch>(batch_mean + c, m);
      if (residual) {  // m less its rounding, through the residual's own slots; inf's is 0
        store_as<Arch>(residual + c, m);
        const dvec rounded = load_as_f64<Arch>(residual + c);
        store_as<Arch>(residual + c, xsimd::select(m == rounded, dvec(0.0), m - rounded));
      }
      if (batch_inv_std) store_as<Arch>(batch_inv_std + c, dvec::load_unaligned(inv_std + c));
    }
    if constexpr (Running) {
      store_as<Arch>(running_mean + c, w * m + k * load_as_f64<Arch>(running_mean + c));
      const dvec v = dvec::load_unaligned(variance + c) * f;
      store_as<Arch>(running_var + c, w * v + k * load_as_f64<Arch>(running_var + c));
    }
  }
  const bool odd = in.round_to_odd;
  for (; c < channels; ++c) {  // the same operations, one channel
    if (Batch && batch_mean) batch_mean[c] = rounded_output<T>(mean[c], odd);
    if (Batch && residual) {  // not with half types' parameters (round_to_odd): refused
      const double rounded = static_cast<double>(static_cast<T>(mean[c]));
      residual[c] = static_cast<T>(mean[c] == rounded ? 0.0 : mean[c] - rounded);  // inf: 0
    }
    if (Batch && batch_inv_std) batch_inv_std[c] = rounded_output<T>(inv_std[c], odd);
    if constexpr (Running) {
      running_mean[c] =
          rounded_output<T>(weight * mean[c] + keep * static_cast<double>(running_mean[c]), odd);
      running_var[c] = rounded_output<T>(
          weight * (variance[c] * factor) + keep * static_cast<double>(running_var[c]), odd);
    }
  }
}

template <class Arch, class T>
void commit_statistics(const statistics_commit<T>& in) noexcept {
  instantiate_both(in.batch_mean || in.batch_inv_std || in.batch_mean_residual, [&](auto batch) {
    instantiate_both(in.running_mean != nullptr, [&](auto running) {
      commit_channels<decltype(batch)::value, decltype(running)::value, Arch>(in);
    });
  });
}

}  // namespace
}  // namespace bnorm::kernels
