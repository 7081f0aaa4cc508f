// Each shape runs the schedule it is meant to cover: plan::describe() names it, so a change of
// the planner that moves a shape to another schedule fails here instead of passing unnoticed
// (the accuracy and determinism sweeps would still pass, on other code). The schedules are the
// planner's for fixed cache sizes, so that they hold on any machine; the plans' own lines are
// the planner's for the machine's caches.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include "cache_sizes.hpp"
#include "cpu_isa.hpp"
#include "execute.hpp"
#include "partition.hpp"
#include "support.hpp"
#include "threading.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

struct schedule_case {
  const char* name;
  bnorm::tensor_shape shape;
  layout l;
  const char* training;   // the training schedule's name in describe()
  const char* inference;  // the inference schedule's name
};

const schedule_case schedule_cases[] = {
    {"tiny",
     {2, 4},
     layout::channels_first,
     "training: direct float64 sums",
     "inference: row chunks"},
    {"planes_in_cache",
     {8, 64, 28, 28},
     layout::channels_first,
     "training: fused planes",
     "inference: planes in memory order"},
    {"one_image_planes",
     {1, 64, 112, 112},
     layout::channels_first,
     "training: fused planes",
     "inference: channel planes"},
    {"long_planes",
     {1024, 8, 1024},
     layout::channels_first,
     "training: two passes",
     "inference: planes in memory order"},
    {"few_wide_rows",
     {1, 2048, 7, 7},
     layout::channels_last,
     "training: 2 row tasks, each with every channel's statistics (backward: fused column "
     "blocks, 4 × 512 channels)",
     "inference: 2 row tasks"},
    {"few_rows_of_1k_channels",  // four 1 KiB blocks for the backward, row tasks
     {1, 1024, 14, 14},
     layout::channels_last,
     "training: 2 row tasks",
     "inference: 2 row tasks"},
    {"column_blocks_past_the_l2",  // 4 MiB: training and the backward in eight 2 KiB blocks
     {256, 4096},
     layout::channels_last,
     "training: fused column blocks, 8 × 512 channels",
     "inference: row chunks"},
    {"rows_past_row_tasks",  // 513 rows of 256 channels: inference in row chunks
     {1, 256, 513},
     layout::channels_last,
     "training: two passes",
     "inference: row chunks"},
    {"many_rows",
     {32, 64, 56, 56},
     layout::channels_last,
     "training: two passes",
     "inference: row chunks"},
    {"rows_in_column_blocks",  // the reduce's units are column blocks, the map's whole rows
     {2, 1003, 300},
     layout::channels_last,
     "column blocks, then",
     "inference: row chunks"},
    {"batch_of_vectors",
     {4096, 1024},
     layout::channels_first,
     "training: two passes",
     "inference: row chunks"},
};

// The machine the planner's constants were measured on: 2 MiB of L2 per core, 32 MiB of L3.
constexpr bnorm::detail::cache_sizes reference_caches{2u << 20, 32u << 20};

/// The planner's partition of a problem for the ISA `id` and the given caches.
bnorm::detail::partition plan_partition(const bnorm::problem& prob, const bnorm::plan_options& opts,
                                        bnorm::isa id, const bnorm::detail::cache_sizes& caches) {
  const bnorm::kernels::kernel_table* table = nullptr;
  EXPECT_TRUE(bnorm::detail::select_kernels(id, &table));
  bnorm::detail::partition part;
  EXPECT_TRUE(bnorm::detail::make_partition(
      prob, opts, prob.dtype == bnorm::dtype::f32 ? table->f32_lanes : table->f64_lanes, caches,
      &part));
  return part;
}

class Schedule : public testing::TestWithParam<std::tuple<bnorm::isa, std::size_t>> {};

TEST_P(Schedule, ShapeRunsTheScheduleItIsMeantToCover) {
  const schedule_case& k = schedule_cases[std::get<1>(GetParam())];
  const bnorm::isa id = std::get<0>(GetParam());
  const std::string line = describe(plan_partition({k.shape, k.l}, {}, id, reference_caches));
  EXPECT_NE(line.find(k.training), std::string::npos) << line;
  EXPECT_NE(line.find(k.inference), std::string::npos) << line;
}

TEST_P(Schedule, PlanSaysWhatThePlannerChoseForThisMachine) {
  const schedule_case& k = schedule_cases[std::get<1>(GetParam())];
  bnorm::plan_options opts;
  opts.max_isa = std::get<0>(GetParam());
  const bnorm::plan plan = make_plan_or_fail({k.shape, k.l}, opts);
  const std::string expected = std::string(bnorm::to_string(plan.isa())) + " · f32 · " +
                               describe(plan_partition({k.shape, k.l}, opts, plan.isa(),
                                                       bnorm::detail::detected_cache_sizes()));
  EXPECT_EQ(plan.describe(), expected);
}

// One image's float32 planes shorter than eight vectors map in channel groups on AVX-512
// (kernels::in_channel_groups), and the plan says so; more images, longer planes, other storage
// types and the other ISAs map a plane at a time.
TEST(Schedule, OneImageShortPlanesMapInChannelGroups) {
  for (const bnorm::isa id : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(id));
    const bool avx512 = id == bnorm::isa::avx512f || id == bnorm::isa::avx512bf16;
    bnorm::plan_options opts;
    opts.max_isa = id;
    const auto grouped = [&](const bnorm::problem& prob) {
      const std::string line = make_plan_or_fail(prob, opts).describe();
      return line.find("maps in groups of 16 channels") != std::string::npos;
    };
    EXPECT_EQ(grouped({{1, 2048, 7, 7}, layout::channels_first}), avx512);
    EXPECT_EQ(grouped({{1, 40, 127}, layout::channels_first}), avx512);
    EXPECT_FALSE(grouped({{1, 40, 128}, layout::channels_first}));
    EXPECT_FALSE(grouped({{2, 2048, 7, 7}, layout::channels_first}));
    EXPECT_FALSE(grouped({{1, 2048, 7, 7}, layout::channels_last}));
    EXPECT_FALSE(grouped({{1, 2048, 7, 7}, layout::channels_first, bnorm::dtype::bf16}));
    EXPECT_FALSE(grouped({{1, 2048, 7, 7}, layout::channels_first, bnorm::dtype::f64}));
  }
}

