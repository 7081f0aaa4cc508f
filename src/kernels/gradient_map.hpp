// The backward's map kernels: dx from x, dy and per-channel (per-slot) coefficients,
// dx = (dy − dy_center)·dy_scale + (x − center)·x_scale + shift (with prescales for extreme
// channels: see gradient_coefficients), over planes or interleaved rows, with ordinary or streaming
// stores. Two inputs and one output at the same offsets; dx may be dy (in place): every vector of x
// and dy is loaded before the dx vector at its place is stored. Part of the kernels compiled once
// per ISA: include only from kernels_impl.hpp.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "kernels/kernels.hpp"
#include "kernels/map.hpp"
#include "kernels/storage.hpp"
#include "kernels/xsimd_compat.hpp"

namespace bnorm::kernels {
namespace {

/// (dy − dy_center)·dy_scale + ((x − center)·x_scale + shift), as inner − (dy_center − dy)·
/// dy_scale with the inner term shift − (center − x)·x_scale, so that the loads of x and dy fold
/// into the subtractions (see map.hpp's normalize: the same bits but for the sign of a zero).
template <class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> gradient_of(
    const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& dy,
    const xsimd::batch<T, Arch>& center, const xsimd::batch<T, Arch>& dy_center,
    const xsimd::batch<T, Arch>& dy_scale, const xsimd::batch<T, Arch>& x_scale,
    const xsimd::batch<T, Arch>& shift) noexcept {
  return fnmadd(dy_center - dy, dy_scale, fnmadd(center - x, x_scale, shift));
}

/// gradient_of for extreme channels: ((dy − dy_center)·min(g, 1)·dy_scale + ((x·min(h, 1) −
/// center)·max(h, 1)·x_scale + shift))·max(g, 1), h the prescale and g the dy prescale
/// (kernels::channel_gradients divides the terms by a g > 1). With h = g = 1 the same bits but
/// for the sign of a zero.
template <class Arch, class T>
[[gnu::always_inline]] inline xsimd::batch<T, Arch> prescaled_gradient_of(
    const xsimd::batch<T, Arch>& x, const xsimd::batch<T, Arch>& dy,
    const xsimd::batch<T, Arch>& center, const xsimd::batch<T, Arch>& dy_center,
    const xsimd::batch<T, Arch>& dy_scale, const xsimd::batch<T, Arch>& x_scale,
    const xsimd::batch<T, Arch>& shift, const xsimd::batch<T, Arch>& prescale,
    const xsimd::batch<T, Arch>& dy_prescale) noexcept {
  const xsimd::batch<T, Arch> one(T(1));
  return fnmadd((dy_center - dy) * at_most(dy_prescale, one), dy_scale,
                fmadd(prescaled_deviation(x, center, prescale), x_scale, shift)) *
         at_least(dy_prescale, one);
}

/// Whether some of the n channels (slots) from `first` has a prescale other than 1.
template <class Arch, class T>
bool any_prescaled(const gradient_coefficients<const T>& k, std::size_t first,
                   std::size_t n) noexcept {
  return !all_one<Arch>(k.prescale + first, n) || !all_one<Arch>(k.dy_prescale + first, n);
}

/// dx[j] for j in [begin, end) with ordinary stores, f(j, x vector, dy vector) giving the vector
/// at j; the last values, fewer than a vector, as a partial vector (load_partial, store_partial:
/// every element is rounded the same way, whatever its position). On a copy of f, made here
/// (see map.hpp's note on outputs): a store through dx could alias a closure held by reference.
template <class Arch, class S, class F>
void gradient_store_run(const S* x, const S* dy, S* dx, std::size_t begin, std::size_t end,
                        const F& f_in) noexcept {
  const F f = f_in;
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  std::size_t j = begin;
  for (; j + 4 * lanes <= end; j += 4 * lanes) {  // four at a time: a quarter of the overhead
    const vec v0 = f(j, load_elements<Arch>(x + j), load_elements<Arch>(dy + j));
    const vec v1 =
        f(j + lanes, load_elements<Arch>(x + j + lanes), load_elements<Arch>(dy + j + lanes));
    const vec v2 = f(j + 2 * lanes, load_elements<Arch>(x + j + 2 * lanes),
                     load_elements<Arch>(dy + j + 2 * lanes));
    const vec v3 = f(j + 3 * lanes, load_elements<Arch>(x + j + 3 * lanes),
                     load_elements<Arch>(dy + j + 3 * lanes));
    store_element_pair<Arch>(dx + j, v0, v1);
    store_element_pair<Arch>(dx + j + 2 * lanes, v2, v3);
  }
  for (; j + 2 * lanes <= end; j += 2 * lanes) {
    const vec v0 = f(j, load_elements<Arch>(x + j), load_elements<Arch>(dy + j));
    const vec v1 =
        f(j + lanes, load_elements<Arch>(x + j + lanes), load_elements<Arch>(dy + j + lanes));
    store_element_pair<Arch>(dx + j, v0, v1);
  }
  for (; j + lanes <= end; j += lanes) {
    store_elements<Arch>(dx + j, f(j, load_elements<Arch>(x + j), load_elements<Arch>(dy + j)));
  }
  if (j < end) {
    const std::size_t count = end - j;
    store_partial<Arch>(
        dx + j, f(j, load_partial<Arch>(x + j, count), load_partial<Arch>(dy + j, count)), count);
  }
}

/// dx[0, n): streaming stores for the whole cache lines that streamed_lines picks, ordinary ones
/// for the rest (see stream_run); ordinary stores throughout without `stream`. Streamed, the
/// lines of x and dy `next_block` bytes on are fetched as it goes (0: not at all): the next
/// fused block's (see run_fetch::next_block), or a row's read ahead.
template <class Arch, class S, class F>
void gradient_run(const S* x, const S* dy, S* dx, std::size_t n, bool stream, const F& f_in,
                  std::size_t next_block = 0) noexcept {
  const F f = f_in;  // a copy, as gradient_store_run's
  using vec = xsimd::batch<compute_t<S>, Arch>;
  constexpr std::size_t lanes = vec::size;
  constexpr std::size_t line = 64 / sizeof(S);
  if (!stream) {
    gradient_store_run<Arch>(x, dy, dx, 0, n, f);
    return;
  }
  // The ordinary parts as stream_run's (store_run_overlapped).
  const auto ordinary = [&](std::size_t begin, std::size_t end) {
    if (end - begin < lanes) {
      gradient_store_run<Arch>(x, dy, dx, begin, end, f);
      return;
    }
    const std::size_t last = end - lanes;
    const vec tail = f(last, load_elements<Arch>(x + last), load_elements<Arch>(dy + last));
    gradient_store_run<Arch>(x, dy, dx, begin, begin + (last - begin + lanes - 1) / lanes * lanes,
                             f);
    store_elements<Arch>(dx + last, tail);
  };
  const streamed_lines<S> span(dx, n);
  if (span.lead > 0) ordinary(0, span.lead);
  for (std::size_t i = span.lead; i < span.body_end; i += line) {  // a line a step
    if (next_block != 0) {
      fetch_line(x + i, next_block);
      fetch_line(dy + i, next_block);
    }
    vec v[line / lanes];
#pragma GCC unroll 4
    for (std::size_t k = 0; k < line / lanes; ++k) {
      const std::size_t at = i + k * lanes;
      v[k] = f(at, load_elements<Arch>(x + at), load_elements<Arch>(dy + at));
    }
    put_vectors<true>(dx + i, v);
  }
  if (span.body_end < n) ordinary(span.body_end, n);
}

/// Channels of one plane each, back to back (N = 1), each plane at least a vector long and
/// short (see plane_gradient), with ordinary stores: plane_gradient's loop for them, the
/// coefficient pointers and the plane's bounds in registers (see normalize_contiguous_planes).
template <class Arch, class S, class T = compute_t<S>>
void gradient_contiguous_planes(const S* src, const S* diff_dst, S* diff_src, std::size_t len,
                                std::size_t channels, const T* center, const T* dy_center,
                                const T* dy_scale, const T* x_scale, const T* shift) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t last = len - lanes;
  by_plane_length<lanes>(last, [&](auto is_long) {
    for (std::size_t ch = 0; ch < channels; ++ch) {
      const S* x = src + ch * len;
      const S* g = diff_dst + ch * len;
      S* y = diff_src + ch * len;
      const vec c(center[ch]), m(dy_center[ch]), a(dy_scale[ch]), b(x_scale[ch]), e(shift[ch]);
      const auto f = [&](std::size_t j) {
        return gradient_of(load_elements<Arch>(x + j), load_elements<Arch>(g + j), c, m, a, b, e);
      };
      const vec tail = f(last);  // as in plane_gradient: before anything is stored
      plane_vectors<lanes, decltype(is_long)::value>(
          last, f, [&](std::size_t i, const vec& v) { store_elements<Arch>(y + i, v); },
          [&](std::size_t i, const vec& v0, const vec& v1) {
            store_element_pair<Arch>(y + i, v0, v1);
          });
      store_elements<Arch>(y + last, tail);
    }
  });
}

/// Channels of one plane each, back to back (N = 1), in channel groups (in_channel_groups, on
/// an ISA with lane_channels), with ordinary stores, as map.hpp's normalize_channel_groups (the
/// same bits as gradient_contiguous_planes: each value through gradient_of with its channel's
/// coefficients). In place, each vector of x and dy is loaded before dx is stored at its place.
template <class Arch, class S, class T = compute_t<S>>
void gradient_channel_groups(const S* src, const S* diff_dst, S* diff_src, std::size_t len,
                             std::size_t channels, const T* center, const T* dy_center,
                             const T* dy_scale, const T* x_scale, const T* shift) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using channels_of = lane_channels<Arch>;
  constexpr std::size_t lanes = vec::size;
  const auto group = [&](std::size_t ch, const vec& c, const vec& m, const vec& a, const vec& b,
                         const vec& e, std::size_t values) {
    const S* x = src + ch * len;
    const S* g = diff_dst + ch * len;
    S* y = diff_src + ch * len;
    channels_of lane_channel(len);
    const auto compute = [&](const vec& xv, const vec& gv, const auto& index) {
      return gradient_of(xv, gv, channels_of::of(c, index), channels_of::of(m, index),
                         channels_of::of(a, index), channels_of::of(b, index),
                         channels_of::of(e, index));
    };
    std::size_t i = 0;
    for (; i + lanes <= values; i += lanes) {
      const auto index = lane_channel.next();
      store_elements<Arch>(y + i,
                           compute(load_elements<Arch>(x + i), load_elements<Arch>(g + i), index));
    }
    if (i < values) {
      const auto index = lane_channel.next();
      store_partial<Arch>(y + i,
                          compute(load_partial<Arch>(x + i, values - i),
                                  load_partial<Arch>(g + i, values - i), index),
                          values - i);
    }
  };
  for (std::size_t ch = 0; ch < channels; ch += lanes) {
    const std::size_t count = std::min(lanes, channels - ch);
    group(ch, group_coefficients<Arch>(center, ch, count),
          group_coefficients<Arch>(dy_center, ch, count),
          group_coefficients<Arch>(dy_scale, ch, count),
          group_coefficients<Arch>(x_scale, ch, count), group_coefficients<Arch>(shift, ch, count),
          count * len);
  }
}

