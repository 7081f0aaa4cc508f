// The module API: the seed example, PyTorch's and MindSpore's mode matrices, momentum
// conventions, initializers, reset, empty batches, and exceptions that leave state untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>

#include "support.hpp"

using namespace bnorm_test;

namespace {

const std::vector<float> seed_x = {0.7f, 0.5f, 0.5f, 0.6f, 0.5f, 0.4f, 0.6f, 0.9f};
const std::vector<double> seed_y = {0.9995001,  0.9980063,  -0.998006, -0.99977785,
                                    -0.9995007, -0.9980057, 0.998006,  0.99977785};
// Batch mean and unbiased variance of the seed, per channel.
const double seed_mean[] = {0.6, 0.45, 0.55, 0.75};
const double seed_unbiased_var[] = {0.02, 0.005, 0.005, 0.045};

void expect_seed_output(const std::vector<float>& y) {
  ASSERT_EQ(y.size(), seed_y.size());
  for (std::size_t i = 0; i < y.size(); ++i) EXPECT_NEAR(y[i], seed_y[i], 1e-6) << i;
}

TEST(Module, SeedExamplePyTorch) {
  bnorm::torch::options opts;
  opts.affine = false;
  opts.momentum = 0.1;
  auto bn = bnorm::torch::BatchNorm1d(4, opts);
  expect_seed_output(bn.forward(seed_x, {2, 4}));
  for (int c = 0; c < 4; ++c) {
    EXPECT_NEAR(bn.running_mean()[c], 0.1 * seed_mean[c], 1e-7);
    EXPECT_NEAR(bn.running_var()[c], 0.9 + 0.1 * seed_unbiased_var[c], 1e-7);
  }
  EXPECT_EQ(bn.num_batches_tracked(), 1);
}

TEST(Module, SeedExampleMindSpore) {
  bnorm::mindspore::options opts;
  opts.affine = false;
  opts.momentum = 0.9;
  auto bn = bnorm::mindspore::BatchNorm1d(4, opts);
  EXPECT_FALSE(bn.is_training()) << "MindSpore cells start in eval mode";
  bn.train();
  expect_seed_output(bn.forward(seed_x, {2, 4}));
  for (int c = 0; c < 4; ++c) {  // moving = 0.9·moving + 0.1·batch
    EXPECT_NEAR(bn.moving_mean()[c], 0.9 * 0.0 + 0.1 * seed_mean[c], 1e-7);
    EXPECT_NEAR(bn.moving_variance()[c], 0.9 * 1.0 + 0.1 * seed_unbiased_var[c], 1e-7);
  }
}

// A module's y in the current mode, against batch or running statistics computed here.
template <class Module>
void expect_mode(Module& bn, bool batch_stats, bool updates) {
  const std::vector<float> x = normal_data<float>(24, 2.0, 3.0, 5);
  const std::vector<float> mean0 = bn.running_mean(), var0 = bn.running_var();
  const std::int64_t tracked0 = bn.num_batches_tracked();
  const std::vector<float> y = bn.forward(x, {4, 3, 2});
  EXPECT_EQ(bn.uses_batch_statistics(), batch_stats);
  EXPECT_EQ(bn.updates_running_stats(), updates);
  const reference_stats batch = reference_moments(x, {4, 3, 2}, bnorm::layout::channels_first);
  std::vector<double> m(3, 0.0), v(3, 1.0);
  if (batch_stats) {
    m = batch.mean;
    v = batch.variance;
  } else if (!mean0.empty()) {
    m.assign(mean0.begin(), mean0.end());
    v.assign(var0.begin(), var0.end());
  }
  const std::vector<double> want = reference_normalize(x, {4, 3, 2}, bnorm::layout::channels_first,
                                                       m, v, 1e-5, bn.weight(), bn.bias());
  EXPECT_LE(max_abs_error(y, want), 1e-5);
  if (updates) {
    EXPECT_NE(bn.running_mean(), mean0);
  } else {
    EXPECT_EQ(bn.running_mean(), mean0);
    EXPECT_EQ(bn.running_var(), var0);
  }
  EXPECT_EQ(bn.num_batches_tracked(), tracked0 + (updates ? 1 : 0));
}

TEST(Module, TorchModeMatrix) {
  bnorm::torch::options tracked;
  auto bn = bnorm::torch::BatchNorm1d(3, tracked);
  expect_mode(bn, true, true);  // train, tracking: batch statistics, update
  bn.eval();
  expect_mode(bn, false, false);  // eval, tracking: running statistics
  bnorm::torch::options untracked;
  untracked.track_running_stats = false;
  auto free_bn = bnorm::torch::BatchNorm1d(3, untracked);
  EXPECT_TRUE(free_bn.running_mean().empty());
  expect_mode(free_bn, true, false);  // train, not tracking: batch statistics, no update
  free_bn.eval();
  expect_mode(free_bn, true, false);  // eval, not tracking: still batch statistics
}

TEST(Module, MindSporeUseBatchStatisticsMatrix) {
  struct row {
    std::optional<bool> use_batch_statistics;
    bool training, batch_stats, updates;
  } rows[] = {{std::nullopt, true, true, true}, {std::nullopt, false, false, false},
              {true, true, true, true},         {true, false, true, true},
              {false, true, false, false},      {false, false, false, false}};
  for (const row& r : rows) {
    SCOPED_TRACE(std::string("use_batch_statistics=") +
                 (r.use_batch_statistics ? (*r.use_batch_statistics ? "True" : "False") : "None") +
                 (r.training ? " train" : " eval"));
    bnorm::mindspore::options opts;
    opts.use_batch_statistics = r.use_batch_statistics;
    opts.moving_mean_init = 0.5;
    opts.moving_var_init = 2.0;
    auto bn = bnorm::mindspore::BatchNorm1d(3, opts);
    bn.train(r.training);
    expect_mode(bn, r.batch_stats, r.updates);
  }
}

TEST(Module, MomentumNoneIsACumulativeAverage) {
  bnorm::torch::options opts;
  opts.momentum = std::nullopt;
  auto bn = bnorm::torch::BatchNorm2d<double>(2, opts);
  std::vector<double> mean_sum(2, 0.0);
  for (int step = 0; step < 4; ++step) {
    const std::vector<double> x = normal_data<double>(2 * 2 * 3 * 3, step * 1.5, 1.0 + step, step);
    bn.forward(x, {2, 2, 3, 3});
    const reference_stats r = reference_moments(x, {2, 2, 3, 3}, bnorm::layout::channels_first);
    for (int c = 0; c < 2; ++c) mean_sum[c] += r.mean[c];
  }
  EXPECT_EQ(bn.num_batches_tracked(), 4);
  for (int c = 0; c < 2; ++c) EXPECT_NEAR(bn.running_mean()[c], mean_sum[c] / 4, 1e-12);
}

// Each convention's formula (ONNX's with the biased variance), with its framework's momentum
// set, or left unset: a convention set alone keeps its framework's default (PyTorch 0.1,
// MindSpore and ONNX 0.9: r = 0.9·r + 0.1·batch in all three), not PyTorch's number read in
// another meaning.
TEST(Module, ConventionsWithTheirFrameworksDefaultMomentum) {
  for (const auto& [convention, momentum] : {std::pair{bnorm::momentum_convention::pytorch, 0.1},
                                             {bnorm::momentum_convention::mindspore, 0.9},
                                             {bnorm::momentum_convention::onnx, 0.9},
                                             {bnorm::momentum_convention::pytorch, -1.0},
                                             {bnorm::momentum_convention::mindspore, -1.0},
                                             {bnorm::momentum_convention::onnx, -1.0}}) {
    bnorm::plan_options opts;
    opts.convention = convention;
    if (momentum >= 0) opts.momentum = momentum;  // -1: unset
    const bnorm::plan plan = make_plan_or_fail({{2, 4}}, opts);
    std::vector<float> y(8), rm(4, 1.f), rv(4, 2.f);
    bnorm::training_args args;
    args.src = seed_x.data();
    args.dst = y.data();
    args.running_mean = out(rm);
    args.running_var = out(rv);
    ASSERT_TRUE(plan.forward_training(args).ok());
    const bool biased = convention == bnorm::momentum_convention::onnx;
    for (int c = 0; c < 4; ++c) {
      EXPECT_NEAR(rm[c], 0.9 * 1.0 + 0.1 * seed_mean[c], 1e-7) << bnorm::to_string(convention);
      EXPECT_NEAR(rv[c], 0.9 * 2.0 + 0.1 * seed_unbiased_var[c] / (biased ? 2 : 1), 1e-7)
          << bnorm::to_string(convention);
    }
  }
  EXPECT_EQ(bnorm::default_momentum(bnorm::momentum_convention::pytorch), 0.1);
  EXPECT_EQ(bnorm::default_momentum(bnorm::momentum_convention::mindspore), 0.9);
  EXPECT_EQ(bnorm::default_momentum(bnorm::momentum_convention::onnx), 0.9);
}

// ONNX's training variance is the biased one, 0 for one value a channel (its reference's
// x.var()): no n/(n − 1) to divide by zero, so ONNX trains on a batch of one value per channel
// where PyTorch refuses it; so does MindSpore (its nnacl kernel divides by 1 there, its CPU
// kernel's variance is biased). y = beta, the batch mean is x, the running variance decays
// toward 0; the backward gives dx = 0, dγ = 0, dβ = dy. Every layout, float32 and float64,
// and the distributed step over a single rank.
template <class T>
void one_value_per_channel(bnorm::momentum_convention convention, const bnorm::tensor_shape& shape,
                           bnorm::layout layout) {
  const std::vector<T> x = {T(0.75), T(-2.5), T(1e3)}, gamma = {T(1.5), T(0.8), T(-0.1)},
                       beta = {T(0.1), T(0.3), T(-0.5)}, dy = {T(0.25), T(-4), T(7)};
  bnorm::plan_options opts;
  opts.convention = convention;  // either's default momentum: a batch weight of 0.1
  const bnorm::plan plan = make_plan_or_fail({shape, layout, dtype_of<T>(), 1e-5}, opts);
  std::vector<T> y(3, T(9)), rm = {T(0.5), T(-0.25), T(1)}, rv = {T(1), T(2), T(0.5)};
  std::vector<T> mean(3), inv_std(3);
  std::int64_t tracked = 4;
  bnorm::training_args args;
  args.src = x.data();
  args.dst = y.data();
  args.scale = in(gamma);
  args.shift = in(beta);
  args.batch_mean = out(mean);
  args.batch_inv_std = out(inv_std);
  args.running_mean = out(rm);
  args.running_var = out(rv);
  args.num_batches_tracked = &tracked;
  const bnorm::status s = plan.forward_training(args);
  ASSERT_TRUE(s.ok()) << s.message();
  const double rm0[] = {0.5, -0.25, 1}, rv0[] = {1, 2, 0.5};
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(y[c], beta[c]) << c;
    EXPECT_EQ(mean[c], x[c]) << c;
    EXPECT_NEAR(inv_std[c], 1 / std::sqrt(1e-5), 1e-6 * (1 / std::sqrt(1e-5))) << c;
    EXPECT_NEAR(rm[c], 0.9 * rm0[c] + 0.1 * static_cast<double>(x[c]), 1e-6 * 1e3) << c;
    EXPECT_NEAR(rv[c], 0.9 * rv0[c], 1e-7) << c;
  }
  EXPECT_EQ(tracked, 5);
  std::vector<T> dx(3, T(9)), dgamma(3, T(9)), dbeta(3, T(9));
  bnorm::backward_args b;
  b.src = x.data();
  b.diff_dst = dy.data();
  b.diff_src = dx.data();
  b.scale = in(gamma);
  b.mean = in(mean);
  b.inv_std = in(inv_std);
  b.diff_scale = out(dgamma);
  b.diff_shift = out(dbeta);
  const bnorm::status bs = plan.backward_training(b);
  ASSERT_TRUE(bs.ok()) << bs.message();
  for (int c = 0; c < 3; ++c) {
    EXPECT_EQ(dx[c], T(0)) << c;
    EXPECT_EQ(dgamma[c], T(0)) << c;
    EXPECT_EQ(dbeta[c], dy[c]) << c;
  }
  // One rank's merged step: the same outputs.
  std::vector<T> y_merged(3, T(9)), rm_merged = {T(0.5), T(-0.25), T(1)},
                                    rv_merged = {T(1), T(2), T(0.5)};
  args.dst = y_merged.data();
  args.running_mean = out(rm_merged);
  args.running_var = out(rv_merged);
  std::vector<double> block(7);
  ASSERT_TRUE(plan.local_statistics(args, block.data(), block.size()).ok());
  const bnorm::status ms = plan.forward_training_merged(args, block.data(), block.size());
  ASSERT_TRUE(ms.ok()) << ms.message();
  EXPECT_EQ(y_merged, y);
  EXPECT_EQ(rm_merged, rm);
  EXPECT_EQ(rv_merged, rv);
}

