// Shims over xsimd 8.1.0 (Debian bookworm), included only by the per-ISA kernel units.
//
// Everything here is a template on the xsimd Arch tag or sits in an unnamed namespace: per-ISA
// units are compiled with different flags, and an inline non-template helper shared by them
// would be one weak symbol that the linker may take from the AVX-512 unit (an ODR violation that
// crashes pre-AVX CPUs).
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

namespace bnorm::kernels {
namespace {

/// Whether Arch is Target or extends it: the avx512bf16 unit's xsimd::avx512dq takes the
/// avx512f branches.
template <class Arch, class Target>
inline constexpr bool is_arch = std::is_base_of<Target, Arch>::value;

/// The 256-bit architecture of an AVX-512 Arch, Arch itself for any other. The kernels whose
/// work grows with the vector's width rather than with the data take it: a short run padded to
/// whole vectors (a 7×7 plane is three vectors and a masked one on AVX-512, each lane widened to
/// float64 after it), or a pivot sampled a vector at a time. Where the CPU splits each 512-bit
/// operation in two (AMD Zen 4), that padding is all AVX-512 adds (docs/design.md,
/// "half_width_arch").
template <class Arch, class = void>
struct half_width {
  using type = Arch;
};

#if XSIMD_WITH_AVX512F
static_assert(XSIMD_WITH_FMA3_AVX2, "the AVX-512 kernel units are built with -mfma");
/// xsimd's fma3<avx2> under a name of each unit's own (internal linkage): with fma3<avx2>
/// itself, an xsimd inline function that a unit does not inline would be one weak symbol in the
/// AVX2 and the AVX-512 units, the linker keeping one unit's copy for both
/// (tests/check_weak_symbols.cmake).
struct avx2_within_avx512 : xsimd::fma3<xsimd::avx2> {};

template <class Arch>
struct half_width<Arch, std::enable_if_t<is_arch<Arch, xsimd::avx512f>>> {
  using type = avx2_within_avx512;
};
#endif

template <class Arch>
using half_width_arch = typename half_width<Arch>::type;

/// The vector registers the kernels of Arch are compiled for: 32 in the AVX-512 units (the
/// 256-bit instructions of half_width_arch reach them through AVX512VL), 16 below.
template <class Arch>
inline constexpr std::size_t vector_registers =
#if XSIMD_WITH_AVX512F
    is_arch<Arch, xsimd::avx512f> || std::is_same<Arch, avx2_within_avx512>::value ? 32 :
#endif
                                                                                   16;

}  // namespace
}  // namespace bnorm::kernels

#if XSIMD_WITH_AVX512F
namespace xsimd::types {
XSIMD_DECLARE_SIMD_REGISTER_ALIAS(bnorm::kernels::avx2_within_avx512, fma3<avx2>);
}  // namespace xsimd::types
#endif

namespace bnorm::kernels {
namespace {

#if XSIMD_WITH_AVX512F
// The float <-> double conversions go through their zero-masked forms with every lane set: the
// plain intrinsics pass GCC 12 an undefined merge source, which -Wuninitialized reports (GCC
// PR 105593) in the sanitizer builds.
constexpr __mmask8 all_lanes = 0xFF;
#endif

/// Loads batch<double, Arch>::size consecutive values as float64. For float input this widens
/// with one conversion instruction; xsimd 8.1's converting load falls back to scalar code.
template <class Arch>
xsimd::batch<double, Arch> load_as_f64(const double* src) noexcept {
  return xsimd::batch<double, Arch>::load_unaligned(src);
}

template <class Arch>
xsimd::batch<double, Arch> load_as_f64(const float* src) noexcept {
  using batch = xsimd::batch<double, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>)
    return batch(_mm512_maskz_cvtps_pd(all_lanes, _mm256_loadu_ps(src)));
  else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value)
    return batch(_mm256_cvtps_pd(_mm_loadu_ps(src)));
  else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value)
    // Two floats through a 64-bit load. _mm_loadl_epi64 dereferences an unaligned, may_alias
    // type; _mm_load_sd dereferences a double*, which UBSan flags at 4-byte alignment.
    return batch(
        _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src)))));
  else
#endif
#if XSIMD_WITH_NEON64
      if constexpr (is_arch<Arch, xsimd::neon64>)
    return batch(vcvt_f64_f32(vld1_f32(src)));
  else
#endif
  {
    alignas(64) double widened[batch::size];
    for (std::size_t i = 0; i < batch::size; ++i) widened[i] = static_cast<double>(src[i]);
    return batch::load_aligned(widened);
  }
}