TEST(Schedule, CacheSizesDecideWhatStaysInCache) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::problem long_planes{{256, 8, 1024}, layout::channels_first};  // 1 MiB channels
  const bnorm::detail::cache_sizes small_l2{512u << 10, 32u << 20}, large_l2{8u << 20, 32u << 20};
  EXPECT_EQ(plan_partition(long_planes, {}, id, small_l2).training,
            bnorm::detail::training_schedule::two_passes);
  EXPECT_EQ(plan_partition(long_planes, {}, id, large_l2).training,
            bnorm::detail::training_schedule::fused_planes);
  // Outputs are streamed around the last-level cache from an eighth of it where the call reads
  // its input twice (training, the backward), from a quarter where it reads it once.
  const bnorm::problem four_mib{{1024, 1024}};
  const auto streams = [&](std::size_t last_level_mib) {
    const bnorm::detail::partition p =
        plan_partition(four_mib, {}, id, {2u << 20, last_level_mib << 20});
    return std::make_pair(p.stream_training_stores, p.stream_inference_stores);
  };
  EXPECT_EQ(streams(16), std::make_pair(true, true));
  EXPECT_EQ(streams(17), std::make_pair(true, false));
  EXPECT_EQ(streams(32), std::make_pair(true, false));
  EXPECT_EQ(streams(33), std::make_pair(false, false));
  EXPECT_NE(describe(plan_partition(four_mib, {}, id, {2u << 20, 32u << 20}))
                .find(" · streaming stores (training, backward) · "),
            std::string::npos);
  // Inference on more than one thread streams from half of it, where x and y no longer fit in
  // it together.
  const auto streams_in_parallel = [&](std::size_t last_level_mib) {
    return plan_partition(four_mib, {}, id, {2u << 20, last_level_mib << 20})
        .stream_parallel_inference_stores;
  };
  EXPECT_TRUE(streams_in_parallel(8));
  EXPECT_FALSE(streams_in_parallel(9));
  EXPECT_FALSE(streams_in_parallel(16));
  EXPECT_NE(describe(plan_partition(four_mib, {}, id, {2u << 20, 16u << 20}))
                .find(" · streaming stores (training, backward; inference on one thread) · "),
            std::string::npos);
  EXPECT_NE(describe(plan_partition(four_mib, {}, id, {2u << 20, 8u << 20}))
                .find(" · streaming stores · "),
            std::string::npos);
  bnorm::plan_options cached;
  cached.stores = bnorm::store_policy::cached;
  EXPECT_FALSE(plan_partition(four_mib, cached, id, {2u << 20, 8u << 20}).stream_training_stores);
  // Training on more than one thread keeps y cached while the call's tensors fit in one L2 (half
  // of two cores'), except in column blocks; at 1 MiB of x in an 8 MiB last level and 2 MiB L2s,
  // one thread streams. (256, 1024) takes row tasks, whole rows; (256, 4096), past the L2, the
  // column blocks.
  const bnorm::detail::cache_sizes host{2u << 20, 8u << 20};
  const auto training_streams = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    const bnorm::detail::partition p = plan_partition(prob, opts, id, host);
    return std::make_pair(p.stream_training_stores, p.stream_parallel_training_stores);
  };
  const bnorm::problem narrow_rows{{65536, 4}}, wide_rows{{256, 1024}}, wider_rows{{256, 4096}},
      planes{{16, 16, 32, 32}, layout::channels_first};
  EXPECT_EQ(plan_partition(narrow_rows, {}, id, host).training,
            bnorm::detail::training_schedule::two_passes);
  EXPECT_EQ(training_streams(narrow_rows, {}), std::make_pair(true, false));
  EXPECT_EQ(training_streams(planes, {}), std::make_pair(true, false));
  EXPECT_EQ(training_streams({{131072, 4}}, {}), std::make_pair(true, true));  // 2 MiB
  EXPECT_EQ(plan_partition(wide_rows, {}, id, host).training,
            bnorm::detail::training_schedule::row_tasks);
  EXPECT_EQ(training_streams(wide_rows, {}), std::make_pair(true, false));
  EXPECT_EQ(plan_partition(wider_rows, {}, id, host).training,
            bnorm::detail::training_schedule::fused_column_blocks);
  EXPECT_EQ(training_streams(wider_rows, {}), std::make_pair(true, true));
  bnorm::plan_options add_relu;  // x, y and the residual: 3 MiB
  add_relu.activation = bnorm::activation::add_relu;
  EXPECT_EQ(training_streams(narrow_rows, add_relu), std::make_pair(true, true));
  bnorm::plan_options streaming;
  streaming.stores = bnorm::store_policy::streaming;
  EXPECT_EQ(training_streams(narrow_rows, streaming), std::make_pair(true, true));
  // The backward keeps dx cached on more than one thread while x and dy, which it reads twice,
  // fit in one L2, except in column blocks: 1 MiB of float32 does, 1.5 MiB does not.
  const auto backward_streams = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    return plan_partition(prob, opts, id, host).stream_parallel_backward_stores;
  };
  EXPECT_FALSE(backward_streams(narrow_rows, {}));
  EXPECT_FALSE(backward_streams(planes, {}));
  // An add+ReLU plan's backward masks dy first, then reads x and the masked dy twice as well.
  EXPECT_FALSE(backward_streams(narrow_rows, add_relu));
  EXPECT_TRUE(backward_streams({{98304, 4}}, {}));  // 1.5 MiB
  EXPECT_TRUE(backward_streams(wide_rows, {}));
  EXPECT_TRUE(backward_streams(narrow_rows, streaming));
  EXPECT_FALSE(backward_streams({{131072, 4}, layout::channels_first, bnorm::dtype::bf16}, {}));
  EXPECT_NE(describe(plan_partition(narrow_rows, {}, id, host))
                .find(" · streaming stores (training, backward on one thread) · "),
            std::string::npos);
  EXPECT_NE(describe(plan_partition(narrow_rows, add_relu, id, host))
                .find(" · streaming stores (training; backward on one thread) · "),
            std::string::npos);
  // Where the cache counted is the cores' L2s, inference on more threads streams from a quarter
  // of it, as on one: 3 MiB streams in 8 MiB counted as the L2s, not in 8 MiB of a shared L3.
  const bnorm::problem three_mib{{768, 1024}};
  const bnorm::detail::cache_sizes guest{2u << 20, 8u << 20, true};
  EXPECT_TRUE(plan_partition(three_mib, {}, id, guest).stream_parallel_inference_stores);
  EXPECT_FALSE(plan_partition(three_mib, {}, id, host).stream_parallel_inference_stores);
  EXPECT_FALSE(plan_partition({{384, 1024}}, {}, id, guest).stream_parallel_inference_stores);
  EXPECT_NE(describe(plan_partition(three_mib, {}, id, guest)).find(" · streaming stores · "),
            std::string::npos);
  // What the machine reports is clamped to sizes a planner can trust.
  const bnorm::detail::cache_sizes& detected = bnorm::detail::detected_cache_sizes();
  EXPECT_GE(detected.l2_bytes, 128u << 10);
  EXPECT_LE(detected.l2_bytes, 8u << 20);
  EXPECT_GE(detected.last_level_bytes, detected.l2_bytes);
}

