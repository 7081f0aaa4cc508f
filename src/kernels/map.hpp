// Map kernels: every element from its channel's coefficients, y = (x − center)·scale + shift,
// over planes or interleaved rows, with ordinary or streaming stores. The data is of a storage
// type S, loaded and stored through the storage layer (storage.hpp) and computed in
// T = compute_t<S>, the type of the coefficients. Part of the kernels compiled once per ISA:
// include only from kernels_impl.hpp.
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

/// (x − center)·scale + shift, computed as shift − (center − x)·scale: x then comes second in
/// the subtraction, where x86 takes a memory operand, so its load folds into it (one
/// instruction less a vector). The same bits, since rounding is symmetric in sign; only a zero
/// can change sign, where x is the center and shift is −0.
template <class Arch, class T>
xsimd::batch<T, Arch> normalize(const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
                                const xsimd::batch<T, Arch>& scale,
                                const xsimd::batch<T, Arch>& shift) noexcept {
  return fnmadd(center - x, scale, shift);
}

/// x − center for a channel with prescale h (see kernels::coefficients): x·h − center where
/// h < 1 (the center is the mean times h), (x − center)·h where h > 1, x − center where h = 1.
/// One expression for the three: (x·min(h, 1) − center)·max(h, 1).
template <class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> prescaled_deviation(
    const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
    const xsimd::batch<T, Arch>& prescale) noexcept {
  const xsimd::batch<T, Arch> one(T(1));
  return fms(x, at_most(prescale, one), center) * at_least(prescale, one);
}

/// The three forms of y = (x − center)·scale + shift: with every prescale 1 and every center
/// +0 (two coefficient streams), with every prescale 1 (three), and the general one of extreme
/// channels (four: see prescaled_deviation). Each drops only operations that change no bit.
enum class form { uncentered, centered, prescaled };

template <form Form, class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> normalize_as(
    const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& center,
    const xsimd::batch<T, Arch>& scale, const xsimd::batch<T, Arch>& shift,
    const xsimd::batch<T, Arch>& prescale) noexcept {
  if (Form == form::uncentered) return fmadd(x, scale, shift);
  if (Form == form::centered) return normalize(x, center, scale, shift);
  return fmadd(prescaled_deviation(x, center, prescale), scale, shift);
}

// What a map kernel writes: the normalized value through an epilogue (see kernels::epilogue).
// out.finish(y, v) is the vector to store at y, and out.finish_partial(y, v, count) the same
// for a vector of which only the first `count` lanes are stored. add+ReLU reads its residual at y's
// place in the residual tensor: before anything is stored there (dst may be the residual).
// out.fetch(y, bytes) fetches the residual's line `bytes` past y's place (see run_fetch);
// without a residual it does nothing.
// A kernel that loops over vectors works on its own copy of the output and of the closure
// that computes: through a reference, the bounds and coefficients might be overwritten by y's
// stores (may_alias intrinsics), and every vector reloaded them. The kernel makes the copies
// from references rather than taking its arguments by value: clang's AddressSanitizer without
// its fake stack misaligns 64-byte arguments passed by value (LLVM issue 91565), and an AVX-512
// vector in one faults.

/// The plain normalization.
template <class Arch, class S>
struct identity_output {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  vec finish(const S*, const vec& v) const noexcept { return v; }
  vec finish_partial(const S*, const vec& v, std::size_t) const noexcept { return v; }
  void fetch(const S*, std::size_t) const noexcept {}
};

/// ReLU, clamp(lo, hi), or ReLU of the sum with a residual tensor. A NaN stays NaN, as
/// PyTorch's relu and clamp give it.
template <epilogue_kind Kind, class Arch, class S>
struct activation_output {
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  vec lo, hi;
  std::uintptr_t residual_offset;  // bytes from an element of dst to the residual's (mod 2^64)

  activation_output(const epilogue<T>& post, const S* dst, const S* residual) noexcept
      : lo(Kind == epilogue_kind::clamp ? post.lo : T(0)),
        hi(post.hi),
        residual_offset(reinterpret_cast<std::uintptr_t>(residual) -
                        reinterpret_cast<std::uintptr_t>(dst)) {}

  const S* residual_at(const S* y) const noexcept {
    return reinterpret_cast<const S*>(reinterpret_cast<std::uintptr_t>(y) + residual_offset);
  }
  vec activate(const vec& v) const noexcept {
    const vec floored = at_least(v, lo);
    return Kind == epilogue_kind::clamp ? at_most(floored, hi) : floored;
  }
  void fetch(const S* y, std::size_t bytes) const noexcept {
    if constexpr (Kind == epilogue_kind::add_relu) fetch_line(residual_at(y), bytes);
  }
  vec finish(const S* y, const vec& v) const noexcept {
    if constexpr (Kind == epilogue_kind::add_relu) {
      return activate(v + load_elements<Arch>(residual_at(y)));
    } else {
      return activate(v);
    }
  }
  vec finish_partial(const S* y, const vec& v, std::size_t count) const noexcept {
    if constexpr (Kind == epilogue_kind::add_relu) {
      return activate(v + load_partial<Arch>(residual_at(y), count));
    } else {
      return activate(v);
    }
  }
};