TEST(Module, OnnxAndMindSporeTrainOnOneValuePerChannel) {
  for (bnorm::momentum_convention convention :
       {bnorm::momentum_convention::onnx, bnorm::momentum_convention::mindspore}) {
    for (const bnorm::tensor_shape& shape :
         {bnorm::tensor_shape{1, 3}, bnorm::tensor_shape{1, 3, 1, 1}}) {
      for (bnorm::layout layout : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
        SCOPED_TRACE(std::string(bnorm::to_string(convention)) + " " + shape_name(shape) +
                     (layout == bnorm::layout::channels_last ? " nhwc" : ""));
        one_value_per_channel<float>(convention, shape, layout);
        one_value_per_channel<double>(convention, shape, layout);
      }
    }
  }
  // MindSpore's module in training: y = beta (0), the moving variance 0.9·1 + 0.1·0.
  bnorm::mindspore::options ms;
  ms.use_batch_statistics = true;
  auto bn = bnorm::mindspore::BatchNorm2d<float>(2, ms);
  const std::vector<float> y = bn.forward(std::vector<float>{3.f, -5.f}, {1, 2, 1, 1});
  EXPECT_EQ(y, std::vector<float>(2, 0.f));
  EXPECT_EQ(bn.running_var(), std::vector<float>(2, 0.9f));
}