// The reduce passes fetch ahead what they read where it comes from memory: tensors of an eighth
// of the last-level cache or more (as training's streamed stores), whatever the store policy;
// the backward's planes do not. So does the backward's map over rows of whole cache lines
// narrower than 512 slots, of any storage, and over rows of 512 slots or more of float32 or
// float64, not of half-precision storage.
TEST(Schedule, ReducePassesReadAheadFromMemory) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes caches{1u << 20, 32u << 20};
  const bnorm::problem rows_4_mib{{1024, 1024}}, rows_below{{1023, 1024}},
      planes_4_mib{{16, 64, 32, 32}, layout::channels_first};
  const auto ahead = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    const bnorm::detail::partition p = plan_partition(prob, opts, id, caches);
    return std::make_pair(p.statistics_read_ahead_bytes, p.gradient_read_ahead_bytes);
  };
  const std::size_t kib16 = 16u << 10;
  EXPECT_EQ(ahead(rows_4_mib, {}), std::make_pair(kib16, kib16));
  EXPECT_EQ(ahead(rows_below, {}), std::make_pair(std::size_t(0), std::size_t(0)));
  EXPECT_EQ(ahead(planes_4_mib, {}), std::make_pair(kib16, std::size_t(0)));
  bnorm::plan_options cached;
  cached.stores = bnorm::store_policy::cached;
  EXPECT_EQ(ahead(rows_4_mib, cached), std::make_pair(kib16, kib16));
  EXPECT_NE(describe(plan_partition(planes_4_mib, {}, id, caches))
                .find(" · reads 16 KiB ahead (not the backward) · "),
            std::string::npos);
  EXPECT_EQ(describe(plan_partition(rows_below, {}, id, caches)).find("ahead"), std::string::npos);
  const auto map_ahead = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    return plan_partition(prob, opts, id, caches).row_gradient_read_ahead_bytes;
  };
  const std::size_t kib4 = 4u << 10;
  const bnorm::problem rows_4_mib_f64{{512, 1024}, layout::channels_last, bnorm::dtype::f64},
      rows_4_mib_bf16{{2048, 1024}, layout::channels_last, bnorm::dtype::bf16};
  EXPECT_EQ(map_ahead(rows_4_mib, {}), kib4);
  EXPECT_EQ(map_ahead(rows_4_mib, cached), kib4);
  EXPECT_EQ(map_ahead(rows_4_mib_f64, {}), kib4);
  EXPECT_EQ(map_ahead(rows_4_mib_bf16, {}), 0u);  // whole lines, but 512 slots or more
  EXPECT_EQ(map_ahead(rows_below, {}), 0u);
  EXPECT_EQ(map_ahead({{4096, 256}}, {}), kib4);  // rows narrower than 512 slots, whole lines
  EXPECT_EQ(map_ahead({{100352, 64}}, {}), kib4);
  EXPECT_EQ(map_ahead({{8192, 257}}, {}), 0u);    // narrower, not whole lines
  EXPECT_EQ(map_ahead({{4096, 600}}, {}), kib4);  // 512 slots or more, not whole lines
  EXPECT_EQ(map_ahead({{4096, 600}, layout::channels_first, bnorm::dtype::bf16}, {}), 0u);
  EXPECT_EQ(map_ahead({{8192, 256}, layout::channels_first, bnorm::dtype::bf16}, {}), kib4);
  EXPECT_EQ(map_ahead(planes_4_mib, {}), 0u);
  EXPECT_NE(describe(plan_partition(rows_4_mib, {}, id, caches))
                .find(" · reads 16 KiB ahead, the backward's streamed dx 4 KiB · "),
            std::string::npos);
}

// The backward's sums walk blocks of rows in memory order where they come from memory, the
// storage computes (float32, float64) and the blocks are whole rows of 512 slots or more.
TEST(Schedule, WideRowsSumTheirGradientsInRowOrder) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes caches{1u << 20, 32u << 20};
  const auto row_order = [&](const bnorm::problem& prob) {
    return plan_partition(prob, {}, id, caches).gradient_sums_in_row_order;
  };
  EXPECT_TRUE(row_order({{4096, 1024}}));
  EXPECT_FALSE(row_order({{1024, 1024}}));  // four column blocks of 256
  EXPECT_TRUE(row_order({{2048, 512}}));
  EXPECT_TRUE(row_order({{16, 512, 16, 16}, layout::channels_last}));
  EXPECT_TRUE(row_order({{2048, 1024}, layout::channels_first, bnorm::dtype::f64}));
  EXPECT_FALSE(row_order({{4096, 256}}));                              // narrower
  EXPECT_FALSE(row_order({{8, 256, 56, 56}, layout::channels_last}));  // narrower
  EXPECT_FALSE(row_order({{1023, 1024}}));                             // in the cache
  EXPECT_FALSE(row_order({{2048, 1024}, layout::channels_first, bnorm::dtype::bf16}));
  EXPECT_FALSE(row_order({{4, 1024, 32, 32}, layout::channels_first}));  // planes
  // Fused blocks of 512 of 16,384 channels: neither the sums nor the map along a block fetch
  // into the blocks beside it.
  const bnorm::problem fused_blocks{{64, 16384}};
  ASSERT_TRUE(plan_partition(fused_blocks, {}, id, caches).fused_backward);
  EXPECT_GT(plan_partition(fused_blocks, {}, id, caches).column_blocks, 1u);
  EXPECT_FALSE(row_order(fused_blocks));
  EXPECT_EQ(plan_partition(fused_blocks, {}, id, caches).row_gradient_read_ahead_bytes, 0u);
  EXPECT_NE(describe(plan_partition({{4096, 1024}}, {}, id, caches))
                .find(" · the backward's sums in row order · "),
            std::string::npos);
}

// The fused planes fetch add+ReLU's residual ahead where it comes from memory in runs shorter
// than the reads ahead; not inference, not plain or ReLU plans, not long planes or cached
// tensors, not rows.
TEST(Schedule, FusedPlanesFetchTheResidualAheadWhereItsRunsAreShort) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes caches{1u << 20, 32u << 20};
  bnorm::plan_options add_relu, relu;
  add_relu.activation = bnorm::activation::add_relu;
  relu.activation = bnorm::activation::relu;
  const bnorm::problem short_planes{{64, 128, 1024}, layout::channels_first},
      plane_of_16_kib{{8, 256, 64, 64}, layout::channels_first},
      long_planes{{2, 32, 16, 56, 56}, layout::channels_first},
      in_cache{{2, 64, 32, 32}, layout::channels_first},
      rows{{64, 1024, 64}, layout::channels_last};
  const auto ahead = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    const bnorm::detail::partition p = plan_partition(prob, opts, id, caches);
    EXPECT_TRUE(p.residual_read_ahead_bytes == 0 ||
                p.training == bnorm::detail::training_schedule::fused_planes);
    return p.residual_read_ahead_bytes;
  };
  const std::size_t kib16 = 16u << 10;
  EXPECT_EQ(ahead(short_planes, add_relu), kib16);
  EXPECT_EQ(ahead(plane_of_16_kib, add_relu), kib16);
  EXPECT_EQ(ahead({{8, 256, 64, 65}, layout::channels_first}, add_relu), 0u);
  EXPECT_EQ(ahead(long_planes, add_relu), 0u);
  EXPECT_EQ(ahead(in_cache, add_relu), 0u);
  EXPECT_EQ(ahead(rows, add_relu), 0u);
  EXPECT_EQ(ahead(short_planes, relu), 0u);
  EXPECT_EQ(ahead(short_planes, {}), 0u);
  EXPECT_NE(describe(plan_partition(short_planes, add_relu, id, caches))
                .find(" · the residual's planes 16 KiB ahead · "),
            std::string::npos);
  EXPECT_EQ(describe(plan_partition(short_planes, {}, id, caches)).find("residual"),
            std::string::npos);
}

