// The storage layer: how the kernels load and store a tensor's elements, of the storage type S,
// in the type they compute in, compute_t<S>. float and double compute in themselves; bfloat16
// and float16 (element_types.hpp) compute in float, converted here and nowhere else: a storage
// type is its loads and stores, not new kernels. Part of the kernels compiled once per ISA:
// include only from the kernel headers.
//
// The conversions give the bits of the scalar reference ones (element_types.hpp). bfloat16:
// integer rounding to nearest even, or on AVX512_BF16 its vcvtneps2bf16 and vcvtne2ps2bf16 for
// vectors without NaNs and subnormals (which they read as zero), the same rounding. float16:
// F16C on AVX2 (the AVX2 kernels require it) and AVX-512, the scalar conversion below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>  // every ISA unit names the AVX types, in branches it never takes
#endif

#include "element_types.hpp"
#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

/// The type a kernel computes in for elements stored as S.
template <class S>
using compute_t = compute_of_t<S>;

/// The 16-bit elements of a half storage type, as the integers the intrinsics take.
template <class S>
const std::uint16_t* raw(const S* p) noexcept {
  return reinterpret_cast<const std::uint16_t*>(p);
}
template <class S>
std::uint16_t* raw(S* p) noexcept {
  return reinterpret_cast<std::uint16_t*>(p);
}

/// One vector of float from batch<float, Arch>::size half elements, through a buffer: the
/// ISAs without a vector conversion.
template <class Arch, class S>
xsimd::batch<float, Arch> load_halves_scalar(const S* p) noexcept {
  using vec = xsimd::batch<float, Arch>;
  alignas(64) float values[vec::size];
  for (std::size_t i = 0; i < vec::size; ++i) values[i] = to_float(p[i]);
  return vec::load_aligned(values);
}

template <class Arch, class S>
void store_halves_scalar(S* p, const xsimd::batch<float, Arch>& v) noexcept {
  using vec = xsimd::batch<float, Arch>;
  alignas(64) float values[vec::size];
  v.store_aligned(values);
  if constexpr (std::is_same<S, bfloat16>::value) {
    for (std::size_t i = 0; i < vec::size; ++i) p[i] = to_bfloat16(values[i]);
  } else {
    for (std::size_t i = 0; i < vec::size; ++i) p[i] = to_float16(values[i]);
  }
}

/// One vector of compute_t<S> from batch<compute_t<S>, Arch>::size consecutive elements.
template <class Arch, class S>
xsimd::batch<compute_t<S>, Arch> load_elements(const S* p) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  if constexpr (!is_half_storage<S>) {
    return vec::load_unaligned(p);
  } else if constexpr (std::is_same<S, bfloat16>::value) {
#if XSIMD_WITH_AVX512F
    if constexpr (is_arch<Arch, xsimd::avx512f>) {
      const __m512i wide =
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw(p))));
      return vec(_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
      const __m256i wide =
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(raw(p))));
      return vec(_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16)));
    } else
#endif
#if XSIMD_WITH_SSE2
        if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) {
      const __m128i halves = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(raw(p)));
      return vec(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), halves)));
    } else
#endif
    {
      return load_halves_scalar<Arch>(p);
    }
  } else {  // float16
#if XSIMD_WITH_AVX512F
    if constexpr (is_arch<Arch, xsimd::avx512f>) {
      return vec(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw(p)))));
    } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
      return vec(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(raw(p)))));
    } else
#endif
    {
      return load_halves_scalar<Arch>(p);
    }
  }
}

/// Whether load_elements_in_any_order reorders: bfloat16 on AVX2 and AVX-512.
template <class Arch, class S>
constexpr bool loads_pairs_in_any_order() noexcept {
  if constexpr (!std::is_same<S, bfloat16>::value) return false;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) return true;
#endif
#if XSIMD_WITH_AVX2
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) return true;
#endif
  return false;
}

