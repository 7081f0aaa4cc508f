// The generic passes over a partition: every path (training and inference forward, training and
// frozen backward) is a short composition of them. They walk the partition's units and call a
// reduce or a map operation on each piece of memory; the operation (which kernel, on which
// buffers) is the caller's.
//
// A reduce operation adds per-channel (per-slot) pairs of sums over a piece:
//   planes(at, len, planes, stride, channels, c0, sum, sum_sq): `channels` channels from c0, each
//     `planes` runs of `len` elements `stride` apart, the first at element offset `at` + k·len;
//     channel k's sums go to sum[k], sum_sq[k], its center is center[c0 + k].
//   rows(at, rows, width, slot, sum, sum_sq, mode): `rows` rows of `width` slots from element
//     offset `at`, a period apart; the centers and sums from slot `slot` on (started or added
//     to, as kernels::sums_mode says).
// The per-piece helpers are always inlined: on short planes (7×7) a call per block of channels
// shows in the instruction count.
//
// A map operation writes every element of a piece from per-channel (per-slot) coefficients:
//   planes(at, len, planes, stride, channels, first) and rows(at, rows, width, first), where
//     `first` is the coefficient index of the piece's first channel (slot).
#pragma once

#include <algorithm>
#include <cstddef>

#include "partition.hpp"
#include "plan_impl.hpp"

namespace bnorm::detail {

/// Calls run(offset, length) for the contiguous pieces of a run [begin, end) of one channel's
/// N·spatial values in channels-first memory.
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

/// Interleaved traversal, unit u: its rows' whole periods, restricted to its column block, and
/// the partial period that may end the last chunk.
struct interleaved_unit {
  std::size_t chunk;      // row chunk: index of its partial sums
  std::size_t offset;     // first element of its rows
  std::size_t column;     // first slot of its column block
  std::size_t width;      // slots in its column block
  std::size_t periods;    // whole periods in its rows
  std::size_t remainder;  // elements of a last, partial period (column block 0 only)

  interleaved_unit(const partition& p, std::size_t u)
      : interleaved_unit(p, u, p.rows_per_chunk, p.column_blocks, p.block_width) {}

  /// Unit u of a tiling in chunks of rows_per_chunk rows and column blocks of block_width slots.
  interleaved_unit(const partition& p, std::size_t u, std::size_t rows_per_chunk,
                   std::size_t column_blocks, std::size_t block_width) {
    chunk = u / column_blocks;
    column = (u % column_blocks) * block_width;
    width = std::min(block_width, p.period - column);
    const std::size_t row = chunk * rows_per_chunk;
    const std::size_t elements = std::min(rows_per_chunk, p.rows - row) * p.channels;
    offset = row * p.channels;
    periods = elements / p.period;
    remainder = column == 0 ? elements - periods * p.period : 0;
  }
};

/// Rows read per-slot arrays: slot j holds channel j % C. Fills slots [C, period) from the
/// channels' own, and the vector (of the widest ISA) past the period that the last slots' loads
/// read with `padding`. Where period = C (column blocks), only the padding.
template <class T>
void replicate_slots(T* a, std::size_t channels, std::size_t period, T padding) {
  for (std::size_t j = channels; j < period; ++j) a[j] = a[j - channels];
  std::fill(a + period, a + period + 64 / sizeof(T), padding);
}

/// Channels [c0, c1) whole, in one operation: their planes (channels-first), or their slots
/// over all the rows (channels-last, where slot j is channel j: the fused column blocks).
/// Their sums go to sum[c0...], sum_sq[c0...], started.
template <class Reduce>
[[gnu::always_inline]] inline void reduce_channels(const partition& p, const Reduce& reduce,
                                                   std::size_t c0, std::size_t c1, double* sum,
                                                   double* sum_sq) {
  if (p.kind == traversal::planes) {
    std::fill(sum + c0, sum + c1, 0.0);
    std::fill(sum_sq + c0, sum_sq + c1, 0.0);
    reduce.planes(c0 * p.spatial, p.spatial, p.batch, p.channels * p.spatial, c1 - c0, c0, sum + c0,
                  sum_sq + c0);
  } else {
    reduce.rows(c0, p.rows, c1 - c0, c0, sum + c0, sum_sq + c0, kernels::sums_mode::start);
  }
}

/// Channels [c0, c1) whole, in one operation (see reduce_channels); channel c0's coefficients
/// at index `first`.
template <class Map>
[[gnu::always_inline]] inline void map_channels(const partition& p, const Map& map, std::size_t c0,
                                                std::size_t c1, std::size_t first) {
  if (p.kind == traversal::planes) {
    map.planes(c0 * p.spatial, p.spatial, p.batch, p.channels * p.spatial, c1 - c0, first);
  } else {
    map.rows(c0, p.rows, c1 - c0, first);
  }
}

/// The reduce pass: per-unit partial sums into fixed slots, unit u's own (planes: slot u;
/// rows: its chunk's period of slots, restricted to its column block), so what a unit adds
/// never depends on the thread that runs it. merge_partials adds them in a fixed order.
template <class Reduce>
void reduce_pass(const plan_impl& plan, const Reduce& reduce, double* sum, double* sum_sq) {
  const partition& p = plan.part;
  if (p.kind == traversal::planes) {
    plan.threads.for_each(p.units, p.units_per_task, p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t u = b; u < e; ++u) {
        const std::size_t c = u / p.chunks_per_channel;
        sum[u] = sum_sq[u] = 0.0;
        if (p.chunks_per_channel == 1) {
          reduce.planes(c * p.spatial, p.spatial, p.batch, p.channels * p.spatial, 1, c, &sum[u],
                        &sum_sq[u]);
          continue;
        }
        const std::size_t begin = (u % p.chunks_per_channel) * p.chunk_len;
        const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
        for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
          reduce.planes(at, len, 1, 0, 1, c, &sum[u], &sum_sq[u]);
        });
      }
    });
    return;
  }
  plan.threads.for_each(p.units, 1, p.serial, [&](std::size_t b, std::size_t e) {
    for (std::size_t u = b; u < e; ++u) {
      const interleaved_unit w(p, u);
      double* s = sum + w.chunk * p.period;
      double* q = sum_sq + w.chunk * p.period;
      reduce.rows(w.offset + w.column, w.periods, w.width, w.column, s + w.column, q + w.column,
                  kernels::sums_mode::start);
      if (w.remainder) {
        reduce.rows(w.offset + w.periods * p.period, 1, w.remainder, 0, s, q,
                    kernels::sums_mode::add);  // the last period's first slots, started above
      }
    }
  });
}

