#include "partition.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <numeric>

#include "commit_journal.hpp"
#include "kernels/kernels.hpp"
#include "validation.hpp"

namespace bnorm::detail {
namespace {

// A unit of about 128 KiB streams for ~5 µs per core: long enough to amortize a oneTBB task
// (~1 µs), short enough to give two cores 16 units each on a 4 MiB tensor.
constexpr std::size_t unit_bytes = 128 * 1024;
// A channels-first channel up to half of a core's L2 is one unit: training reads it the second
// time from there, and the backward reads x and dy a second time mostly from there (the L2 may
// not hold both whole, but what it holds is read from it instead of from memory).
constexpr std::size_t fused_channel_l2_fraction = 2;
// A channels-last fused column block (all the rows of a block of channels) up to a quarter: the
// fraction its timings were taken with (docs/design.md); half was not measured.
constexpr std::size_t fused_block_l2_fraction = 4;
// A fused group of channels-first channels (statistics, then normalization) up to an eighth,
// of at most 16 channels, or of more where they fit in fused_group_l1_bytes: a group pays its
// kernels' calls and the set-up of their per-channel loops once, which short planes (7×7, 98
// to 196 bytes a channel) spread thin over 16 channels; their x stays in L1 between its reads.
constexpr std::size_t fused_group_l2_fraction = 8;
constexpr std::size_t fused_group_channels = 16;
constexpr std::size_t fused_group_l1_bytes = 16 * 1024;  // half of a 32 KiB L1 data cache
// The plane kernels take channels a vector of them at a time (the map a float32 vector's lanes,
// the sums and the pivots a float64 vector's), and the channels after a group's last whole
// vector each take a one-channel path: a group of four vectors of channels or more is cut to
// whole vectors of the widest ISA's (64-byte) vectors (docs/design.md, "Fused groups of whole
// vectors; the backward's dx two rows at a time (stop 48)").
constexpr std::size_t widest_vector_bytes = 64;
constexpr std::size_t whole_vector_groups_from = 4;
// Fused column blocks have rows of 2 KiB at least, and there are four of them at least. Two
// cores writing parts of the same 4 KiB pages, row after row, run at a fraction of their speed
// (scripts/page_sharing.cpp shows it); a task of the fused pass takes neighbouring blocks
// (oneTBB splits a range in halves), so that where each core has two blocks or more, most of
// the blocks beside a block are its own core's (docs/design.md has the timings).
constexpr std::size_t min_fused_block_row_bytes = 2048;
constexpr std::size_t min_fused_blocks = 4;
// Training and the backward also fuse four blocks of rows of 1 KiB, or two of 2 KiB (a page
// of each row between them), where their two passes would read x (and dy) twice from a core's
// L2 or the other's: their stores are a third of their traffic or less, and the page sharing
// costs them less there than the second pass does. Narrower blocks, or two of 1 KiB, lost on
// two cores. Inference, all stores, writes whole rows (row chunks, or row tasks for up to
// max_inference_row_task_rows rows of C slots within a core's L2: docs/design.md).
constexpr std::size_t min_narrow_block_row_bytes = 1024;
constexpr std::size_t min_narrow_blocks = 4;
constexpr std::size_t min_few_blocks = 2;
// Up to this many values, training's statistics are direct float64 sums, in one walk over
// memory, instead of pivots, partial sums and their merge, whose fixed costs dominate there.
constexpr std::size_t tiny_elements = 64;
// Below this a pass is done before a worker would wake up.
constexpr std::size_t serial_bytes = 256 * 1024;
// Few rows of many channels whose rows are too narrow for the column blocks above, up to this
// many bytes of input: one block of every channel, so that the backward is one fused pass on
// one core. At 392 KiB ((1,512,14,14) float32, bfloat16 (1,1024,14,14)) that beat two passes
// on two cores; at 1 MiB it lost by 1.5× (docs/design.md, "Row tasks wherever inference takes
// them (stop 49)").
constexpr std::size_t max_whole_tensor_block_bytes = 512 * 1024;
// An interleaved period up to this many elements keeps the per-slot arrays in L1.
constexpr std::size_t max_vector_period = 1024;
// Interleaved partials are two arrays of chunks × period doubles; at least this many periods
// per chunk keep them at most 1/32 of the float32 data they summarize (1/16 of half
// precision's). Fewer chunks, more periods each, summed wide rows faster on the Intel guest but
// split the channels of other shapes into column blocks that ran slower (docs/design.md, "Tried
// and not kept (stop 55)").
constexpr std::size_t min_chunk_periods = 128;
constexpr std::size_t max_interleaved_chunks = 256;
// Interleaved map passes split at least this many row chunks where there are rows enough, so
// that few rows of many channels (7×7, 14×14) still share out evenly between threads.
constexpr std::size_t min_map_chunks = 16;
// A reduce of this many row chunks shares out evenly without column blocks too: whole rows,
// which the hardware prefetchers follow better than a block's runs of each row (docs/design.md).
constexpr std::size_t enough_row_chunks = 16;
constexpr std::size_t finalize_channels_per_task = 512;
// Few rows of many channels: inference in two tasks of whole rows, each working out its own
// copy of the coefficients (see inference_schedule::row_tasks), where the rows are at most
// max_inference_row_task_rows and the tensor fits in a core's L2: the coefficients are then a
// share of the traffic that costs more to send from the core that worked them out to the
// other than to work out again on it. Two: a call of such a tensor takes a few microseconds,
// which more cores would spend waking up and computing the coefficients again (docs/design.md,
// "Small channels-last inference on two threads" and "Row tasks for few rows of many channels
// (stop 45)").
constexpr std::size_t row_tasks_for_inference = 2;
constexpr std::size_t max_inference_row_task_rows = 512;
// Inference's coefficients alone (a square root and a division per channel, in float64 vectors)
// take about a microsecond for this many channels: less than waking a worker, so they are one
// task (docs/design.md).
constexpr std::size_t coefficient_channels_per_task = 4096;
// store_policy::automatic streams the output where its cached lines would push out of the
// last-level cache the input that is read again: from an eighth of the cache for training and
// the backward, which read their input a second time within the call; from a quarter for
// inference on one thread, whose input is read again by the next call or layer at most. On a
// machine shared with other tenants, the share of the last-level cache a call keeps is well
// below its size. Inference on more threads streams from half the cache, where x and y no longer
// fit in it together: below that, two cores writing cached lines outran non-temporal stores,
// which mostly reached the same write rate from one core or two (docs/design.md). Where the
// cache counted is the cores' L2s (a host's L3 not counted: cache_sizes.cpp), more threads keep
// no more of it than one does in its share: x and y then stay cached while they fit in the L2s,
// a quarter of what is counted (docs/design.md, "Inference on two threads of a guest").
enum class output_use { training, inference, parallel_inference };
std::size_t streaming_threshold(const cache_sizes& caches, output_use use) noexcept {
  switch (use) {
    case output_use::training: return caches.last_level_bytes / 8;
    case output_use::inference: return caches.last_level_bytes / 4;
    case output_use::parallel_inference: break;
  }
  return caches.last_level_from_l2s ? caches.last_level_bytes / 4 : caches.last_level_bytes / 2;
}

// Channels-first maps stream plane by plane, and a plane's ragged ends (it starts where the one
// before it ends, mid-line) are stored as usual (kernels::streamed_lines). Short planes thus
// stream little and pay for it: 7×7 planes (196 bytes of float32) ran 2–3 times slower streamed
// than cached in every forward path; 14×14 (784 bytes) gained 5–17% in training and the
// backward but ran inference (its planes in memory order) 1.85 times slower; 1,000-value planes
// gained everywhere (docs/design.md). Planes shorter than these stream nothing.
constexpr std::size_t min_streamed_plane_bytes_reading_twice = 512;
constexpr std::size_t min_streamed_plane_bytes = 1024;

// Where their input comes from memory (a tensor of training's streaming threshold or more, too
// large to stay in the cache from one call to the next), the reduce passes fetch the lines they
// read this far ahead, in bytes of all their tensors together: the guest's hardware prefetcher
// alone left them waiting on memory, and farther ahead, or as far for each of two tensors, was
// slower. Smaller tensors stay in the cache, where the fetches' instructions made training up
// to 17% slower. The backward's planes, summed and then mapped from the cache, do not fetch:
// they ran slower so on two threads (docs/design.md, "Reads ahead (stop 44)").
constexpr std::size_t read_ahead_bytes = 16 * 1024;

// The backward over rows from memory:
// - its map, streaming dx, fetches each line of x and dy row_gradient_read_ahead_bytes ahead,
//   over rows of whole cache lines narrower than kernels::two_row_gradient_slots, of any
//   storage (from an aligned dx they go four at a time: docs/design.md, "The backward's dx rows
//   together, streamed (stop 63)"; the kernel fetches nothing where such rows go one at a
//   time, which dx's alignment decides at the call), and over rows of wide_row_slots or more
//   of float32 or float64, which go one at a time: beside the two tensors, each row reads its
//   coefficient arrays again from the cache, and with the hardware prefetcher alone the map
//   took about half as long again as a pass over the same three tensors; a row at a time over
//   narrower rows, the fetches made it 5–12% slower, and half-precision storage gained nothing
//   ("The backward over rows from memory (stop 53)");
// - its sums over blocks of rows of wide_row_slots or more (float32, float64) walk each
//   block's rows in memory order (kernels::row_block::in_row_order): a group of columns at a
//   time, sixteen rows of x and dy were 32 runs read at once, half as fast as the same bytes
//   read in order. Narrower rows keep the column walk, whose partials stay in registers where
//   the row walk reloads each a few vectors after storing it; the forward's statistics, one
//   tensor, gained nothing.
constexpr std::size_t wide_row_slots = 512;
constexpr std::size_t row_gradient_read_ahead_bytes = 4 * 1024;
static_assert(wide_row_slots == kernels::two_row_gradient_slots,
              "the map's one-row walk fetches from the width where the planner's rule starts");

std::size_t ceil_div(std::size_t a, std::size_t b) {
  return (a + b - 1) / b;
}
std::size_t round_up(std::size_t a, std::size_t b) {
  return ceil_div(a, b) * b;
}

/// Lays the scratch arrays out one after the other, 64-byte aligned. Every size is checked:
/// false when the scratch would not fit in size_t (absurd channel counts).
bool lay_out_scratch(partition& p) {
  scratch_layout& s = p.scratch;
  std::size_t offset = 0;
  bool fits = true;
  const auto bytes_of = [&](std::size_t count, std::size_t size) {
    std::size_t bytes = 0;
    fits = fits && !__builtin_mul_overflow(count, size, &bytes) && bytes <= SIZE_MAX / 2;
    return fits ? bytes : 0;
  };
  const auto take = [&](std::size_t bytes) {
    const std::size_t at = offset;
    fits = fits && !__builtin_add_overflow(offset, round_up(bytes, 64), &offset) &&
           offset <= SIZE_MAX / 2;
    return at;
  };
  const std::size_t pad = 64 / p.value_size;  // one vector of the widest ISA
  s.coeff_stride = round_up((p.kind == traversal::planes ? p.channels : p.period) + pad, pad);
  // The backward's seven arrays, or the forward's four once per row task.
  const std::size_t coeff_arrays =
      std::max<std::size_t>(7, 4 * std::max<std::size_t>(1, p.row_tasks));
  s.coeffs = take(bytes_of(coeff_arrays * s.coeff_stride, p.value_size));
  s.inference_bytes = offset;
  s.scale = take(bytes_of(p.channels, sizeof(double)));
  s.pivot_count = p.kind == traversal::planes ? p.channels : p.period;
  s.partial_count =
      p.kind == traversal::planes ? p.channels * p.chunks_per_channel : p.row_chunks * p.period;
  s.pivot = take(bytes_of(s.pivot_count, p.value_size));
  s.sum = take(bytes_of(s.partial_count, sizeof(double)));
  s.sum_sq = take(bytes_of(s.partial_count, sizeof(double)));
  s.mean = take(bytes_of(p.channels, sizeof(double)));
  s.variance = take(bytes_of(p.channels, sizeof(double)));
  s.inv_std = take(bytes_of(p.channels, sizeof(double)));
  if (p.training == training_schedule::row_tasks) {
    // Every array so far once more for each task after the first.
    s.training_copy_bytes = offset;
    take(bytes_of(p.row_tasks - 1, s.training_copy_bytes));
  }
  const bool journal = p.training == training_schedule::fused_planes ||
                       p.training == training_schedule::fused_column_blocks ||
                       p.training == training_schedule::row_tasks;
  s.kept =
      take(bytes_of(journal ? commit_journal<double>::max_outputs * p.channels : 0, p.value_size));
  s.committed = take(bytes_of(journal ? p.channels : 0, 1));
  s.training_bytes = offset;
  return fits;
}

}  // namespace

bool make_partition(const problem& prob, const plan_options& options, std::size_t vector_lanes,
                    const cache_sizes& caches, partition* out) noexcept {
  partition& p = *out;
  p = partition{};
  p.batch = static_cast<std::size_t>(prob.shape[0]);
  p.channels = static_cast<std::size_t>(prob.shape[1]);
  p.spatial = 1;
  for (std::size_t d = 2; d < prob.shape.rank(); ++d) {
    p.spatial *= static_cast<std::size_t>(prob.shape[d]);
  }
  p.per_channel = p.batch * p.spatial;
  p.elements = p.per_channel * p.channels;
  p.element_size = element_size(prob.dtype);
  p.value_size = element_size(compute_dtype(prob.dtype));
  // The work of an element is its compute type's, whatever it is stored in (bf16 and f16
  // convert to float32 and back): half-storage tensors wait for workers at the same counts.
  p.serial = p.elements * std::max(p.element_size, p.value_size) < serial_bytes;
  p.one_thread = options.max_threads == 1;
  const bool planes = prob.layout == layout::channels_first && p.spatial > 1;
  const auto streams = [&](output_use use) {
    const std::size_t min_plane_bytes = use == output_use::training
                                            ? min_streamed_plane_bytes_reading_twice
                                            : min_streamed_plane_bytes;
    return options.stores == store_policy::streaming ||
           (options.stores == store_policy::automatic &&
            p.elements * p.element_size >= streaming_threshold(caches, use) &&
            (!planes || p.spatial * p.element_size >= min_plane_bytes));
  };
  p.stream_training_stores = streams(output_use::training);
  p.stream_inference_stores = streams(output_use::inference);
  p.stream_parallel_inference_stores = streams(output_use::parallel_inference);
  p.inference_on_same_threads = 2 * p.elements * p.element_size <= caches.last_level_bytes;
  const bool reads_from_memory =
      p.elements * p.element_size >= streaming_threshold(caches, output_use::training);
  p.statistics_read_ahead_bytes = reads_from_memory ? read_ahead_bytes : 0;
  p.gradient_read_ahead_bytes = reads_from_memory && !planes ? read_ahead_bytes : 0;
  const std::size_t unit_elements = unit_bytes / p.element_size;
  const std::size_t fused_channel_bytes = caches.l2_bytes / fused_channel_l2_fraction;
  const std::size_t fused_block_bytes = caches.l2_bytes / fused_block_l2_fraction;
  const std::size_t fused_group_bytes = caches.l2_bytes / fused_group_l2_fraction;
  // Units that hold whole channels and stay in cache, for the fused schedules. Planes: one
  // channel per unit. Interleaved: one row chunk (all the rows), units are blocks of whole
  // channels.
  bool fused = false;
  bool inference_row_tasks = false;  // channels-last inference in row tasks (see below)

  if (planes) {
    p.kind = traversal::planes;
    // A channel that fits in a core's cache is one unit, and training reads it the second time
    // from there. A larger one is split into equal runs; small channels are grouped into tasks.
    fused = p.per_channel * p.element_size <= fused_channel_bytes;
    const std::size_t channel_bytes = std::max<std::size_t>(1, p.per_channel * p.element_size);
    p.fused_group = std::clamp<std::size_t>(
        fused_group_bytes / channel_bytes, 1,
        std::max(fused_group_channels, fused_group_l1_bytes / channel_bytes));
    const std::size_t vector_channels = widest_vector_bytes / p.value_size;
    if (p.fused_group >= whole_vector_groups_from * vector_channels) {
      p.fused_group -= p.fused_group % vector_channels;
    }
    p.chunks_per_channel = fused ? 1 : std::max<std::size_t>(1, p.per_channel / unit_elements);
    p.chunk_len = ceil_div(std::max<std::size_t>(p.per_channel, 1), p.chunks_per_channel);
    p.units = p.channels * p.chunks_per_channel;
    p.units_per_task =
        std::max<std::size_t>(1, unit_elements / std::max<std::size_t>(p.chunk_len, 1));
    if (p.batch > 1 && p.spatial <= unit_elements) {
      p.planes_per_unit = unit_elements / p.spatial;
      p.plane_units = ceil_div(p.batch * p.channels, p.planes_per_unit);
    }
  } else {
    p.kind = traversal::interleaved;
    p.rows = p.per_channel;
    const std::size_t lcm = std::lcm(p.channels, vector_lanes);
    if (lcm <= max_vector_period) {
      // Whole vectors per period, and at least four of them so that the per-slot
      // read-modify-write chains of consecutive periods overlap.
      p.period = lcm * std::max<std::size_t>(1, ceil_div(4 * vector_lanes, lcm));
      // A tensor shorter than that needs no more than one period's worth of slots.
      p.period = std::min(p.period, round_up(std::max<std::size_t>(p.elements, 1), lcm));
    } else {
      p.period = p.channels;  // rows of C with a short tail each
    }
    const std::size_t rows_per_period = p.period / p.channels;
    const std::size_t chunk_elements = std::max(unit_elements, min_chunk_periods * p.period);
    p.rows_per_chunk =
        round_up(std::max<std::size_t>(1, chunk_elements / p.channels), rows_per_period);
    if (ceil_div(p.rows, p.rows_per_chunk) > max_interleaved_chunks) {
      p.rows_per_chunk = round_up(ceil_div(p.rows, max_interleaved_chunks), rows_per_period);
    }
    p.row_chunks = std::max<std::size_t>(1, ceil_div(p.rows, p.rows_per_chunk));
    p.block_width = p.period;
    const std::size_t wanted_units = ceil_div(std::max<std::size_t>(p.elements, 1), unit_elements);
    const bool splits_columns = p.period == p.channels && p.channels >= 4 * vector_lanes;
    // Few rows of many channels (ResNet's 7×7 and 14×14 in NHWC): a block of whole channels
    // over all the rows that fits in a core's cache is one unit, and training does all of its
    // work in one pass (as channels-first does). block_width: the width of at least min_blocks
    // blocks of rows of min_row_bytes that fit a core's cache, as many as the work deserves; 0
    // where there are no such blocks.
    const auto block_width = [&](std::size_t min_row_bytes, std::size_t min_blocks) {
      const std::size_t blocks =
          std::min(wanted_units, p.channels * p.element_size / min_row_bytes);
      const std::size_t width =
          blocks > 0 ? round_up(ceil_div(p.channels, blocks), vector_lanes) : 0;
      const bool fits = splits_columns && p.rows > 0 && blocks >= min_blocks &&
                        p.rows * width * p.element_size <= fused_block_bytes;
      return fits ? width : 0;
    };
    std::size_t fused_width = block_width(min_fused_block_row_bytes, min_fused_blocks);
    inference_row_tasks = p.period == p.channels && p.rows > 0 &&
                          p.rows <= max_inference_row_task_rows &&
                          p.elements * p.element_size <= caches.l2_bytes;
    if (fused_width == 0) fused_width = block_width(min_narrow_block_row_bytes, min_narrow_blocks);
    if (fused_width == 0) fused_width = block_width(min_fused_block_row_bytes, min_few_blocks);
    if (fused_width == 0 && inference_row_tasks &&
        p.elements * p.element_size <= max_whole_tensor_block_bytes) {
      fused_width = round_up(p.channels, vector_lanes);
    }
    if (fused_width > 0) {
      fused = true;
      p.rows_per_chunk = p.rows;
      p.row_chunks = 1;
      p.block_width = fused_width;
      p.column_blocks = ceil_div(p.channels, p.block_width);
    } else if (splits_columns && p.row_chunks < std::min(wanted_units, enough_row_chunks)) {
      // Otherwise, where the row chunks are too few to share out, split the channels too, in
      // blocks of whole vectors, or one core would do it all.
      const std::size_t blocks =
          std::min(ceil_div(wanted_units, p.row_chunks), p.channels / (2 * vector_lanes));
      p.block_width = round_up(ceil_div(p.channels, blocks), vector_lanes);
      p.column_blocks = ceil_div(p.channels, p.block_width);
    }
    p.units = p.row_chunks * p.column_blocks;
    p.units_per_task = 1;
    const std::size_t map_chunks =
        std::max(wanted_units, std::min(min_map_chunks, ceil_div(p.rows, rows_per_period)));
    p.map_rows_per_chunk =
        round_up(ceil_div(std::max<std::size_t>(p.rows, 1), map_chunks), rows_per_period);
    p.map_row_chunk_count = std::max<std::size_t>(1, ceil_div(p.rows, p.map_rows_per_chunk));
    p.inference =
        inference_row_tasks ? inference_schedule::row_tasks : inference_schedule::row_chunks;
    if (inference_row_tasks) {
      p.row_tasks = std::min(row_tasks_for_inference, p.rows);
      p.rows_per_row_task = ceil_div(p.rows, p.row_tasks);
    }
  }
  if (p.kind == traversal::planes) {
    p.inference = p.planes_per_unit == 0 ? inference_schedule::channel_planes
                                         : inference_schedule::memory_order_planes;
  }
  if (p.elements <= tiny_elements) {
    p.training = training_schedule::direct;
  } else if (fused && p.kind == traversal::planes) {
    p.training = training_schedule::fused_planes;
  } else if (inference_row_tasks) {
    // Whatever the units: each task's statistics over all the rows are a fused column block's
    // work, whose bits every schedule gives.
    p.training = training_schedule::row_tasks;
  } else if (fused) {
    p.training = training_schedule::fused_column_blocks;
  } else {
    p.training = training_schedule::two_passes;
  }
  p.fused_backward = fused && p.training != training_schedule::direct;
  // The fused planes read x the second time from cache, but add+ReLU's residual once, from
  // memory, along each channel's planes: runs C·spatial apart, at each of which the hardware
  // prefetcher starts anew. Where the runs are shorter than the reads ahead, fetched ahead
  // (docs/design.md, "Fetches along the fused planes (stop 46)").
  if (p.training == training_schedule::fused_planes && options.activation == activation::add_relu &&
      p.statistics_read_ahead_bytes > 0 && p.spatial * p.element_size <= read_ahead_bytes) {
    p.residual_read_ahead_bytes = read_ahead_bytes;
  }
  // Otherwise a fused block's statistics read x from memory while no output streams, and its
  // normalization streams y while nothing is read: the normalization fetches the next block's
  // x as it goes, so that the two overlap, where two blocks fit in seven eighths of the L2. Not
  // with the residual's fetches (three tensors in the L2 were slower), nor for half-precision
  // storage (no faster). The backward's fused planes likewise fetch the next block's x and dy,
  // where two blocks of both fit (docs/design.md, "Fetches along the fused planes (stop 46)").
  const std::size_t fused_planes_block_bytes = p.fused_group * p.per_channel * p.element_size;
  const bool storage_computes = p.element_size == p.value_size;  // not half precision
  const std::size_t l2_to_fill = caches.l2_bytes - caches.l2_bytes / 8;
  p.fetch_next_fused_block = p.training == training_schedule::fused_planes &&
                             p.statistics_read_ahead_bytes > 0 &&
                             2 * fused_planes_block_bytes <= l2_to_fill &&
                             options.activation != activation::add_relu && storage_computes;
  p.fetch_next_fused_backward_block =
      p.fused_backward && p.kind == traversal::planes && p.statistics_read_ahead_bytes > 0 &&
      4 * fused_planes_block_bytes <= l2_to_fill && storage_computes;
  // The backward over rows from memory (see wide_row_slots). The sums run over the column
  // blocks, the map over whole rows but in the fused blocks': along a block of a row, the
  // fetches would fall in the blocks beside it.
  const bool rows_from_memory = p.kind == traversal::interleaved && p.gradient_read_ahead_bytes > 0;
  const bool wide_rows_from_memory =
      rows_from_memory && storage_computes && p.period >= wide_row_slots;
  const bool narrow_rows_of_whole_lines =
      p.period * p.element_size % 64 == 0 && p.period < kernels::two_row_gradient_slots;
  const bool whole_rows = p.column_blocks == 1;
  const bool map_fetches = rows_from_memory &&
                           (narrow_rows_of_whole_lines || wide_rows_from_memory) &&
                           (whole_rows || !p.fused_backward);
  p.row_gradient_read_ahead_bytes = map_fetches ? row_gradient_read_ahead_bytes : 0;
  p.gradient_sums_in_row_order = wide_rows_from_memory && whole_rows;
  // Training and the backward on more than one thread keep their output cached while the
  // tensors counted fit in one core's L2, half of two cores': the call then stays in the cores'
  // caches, where streamed stores send the output to memory. Not column blocks: a block of a row
  // is a slice of each row, and its lines fall in a share of the L2's sets.
  const auto streams_in_parallel = [&](std::size_t tensors_counted, bool column_blocks) {
    return p.stream_training_stores &&
           !(!column_blocks && options.stores == store_policy::automatic &&
             tensors_counted * p.elements * p.element_size <= caches.l2_bytes);
  };
  const bool interleaved_fused_backward = p.fused_backward && p.kind == traversal::interleaved;
  // Training counts all its tensors: x, y and an add+ReLU's residual (docs/design.md,
  // "Training's stores on two threads").
  p.stream_parallel_training_stores =
      streams_in_parallel(options.activation == activation::add_relu ? 3 : 2,
                          p.training == training_schedule::fused_column_blocks);
  // The backward counts the two it reads twice, x and dy: at 1 MiB of float32 each, dx streamed
  // was slower in rows and planes alike, from 1.5 MiB faster (docs/design.md, "The backward's
  // stores on two threads").
  p.stream_parallel_backward_stores = streams_in_parallel(2, interleaved_fused_backward);
  // Fused column blocks shared out between cores stream dx whatever the size: a block's x and
  // dy, read twice, fall in the share of the L2's sets its slices of the rows map to (all of
  // them for one block of whole rows), where cached dx lines (each read before it is written)
  // push them out. Streamed, the backward of 196 rows of 1024 channels (four blocks) on two
  // cores, followed by the next layer's read of dx, ran 1.2 to 1.5 times faster in most phases
  // of the shared host and 10% slower in the quietest (docs/design.md, "The backward's column
  // blocks stream dx on more cores (stop 50)"); one block of 196 rows of 384 to 512 channels,
  // 1.5 to 1.7 times ("One block of whole rows streams dx on more cores too (stop 51)"). One
  // core keeps dx cached: streamed, its next layer lost what it gained; and so does a call on
  // the calling thread, whose next layer read streamed dx 1.2 to 1.5 times slower.
  if (interleaved_fused_backward && !p.serial && options.stores == store_policy::automatic) {
    p.stream_parallel_backward_stores = true;
  }
  p.channels_per_finalize_task = finalize_channels_per_task;
  p.channels_per_coefficient_task = coefficient_channels_per_task;
  return lay_out_scratch(p);
}

std::string describe(const partition& p) {
  const auto text = [](const char* format, auto... values) {
    char buffer[160];
    std::snprintf(buffer, sizeof(buffer), format, values...);
    return std::string(buffer);
  };
  std::string out;
  if (p.kind == traversal::planes) {
    out = text("channels-first planes (%zu × %zu of %zu)", p.batch, p.channels, p.spatial);
  } else {
    out = text("channels-last rows (%zu × %zu)", p.rows, p.channels);
  }
  out += " · training: ";
  // A block's width is whole vectors; one block of every channel holds just the channels.
  const std::size_t block_channels = std::min(p.block_width, p.channels);
  switch (p.training) {
    case training_schedule::direct: out += "direct float64 sums"; break;
    case training_schedule::fused_planes:
      out += text("fused planes, %zu channels in groups of %zu", p.channels, p.fused_group);
      if (p.fetch_next_fused_block) out += ", each normalized fetching the next";
      if (p.fetch_next_fused_backward_block) out += ", the backward's blocks fetching the next";
      break;
    case training_schedule::fused_column_blocks:
      out += text("fused column blocks, %zu × %zu channels", p.column_blocks, block_channels);
      break;
    case training_schedule::row_tasks:
      out += text("%zu row tasks, each with every channel's statistics (backward: ", p.row_tasks);
      if (p.fused_backward) {
        out += text("fused column blocks, %zu × %zu channels)", p.column_blocks, block_channels);
      } else {
        out +=
            text("two passes, %zu row chunks × %zu column blocks)", p.row_chunks, p.column_blocks);
      }
      break;
    case training_schedule::two_passes:
      if (p.kind == traversal::planes) {
        out += text("two passes, %zu units (%zu per channel)", p.units, p.chunks_per_channel);
      } else {
        out += text("two passes, %zu row chunks × %zu column blocks, then %zu × %zu rows",
                    p.row_chunks, p.column_blocks, p.map_row_chunk_count, p.map_rows_per_chunk);
      }
      break;
  }
  out += " · inference: ";
  switch (p.inference) {
    case inference_schedule::channel_planes:
      out += text("channel planes, %zu units", p.units);
      break;
    case inference_schedule::memory_order_planes:
      out +=
          text("planes in memory order, %zu units of %zu planes", p.plane_units, p.planes_per_unit);
      break;
    case inference_schedule::row_chunks:
      out += text("row chunks, %zu × %zu rows", p.map_row_chunk_count, p.map_rows_per_chunk);
      break;
    case inference_schedule::row_tasks:
      out += text("%zu row tasks, each with all the coefficients", p.row_tasks);
      break;
  }
  // Which outputs stream, where the three paths differ: each streams everywhere, on one thread
  // only (training and the backward may keep theirs cached on more threads), on more threads only
  // (the backward's column blocks), or nowhere.
  struct path_stores {
    const char* name;
    bool one_thread, more_threads;
  };
  const path_stores paths[] = {
      {"training", p.stream_training_stores, p.stream_parallel_training_stores},
      {"backward", p.stream_training_stores, p.stream_parallel_backward_stores},
      {"inference", p.stream_inference_stores, p.stream_parallel_inference_stores}};
  std::string everywhere, one_thread, more_threads;
  const auto append = [](std::string& list, const char* name) {
    list += list.empty() ? name : std::string(", ") + name;
  };
  std::size_t streamed_everywhere = 0;
  for (path_stores path : paths) {
    if (p.one_thread) path.more_threads = path.one_thread;  // no other threads to store from
    if (path.one_thread && path.more_threads) {
      append(everywhere, path.name);
      ++streamed_everywhere;
    } else if (path.one_thread) {
      append(one_thread, path.name);
    } else if (path.more_threads) {
      append(more_threads, path.name);
    }
  }
  if (streamed_everywhere == std::size(paths)) {
    out += " · streaming stores";
  } else if (everywhere.empty() && one_thread.empty() && more_threads.empty()) {
    out += " · cached stores";
  } else {
    std::string lists = everywhere;
    const auto add = [&lists](const std::string& list, const char* where) {
      if (!list.empty()) lists += (lists.empty() ? "" : "; ") + list + where;
    };
    add(one_thread, " on one thread");
    add(more_threads, " on more threads");
    out += " · streaming stores (" + lists + ")";
  }
  if (p.statistics_read_ahead_bytes > 0) {
    out += text(" · reads %zu KiB ahead", p.statistics_read_ahead_bytes / 1024);
    if (p.gradient_read_ahead_bytes == 0) out += " (not the backward)";
    if (p.row_gradient_read_ahead_bytes > 0) {
      out += text(", the backward's streamed dx %zu KiB", p.row_gradient_read_ahead_bytes / 1024);
    }
  }
  if (p.gradient_sums_in_row_order) out += " · the backward's sums in row order";
  if (p.residual_read_ahead_bytes > 0) {
    out += text(" · the residual's planes %zu KiB ahead", p.residual_read_ahead_bytes / 1024);
  }
  if (p.one_thread) {
    out += " · one thread";
  } else {
    out += p.serial ? " · calling thread" : " · parallel";
    if (!p.serial && p.inference_on_same_threads) out += ", inference on the same threads";
  }
  return out;
}

}  // namespace bnorm::detail