// Fused planes from memory fetch the next block's x as each block is normalized, where two
// blocks fit in seven eighths of the L2; not with add+ReLU's residual fetches, not for
// half-precision storage, not in cache, not two passes or rows. The backward's fetch its x and
// dy where two blocks of both fit.
TEST(Schedule, FusedPlanesFetchTheNextBlockFromMemory) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes caches{1u << 20, 32u << 20};
  const auto fetches = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    const bnorm::detail::partition p = plan_partition(prob, opts, id, caches);
    EXPECT_TRUE(!p.fetch_next_fused_block ||
                p.training == bnorm::detail::training_schedule::fused_planes);
    return p.fetch_next_fused_block;
  };
  bnorm::plan_options relu, add_relu;
  relu.activation = bnorm::activation::relu;
  add_relu.activation = bnorm::activation::add_relu;
  const bnorm::tensor_shape planes_of_256_kib{64, 128, 1024};  // 32 MiB
  const bnorm::problem f32{planes_of_256_kib, layout::channels_first},
      f64{planes_of_256_kib, layout::channels_first, bnorm::dtype::f64},  // 512 KiB channels
      bf16{planes_of_256_kib, layout::channels_first, bnorm::dtype::bf16},
      f64_of_448_kib{{56, 128, 1024}, layout::channels_first, bnorm::dtype::f64},
      f64_above{{57, 128, 1024}, layout::channels_first, bnorm::dtype::f64},
      in_cache{{2, 64, 32, 32}, layout::channels_first},
      two_passes{{2, 8, 512, 512}, layout::channels_first},
      rows{planes_of_256_kib, layout::channels_last};
  EXPECT_TRUE(fetches(f32, {}));
  EXPECT_TRUE(fetches(f32, relu));
  EXPECT_TRUE(fetches(f64_of_448_kib, {}));
  EXPECT_FALSE(fetches(f64_above, {}));
  EXPECT_FALSE(fetches(f64, {}));
  EXPECT_FALSE(fetches(f32, add_relu));
  EXPECT_FALSE(fetches(bf16, {}));
  EXPECT_FALSE(fetches(in_cache, {}));
  EXPECT_FALSE(fetches(two_passes, {}));
  EXPECT_FALSE(fetches(rows, {}));
  EXPECT_NE(
      describe(plan_partition(f32, {}, id, caches))
          .find("fused planes, 128 channels in groups of 1, each normalized fetching the next"),
      std::string::npos);
  EXPECT_EQ(describe(plan_partition(bf16, {}, id, caches)).find("fetching the next"),
            std::string::npos);
  // The backward: x and dy of two blocks of 98 KiB fit, of 256 KiB not.
  const bnorm::problem planes_of_98_kib{{8, 256, 56, 56}, layout::channels_first};
  const auto backward_fetches = [&](const bnorm::problem& prob, const bnorm::plan_options& opts) {
    return plan_partition(prob, opts, id, caches).fetch_next_fused_backward_block;
  };
  EXPECT_TRUE(backward_fetches(planes_of_98_kib, {}));
  EXPECT_TRUE(backward_fetches(planes_of_98_kib, add_relu));
  EXPECT_FALSE(backward_fetches(f32, {}));
  EXPECT_FALSE(
      backward_fetches({{8, 256, 56, 56}, layout::channels_first, bnorm::dtype::bf16}, {}));
  EXPECT_FALSE(backward_fetches(in_cache, {}));
  EXPECT_FALSE(backward_fetches(rows, {}));
  EXPECT_NE(describe(plan_partition(planes_of_98_kib, {}, id, caches))
                .find("each normalized fetching the next, the backward's blocks fetching the next"),
            std::string::npos);
}

// The planner counts on the L3 a machine reports, except where it is more per CPU than any
// processor has: a guest shown its host's L3 counts on twice its CPUs' L2s.
TEST(Schedule, CacheSizesCountOnTheL3ACallCanKeep) {
  using bnorm::detail::cache_readings;
  using bnorm::detail::planning_cache_sizes;
  const auto planned = [](cache_readings read) {
    const bnorm::detail::cache_sizes sizes = planning_cache_sizes(read);
    return std::make_pair(sizes.l2_bytes >> 10, sizes.last_level_bytes >> 10);  // KiB
  };
  constexpr std::size_t mib = 1u << 20;
  using kib = std::pair<std::size_t, std::size_t>;
  EXPECT_EQ(planned({1 * mib, 32 * mib, 3, 2}), kib(1024, 32 * 1024));      // a CCD's L3, 2 CPUs
  EXPECT_EQ(planned({2 * mib, 260 * mib, 3, 2}), kib(2048, 8 * 1024));      // a host's L3, 2 CPUs
  EXPECT_EQ(planned({2 * mib, 320 * mib, 3, 128}), kib(2048, 320 * 1024));  // the whole host
  EXPECT_EQ(planned({2 * mib, 32 * mib, 3, 1}), kib(2048, 4 * 1024));       // 32 MiB for one CPU
  EXPECT_EQ(planned({2 * mib, 16 * mib, 3, 1}), kib(2048, 16 * 1024));
  EXPECT_EQ(planned({2 * mib, 260 * mib, 3, 0}), kib(2048, 260 * 1024));  // sharing unknown
  // Only the host's L3 is counted as the L2s.
  EXPECT_TRUE(planning_cache_sizes({2 * mib, 260 * mib, 3, 2}).last_level_from_l2s);
  EXPECT_FALSE(planning_cache_sizes({1 * mib, 32 * mib, 3, 2}).last_level_from_l2s);
  EXPECT_FALSE(planning_cache_sizes({2 * mib, 320 * mib, 3, 128}).last_level_from_l2s);
  EXPECT_FALSE(planning_cache_sizes({}).last_level_from_l2s);
  // Defaults where the system says nothing or no L3; an L2 out of range is clamped.
  EXPECT_EQ(planned({}), kib(1024, 32 * 1024));
  EXPECT_EQ(planned({1 * mib, 1 * mib, 2, 2}), kib(1024, 32 * 1024));
  EXPECT_EQ(planned({64u << 10, 32 * mib, 3, 8}), kib(128, 32 * 1024));
  EXPECT_EQ(planned({64 * mib, 128 * mib, 3, 8}), kib(8 * 1024, 128 * 1024));
  // The CPUs that share a cache, as sysfs lists them.
  EXPECT_EQ(bnorm::detail::count_cpu_list("0-1\n"), 2u);
  EXPECT_EQ(bnorm::detail::count_cpu_list("0"), 1u);
  EXPECT_EQ(bnorm::detail::count_cpu_list("0,2,4-7\n"), 6u);
  EXPECT_EQ(bnorm::detail::count_cpu_list("0-63,128-191"), 128u);
  EXPECT_EQ(bnorm::detail::count_cpu_list(""), 0u);
  EXPECT_EQ(bnorm::detail::count_cpu_list("5-2"), 0u);
}