/// Stores batch<double, Arch>::size float64 values as T, each rounded to nearest (to an infinity
/// beyond T's range, as a scalar conversion). xsimd 8.1 has no narrowing store.
template <class Arch>
void store_as(double* dst, const xsimd::batch<double, Arch>& v) noexcept {
  v.store_unaligned(dst);
}

template <class Arch>
void store_as(float* dst, const xsimd::batch<double, Arch>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    _mm256_storeu_ps(dst, _mm512_maskz_cvtpd_ps(all_lanes, v));
    return;
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    _mm_storeu_ps(dst, _mm256_cvtpd_ps(v));
    return;
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm_castps_si128(_mm_cvtpd_ps(v)));
    return;
  } else
#endif
#if XSIMD_WITH_NEON64
      if constexpr (is_arch<Arch, xsimd::neon64>) {
    vst1_f32(dst, vcvt_f32_f64(v));
    return;
  } else
#endif
  {
    constexpr std::size_t lanes = xsimd::batch<double, Arch>::size;
    alignas(64) double values[lanes];
    v.store_aligned(values);
    for (std::size_t i = 0; i < lanes; ++i) dst[i] = static_cast<float>(values[i]);
  }
}

/// The low and high halves of a float vector as two float64 vectors.
template <class Arch>
void widen(const xsimd::batch<float, Arch>& v, xsimd::batch<double, Arch>& low,
           xsimd::batch<double, Arch>& high) noexcept {
  using dvec = xsimd::batch<double, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    const __m512 r = v;
    // _mm512_extractf32x8_ps would need AVX512DQ; the 64-bit lane extract is AVX512F. Its
    // zero-masked form, as the conversions', for both halves: GCC 12 builds the plain extract
    // and _mm512_castps512_ps256 on an undefined value and warns (GCC PR 105593).
    const __m512d halves = _mm512_castps_pd(r);
    low = dvec(_mm512_maskz_cvtps_pd(
        all_lanes, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, halves, 0))));
    high = dvec(_mm512_maskz_cvtps_pd(
        all_lanes, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, halves, 1))));
    return;
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    const __m256 r = v;
    low = dvec(_mm256_cvtps_pd(_mm256_castps256_ps128(r)));
    high = dvec(_mm256_cvtps_pd(_mm256_extractf128_ps(r, 1)));
    return;
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    const __m128 r = v;
    low = dvec(_mm_cvtps_pd(r));
    high = dvec(_mm_cvtps_pd(_mm_movehl_ps(r, r)));
    return;
  } else
#endif
  {
    constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
    alignas(64) float values[lanes];
    alignas(64) double wide[lanes];
    v.store_aligned(values);
    for (std::size_t i = 0; i < lanes; ++i) wide[i] = static_cast<double>(values[i]);
    low = dvec::load_aligned(wide);
    high = dvec::load_aligned(wide + lanes / 2);
  }
}

/// a·b + c, fused wherever the ISA has FMA. xsimd 8.1.0 has no avx512f override of fma (its
/// generic fallback is x*y+z, and kernel units are built with -ffp-contract=off), so AVX-512
/// calls the intrinsic itself; xsimd 11.0.0 added the override.
template <class T, class Arch>
xsimd::batch<T, Arch> fmadd(const xsimd::batch<T, Arch>& a, const xsimd::batch<T, Arch>& b,
                            const xsimd::batch<T, Arch>& c) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    if constexpr (std::is_same<T, float>::value)
      return _mm512_fmadd_ps(a, b, c);
    else
      return _mm512_fmadd_pd(a, b, c);
  } else
#endif
  {
    return xsimd::fma(a, b, c);
  }
}

/// c − a·b, fused wherever the ISA has FMA (xsimd's fnma; AVX-512 as in fmadd). SSE2 has none:
/// there one subtraction of the product, so that a NaN product keeps its sign whatever code
/// surrounds it (xsimd's −a·b + c let GCC negate the product in some loops and subtract it in
/// others, and a NaN's sign changed with the store policy).
template <class T, class Arch>
xsimd::batch<T, Arch> fnmadd(const xsimd::batch<T, Arch>& a, const xsimd::batch<T, Arch>& b,
                             const xsimd::batch<T, Arch>& c) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    if constexpr (std::is_same<T, float>::value)
      return _mm512_fnmadd_ps(a, b, c);
    else
      return _mm512_fnmadd_pd(a, b, c);
  } else
