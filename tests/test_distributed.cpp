// Distributed training's steps (bnorm/distributed.hpp) with the ranks simulated in one process:
// a batch split along N, each share on its own plan, the blocks exchanged by copying. The
// results must be those of one call over the whole batch, within the accuracy targets against
// a float64 reference, and the same bits on every rank. tests/mpi/ runs the same over MPI.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

struct split_case {
  const char* name;
  bnorm::tensor_shape whole;
  std::vector<std::int64_t> batch_of_rank;  // N of each rank, summing to whole[0]
  layout l;
  double mean;  // of the data, whose std is 1
};

const split_case split_cases[] = {
    {"planes_unequal_empty_rank", {10, 6, 5, 7}, {3, 0, 7}, layout::channels_first, 0.5},
    {"rows_unequal_empty_rank", {10, 6, 5, 7}, {3, 0, 7}, layout::channels_last, 0.5},
    {"one_value_a_rank", {3, 40}, {1, 1, 1}, layout::channels_first, -2.0},
    {"mean_1e5_std", {9, 5, 33}, {4, 5}, layout::channels_first, 1e5},
    {"mean_1e5_std_rows", {9, 5, 33}, {2, 4, 3}, layout::channels_last, 1e5},
    {"fused_column_blocks", {2, 2048, 7, 7}, {1, 1}, layout::channels_last, 3.0},
    {"two_pass_planes", {6, 3, 40000}, {2, 4}, layout::channels_first, 1.0},
    // Row tasks over one block of every channel (392 KiB a rank), and over the two passes'
    // units (640 KiB a rank: rows too narrow for column blocks, too many bytes for one).
    {"row_tasks_one_block", {2, 512, 14, 14}, {1, 1}, layout::channels_last, -1.5},
    {"row_tasks_two_pass_units", {640, 512}, {320, 320}, layout::channels_last, 2.0},
};

/// One rank's share: its plan and its slices of the whole batch's tensors, and its own
/// per-channel outputs.
template <class T>
struct rank_share {
  bnorm::plan plan;
  std::size_t offset = 0, elements = 0;
  std::vector<T> mean, inv_std, running_mean, running_var, dgamma, dbeta;
  std::int64_t tracked = 0;
};

template <class T>
struct split_run {
  std::vector<T> y, dx;
  std::vector<rank_share<T>> ranks;
};