/// Calls body(out) with the output of the epilogue: the map kernels are instantiated once
/// per kind, the plain one exactly as without epilogues.
template <class Arch, class S, class Body>
void with_output(const epilogue<compute_t<S>>& post, const S* dst, const S* residual,
                 const Body& body) noexcept {
  switch (post.kind) {
    case epilogue_kind::identity: body(identity_output<Arch, S>()); break;
    case epilogue_kind::relu:
      body(activation_output<epilogue_kind::relu, Arch, S>(post, dst, dst));
      break;
    case epilogue_kind::clamp:
      body(activation_output<epilogue_kind::clamp, Arch, S>(post, dst, dst));
      break;
    case epilogue_kind::add_relu:
      body(activation_output<epilogue_kind::add_relu, Arch, S>(post, dst, residual));
      break;
  }
}

/// Runs `count` (< one vector) elements through the vector code (load_partial, store_partial),
/// so every element of a tensor is rounded the same way, whatever its position.
template <class Arch, class S, class Compute, class Out>
void normalize_partial(const S* src, S* dst, std::size_t count, const Compute& compute,
                       const Out& out) noexcept {
  store_partial<Arch>(dst, out.finish_partial(dst, compute(load_partial<Arch>(src, count)), count),
                      count);
}

/// Bytes past the last boundary of a vector's worth of elements.
template <class Arch, class S>
std::size_t misalignment(const S* p) noexcept {
  constexpr std::size_t bytes = xsimd::batch<compute_t<S>, Arch>::size * sizeof(S);
  return reinterpret_cast<std::uintptr_t>(p) % bytes;
}

/// y[j] for j in [begin, end) with ordinary stores; compute(j, x) gives the vector at j.
template <class Arch, class S, class Compute, class Out>
void store_run(const S* x, S* y, std::size_t begin, std::size_t end, const Compute& compute_in,
               const Out& out_in) noexcept {
  const Compute compute = compute_in;  // copies: see the output's note above
  const Out out = out_in;
  using vec = xsimd::batch<compute_t<S>, Arch>;
  constexpr std::size_t lanes = vec::size;
  std::size_t j = begin;
  for (; j + lanes <= end; j += lanes) {
    store_elements<Arch>(y + j, out.finish(y + j, compute(j, load_elements<Arch>(x + j))));
  }
  if (j < end) {
    normalize_partial<Arch>(
        x + j, y + j, end - j, [&](const vec& v) { return compute(j, v); }, out);
  }
}

/// How a run of n elements at dst splits for streaming stores: the whole cache lines of
/// [lead, body_end) streamed, [0, lead) and [body_end, n) (the partial lines at either end)
/// stored as usual. An ordinary store into a line that streaming stores are filling makes the
/// core flush the line and read it back (docs/design.md), so the ordinary parts end on line
/// boundaries. A run without a whole line streams nothing (lead = body_end = n).
template <class S>
struct streamed_lines {
  std::size_t lead = 0;
  std::size_t body_end = 0;

  streamed_lines(const S* dst, std::size_t n) noexcept : lead(n), body_end(n) {
    constexpr std::size_t line = 64 / sizeof(S);
    const std::size_t into_line = reinterpret_cast<std::uintptr_t>(dst) % 64 / sizeof(S);
    const std::size_t head = (line - into_line) % line;
    if (head + line > n) return;
    lead = head;
    body_end = head + (n - head) / line * line;
  }
};

/// y[begin, end) with ordinary stores: whole vectors from begin, the last overlapping the one
/// before when the length is not a multiple of the lanes (computed, with its residual, before
/// anything is stored, so in place it still reads x); shorter than a vector, as store_run. On
/// short planes (14×14) a partial last vector through store_run's path cost as much as the
/// plane's whole vectors.
template <class Arch, class S, class Compute, class Out>
void store_run_overlapped(const S* x, S* y, std::size_t begin, std::size_t end,
                          const Compute& compute, const Out& out) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  constexpr std::size_t lanes = vec::size;
  if (end - begin < lanes) {
    store_run<Arch>(x, y, begin, end, compute, out);
    return;
  }
  const std::size_t last = end - lanes;
  const vec tail = out.finish(y + last, compute(last, load_elements<Arch>(x + last)));
  store_run<Arch>(x, y, begin, begin + (last - begin + lanes - 1) / lanes * lanes, compute, out);
  store_elements<Arch>(y + last, tail);
}

