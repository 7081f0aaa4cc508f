// The benchmark harness: bnorm's training and inference paths over the suite of shapes, both
// layouts, one thread and all cores, each next to its memory roofline (measured here, in the
// same process) and, when built with oneDNN, oneDNN on the same buffers.
//
//   bnorm_bench [google benchmark flags]      names: SHAPE/LAYOUT/MODE/threads:T/IMPL
//   bnorm_bench --samples_out=FILE            writes sampled bnorm outputs for bench_torch.py
//   bnorm_bench --calls=CASE --count=K        runs bnorm's CASE (e.g. r50_b1_c2048_7/nchw/train/
//                                             threads:1) K times and nothing else: under
//                                             valgrind --tool=callgrind, the difference of two
//                                             counts gives instructions per call, which a noisy
//                                             machine does not move. CASE/roofline runs the
//                                             case's roofline pass instead.
//
// Bytes/s count the traffic a batch norm cannot avoid: training reads x twice and writes y;
// inference reads x and writes y. Every implementation of a case reports the same bytes.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include <oneapi/tbb/info.h>

#include "aligned64.hpp"
#include "bnorm/bnorm.hpp"
#include "roofline.hpp"
#include "shapes.hpp"
#if BNORM_BENCH_WITH_ONEDNN
#include "onednn_peer.hpp"
#endif

namespace {

using bnorm_bench::bench_shape;

enum class mode { training, inference };
constexpr double epsilon = 1e-5;

struct bench_case {
  bench_shape shape;
  bnorm::layout layout;
  mode m;
  int threads;

  std::string name(const char* impl) const {
    return std::string(shape.name) + (layout == bnorm::layout::channels_first ? "/nchw" : "/nhwc") +
           (m == mode::training ? "/train" : "/infer") + "/threads:" + std::to_string(threads) +
           "/" + impl;
  }
  double bytes() const {
    return static_cast<double>(shape.elements()) * sizeof(float) * (m == mode::training ? 3 : 2);
  }
};

using tensor = bnorm_bench::aligned_vector<float>;

/// The input, in memory order, reproducible in numpy (bench_torch.py uses the same formula).
tensor make_input(std::size_t n) {
  tensor x(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(static_cast<double>((i * 7919) % 10007) / 10007.0 * 4.0 - 1.5);
  }
  return x;
}

/// Buffers of one case; gamma 1.5, beta 0.25, running mean 0 and variance 1.
struct buffers {
  tensor x, y;
  std::vector<float> gamma, beta, mean, var, batch_mean, batch_inv_std;
  explicit buffers(const bench_case& k)
      : x(make_input(static_cast<std::size_t>(k.shape.elements()))),
        y(x.size()),
        gamma(static_cast<std::size_t>(k.shape.c), 1.5f),
        beta(gamma.size(), 0.25f),
        mean(gamma.size(), 0.f),
        var(gamma.size(), 1.f),
        batch_mean(gamma.size()),
        batch_inv_std(gamma.size()) {}
};

/// A bnorm plan bound to a case's buffers; run() executes the case's path once.
class bnorm_runner {
 public:
  bnorm_runner(const bench_case& k, buffers& b, int threads) : training_(k.m == mode::training) {
    bnorm::plan_options opts;
    opts.max_threads = threads;
    status_ =
        bnorm::make_plan({k.shape.shape(), k.layout, bnorm::dtype::f32, epsilon}, opts, &plan_);
    scratch_.resize(plan_.scratch_size() + 64);
    void* scratch =
        scratch_.data() + (64 - reinterpret_cast<std::uintptr_t>(scratch_.data()) % 64) % 64;
    train_.src = infer_.src = b.x.data();
    train_.dst = infer_.dst = b.y.data();
    train_.scale = infer_.scale = {b.gamma.data(), b.gamma.size()};
    train_.shift = infer_.shift = {b.beta.data(), b.beta.size()};
    train_.batch_mean = {b.batch_mean.data(), b.batch_mean.size()};
    train_.batch_inv_std = {b.batch_inv_std.data(), b.batch_inv_std.size()};
    // Training updates statistics the benchmark never reads back: give it its own copies.
    running_mean_ = b.mean;
    running_var_ = b.var;
    train_.running_mean = {running_mean_.data(), running_mean_.size()};
    train_.running_var = {running_var_.data(), running_var_.size()};
    infer_.mean = {b.mean.data(), b.mean.size()};
    infer_.var = {b.var.data(), b.var.size()};
    train_.scratch = infer_.scratch = scratch;
    train_.scratch_size = infer_.scratch_size = plan_.scratch_size();
  }
  bnorm::status run() const {
    if (!status_) return status_;
    return training_ ? plan_.forward_training(train_) : plan_.forward_inference(infer_);
  }
  const bnorm::plan& plan() const { return plan_; }