/// The whole distributed step (forward, then backward) over the ranks of `k`, as an engine
/// with its own transport runs it.
template <class T>
split_run<T> run_split(const split_case& k, bnorm::isa id, int threads, const std::vector<T>& x,
                       const std::vector<T>& dy, const std::vector<T>& gamma,
                       const std::vector<T>& beta) {
  const geometry whole(k.whole);
  const std::size_t channels = whole.c, block = bnorm::statistics_exchange_size(channels);
  const std::size_t ranks = k.batch_of_rank.size();
  split_run<T> run;
  run.y.assign(x.size(), T(0));
  run.dx.assign(x.size(), T(0));
  run.ranks.resize(ranks);
  std::size_t offset = 0;
  for (std::size_t r = 0; r < ranks; ++r) {
    std::vector<std::int64_t> dims;
    for (std::size_t d = 0; d < k.whole.rank(); ++d) dims.push_back(k.whole[d]);
    dims[0] = k.batch_of_rank[r];
    rank_share<T>& share = run.ranks[r];
    bnorm::plan_options opts;
    opts.max_isa = id;
    opts.max_threads = threads;
    share.plan = make_plan_or_fail(
        {bnorm::tensor_shape(dims.data(), dims.size()), k.l, dtype_of<T>()}, opts);
    share.offset = offset;
    share.elements = static_cast<std::size_t>(dims[0]) * channels * whole.spatial;
    offset += share.elements;
    share.mean.assign(channels, T(0));
    share.inv_std.assign(channels, T(0));
    share.running_mean.assign(channels, T(0));
    share.running_var.assign(channels, T(1));
    share.dgamma.assign(channels, T(0));
    share.dbeta.assign(channels, T(0));
  }
  const auto forward_args = [&](rank_share<T>& share) {
    bnorm::training_args a;
    a.src = x.data() + share.offset;
    a.dst = run.y.data() + share.offset;
    a.scale = in(gamma);
    a.shift = in(beta);
    a.batch_mean = out(share.mean);
    a.batch_inv_std = out(share.inv_std);
    a.running_mean = out(share.running_mean);
    a.running_var = out(share.running_var);
    a.num_batches_tracked = &share.tracked;
    return a;
  };
  std::vector<double> blocks(ranks * block), merged(block);
  for (std::size_t r = 0; r < ranks; ++r) {
    const bnorm::status s =
        run.ranks[r].plan.local_statistics(forward_args(run.ranks[r]), &blocks[r * block], block);
    EXPECT_TRUE(s) << s.message();
  }
  EXPECT_TRUE(bnorm::merge_statistics(channels, blocks.data(), ranks, merged.data(), block));
  for (rank_share<T>& share : run.ranks) {
    const bnorm::status s =
        share.plan.forward_training_merged(forward_args(share), merged.data(), block);
    EXPECT_TRUE(s) << s.message();
  }
  const auto backward_args = [&](rank_share<T>& share) {
    bnorm::backward_args b;
    b.src = x.data() + share.offset;
    b.diff_dst = dy.data() + share.offset;
    b.diff_src = run.dx.data() + share.offset;
    b.scale = in(gamma);
    b.mean = in(share.mean);
    b.inv_std = in(share.inv_std);
    b.diff_scale = out(share.dgamma);
    b.diff_shift = out(share.dbeta);
    return b;
  };
  std::vector<double> sums(ranks * block), summed(block);
  for (std::size_t r = 0; r < ranks; ++r) {
    const bnorm::status s =
        run.ranks[r].plan.local_gradient_sums(backward_args(run.ranks[r]), &sums[r * block], block);
    EXPECT_TRUE(s) << s.message();
  }
  EXPECT_TRUE(bnorm::sum_gradient_exchanges(channels, sums.data(), ranks, summed.data(), block));
  for (std::size_t r = 0; r < ranks; ++r) {
    rank_share<T>& share = run.ranks[r];
    const bnorm::status s = share.plan.backward_training_merged(
        backward_args(share), &sums[r * block], summed.data(), block);
    EXPECT_TRUE(s) << s.message();
  }
  return run;
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

class Distributed : public testing::TestWithParam<std::tuple<bnorm::isa, std::size_t>> {
 protected:
  template <class T>
  void check(double tolerance) {
    const split_case& k = split_cases[std::get<1>(GetParam())];
    const bnorm::isa id = std::get<0>(GetParam());
    const geometry g(k.whole);
    const std::vector<T> x = normal_data<T>(g.elements(), k.mean, 1.0, 71);
    const std::vector<T> dy = normal_data<T>(g.elements(), 0.0, 1.0, 72);
    const std::vector<T> gamma = normal_data<T>(g.c, 1.0, 0.5, 73);
    const std::vector<T> beta = normal_data<T>(g.c, 0.0, 1.0, 74);
    const split_run<T> run = run_split<T>(k, id, 0, x, dy, gamma, beta);

    // Every rank holds the same statistics, to the bit.
    for (const rank_share<T>& share : run.ranks) {
      EXPECT_TRUE(same_bits(share.mean, run.ranks[0].mean));
      EXPECT_TRUE(same_bits(share.inv_std, run.ranks[0].inv_std));
      EXPECT_TRUE(same_bits(share.running_mean, run.ranks[0].running_mean));
      EXPECT_TRUE(same_bits(share.running_var, run.ranks[0].running_var));
      EXPECT_EQ(share.tracked, 1);
    }
    // Those of one call over the whole batch, against float64.
    const reference_stats ref = reference_moments(x, k.whole, k.l);
    const std::vector<double> y_ref =
        reference_normalize(x, k.whole, k.l, ref.mean, ref.variance, 1e-5, gamma, beta);
    double worst_y = 0.0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      keep_worst(worst_y, std::fabs(run.y[i] - y_ref[i]) / std::max(1.0, std::fabs(y_ref[i])));
    }
    EXPECT_LE(worst_y, tolerance);
    const double count = static_cast<double>(g.n * g.spatial);
    const rank_share<T>& any = run.ranks.back();
    for (std::size_t c = 0; c < g.c; ++c) {
      const double inv = 1.0 / std::sqrt(ref.variance[c] + 1e-5);
      EXPECT_NEAR(any.inv_std[c], inv, tolerance * inv) << c;
      EXPECT_NEAR(any.mean[c], ref.mean[c], tolerance * std::max(1.0, std::fabs(ref.mean[c])));
      const double running_var = 0.9 + 0.1 * ref.variance[c] * count / (count - 1.0);
      EXPECT_NEAR(any.running_var[c], running_var, tolerance * running_var) << c;
    }
    // The gradients of the whole batch: dx everywhere, dγ and dβ summed over the ranks.
    std::vector<double> inv(g.c);
    for (std::size_t c = 0; c < g.c; ++c) inv[c] = static_cast<double>(any.inv_std[c]);
    const reference_gradients grads =
        reference_backward(x, dy, k.whole, k.l, any.mean, inv, gamma, true);
    // dx = dy·a + (x − mean)·b + e, each term rounded in T: the error is bounded by the terms'
    // magnitude, which channels of few values (three, "one_value_a_rank") make far larger
    // than dx itself. A bound by max |dx| failed there on 1 random seed in ~10,000.
    const double count_all = static_cast<double>(g.n * g.spatial);
    double worst_dx = 0.0;
    for (std::size_t in = 0; in < g.n; ++in) {
      for (std::size_t c = 0; c < g.c; ++c) {
        const double a = static_cast<double>(gamma[c]) * inv[c];
        const double b = a * inv[c] * grads.dgamma[c] / count_all;
        const double e = a * grads.dbeta[c] / count_all;
        for (std::size_t is = 0; is < g.spatial; ++is) {
          const std::size_t i = g.offset(k.l, in, c, is);
          const double d = static_cast<double>(x[i]) - static_cast<double>(any.mean[c]);
          const double terms = std::fabs(dy[i] * a) + std::fabs(d * b) + std::fabs(e);
          keep_worst(worst_dx, std::fabs(run.dx[i] - grads.dx[i]) / std::max(1.0, terms));
        }
      }
    }
    EXPECT_LE(worst_dx, tolerance);
    for (std::size_t c = 0; c < g.c; ++c) {
      double dgamma = 0.0, dbeta = 0.0;
      for (const rank_share<T>& share : run.ranks) {
        dgamma += share.dgamma[c];
        dbeta += share.dbeta[c];
      }
      EXPECT_NEAR(dgamma, grads.dgamma[c], tolerance * grads.abs_dgamma[c]) << c;
      EXPECT_NEAR(dbeta, grads.dbeta[c], tolerance * grads.abs_dbeta[c]) << c;
    }
    // The same bits for one thread per rank.
    const split_run<T> serial = run_split<T>(k, id, 1, x, dy, gamma, beta);
    EXPECT_TRUE(same_bits(serial.y, run.y));
    EXPECT_TRUE(same_bits(serial.dx, run.dx));
    EXPECT_TRUE(same_bits(serial.ranks[0].running_var, run.ranks[0].running_var));
    EXPECT_TRUE(same_bits(serial.ranks[0].dgamma, run.ranks[0].dgamma));
  }
};