/// The reduce pass's partials of channels [c0, c1) added in a fixed order (unit by unit, then
/// slot c, c + C, ... within a unit) into total_sum[c], total_sum_sq[c].
inline void merge_partials(const partition& p, std::size_t c0, std::size_t c1, const double* sum,
                           const double* sum_sq, double* total_sum, double* total_sum_sq) {
  if (p.kind == traversal::planes) {
    for (std::size_t c = c0; c < c1; ++c) {
      double s = 0.0, q = 0.0;
      for (std::size_t j = 0; j < p.chunks_per_channel; ++j) {
        s += sum[c * p.chunks_per_channel + j];
        q += sum_sq[c * p.chunks_per_channel + j];
      }
      total_sum[c] = s;
      total_sum_sq[c] = q;
    }
    return;
  }
  std::fill(total_sum + c0, total_sum + c1, 0.0);
  std::fill(total_sum_sq + c0, total_sum_sq + c1, 0.0);
  for (std::size_t i = 0; i < p.row_chunks; ++i) {
    for (std::size_t slot = 0; slot < p.period; slot += p.channels) {
      const double* s = sum + i * p.period + slot;
      const double* q = sum_sq + i * p.period + slot;
      for (std::size_t c = c0; c < c1; ++c) {
        total_sum[c] += s[c];
        total_sum_sq[c] += q[c];
      }
    }
  }
}

/// Calls body(c0, c1) over blocks of `block` channels (the partition's channels_per_*_task),
/// in parallel when C is large: per-channel work between the passes.
template <class Body>
void for_each_channel_block(const plan_impl& plan, std::size_t block, const Body& body) {
  const partition& p = plan.part;
  const std::size_t blocks = (p.channels + block - 1) / block;
  plan.threads.for_each(blocks, 1, p.serial, [&](std::size_t b, std::size_t e) {
    body(b * block, std::min(e * block, p.channels));
  });
}

/// Units a task of fused_pass takes at least: a task of planes, one column block of rows.
inline std::size_t fused_grain(const partition& p) noexcept {
  return p.kind == traversal::planes ? p.units_per_task : 1;
}

/// Whether fused_pass runs on the calling thread alone, where it cannot throw.
inline bool fused_pass_runs_inline(const plan_impl& plan) noexcept {
  return plan.threads.runs_inline(plan.part.units, fused_grain(plan.part), plan.part.serial);
}

