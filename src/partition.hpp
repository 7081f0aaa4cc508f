// The planner: how a problem's elements are split into work units and where scratch lives.
// Everything here depends on the problem, its options, the ISA and the cache sizes only, never on
// the number of threads that run the units (a cap of one thread changes no bits), so the same
// input gives the same bits however many threads run them.
#pragma once

#include <cstddef>
#include <string>

#include "bnorm/plan.hpp"
#include "cache_sizes.hpp"

namespace bnorm::detail {

enum class traversal {
  /// Channels-first with spatial > 1: each (n, c) plane is a contiguous run of one channel.
  planes,
  /// Channels-last, or no spatial extent: rows of C interleaved channels.
  interleaved,
};

/// How a training call runs: the planner's choice, which execute.cpp carries out.
enum class training_schedule {
  /// A tiny tensor: float64 sums in one walk over memory, then the normalize pass.
  direct,
  /// Channels-first channels that fit in a core's cache: the statistics and the normalization
  /// of a group of channels back to back, in one parallel pass.
  fused_planes,
  /// Channels-last, few rows of many channels: blocks of whole channels over all the rows,
  /// statistics and normalization back to back, in one parallel pass.
  fused_column_blocks,
  /// Channels-last, few rows of many channels, where inference takes row tasks: row_tasks
  /// tasks of whole rows, each taking every channel's statistics over all the rows into a copy
  /// of its own (the bits of the fused column blocks) before normalizing its rows, the first
  /// committing them. No core writes part of a row another writes, nor reads what another
  /// wrote in the call (docs/design.md, "Row tasks for few rows of many channels (stop 45)").
  row_tasks,
  /// A statistics pass (partial sums per unit, merged in a fixed order), then a normalize pass.
  two_passes,
};

/// How an inference call runs.
enum class inference_schedule {
  /// Channel-major planes: each task works out its own channels' coefficients.
  channel_planes,
  /// A coefficient pass, then the planes in memory order.
  memory_order_planes,
  /// A coefficient pass (per slot), then chunks of whole rows.
  row_chunks,
  /// Channels-last, few rows of many channels: row_tasks tasks of whole rows, each working out
  /// every channel's coefficients in a copy of its own before normalizing its rows. No core
  /// writes part of a row that another writes, nor reads coefficients another core wrote in the
  /// same call (docs/design.md, "Small channels-last inference on two threads").
  row_tasks,
};

/// Byte offsets of the scratch arrays, each 64-byte aligned. Sizes in elements are below.
struct scratch_layout {
  std::size_t pivot = 0;     // T[pivot_count]: per-channel (or per-slot) pivots
  std::size_t sum = 0;       // double[partial_count]: Σ(x − pivot) per unit
  std::size_t sum_sq = 0;    // double[partial_count]: Σ(x − pivot)² per unit
  std::size_t mean = 0;      // double[C]: the batch mean, kept until the results are committed
  std::size_t variance = 0;  // double[C]: the biased batch variance
  std::size_t inv_std = 0;   // double[C]: 1/sqrt(variance + eps)
  std::size_t scale = 0;     // double[C]: gamma·inv_std
  std::size_t coeffs = 0;    // T[max(7, 4·row tasks)][coeff_stride]: the forward's 4 arrays
                             // (a copy per row task) or the backward's 7
  // The fused training schedules' commit journal (commit_journal.hpp); empty otherwise.
  std::size_t kept = 0;       // T[max_outputs][C]: what the blocks' commits replace
  std::size_t committed = 0;  // unsigned char[C]: which channels a block has committed
  std::size_t pivot_count = 0;
  std::size_t partial_count = 0;
  std::size_t coeff_stride = 0;
  std::size_t training_bytes = 0;
  std::size_t inference_bytes = 0;  // the coefficients, laid out first
  // training_schedule::row_tasks: task t's arrays (all of the above but the journal) start
  // t·training_copy_bytes on; 0 under other schedules.
  std::size_t training_copy_bytes = 0;
};

struct partition {
  traversal kind = traversal::planes;
  training_schedule training = training_schedule::two_passes;
  // The backward's reduce and map in one pass over blocks of whole channels that stay in
  // cache (planes in groups, or column blocks): where training fuses, or takes row tasks over
  // such blocks (row tasks over rows too narrow for them, on more than
  // max_whole_tensor_block_bytes, leave the backward two passes).
  bool fused_backward = false;
  inference_schedule inference = inference_schedule::row_chunks;
  std::size_t batch = 0;         // N
  std::size_t channels = 0;      // C
  std::size_t spatial = 0;       // product of the dimensions after C
  std::size_t per_channel = 0;   // N × spatial: values per channel
  std::size_t elements = 0;      // N × C × spatial
  std::size_t element_size = 0;  // bytes of a tensor element
  std::size_t value_size = 0;    // bytes of a per-channel value (pivots, coefficients)
  /// Too small to be worth a task: run every unit on the calling thread.
  bool serial = false;
  /// The plan's max_threads is 1: every call runs on the calling thread whatever its size, with
  /// the one-thread stores (describe says so; the units stay as they are, and so do the bits).
  bool one_thread = false;
  /// Write the output with non-temporal stores (see plan_options::stores): training's and the
  /// backward's dx, which read their input twice, on one thread and each on more; inference's
  /// (and the frozen backward's dx), which read it once, on one thread and on more
  /// (plans_training_streams, plans_backward_streams and plans_inference_streams say which a
  /// call takes).
  bool stream_training_stores = false;
  bool stream_parallel_training_stores = false;
  bool stream_parallel_backward_stores = false;
  bool stream_inference_stores = false;
  bool stream_parallel_inference_stores = false;
  /// Inference (and the frozen backward's dx, an inference map of dy) gives each thread the same
  /// units at every call where x and y together fit in the last-level cache counted: each core
  /// then reads what it read and wrote the call before from its own cache. Larger tensors come
  /// from memory and keep the balanced placement, where a core slowed by a neighbour does not
  /// hold back a fixed share (docs/design.md, "Inference's units on the same threads (stop 55)").
  bool inference_on_same_threads = false;
  /// How far ahead the reduce passes fetch the lines they read, in bytes of all the tensors they
  /// read together (kernels::plane_block::read_ahead_bytes; 0: not at all): the forward
  /// statistics', and the backward sums'.
  std::size_t statistics_read_ahead_bytes = 0;
  std::size_t gradient_read_ahead_bytes = 0;
  /// How far ahead the backward's map over rows, streaming dx, fetches the lines of x and dy
  /// (kernels::row_block::read_ahead_bytes; 0: not at all).
  std::size_t row_gradient_read_ahead_bytes = 0;
  /// Whether the backward's sums over whole rows walk each block's rows in memory order
  /// (kernels::row_block::in_row_order).
  bool gradient_sums_in_row_order = false;
  /// How far ahead the fused planes' map fetches add+ReLU's residual along a channel's planes
  /// where it streams (kernels::run_fetch; 0: not at all).
  std::size_t residual_read_ahead_bytes = 0;
  /// Whether the fused planes' map, streaming a block's output, fetches the next block's x
  /// (kernels::run_fetch).
  bool fetch_next_fused_block = false;
  /// The same for the backward's fused planes, fetching the next block's x and dy.
  bool fetch_next_fused_backward_block = false;
  /// Fused planes: channels per group (statistics, then normalization), as many as fit in
  /// an eighth of a core's L2, at most 16, or more where they fit in half an L1.
  std::size_t fused_group = 1;