/// `planes` runs of len values, `stride` apart, through f(j, x vector, dy vector): one channel
/// of plane_gradient, streamed fetching x and dy `next_block` bytes on (see gradient_run). Its
/// arguments by value: a store through y could alias them by reference.
template <class Arch, class S, class F>
[[gnu::always_inline]] inline void gradient_planes(const S* src, const S* diff_dst, S* diff_src,
                                                   std::size_t len, std::size_t planes,
                                                   std::size_t stride, bool stream, F f,
                                                   std::size_t next_block = 0) noexcept {
  using vec = xsimd::batch<compute_t<S>, Arch>;
  for (std::size_t p = 0; p < planes; ++p) {
    const S* x = src + p * stride;
    const S* g = diff_dst + p * stride;
    S* y = diff_src + p * stride;
    if (stream || len < vec::size) {
      gradient_run<Arch>(x, g, y, len, stream, f, next_block);
      continue;
    }
    // The last vector overlaps the one before it when len is not a multiple of the lanes
    // (short planes, 7×7): computed before anything is stored, so in place it still reads
    // dy, and stored last.
    const std::size_t last = len - vec::size;
    const vec tail = f(last, load_elements<Arch>(x + last), load_elements<Arch>(g + last));
    gradient_store_run<Arch>(x, g, y, 0, (last + vec::size - 1) / vec::size * vec::size, f);
    store_elements<Arch>(y + last, tail);
  }
}

