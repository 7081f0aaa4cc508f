// The caller's environment cannot change what a call does: a cancelled oneTBB group around the
// call, or the caller's floating-point modes (flush-to-zero, denormals-are-zero, rounding,
// unmasked exceptions). Each test compares with the same call made in a plain environment.
#include <gtest/gtest.h>

#include <atomic>
#include <cfenv>
#include <cstring>
#include <limits>
#include <thread>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_group.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bnorm/distributed.hpp"
#include "bnorm/fold.hpp"
#include "bnorm/module.hpp"
#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

// (8,64,32,32) float32: 2 MiB, far above the size that runs on the calling thread alone.
const bnorm::tensor_shape parallel_shape{8, 64, 32, 32};

struct outputs {
  std::vector<float> y, mean, inv_std, running_mean, running_var, inferred;
  std::int64_t tracked = 7;
  bnorm::status training, inference;

  bool same_bits_as(const outputs& o) const {
    const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    return same(y, o.y) && same(mean, o.mean) && same(inv_std, o.inv_std) &&
           same(running_mean, o.running_mean) && same(running_var, o.running_var) &&
           same(inferred, o.inferred) && tracked == o.tracked;
  }
};

/// One training and one inference call of `plan` on x, every output starting from a sentinel.
outputs run_both(const bnorm::plan& plan, const std::vector<float>& x, std::size_t channels) {
  outputs r;
  r.y.assign(x.size(), -7.f);
  r.inferred.assign(x.size(), -7.f);
  r.mean.assign(channels, -1.f);
  r.inv_std.assign(channels, -1.f);
  r.running_mean.assign(channels, 0.5f);
  r.running_var.assign(channels, 2.f);
  bnorm::training_args train;
  train.src = x.data();
  train.dst = r.y.data();
  train.batch_mean = out(r.mean);
  train.batch_inv_std = out(r.inv_std);
  train.running_mean = out(r.running_mean);
  train.running_var = out(r.running_var);
  train.num_batches_tracked = &r.tracked;
  r.training = plan.forward_training(train);
  bnorm::inference_args infer;
  infer.src = x.data();
  infer.dst = r.inferred.data();
  infer.mean = in(r.running_mean);
  infer.var = in(r.running_var);
  r.inference = plan.forward_inference(infer);
  return r;
}

bnorm::plan plan_with_threads(int threads, layout l = layout::channels_first) {
  bnorm::plan_options opts;
  opts.max_threads = threads;
  return make_plan_or_fail({parallel_shape, l}, opts);
}

// Called from a task whose group another task has cancelled (say it threw), with the
// caller's arena (max_threads = 0): bnorm's work is not the caller's group's, and must run.
TEST(CallersContext, CancelledGroupDoesNotCancelTheCall) {
  const geometry g(parallel_shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 3.0, 2.0, 41);
  for (layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::plan plan = plan_with_threads(0, l);
    const outputs expected = run_both(plan, x, g.c);
    ASSERT_TRUE(expected.training.ok()) << expected.training.message();
    outputs got;
    tbb::task_group_context group;
    tbb::parallel_for(
        tbb::blocked_range<int>(0, 1),
        [&](const tbb::blocked_range<int>&) {
          group.cancel_group_execution();
          got = run_both(plan, x, g.c);
        },
        group);
    ASSERT_TRUE(group.is_group_execution_cancelled());
    EXPECT_TRUE(got.training.ok()) << got.training.message();
    EXPECT_TRUE(got.inference.ok()) << got.inference.message();
    EXPECT_TRUE(got.same_bits_as(expected)) << "a cancelled caller's group changed the results";
    EXPECT_EQ(got.tracked, 8);
  }
}

#if defined(__x86_64__)

// Sets MXCSR for a scope, as an engine that sets FTZ/DAZ or another rounding mode would.
class caller_mxcsr {
 public:
  explicit caller_mxcsr(unsigned value) : saved_(_mm_getcsr()) { _mm_setcsr(value); }
  ~caller_mxcsr() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
};

constexpr unsigned ftz_daz = 0x1F80 | 0x8000 | 0x0040;
constexpr unsigned toward_zero = 0x1F80 | 0x6000;

