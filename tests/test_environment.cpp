// The caller's environment cannot change what a call does: a cancelled oneTBB group around the
// call, or the caller's floating-point modes (flush-to-zero, denormals-are-zero, rounding,
// unmasked exceptions). Each test compares with the same call made in a plain environment.
#include <gtest/gtest.h>

#include <cfenv>
#include <cstring>
#include <limits>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_group.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// A caller that unmasks the invalid-operation trap gets no SIGFPE from a NaN in the data.
TEST(CallersFloatingPointEnvironment, UnmaskedTrapsDoNotFault) {
  const geometry g(parallel_shape);
  std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 43);
  x[5] = std::numeric_limits<float>::quiet_NaN();
  x[g.elements() - 3] = std::numeric_limits<float>::infinity();
  const bnorm::plan plan = plan_with_threads(0);
  const outputs plain = run_both(plan, x, g.c);
  const caller_mxcsr unmasked(0x1F80 & ~0x0180u);  // invalid and divide-by-zero unmasked
  const outputs got = run_both(plan, x, g.c);
  EXPECT_TRUE(got.training.ok() && got.inference.ok());
  EXPECT_TRUE(got.same_bits_as(plain));
}

#endif  // __x86_64__

}  // namespace