/// gradient_planes for an extreme channel, its coefficients at `at`. Not inlined: in
/// plane_gradient, a second instance of the planes' loop made GCC 12 compile the first one
/// worse (`bash scripts/instruction_counts.sh`, docs/design.md).
template <class Arch, class S, class T = compute_t<S>>
[[gnu::noinline]] void prescaled_channel_gradient(const S* src, const S* diff_dst, S* diff_src,
                                                  std::size_t len, std::size_t planes,
                                                  std::size_t stride, bool stream,
                                                  const gradient_coefficients<const T>& k,
                                                  std::size_t at) noexcept {
  using vec = xsimd::batch<T, Arch>;
  const vec c(k.center[at]), m(k.dy_center[at]), a(k.dy_scale[at]), b(k.x_scale[at]),
      e(k.shift[at]), h(k.prescale[at]), dy_h(k.dy_prescale[at]);
  gradient_planes<Arch>(src, diff_dst, diff_src, len, planes, stride, stream,
                        [c, m, a, b, e, h, dy_h](std::size_t, const vec& x, const vec& g) {
                          return prescaled_gradient_of(x, g, c, m, a, b, e, h, dy_h);
                        });
}

/// Channel k of `channels` has its first plane at offset k·len and coefficients at first + k.
template <class Arch, class S>
void plane_gradient(const S* src, const S* diff_dst, S* diff_src, const plane_block& block,
                    const gradient_params<compute_t<S>>& params, std::size_t first) noexcept {
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  const std::size_t len = block.len, planes = block.planes, stride = block.stride;
  const std::size_t channels = block.channels;
  const gradient_coefficients<const T>& k = params.coeffs;
  const bool stream = params.stream && element_aligned(diff_src);
  const bool extreme = params.prescaled && any_prescaled<Arch>(k, first, channels);
  // The next fused block's x and dy, the same element of each (run_fetch::next_block).
  const std::size_t next_block = block.fetch_next_block ? channels * len * sizeof(S) : 0;
  constexpr bool has_groups = lane_channels<Arch>::exists && std::is_same<S, float>::value;
  if constexpr (has_groups) {
    if (!extreme && !stream && in_channel_groups(has_groups, planes, len, vec::size)) {
      gradient_channel_groups<Arch>(src, diff_dst, diff_src, len, channels, k.center + first,
                                    k.dy_center + first, k.dy_scale + first, k.x_scale + first,
                                    k.shift + first);
      return;
    }
  }
  // Planes of 1,024 values or more keep the general loop: GCC 12 gives the contiguous one two
  // register copies a step there (docs/design.md).
  if (!extreme && planes == 1 && !stream && len >= vec::size && len < 1024) {
    gradient_contiguous_planes<Arch>(src, diff_dst, diff_src, len, channels, k.center + first,
                                     k.dy_center + first, k.dy_scale + first, k.x_scale + first,
                                     k.shift + first);
    return;
  }
  for (std::size_t ch = 0; ch < channels; ++ch) {
    const std::size_t at = first + ch, offset = ch * len;
    if (extreme && (k.prescale[at] != T(1) || k.dy_prescale[at] != T(1))) {
      prescaled_channel_gradient<Arch>(src + offset, diff_dst + offset, diff_src + offset, len,
                                       planes, stride, stream, k, at);
      continue;
    }
    const vec c(k.center[at]), m(k.dy_center[at]), a(k.dy_scale[at]), b(k.x_scale[at]),
        e(k.shift[at]);
    gradient_planes<Arch>(
        src + offset, diff_dst + offset, diff_src + offset, len, planes, stride, stream,
        [c, m, a, b, e](std::size_t, const vec& x, const vec& g) {
          return gradient_of(x, g, c, m, a, b, e);
        },
        next_block);
  }
  if (stream) stream_fence<Arch>();
}