// Denormal-scale data: under FTZ/DAZ on some threads and not on others, the bits would depend
// on which thread ran which unit.
std::vector<float> denormal_data(std::size_t count) {
  std::vector<float> x = normal_data<float>(count, 1.0, 1.0, 42);
  for (float& v : x) v *= 1e-39f;
  return x;
}

TEST(CallersFloatingPointEnvironment, FlushToZeroChangesNoBitForAnyThreadCount) {
  const geometry g(parallel_shape);
  const std::vector<float> x = denormal_data(g.elements());
  for (layout l : {layout::channels_first, layout::channels_last}) {
    // Plans made before the caller changes its environment, as an engine does at load time.
    const bnorm::plan plans[] = {plan_with_threads(1, l), plan_with_threads(2, l),
                                 plan_with_threads(0, l)};
    const outputs plain = run_both(plans[0], x, g.c);
    ASSERT_TRUE(plain.training.ok() && plain.inference.ok());
    for (unsigned mode : {ftz_daz, toward_zero}) {
      const caller_mxcsr environment(mode);
      for (const bnorm::plan& plan : plans) {
        const outputs got = run_both(plan, x, g.c);
        EXPECT_TRUE(got.training.ok() && got.inference.ok());
        EXPECT_TRUE(got.same_bits_as(plain)) << "MXCSR " << std::hex << mode << std::dec
                                             << ", max_threads " << plan.options().max_threads;
        EXPECT_EQ(_mm_getcsr() & 0xFFC0u, mode & 0xFFC0u) << "the caller's modes were not restored";
      }
    }
  }
}

// A caller that unmasks the invalid-operation and divide-by-zero traps gets no SIGFPE from a NaN
// or an infinity in the data, nor from a constant channel with eps 0 (1/sqrt(0): a division by
// zero on the ISAs that divide), on every ISA.
TEST(CallersFloatingPointEnvironment, UnmaskedTrapsDoNotFault) {
  const geometry g(parallel_shape);
  std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 43);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[g.elements() - 3] = std::numeric_limits<float>::infinity();
  for (std::size_t n = 0; n < g.n; ++n) {  // channel 1 constant
    for (std::size_t s = 0; s < g.spatial; ++s) x[g.offset(layout::channels_first, n, 1, s)] = 3.f;
  }
  constexpr unsigned invalid = 0x0080, divide_by_zero = 0x0200;  // MXCSR's IM and ZM
  for (bnorm::isa isa : isas_under_test()) {
    SCOPED_TRACE(bnorm::to_string(isa));
    bnorm::plan_options opts;
    opts.max_threads = 0;
    opts.max_isa = isa;
    const bnorm::plan plan =
        make_plan_or_fail({parallel_shape, layout::channels_first, bnorm::dtype::f32, 0.0}, opts);
    const outputs plain = run_both(plan, x, g.c);
    ASSERT_TRUE(std::isnan(plain.y[g.offset(layout::channels_first, 0, 1, 0)]))
        << "the constant channel with eps 0 computes 0·(1/sqrt(0))";
    const caller_mxcsr unmasked(0x1F80 & ~(invalid | divide_by_zero));
    const outputs got = run_both(plan, x, g.c);
    EXPECT_TRUE(got.training.ok() && got.inference.ok());
    EXPECT_TRUE(got.same_bits_as(plain));
  }
}