TEST(Module, MindSporeInitializersAndFormat) {
  bnorm::mindspore::options opts;
  opts.gamma_init = 2.0;
  opts.beta_init = std::vector<double>{1, 2, 3};
  opts.moving_mean_init = "zeros";
  opts.moving_var_init = "ones";
  opts.data_format = "NHWC";
  opts.affine = false;
  auto bn = bnorm::mindspore::BatchNorm2d(3, opts);
  EXPECT_EQ(bn.gamma(), std::vector<float>(3, 2.f)) << "MindSpore keeps frozen gamma";
  EXPECT_EQ(bn.beta(), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(bn.get_config().layout, bnorm::layout::channels_last);
  // Eval with moving statistics 0 and 1: y = x/sqrt(1+eps)·2 + beta, channel innermost.
  const std::vector<float> y = bn.forward(std::vector<float>(6, 1.f), {1, 3, 1, 2});
  for (int i = 0; i < 6; ++i) EXPECT_NEAR(y[i], 2.0 / std::sqrt(1 + 1e-5) + 1 + i % 3, 1e-6);

  opts.gamma_init = "normal";
  try {
    bnorm::mindspore::BatchNorm2d(3, opts);
    FAIL() << "an unknown initializer must throw";
  } catch (const bnorm::error& e) {
    EXPECT_EQ(e.code(), bnorm::status_code::invalid_argument);
    EXPECT_STREQ(e.what(),
                 "gamma_init: expected 'ones', 'zeros', a number or 3 values, got 'normal'");
  }
  opts.gamma_init = std::vector<double>{1, 2};
  {
    const std::string m = error_message([&] { bnorm::mindspore::BatchNorm2d(3, opts); });
    EXPECT_TRUE(contains(m, "gamma_init: expected 3 values")) << m;
  }
  opts.gamma_init = "ones";
  opts.data_format = "NCWH";
  try {
    bnorm::mindspore::BatchNorm2d(3, opts);
    FAIL();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(), "data_format: expected 'NCHW' or 'NHWC', got 'NCWH'");
  }
  // MindSpore's names: initializers in any case, "one" and "zero" too, an integer constant;
  // BatchNorm3d's NCDHW; epsilon in (0, 1].
  bnorm::mindspore::options ms;
  ms.gamma_init = "One";
  ms.beta_init = 0;
  ms.moving_mean_init = "ZEROS";
  ms.moving_var_init = "Ones";
  ms.data_format = "NCDHW";
  auto cell = bnorm::mindspore::BatchNorm3d(2, ms);
  EXPECT_EQ(cell.gamma(), std::vector<float>(2, 1.f));
  EXPECT_EQ(cell.beta(), std::vector<float>(2, 0.f));
  EXPECT_EQ(cell.moving_variance(), std::vector<float>(2, 1.f));
  EXPECT_EQ(cell.get_config().layout, bnorm::layout::channels_first);
  ms.data_format = "NDHWC";
  EXPECT_EQ(bnorm::mindspore::BatchNorm3d(2, ms).get_config().layout, bnorm::layout::channels_last);
  try {
    bnorm::mindspore::BatchNorm2d(2, ms);  // NDHWC is BatchNorm3d's
    FAIL();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(), "data_format: expected 'NCHW' or 'NHWC', got 'NDHWC'");
  }
  ms.data_format = "NCHW";
  for (const double eps : {0.0, 1.5, -1.0, std::numeric_limits<double>::quiet_NaN()}) {
    ms.eps = eps;
    try {
      bnorm::mindspore::BatchNorm2d(2, ms);
      FAIL() << eps;
    } catch (const bnorm::error& e) {
      EXPECT_NE(std::strstr(e.what(), "eps: expected a value in (0, 1] (MindSpore's BatchNorm)"),
                nullptr)
          << e.what();
    }
  }
  ms.eps = 1.0;
  EXPECT_NO_THROW(bnorm::mindspore::BatchNorm2d(2, ms));
}

