// Each shape runs the schedule it is meant to cover: plan::describe() names it, so a change of
// the planner that moves a shape to another schedule fails here instead of passing unnoticed
// (the accuracy and determinism sweeps would still pass, on other code).
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "support.hpp"

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
     {256, 8, 1024},
     layout::channels_first,
     "training: two passes",
     "inference: planes in memory order"},
    {"few_wide_rows",
     {1, 2048, 7, 7},
     layout::channels_last,
     "training: fused column blocks",
     "inference: column blocks"},
    {"few_rows_of_1k_channels",
     {1, 1024, 14, 14},
     layout::channels_last,
     "training: fused column blocks",
     "inference: row chunks"},
    {"many_rows",
     {32, 64, 56, 56},
     layout::channels_last,
     "training: two passes",
     "inference: row chunks"},
    {"batch_of_vectors",
     {4096, 1024},
     layout::channels_first,
     "training: two passes",
     "inference: row chunks"},
};

class Schedule : public testing::TestWithParam<std::tuple<bnorm::isa, std::size_t>> {};

TEST_P(Schedule, ShapeRunsTheScheduleItIsMeantToCover) {
  const schedule_case& k = schedule_cases[std::get<1>(GetParam())];
  bnorm::plan_options opts;
  opts.max_isa = std::get<0>(GetParam());
  const bnorm::plan plan = make_plan_or_fail({k.shape, k.l}, opts);
  const std::string line = plan.describe();
  EXPECT_EQ(line.rfind(bnorm::to_string(plan.isa()), 0), 0u) << line;
  EXPECT_NE(line.find(k.training), std::string::npos) << line;
  EXPECT_NE(line.find(k.inference), std::string::npos) << line;
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

}  // namespace