// The entry points that compute outside the parallel passes: the distributed merges, a plan's
// float values (its clamp bounds), the fold, the commit of float16 per-channel outputs and the
// module's gradient accumulation. Each gives the bits it gives in the default environment.
TEST(CallersFloatingPointEnvironment, EntryPointsOutsideThePassesChangeNoBit) {
  struct results {
    std::vector<double> merged, summed;
    std::vector<float> clamped, folded;
    std::uint16_t half_mean = 0;
    std::vector<float> weight_grad;
    bool operator==(const results& o) const {
      const auto same = [](const auto& a, const auto& b) {
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof a[0]) == 0;
      };
      return same(merged, o.merged) && same(summed, o.summed) && same(clamped, o.clamped) &&
             same(folded, o.folded) && half_mean == o.half_mean && same(weight_grad, o.weight_grad);
    }
  };
  constexpr std::size_t channels = 64;
  // Every input made here, in the default environment; compute() only calls bnorm.
  const std::vector<double> values = normal_data<double>(6 * channels, 1.0, 0.4, 71);
  // Two ranks' statistics blocks (count, means, biased variances) and gradient sums.
  std::vector<double> blocks(2 * bnorm::statistics_exchange_size(channels));
  for (std::size_t k = 0; k < 2; ++k) {
    double* b = blocks.data() + k * bnorm::statistics_exchange_size(channels);
    b[0] = k == 0 ? 100.0 : 300.0;
    for (std::size_t c = 0; c < 2 * channels; ++c) b[1 + c] = std::fabs(values[k * channels + c]);
  }
  std::vector<double> sums(2 * bnorm::gradient_exchange_size(channels));
  for (std::size_t i = 0; i < sums.size(); ++i) sums[i] = values[i % values.size()] / 3.0;
  sums[0] = 100.0;
  sums[bnorm::gradient_exchange_size(channels)] = 300.0;
  std::vector<float> w(4 * channels), bias(channels);
  std::vector<float> gamma(channels), beta(channels), mean(channels), var(channels);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(values[i]);
  for (std::size_t c = 0; c < channels; ++c) {
    gamma[c] = static_cast<float>(values[c] * 0.7);
    beta[c] = static_cast<float>(values[channels + c] - 1.0);
    mean[c] = static_cast<float>(values[2 * channels + c]);
    var[c] = static_cast<float>(std::fabs(values[3 * channels + c]) + 0.01);
  }
  const std::vector<float> x = normal_data<float>(8 * channels, 0.0, 1.0, 72);
  const std::vector<float> dy = normal_data<float>(8 * channels, 0.0, 1e-39, 73);
  const auto compute = [&] {
    results r;
    r.merged.resize(bnorm::statistics_exchange_size(channels));
    EXPECT_TRUE(
        bnorm::merge_statistics(channels, blocks.data(), 2, r.merged.data(), r.merged.size()));
    r.summed.resize(bnorm::gradient_exchange_size(channels));
    EXPECT_TRUE(
        bnorm::sum_gradient_exchanges(channels, sums.data(), 2, r.summed.data(), r.summed.size()));
    // A plan made here, run below in the default environment: clamp(x) at 0.1 is 0.1f.
    bnorm::plan_options clamp;
    clamp.activation = bnorm::activation::clamp;
    clamp.clamp_min = 0.1;
    clamp.clamp_max = 0.3;
    const bnorm::plan clamped = make_plan_or_fail({{2, 4}, layout::channels_first}, clamp);
    // f16 data whose batch mean, 2/3 · 2^-24, rounds to the smallest subnormal (0x0001).
    bnorm::plan_options half;
    half.parameter_dtype = bnorm::dtype::f16;
    const bnorm::plan half_plan =
        make_plan_or_fail({{3, 1}, layout::channels_first, bnorm::dtype::f16}, half);
    const std::uint16_t half_x[3] = {0x0001, 0x0001, 0x0000};
    std::uint16_t half_y[3] = {}, half_rm = 0, half_rv = 0x3c00;
    bnorm::training_args t;
    t.src = half_x;
    t.dst = half_y;
    t.batch_mean = {&r.half_mean, 1};
    t.running_mean = {&half_rm, 1};
    t.running_var = {&half_rv, 1};
    EXPECT_TRUE(half_plan.forward_training(t));
    // Folding: 1/sqrt(var + eps) and each product, rounded to float32.
    r.folded.assign(w.size() + channels, 0.0f);
    bnorm::fold_problem fold;
    fold.weight_shape = {std::int64_t(channels), 4};
    bnorm::fold_args f;
    f.weight = w.data();
    f.folded_weight = r.folded.data();
    f.bias = in(bias);
    f.folded_bias = {r.folded.data() + w.size(), channels};
    f.scale = in(gamma);
    f.shift = in(beta);
    f.mean = in(mean);
    f.var = in(var);
    EXPECT_TRUE(bnorm::fold_into_layer(fold, f));
    // A module's gradients, subnormal, accumulated over two backward calls (which a caller's
    // denormals-are-zero would take as zeros).
    auto module = bnorm::torch::BatchNorm1d<float>(channels);
    const bnorm::tensor_shape shape{8, std::int64_t(channels)};
    for (int step = 0; step < 2; ++step) {
      module.forward(x, shape);
      module.backward(x, dy);
    }
    r.weight_grad = module.weight_grad();
    return std::make_pair(r, clamped);
  };
  const auto run_clamped = [](const bnorm::plan& plan) {
    const float x[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    const float ones[4] = {1, 1, 1, 1}, zeros[4] = {0, 0, 0, 0};
    std::vector<float> y(8);
    bnorm::inference_args a;
    a.src = x;
    a.dst = y.data();
    a.mean = {zeros, 4};
    a.var = {ones, 4};
    EXPECT_TRUE(plan.forward_inference(a));
    return y;
  };
  auto [plain, plain_plan] = compute();
  plain.clamped = run_clamped(plain_plan);
  EXPECT_EQ(plain.half_mean, 0x0001);
  for (unsigned mode : {ftz_daz, toward_zero}) {
    auto [got, got_plan] = [&] {
      const caller_mxcsr environment(mode);
      return compute();
    }();
    got.clamped = run_clamped(got_plan);
    EXPECT_TRUE(got == plain) << "MXCSR " << std::hex << mode;
  }
}