#endif
  {
    if constexpr (std::is_same<Arch, xsimd::sse2>::value) {
      return c - a * b;
    } else {
      return xsimd::fnma(a, b, c);
    }
  }
}

/// 1/sqrt(a), lane by lane, in float64. AVX-512 refines its 14-bit estimate (vrsqrt14pd) by two
/// Newton steps, each squaring the relative error (2^-14, 2^-28, then the steps' own rounding):
/// within about an ulp, as a square root and a division rounded in turn are, and without the
/// divider, which the per-channel loops waited on (docs/design.md, "Inverse square roots
/// without the divider (stop 54)"). Where a is not finite and positive (0, −0, +inf, negative,
/// NaN), the estimate is already 1/sqrt(a): +inf, −inf, +0, NaN, NaN. Other ISAs divide.
template <class Arch>
xsimd::batch<double, Arch> inverse_sqrt(const xsimd::batch<double, Arch>& a) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    const __m512d estimate = _mm512_rsqrt14_pd(a);
    const __m512d one = _mm512_set1_pd(1.0), half = _mm512_set1_pd(0.5);
    __m512d y = estimate;
    for (int step = 0; step < 2; ++step) {
      const __m512d residual = _mm512_fnmadd_pd(_mm512_mul_pd(a, y), y, one);  // 1 − a·y²
      y = _mm512_fmadd_pd(_mm512_mul_pd(y, half), residual, y);
    }
    const __mmask8 finite_positive =
        _mm512_cmp_pd_mask(a, _mm512_setzero_pd(), _CMP_GT_OQ) &
        _mm512_cmp_pd_mask(a, _mm512_set1_pd(std::numeric_limits<double>::infinity()), _CMP_LT_OQ);
    return _mm512_mask_blend_pd(finite_positive, estimate, y);
  } else
#endif
  {
    return xsimd::batch<double, Arch>(1.0) / xsimd::sqrt(a);
  }
}

/// inverse_sqrt of one value: the bits of a lane of the vector form, so that a channel's
/// coefficients never depend on whether it fell in a vector of channels or after the last.
template <class Arch>
double inverse_sqrt(double a) noexcept {
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    alignas(64) double lanes[xsimd::batch<double, Arch>::size];
    inverse_sqrt<Arch>(xsimd::batch<double, Arch>(a)).store_aligned(lanes);
    return lanes[0];
  } else {
    return 1.0 / std::sqrt(a);
  }
}

/// Batch norm's 1/std, 1/sqrt(variance + eps), also where the sum overflows though both terms
/// are finite (a float64 variance or an eps near the largest double; 1/std was 0 there, and y
/// 0): from the quarters then, 0.5 · 1/sqrt(variance/4 + eps/4), powers of two that scale
/// exactly (statistics.hpp's inverse_std is the same rule in one value).
template <class Arch>
[[gnu::always_inline]] inline xsimd::batch<double, Arch> inverse_std(
    const xsimd::batch<double, Arch>& variance, const xsimd::batch<double, Arch>& eps) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  const dvec sum = variance + eps;
  const auto overflowed = sum == dvec(std::numeric_limits<double>::infinity());
  if (!xsimd::any(overflowed)) return inverse_sqrt(sum);
  const dvec quarter(0.25);
  return xsimd::select(overflowed, dvec(0.5) * inverse_sqrt(variance * quarter + eps * quarter),
                       inverse_sqrt(sum));
}

/// inverse_std of one channel: a lane's bits.
template <class Arch>
[[gnu::always_inline]] inline double inverse_std(double variance, double eps) noexcept {
  const double sum = variance + eps;
  if (sum == std::numeric_limits<double>::infinity()) {
    return 0.5 * inverse_sqrt<Arch>(variance * 0.25 + eps * 0.25);
  }
  return inverse_sqrt<Arch>(sum);
}