/// What a streamed run fetches as it goes, in the fused planes (a channel's planes are runs
/// C·spatial elements apart, at each of which the hardware prefetcher starts anew):
/// - the residual of add+ReLU, which comes from memory where x comes from cache: element i's
///   line `within` bytes past i until i reaches `next_at`, then `into_next` bytes past i, in
///   the run read next (`within` 0: not at all);
/// - x's line `next_block` bytes past element i's (0: not at all): the same element of the
///   next fused block, whose statistics then read it from cache while this block's output
///   streams out.
struct run_fetch {
  std::size_t next_at = 0;
  std::size_t within = 0;
  std::size_t into_next = 0;
  std::size_t next_block = 0;
};

/// The run_fetch of plane p of a channel of `block` (the residual block.read_ahead_bytes on, no
/// farther than a plane, the run read next being plane p + 1, after the last one the next
/// channel's first; the next block's x where block.fetch_next_block).
template <class S>
run_fetch plane_fetch(const plane_block& block, std::size_t p) noexcept {
  run_fetch fetch;
  fetch.next_block = block.fetch_next_block ? block.channels * block.len * sizeof(S) : 0;
  const std::size_t distance = std::min(block.len, block.read_ahead_bytes / sizeof(S));
  if (distance == 0) return fetch;
  // Elements from this plane's start to the next run's (unsigned: the next channel's first
  // plane lies below this one, and the offset wraps around as the address it moves).
  const std::size_t next =
      p + 1 < block.planes ? block.stride : block.len - (block.planes - 1) * block.stride;
  fetch.next_at = block.len - distance;
  fetch.within = distance * sizeof(S);
  fetch.into_next = (next - block.len + distance) * sizeof(S);
  return fetch;
}

/// y[0, n) with streaming stores for the whole cache lines that streamed_lines picks and
/// ordinary ones for the rest, fetching lines as `fetch` says. y must be aligned to its
/// element.
template <class Arch, class S, class Compute, class Out>
void stream_run(const S* x, S* y, std::size_t n, const Compute& compute_in, const Out& out_in,
                const run_fetch& fetch = {}) noexcept {
  const Compute compute = compute_in;  // copies: see the output's note above
  const Out out = out_in;
  using vec = xsimd::batch<compute_t<S>, Arch>;
  constexpr std::size_t lanes = vec::size;
  constexpr std::size_t line = 64 / sizeof(S);
  const streamed_lines<S> span(y, n);
  if (span.lead > 0) store_run_overlapped<Arch>(x, y, 0, span.lead, compute, out);
  const run_fetch ahead = fetch;
  for (std::size_t i = span.lead; i < span.body_end; i += line) {  // a line a step
    if (ahead.within != 0) out.fetch(y + i, i < ahead.next_at ? ahead.within : ahead.into_next);
    if (ahead.next_block != 0) fetch_line(x + i, ahead.next_block);
    vec v[line / lanes];
#pragma GCC unroll 4
    for (std::size_t k = 0; k < line / lanes; ++k) {
      v[k] = out.finish(y + i + k * lanes,
                        compute(i + k * lanes, load_elements<Arch>(x + i + k * lanes)));
    }
    put_vectors<true>(y + i, v);
  }
  if (span.body_end < n) store_run_overlapped<Arch>(x, y, span.body_end, n, compute, out);
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

/// The vectors of a plane before its last one, [0, last) (the last, at `last`, overlaps them
/// where the plane is not a whole number of vectors and is stored apart), Long ? four at a time,
/// then two : two at a time, then one: put_pair(i, at(i), at(i + Lanes)) for each pair (see
/// store_element_pair), put(i, at(i)) for the one. A step computes its vectors before it stores
/// any, so in place each reads x before it is overwritten.
template <std::size_t Lanes, bool Long, class At, class Put, class PutPair>
[[gnu::always_inline]] inline void plane_vectors(std::size_t last, const At& at, const Put& put,
                                                 const PutPair& put_pair) {
  std::size_t i = 0;
  if constexpr (Long) {
    for (; i + 3 * Lanes < last; i += 4 * Lanes) {
      const auto v0 = at(i), v1 = at(i + Lanes), v2 = at(i + 2 * Lanes), v3 = at(i + 3 * Lanes);
      put_pair(i, v0, v1);
      put_pair(i + 2 * Lanes, v2, v3);
    }
  }
  for (; i + Lanes < last; i += 2 * Lanes) {
    const auto v0 = at(i), v1 = at(i + Lanes);
    put_pair(i, v0, v1);
  }
  if (i < last) put(i, at(i));
}

/// with(std::bool_constant<Long>) for planes whose vectors before the last go four at a time (a
/// quarter of the loop's overhead) from eight on; shorter ones (7×7) two at a time, their loop
/// then the shortest (four at a time took 4 instructions more a 49-value plane).
template <std::size_t Lanes, class With>
[[gnu::always_inline]] inline void by_plane_length(std::size_t last, const With& with) {
  if (last >= 8 * Lanes) {
    with(std::true_type());
  } else {
    with(std::false_type());
  }
}

/// One channel's planes of `block` (block.planes runs of block.len values, block.stride apart)
/// through compute(x vector); streamed, fetching ahead as plane_fetch says.
template <class Arch, class S, class Compute, class Out>
void normalize_planes(const S* src, S* dst, const plane_block& block, bool stream,
                      const Compute& compute_in, const Out& out_in) noexcept {
  const Compute compute = compute_in;  // copies: see the output's note above
  const Out out = out_in;
  const std::size_t len = block.len, planes = block.planes, stride = block.stride;
  using vec = xsimd::batch<compute_t<S>, Arch>;
  constexpr std::size_t lanes = vec::size;
  for (std::size_t p = 0; p < planes; ++p) {
    const S* x = src + p * stride;
    S* y = dst + p * stride;
    if (stream) {
      stream_run<Arch>(
          x, y, len, [compute](std::size_t, const vec& v) { return compute(v); }, out,
          plane_fetch<S>(block, p));
      continue;
    }
    if (len < lanes) {
      normalize_partial<Arch>(x, y, len, compute, out);
      continue;
    }
    // The last vector overlaps the one before it when len is not a multiple of the lanes.
    // It is computed (with its residual) before anything is stored, so in place it still
    // reads x, and stored last.
    const std::size_t last = len - lanes;
    const vec tail = out.finish(y + last, compute(load_elements<Arch>(x + last)));
    by_plane_length<lanes>(last, [&](auto is_long) {
      plane_vectors<lanes, decltype(is_long)::value>(
          last,
          [&](std::size_t i) { return out.finish(y + i, compute(load_elements<Arch>(x + i))); },
          [&](std::size_t i, const vec& v) { store_elements<Arch>(y + i, v); },
          [&](std::size_t i, const vec& v0, const vec& v1) {
            store_element_pair<Arch>(y + i, v0, v1);
          });
    });
    store_elements<Arch>(y + last, tail);
  }
}

/// plane_normalize's channels [ch0, ch1) of `block`, in one form.
template <form Form, class Arch, class S, class Out>
[[gnu::always_inline]] inline void normalize_channel_planes(
    const S* src, S* dst, const plane_block& block, std::size_t ch0, std::size_t ch1,
    const coefficients<const compute_t<S>>& k, std::size_t first, bool stream,
    const Out& out) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  for (std::size_t ch = ch0; ch < ch1; ++ch) {
    const auto run = [&](const auto& compute) {
      normalize_planes<Arch>(src + ch * block.len, dst + ch * block.len, block, stream, compute,
                             out);
    };
    // Each closure holds only the coefficients its form reads: normalize_planes copies it.
    const std::size_t at = first + ch;
    const vec a(k.scale[at]), b(k.shift[at]);
    if constexpr (Form == form::uncentered) {
      run([a, b](const vec& v) { return fmadd(v, a, b); });
    } else if constexpr (Form == form::centered) {
      const vec c(k.center[at]);
      run([c, a, b](const vec& v) { return normalize(v, c, a, b); });
    } else {
      const vec c(k.center[at]), h(k.prescale[at]);
      run([c, a, b, h](const vec& v) { return normalize_as<form::prescaled>(v, c, a, b, h); });
    }
  }
}