// A call's checks run in bnorm's environment too: under the caller's denormals-are-zero a
// subnormal is no zero to them, and a NaN they compare raises no trap the caller unmasked. The
// merged steps check the blocks they are given; a module's constructor its eps.
TEST(CallersFloatingPointEnvironment, ChecksGiveTheSameAnswerAndDoNotFault) {
  constexpr std::size_t channels = 2;
  constexpr unsigned invalid_unmasked = 0x1F80 & ~0x0080u;
  const bnorm::plan plan = make_plan_or_fail(
      {{4, std::int64_t(channels)}, layout::channels_first, bnorm::dtype::f32, 0.0}, {});
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> y(x.size(), -7.f), running_mean(channels, 0.5f), running_var(channels, 2.f);
  bnorm::training_args train;
  train.src = x.data();
  train.dst = y.data();
  train.running_mean = out(running_mean);
  train.running_var = out(running_var);
  // A block of four values a channel: count, means, biased variances.
  const auto merged_call = [&](double count, double variance0) {
    const std::vector<double> merged = {count, 4.0, 5.0, variance0, 5.0};
    return plan.forward_training_merged(train, merged.data(), merged.size());
  };
  struct refusal {
    const char* what;
    double count, variance0;
    unsigned mode;
  };
  for (const refusal& r : {refusal{"a subnormal variance with eps 0", 4.0, 1e-310, ftz_daz},
                           refusal{"a negative subnormal variance", 4.0, -1e-310, ftz_daz},
                           refusal{"a NaN count", std::nan(""), 5.0, invalid_unmasked}}) {
    SCOPED_TRACE(r.what);
    const bnorm::status plain = merged_call(r.count, r.variance0);
    ASSERT_EQ(plain.code(), bnorm::status_code::invalid_argument) << plain.message();
    const bnorm::status got = [&] {
      const caller_mxcsr environment(r.mode);
      return merged_call(r.count, r.variance0);
    }();
    EXPECT_STREQ(got.message(), plain.message());
    EXPECT_EQ(y, std::vector<float>(x.size(), -7.f));
    EXPECT_EQ(running_var, std::vector<float>(channels, 2.f));
  }
  {  // A NaN variance carries through to its channel, as in a local call.
    const caller_mxcsr environment(invalid_unmasked);
    const bnorm::status s = merged_call(4.0, std::nan(""));
    ASSERT_TRUE(s) << s.message();
  }
  EXPECT_TRUE(std::isnan(y[0]) && std::isnan(y[6]));    // (N, C): channel 0 at even indices
  EXPECT_FLOAT_EQ(y[1], float(-3.0 / std::sqrt(5.0)));  // channel 1: (2 − 5)/sqrt(5)

  const std::vector<float> dy = {1, -1, 2, -2, 3, -3, 4, -4}, mean = {4, 5}, inv = {0.5f, 0.5f};
  std::vector<float> dx(x.size(), -7.f);
  bnorm::backward_args back;
  back.src = x.data();
  back.diff_dst = dy.data();
  back.diff_src = dx.data();
  back.mean = in(mean);
  back.inv_std = in(inv);
  std::vector<double> local(bnorm::gradient_exchange_size(channels));
  ASSERT_TRUE(plan.local_gradient_sums(back, local.data(), local.size()));
  std::vector<double> summed = local;
  summed[0] = std::nan("");
  const bnorm::status plain =
      plan.backward_training_merged(back, local.data(), summed.data(), summed.size());
  ASSERT_EQ(plain.code(), bnorm::status_code::invalid_argument) << plain.message();
  const bnorm::status got = [&] {
    const caller_mxcsr environment(invalid_unmasked);
    return plan.backward_training_merged(back, local.data(), summed.data(), summed.size());
  }();
  EXPECT_STREQ(got.message(), plain.message());
  EXPECT_EQ(dx, std::vector<float>(x.size(), -7.f));

  // Modules: MindSpore's eps NaN, PyTorch's eps a negative subnormal.
  const auto refused_eps = [](const auto& make) {
    try {
      make();
    } catch (const bnorm::error& e) {
      return std::string(e.what()).find("eps: expected") != std::string::npos;
    }
    return false;
  };
  bnorm::mindspore::options ms;
  ms.eps = std::nan("");
  bnorm::torch::options pt;
  pt.eps = -1e-310;
  const auto make_ms = [&] { return bnorm::mindspore::BatchNorm2d<float>(4, ms); };
  const auto make_pt = [&] { return bnorm::torch::BatchNorm2d<float>(4, pt); };
  ASSERT_TRUE(refused_eps(make_ms));
  ASSERT_TRUE(refused_eps(make_pt));
  {
    const caller_mxcsr environment(invalid_unmasked);
    EXPECT_TRUE(refused_eps(make_ms));
  }
  {
    const caller_mxcsr environment(ftz_daz);
    EXPECT_TRUE(refused_eps(make_pt));
  }
}

