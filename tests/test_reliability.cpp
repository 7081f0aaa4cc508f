// Reliability: extreme values, concurrent callers, the caller's own parallelism, and bitwise
// determinism over every benchmark shape.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_scheduler_observer.h>

#include "commit_journal.hpp"
#include "shapes.hpp"
#include "support.hpp"

using namespace bnorm_test;
using bnorm::layout;

namespace {

struct training_result {
  std::vector<float> y, mean, inv_std, running_mean, running_var;
};

training_result train(const bnorm::plan& plan, const std::vector<float>& x, std::size_t channels) {
  // y and the batch statistics start at a value none of them takes here: one left unwritten
  // fails its comparison, also where the expected value is 0.
  training_result r{std::vector<float>(x.size(), -7.25f), std::vector<float>(channels, -7.25f),
                    std::vector<float>(channels, -7.25f), std::vector<float>(channels, 0.f),
                    std::vector<float>(channels, 1.f)};
  bnorm::training_args args;
  args.src = x.data();
  args.dst = r.y.data();
  args.batch_mean = out(r.mean);
  args.batch_inv_std = out(r.inv_std);
  args.running_mean = out(r.running_mean);
  args.running_var = out(r.running_var);
  const bnorm::status s = plan.forward_training(args);
  EXPECT_TRUE(s.ok()) << s.message();
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_bits(const training_result& a, const training_result& b) {
  return same_bits(a.y, b.y) && same_bits(a.mean, b.mean) && same_bits(a.inv_std, b.inv_std) &&
         same_bits(a.running_mean, b.running_mean) && same_bits(a.running_var, b.running_var);
}

struct huge_values_result {
  training_result r;
  reference_stats ref;
};

class Extremes : public testing::TestWithParam<bnorm::isa> {
 protected:
  bnorm::plan plan(const bnorm::tensor_shape& shape, layout l, double eps = 1e-5) {
    bnorm::plan_options opts;
    opts.max_isa = GetParam();
    return make_plan_or_fail({shape, l, bnorm::dtype::f32, eps}, opts);
  }

  /// Trains on x and checks y and the inverse std against the float64 reference; the mean is
  /// left to the caller, whose data decides what its error is relative to.
  huge_values_result train_huge_values(const std::vector<float>& x,
                                       const bnorm::tensor_shape& shape, layout l) {
    const geometry g(shape);
    huge_values_result out{train(plan(shape, l), x, g.c), reference_moments(x, shape, l)};
    const std::vector<double> want =
        reference_normalize(x, shape, l, out.ref.mean, out.ref.variance, 1e-5, {}, {});
    EXPECT_LE(max_abs_error(out.r.y, want), 1e-5);
    for (std::size_t c = 0; c < g.c; ++c) {
      EXPECT_NEAR(out.r.inv_std[c], 1.0 / std::sqrt(out.ref.variance[c] + 1e-5),
                  1e-6 / std::sqrt(out.ref.variance[c] + 1e-5))
          << c;
    }
    return out;
  }
};

// Tiny tensors (up to 64 values) take a statistics path of their own: the extremes below also
// run on one.
const bnorm::tensor_shape tiny_shape{2, 5, 3};

// As PyTorch: a NaN or an Inf spoils its own channel's statistics and output, no other's.
TEST_P(Extremes, NonFiniteValuesSpoilTheirChannelOnly) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{4, 5, 300}, tiny_shape}) {
        const geometry g(shape);
        std::vector<float> x = normal_data<float>(g.elements(), 1.0, 2.0, 3);
        x[g.offset(l, 1, 3, 2)] = bad;  // channel 3
        const training_result r = train(plan(shape, l), x, g.c);
        const reference_stats ref = reference_moments(x, shape, l);
        const std::vector<double> want =
            reference_normalize(x, shape, l, ref.mean, ref.variance, 1e-5, {}, {});
        for (std::size_t c = 0; c < g.c; ++c) {
          for (std::size_t n = 0; n < g.n; ++n) {
            for (std::size_t s = 0; s < g.spatial; ++s) {
              const std::size_t i = g.offset(l, n, c, s);
              if (c == 3) {
                ASSERT_TRUE(std::isnan(r.y[i])) << "channel 3 at " << i;
              } else {
                ASSERT_NEAR(r.y[i], want[i], 1e-5) << "channel " << c;
              }
            }
          }
          EXPECT_EQ(std::isfinite(r.running_mean[c]), c != 3) << "running_mean " << c;
        }
      }
    }
  }
}