// Channels-first outputs stream plane by plane, their ragged ends cached: planes too short to
// hold whole lines enough stream nothing (7×7 float32), 14×14 float32 planes stream where the
// call reads its input twice, 1,000-value planes everywhere; rows are not planes.
TEST(Schedule, ShortPlanesStayCached) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes caches{1u << 20, 32u << 20};
  const auto streams = [&](bnorm::tensor_shape shape, layout l, bnorm::dtype type) {
    const bnorm::detail::partition p = plan_partition({shape, l, type}, {}, id, caches);
    return std::make_pair(p.stream_training_stores, p.stream_inference_stores);
  };
  const auto first = layout::channels_first, last = layout::channels_last;
  const auto f32 = bnorm::dtype::f32, bf16 = bnorm::dtype::bf16;
  EXPECT_EQ(streams({128, 512, 7, 7}, first, f32), std::make_pair(false, false));  // 12.25 MiB
  EXPECT_EQ(streams({128, 512, 7, 7}, last, f32), std::make_pair(true, true));
  EXPECT_EQ(streams({32, 1024, 14, 14}, first, f32), std::make_pair(true, false));  // 24.5 MiB
  EXPECT_EQ(streams({64, 1024, 14, 14}, first, bf16), std::make_pair(false, false));
  EXPECT_EQ(streams({64, 64, 1000}, first, f32), std::make_pair(true, true));  // 15.6 MiB
  EXPECT_EQ(streams({32, 256, 28, 28}, first, f32), std::make_pair(true, true));
  // A policy the caller names is taken as it is.
  bnorm::plan_options streaming;
  streaming.stores = bnorm::store_policy::streaming;
  EXPECT_TRUE(
      plan_partition({{128, 512, 7, 7}, first}, streaming, id, caches).stream_inference_stores);
}

// A planned stream runs only into an output that starts on a cache line: into malloc's 16-byte
// alignment, non-temporal stores of partial lines were several times slower than cached ones.
TEST(Schedule, OutputsStreamFromWholeCacheLinesOnly) {
  alignas(64) unsigned char buffer[128];
  EXPECT_TRUE(bnorm::detail::streams_into(buffer, true));
  EXPECT_FALSE(bnorm::detail::streams_into(buffer + 16, true));
  EXPECT_FALSE(bnorm::detail::streams_into(buffer, false));
}

// Inference's stores follow the threads a call can use (plans_inference_streams; stores change
// no bits): one under a cap of 1 or in a caller's arena of one, more under a cap of 2 on a
// machine of two cores or more, or in a caller's arena of two.
TEST(Schedule, InferenceStoresFollowTheThreadsACallCanUse) {
  EXPECT_FALSE(bnorm::detail::thread_limit(1).more_than_one_thread());
  EXPECT_EQ(bnorm::detail::thread_limit(2).more_than_one_thread(),
            tbb::info::default_concurrency() > 1);
  const bnorm::detail::thread_limit callers_arena;
  tbb::task_arena(1).execute([&] { EXPECT_FALSE(callers_arena.more_than_one_thread()); });
  tbb::task_arena(2).execute([&] { EXPECT_TRUE(callers_arena.more_than_one_thread()); });
}

// Inference gives each thread the same units at every call while x and y together fit in the
// last-level cache counted, and balances them from memory; either placement covers every unit
// exactly once, on two threads too.
TEST(Schedule, InferenceKeepsItsUnitsOnTheirThreadsWhileXAndYFitTheCache) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes guest{2u << 20, 8u << 20, true};
  const auto same_threads = [&](const bnorm::problem& prob) {
    return plan_partition(prob, {}, id, guest).inference_on_same_threads;
  };
  EXPECT_TRUE(same_threads({{1024, 1024}}));  // 4 MiB: x and y 8 MiB
  EXPECT_FALSE(same_threads({{1025, 1024}}));
  EXPECT_TRUE(same_threads({{2048, 1024}, layout::channels_last, bnorm::dtype::bf16}));
  EXPECT_FALSE(same_threads({{1024, 1024}, layout::channels_last, bnorm::dtype::f64}));
  EXPECT_TRUE(same_threads({{1, 64, 112, 112}, layout::channels_first}));
  EXPECT_NE(describe(plan_partition({{1024, 1024}}, {}, id, guest))
                .find(" · parallel, inference on the same threads"),
            std::string::npos);
  EXPECT_EQ(describe(plan_partition({{1025, 1024}}, {}, id, guest)).find("same threads"),
            std::string::npos);
  EXPECT_EQ(describe(plan_partition({{2, 4}}, {}, id, guest)).find("same threads"),
            std::string::npos);  // on the calling thread: no threads to keep

  const bnorm::detail::thread_limit two(2);
  for (const auto placement :
       {bnorm::detail::unit_placement::balanced, bnorm::detail::unit_placement::same_threads}) {
    std::vector<std::atomic<int>> visits(1000);
    two.for_each(
        visits.size(), 7, false,
        [&](std::size_t b, std::size_t e) {
          EXPECT_LE(e, visits.size());
          for (std::size_t u = b; u < e; ++u) ++visits[u];
        },
        placement);
    for (std::size_t u = 0; u < visits.size(); ++u) ASSERT_EQ(visits[u].load(), 1) << u;
  }
}

// Plans of one cap share one arena, so that a layer and the next run their halves on the same
// threads: the cap clamped to the cores first, a cap of 1 and the caller's arena none, and the
// last of a cap's plans frees its arena, which the next plan of that cap makes anew.
TEST(Schedule, PlansOfOneCapShareTheirThreads) {
  const int cores = tbb::info::default_concurrency();
  {
    const bnorm::detail::thread_limit two(2);
    EXPECT_EQ(two.same_threads(bnorm::detail::thread_limit(2)), cores > 1);
    EXPECT_EQ(two.same_threads(bnorm::detail::thread_limit(3)), cores == 2);
    EXPECT_FALSE(two.same_threads(bnorm::detail::thread_limit(1)));
    EXPECT_FALSE(two.same_threads(bnorm::detail::thread_limit(0)));
    EXPECT_FALSE(bnorm::detail::thread_limit(0).same_threads(bnorm::detail::thread_limit(0)));
  }
  for (int round = 0; round < 2; ++round) {  // no plan of cap 2 left: each round's arena anew
    const bnorm::detail::thread_limit limit(2), other(2);
    EXPECT_EQ(limit.same_threads(other), cores > 1);
    std::vector<int> ran(64, 0);
    limit.for_each(ran.size(), 1, false, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i) ++ran[i];
    });
    EXPECT_EQ(std::count(ran.begin(), ran.end(), 1), 64);
  }
}