TEST(Module, ResetRunningStatsAndParameters) {
  auto bn = bnorm::torch::BatchNorm1d(3);
  bn.weight()[0] = 5.f;
  bn.forward(normal_data<float>(12, 1.0, 1.0, 3), {4, 3});
  EXPECT_EQ(bn.num_batches_tracked(), 1);
  bn.reset_running_stats();
  EXPECT_EQ(bn.running_mean(), std::vector<float>(3, 0.f));
  EXPECT_EQ(bn.running_var(), std::vector<float>(3, 1.f));
  EXPECT_EQ(bn.num_batches_tracked(), 0);
  EXPECT_EQ(bn.weight()[0], 5.f);
  bn.reset_parameters();
  EXPECT_EQ(bn.weight(), std::vector<float>(3, 1.f));
  EXPECT_EQ(bn.bias(), std::vector<float>(3, 0.f));
}

// Without affine (track_running_stats), PyTorch has no weight and bias (running statistics):
// values put there are refused, not silently ignored. MindSpore cells keep all four.
TEST(Module, BuffersTheModuleDoesNotHaveStayEmpty) {
  bnorm::torch::options opts;
  opts.affine = false;
  opts.track_running_stats = false;
  auto bn = bnorm::torch::BatchNorm1d(2, opts);
  bn.weight().assign(2, 1.f);
  try {
    bn.forward(std::vector<float>(4, 1.f), {2, 2});
    ADD_FAILURE();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(), "weight: expected no values (affine is false), got 2");
  }
  bn.weight().clear();
  bn.running_mean().assign(2, 0.f);
  try {
    bn.forward(std::vector<float>(4, 1.f), {2, 2});
    ADD_FAILURE();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(),
                 "running_mean: expected no values (track_running_stats is false), got 2");
  }
  auto cell = bnorm::mindspore::BatchNorm1d(2);
  cell.moving_variance().clear();
  try {
    cell.forward(std::vector<float>(4, 1.f), {2, 2});
    ADD_FAILURE();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(
        e.what(),
        "moving_variance: expected 2 values (num_features; a MindSpore cell keeps it), got 0");
  }
  cell.moving_variance().assign(2, 1.f);
  cell.gamma().resize(1);
  try {
    cell.forward(std::vector<float>(4, 1.f), {2, 2});
    ADD_FAILURE();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(),
                 "gamma: expected 2 values (num_features; a MindSpore cell keeps it), got 1");
  }
}

TEST(Module, EmptyBatchCountsAStepAndLeavesStatistics) {
  auto bn = bnorm::torch::BatchNorm2d(3);
  bn.running_mean().assign(3, 0.5f);  // not what an update toward an empty batch could give
  bn.running_var().assign(3, 2.f);
  const std::vector<float> y = bn.forward(std::vector<float>{}, {0, 3, 4, 4});
  EXPECT_TRUE(y.empty());
  EXPECT_EQ(bn.num_batches_tracked(), 1);  // as PyTorch: counted before the empty call
  EXPECT_EQ(bn.running_mean(), std::vector<float>(3, 0.5f));
  EXPECT_EQ(bn.running_var(), std::vector<float>(3, 2.f));
  bn.eval();
  EXPECT_TRUE(bn.forward(std::vector<float>{}, {2, 3, 0, 4}).empty());
}

// Without affine the input gradient is the only one, and an empty batch's is empty: its
// backward succeeds (a SyncBatchNorm rank of no samples takes the same path), as PyTorch's.
TEST(Module, EmptyBatchBackwardWithoutAffine) {
  bnorm::torch::options opts;
  opts.affine = false;
  auto bn = bnorm::torch::BatchNorm2d(3, opts);
  bn.forward(std::vector<float>{}, {0, 3, 4, 4});
  EXPECT_TRUE(bn.backward(std::vector<float>{}, std::vector<float>{}).empty());
  bn.forward(nullptr, nullptr, {2, 3, 0, 4});
  bn.backward(nullptr, nullptr, nullptr);
  EXPECT_EQ(bn.num_batches_tracked(), 2);
}