TEST_P(Distributed, SplitBatchMatchesTheWholeBatchF32) {
  check<float>(1e-6);
}

TEST_P(Distributed, SplitBatchMatchesTheWholeBatchF64) {
  // float64 data around 1e5 carries ~1e-11 of rounding in every x − mean, as in one process.
  check<double>(1e-12 * std::max(1.0, std::fabs(split_cases[std::get<1>(GetParam())].mean) / 1e3));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, Distributed,
    testing::Combine(testing::ValuesIn(isas_under_test()),
                     testing::Range<std::size_t>(0, std::size(split_cases))),
    [](const testing::TestParamInfo<std::tuple<bnorm::isa, std::size_t>>& info) {
      return std::string(split_cases[std::get<1>(info.param)].name) + "_" +
             bnorm::to_string(std::get<0>(info.param));
    });

// Each rank sums its share before the exchange, and those sums take the same rule as one
// call's: subnormal dy times subnormal x − mean round every float32 product to zero, and with a
// variance of 0 and eps 1e-200 (an inv_std of 1e100) the zero sums are summed again in float64.
// dγ summed over the ranks is the whole batch's within 1e-6 of Σ|dy·x̂| (see
// Backward.ProductsThatAllRoundToZero for one call).
TEST(DistributedBackward, ProductsThatAllRoundToZero) {
  for (const bnorm::isa id : isas_under_test()) {
    for (const layout l : {layout::channels_first, layout::channels_last}) {
      const bnorm::tensor_shape whole{16, 4, 9}, half{8, 4, 9};
      const geometry g(whole);
      std::vector<float> x = normal_data<float>(g.elements(), 0.0, 4.0, 52);
      std::vector<float> dy = normal_data<float>(g.elements(), 0.0, 4.0, 53);
      for (float& v : x) v = std::round(v) * std::numeric_limits<float>::denorm_min();
      for (float& v : dy) v = std::round(v) * std::numeric_limits<float>::denorm_min();
      const std::vector<float> gamma(g.c, 1.0f), mean(g.c, 0.0f), var(g.c, 0.0f);
      std::vector<float> dx(x.size());
      std::vector<std::vector<float>> dgamma(2, std::vector<float>(g.c));
      std::vector<std::vector<float>> dbeta(2, std::vector<float>(g.c));
      bnorm::plan_options opts;
      opts.max_isa = id;
      const bnorm::plan plan = make_plan_or_fail({half, l, bnorm::dtype::f32, 1e-200}, opts);
      const std::size_t block = bnorm::gradient_exchange_size(g.c), share = x.size() / 2;
      const auto args = [&](std::size_t r) {
        bnorm::backward_args b;
        b.src = x.data() + r * share;
        b.diff_dst = dy.data() + r * share;
        b.diff_src = dx.data() + r * share;
        b.scale = in(gamma);
        b.mean = in(mean);
        b.var = in(var);
        b.diff_scale = out(dgamma[r]);
        b.diff_shift = out(dbeta[r]);
        return b;
      };
      std::vector<double> sums(2 * block), summed(block);
      for (std::size_t r = 0; r < 2; ++r) {
        const bnorm::status s = plan.local_gradient_sums(args(r), &sums[r * block], block);
        ASSERT_TRUE(s) << s.message();
      }
      ASSERT_TRUE(bnorm::sum_gradient_exchanges(g.c, sums.data(), 2, summed.data(), block));
      for (std::size_t r = 0; r < 2; ++r) {
        const bnorm::status s =
            plan.backward_training_merged(args(r), &sums[r * block], summed.data(), block);
        ASSERT_TRUE(s) << s.message();
      }
      // The halves along N are the whole batch's first and second eight samples in either
      // layout, so the reference takes the whole tensors.
      const std::vector<double> inv(g.c, 1e100);
      const reference_gradients ref = reference_backward(x, dy, whole, l, mean, inv, gamma, true);
      const std::string name =
          std::string(bnorm::to_string(id)) + (l == layout::channels_first ? " nchw" : " nhwc");
      for (std::size_t c = 0; c < g.c; ++c) {
        ASSERT_GT(ref.abs_dgamma[c], 1e6) << name;
        EXPECT_NEAR(double(dgamma[0][c]) + double(dgamma[1][c]), ref.dgamma[c],
                    1e-6 * ref.abs_dgamma[c])
            << name << " channel " << c;
      }
    }
  }
}