/// Channels of one plane each, back to back from src (N = 1), every prescale 1 and plane at
/// least a vector long: what normalize_channel_planes does for them, in a loop that keeps the
/// coefficient pointers and the plane's bounds in registers (on 7×7 planes, the general loop's
/// reloads and spills cost as much as the plane's own vectors). The last vector overlaps the
/// one before it where len is not a multiple of the lanes: computed (with its residual) before
/// anything is stored, so in place it still reads x, and stored last.
template <form Form, class Arch, class S, class Out, class T = compute_t<S>>
void normalize_contiguous_planes(const S* src, S* dst, std::size_t len, std::size_t channels,
                                 const T* center, const T* scale, const T* shift,
                                 const Out& out_in) noexcept {
  const Out out = out_in;  // a copy: see the output's note above
  static_assert(Form != form::prescaled, "extreme channels take normalize_channel_planes");
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t last = len - lanes;
  by_plane_length<lanes>(last, [&](auto is_long) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const S* x = src + ch * len;
      S* y = dst + ch * len;
      const vec c(Form == form::centered ? center[ch] : T(0)), a(scale[ch]), b(shift[ch]);
      const auto compute = [&](const vec& v) {
        return normalize_as<Form, Arch>(v, c, a, b, vec(T(1)));
      };
      const vec tail = out.finish(y + last, compute(load_elements<Arch>(x + last)));
      plane_vectors<lanes, decltype(is_long)::value>(
          last,
          [&](std::size_t i) { return out.finish(y + i, compute(load_elements<Arch>(x + i))); },
          [&](std::size_t i, const vec& v) { store_elements<Arch>(y + i, v); },
          [&](std::size_t i, const vec& v0, const vec& v1) {
            store_element_pair<Arch>(y + i, v0, v1);
          });
      store_elements<Arch>(y + last, tail);
    }
  });
}

