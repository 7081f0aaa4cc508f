// An allocation failure inside a call returns out_of_memory and writes nothing. This binary
// replaces operator new (replaced_new.hpp) so that it can fail on demand.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "replaced_new.hpp"
#include "support.hpp"

namespace {
std::atomic<bool> fail_allocations{false};
std::atomic<bool> fail_throwing_new{false};
std::atomic<int> throwing_new_countdown{0};  // > 0: the allocation that takes it to 0 fails
}  // namespace

// The throwing new, for the module API's vectors (replaced_new.hpp).
bool fail_this_allocation(std::size_t) {
  return fail_throwing_new.load() ||
         (throwing_new_countdown.load() > 0 && --throwing_new_countdown == 0);
}

// The nothrow new, which a call's scratch comes from (replaced_new.hpp).
bool fail_this_nothrow_allocation(std::size_t) {
  return fail_allocations.load();
}

namespace {

using namespace bnorm_test;

TEST(OutOfMemory, ScratchAllocationFailureWritesNothing) {
  for (bnorm::layout l : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
    const bnorm::tensor_shape shape{64, 1000, 3};
    const geometry g(shape);
    const bnorm::plan plan = make_plan_or_fail({shape, l}, {});
    ASSERT_GT(plan.scratch_size(), 4096u) << "the test needs a heap-allocated scratch";
    const std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 1);
    std::vector<float> y(x.size(), -5.f), mean(g.c, 0.25f), var(g.c, 0.75f);
    std::int64_t tracked = 3;
    bnorm::training_args args;
    args.src = x.data();
    args.dst = y.data();
    args.running_mean = out(mean);
    args.running_var = out(var);
    args.num_batches_tracked = &tracked;

    fail_allocations = true;
    const bnorm::status s = plan.forward_training(args);
    fail_allocations = false;
    EXPECT_EQ(s.code(), bnorm::status_code::out_of_memory);
    EXPECT_NE(std::strstr(s.message(), "scratch: could not allocate"), nullptr) << s.message();
    EXPECT_EQ(y, std::vector<float>(x.size(), -5.f));
    EXPECT_EQ(mean, std::vector<float>(g.c, 0.25f));
    EXPECT_EQ(var, std::vector<float>(g.c, 0.75f));
    EXPECT_EQ(tracked, 3);

    EXPECT_TRUE(plan.forward_training(args).ok()) << "the same call succeeds with memory";
    EXPECT_EQ(tracked, 4);
  }
}

// Every failure of the module API is a bnorm::error, out of memory included, and a failed
// forward changes no state.
TEST(OutOfMemory, ModuleAllocationFailuresAreBnormErrors) {
  fail_throwing_new = true;
  try {
    auto bn = bnorm::torch::BatchNorm1d(4);
    fail_throwing_new = false;
    ADD_FAILURE() << "construction allocated nothing?";
  } catch (const bnorm::error& e) {
    fail_throwing_new = false;
    EXPECT_EQ(e.code(), bnorm::status_code::out_of_memory) << e.what();
  }
  // A MindSpore cell whose initializers hold values: copying them allocates, in make_config
  // and in the constructor.
  bnorm::mindspore::options ms;
  ms.gamma_init = std::vector<double>{1.0, 2.0, 3.0, 4.0};
  fail_throwing_new = true;
  try {
    auto cell = bnorm::mindspore::BatchNorm1d(4, ms);
    fail_throwing_new = false;
    ADD_FAILURE() << "construction allocated nothing?";
  } catch (const bnorm::error& e) {
    fail_throwing_new = false;
    EXPECT_EQ(e.code(), bnorm::status_code::out_of_memory) << e.what();
  }
  auto bn = bnorm::torch::BatchNorm1d(4);
  const std::vector<float> x = normal_data<float>(8, 0.0, 1.0, 2);
  fail_throwing_new = true;
  try {
    bn.forward(x, {2, 4});
    fail_throwing_new = false;
    ADD_FAILURE() << "forward allocated nothing?";
  } catch (const bnorm::error& e) {
    fail_throwing_new = false;
    EXPECT_EQ(e.code(), bnorm::status_code::out_of_memory) << e.what();
    EXPECT_NE(std::strstr(e.what(), "forward: out of memory"), nullptr) << e.what();
  }
  EXPECT_EQ(bn.num_batches_tracked(), 0);
  EXPECT_EQ(bn.running_mean(), std::vector<float>(4, 0.f));
}

// Once warm (its plans made, its staging buffers and gradients sized), a module's step
// allocates nothing: forward and backward through pointers, in train and in eval mode. They
// allocated three vectors a training forward and two a backward.
TEST(OutOfMemory, WarmModuleStepsAllocateNothing) {
  auto bn = bnorm::torch::BatchNorm1d(4);
  const std::vector<float> x = normal_data<float>(8, 0.0, 1.0, 5);
  const std::vector<float> dy = normal_data<float>(8, 0.0, 1.0, 6);
  std::vector<float> y(8), dx(8);
  const auto step = [&] {
    bn.forward(x.data(), y.data(), {2, 4});
    bn.backward(x.data(), dy.data(), dx.data());
  };
  for (bool training : {true, false}) {
    bn.train(training);
    step();  // the plans, the staging buffers and the gradients
    step();  // the staging buffers swapped out by the first step
    fail_throwing_new = true;
    try {
      step();
      fail_throwing_new = false;
    } catch (const bnorm::error& e) {
      fail_throwing_new = false;
      ADD_FAILURE() << (training ? "train: " : "eval: ") << e.what();
    }
  }
}

// A backward that runs out of memory at any of its allocations leaves weight_grad and bias_grad
// as they were: both none (the first backward), never one set without the other.
TEST(OutOfMemory, ModuleBackwardSetsBothGradientsOrNeither) {
  const std::vector<float> x = normal_data<float>(24, 0.0, 1.0, 3);
  const std::vector<float> dy = normal_data<float>(24, 0.0, 1.0, 4);
  std::vector<float> dx(24);
  bool completed = false;
  for (int k = 1; !completed && k < 64; ++k) {
    auto bn = bnorm::torch::BatchNorm2d(3);
    bn.forward(x, {2, 3, 2, 2});
    throwing_new_countdown = k;
    try {
      bn.backward(x.data(), dy.data(), dx.data());
      completed = true;
    } catch (const bnorm::error& e) {
      EXPECT_EQ(e.code(), bnorm::status_code::out_of_memory) << e.what();
    }
    throwing_new_countdown = 0;
    EXPECT_EQ(bn.weight_grad().size(), completed ? 3u : 0u) << "allocation " << k;
    EXPECT_EQ(bn.bias_grad().size(), completed ? 3u : 0u) << "allocation " << k;
  }
  EXPECT_TRUE(completed);
}

}  // namespace