/// `Rows` rows, `stride` apart, of `Vectors` vectors from slot j: the coefficients loaded once
/// for the rows, every row's x and dy loaded before any dx is stored (in place, dx = dy, stays
/// right; and a row's loads never wait behind the row before's stores at 4 KiB offsets). With
/// `Stream`, streamed: rows of whole cache lines from an aligned dx.
template <std::size_t Rows, std::size_t Vectors, class Arch, bool Stream, class S,
          class T = compute_t<S>>
[[gnu::always_inline]] inline void gradient_rows(const S* x, const S* g, S* y, std::size_t stride,
                                                 const T* center, const T* dy_center,
                                                 const T* dy_scale, const T* x_scale,
                                                 const T* shift, std::size_t j) noexcept {
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  vec c[Vectors], m[Vectors], a[Vectors], b[Vectors], e[Vectors], xv[Rows][Vectors],
      gv[Rows][Vectors];
  for (std::size_t v = 0; v < Vectors; ++v) {
    const std::size_t at = j + v * lanes;
    c[v] = vec::load_unaligned(center + at);
    m[v] = vec::load_unaligned(dy_center + at);
    a[v] = vec::load_unaligned(dy_scale + at);
    b[v] = vec::load_unaligned(x_scale + at);
    e[v] = vec::load_unaligned(shift + at);
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    for (std::size_t v = 0; v < Vectors; ++v) {
      xv[r][v] = load_elements<Arch>(x + r * stride + j + v * lanes);
      gv[r][v] = load_elements<Arch>(g + r * stride + j + v * lanes);
    }
  }
  for (std::size_t r = 0; r < Rows; ++r) {
    S* at = y + r * stride + j;
    if constexpr (Vectors == 2) {
      put_element_pair<Stream, Arch>(at,
                                     gradient_of(xv[r][0], gv[r][0], c[0], m[0], a[0], b[0], e[0]),
                                     gradient_of(xv[r][1], gv[r][1], c[1], m[1], a[1], b[1], e[1]));
    } else {
      put_elements<Stream, Arch>(at, gradient_of(xv[r][0], gv[r][0], c[0], m[0], a[0], b[0], e[0]));
    }
  }
}