TEST(Module, ErrorsThrowAndLeaveStateUntouched) {
  auto bn = bnorm::torch::BatchNorm1d(4);
  auto expect_error = [&](auto&& call, const char* message) {
    const std::vector<float> mean = bn.running_mean(), var = bn.running_var();
    const std::int64_t tracked = bn.num_batches_tracked();
    try {
      call();
      ADD_FAILURE() << "expected bnorm::error: " << message;
    } catch (const bnorm::error& e) {
      EXPECT_STREQ(e.what(), message);
    }
    EXPECT_EQ(bn.running_mean(), mean);
    EXPECT_EQ(bn.running_var(), var);
    EXPECT_EQ(bn.num_batches_tracked(), tracked);
  };
  expect_error(
      [&] {
        bn.forward(std::vector<float>(16), {1, 4, 2, 2});
      },
      "input: expected 2D or 3D input (got 4D input)");
  expect_error(
      [&] {
        bn.forward(std::vector<float>(6), {2, 3});
      },
      "input: expected 4 channels (num_features) in dimension 1, got 3");
  expect_error([&] { bn.forward(std::vector<float>(8), bnorm::tensor_shape(nullptr, 2)); },
               "shape: expected 2 dimensions, got a null pointer");
  expect_error(
      [&] {
        bn.forward(std::vector<float>(4), {1, 4});
      },
      "Expected more than 1 value per channel when training, got input size [1, 4]");
  expect_error(
      [&] {
        bn.forward(std::vector<float>(5), {2, 4});
      },
      "src: expected 8 values for the shape [2, 4], got 5");
  expect_error(
      [&] {
        bn.forward(std::vector<float>(8), {2, 4, -3});
      },
      "shape: expected dimensions >= 0, got -3 at dimension 2 of [2, 4, -3]");
  // An element count beyond 64 bits: the plan's bound, not a count never computed.
  expect_error(
      [&] {
        bn.forward(std::vector<float>(8), {std::int64_t{1} << 40, 4, std::int64_t{1} << 40});
      },
      "shape: expected at most 2^60 bytes of f32 (288230376151711744 elements, and as many "
      "channels), got [1099511627776, 4, 1099511627776]");
  // The module's own names, in both modes.
  for (bool training : {true, false}) {
    bn.train(training);
    bn.weight().resize(3);
    expect_error(
        [&] {
          bn.forward(std::vector<float>(8), {2, 4});
        },
        "weight: expected 4 values (num_features; affine is true), got 3");
    bn.weight().clear();
    expect_error(
        [&] {
          bn.forward(std::vector<float>(8), {2, 4});
        },
        "weight: expected 4 values (num_features; affine is true), got 0");
    bn.weight().resize(4, 1.f);
    bn.bias().clear();
    expect_error(
        [&] {
          bn.forward(std::vector<float>(8), {2, 4});
        },
        "bias: expected 4 values (num_features; affine is true), got 0");
    bn.bias().resize(4, 0.f);
    const std::vector<float> kept = bn.running_var();
    bn.running_var().clear();
    expect_error(
        [&] {
          bn.forward(std::vector<float>(8), {2, 4});
        },
        "running_var: expected 4 values (num_features; track_running_stats is true), "
        "got 0");
    bn.running_var() = kept;
    bn.running_mean().resize(5);
    expect_error(
        [&] {
          bn.forward(std::vector<float>(8), {2, 4});
        },
        "running_mean: expected 4 values (num_features; track_running_stats is true), "
        "got 5");
    bn.running_mean().resize(4);
  }
  bn.num_batches_tracked() = -1;
  bn.train();
  expect_error(
      [&] {
        bn.forward(std::vector<float>(8), {2, 4});
      },
      "num_batches_tracked: expected a count >= 0, got -1");
  bn.num_batches_tracked() = 0;

  {
    const std::string m = error_message([] { bnorm::torch::BatchNorm2d(0); });
    EXPECT_TRUE(contains(m, "num_features: expected 1 to 2^57, got 0")) << m;
  }
  try {
    bnorm::torch::BatchNorm1d(std::numeric_limits<std::int64_t>::max());
    ADD_FAILURE() << "INT64_MAX features must throw";
  } catch (const bnorm::error& e) {
    EXPECT_EQ(e.code(), bnorm::status_code::invalid_argument);
    EXPECT_STREQ(e.what(), "num_features: expected 1 to 2^57, got 9223372036854775807");
  }
  try {  // 16 TiB of parameters and buffers: refused before it is tried
    bnorm::torch::BatchNorm1d(std::int64_t{1} << 40);
    ADD_FAILURE() << "2^40 features must throw";
  } catch (const bnorm::error& e) {
    EXPECT_EQ(e.code(), bnorm::status_code::out_of_memory);
    EXPECT_NE(std::strstr(e.what(), "more than this machine's"), nullptr) << e.what();
  }
  // A config made by hand is held to the factories' rules.
  const auto refused_config = [](const bnorm::module_config& cfg, const char* expected) {
    try {
      bnorm::batch_norm<float> m(cfg);
      ADD_FAILURE() << "expected bnorm::error: " << expected;
    } catch (const bnorm::error& e) {
      EXPECT_STREQ(e.what(), expected);
    }
  };
  bnorm::module_config cfg = bnorm::mindspore::make_config(4, {}, 4, 4);
  cfg.eps = 0;
  refused_config(cfg, "eps: expected a value in (0, 1] (MindSpore's BatchNorm), got 0");
  cfg.eps = 1e-5;
  cfg.framework = static_cast<bnorm::framework>(5);
  refused_config(cfg, "framework: expected pytorch or mindspore, got an unknown value (5)");
  cfg.framework = bnorm::framework::pytorch;
  cfg.min_rank = 7;
  cfg.max_rank = 3;
  refused_config(cfg,
                 "min_rank, max_rank: expected input ranks 2 <= min_rank <= max_rank <= 5, got 7 "
                 "and 3");
  bnorm::torch::options bad;
  bad.eps = -1;
  {
    const std::string m = error_message([&] { bnorm::torch::BatchNorm2d(2, bad); });
    EXPECT_TRUE(contains(m, "eps: expected a finite value >= 0, got -1")) << m;
  }
  bad.eps = 1e-5;
  bad.momentum = 1.0000001;
  try {
    bnorm::torch::BatchNorm2d(2, bad);
    ADD_FAILURE() << "momentum above 1 must throw";
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(), "momentum: expected a finite value in [0, 1], got 1.0000001");
  }
  auto bn3 = bnorm::torch::BatchNorm3d(2);
  try {
    bn3.forward(std::vector<float>(8), {2, 2, 2});
    FAIL();
  } catch (const bnorm::error& e) {
    EXPECT_STREQ(e.what(), "input: expected 5D input (got 3D input)");
  }
}

TEST(Module, ReportsItsIsa) {
  auto bn = bnorm::torch::BatchNorm2d(2);
  bnorm::isa expected = bnorm::isa::neon64;
  ASSERT_TRUE(bnorm::select_isa(std::nullopt, &expected).ok());
  EXPECT_EQ(bn.isa(), expected) << "before the first forward: the ISA its plans will take";
  // Planes of 256 values: the best ISA (shorter float32 planes may run AVX2's kernels on an
  // AVX-512 machine when no cap is set: PlansForShortPlanesAndTinyTensors below).
  bn.forward(std::vector<float>(2 * 2 * 256, 1.f), {2, 2, 16, 16});
  EXPECT_EQ(bn.isa(), expected);
  if (std::getenv("BNORM_MAX_ISA") == nullptr) {
    EXPECT_EQ(expected, bnorm::available_isas().back()) << "no cap: the best ISA";
  }
  const bnorm::isa lowest = bnorm::available_isas().front();
  ASSERT_TRUE(bnorm::select_isa(lowest, &expected).ok());
  EXPECT_EQ(expected, lowest);
  // The most recent forward's plan: a training plan of a tiny tensor, then an inference plan
  // of another shape (each ISA as a plan of its own would take).
  if (std::getenv("BNORM_MAX_ISA") == nullptr) {
    auto bn1 = bnorm::torch::BatchNorm1d(4);
    const auto isa_of = [](const bnorm::tensor_shape& shape) {
      return make_plan_or_fail({shape, bnorm::layout::channels_first}, {}).isa();
    };
    bn1.forward(std::vector<float>(8, 1.f), {2, 4});
    EXPECT_EQ(bn1.isa(), isa_of({2, 4}));
    bn1.eval();
    bn1.forward(std::vector<float>(4096 * 4, 1.f), {4096, 4});
    EXPECT_EQ(bn1.isa(), isa_of({4096, 4}));
    // A refused forward of another shape leaves it (its plan replaced the cached one; found in
    // review). Seen where the two shapes' plans take different ISAs (AVX-512 machines).
    std::vector<float> y(8, -9.f);
    EXPECT_THROW(bn1.forward(nullptr, y.data(), {2, 4}), bnorm::error);
    EXPECT_EQ(bn1.isa(), isa_of({4096, 4}));
    EXPECT_EQ(y, std::vector<float>(8, -9.f));
  }
}