  // planes: unit u covers the run [j·chunk_len, (j+1)·chunk_len) of channel u / k, j = u % k,
  // of its N·spatial values, k = chunks_per_channel.
  std::size_t chunks_per_channel = 1;
  std::size_t chunk_len = 0;
  std::size_t units_per_task = 1;
  // planes, N > 1 with planes shorter than a unit: the normalize pass of inference (and of
  // unfused training) walks whole planes in memory order instead, unit u covering planes
  // [u·planes_per_unit, ...) of the N·C, plane q being channel q % C. Channel-major units
  // would jump C·spatial elements at every plane (docs/design.md). 0: channel-major.
  std::size_t planes_per_unit = 0;
  std::size_t plane_units = 0;

  // interleaved: unit u covers rows [i·rows_per_chunk, ...) of the N·spatial rows and slots
  // [b·block_width, ...) of them, i = u / column_blocks, b = u % column_blocks. Only few rows
  // of many channels are split into column blocks.
  std::size_t period = 0;  // a multiple of C and, where cheap, of the vector length
  std::size_t rows = 0;
  std::size_t rows_per_chunk = 0;
  std::size_t row_chunks = 0;
  std::size_t column_blocks = 1;
  std::size_t block_width = 0;
  // interleaved map passes (inference's, training's and the backward's normalization) in row
  // chunks: unit u covers whole rows [u·map_rows_per_chunk, ...), at least 16 units where there
  // are rows enough. A map needs no column blocks (no statistics), and whole rows stream
  // better than short column blocks (docs/design.md).
  std::size_t map_rows_per_chunk = 0;
  std::size_t map_row_chunk_count = 0;
  // inference_schedule::row_tasks (and training_schedule::row_tasks): so many tasks of whole
  // rows, task t covering rows [t·rows_per_row_task, ...) (both 0 under other schedules).
  std::size_t row_tasks = 0;
  std::size_t rows_per_row_task = 0;

  std::size_t units = 0;  // work units of a pass
  /// Channels per task of the per-channel passes: merging partials and finalizing (training),
  /// the coefficients alone (inference).
  std::size_t channels_per_finalize_task = 0;
  std::size_t channels_per_coefficient_task = 0;
  scratch_layout scratch;

  /// The index of value s of sample n in channel c: planes are channels-first; rows are
  /// channels-last, or without spatial extent, where both layouts agree.
  std::size_t element(std::size_t n, std::size_t c, std::size_t s) const noexcept {
    return kind == traversal::planes ? (n * channels + c) * spatial + s
                                     : (n * spatial + s) * channels + c;
  }
};

/// One line that says what a plan runs, e.g. "channels-last rows (3136 × 256) · training: two
/// passes, 25 row chunks × 1 column blocks · inference: row chunks, 25 × 128 rows · cached
/// stores · parallel".
std::string describe(const partition& p);

/// Builds the partition for a validated problem into *out; `vector_lanes` is the ISA's lanes
/// for the problem's dtype, `caches` the machine's (detected_cache_sizes(); tests pass fixed
/// ones). False when its scratch would not fit in size_t.
bool make_partition(const problem& prob, const plan_options& options, std::size_t vector_lanes,
                    const cache_sizes& caches, partition* out) noexcept;

}  // namespace bnorm::detail