/// The whole vectors of `Together` rows from x, dy (dx likewise), streamed with `Stream`: two
/// vectors a step where the registers hold their coefficients and the rows' values (AVX-512's
/// 32), one below. Streamed, each line of x and dy is fetched `read_ahead` bytes ahead once, at
/// the step where it starts; in cache, nothing is fetched. Out of line, its pointers and bounds
/// loaded once (see map.hpp's normalize_row_group).
template <std::size_t Together, class Arch, bool Stream, class S, class T = compute_t<S>>
[[gnu::noinline]] void gradient_row_group(const S* x, const S* g, S* y, std::size_t whole,
                                          std::size_t stride, const T* center, const T* dy_center,
                                          const T* dy_scale, const T* x_scale, const T* shift,
                                          std::size_t read_ahead) noexcept {
  constexpr std::size_t lanes = xsimd::batch<T, Arch>::size;
  constexpr std::size_t step = vector_registers<Arch> >= 32 ? 2 : 1;
  constexpr std::size_t line = 64 / sizeof(S);
  // The lines that start in slots [from, to) of each row.
  const auto fetch = [&](std::size_t from, std::size_t to) {
    if constexpr (Stream) {
      for (std::size_t at = (from + line - 1) / line * line; read_ahead != 0 && at < to;
           at += line) {
        for (std::size_t r = 0; r < Together; ++r) {
          fetch_line(x + r * stride + at, read_ahead);
          fetch_line(g + r * stride + at, read_ahead);
        }
      }
    }
  };
  std::size_t j = 0;
  for (; j + step * lanes <= whole; j += step * lanes) {
    fetch(j, j + step * lanes);
    gradient_rows<Together, step, Arch, Stream>(x, g, y, stride, center, dy_center, dy_scale,
                                                x_scale, shift, j);
  }
  if (j < whole) {
    fetch(j, whole);
    gradient_rows<Together, 1, Arch, Stream>(x, g, y, stride, center, dy_center, dy_scale, x_scale,
                                             shift, j);
  }
}