/// (v < bound) ? bound : v (a lower bound) or (v > bound) ? bound : v (an upper one), lane by
/// lane: a NaN stays, −0 stays −0 against a +0 bound. x86's max and min compute exactly this
/// with the bound first ((bound > v) ? bound : v, the second operand when either is NaN): one
/// instruction for the compare and the blend.
template <bool Upper, class T, class Arch>
xsimd::batch<T, Arch> bounded(const xsimd::batch<T, Arch>& v,
                              const xsimd::batch<T, Arch>& bound) noexcept {
  constexpr bool is_float = std::is_same<T, float>::value;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    if constexpr (is_float)
      return Upper ? _mm512_min_ps(bound, v) : _mm512_max_ps(bound, v);
    else
      return Upper ? _mm512_min_pd(bound, v) : _mm512_max_pd(bound, v);
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    if constexpr (is_float)
      return Upper ? _mm256_min_ps(bound, v) : _mm256_max_ps(bound, v);
    else
      return Upper ? _mm256_min_pd(bound, v) : _mm256_max_pd(bound, v);
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    if constexpr (is_float)
      return Upper ? _mm_min_ps(bound, v) : _mm_max_ps(bound, v);
    else
      return Upper ? _mm_min_pd(bound, v) : _mm_max_pd(bound, v);
  } else
#endif
  {
    return xsimd::select(Upper ? v > bound : v < bound, bound, v);
  }
}

template <class T, class Arch>
xsimd::batch<T, Arch> at_least(const xsimd::batch<T, Arch>& v,
                               const xsimd::batch<T, Arch>& lo) noexcept {
  return bounded<false>(v, lo);
}

template <class T, class Arch>
xsimd::batch<T, Arch> at_most(const xsimd::batch<T, Arch>& v,
                              const xsimd::batch<T, Arch>& hi) noexcept {
  return bounded<true>(v, hi);
}

/// Horizontal sum in a fixed lane order: halves added pairwise, ((v0 + v4) + (v2 + v6)) +
/// ((v1 + v5) + (v3 + v7)) on AVX-512. In registers on x86: a store and a chain of scalar adds
/// made short channels (7×7) wait on it (the chain is as long as the lanes). xsimd 8.1's hadd
/// needs AVX512DQ for float on avx512f (fixed in 10.0.0) and was renamed reduce_add in 9.0.0.
template <class Arch>
double sum_lanes(const xsimd::batch<double, Arch>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    const __m512d wide = v;
    const __m256d four =
        _mm256_add_pd(_mm512_castpd512_pd256(wide), _mm512_extractf64x4_pd(wide, 1));
    const __m128d two = _mm_add_pd(_mm256_castpd256_pd128(four), _mm256_extractf128_pd(four, 1));
    return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    const __m256d four = v;
    const __m128d two = _mm_add_pd(_mm256_castpd256_pd128(four), _mm256_extractf128_pd(four, 1));
    return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    const __m128d two = v;
    return _mm_cvtsd_f64(_mm_add_sd(two, _mm_unpackhi_pd(two, two)));
  } else
#endif
  {
    constexpr std::size_t lanes = xsimd::batch<double, Arch>::size;
    alignas(64) double values[lanes];
    v.store_aligned(values);
    // The same pairing as the x86 code: halves first.
    for (std::size_t width = lanes / 2; width > 0; width /= 2) {
      for (std::size_t i = 0; i < width; ++i) values[i] += values[i + width];
    }
    return values[0];
  }
}

#if XSIMD_WITH_AVX512F
/// _mm512_shuffle_f64x2 in its zero-masked form (GCC 12 warns of the plain one's undefined
/// source, see all_lanes).
template <int Blocks>
__m512d shuffle(__m512d a, __m512d b) noexcept {
  return _mm512_maskz_shuffle_f64x2(all_lanes, a, b, Blocks);
}
#endif

/// The horizontal sums of as many vectors as a vector has lanes, at once: lane g of the result
/// is sum_lanes(v[g]), bit for bit (the same pairs added in the same order, the vectors
/// transposed as they are reduced). Channels reduced a vector of them at a time share the
/// shuffles that one channel at a time pays alone.
template <class Arch>
xsimd::batch<double, Arch> sum_lanes_of(const xsimd::batch<double, Arch>* v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    // Halves: w[g] = [four of g | four of g + 4]; quarters: x[g] = the pairs of g, g + 4,
    // g + 2, g + 6; then the last pair of each, in the order 0, 1, 4, 5, 2, 3, 6, 7.
    __m512d w[4], x[2];
    for (int g = 0; g < 4; ++g) {
      const __m512d a = v[g], b = v[g + 4];
      w[g] = _mm512_add_pd(shuffle<0x44>(a, b), shuffle<0xEE>(a, b));
    }
    for (int g = 0; g < 2; ++g) {
      x[g] = _mm512_add_pd(shuffle<0x88>(w[g], w[g + 2]), shuffle<0xDD>(w[g], w[g + 2]));
    }
    const __m512d sums = _mm512_add_pd(_mm512_maskz_unpacklo_pd(all_lanes, x[0], x[1]),
                                       _mm512_maskz_unpackhi_pd(all_lanes, x[0], x[1]));
    return shuffle<0xD8>(sums, sums);
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    // u = [a0 + a2, a1 + a3, c0 + c2, c1 + c3], w likewise of b and d; then their pairs.
    const __m256d a = v[0], b = v[1], c = v[2], d = v[3];
    const __m256d u =
        _mm256_add_pd(_mm256_permute2f128_pd(a, c, 0x20), _mm256_permute2f128_pd(a, c, 0x31));
    const __m256d w =
        _mm256_add_pd(_mm256_permute2f128_pd(b, d, 0x20), _mm256_permute2f128_pd(b, d, 0x31));
    return _mm256_hadd_pd(u, w);
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    const __m128d a = v[0], b = v[1];
    return _mm_add_pd(_mm_unpacklo_pd(a, b), _mm_unpackhi_pd(a, b));
  } else