// Without a cap, float32 channels-first planes shorter than 256 values (but a batch of one
// image's planes shorter than 128, which go in channel groups), and tensors of at most 64 values
// with fewer than 8 channels (any dtype), run AVX2's kernels on an AVX-512 machine (they are
// faster there); with a cap, the ISA it names; other problems the best ISA.
TEST(Module, PlansForShortPlanesAndTinyTensors) {
  if (std::getenv("BNORM_MAX_ISA") != nullptr) GTEST_SKIP() << "BNORM_MAX_ISA caps every plan";
  const auto plan_isa = [](const bnorm::problem& prob, std::optional<bnorm::isa> cap) {
    bnorm::plan_options opts;
    opts.max_isa = cap;
    return make_plan_or_fail(prob, opts).isa();
  };
  bnorm::isa best = bnorm::isa::neon64;
  ASSERT_TRUE(bnorm::select_isa(std::nullopt, &best).ok());
  const bool avx512 = best == bnorm::isa::avx512f || best == bnorm::isa::avx512bf16;
  const bnorm::problem short_planes{{4, 2048, 7, 7}, bnorm::layout::channels_first};
  EXPECT_EQ(plan_isa(short_planes, std::nullopt), avx512 ? bnorm::isa::avx2 : best);
  EXPECT_EQ(plan_isa(short_planes, best), best) << "a cap names the kernels";
  EXPECT_EQ(plan_isa({{1, 1024, 14, 14}, bnorm::layout::channels_first}, std::nullopt),
            avx512 ? bnorm::isa::avx2 : best);
  EXPECT_EQ(plan_isa({{1, 2048, 7, 7}, bnorm::layout::channels_first}, std::nullopt), best)
      << "channel groups";
  EXPECT_EQ(plan_isa({{1, 64, 127}, bnorm::layout::channels_first}, std::nullopt), best)
      << "channel groups";
  EXPECT_EQ(plan_isa({{1, 2048, 16, 16}, bnorm::layout::channels_first}, std::nullopt), best);
  EXPECT_EQ(plan_isa({{1, 7, 7, 2048}, bnorm::layout::channels_last}, std::nullopt), best);
  EXPECT_EQ(
      plan_isa({{1, 2048, 7, 7}, bnorm::layout::channels_first, bnorm::dtype::bf16}, std::nullopt),
      best);
  const bnorm::isa tiny_isa = avx512 ? bnorm::isa::avx2 : best;
  EXPECT_EQ(plan_isa({{2, 4}}, std::nullopt), tiny_isa);
  EXPECT_EQ(plan_isa({{16, 4}}, std::nullopt), tiny_isa) << "64 values";
  EXPECT_EQ(plan_isa({{2, 7, 2, 2}, bnorm::layout::channels_last}, std::nullopt), tiny_isa);
  EXPECT_EQ(plan_isa({{2, 4}, bnorm::layout::channels_first, bnorm::dtype::bf16}, std::nullopt),
            tiny_isa);
  EXPECT_EQ(plan_isa({{2, 4}}, best), best) << "a cap names the kernels";
  EXPECT_EQ(plan_isa({{2, 8}}, std::nullopt), best) << "a whole float64 vector of channels";
  EXPECT_EQ(plan_isa({{17, 4}}, std::nullopt), best) << "68 values";
}

}  // namespace