 private:
  bool training_;
  bnorm::status status_;
  bnorm::plan plan_;
  std::vector<unsigned char> scratch_;
  std::vector<float> running_mean_, running_var_;
  bnorm::training_args train_;
  bnorm::inference_args infer_;
};

void finish(benchmark::State& state, const bench_case& k) {
  state.SetBytesProcessed(static_cast<std::int64_t>(k.bytes()) * state.iterations());
  state.counters["threads"] = k.threads;
}

/// One pass of a case's roofline.
void roofline_pass(const bench_case& k, buffers& b) {
  const std::size_t n = b.x.size();
  if (k.m == mode::training) {
    benchmark::DoNotOptimize(bnorm_bench::stream_sum(b.x.data(), n, k.threads));
  }
  bnorm_bench::stream_affine(b.x.data(), b.y.data(), n, k.threads);
  benchmark::ClobberMemory();
}

void run_roofline(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  const std::size_t n = b.x.size();
  bnorm_bench::stream_affine(b.x.data(), b.y.data(), n, k.threads);  // first touch
  for (auto _ : state) roofline_pass(k, b);
  finish(state, k);
}

void run_bnorm(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  const bnorm_runner runner(k, b, k.threads);
  if (bnorm::status s = runner.run(); !s) {
    state.SkipWithError(s.message());
    return;
  }
  for (auto _ : state) {
    runner.run();
    benchmark::ClobberMemory();
  }
  finish(state, k);
  state.SetLabel(runner.plan().describe());  // the ISA first, then the schedule
}

#if BNORM_BENCH_WITH_ONEDNN
void run_onednn(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  // bnorm's output first: oneDNN's time counts only if it computes the same thing.
  const bnorm_runner runner(k, b, 1);
  if (bnorm::status s = runner.run(); !s) {
    state.SkipWithError(s.message());
    return;
  }
  const tensor expected = b.y;
  std::fill(b.y.begin(), b.y.end(), 0.f);
  std::vector<float> mean = b.mean, var = b.var;
  bnorm_bench::onednn_peer peer(k.shape.shape(), k.layout, k.m == mode::training, epsilon,
                                b.x.data(), b.y.data(), b.gamma.data(), b.beta.data(), mean.data(),
                                var.data());
  peer.run(k.threads);
  double worst = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double e = std::fabs(double(b.y[i]) - expected[i]) / (1 + std::fabs(double(expected[i])));
    if (!(e <= worst)) worst = e;
  }
  if (!(worst <= 1e-4)) {
    const std::string message = "oneDNN output differs from bnorm's by " + std::to_string(worst);
    state.SkipWithError(message.c_str());
    return;
  }
  for (auto _ : state) {
    peer.run(k.threads);
    benchmark::ClobberMemory();
  }
  finish(state, k);
  state.SetLabel(std::string("oneDNN ") + bnorm_bench::onednn_peer::version());
}
#endif

std::vector<bench_case> all_cases() {
  const int cores = tbb::info::default_concurrency();
  std::vector<bench_case> cases;
  for (const bench_shape& s : bnorm_bench::suite()) {
    for (bnorm::layout l : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
      for (mode m : {mode::training, mode::inference}) {
        cases.push_back({s, l, m, 1});
        if (cores > 1) cases.push_back({s, l, m, cores});
      }
    }
  }
  return cases;
}

void register_all() {
  for (const bench_case& k : all_cases()) {
    // Adjacent, so that the roofline and the peers see the same machine state as the case;
    // bench.sh also interleaves the repetitions of all cases at random, so that a burst of
    // load from a neighbour on a shared machine spoils a few repetitions, not a whole case.
    benchmark::RegisterBenchmark(k.name("roofline").c_str(), [k](benchmark::State& s) {
      run_roofline(s, k);
    })->UseRealTime();
    benchmark::RegisterBenchmark(k.name("bnorm").c_str(), [k](benchmark::State& s) {
      run_bnorm(s, k);
    })->UseRealTime();
#if BNORM_BENCH_WITH_ONEDNN
    benchmark::RegisterBenchmark(k.name("onednn").c_str(), [k](benchmark::State& s) {
      run_onednn(s, k);
    })->UseRealTime();
#endif
  }
}

/// Sampled bnorm outputs of every case (1 thread), for bench_torch.py's check of PyTorch.
int write_samples(const char* path) {
  std::FILE* f = std::fopen(path, "w");
  if (!f) return 1;
  std::fprintf(f, "{\n");
  bool first = true;
  for (const bench_case& k : all_cases()) {
    if (k.threads != 1) continue;
    buffers b(k);
    const bnorm_runner runner(k, b, 1);
    if (!runner.run()) continue;
    std::fprintf(f, "%s\"%s\": [", first ? "" : ",\n", k.name("bnorm").c_str());
    first = false;
    for (std::size_t j = 0; j < 64; ++j) {
      const std::size_t i = (j * 2654435761u) % b.y.size();
      std::fprintf(f, "%s[%zu, %.9g]", j ? ", " : "", i, static_cast<double>(b.y[i]));
    }
    std::fprintf(f, "]");
  }
  std::fprintf(f, "\n}\n");
  return std::fclose(f) == 0 ? 0 : 1;
}

/// Runs one bnorm case (or, with IMPL roofline, its roofline) `count` times, for instruction
/// counts.
int run_calls(const std::string& wanted, long count) {
  for (const bench_case& k : all_cases()) {
    const bool roofline = k.name("roofline") == wanted;
    if (!roofline && k.name("bnorm") != wanted + "/bnorm") continue;
    buffers b(k);
    if (roofline) {
      for (long i = 0; i < count; ++i) roofline_pass(k, b);
      return 0;
    }
    const bnorm_runner runner(k, b, k.threads);
    for (long i = 0; i < count; ++i) {
      if (!runner.run()) return 1;
    }
    return 0;
  }
  std::fprintf(stderr, "no case %s (see --benchmark_list_tests)\n", wanted.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string calls;
  long count = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--samples_out=", 14) == 0) return write_samples(argv[i] + 14);
    if (std::strncmp(argv[i], "--calls=", 8) == 0) calls = argv[i] + 8;
    if (std::strncmp(argv[i], "--count=", 8) == 0) count = std::atol(argv[i] + 8);
  }
  if (!calls.empty()) return run_calls(calls, count);
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("bnorm_version", BNORM_VERSION_STRING);
#if BNORM_BENCH_WITH_ONEDNN
  benchmark::AddCustomContext("onednn_version", bnorm_bench::onednn_peer::version());
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