/// The coefficients of channels [ch, ch + count) from an array indexed by channel, a vector's
/// worth (count = lanes) or fewer, the other lanes zero (the last channel group, nothing read
/// past the array).
template <class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> group_coefficients(const T* coefficients,
                                                                       std::size_t ch,
                                                                       std::size_t count) noexcept {
  using vec = xsimd::batch<T, Arch>;
  return count == vec::size ? vec::load_unaligned(coefficients + ch)
                            : load_partial<Arch>(coefficients + ch, count);
}

/// Channels of one plane each, back to back from src (N = 1), every prescale 1, in channel
/// groups (in_channel_groups, on an ISA with lane_channels): `lanes` channels are exactly len
/// whole vectors, and each vector takes its lanes' coefficients by permuting the group's
/// coefficient vectors. A 7×7 plane then costs 49/16 vectors, where a plane at a time
/// costs four, the last overlapping the one before, with loads and stores that straddle cache
/// lines. The channels after the last whole group are a shorter run, its last vector partial.
/// Every value goes through the operations of normalize_contiguous_planes with its channel's
/// coefficients: the same bits. In place, each vector is loaded before it is stored at its place.
template <form Form, class Arch, class S, class Out, class T = compute_t<S>>
void normalize_channel_groups(const S* src, S* dst, std::size_t len, std::size_t channels,
                              const T* center, const T* scale, const T* shift,
                              const Out& out_in) noexcept {
  static_assert(Form != form::prescaled, "extreme channels take normalize_channel_planes");
  const Out out = out_in;  // a copy: see the output's note above
  using vec = xsimd::batch<T, Arch>;
  using channels_of = lane_channels<Arch>;
  constexpr std::size_t lanes = vec::size;
  const auto group = [&](std::size_t ch, const vec& c, const vec& a, const vec& b,
                         std::size_t values) {
    const S* x = src + ch * len;
    S* y = dst + ch * len;
    channels_of lane_channel(len);
    const auto compute = [&](const vec& v, const auto& index) {
      return normalize_as<Form, Arch>(v, Form == form::centered ? channels_of::of(c, index) : c,
                                      channels_of::of(a, index), channels_of::of(b, index),
                                      vec(T(1)));
    };
    std::size_t i = 0;
    for (; i + lanes <= values; i += lanes) {
      const auto index = lane_channel.next();
      store_elements<Arch>(y + i, out.finish(y + i, compute(load_elements<Arch>(x + i), index)));
    }
    if (i < values) {
      const auto index = lane_channel.next();
      normalize_partial<Arch>(
          x + i, y + i, values - i, [&](const vec& v) { return compute(v, index); }, out);
    }
  };
  for (std::size_t ch = 0; ch < channels; ch += lanes) {
    const std::size_t count = std::min(lanes, channels - ch);
    group(ch, group_coefficients<Arch>(center, ch, count),
          group_coefficients<Arch>(scale, ch, count), group_coefficients<Arch>(shift, ch, count),
          count * len);
  }
}

/// plane_normalize through one epilogue's output (inlined, as interleaved_normalize_to).
template <class Arch, class S, class Out>
[[gnu::always_inline]] inline void plane_normalize_to(const S* src, S* dst,
                                                      const plane_block& block,
                                                      const coefficients<const compute_t<S>>& k,
                                                      std::size_t first, bool prescaled,
                                                      bool stream, const Out& out) noexcept {
  using T = compute_t<S>;
  const std::size_t len = block.len, planes = block.planes, channels = block.channels;
  if (prescaled && !all_one<Arch>(k.prescale + first, channels)) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      if (k.prescale[first + ch] != T(1)) {
        normalize_channel_planes<form::prescaled, Arch>(src, dst, block, ch, ch + 1, k, first,
                                                        stream, out);
      } else {
        normalize_channel_planes<form::centered, Arch>(src, dst, block, ch, ch + 1, k, first,
                                                       stream, out);
      }
    }
    return;
  }
  // Every prescale 1: uncentered where every center is +0, else centered.
  const T* center = k.center + first;
  const auto in_form = [&](auto form_constant) {
    constexpr form Form = decltype(form_constant)::value;
    constexpr bool has_groups = lane_channels<Arch>::exists && std::is_same<S, float>::value;
    if constexpr (has_groups) {
      if (!stream && in_channel_groups(has_groups, planes, len, xsimd::batch<T, Arch>::size)) {
        normalize_channel_groups<Form, Arch>(src, dst, len, channels, center, k.scale + first,
                                             k.shift + first, out);
        return;
      }
    }
    if (planes == 1 && !stream && len >= xsimd::batch<T, Arch>::size) {
      normalize_contiguous_planes<Form, Arch>(src, dst, len, channels, center, k.scale + first,
                                              k.shift + first, out);
    } else {
      normalize_channel_planes<Form, Arch>(src, dst, block, 0, channels, k, first, stream, out);
    }
  };
  if (all_positive_zero<Arch>(center, channels)) {
    in_form(std::integral_constant<form, form::uncentered>());
  } else {
    in_form(std::integral_constant<form, form::centered>());
  }
}