namespace {

// The module keeps the forward's mean residual for its backward: the gradient of data whose
// mean is 1e5 × its std, with dy's mean 100 × its spread, is that of the forward itself (against
// a float64 reference from x's own statistics), where the saved float32 mean alone gave dx
// errors of a third of its size.
TEST(ModuleBackward, GradientOfTheForwardAtALargeMean) {
  const bnorm::tensor_shape shape{512, 4};
  const geometry g(shape);
  const auto x = normal_data<float>(g.elements(), 1e5, 1.0, 41);
  const auto dy = normal_data<float>(g.elements(), 100.0, 1.0, 42);
  auto bn = bnorm::torch::BatchNorm1d(4);
  bn.forward(x, shape);
  const std::vector<float> dx = bn.backward(x, dy);
  std::vector<double> mean(4), inv(4);
  for (std::size_t c = 0; c < 4; ++c) {
    long double sum = 0, squares = 0;
    for (std::size_t n = 0; n < 512; ++n) sum += x[n * 4 + c];
    const long double m = sum / 512;
    for (std::size_t n = 0; n < 512; ++n) squares += (x[n * 4 + c] - m) * (x[n * 4 + c] - m);
    mean[c] = static_cast<double>(m);
    inv[c] = static_cast<double>(1.0L / std::sqrt(squares / 512 + 1e-5L));
  }
  const std::vector<double> xd(x.begin(), x.end()), dyd(dy.begin(), dy.end());
  const reference_gradients ref =
      reference_backward(xd, dyd, shape, bnorm::layout::channels_first, mean, inv, {}, true);
  double largest = 1.0, worst = 0.0;
  for (const double v : ref.dx) largest = std::max(largest, std::fabs(v));
  for (std::size_t i = 0; i < dx.size(); ++i) worst = std::max(worst, std::fabs(dx[i] - ref.dx[i]));
  EXPECT_LE(worst / largest, 1e-5);
}

// Backward through the module: gradients accumulate as .grad does, zero_grad clears them,
// affine=false has none, a MindSpore cell in eval mode takes the frozen backward, and
// errors leave the accumulated gradients alone.
TEST(ModuleBackward, AccumulatesClearsAndRefuses) {
  const bnorm::tensor_shape shape{4, 3, 5};
  const auto x = normal_data<float>(60, 1.0, 2.0, 31);
  const auto dy = normal_data<float>(60, 0.0, 1.0, 32);
  auto bn = bnorm::torch::BatchNorm1d(3);
  {
    const std::string m = error_message([&] { bn.backward(x, dy); });
    EXPECT_TRUE(contains(m, "backward: expected a forward before it")) << m;
  }
  bn.forward(x, shape);
  EXPECT_TRUE(bn.weight_grad().empty());
  const std::vector<float> dx = bn.backward(x, dy);
  const std::vector<float> first = bn.weight_grad(), first_bias = bn.bias_grad();
  ASSERT_EQ(first.size(), 3u);
  // dβ = Σdy per channel (channels-first (N, C, L)).
  for (std::size_t c = 0; c < 3; ++c) {
    double want = 0;
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t l = 0; l < 5; ++l) want += dy[(n * 3 + c) * 5 + l];
    EXPECT_NEAR(first_bias[c], want, 1e-5);
  }
  // Training dx sums to zero over each channel (it is orthogonal to the constant).
  for (std::size_t c = 0; c < 3; ++c) {
    double sum = 0;
    for (std::size_t n = 0; n < 4; ++n)
      for (std::size_t l = 0; l < 5; ++l) sum += dx[(n * 3 + c) * 5 + l];
    EXPECT_NEAR(sum, 0.0, 1e-5);
  }
  bn.backward(x, dy);
  for (std::size_t c = 0; c < 3; ++c) EXPECT_FLOAT_EQ(bn.weight_grad()[c], 2 * first[c]);
  const std::vector<float> before = bn.weight_grad();
  {
    const std::string m = error_message([&] { bn.backward(x, std::vector<float>(59)); });
    EXPECT_TRUE(contains(m, "grad_output: expected 60 values")) << m;
  }
  EXPECT_EQ(bn.weight_grad(), before) << "a refused backward leaves .grad alone";
  bn.zero_grad(false);
  EXPECT_EQ(bn.weight_grad(), std::vector<float>(3, 0.0f));
  EXPECT_EQ(bn.bias_grad(), std::vector<float>(3, 0.0f));
  bn.zero_grad();
  EXPECT_TRUE(bn.weight_grad().empty());
  bn.zero_grad(false);  // as PyTorch: a gradient that is none stays none
  EXPECT_TRUE(bn.weight_grad().empty());
  EXPECT_TRUE(bn.bias_grad().empty());

  // Eval mode: the frozen backward, dx = γ·dy/sqrt(running_var + eps).
  bn.eval();
  bn.weight() = {2.0f, 1.0f, 0.5f};
  bn.forward(x, shape);
  const std::vector<float> frozen = bn.backward(x, dy);
  for (std::size_t i = 0; i < 60; ++i) {
    const std::size_t c = i / 5 % 3;
    const double want = bn.weight()[c] * dy[i] / std::sqrt(bn.running_var()[c] + 1e-5);
    EXPECT_NEAR(frozen[i], want, 1e-6 * (1 + std::fabs(want)));
  }

  bnorm::torch::options plain;
  plain.affine = false;
  auto no_affine = bnorm::torch::BatchNorm1d(3, plain);
  no_affine.forward(x, shape);
  no_affine.backward(x, dy);
  EXPECT_TRUE(no_affine.weight_grad().empty());