/// The 2 × lanes consecutive elements from p as two vectors of compute_t<S>, in an order of the
/// storage's choosing: for sums, whose order within a channel's run is free. bfloat16 (where
/// loads_pairs_in_any_order): one load and two integer operations, the even elements in v0 and
/// the odd ones in v1 (a bfloat16 is the top half of a float: its pair's word shifted up, or
/// kept under a mask), where load_elements widens each vector's halves on the shuffle port that
/// the statistics of bfloat16 waited on; otherwise v0 and v1 in order.
template <class Arch, class S>
[[gnu::always_inline]] inline void load_elements_in_any_order(
    const S* p, xsimd::batch<compute_t<S>, Arch>& v0,
    xsimd::batch<compute_t<S>, Arch>& v1) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  if constexpr (loads_pairs_in_any_order<Arch, S>()) {
#if XSIMD_WITH_AVX512F
    if constexpr (is_arch<Arch, xsimd::avx512f>) {
      const __m512i words = _mm512_loadu_si512(raw(p));
      v0 = vec(_mm512_castsi512_ps(_mm512_slli_epi32(words, 16)));
      v1 = vec(_mm512_castsi512_ps(_mm512_and_si512(words, _mm512_set1_epi32(-65536))));
    } else
#endif
    {
#if XSIMD_WITH_AVX2
      const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(raw(p)));
      v0 = vec(_mm256_castsi256_ps(_mm256_slli_epi32(words, 16)));
      v1 = vec(_mm256_castsi256_ps(_mm256_and_si256(words, _mm256_set1_epi32(-65536))));
#endif
    }
  } else {
    v0 = load_elements<Arch>(p);
    v1 = load_elements<Arch>(p + vec::size);
  }
}

#if XSIMD_WITH_AVX2
/// The order of load_elements_in_any_order for vectors in order: v0 and v1 hold 2 × lanes
/// consecutive values; after, v0 the even ones and v1 the odd ones.
template <class Arch>
[[gnu::always_inline]] inline void to_even_and_odd(xsimd::batch<float, Arch>& v0,
                                                   xsimd::batch<float, Arch>& v1) noexcept {
  using vec = xsimd::batch<float, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 a = v0, b = v1;
    v0 = vec(_mm512_permutex2var_ps(a, even, b));
    v1 = vec(_mm512_permutex2var_ps(a, odd, b));
  } else
#endif
  {
    // Within each 128-bit half: a0 a2 b0 b2 | a4 a6 b4 b6; then its 64-bit quarters in order.
    const __m256 a = v0, b = v1;
    const __m256 even = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    const __m256 odd = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    v0 = vec(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xD8)));
    v1 = vec(_mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), 0xD8)));
  }
}

/// The inverse of to_even_and_odd: v0 the even values, v1 the odd ones; after, in order.
template <class Arch>
[[gnu::always_inline]] inline void from_even_and_odd(xsimd::batch<float, Arch>& v0,
                                                     xsimd::batch<float, Arch>& v1) noexcept {
  using vec = xsimd::batch<float, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) {
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_add_epi32(low, _mm512_set1_epi32(8));
    const __m512 even = v0, odd = v1;
    v0 = vec(_mm512_permutex2var_ps(even, low, odd));
    v1 = vec(_mm512_permutex2var_ps(even, high, odd));
  } else
#endif
  {
    // e0 o0 e1 o1 | e4 o4 e5 o5 and e2 o2 e3 o3 | e6 o6 e7 o7; then their halves in order.
    const __m256 even = v0, odd = v1;
    const __m256 low = _mm256_unpacklo_ps(even, odd), high = _mm256_unpackhi_ps(even, odd);
    v0 = vec(_mm256_permute2f128_ps(low, high, 0x20));
    v1 = vec(_mm256_permute2f128_ps(low, high, 0x31));
  }
}
#endif

/// Whether the ISA converts a float vector to half elements in registers (half_bits).
template <class Arch, class S>
constexpr bool converts_in_registers() noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f>) return true;
#endif
#if XSIMD_WITH_AVX2
  if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) return true;
#endif
#if XSIMD_WITH_SSE2
  if constexpr (std::is_base_of<xsimd::sse2, Arch>::value) return std::is_same<S, bfloat16>::value;
#endif
  return false;
}