/// Channel k of `channels` has its first plane at src + k·len (dst likewise) and the
/// coefficients k.center[first + k], ... Where every center is +0 it is left out (same bits,
/// one operation less per vector). The coefficient arrays come with the slot they start at,
/// not as a view made for the call: a view's pointers stored just before the call and loaded
/// two at once in it stall store-to-load forwarding, at every call.
template <class Arch, class S>
void plane_normalize(const S* src, S* dst, const S* residual, const plane_block& block,
                     const normalize_params<compute_t<S>>& params, std::size_t first) noexcept {
  const coefficients<const compute_t<S>>& k = params.coeffs;
  const epilogue<compute_t<S>>& post = params.post;
  const bool prescaled = params.prescaled;
  const bool stream = params.stream && element_aligned(dst);
  if (post.kind == epilogue_kind::identity) {  // inline, without the dispatch's closure
    plane_normalize_to<Arch>(src, dst, block, k, first, prescaled, stream,
                             identity_output<Arch, S>());
  } else {
    with_output<Arch>(post, dst, residual, [&](const auto& out) {
      plane_normalize_to<Arch>(src, dst, block, k, first, prescaled, stream, out);
    });
  }
  if (stream) stream_fence<Arch>();
}

/// Rows of exactly `Vectors` whole vectors: the coefficients stay in registers for all the
/// rows (small C, whose period the planner makes four vectors long), instead of three loads
/// from L1 per vector of data.
template <std::size_t Vectors, class Arch, class S, class Out, class T = compute_t<S>>
void narrow_rows_normalize(const S* src, S* dst, std::size_t rows, std::size_t stride,
                           const T* center, const T* scale, const T* shift, bool stream,
                           const Out& output_in) noexcept {
  const Out output = output_in;  // a copy: see the output's note above
  // (Prescale 1 in every slot: the caller checked.)
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec c[Vectors], a[Vectors], b[Vectors];
  for (std::size_t v = 0; v < Vectors; ++v) {
    c[v] = vec::load_unaligned(center + v * lanes);
    a[v] = vec::load_unaligned(scale + v * lanes);
    b[v] = vec::load_unaligned(shift + v * lanes);
  }
  // One loop for each kind of store: GCC 12 tested `stream` at every row.
  const auto all_rows = [&](auto streamed) {
    for (std::size_t r = 0; r < rows; ++r) {
      const S* x = src + r * stride;
      S* y = dst + r * stride;
      vec out[Vectors];
      for (std::size_t v = 0; v < Vectors; ++v) {
        out[v] = output.finish(y + v * lanes,
                               normalize(load_elements<Arch>(x + v * lanes), c[v], a[v], b[v]));
      }
      if constexpr (decltype(streamed)::value) {
        // Each vector streamed apart: a row is aligned to a vector, not to a pair's line.
        for (std::size_t v = 0; v < Vectors; ++v) stream_elements<Arch>(y + v * lanes, out[v]);
      } else {
        put_vectors<false>(y, out);
      }
    }
  };
  if (stream) {
    all_rows(std::true_type());
  } else {
    all_rows(std::false_type());
  }
}

/// `Rows` rows, `stride` apart, of `Vectors` whole vectors from x (y likewise): the coefficients
/// loaded once for all the rows, and every row's values loaded before any is stored. The
/// caller takes two vectors (a whole 64-byte line on AVX2) per row and step: the next step's
/// loads then start on lines the step's stores did not touch, faster and in fewer instructions
/// than one vector per step (docs/design.md). Always inlined: as a call, each step paid a call
/// and a vzeroupper.
template <std::size_t Rows, std::size_t Vectors, form Form, class Arch, bool Stream = false,
          class S, class Out, class T = compute_t<S>>
[[gnu::always_inline]] inline void normalize_rows(const S* x, S* y, std::size_t stride,
                                                  const coefficients<const T>& k, std::size_t j,
                                                  const Out& out) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec c[Vectors], a[Vectors], b[Vectors], h[Vectors], v[Rows][Vectors];
  for (std::size_t g = 0; g < Vectors; ++g) {
    const std::size_t at = j + g * lanes;
    if (Form != form::uncentered) c[g] = vec::load_unaligned(k.center + at);
    if (Form == form::prescaled) h[g] = vec::load_unaligned(k.prescale + at);
    a[g] = vec::load_unaligned(k.scale + at);
    b[g] = vec::load_unaligned(k.shift + at);
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    for (std::size_t g = 0; g < Vectors; ++g) {
      v[r][g] = load_elements<Arch>(x + r * stride + g * lanes);
    }
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    if constexpr (Vectors == 2) {
      S* at = y + r * stride;
      put_element_pair<Stream, Arch>(
          at, out.finish(at, normalize_as<Form, Arch>(v[r][0], c[0], a[0], b[0], h[0])),
          out.finish(at + lanes, normalize_as<Form, Arch>(v[r][1], c[1], a[1], b[1], h[1])));
      continue;
    }
    for (std::size_t g = 0; g < Vectors; ++g) {
      S* at = y + r * stride + g * lanes;
      put_elements<Stream, Arch>(
          at, out.finish(at, normalize_as<Form, Arch>(v[r][g], c[g], a[g], b[g], h[g])));
    }
  }
}