/// The fused schedules' one parallel pass: body(c0, c1) on each block of whole channels that
/// fits in a core's cache, which reduces, finalizes and maps the block back to back (its data
/// still in cache for the second read). Planes: groups of up to fused_group channels within a
/// task; rows: the column blocks. finish(c0, c1) then takes each task's channels once more, on
/// the same thread, while their per-channel results are in its cache.
template <class Body, class Finish>
void fused_pass(const plan_impl& plan, const Body& body, const Finish& finish) {
  const partition& p = plan.part;
  if (p.kind == traversal::planes) {
    plan.threads.for_each(p.units, fused_grain(p), p.serial, [&](std::size_t b, std::size_t e) {
      for (std::size_t c0 = b; c0 < e; c0 += p.fused_group) {
        body(c0, std::min(c0 + p.fused_group, e));
      }
      finish(b, e);
    });
    return;
  }
  plan.threads.for_each(p.units, fused_grain(p), p.serial, [&](std::size_t b, std::size_t e) {
    for (std::size_t u = b; u < e; ++u) {
      const interleaved_unit w(p, u);
      body(w.column, w.column + w.width);
      finish(w.column, w.column + w.width);
    }
  });
}
template <class Body>
void fused_pass(const plan_impl& plan, const Body& body) {
  fused_pass(plan, body, [](std::size_t, std::size_t) {});
}

/// `units` interleaved units, unit u being unit_at(u): rows of slots with per-slot
/// coefficients.
template <class UnitAt, class Map>
void map_row_units(const plan_impl& plan, std::size_t units, const UnitAt& unit_at, const Map& map,
                   unit_placement placement = unit_placement::balanced) {
  const partition& p = plan.part;
  plan.threads.for_each(
      units, 1, p.serial,
      [&](std::size_t b, std::size_t e) {
        for (std::size_t u = b; u < e; ++u) {
          const interleaved_unit w = unit_at(u);
          map.rows(w.offset + w.column, w.periods, w.width, w.column);
          if (w.remainder) map.rows(w.offset + w.periods * p.period, 1, w.remainder, 0);
        }
      },
      placement);
}

/// Planes unit u (see partition: one channel's run); its channel's coefficients at `first`.
template <class Map>
[[gnu::always_inline]] inline void map_unit(const partition& p, const Map& map, std::size_t u,
                                            std::size_t first) {
  const std::size_t c = u / p.chunks_per_channel;
  if (p.chunks_per_channel == 1) {
    map_channels(p, map, c, c + 1, first);
    return;
  }
  const std::size_t begin = (u % p.chunks_per_channel) * p.chunk_len;
  const std::size_t end = std::min(begin + p.chunk_len, p.per_channel);
  for_each_plane_piece(p, c, begin, end, [&](std::size_t at, std::size_t len) {
    map.planes(at, len, 1, 0, 1, first);
  });
}

/// The map pass over channels-last rows: chunks of whole rows (see partition).
template <class Map>
void map_row_chunks(const plan_impl& plan, const Map& map,
                    unit_placement placement = unit_placement::balanced) {
  const partition& p = plan.part;
  map_row_units(
      plan, p.map_row_chunk_count,
      [&p](std::size_t u) { return interleaved_unit(p, u, p.map_rows_per_chunk, 1, p.period); },
      map, placement);
}

/// The map pass, its coefficients laid out per channel (planes) or per slot (rows). Planes go
/// over the training partition's units; of N > 1 short channels, in memory order
/// (planes_per_unit): channel-major units would jump C·spatial elements at every plane. Rows go
/// in chunks of whole rows, as inference's: the reduce's column blocks, walked again, gave the
/// hardware prefetcher runs of one block's width (docs/design.md).
template <class Map>
void map_pass(const plan_impl& plan, const Map& map,
              unit_placement placement = unit_placement::balanced) {
  const partition& p = plan.part;
  if (p.kind == traversal::planes && p.planes_per_unit > 0) {
    plan.threads.for_each(
        p.plane_units, 1, p.serial,
        [&](std::size_t b, std::size_t e) {
          const std::size_t planes = p.batch * p.channels;
          std::size_t q = b * p.planes_per_unit;
          const std::size_t end = std::min(e * p.planes_per_unit, planes);
          while (q < end) {  // one operation per run of consecutive channels
            const std::size_t c = q % p.channels;
            const std::size_t run = std::min(p.channels - c, end - q);
            map.planes(q * p.spatial, p.spatial, 1, 0, run, c);
            q += run;
          }
        },
        placement);
  } else if (p.kind == traversal::planes) {
    plan.threads.for_each(
        p.units, p.units_per_task, p.serial,
        [&](std::size_t b, std::size_t e) {
          for (std::size_t u = b; u < e; ++u) map_unit(p, map, u, u / p.chunks_per_channel);
        },
        placement);
  } else {
    map_row_chunks(plan, map, placement);
  }
}

}  // namespace bnorm::detail