TEST(Schedule, ChannelsFirstChannelsUpToHalfAnL2AreFused) {
  // The backward's x and dy of a fused channel are read a second time mostly from L2: half of
  // a 1 MiB L2 fuses bn3d's 392 KiB channels and 512 KiB ones, not one row of floats more.
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes one_mib_l2{1u << 20, 32u << 20};
  const auto training = [&](bnorm::tensor_shape shape) {
    return plan_partition({shape, layout::channels_first}, {}, id, one_mib_l2).training;
  };
  EXPECT_EQ(training({2, 32, 16, 56, 56}), bnorm::detail::training_schedule::fused_planes);
  EXPECT_EQ(training({2, 32, 256, 256}), bnorm::detail::training_schedule::fused_planes);
  EXPECT_EQ(training({2, 32, 257, 256}), bnorm::detail::training_schedule::two_passes);
}

TEST(Schedule, RowsReduceInWholeRowsWhereRowChunksAreEnough) {
  // Sixteen row chunks or more share out without column blocks; fewer are split in columns too.
  const bnorm::isa id = isas_under_test().front();
  const auto part = [&](bnorm::tensor_shape shape, bnorm::dtype type) {
    return plan_partition({shape, layout::channels_last, type}, {}, id, reference_caches);
  };
  for (const auto& [shape, type] :
       {std::pair<bnorm::tensor_shape, bnorm::dtype>{{4096, 1024}, bnorm::dtype::f32},
        {{4096, 1024}, bnorm::dtype::bf16},
        {{2048, 2048}, bnorm::dtype::f32}}) {
    const bnorm::detail::partition p = part(shape, type);
    EXPECT_EQ(p.training, bnorm::detail::training_schedule::two_passes);
    EXPECT_GE(p.row_chunks, 16u);
    EXPECT_EQ(p.column_blocks, 1u) << describe(p);
  }
  const bnorm::detail::partition few_rows = part({256, 8192}, bnorm::dtype::f32);
  EXPECT_LT(few_rows.row_chunks, 16u);
  EXPECT_GT(few_rows.column_blocks, 1u) << describe(few_rows);
}

TEST(Schedule, FusedColumnBlocksCoverAPageOfEachRow) {
  // Cores writing into the same pages row after row slow each other down: fused column blocks
  // have rows of 2 KiB at least, four of them at least, so that a core's neighbouring blocks
  // are mostly its own; training and the backward also fuse four of 1 KiB, or two of 2 KiB (a
  // page of each row between them); otherwise two passes, the maps in whole rows. (Inference
  // writes whole rows: InferenceTakesRowTasksWhereTheRowsAreFew.)
  const bnorm::isa id = isas_under_test().front();
  const auto part = [&](bnorm::tensor_shape shape, bnorm::dtype type) {
    return plan_partition({shape, layout::channels_last, type}, {}, id, reference_caches);
  };
  for (const auto& [shape, type, blocks] :
       {std::tuple<bnorm::tensor_shape, bnorm::dtype, std::size_t>{
            {1, 2048, 7, 7}, bnorm::dtype::f32, 4},
        {{2, 2048, 7, 7}, bnorm::dtype::f32, 4},
        {{1, 4096, 7, 7}, bnorm::dtype::bf16, 4},
        {{1, 3072, 7, 7}, bnorm::dtype::f32, 5},
        {{1, 1024, 14, 14}, bnorm::dtype::f32, 4},
        {{1, 2048, 7, 7}, bnorm::dtype::bf16, 2}}) {
    const bnorm::detail::partition p = part(shape, type);
    EXPECT_TRUE(p.fused_backward);
    EXPECT_EQ(p.training, bnorm::detail::training_schedule::row_tasks);  // within the L2
    EXPECT_EQ(p.column_blocks, blocks);
    EXPECT_GE(p.block_width * p.element_size, blocks >= 4 ? 1024u : 2048u);
    EXPECT_GE(p.column_blocks * p.block_width * p.element_size, 4096u);
  }
  // Two blocks of 1 KiB, or one: no column blocks of rows. These few small rows take row tasks
  // all the same, their backward one block of every channel (see
  // TrainingTakesRowTasksWhereInferenceDoes).
  for (const auto& [shape, type] :
       {std::pair<bnorm::tensor_shape, bnorm::dtype>{{1, 512, 14, 14}, bnorm::dtype::f32},
        {{1, 1024, 14, 14}, bnorm::dtype::bf16},
        {{1, 256, 7, 7}, bnorm::dtype::f32}}) {
    const bnorm::detail::partition p = part(shape, type);
    EXPECT_EQ(p.training, bnorm::detail::training_schedule::row_tasks);
    EXPECT_EQ(p.column_blocks, 1u);
  }
  // A block up to a quarter of L2: (4,2048,7,7)'s four 392 KiB blocks of 2 KiB rows fit a 2 MiB
  // L2's; with 1 MiB, eight of 1 KiB rows (196 KiB), for training alone; (8,2048,7,7)'s eight
  // of 392 KiB do not.
  const bnorm::detail::cache_sizes one_mib{1u << 20, 32u << 20};
  const bnorm::problem four_images{{4, 2048, 7, 7}, layout::channels_last};
  const bnorm::detail::partition wide = plan_partition(four_images, {}, id, reference_caches);
  EXPECT_EQ(wide.training, bnorm::detail::training_schedule::row_tasks);  // within the L2
  EXPECT_TRUE(wide.fused_backward);
  EXPECT_EQ(wide.column_blocks, 4u);
  const bnorm::detail::partition narrow = plan_partition(four_images, {}, id, one_mib);
  EXPECT_EQ(narrow.training, bnorm::detail::training_schedule::fused_column_blocks);
  EXPECT_EQ(narrow.column_blocks, 8u);
  const bnorm::problem eight_images{{8, 2048, 7, 7}, layout::channels_last};
  EXPECT_EQ(plan_partition(eight_images, {}, id, one_mib).training,
            bnorm::detail::training_schedule::two_passes);
}