#if XSIMD_WITH_SSE2
/// The half elements of a float vector, rounded to S, in an integer register: 256 bits on
/// AVX-512, 128 on AVX2, the low 64 bits on SSE2 (where converts_in_registers).
template <class Arch, class S>
auto half_bits(const xsimd::batch<float, Arch>& v) noexcept {
  if constexpr (std::is_same<S, bfloat16>::value) {
    // to_bfloat16: add 0x7FFF and the lowest kept bit, keep the top half; NaN → 0x7FC0.
#if XSIMD_WITH_AVX512F
    if constexpr (is_arch<Arch, xsimd::avx512f>) {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
      // vcvtneps2bf16 rounds to nearest even as below, but reads subnormal inputs as zero and
      // keeps a NaN's sign and payload: vectors holding either take the integer rounding.
      constexpr int nan_or_subnormal = 0x01 | 0x80 | 0x20;  // QNaN, SNaN, denormal
      if (_mm512_fpclass_ps_mask(v, nan_or_subnormal) == 0) {
        return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v));
      }
#endif
      // The zero-masked forms (every lane kept): the plain ones start from
      // _mm512_undefined_epi32(), which GCC 12 reports as used uninitialized where inlined.
      constexpr __mmask16 all = 0xFFFF;
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i lsb =
          _mm512_and_si512(_mm512_maskz_srli_epi32(all, bits, 16), _mm512_set1_epi32(1));
      const __m512i rounded = _mm512_maskz_srli_epi32(
          all, _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      return _mm512_maskz_cvtepi32_epi16(
          all, _mm512_mask_blend_epi32(nan, rounded, _mm512_set1_epi32(0x7FC0)));
    } else
#endif
#if XSIMD_WITH_AVX2
        if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {
      const __m256i bits = _mm256_castps_si256(v);
      const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
      const __m256i rounded = _mm256_srli_epi32(
          _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
      const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      const __m256i result = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
      // packus works within each 128-bit lane: each half's four results, then put in order.
      return _mm256_castsi256_si128(
          _mm256_permute4x64_epi64(_mm256_packus_epi32(result, result), 0x08));
    } else
#endif
    {
      const __m128i bits = _mm_castps_si128(v);
      const __m128i lsb = _mm_and_si128(_mm_srli_epi32(bits, 16), _mm_set1_epi32(1));
      const __m128i rounded =
          _mm_srli_epi32(_mm_add_epi32(bits, _mm_add_epi32(lsb, _mm_set1_epi32(0x7FFF))), 16);
      const __m128i nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
      const __m128i result =
          _mm_or_si128(_mm_andnot_si128(nan, rounded), _mm_and_si128(nan, _mm_set1_epi32(0x7FC0)));
      // Sign-extend the low halves so that the signed pack keeps them as they are.
      const __m128i low = _mm_srai_epi32(_mm_slli_epi32(result, 16), 16);
      return _mm_packs_epi32(low, low);
    }
  } else {  // float16, through F16C
#if XSIMD_WITH_AVX512F
    if constexpr (is_arch<Arch, xsimd::avx512f>) {
      return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else
#endif
    {
      return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
  }
}
#else
template <class Arch, class S>
int half_bits(const xsimd::batch<float, Arch>&) noexcept {  // never called: no such ISA here
  return 0;
}
#endif

/// One vector into consecutive elements, rounded to S.
template <class Arch, class S>
void store_elements(S* p, const xsimd::batch<compute_t<S>, Arch>& v) noexcept {
  if constexpr (!is_half_storage<S>) {
    v.store_unaligned(p);
  } else if constexpr (converts_in_registers<Arch, S>()) {
    const auto bits = half_bits<Arch, S>(v);
    if constexpr (sizeof(bits) == 32) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(raw(p)), bits);
    } else if constexpr (xsimd::batch<float, Arch>::size == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(raw(p)), bits);
    } else {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(raw(p)), bits);
    }
  } else {
    store_halves_scalar<Arch>(p, v);
  }
}