// |x| near 1e30: the float64 statistics do not overflow (PyTorch #162489), even where float32
// squares would.
TEST_P(Extremes, HugeValuesDoNotOverflowTheVariance) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{3, 4, 200}, tiny_shape}) {
      const geometry g(shape);
      std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 4);
      for (float& v : x) v *= 1e30f;
      const training_result r = train(plan(shape, l), x, g.c);
      const reference_stats ref = reference_moments(x, shape, l);
      const std::vector<double> want =
          reference_normalize(x, shape, l, ref.mean, ref.variance, 1e-5, {}, {});
      EXPECT_LE(max_abs_error(r.y, want), 1e-5);
      const double count = static_cast<double>(g.n * g.spatial);
      for (std::size_t c = 0; c < g.c; ++c) {
        // The running variance, 0.9·1 + 0.1·var·n/(n − 1) ≈ 1e59, is beyond float: inf, as the
        // float64 reference rounded to float.
        const double running = 0.9 + 0.1 * ref.variance[c] * count / (count - 1);
        EXPECT_EQ(r.running_var[c], static_cast<float>(running)) << c;
        EXPECT_TRUE(std::isinf(r.running_var[c])) << c;
        EXPECT_NEAR(r.inv_std[c] * 1e30, 1.0 / std::sqrt(ref.variance[c]) * 1e30, 1e-5);
        EXPECT_NEAR(r.running_mean[c], static_cast<float>(0.1 * ref.mean[c]),
                    1e-6 * std::fabs(0.1 * ref.mean[c]));
      }
    }
  }
}

// One huge channel among ordinary ones, channels-last: the statistics kernel checks a group of
// vectors of channels at once and sums the whole group again in float64 when one of them
// overflows; every channel of the group, huge or not, must still come out right.
TEST_P(Extremes, OneHugeChannelAmongOrdinaryOnes) {
  const bnorm::tensor_shape shape{3, 40, 7};
  const geometry g(shape);
  std::vector<float> x = normal_data<float>(g.elements(), 0.5, 2.0, 6);
  for (std::size_t n = 0; n < g.n; ++n) {
    for (std::size_t s = 0; s < g.spatial; ++s)
      x[g.offset(layout::channels_last, n, 9, s)] *= 1e30f;
  }
  const huge_values_result out = train_huge_values(x, shape, layout::channels_last);
  for (std::size_t c = 0; c < g.c; ++c) {
    EXPECT_NEAR(out.r.mean[c], out.ref.mean[c], 1e-6 * std::fabs(out.ref.mean[c]) + 1e-6) << c;
  }
}

// Channels-first 7×7 planes, end to end: a huge channel (its float32 squares overflow) among
// ordinary ones, and channels whose squares stay finite while their sum over a group of
// channels does not, all come out right, one image or several. (The statistics kernel's own
// checks of such groups: KernelTester.PlaneStatsOfHugeChannelsAmongOrdinaryOnes.)
TEST_P(Extremes, HugeChannelsAmongShortPlanes) {
  for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{1, 12, 7, 7}, {3, 12, 7, 7}}) {
    const geometry g(shape);
    std::vector<float> x = normal_data<float>(g.elements(), 0.5, 2.0, 7);
    for (std::size_t n = 0; n < g.n; ++n) {
      for (std::size_t s = 0; s < g.spatial; ++s) {
        x[g.offset(layout::channels_first, n, 1, s)] *= 1e30f;  // squares beyond float
        for (std::size_t c = 4; c < 8; ++c) {  // squares near 1e37: finite, their sum is not
          x[g.offset(layout::channels_first, n, c, s)] *= 2e18f;
        }
      }
    }
    const huge_values_result out = train_huge_values(x, shape, layout::channels_first);
    for (std::size_t c = 0; c < g.c; ++c) {
      // Relative to the spread too: a channel's mean can lie far closer to 0 than its values.
      const double spread = std::sqrt(out.ref.variance[c]);
      EXPECT_NEAR(out.r.mean[c], out.ref.mean[c],
                  1e-6 * (std::fabs(out.ref.mean[c]) + spread) + 1e-6)
          << c;
    }
  }
}