/// The whole vectors of `Together` rows from x (y likewise), two vectors a step, streamed with
/// `Stream`. Out of line, its few values in registers: inlined into the walk over the rows, GCC
/// kept coefficient pointers on the stack and reloaded them at every step.
template <std::size_t Together, form Form, class Arch, bool Stream, class S, class Out,
          class T = compute_t<S>>
[[gnu::noinline]] void normalize_row_group(const S* x, S* y, std::size_t whole, std::size_t stride,
                                           const T* center, const T* scale, const T* shift,
                                           const T* prescale, const Out& out_in) noexcept {
  const Out out = out_in;  // a copy: see the output's note above
  constexpr std::size_t lanes = xsimd::batch<T, Arch>::size;
  const coefficients<const T> at(center, scale, shift, prescale);
  std::size_t j = 0;
  for (; j + 2 * lanes <= whole; j += 2 * lanes) {
    normalize_rows<Together, 2, Form, Arch, Stream>(x + j, y + j, stride, at, j, out);
  }
  if (j < whole) normalize_rows<Together, 1, Form, Arch, Stream>(x + j, y + j, stride, at, j, out);
}

/// Rows [0, rows − rows % Together) of wide_rows_normalize, Together at a time; with `Stream`,
/// streamed (rows of whole cache lines from an aligned dst).
template <std::size_t Together, form Form, class Arch, bool Stream = false, class S, class Compute,
          class Out>
std::size_t normalize_row_groups(const S* src, S* dst, std::size_t rows, std::size_t width,
                                 std::size_t stride, const coefficients<const compute_t<S>>& k,
                                 std::size_t first, const Compute& compute_in,
                                 const Out& out_in) noexcept {
  const Compute compute = compute_in;  // copies: see the output's note above
  const Out out = out_in;
  constexpr std::size_t lanes = xsimd::batch<compute_t<S>, Arch>::size;
  constexpr std::size_t together = Together;
  const std::size_t whole = width - width % lanes;
  // A copy of the pointers whose address never leaves this function: the vector stores
  // (may_alias intrinsics) would otherwise make every step reload them from k.
  const coefficients<const compute_t<S>> at = k + first;
  std::size_t r = 0;
  for (; r + together <= rows; r += together) {
    const S* x = src + r * stride;
    S* y = dst + r * stride;
    normalize_row_group<together, Form, Arch, Stream>(x, y, whole, stride, at.center, at.scale,
                                                      at.shift, at.prescale, out);
    for (std::size_t i = 0; whole < width && i < together; ++i) {
      store_run<Arch>(x + i * stride, y + i * stride, whole, width, compute, out);
    }
  }
  return r;
}

/// interleaved_normalize for rows wider than the narrow kernels take, in one of the forms. Out
/// of line: inlined into the dispatch on an activation, GCC laid its loops out with a jump
/// back a step (docs/design.md, "Measurements behind the choices").
template <form Form, class Arch, class S, class Out>
[[gnu::noinline]] void wide_rows_normalize(const S* src, S* dst, std::size_t rows,
                                           std::size_t width, std::size_t stride,
                                           const coefficients<const compute_t<S>>& k,
                                           std::size_t first, bool stream,
                                           const Out& out) noexcept {
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  // The coefficient arrays are padded by one vector past the width: the loads for a partial
  // last vector stay in bounds.
  const T* center = k.center + first;
  const T* scale = k.scale + first;
  const T* shift = k.shift + first;
  const T* prescale = k.prescale + first;
  const auto compute = [center, scale, shift, prescale](std::size_t j, const vec& v) {
    return normalize_as<Form, Arch>(
        v, Form == form::uncentered ? vec(T(0)) : vec::load_unaligned(center + j),
        vec::load_unaligned(scale + j), vec::load_unaligned(shift + j),
        Form == form::prescaled ? vec::load_unaligned(prescale + j) : vec(T(1)));
  };
  // Four rows per coefficient load, all four loaded before any is stored: a column block's row
  // r + 1 then never loads from the 4 KiB offsets where row r's stores are still pending (a
  // 4 KiB stride puts them there). Whole rows (width == stride) of 1 KiB or more of float32 and
  // float64 storage in the uncentered form (inference's two coefficient streams) go one row at
  // a time, one contiguous run, as fast as a plain y = a·x + b pass; the centered form and
  // half-precision storage ran faster four rows per load, cached or streamed (docs/design.md,
  // "Coefficient pointers in registers (stop 62)"). Streamed, four rows need rows of whole
  // cache lines from an aligned dst (then every vector is whole: no ordinary store lands in a
  // streamed line); other rows go one at a time (stream_run).
  const bool one_row = width == stride && width * sizeof(S) >= 1024 && Form == form::uncentered &&
                       std::is_same<S, T>::value;
  const bool whole_lines = rows_of_whole_lines(dst, width, stride);
  std::size_t r = 0;
  if (!stream) {
    r = one_row ? normalize_row_groups<1, Form, Arch>(src, dst, rows, width, stride, k, first,
                                                      compute, out)
                : normalize_row_groups<4, Form, Arch>(src, dst, rows, width, stride, k, first,
                                                      compute, out);
  } else if (!one_row && whole_lines) {
    r = normalize_row_groups<4, Form, Arch, true>(src, dst, rows, width, stride, k, first, compute,
                                                  out);
  }
  for (; r < rows; ++r) {
    if (stream) {
      stream_run<Arch>(src + r * stride, dst + r * stride, width, compute, out);
    } else {
      store_run<Arch>(src + r * stride, dst + r * stride, 0, width, compute, out);
    }
  }
}