/// As store_elements, with a non-temporal store: p is aligned to the vector's bytes.
template <class Arch, class S>
void stream_elements(S* p, const xsimd::batch<compute_t<S>, Arch>& v) noexcept {
  if constexpr (!is_half_storage<S>) {
    store_stream(p, v);
  } else if constexpr (converts_in_registers<Arch, S>()) {
    const auto bits = half_bits<Arch, S>(v);
    if constexpr (sizeof(bits) == 32) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(raw(p)), bits);
    } else if constexpr (xsimd::batch<float, Arch>::size == 8) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(raw(p)), bits);
    } else {
      long long low;
      std::memcpy(&low, &bits, sizeof low);
      _mm_stream_si64(reinterpret_cast<long long*>(raw(p)), low);
    }
  } else {
    store_halves_scalar<Arch>(p, v);
  }
}

/// One vector into consecutive elements: store_elements, or with `Stream` stream_elements.
template <bool Stream, class Arch, class S>
void put_elements(S* p, const xsimd::batch<compute_t<S>, Arch>& v) noexcept {
  if constexpr (Stream) {
    stream_elements<Arch>(p, v);
  } else {
    store_elements<Arch>(p, v);
  }
}

/// Two vectors into 2 × lanes consecutive elements, rounded to S (with `Stream`, streamed: p
/// aligned to the pair's bytes): put_elements of each, or for bfloat16 on AVX512_BF16 one
/// vcvtne2ps2bf16 of the pair, which takes about the time of one vcvtneps2bf16, after one check
/// of the pair for NaNs and subnormals (see half_bits). Always inlined: GCC kept the AVX512_BF16
/// instance out of line, a call (its vectors passed through memory, a vzeroupper at its return)
/// for every 32 values stored.
template <bool Stream, class Arch, class S>
[[gnu::always_inline]] inline void put_element_pair(
    S* p, const xsimd::batch<compute_t<S>, Arch>& v0,
    const xsimd::batch<compute_t<S>, Arch>& v1) noexcept {
#if XSIMD_WITH_AVX512F && defined(__AVX512BF16__) && defined(__AVX512DQ__)
  if constexpr (std::is_same<S, bfloat16>::value && is_arch<Arch, xsimd::avx512f>) {
    constexpr int nan_or_subnormal = 0x01 | 0x80 | 0x20;  // QNaN, SNaN, denormal
    // One kortest of the two masks: or-ing them as integers took two mask moves on the port
    // that the conversions and multiplies need.
    if (_kortestz_mask16_u8(_mm512_fpclass_ps_mask(v0, nan_or_subnormal),
                            _mm512_fpclass_ps_mask(v1, nan_or_subnormal))) {
      // The low half of the result is the second operand's.
      const __m512i bits = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(v1, v0));
      if constexpr (Stream) {
        _mm512_stream_si512(reinterpret_cast<__m512i*>(raw(p)), bits);
      } else {
        _mm512_storeu_si512(raw(p), bits);
      }
      return;
    }
  }
#endif
  put_elements<Stream, Arch>(p, v0);
  put_elements<Stream, Arch>(p + xsimd::batch<compute_t<S>, Arch>::size, v1);
}

template <class Arch, class S>
[[gnu::always_inline]] inline void store_element_pair(
    S* p, const xsimd::batch<compute_t<S>, Arch>& v0,
    const xsimd::batch<compute_t<S>, Arch>& v1) noexcept {
  put_element_pair<false, Arch>(p, v0, v1);
}

/// Count vectors into consecutive elements, in pairs (put_element_pair); with `Stream`,
/// streamed: p aligned to a cache line that they fill. Always inlined, as put_element_pair.
template <bool Stream, std::size_t Count, class Arch, class S>
[[gnu::always_inline]] inline void put_vectors(
    S* p, const xsimd::batch<compute_t<S>, Arch> (&v)[Count]) noexcept {
  constexpr std::size_t lanes = xsimd::batch<compute_t<S>, Arch>::size;
  std::size_t k = 0;
  for (; k + 2 <= Count; k += 2) put_element_pair<Stream, Arch>(p + k * lanes, v[k], v[k + 1]);
  if (k < Count) put_elements<Stream, Arch>(p + k * lanes, v[k]);
}