// A constant channel gives exactly zero (PyTorch #5410); with eps = 0, var + eps = 0 and the
// channel is NaN (1/sqrt(0)·0), as in PyTorch, while the others are unaffected.
TEST_P(Extremes, ConstantChannels) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{4, 3, 50}, tiny_shape}) {
      const geometry g(shape);
      std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 5);
      for (std::size_t n = 0; n < g.n; ++n) {
        for (std::size_t s = 0; s < g.spatial; ++s) x[g.offset(l, n, 1, s)] = 1234.5678f;
      }
      const reference_stats ref = reference_moments(x, shape, l);
      for (double eps : {1e-5, 0.0}) {
        const training_result r = train(plan(shape, l, eps), x, g.c);
        const std::vector<double> want =
            reference_normalize(x, shape, l, ref.mean, ref.variance, eps, {}, {});
        EXPECT_EQ(r.mean[1], 1234.5678f);
        for (std::size_t n = 0; n < g.n; ++n) {
          for (std::size_t s = 0; s < g.spatial; ++s) {
            const float y = r.y[g.offset(l, n, 1, s)];
            if (eps > 0) {
              ASSERT_EQ(y, 0.f);
            } else {
              ASSERT_TRUE(std::isnan(y));
            }
            for (std::size_t c : {std::size_t{0}, std::size_t{2}}) {  // the others, as ever
              const std::size_t i = g.offset(l, n, c, s);
              ASSERT_LE(std::fabs(r.y[i] - want[i]), 1e-6 * std::max(1.0, std::fabs(want[i])))
                  << "channel " << c << ", eps " << eps;
            }
          }
        }
      }
    }
  }
}

// Found by the fuzzer: a constant channel with var + eps tiny but not zero (eps = 4.9e-324)
// has a float64 scale of 4.5e161, beyond float. It saturates, so the output is 0 like the
// float64 reference's, not 0·inf = NaN.
TEST_P(Extremes, ScaleBeyondFloatRangeSaturates) {
  // Nine channels: the coefficients of whole float64 vectors (up to AVX-512's) and of the
  // channels after them take different code.
  const bnorm::tensor_shape shape{4, 9};
  std::vector<float> x(36, std::numeric_limits<float>::denorm_min());
  for (std::size_t i = 0; i < x.size(); ++i) {
    if (i % 9 % 2) x[i] = 2.f;  // (N, C) memory: channel i % 9, each one constant
  }
  for (layout l : {layout::channels_first, layout::channels_last}) {
    const training_result r =
        train(plan(shape, l, std::numeric_limits<double>::denorm_min()), x, 9);
    for (std::size_t i = 0; i < x.size(); ++i) EXPECT_EQ(r.y[i], 0.f) << "element " << i;
  }
}

// Found by the fuzzer: float32 squares of differences near 1e-30 vanish; a channel whose
// var + eps is that small is summed again exactly, so y is still ±1 here.
TEST_P(Extremes, TinyVarianceIsExact) {
  for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{8, 2, 20}, tiny_shape}) {
    const geometry g(shape);
    for (layout l : {layout::channels_first, layout::channels_last}) {
      std::vector<float> x(g.elements());
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i / 3) % 2 ? 1e-30f : -1e-30f;
      const training_result r = train(plan(shape, l, 1e-70), x, g.c);
      const reference_stats ref = reference_moments(x, shape, l);
      EXPECT_LE(max_abs_error(r.y, reference_normalize(x, shape, l, ref.mean, ref.variance, 1e-70,
                                                       std::vector<float>{}, std::vector<float>{})),
                1e-5);
    }
  }
}