TEST(DistributedMerge, ChanMergeInRankOrderMatchesThePooledMoments) {
  // Three ranks of 2, 0 and 3 values of one channel: {1, 3}, {}, {10, 11, 12}.
  const double blocks[] = {2, 2.0, 1.0, 0, 0.0, 0.0, 3, 11.0, 2.0 / 3.0};
  double merged[3];
  ASSERT_TRUE(bnorm::merge_statistics(1, blocks, 3, merged, 3));
  EXPECT_EQ(merged[0], 5.0);
  EXPECT_NEAR(merged[1], 37.0 / 5.0, 1e-15);
  // Σ(x − 7.4)² / 5 over {1, 3, 10, 11, 12}.
  EXPECT_NEAR(merged[2], (40.96 + 19.36 + 6.76 + 12.96 + 21.16) / 5.0, 1e-13);
  double summed[3];
  const double sums[] = {2, 1.0, -1.0, 3, 0.5, 4.0};
  ASSERT_TRUE(bnorm::sum_gradient_exchanges(1, sums, 2, summed, 3));
  EXPECT_EQ(summed[0], 5.0);
  EXPECT_EQ(summed[1], 1.5);
  EXPECT_EQ(summed[2], 3.0);
}

// Ranks whose values hold an infinity of one sign have that infinite mean (as one process
// has): merged, the same infinity, where δ = inf − inf made it NaN; of both signs NaN; with a
// finite mean the infinity. The variance is NaN wherever an infinity is.
TEST(DistributedMerge, InfiniteMeansMergeAsThePooledValuesDo) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  struct merge_case {
    double mean_a, mean_b, merged;
  };
  for (const merge_case k : {merge_case{inf, inf, inf}, merge_case{-inf, -inf, -inf},
                             merge_case{inf, 2.0, inf}, merge_case{-3.0, -inf, -inf}}) {
    const double variance_a = std::isinf(k.mean_a) ? nan : 1.0;
    const double variance_b = std::isinf(k.mean_b) ? nan : 1.0;
    const double blocks[] = {2, k.mean_a, variance_a, 3, k.mean_b, variance_b};
    double merged[3];
    ASSERT_TRUE(bnorm::merge_statistics(1, blocks, 2, merged, 3));
    EXPECT_EQ(merged[1], k.merged) << k.mean_a << " " << k.mean_b;
    EXPECT_TRUE(std::isnan(merged[2]));
  }
  const double both_signs[] = {2, inf, nan, 3, -inf, nan};
  double merged[3];
  ASSERT_TRUE(bnorm::merge_statistics(1, both_signs, 2, merged, 3));
  EXPECT_TRUE(std::isnan(merged[1]));
}