/// Slot j of every row takes the coefficients at first + j (padded by one vector past the
/// period, so that a partial last vector loads in bounds). Rows go four at a time, each
/// coefficient vector loaded once for the four: narrow rows (few channels) would otherwise
/// load five coefficients from L1 for every vector of data. In cache, rows of
/// two_row_gradient_slots or more go two at a time: four rows' x, dy and dx are twelve streams
/// at once, which took longer than the coefficient loads they saved. Streamed, they go one at a
/// time (see below). Streamed, the four-row walk and the one-row walk over rows of
/// two_row_gradient_slots or more fetch x's and dy's lines block.read_ahead_bytes ahead (0: not
/// at all); narrower rows a row at a time do not (where dx is not aligned, the prescaled form,
/// the last rows): a row at a time, the fetches made them slower (docs/design.md, "The backward
/// over rows from memory (stop 53)").
template <class Arch, class S>
void interleaved_gradient(const S* src, const S* diff_dst, S* diff_src, const row_block& block,
                          const gradient_params<compute_t<S>>& params, std::size_t first) noexcept {
  using T = compute_t<S>;
  using vec = xsimd::batch<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const std::size_t rows = block.rows, width = block.width, stride = block.stride;
  const gradient_coefficients<const T>& k = params.coeffs;
  const bool stream = params.stream && element_aligned(diff_src);
  const std::size_t one_row_read_ahead =
      width >= two_row_gradient_slots ? block.read_ahead_bytes : 0;
  // Copies of the pointers whose address never leaves this function (see normalize_row_groups).
  const T* center = k.center + first;
  const T* dy_center = k.dy_center + first;
  const T* dy_scale = k.dy_scale + first;
  const T* x_scale = k.x_scale + first;
  const T* shift = k.shift + first;
  if (params.prescaled && any_prescaled<Arch>(k, first, width)) {
    // Extreme slots: the general form for the block, a row at a time.
    const T* prescale = k.prescale + first;
    const T* dy_prescale = k.dy_prescale + first;
    const auto f = [center, dy_center, dy_scale, x_scale, shift, prescale, dy_prescale](
                       std::size_t j, const vec& x, const vec& g) {
      return prescaled_gradient_of(
          x, g, vec::load_unaligned(center + j), vec::load_unaligned(dy_center + j),
          vec::load_unaligned(dy_scale + j), vec::load_unaligned(x_scale + j),
          vec::load_unaligned(shift + j), vec::load_unaligned(prescale + j),
          vec::load_unaligned(dy_prescale + j));
    };
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t offset = r * stride;
      gradient_run<Arch>(src + offset, diff_dst + offset, diff_src + offset, width, stream, f,
                         one_row_read_ahead);
    }
    if (stream) stream_fence<Arch>();
    return;
  }
  const auto f = [center, dy_center, dy_scale, x_scale, shift](std::size_t j, const vec& x,
                                                               const vec& g) {
    return gradient_of(x, g, vec::load_unaligned(center + j), vec::load_unaligned(dy_center + j),
                       vec::load_unaligned(dy_scale + j), vec::load_unaligned(x_scale + j),
                       vec::load_unaligned(shift + j));
  };
  std::size_t r = 0;
  // Rows `together` at a time, while `together` remain; with `streamed`, streamed.
  const auto rows_together = [&](auto together_constant, auto streamed) {
    constexpr std::size_t together = decltype(together_constant)::value;
    const std::size_t whole = width - width % lanes;
    for (; r + together <= rows; r += together) {
      const std::size_t offset = r * stride;
      const S* x = src + offset;
      const S* g = diff_dst + offset;
      S* y = diff_src + offset;
      gradient_row_group<together, Arch, decltype(streamed)::value>(x, g, y, whole, stride, center,
                                                                    dy_center, dy_scale, x_scale,
                                                                    shift, block.read_ahead_bytes);
      for (std::size_t i = 0; whole < width && i < together; ++i) {
        gradient_store_run<Arch>(x + i * stride, g + i * stride, y + i * stride, whole, width, f);
      }
    }
  };
  // Streamed, rows narrower than two_row_gradient_slots go four at a time where every row is
  // whole cache lines from an aligned dx (then every vector is whole: no ordinary store lands
  // in a streamed line). Wider rows, two at a time, took longer on two threads than one at a
  // time (docs/design.md, "The backward's dx rows together, streamed (stop 63)"); they and
  // other rows go one at a time (gradient_run).
  const bool whole_lines = rows_of_whole_lines(diff_src, width, stride);
  if (!stream) {
    if (width >= two_row_gradient_slots) {
      rows_together(std::integral_constant<std::size_t, 2>(), std::false_type());
    } else {
      rows_together(std::integral_constant<std::size_t, 4>(), std::false_type());
    }
  } else if (whole_lines && width < two_row_gradient_slots) {
    rows_together(std::integral_constant<std::size_t, 4>(), std::true_type());
  }
  for (; r < rows; ++r) {
    const std::size_t offset = r * stride;
    gradient_run<Arch>(src + offset, diff_dst + offset, diff_src + offset, width, stream, f,
                       one_row_read_ahead);
  }
  if (stream) stream_fence<Arch>();
}