// Subnormal inputs: with eps 0 their spread normalizes to O(1) (the float32 squares would
// vanish: the channel is summed again exactly), with the usual eps to O(1e-36); both against
// the float64 reference, both layouts.
TEST_P(Extremes, DenormalInputs) {
  for (layout l : {layout::channels_first, layout::channels_last}) {
    for (double eps : {0.0, 1e-5}) {
      for (const bnorm::tensor_shape& shape : {bnorm::tensor_shape{8, 3, 40}, tiny_shape}) {
        const geometry g(shape);
        std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 6);
        for (float& v : x) v *= 1e-41f;  // subnormal floats
        const training_result r = train(plan(shape, l, eps), x, g.c);
        const reference_stats ref = reference_moments(x, shape, l);
        const std::vector<double> want =
            reference_normalize(x, shape, l, ref.mean, ref.variance, eps, {}, {});
        // Subnormal inputs carry few bits: the reference sees the same rounded values. With
        // eps 1e-5, y itself is subnormal (below 1e-38): its bound is relative, plus the few
        // units of float's subnormal grid that its roundings take, so that flushing y, or any
        // y of the wrong size, fails.
        const double unit = eps == 0.0 ? 1.0 : 0.0;
        for (std::size_t i = 0; i < want.size(); ++i) {
          ASSERT_LE(std::fabs(r.y[i] - want[i]),
                    1e-6 * std::max(unit, std::fabs(want[i])) +
                        4 * static_cast<double>(std::numeric_limits<float>::denorm_min()))
              << "eps " << eps << ", element " << i << ": got " << r.y[i] << ", want " << want[i];
        }
        if (eps == 0.0) {
          double spread = 0.0;
          for (float v : r.y) spread = std::max(spread, std::fabs(static_cast<double>(v)));
          EXPECT_GT(spread, 0.5) << "eps 0: y must be O(1)";
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllIsas, Extremes, testing::ValuesIn(isas_under_test()), isa_param_name);

// ---------------------------------------------------------------------------- concurrency

// Host threads sharing one plan, and each running a module of its own, get the serial bits.
void check_shared_plan_and_separate_modules(int max_threads) {
  const bnorm::tensor_shape shape{8, 16, 33, 17};
  const geometry g(shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 2.0, 3.0, 7);
  for (layout l : {layout::channels_first, layout::channels_last}) {
    bnorm::plan_options opts;
    opts.max_threads = max_threads;
    const bnorm::plan plan = make_plan_or_fail({shape, l}, opts);
    const training_result serial = train(plan, x, g.c);
    auto module = [&] {
      typename bnorm::module_config cfg = bnorm::torch::make_config(16, {}, 4, 4);
      cfg.layout = l;
      cfg.max_threads = max_threads;
      return bnorm::batch_norm<float>(cfg);
    };
    auto reference_module = module();
    const std::vector<float> module_y = reference_module.forward(x, shape);
    constexpr int threads = 8;
    std::vector<training_result> results(threads);
    std::vector<std::vector<float>> module_results(threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        for (int rep = 0; rep < 5; ++rep) results[t] = train(plan, x, g.c);
        auto m = module();
        module_results[t] = m.forward(x, shape);
      });
    }
    for (auto& th : pool) th.join();
    for (int t = 0; t < threads; ++t) {
      EXPECT_TRUE(same_bits(results[t], serial)) << "thread " << t;
      EXPECT_TRUE(same_bits(module_results[t], module_y)) << "module on thread " << t;
    }
  }
}

// The fused training schedules commit each block's statistics inside the parallel pass; should
// the pass fail midway (oneTBB throws), the journal puts back exactly the blocks committed so
// far, and nothing else: the caller's statistics stay untouched on failure.
TEST(CommitJournal, RestoresExactlyTheBlocksCommittedBeforeAFailure) {
  constexpr std::size_t channels = 37;
  std::vector<float> outputs[3];
  for (std::size_t k = 0; k < 3; ++k) {
    for (std::size_t c = 0; c < channels; ++c) outputs[k].push_back(float(k * 100 + c) + 0.5f);
  }
  const std::vector<float> before[3] = {outputs[0], outputs[1], outputs[2]};
  using journal_of_floats = bnorm::detail::commit_journal<float>;
  std::vector<float> kept(journal_of_floats::max_outputs * channels, -7.f);
  std::vector<unsigned char> committed(channels, 1);  // a previous call's flags
  float* const buffers[journal_of_floats::max_outputs] = {outputs[0].data(), nullptr,
                                                          outputs[1].data(), outputs[2].data()};
  const bnorm::detail::commit_journal<float> journal(buffers, channels, kept.data(),
                                                     committed.data());
  const auto commit_block = [&](std::size_t c0, std::size_t c1) {
    journal.keep(c0, c1);
    for (auto& out : outputs) std::fill(out.begin() + c0, out.begin() + c1, -1.f);
  };

  journal.open();
  journal.restore();  // nothing committed yet: a stale flag must not restore garbage
  for (std::size_t k = 0; k < 3; ++k) EXPECT_EQ(outputs[k], before[k]) << "output " << k;

  commit_block(0, 10);
  commit_block(20, channels);
  for (auto& out : outputs) {
    std::fill(out.begin() + 12, out.begin() + 15, 9.f);  // a block the journal never kept
  }
  journal.restore();
  for (std::size_t k = 0; k < 3; ++k) {
    for (std::size_t c = 0; c < channels; ++c) {
      const bool uncommitted = c >= 12 && c < 15;
      EXPECT_EQ(outputs[k][c], uncommitted ? 9.f : before[k][c]) << "output " << k << " c " << c;
    }
  }
}

TEST(Concurrency, SharedPlanAndSeparateModules) {
  check_shared_plan_and_separate_modules(0);
}

// The same under a cap of 2: the host threads' plans and modules share one arena.
TEST(Concurrency, SharedArenaOfACap) {
  check_shared_plan_and_separate_modules(2);
}

// The same with no oneTBB worker: what ThreadSanitizer checks (Debian's oneTBB is not built
// for it, so it cannot see the synchronization of the workers' joins).
TEST(Concurrency, HostThreadsOnly) {
  check_shared_plan_and_separate_modules(1);
}

// Calls from inside the caller's own arena and parallel_for work and give the same bits.
TEST(Concurrency, InsideTheCallersParallelism) {
  const bnorm::tensor_shape shape{4, 32, 64, 64};
  const geometry g(shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 8);
  const bnorm::plan plan = make_plan_or_fail({shape, layout::channels_last}, {});
  const training_result serial = train(plan, x, g.c);
  for (int arena_size : {1, 2}) {
    tbb::task_arena arena(arena_size);
    std::vector<training_result> results(6);
    arena.execute([&] {
      EXPECT_EQ(tbb::this_task_arena::max_concurrency(), arena_size);
      tbb::parallel_for(0, 6, [&](int i) { results[i] = train(plan, x, g.c); });
    });
    for (const auto& r : results) EXPECT_TRUE(same_bits(r, serial)) << "arena " << arena_size;
  }
}

// A plan with no thread cap of its own runs in the caller's arena: an arena of one gets no
// worker, an arena of two does.
class worker_counter : public tbb::task_scheduler_observer {
 public:
  explicit worker_counter(tbb::task_arena& arena) : tbb::task_scheduler_observer(arena) {
    observe(true);
  }
  ~worker_counter() override { observe(false); }
  void on_scheduler_entry(bool is_worker) override {
    if (is_worker) ++workers;
  }
  std::atomic<int> workers{0};
};

TEST(Concurrency, RespectsTheCallersArenaLimit) {
  const bnorm::tensor_shape shape{16, 64, 32, 32};
  const geometry g(shape);
  const std::vector<float> x = normal_data<float>(g.elements(), 0.0, 1.0, 10);
  const bnorm::plan plan = make_plan_or_fail({shape, layout::channels_first}, {});
  tbb::task_arena one(1);
  worker_counter in_one(one);
  one.execute([&] { train(plan, x, g.c); });
  EXPECT_EQ(in_one.workers.load(), 0) << "a worker joined an arena of one";
  if (tbb::info::default_concurrency() > 1) {
    tbb::task_arena two(2);
    worker_counter in_two(two);
    // A worker joins once the OS runs it: on a loaded machine that can take many calls, so
    // the test retries for a while rather than a fixed number of times.
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (in_two.workers.load() == 0 && std::chrono::steady_clock::now() < give_up) {
      two.execute([&] { train(plan, x, g.c); });
    }
    EXPECT_GT(in_two.workers.load(), 0) << "the plan never used the caller's second thread";
  }
}

// ---------------------------------------------------------------------------- determinism

// Every benchmark shape, both layouts, both paths: the same bits for thread caps 1, 2, 3 and 8
// and on a repeated run.
TEST(DeterminismAcrossTheSuite, BitwiseEqualForEveryThreadCap) {
  for (const auto& s : bnorm_bench::suite()) {
    const bnorm::tensor_shape shape = s.shape();
    const geometry g(shape);
    const std::vector<float> x = normal_data<float>(g.elements(), -1.0, 2.5, 9);
    for (layout l : {layout::channels_first, layout::channels_last}) {
      SCOPED_TRACE(std::string(s.name) + (l == layout::channels_first ? " nchw" : " nhwc"));
      training_result first;
      std::vector<float> first_inference;
      for (int threads : {1, 2, 3, 8, 2}) {
        bnorm::plan_options opts;
        opts.max_threads = threads;
        const bnorm::plan plan = make_plan_or_fail({shape, l}, opts);
        const training_result r = train(plan, x, g.c);
        std::vector<float> y(x.size());
        bnorm::inference_args inf;
        inf.src = x.data();
        inf.dst = y.data();
        inf.mean = in(r.running_mean);
        inf.var = in(r.running_var);
        ASSERT_TRUE(plan.forward_inference(inf).ok());
        if (threads == 1) {
          first = r;
          first_inference = y;
        } else {
          EXPECT_TRUE(same_bits(r, first)) << "training, threads " << threads;
          EXPECT_TRUE(same_bits(y, first_inference)) << "inference, threads " << threads;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------- big tensors

// More than 2^31 elements, in place, inference: 64-bit index arithmetic everywhere. Opt in with
// BNORM_BIG_TESTS=1 (needs 8.6 GB of memory), as the ctest label "big" does; .ci/run runs it when
// the machine has the memory.
TEST(BigTensor, InPlaceInferenceBeyond2To31Elements) {
  if (std::getenv("BNORM_BIG_TESTS") == nullptr) GTEST_SKIP() << "set BNORM_BIG_TESTS=1";
  const std::int64_t n = 1, c = 2, l = (std::int64_t{1} << 30) + 5;  // 2^31 + 10 elements
  std::vector<float> x(static_cast<std::size_t>(n * c * l));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 1024);
  const std::vector<float> mean{1.f, 2.f}, var{4.f, 16.f};
  for (layout lay : {layout::channels_first, layout::channels_last}) {
    const bnorm::plan plan = make_plan_or_fail({{n, c, l}, lay, bnorm::dtype::f32, 0.0}, {});
    std::vector<float>& y = x;
    bnorm::inference_args args;
    args.src = y.data();
    args.dst = y.data();
    args.mean = in(mean);
    args.var = in(var);
    ASSERT_TRUE(plan.forward_inference(args).ok());
    for (std::size_t probe :
         {std::size_t{0}, std::size_t{1} << 31, x.size() - 1, x.size() / 2 + 5}) {
      const std::size_t ch = lay == layout::channels_first ? (probe / l) % c : probe % c;
      const double before = static_cast<double>(probe % 1024);
      const double want = (before - mean[ch]) / std::sqrt(var[ch]);
      EXPECT_NEAR(y[probe], want, 1e-4 * (1 + std::fabs(want))) << "element " << probe;
    }
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 1024);  // reset
  }
}

}  // namespace