TEST(Schedule, InferenceTakesRowTasksWhereTheRowsAreFew) {
  // Up to 512 rows of C slots, of a tensor up to a core's L2: two tasks of whole rows, each
  // working out every coefficient in its own copy; otherwise row chunks, the coefficients
  // worked out first.
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes one_mib{1u << 20, 32u << 20};
  using bnorm::detail::inference_schedule;
  const auto part = [&](bnorm::tensor_shape shape, bnorm::dtype type) {
    return plan_partition({shape, layout::channels_last, type}, {}, id, one_mib);
  };
  for (const auto& [shape, type, rows_per_task] :
       {std::tuple<bnorm::tensor_shape, bnorm::dtype, std::size_t>{
            {1, 2048, 7, 7}, bnorm::dtype::f32, 25},
        {{1, 1024, 14, 14}, bnorm::dtype::f32, 98},
        {{2, 512, 14, 14}, bnorm::dtype::f32, 196},
        {{1, 1024, 14, 14}, bnorm::dtype::bf16, 98},
        {{2, 1024, 14, 14}, bnorm::dtype::f16, 196},
        {{1, 256, 512}, bnorm::dtype::f32, 256},         // the most rows
        {{1, 1024, 16, 16}, bnorm::dtype::f32, 128}}) {  // 1 MiB: the L2
    const bnorm::detail::partition p = part(shape, type);
    EXPECT_EQ(p.inference, inference_schedule::row_tasks) << describe(p);
    EXPECT_EQ(p.row_tasks, 2u);
    EXPECT_EQ(p.rows_per_row_task, rows_per_task);
  }
  for (const auto& [shape, type] :
       {std::pair<bnorm::tensor_shape, bnorm::dtype>{{1, 256, 513}, bnorm::dtype::f32},
        {{1, 1024, 16, 17}, bnorm::dtype::f32},  // past the L2
        {{2, 1024, 14, 14}, bnorm::dtype::f32},
        {{1, 512, 28, 28}, bnorm::dtype::f32},
        {{64, 4}, bnorm::dtype::f32}}) {  // rows of 4 channels: periods of several rows
    const bnorm::detail::partition p = part(shape, type);
    EXPECT_EQ(p.inference, inference_schedule::row_chunks) << describe(p);
    EXPECT_EQ(p.row_tasks, 0u);
  }
}

TEST(Schedule, TrainingTakesRowTasksWhereInferenceDoes) {
  // Where inference takes row tasks, training takes the row tasks too, each with every
  // channel's statistics. The backward keeps the column blocks where they fuse; where the rows
  // are too narrow for them, one block of every channel up to 512 KiB, two passes above.
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes one_mib{1u << 20, 32u << 20};
  const auto part = [&](bnorm::tensor_shape shape) {
    return plan_partition({shape, layout::channels_last}, {}, id, one_mib);
  };
  using bnorm::detail::training_schedule;
  const bnorm::detail::partition tasks = part({1, 1024, 14, 14});
  EXPECT_EQ(tasks.training, training_schedule::row_tasks);
  EXPECT_EQ(tasks.row_tasks, 2u);
  EXPECT_EQ(tasks.rows_per_row_task, 98u);
  EXPECT_TRUE(tasks.fused_backward);
  EXPECT_EQ(tasks.column_blocks, 4u);
  // Each task's arrays, and one journal of the commit.
  EXPECT_GE(tasks.scratch.training_copy_bytes, tasks.scratch.inv_std + 1024 * sizeof(double));
  EXPECT_GE(tasks.scratch.kept, 2 * tasks.scratch.training_copy_bytes);
  EXPECT_NE(describe(tasks).find("training: 2 row tasks, each with every channel's statistics "
                                 "(backward: fused column blocks, 4 × 256 channels)"),
            std::string::npos)
      << describe(tasks);
  // From 256 KiB (392 KiB, 400 KiB; bfloat16's 196 KiB counted as the float values it computes
  // in), the tasks share out between threads as inference's do; below, on the calling thread.
  for (const bnorm::tensor_shape& shape :
       {bnorm::tensor_shape{1, 2048, 7, 7}, bnorm::tensor_shape{1, 1024, 10, 10},
        bnorm::tensor_shape{1, 3072, 7, 7}}) {
    const bnorm::detail::partition shared = part(shape);
    EXPECT_EQ(shared.training, training_schedule::row_tasks);
    EXPECT_FALSE(shared.serial);
    EXPECT_EQ(describe(shared).find("calling thread"), std::string::npos) << describe(shared);
  }
  const bnorm::detail::partition half =
      plan_partition({{1, 2048, 7, 7}, layout::channels_last, bnorm::dtype::bf16}, {}, id, one_mib);
  EXPECT_EQ(half.training, training_schedule::row_tasks);
  EXPECT_FALSE(half.serial);
  const bnorm::detail::partition small = part({1, 1024, 7, 7});  // 196 KiB
  EXPECT_EQ(small.training, training_schedule::row_tasks);
  EXPECT_TRUE(small.serial);
  EXPECT_NE(describe(small).find("calling thread"), std::string::npos) << describe(small);
  // Four images: past the L2, the column blocks (eight of 1 KiB) for both.
  const bnorm::detail::partition blocks = part({4, 2048, 7, 7});
  EXPECT_EQ(blocks.training, training_schedule::fused_column_blocks);
  EXPECT_TRUE(blocks.fused_backward);
  EXPECT_EQ(blocks.scratch.training_copy_bytes, 0u);
  // Rows of 512 channels (2 KiB: no column blocks), 392 KiB: row tasks, the backward one block.
  const bnorm::detail::partition narrow = part({1, 512, 14, 14});
  EXPECT_EQ(narrow.inference, bnorm::detail::inference_schedule::row_tasks);
  EXPECT_EQ(narrow.training, training_schedule::row_tasks);
  EXPECT_TRUE(narrow.fused_backward);
  EXPECT_EQ(narrow.column_blocks, 1u);
  EXPECT_NE(describe(narrow).find("(backward: fused column blocks, 1 × 512 channels)"),
            std::string::npos)
      << describe(narrow);
  // bfloat16 rows of 1024 channels: 2 KiB, 392 KiB.
  const bnorm::detail::partition narrow_half = plan_partition(
      {{1, 1024, 14, 14}, layout::channels_last, bnorm::dtype::bf16}, {}, id, one_mib);
  EXPECT_EQ(narrow_half.training, training_schedule::row_tasks);
  EXPECT_TRUE(narrow_half.fused_backward);
  EXPECT_EQ(narrow_half.column_blocks, 1u);
  // 1 MiB of rows of 512 channels: row tasks, the backward in two passes.
  const bnorm::detail::partition passes = part({512, 512});
  EXPECT_EQ(passes.inference, bnorm::detail::inference_schedule::row_tasks);
  EXPECT_EQ(passes.training, training_schedule::row_tasks);
  EXPECT_FALSE(passes.fused_backward);
  EXPECT_NE(describe(passes).find("(backward: two passes, "), std::string::npos)
      << describe(passes);
  // Past 512 rows, two passes for both.
  const bnorm::detail::partition many_rows = part({4, 512, 14, 14});
  EXPECT_EQ(many_rows.inference, bnorm::detail::inference_schedule::row_chunks);
  EXPECT_EQ(many_rows.training, training_schedule::two_passes);
  EXPECT_FALSE(many_rows.fused_backward);
  // Channels-first planes fuse the backward with the training.
  EXPECT_TRUE(
      plan_partition({{8, 64, 28, 28}, layout::channels_first}, {}, id, one_mib).fused_backward);
}