/// interleaved_normalize through one epilogue's output. Inlined into the dispatch on the
/// epilogue: a call more showed on tiny tensors.
template <class Arch, class S, class Out>
[[gnu::always_inline]] inline void interleaved_normalize_to(
    const S* src, S* dst, std::size_t rows, std::size_t width, std::size_t stride,
    const coefficients<const compute_t<S>>& k, std::size_t first, bool prescaled, bool stream,
    const Out& out) noexcept {
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const T* center = k.center + first;
  const T* scale = k.scale + first;
  const T* shift = k.shift + first;
  // Extreme channels (see coefficients) take the general form, on the wide-row path.
  prescaled = prescaled && !all_one<Arch>(k.prescale + first, width);
  // Narrow rows stream whole vectors, so every row must start aligned: an aligned dst and a
  // stride of whole vectors. Other rows stream their whole cache lines, wherever they start.
  const bool aligned_rows = misalignment<Arch>(dst) == 0 && stride % lanes == 0;
  if (!prescaled && width % lanes == 0 && width <= 4 * lanes && (aligned_rows || !stream)) {
    const auto narrow = [&](auto vectors) {
      narrow_rows_normalize<decltype(vectors)::value, Arch>(src, dst, rows, stride, center, scale,
                                                            shift, stream, out);
    };
    switch (width / lanes) {
      case 1: narrow(std::integral_constant<std::size_t, 1>()); break;
      case 2: narrow(std::integral_constant<std::size_t, 2>()); break;
      case 3: narrow(std::integral_constant<std::size_t, 3>()); break;
      case 4: narrow(std::integral_constant<std::size_t, 4>()); break;
      default: break;  // width 0: nothing to do
    }
    if (stream) stream_fence<Arch>();
    return;
  }
  stream = stream && element_aligned(dst);
  // A block whose centers are all +0 (see store_coefficients) reads two coefficient streams,
  // not three: the third costs about 10% from L3 (docs/design.md).
  if (prescaled) {
    wide_rows_normalize<form::prescaled, Arch>(src, dst, rows, width, stride, k, first, stream,
                                               out);
  } else if (all_positive_zero<Arch>(center, width)) {
    wide_rows_normalize<form::uncentered, Arch>(src, dst, rows, width, stride, k, first, stream,
                                                out);
  } else {
    wide_rows_normalize<form::centered, Arch>(src, dst, rows, width, stride, k, first, stream, out);
  }
  if (stream) stream_fence<Arch>();
}

template <class Arch, class S>
void interleaved_normalize(const S* src, S* dst, const S* residual, const row_block& block,
                           const normalize_params<compute_t<S>>& params,
                           std::size_t first) noexcept {
  const std::size_t rows = block.rows, width = block.width, stride = block.stride;
  const coefficients<const compute_t<S>>& k = params.coeffs;
  const epilogue<compute_t<S>>& post = params.post;
  const bool prescaled = params.prescaled, stream = params.stream;
  if (post.kind == epilogue_kind::identity) {  // inline, without the dispatch's closure
    interleaved_normalize_to<Arch>(src, dst, rows, width, stride, k, first, prescaled, stream,
                                   identity_output<Arch, S>());
    return;
  }
  with_output<Arch>(post, dst, residual, [&](const auto& out) {
    interleaved_normalize_to<Arch>(src, dst, rows, width, stride, k, first, prescaled, stream, out);
  });
}

}  // namespace
}  // namespace bnorm::kernels