/// batch<double, Arch>::size consecutive elements as float64 (pivots, per-channel values).
template <class Arch, class S>
xsimd::batch<double, Arch> load_elements_as_f64(const S* p) noexcept {
  using dvec = xsimd::batch<double, Arch>;
  [[maybe_unused]] constexpr bool bf16 = std::is_same<S, bfloat16>::value;
  if constexpr (!is_half_storage<S>) {
    return load_as_f64<Arch>(p);
  }
#if XSIMD_WITH_AVX512F
  else if constexpr (is_arch<Arch, xsimd::avx512f>) {  // 8 halves
    const __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(raw(p)));
    const __m256 floats =
        bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16))
             : _mm256_cvtph_ps(halves);
    return dvec(_mm512_cvtps_pd(floats));
  }
#endif
#if XSIMD_WITH_AVX2
  else if constexpr (std::is_base_of<xsimd::avx2, Arch>::value) {  // 4 halves
    const __m128i halves = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(raw(p)));
    const __m128 floats = bf16 ? _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), halves))
                               : _mm_cvtph_ps(halves);
    return dvec(_mm256_cvtps_pd(floats));
  }
#endif
  else {
    alignas(64) double values[dvec::size];
    for (std::size_t i = 0; i < dvec::size; ++i) values[i] = to_float(p[i]);
    return dvec::load_aligned(values);
  }
}

/// A hint to bring the cache line `bytes_ahead` past `at` into the cache. The address is
/// computed as an integer, never as a pointer, so that it may lie past the end of the tensor (a
/// block's rows fetch the next block's, wherever the rows end; a plane's last lines the next
/// channel's): a prefetch never faults.
inline void fetch_line(const void* at, std::size_t bytes_ahead) noexcept {
  __builtin_prefetch(
      reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(at) + bytes_ahead));
}

/// Whether p lies on a multiple of `bytes` (a power of two).
inline bool is_aligned(const void* p, std::size_t bytes) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) & (bytes - 1)) == 0;
}

/// Whether rows of `width` elements, `stride` apart, from p are whole cache lines each: p on a
/// line, the width and the stride whole lines. Streamed, such rows need no ordinary store.
template <class S>
bool rows_of_whole_lines(const S* p, std::size_t width, std::size_t stride) noexcept {
  return is_aligned(p, 64) && width * sizeof(S) % 64 == 0 && stride * sizeof(S) % 64 == 0;
}

/// One element, for the scalar edges of the vector code.
template <class S>
compute_t<S> to_compute(S v) noexcept {
  if constexpr (is_half_storage<S>) {
    return to_float(v);
  } else {
    return v;
  }
}

template <class S>
S from_compute(compute_t<S> v) noexcept {
  if constexpr (std::is_same<S, bfloat16>::value) {
    return to_bfloat16(v);
  } else if constexpr (std::is_same<S, float16>::value) {
    return to_float16(v);
  } else {
    return v;
  }
}

/// The first `count` elements at p (fewer than a vector holds), the other lanes zero: one
/// masked load on AVX-512 for float and double (no lane past count is read), else through a
/// zeroed buffer.
template <class Arch, class S>
xsimd::batch<compute_t<S>, Arch> load_partial(const S* p, std::size_t count) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f> && std::is_same<S, float>::value) {
    return vec(_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p));
  } else if constexpr (is_arch<Arch, xsimd::avx512f> && std::is_same<S, double>::value) {
    return vec(_mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p));
  } else
#endif
  {
    alignas(64) compute_t<S> values[vec::size] = {};
    for (std::size_t i = 0; i < count; ++i) values[i] = to_compute(p[i]);
    return vec::load_aligned(values);
  }
}

/// The first `count` lanes of v (fewer than a vector holds) into p, rounded to S (see
/// load_partial).
template <class Arch, class S>
void store_partial(S* p, const xsimd::batch<compute_t<S>, Arch>& v, std::size_t count) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
#if XSIMD_WITH_AVX512F
  if constexpr (is_arch<Arch, xsimd::avx512f> && std::is_same<S, float>::value) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
  } else if constexpr (is_arch<Arch, xsimd::avx512f> && std::is_same<S, double>::value) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v);
  } else
#endif
  {
    alignas(64) compute_t<S> values[vec::size];
    v.store_aligned(values);
    for (std::size_t i = 0; i < count; ++i) p[i] = from_compute<S>(values[i]);
  }
}

}  // namespace
}  // namespace bnorm::kernels
