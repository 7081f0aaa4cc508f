// Bitwise determinism: the same input gives the same outputs and statistics for any thread cap
// (including the caller's own arena), any store policy, and on every repeated run.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <string>

#include <oneapi/tbb/task_arena.h>

#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

struct outputs {
  std::vector<float> y, mean, inv_std, running_mean, running_var, inference_y;
  bool operator==(const outputs& o) const {
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    return same(y, o.y) && same(mean, o.mean) && same(inv_std, o.inv_std) &&
           same(running_mean, o.running_mean) && same(running_var, o.running_var) &&
           same(inference_y, o.inference_y);
  }
};

outputs run(const bnorm::tensor_shape& shape, layout l, bnorm::isa isa, int threads,
            const std::vector<float>& x,
            bnorm::store_policy stores = bnorm::store_policy::automatic, bool in_place = false) {
  const geometry g(shape);
  bnorm::plan_options opts;
  opts.max_isa = isa;
  opts.max_threads = threads;
  opts.stores = stores;
  const bnorm::plan plan = make_plan_or_fail({shape, l, bnorm::dtype::f32, 1e-5}, opts);
  outputs o{std::vector<float>(x.size()), std::vector<float>(g.c),
            std::vector<float>(g.c),      std::vector<float>(g.c, 0.f),
            std::vector<float>(g.c, 1.f), std::vector<float>(x.size())};
  bnorm::training_args args;
  if (in_place) o.y = x;
  args.src = in_place ? o.y.data() : x.data();
  args.dst = o.y.data();
  args.batch_mean = out(o.mean);
  args.batch_inv_std = out(o.inv_std);
  args.running_mean = out(o.running_mean);
  args.running_var = out(o.running_var);
  EXPECT_TRUE(plan.forward_training(args).ok());
  bnorm::inference_args inf;
  inf.src = x.data();
  inf.dst = o.inference_y.data();
  inf.mean = in(o.running_mean);
  inf.var = in(o.running_var);
  EXPECT_TRUE(plan.forward_inference(inf).ok());
  return o;
}

class Determinism : public testing::TestWithParam<bnorm::isa> {};

TEST_P(Determinism, BitwiseEqualAcrossThreadCapsAndRuns) {
  const bnorm::tensor_shape shapes[] = {{2, 4},           {65536, 4},      {64, 128, 1024},
                                        {1, 256, 56, 56}, {2, 2048, 7, 7}, {3, 5, 301, 77},
                                        {2, 8, 4, 28, 28}};
  std::uint64_t salt = 0;
  for (const auto& shape : shapes) {
    const std::vector<float> x = normal_data<float>(geometry(shape).elements(), 3.0, 2.0, ++salt);
    for (layout l : {layout::channels_first, layout::channels_last}) {
      SCOPED_TRACE(shape_name(shape) + (l == layout::channels_first ? " nchw" : " nhwc"));
      const outputs serial = run(shape, l, GetParam(), 1, x);
      for (int threads : {2, 8, 0}) {
        EXPECT_TRUE(run(shape, l, GetParam(), threads, x) == serial) << "threads " << threads;
      }
      EXPECT_TRUE(run(shape, l, GetParam(), 0, x) == serial) << "repeated run";
      // Non-temporal stores change where the bits go, never what they are.
      for (auto stores : {bnorm::store_policy::streaming, bnorm::store_policy::cached}) {
        EXPECT_TRUE(run(shape, l, GetParam(), 0, x, stores) == serial)
            << "store policy " << static_cast<int>(stores);
      }
      // Inside a caller's own arena: the plan runs there and still gives the same bits.
      tbb::task_arena arena(2);
      outputs inside;
      arena.execute([&] { inside = run(shape, l, GetParam(), 0, x); });
      EXPECT_TRUE(inside == serial) << "in the caller's arena";
    }
  }
}

// In place (dst = src) on two threads, every schedule: a task that normalizes its rows must not
// overwrite values another task still reads for its statistics (row tasks, whose every task
// takes the statistics over all the rows). Repeated: a race shows only in some runs.
TEST_P(Determinism, InPlaceGivesTheSameBitsOnEveryThreadCount) {
  const bnorm::tensor_shape shapes[] = {
      {1, 2048, 7, 7}, {2, 512, 14, 14}, {1, 1024, 14, 14}, {64, 64, 32}, {8, 64, 28, 28}};
  bnorm::plan_options opts;
  opts.max_isa = GetParam();
  const bnorm::plan row_tasks =
      make_plan_or_fail({shapes[0], layout::channels_last, bnorm::dtype::f32, 1e-5}, opts);
  ASSERT_NE(std::string(row_tasks.describe()).find("row tasks, each with every channel's"),
            std::string::npos)
      << row_tasks.describe();
  std::uint64_t salt = 40;
  for (const auto& shape : shapes) {
    const std::vector<float> x = normal_data<float>(geometry(shape).elements(), 3.0, 2.0, ++salt);
    for (layout l : {layout::channels_first, layout::channels_last}) {
      SCOPED_TRACE(shape_name(shape) + (l == layout::channels_first ? " nchw" : " nhwc"));
      const outputs serial = run(shape, l, GetParam(), 1, x);
      for (int repeat = 0; repeat < 20; ++repeat) {
        const outputs parallel =
            run(shape, l, GetParam(), 2, x, bnorm::store_policy::automatic, true);
        ASSERT_TRUE(parallel == serial) << "in place, run " << repeat;
      }
    }
  }
}

// A NaN's bits, sign included, do not depend on the store policy (on SSE2, without FMA, a
// subtraction of the product in one loop and a negation and addition in another once gave NaNs
// of both signs, by the element's place in the streamed lines).
TEST_P(Determinism, NanOutputsKeepTheirBitsUnderEveryStorePolicy) {
  const bnorm::tensor_shape shape{9, 17};
  aligned_vector<float> x(9 * 17);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 7);
  x[8 * 17 + 1] = std::numeric_limits<float>::quiet_NaN();  // channel 1
  for (layout l : {layout::channels_first, layout::channels_last}) {
    const auto y_of = [&](bnorm::store_policy stores) {
      bnorm::plan_options opts;
      opts.max_isa = GetParam();
      opts.stores = stores;
      opts.update_running_stats = false;
      const bnorm::plan plan = make_plan_or_fail({shape, l}, opts);
      aligned_vector<float> y(x.size(), -7.0f);
      bnorm::training_args a;
      a.src = x.data();
      a.dst = y.data();
      EXPECT_TRUE(plan.forward_training(a).ok());
      return std::vector<float>(y.begin(), y.end());
    };
    const std::vector<float> cached = y_of(bnorm::store_policy::cached);
    for (auto stores : {bnorm::store_policy::streaming, bnorm::store_policy::automatic}) {
      EXPECT_EQ(std::memcmp(y_of(stores).data(), cached.data(), cached.size() * sizeof(float)), 0)
          << (l == layout::channels_first ? "nchw" : "nhwc") << ", store policy "
          << static_cast<int>(stores);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Determinism, testing::ValuesIn(isas_under_test()),
                         isa_param_name);

}  // namespace