  // Refusals name the module's own arguments, not the engine's (src, diff_dst, diff_src).
  const auto message_of = [](const std::function<void()>& call) {
    try {
      call();
    } catch (const bnorm::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::vector<float> grad_input(60);
  std::vector<float> x_copy = x;
  EXPECT_EQ(message_of([&] {
              no_affine.backward(nullptr, dy.data(), grad_input.data());
            }).rfind("input: expected", 0),
            0u)
      << message_of([&] { no_affine.backward(nullptr, dy.data(), grad_input.data()); });
  const std::string overlap =
      message_of([&] { no_affine.backward(x_copy.data(), dy.data(), x_copy.data()); });
  EXPECT_EQ(overlap.rfind("grad_input: expected memory of its own", 0), 0u) << overlap;
  EXPECT_NE(overlap.find("overlap input"), std::string::npos) << overlap;
  const std::string none = message_of([&] { no_affine.backward(x.data(), dy.data(), nullptr); });
  EXPECT_EQ(none.rfind("grad_input: expected a buffer", 0), 0u) << none;
  EXPECT_EQ(message_of([&] {
              bn.backward(x.data(), nullptr, grad_input.data());
            }).rfind("grad_output: expected", 0),
            0u)
      << message_of([&] { bn.backward(x.data(), nullptr, grad_input.data()); });

  // A MindSpore cell starts in eval mode: frozen, and its gamma gradient is named as such.
  auto cell = bnorm::mindspore::BatchNorm1d(3);
  cell.forward(x, shape);
  cell.backward(x, dy);
  ASSERT_EQ(cell.gamma_grad().size(), 3u);
  EXPECT_EQ(cell.beta_grad(), first_bias) << "dβ = Σdy whatever the statistics";
}

// Refusals from the engine name the module's buffers as its framework does (module.hpp), in
// the forward as in the backward: "overlap gamma", not the engine's "overlap scale". They said
// scale, var, running_mean (for MindSpore's moving_mean) and mean.
TEST(Module, RefusalsNameTheModulesBuffers) {
  const auto message_of = [](auto&& call) {
    try {
      call();
    } catch (const bnorm::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const auto expect_names = [](const std::string& message, const char* begins,
                               const char* overlaps) {
    EXPECT_EQ(message.rfind(begins, 0), 0u) << message;
    EXPECT_NE(message.find(std::string("overlap ") + overlaps), std::string::npos) << message;
  };
  std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8}, dy = {1, -1, 2, -2, 3, -3, 4, -4};
  auto cell = bnorm::mindspore::BatchNorm1d(4);  // eval: running statistics
  // Room for 8 values in each buffer, so that no range below leaves an allocation.
  for (auto* buffer : {&cell.gamma(), &cell.beta(), &cell.moving_mean(), &cell.moving_variance()}) {
    buffer->reserve(8);
  }
  expect_names(message_of([&] {
                 cell.forward(x.data(), cell.gamma().data(), {2, 4});
               }),
               "dst: expected memory of its own", "gamma");
  expect_names(message_of([&] {
                 cell.forward(x.data(), cell.moving_variance().data(), {2, 4});
               }),
               "dst: expected memory of its own", "moving_variance");
  cell.train();  // batch statistics, the moving ones updated
  expect_names(message_of([&] {
                 cell.forward(x.data(), cell.moving_mean().data(), {2, 4});
               }),
               "moving_mean: expected memory of its own", "dst");

  auto bn = bnorm::torch::BatchNorm1d(4);
  for (auto* buffer : {&bn.weight(), &bn.running_mean()}) buffer->reserve(8);
  bn.forward(x, {2, 4});
  expect_names(message_of([&] { bn.backward(x.data(), dy.data(), bn.weight().data()); }),
               "grad_input: expected memory of its own", "weight");
  bn.eval();
  bn.forward(x, {2, 4});
  expect_names(message_of([&] { bn.backward(x.data(), dy.data(), bn.running_mean().data()); }),
               "grad_input: expected memory of its own", "running_mean");

  // The gradients asked of a frozen backward are named too: a frozen dγ reads the input
  // (MindSpore's gamma_grad, where it said PyTorch's weight_grad; found in review).
  cell.eval();
  cell.forward(x, {2, 4});
  std::vector<float> dx(8, -9.f);
  const std::string frozen = message_of([&] { cell.backward(nullptr, dy.data(), dx.data()); });
  EXPECT_NE(frozen.find("(required by backward_frozen with gamma_grad)"), std::string::npos)
      << frozen;
  EXPECT_EQ(frozen.find("weight_grad"), std::string::npos) << frozen;
  EXPECT_EQ(dx, std::vector<float>(8, -9.f));
}

// An initializer's finite value beyond the parameter type's range would be stored as an
// infinity: refused when the module is built (it was kept as inf, and forward gave NaN).
TEST(Module, InitializersBeyondTheParameterRangeAreRefused) {
  bnorm::mindspore::options opts;
  opts.gamma_init = 1e300;
  try {
    bnorm::mindspore::BatchNorm2d(2, opts);
    ADD_FAILURE() << "gamma_init 1e300 must throw for float32 parameters";
  } catch (const bnorm::error& e) {
    EXPECT_EQ(e.code(), bnorm::status_code::invalid_argument);
    EXPECT_EQ(std::string(e.what()).rfind("gamma_init: expected values within the range of "
                                          "float32",
                                          0),
              0u)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("got 1e+300"), std::string::npos) << e.what();
  }
  opts.gamma_init = "ones";
  opts.moving_var_init = std::vector<double>{1e39, 1.0};
  try {
    bnorm::mindspore::BatchNorm2d(2, opts);
    ADD_FAILURE() << "moving_var_init 1e39 must throw for float32 parameters";
  } catch (const bnorm::error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("moving_var_init: expected values within", 0), 0u)
        << e.what();
  }
  // The largest float32 itself, and NaN as given (the frameworks keep it), are kept.
  opts.moving_var_init = std::vector<double>{std::numeric_limits<float>::max(),
                                             std::numeric_limits<double>::quiet_NaN()};
  auto cell = bnorm::mindspore::BatchNorm2d(2, opts);
  EXPECT_EQ(cell.moving_variance()[0], std::numeric_limits<float>::max());
  EXPECT_TRUE(std::isnan(cell.moving_variance()[1]));
}

}  // namespace

namespace {

/// A training exchange that runs in this process and counts its calls.
struct counting_exchange : bnorm::training_exchange {
  mutable int forwards = 0, backwards = 0;
  bnorm::status forward_training(const bnorm::plan& p,
                                 const bnorm::training_args& args) const override {
    ++forwards;
    return p.forward_training(args);
  }
  bnorm::status backward_training(const bnorm::plan& p,
                                  const bnorm::backward_args& args) const override {
    ++backwards;
    return p.backward_training(args);
  }
};

// torch.nn.SyncBatchNorm synchronizes in training mode only (need_sync = bn_training and
// self.training): in eval mode with track_running_stats=False each process normalizes with
// its own batch. A MindSpore cell whose use_batch_statistics is True exchanges in eval too.
// A backward goes through the exchange of its forward.
TEST(ModuleExchange, PyTorchSynchronizesInTrainingModeOnly) {
  const bnorm::tensor_shape shape{4, 2};
  const std::vector<float> x = {1, 2, 3, 4, 5, 7, 0, -1}, dy = {1, 0, 2, 1, 0, 3, 1, 1};
  bnorm::torch::options untracked;
  untracked.track_running_stats = false;
  auto bn = bnorm::torch::BatchNorm1d<float>(2, untracked);
  const auto exchange = std::make_shared<counting_exchange>();
  bn.set_training_exchange(exchange);
  bn.forward(x, shape);
  bn.backward(x, dy);
  EXPECT_EQ(exchange->forwards, 1);
  EXPECT_EQ(exchange->backwards, 1);
  bn.eval();
  const std::vector<float> y = bn.forward(x, shape);
  bn.backward(x, dy);
  EXPECT_EQ(exchange->forwards, 1) << "eval mode synchronized";
  EXPECT_EQ(exchange->backwards, 1) << "eval mode synchronized";
  // Still the batch's own statistics: channel 0 holds 1, 3, 5, 0 (mean 2.25).
  EXPECT_NEAR(y[0], (1 - 2.25) / std::sqrt(3.6875 + 1e-5), 1e-6);
  // The forward's exchange serves its backward, even when the module's changes between.
  bn.train();
  bn.forward(x, shape);
  bn.set_training_exchange(nullptr);
  bn.backward(x, dy);
  EXPECT_EQ(exchange->forwards, 2);
  EXPECT_EQ(exchange->backwards, 2);

  bnorm::mindspore::options batch_stats;
  batch_stats.use_batch_statistics = true;
  auto cell = bnorm::mindspore::BatchNorm1d<float>(2, batch_stats);
  const auto cell_exchange = std::make_shared<counting_exchange>();
  cell.set_training_exchange(cell_exchange);
  cell.eval();
  cell.forward(x, shape);
  EXPECT_EQ(cell_exchange->forwards, 1);
}

}  // namespace