#endif
  {
    constexpr std::size_t lanes = xsimd::batch<double, Arch>::size;
    alignas(64) double sums[lanes];
    for (std::size_t g = 0; g < lanes; ++g) sums[g] = sum_lanes(v[g]);
    return xsimd::batch<double, Arch>::load_aligned(sums);
  }
}

/// Non-temporal store of a whole vector to a vector-aligned address; xsimd 8.1 has none.
/// Architectures without one store normally.
template <class T, class Arch>
void store_stream(T* dst, const xsimd::batch<T, Arch>& v) noexcept {
  constexpr bool is_float = std::is_same<T, float>::value;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    if constexpr (is_float)
      _mm512_stream_ps(dst, v);
    else
      _mm512_stream_pd(dst, v);
    return;
  } else
#endif
#if XSIMD_WITH_AVX
      if constexpr (std::is_base_of<xsimd::avx, Arch>::value) {
    if constexpr (is_float)
      _mm256_stream_ps(dst, v);
    else
      _mm256_stream_pd(dst, v);
    return;
  } else
#endif
#if XSIMD_WITH_SSE2
      if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
    if constexpr (is_float)
      _mm_stream_ps(dst, v);
    else
      _mm_stream_pd(dst, v);
    return;
  } else
#endif
  {
    v.store_aligned(dst);
  }
}

/// The channels of a vector's lanes in a channel group: `lanes` channels of len values each,
/// back to back, are exactly len whole vectors, and lane j of the group's vector v holds value
/// n = v·lanes + j, of the group's channel n / len. next() gives vector v's channels (v = 0, 1,
/// ... in turn) as lane indices for of(): floor((n + 1/2)·(1/len)) in float, whose roundings (a
/// few parts in 2^24 of a result below 17) stay inside the 1/(2·len) between it and either
/// integer for any len < 2^16; the steps depend on each other only through n's integer add.
/// of(table, index) gives table's lane index[j] in each lane j. AVX-512 alone (`exists`): on
/// AVX2 the index arithmetic and permutes of eight lanes cost more instructions than a plane at
/// a time saves (docs/design.md, "Channel groups").
template <class Arch, class = void>
struct lane_channels {
  static constexpr bool exists = false;
};

#if XSIMD_WITH_AVX512F
template <class Arch>
struct lane_channels<Arch, std::enable_if_t<is_arch<Arch, xsimd::avx512f>>> {
  static constexpr bool exists = true;
  __m512i n = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 inverse, half;
  explicit lane_channels(std::size_t len) noexcept
      : inverse(_mm512_set1_ps(1.0f / static_cast<float>(len))),
        half(_mm512_set1_ps(0.5f / static_cast<float>(len))) {}
  __m512i next() noexcept {
    const __m512i channel =
        _mm512_cvttps_epi32(_mm512_fmadd_ps(_mm512_cvtepi32_ps(n), inverse, half));
    n = _mm512_add_epi32(n, _mm512_set1_epi32(16));
    return channel;
  }
  static xsimd::batch<float, Arch> of(const xsimd::batch<float, Arch>& table,
                                      __m512i index) noexcept {
    return _mm512_permutexvar_ps(index, table);
  }
};
#endif

/// Orders this thread's non-temporal stores before whatever it does next (they are weakly
/// ordered), so the results are visible once the pass joins.
template <class Arch>
void stream_fence() noexcept {
#if XSIMD_WITH_SSE2
  _mm_sfence();
#endif
}

}  // namespace
}  // namespace bnorm::kernels