TEST(Schedule, BackwardColumnBlocksStreamDxOnMoreThreads) {
  // The backward's fused column blocks, shared out between cores, stream dx on more threads
  // whatever the size, one block of whole rows too; one thread keeps it cached, and so do a
  // call on the calling thread and the cached policy.
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes one_mib{1u << 20, 32u << 20};
  const auto part = [&](bnorm::tensor_shape shape, bnorm::plan_options opts) {
    return plan_partition({shape, layout::channels_last}, opts, id, one_mib);
  };
  const bnorm::detail::partition blocks = part({1, 1024, 14, 14}, {});
  EXPECT_TRUE(blocks.fused_backward);
  EXPECT_EQ(blocks.column_blocks, 4u);
  EXPECT_FALSE(blocks.serial);
  EXPECT_TRUE(blocks.stream_parallel_backward_stores);
  EXPECT_FALSE(blocks.stream_training_stores);  // one thread's dx, and training's y
  EXPECT_FALSE(blocks.stream_parallel_training_stores);
  EXPECT_NE(describe(blocks).find(" · streaming stores (backward on more threads) · "),
            std::string::npos)
      << describe(blocks);
  const bnorm::detail::partition whole_rows = part({1, 512, 14, 14}, {});
  EXPECT_TRUE(whole_rows.fused_backward);
  EXPECT_EQ(whole_rows.column_blocks, 1u);
  EXPECT_FALSE(whole_rows.serial);
  EXPECT_TRUE(whole_rows.stream_parallel_backward_stores);
  EXPECT_FALSE(whole_rows.stream_training_stores);
  for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{1, 1024, 7, 7}, {1, 256, 14, 14}}) {
    const bnorm::detail::partition serial = part(shape, {});
    EXPECT_TRUE(serial.fused_backward);
    EXPECT_TRUE(serial.serial);
    EXPECT_FALSE(serial.stream_parallel_backward_stores);
  }
  bnorm::plan_options cached;
  cached.stores = bnorm::store_policy::cached;
  EXPECT_FALSE(part({1, 1024, 14, 14}, cached).stream_parallel_backward_stores);
  // Two passes (rows too many for a block in the L2) map whole rows: dx stays cached.
  const bnorm::detail::partition two_passes = part({2, 1024, 14, 14}, {});
  EXPECT_FALSE(two_passes.fused_backward);
  EXPECT_FALSE(two_passes.stream_parallel_backward_stores);
}

TEST(Schedule, ShortPlanesFuseAsManyChannelsAsHalfAnL1Holds) {
  // Groups of 16 channels, or more where they fit in 16 KiB: a group's kernel calls cost the
  // same however many channels it holds. Groups of four 64-byte vectors of channels or more are
  // cut to whole vectors: the channels after the last take the kernels' one-channel paths.
  const bnorm::isa id = isas_under_test().front();
  const auto group = [&](bnorm::tensor_shape shape, bnorm::dtype type) {
    const bnorm::detail::partition part =
        plan_partition({shape, layout::channels_first, type}, {}, id, reference_caches);
    EXPECT_EQ(part.training, bnorm::detail::training_schedule::fused_planes);
    return part.fused_group;
  };
  EXPECT_EQ(group({1, 2048, 7, 7}, bnorm::dtype::f32), 80u);             // 16384 / 196 = 83
  EXPECT_EQ(group({1, 2048, 7, 7}, bnorm::dtype::bf16), 160u);           // 16384 / 98 = 167
  EXPECT_EQ(group({1, 2048, 7, 7}, bnorm::dtype::f64), 40u);             // 16384 / 392 = 41
  EXPECT_EQ(group({1, 1024, 14, 14}, bnorm::dtype::f32), 16384u / 784);  // 20: under 64, kept
  EXPECT_EQ(group({1, 256, 28, 28}, bnorm::dtype::f32), 16u);            // 3 KiB channels: 16
  EXPECT_EQ(group({1, 256, 56, 56}, bnorm::dtype::f32), 16u);            // 12 KiB channels: 16
  EXPECT_EQ(group({1, 64, 112, 112}, bnorm::dtype::f32), (2u << 20) / 8 / 50176);  // L2/8: 5
  const bnorm::problem seven{{1, 2048, 7, 7}, layout::channels_first};
  EXPECT_NE(describe(plan_partition(seven, {}, id, reference_caches)).find("in groups of 80"),
            std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Schedule,
    testing::Combine(testing::ValuesIn(isas_under_test()),
                     testing::Range<std::size_t>(0, sizeof(schedule_cases) /
                                                        sizeof(schedule_cases[0]))),
    [](const testing::TestParamInfo<std::tuple<bnorm::isa, std::size_t>>& info) {
      return std::string(schedule_cases[std::get<1>(info.param)].name) + "_" +
             bnorm::to_string(std::get<0>(info.param));
    });

TEST(Schedule, DescribesStoresAndThreading) {
  bnorm::plan_options opts;
  opts.stores = bnorm::store_policy::streaming;
  const bnorm::plan streamed = make_plan_or_fail({{8, 64, 28, 28}}, opts);
  EXPECT_NE(std::string(streamed.describe()).find("streaming stores"), std::string::npos);
  const bnorm::plan small = make_plan_or_fail({{2, 4}}, {});
  EXPECT_NE(std::string(small.describe()).find("calling thread"), std::string::npos);
  EXPECT_STREQ(bnorm::plan().describe(), "plan: not initialized");
}

// A plan capped at one thread says so, and names the stores that one thread makes, not the
// stores of threads it never has: a 12 MiB inference streams on one thread (from a quarter of
// a 32 MiB last-level cache) and not on more (from half).
TEST(Schedule, OneThreadPlansSayOneThread) {
  const bnorm::isa id = isas_under_test().front();
  const bnorm::detail::cache_sizes host{2u << 20, 32u << 20, false};
  const bnorm::problem prob{{48, 64, 32, 32}};
  const bnorm::detail::partition shared = plan_partition(prob, {}, id, host);
  ASSERT_TRUE(shared.stream_inference_stores);
  ASSERT_FALSE(shared.stream_parallel_inference_stores);
  const std::string shared_line = describe(shared);
  EXPECT_NE(shared_line.find(" · parallel"), std::string::npos) << shared_line;
  EXPECT_NE(shared_line.find("inference on one thread"), std::string::npos) << shared_line;
  bnorm::plan_options opts;
  opts.max_threads = 1;
  const std::string one_line = describe(plan_partition(prob, opts, id, host));
  EXPECT_NE(one_line.find(" · one thread"), std::string::npos) << one_line;
  EXPECT_EQ(one_line.find("parallel"), std::string::npos) << one_line;
  EXPECT_EQ(one_line.find("threads"), std::string::npos) << one_line;
  EXPECT_NE(one_line.find(" · streaming stores ·"), std::string::npos) << one_line;
  const bnorm::plan capped = make_plan_or_fail({{2, 4}}, opts);
  EXPECT_NE(std::string(capped.describe()).find(" · one thread"), std::string::npos);
}

}  // namespace