// A rank's batch of one value per channel, or of none, still trains in a distributed step: its
// plan's training_scratch_size() is the scratch those steps take, and enough.
TEST(DistributedScratch, TheTrainingSizeServesEveryRanksBatch) {
  constexpr std::size_t c = 3000;  // per-channel arrays beyond the stack's scratch
  for (const std::int64_t n : {1, 0}) {
    SCOPED_TRACE("batch " + std::to_string(n));
    const bnorm::plan plan = make_plan_or_fail({{n, std::int64_t(c)}, layout::channels_last}, {});
    const std::size_t bytes = plan.training_scratch_size();
    ASSERT_GT(bytes, 0u);
    EXPECT_GE(plan.scratch_size(), bytes);
    aligned_vector<unsigned char> scratch(bytes);
    std::vector<float> x(n * c, 2.0f), y(n * c, 7.0f), mean(c), inv(c), rm(c, 0.0f), rv(c, 1.0f);
    bnorm::training_args a;
    a.src = n ? x.data() : nullptr;
    a.dst = n ? y.data() : nullptr;
    a.batch_mean = out(mean);
    a.batch_inv_std = out(inv);
    a.running_mean = out(rm);
    a.running_var = out(rv);
    a.scratch = scratch.data();
    a.scratch_size = bytes;
    std::vector<double> block(bnorm::statistics_exchange_size(c));
    bnorm::status s = plan.local_statistics(a, block.data(), block.size());
    ASSERT_TRUE(s) << s.message();
    EXPECT_EQ(block[0], static_cast<double>(n));
    // The whole batch: this rank's values and another rank's 3 values of 4 per channel.
    std::vector<double> merged(block.size());
    merged[0] = static_cast<double>(n) + 3.0;
    for (std::size_t k = 0; k < c; ++k) {
      merged[1 + k] = 4.0;
      merged[1 + c + k] = 0.5;
    }
    s = plan.forward_training_merged(a, merged.data(), merged.size());
    ASSERT_TRUE(s) << s.message();
    EXPECT_FLOAT_EQ(mean[0], 4.0f);
    EXPECT_FLOAT_EQ(rm[0], 0.4f);  // 0.9 · 0 + 0.1 · 4

    // Less is refused by the local step, an empty rank's too, as the merged step refuses it:
    // the empty rank's local step accepted it, and only its merged step refused, after the
    // exchange, while the other ranks committed their step.
    a.scratch_size = 64;
    std::vector<double> untouched(block.size(), 7.0);
    s = plan.local_statistics(a, untouched.data(), untouched.size());
    EXPECT_EQ(std::string(s.message()), "scratch: expected at least " + std::to_string(bytes) +
                                            " bytes (plan::training_scratch_size()), got 64");
    EXPECT_EQ(untouched, std::vector<double>(block.size(), 7.0));
  }
}