/// The gradient through a fused activation, from its output y (see mask_bounds): out = dy where
/// y is inside, else 0 (ReLU: lo = 0, nothing above). ReLU's y = +inf (a finite x and a large γ,
/// or a half type's overflow) passes dy, as PyTorch's threshold_backward does. A NaN y passes
/// nothing: the output is NaN there, and its gradient is undefined (threshold_backward, whose
/// test is y <= 0, passes dy). Elementwise over n contiguous values; out may be dy (in place).
template <class Arch, class S, class T = compute_t<S>>
void activation_mask(const S* dy, const S* y, S* out, std::size_t n,
                     const mask_bounds<T>& bounds) noexcept {
  using vec = xsimd::batch<T, Arch>;
  using vec_bool = xsimd::batch_bool<T, Arch>;
  constexpr std::size_t lanes = vec::size;
  const vec low(bounds.lo), high(bounds.hi), zero(T(0));
  const bool no_lower = !bounds.clamps_below, no_upper = !bounds.clamps_above;
  const T lo = bounds.lo, hi = bounds.hi;
  const vec_bool any_low(no_lower), any_high(no_upper);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const vec v = load_elements<Arch>(y + i);
    // NaN compares false either way, and v == v keeps it out where a side is open.
    const vec_bool inside = ((v > low) | (any_low & (v == v))) & ((v < high) | any_high);
    store_elements<Arch>(out + i, xsimd::select(inside, load_elements<Arch>(dy + i), zero));
  }
  for (; i < n; ++i) {
    const T v = to_compute(y[i]);
    const bool inside = (v > lo || (no_lower && v == v)) && (v < hi || no_upper);
    // Through the compute type as the vectors go: a half-type NaN leaves as they leave it.
    out[i] = from_compute<S>(inside ? to_compute(dy[i]) : T(0));
  }
}

}  // namespace
}  // namespace bnorm::kernels