// oneTBB records a thread's floating-point modes when it first meets the thread, and gives
// them to the tasks it runs for it from then on. A thread whose first oneTBB work is bnorm's
// (a plan made at load time, a first call) must leave it the caller's modes, not bnorm's: the
// engine's own parallel loops then still flush subnormals under FTZ/DAZ. Each case on a
// thread of its own, which oneTBB has not met yet.
TEST(CallersFloatingPointEnvironment, TheCallersOwnParallelWorkKeepsItsModes) {
  const geometry g(parallel_shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 44);
  for (const int threads : {0, 2}) {
    std::size_t flushed = 0, mxcsr_after = 0;
    std::thread engine([&] {
      const caller_mxcsr environment(ftz_daz);
      const bnorm::plan plan = plan_with_threads(threads);  // before any oneTBB work here
      EXPECT_TRUE(run_both(plan, x, g.c).inference.ok());
      mxcsr_after = _mm_getcsr() & 0xFFC0u;
      volatile float tiny = 1e-38f;
      std::atomic<std::size_t> count{0};
      tbb::parallel_for(0, 1000, [&](int) {
        if (tiny * 0.5f == 0.0f) ++count;  // flushed under the engine's FTZ
      });
      flushed = count.load();
    });
    engine.join();
    EXPECT_EQ(mxcsr_after, ftz_daz & 0xFFC0u) << "max_threads " << threads;
    EXPECT_EQ(flushed, 1000u) << "max_threads " << threads
                              << ": the engine's own tasks lost its FTZ/DAZ";
  }
}

#endif  // __x86_64__

// A call waits for its units without taking the caller's other tasks: an iteration of the
// caller's parallel loop around the call never starts on the calling thread in the middle of
// it (where it could wait on a lock the thread holds, or find the thread's state half-changed).
TEST(CallersContext, ACallTakesNoneOfTheCallersTasksWhileItWaits) {
  const geometry g(parallel_shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 45);
  const std::vector<float> mean(g.c, 0.0f), var(g.c, 1.0f);
  for (layout l : {layout::channels_first, layout::channels_last}) {
    const bnorm::plan plan = plan_with_threads(0, l);
    static thread_local bool in_call = false;
    std::atomic<int> nested{0};
    for (int round = 0; round < 20; ++round) {
      tbb::parallel_for(0, 64, [&](int) {
        if (in_call) ++nested;
        std::vector<float> y(x.size());
        bnorm::inference_args a;
        a.src = x.data();
        a.dst = y.data();
        a.mean = in(mean);
        a.var = in(var);
        in_call = true;
        const bnorm::status s = plan.forward_inference(a);
        in_call = false;
        EXPECT_TRUE(s.ok());
      });
    }
    EXPECT_EQ(nested.load(), 0) << (l == layout::channels_first ? "nchw" : "nhwc");
  }
}

}  // namespace