TEST(DistributedErrors, RefusedBeforeAnythingIsWritten) {
  const bnorm::plan plan = make_plan_or_fail({{2, 3, 4}}, {});
  std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 5), y(24, 7.0f);
  std::vector<float> mean(3, 7.0f), inv(3, 7.0f), rm(3, 7.0f), rv(3, 7.0f);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = y.data();
  a.batch_mean = out(mean);
  a.batch_inv_std = out(inv);
  a.running_mean = out(rm);
  a.running_var = out(rv);
  std::vector<double> block(bnorm::statistics_exchange_size(3), 9.0);
  const auto untouched = [&] {
    for (const auto* v : {&y, &mean, &inv, &rm, &rv}) {
      for (const float f : *v) EXPECT_EQ(f, 7.0f);
    }
  };
  // The local step checks what the merged one will need, and writes only its block.
  bnorm::training_args no_running = a;
  no_running.running_var = {};
  bnorm::status s = plan.local_statistics(no_running, block.data(), block.size());
  EXPECT_EQ(s.code(), bnorm::status_code::invalid_argument);
  EXPECT_NE(std::string(s.message()).find("running_var"), std::string::npos) << s.message();
  for (const double v : block) EXPECT_EQ(v, 9.0);
  s = plan.local_statistics(a, block.data(), block.size() - 1);
  EXPECT_NE(std::string(s.message()).find("exchange: expected 7 doubles"), std::string::npos)
      << s.message();
  ASSERT_TRUE(plan.local_statistics(a, block.data(), block.size()));
  EXPECT_EQ(block[0], 8.0);
  untouched();
  // A merged count below this rank's own, or of one value in all, is refused.
  std::vector<double> merged = block;
  merged[0] = 4.0;
  s = plan.forward_training_merged(a, merged.data(), merged.size());
  EXPECT_NE(std::string(s.message()).find("merged[0]: expected a count"), std::string::npos)
      << s.message();
  untouched();
  merged = block;
  merged[5] = -0.25;  // channel 1's variance
  s = plan.forward_training_merged(a, merged.data(), merged.size());
  EXPECT_NE(std::string(s.message())
                .find("merged[5]: expected channel 1's variance, >= 0 (a block of "
                      "merge_statistics), got -0.25"),
            std::string::npos)
      << s.message();
  untouched();
  const bnorm::plan one = make_plan_or_fail({{1, 3}}, {});
  std::vector<float> x1(3, 1.0f), y1(3, 7.0f);
  bnorm::training_args a1 = a;
  a1.src = x1.data();
  a1.dst = y1.data();
  std::vector<double> block1(7);
  ASSERT_TRUE(one.local_statistics(a1, block1.data(), block1.size()));
  EXPECT_EQ(block1[0], 1.0);
  s = one.forward_training_merged(a1, block1.data(), block1.size());
  EXPECT_NE(std::string(s.message()).find("Expected more than 1 value per channel"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(y1[0], 7.0f);
  untouched();
  // Backward: the merged step wants this rank's own block back.
  std::vector<float> dy(24, 1.0f), dx(24, 7.0f);
  bnorm::backward_args b;
  b.src = x.data();
  b.diff_dst = dy.data();
  b.diff_src = dx.data();
  b.mean = in(mean);
  b.inv_std = in(inv);
  std::vector<double> sums(7, 9.0);
  // The local step's block carries Σdy·(x − mean) for every rank's dx: a rank that asks for
  // dβ alone must still give x and the statistics.
  bnorm::backward_args dbeta_only;
  std::vector<float> db(3, 7.0f);
  dbeta_only.diff_dst = dy.data();
  dbeta_only.diff_shift = out(db);
  s = plan.local_gradient_sums(dbeta_only, sums.data(), sums.size());
  EXPECT_NE(std::string(s.message())
                .find("src: expected 24 elements of shape [2, 3, 4], got a null pointer (required "
                      "by local_gradient_sums: its block carries Σdy·(x − mean) for every rank's "
                      "dx)"),
            std::string::npos)
      << s.message();
  dbeta_only.src = x.data();
  s = plan.local_gradient_sums(dbeta_only, sums.data(), sums.size());
  EXPECT_NE(std::string(s.message()).find("inv_std or var: expected 3 values, got a null pointer"),
            std::string::npos)
      << s.message();
  dbeta_only.inv_std = in(inv);
  s = plan.local_gradient_sums(dbeta_only, sums.data(), sums.size());
  EXPECT_NE(std::string(s.message()).find("mean: expected 3 values, got a null pointer"),
            std::string::npos)
      << s.message();
  for (const double v : sums) EXPECT_EQ(v, 9.0);
  for (const float f : db) EXPECT_EQ(f, 7.0f);
  // A null block is the local step's own `exchange` (it was named as the merged step's `local`;
  // found in review).
  s = plan.local_gradient_sums(b, nullptr, sums.size());
  EXPECT_NE(std::string(s.message())
                .find("exchange: expected 7 doubles (1 + 2 × 3 channels), got a null pointer of "
                      "size 7"),
            std::string::npos)
      << s.message();
  for (const float f : dx) EXPECT_EQ(f, 7.0f);
  ASSERT_TRUE(plan.local_gradient_sums(b, sums.data(), sums.size()));
  for (const float f : dx) EXPECT_EQ(f, 7.0f);
  std::vector<double> wrong = sums;
  wrong[0] = 3.0;
  s = plan.backward_training_merged(b, wrong.data(), sums.data(), sums.size());
  EXPECT_NE(std::string(s.message()).find("local[0]: expected this rank's count"),
            std::string::npos)
      << s.message();
  for (const float f : dx) EXPECT_EQ(f, 7.0f);
  s = bnorm::merge_statistics(3, block.data(), 0, merged.data(), merged.size());
  EXPECT_NE(std::string(s.message()).find("0 ranks"), std::string::npos) << s.message();
}

// Blocks no rank's local_statistics writes are refused, merged untouched: a count that is no
// whole number (two such counts summed to a whole one, and the merged step ran), a negative
// variance (hidden by the other ranks' in the merge), and more ranks than memory holds.
TEST(Distributed, MergeRefusesBlocksNoRankWrites) {
  const std::vector<double> good = {1.5, 0.0, -0.5, 2.5, 4.0, 1.0};  // counts 1.5 and 2.5
  std::vector<double> merged(3, 7.0);
  bnorm::status s = bnorm::merge_statistics(1, good.data(), 2, merged.data(), merged.size());
  EXPECT_NE(std::string(s.message())
                .find("blocks[0]: expected rank 0's count of values per channel, a whole number "
                      ">= 0, got 1.5"),
            std::string::npos)
      << s.message();
  const std::vector<double> negative = {4.0, 1.0, 2.0, 4.0, 1.0, -3.0};
  s = bnorm::merge_statistics(1, negative.data(), 2, merged.data(), merged.size());
  EXPECT_NE(std::string(s.message())
                .find("blocks[5]: expected rank 1's variance of channel 0, >= 0, got -3"),
            std::string::npos)
      << s.message();
  s = bnorm::merge_statistics(0, negative.data(), SIZE_MAX / 4, merged.data(), 1);
  EXPECT_NE(std::string(s.message()).find("channels: expected blocks that fit in memory"),
            std::string::npos)
      << s.message();
  EXPECT_EQ(merged, std::vector<double>(3, 7.0));
  // A NaN variance carries through, as one call's NaN data does; gradient sums may be negative.
  const std::vector<double> nan_variance = {4.0, 1.0, NAN, 4.0, 1.0, 2.0};
  EXPECT_TRUE(bnorm::merge_statistics(1, nan_variance.data(), 2, merged.data(), merged.size()));
  EXPECT_TRUE(std::isnan(merged[2]));
  EXPECT_TRUE(bnorm::sum_gradient_exchanges(1, negative.data(), 2, merged.data(), merged.size()));
  EXPECT_EQ(merged[2], -1.0);
  // Counts beyond 2^53 in total would round: refused, whichever merge.
  const std::vector<double> many = {9007199254740992.0, 0.0, 0.0, 1.0, 0.0, 0.0};
  for (const bool statistics : {true, false}) {
    merged.assign(3, 7.0);
    s = statistics ? bnorm::merge_statistics(1, many.data(), 2, merged.data(), merged.size())
                   : bnorm::sum_gradient_exchanges(1, many.data(), 2, merged.data(), 3);
    EXPECT_NE(std::string(s.message())
                  .find("blocks[3]: expected counts summing to at most 2^53 over the ranks, got "
                        "rank 1's 1 on top of the 9007199254740992 before it"),
              std::string::npos)
        << s.message();
    EXPECT_EQ(merged, std::vector<double>(3, 7.0));
  }
  // The sizes say 0 where 1 + 2C does not fit: no size that wrapped around.
  EXPECT_EQ(bnorm::statistics_exchange_size(SIZE_MAX / 2), SIZE_MAX);
  EXPECT_EQ(bnorm::statistics_exchange_size(SIZE_MAX / 2 + 1), 0u);
  EXPECT_EQ(bnorm::gradient_exchange_size(std::size_t{1} << 63), 0u);
}

// Every rank empty: one step over an empty batch, as forward_training's (a step counted, the
// running statistics left alone); one value in all is refused as one call refuses it.
TEST(Distributed, EveryRankEmptyIsAStepOfAnEmptyBatch) {
  const bnorm::plan plan = make_plan_or_fail({{0, 3, 4}}, {});
  std::vector<float> rm(3, 0.5f), rv(3, 2.0f), mean(3, 7.0f);
  std::int64_t tracked = 4;
  bnorm::training_args a;
  a.running_mean = out(rm);
  a.running_var = out(rv);
  a.batch_mean = out(mean);
  a.num_batches_tracked = &tracked;
  std::vector<double> blocks(2 * bnorm::statistics_exchange_size(3)), merged(7);
  ASSERT_TRUE(plan.local_statistics(a, blocks.data(), 7));
  ASSERT_TRUE(plan.local_statistics(a, blocks.data() + 7, 7));
  ASSERT_TRUE(bnorm::merge_statistics(3, blocks.data(), 2, merged.data(), merged.size()));
  const bnorm::status s = plan.forward_training_merged(a, merged.data(), merged.size());
  ASSERT_TRUE(s) << s.message();
  EXPECT_EQ(tracked, 5);
  EXPECT_EQ(rm, std::vector<float>(3, 0.5f));
  EXPECT_EQ(rv, std::vector<float>(3, 2.0f));
  EXPECT_EQ(mean, std::vector<float>(3, 7.0f));
}

// float64 ranks whose whole batch has a variance the block cannot carry: where δ² alone
// overflowed, the merge now gives it; beyond float64's range, or below its normal range with
// eps 0, the merged forward refuses it (one call over the batch would scale its sums) and
// writes nothing.
TEST(Distributed, MergedVariancesBeyondTheBlocksAreRefused) {
  const auto run = [](double value, double epsilon, double* variance_out) {
    const bnorm::plan plan =
        make_plan_or_fail({{2, 1}, layout::channels_first, bnorm::dtype::f64, epsilon}, {});
    // Rank 0 holds +value twice, rank 1 -value twice: mean 0, variance value².
    std::vector<double> blocks = {2.0, value, 0.0, 2.0, -value, 0.0}, merged(3);
    EXPECT_TRUE(bnorm::merge_statistics(1, blocks.data(), 2, merged.data(), 3));
    *variance_out = merged[2];
    const std::vector<double> x = {value, value};
    std::vector<double> y(2, 7.0), rm(1, 7.0), rv(1, 7.0);
    bnorm::training_args a;
    a.src = x.data();
    a.dst = y.data();
    a.running_mean = out(rm);
    a.running_var = out(rv);
    const bnorm::status s = plan.forward_training_merged(a, merged.data(), merged.size());
    if (!s) {
      EXPECT_EQ(y, std::vector<double>(2, 7.0));
      EXPECT_EQ(rm, std::vector<double>(1, 7.0));
      EXPECT_EQ(rv, std::vector<double>(1, 7.0));
    } else {
      const long double v = value;  // long double: v² neither overflows nor underflows
      const double want = static_cast<double>(v / std::sqrt(v * v + epsilon));
      EXPECT_NEAR(y[0], want, 1e-12 * want) << value;
    }
    return std::string(s.message());
  };
  double variance = 0.0;
  EXPECT_EQ(run(1.2e154, 1e-5, &variance), "");  // δ² = 5.8e308, the variance 1.44e308
  EXPECT_DOUBLE_EQ(variance, 1.44e308);
  EXPECT_NE(run(1e155, 1e-5, &variance)
                .find("merged[2]: expected channel 0's variance within "
                      "float64's normal range, got inf"),
            std::string::npos);
  EXPECT_NE(run(1.2e-165, 0.0, &variance)
                .find("merged[2]: expected channel 0's variance within float64's normal range "
                      "(eps is 0), got 5e-324"),
            std::string::npos);
  EXPECT_EQ(run(1.2e-165, 1e-300, &variance), "") << "eps outweighs what the variance lost";
  // Means of ±1e308: δ overflows, the merged mean (0) does not; the variance is beyond the range.
  EXPECT_NE(run(1e308, 1e-5, &variance).find("got inf"), std::string::npos);
  EXPECT_EQ(variance, INFINITY);
  // A constant channel (variance exactly 0) with eps 0 is what one call takes: NaN outputs.
  const bnorm::plan plan =
      make_plan_or_fail({{2, 1}, layout::channels_first, bnorm::dtype::f64, 0.0}, {});
  std::vector<double> blocks = {2.0, 5.0, 0.0, 2.0, 5.0, 0.0}, merged(3);
  ASSERT_TRUE(bnorm::merge_statistics(1, blocks.data(), 2, merged.data(), 3));
  EXPECT_EQ(merged[2], 0.0);
  const std::vector<double> x = {5.0, 5.0};
  std::vector<double> y(2, 7.0), rm(1, 0.0), rv(1, 1.0);
  bnorm::training_args a;
  a.src = x.data();
  a.dst = y.data();
  a.running_mean = out(rm);
  a.running_var = out(rv);
  const bnorm::status s = plan.forward_training_merged(a, merged.data(), merged.size());
  ASSERT_TRUE(s) << s.message();
  EXPECT_TRUE(std::isnan(y[0]));
}

}  // namespace
