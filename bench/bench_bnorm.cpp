// Training vs inference over the benchmark suite, both layouts, thread caps 1 and all cores.
// Each case reports bytes/s of the traffic a batch norm cannot avoid: training reads x twice
// (statistics, then normalization) and writes y; inference reads x and writes y.
//
//   build/bench/bnorm_bench --benchmark_filter=r50 --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include <oneapi/tbb/info.h>

#include "bnorm/bnorm.hpp"
#include "shapes.hpp"

namespace {

using bnorm_bench::bench_shape;

enum class path { training, inference };

struct fixture {
  bnorm::plan plan;
  std::vector<float> x, y, gamma, beta, mean, inv_std, running_mean, running_var;
};

fixture make_fixture(const bench_shape& s, bnorm::layout l, int threads) {
  fixture f;
  bnorm::plan_options opts;
  opts.max_threads = threads;
  const bnorm::status st = bnorm::make_plan({s.shape(), l, bnorm::dtype::f32, 1e-5}, opts, &f.plan);
  if (!st.ok()) return f;
  const auto count = static_cast<std::size_t>(s.elements());
  const auto c = static_cast<std::size_t>(s.c);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.5f, 2.0f);
  f.x.resize(count);
  for (float& v : f.x) v = dist(rng);
  f.y.assign(count, 0.f);
  f.gamma.assign(c, 1.5f);
  f.beta.assign(c, 0.25f);
  f.mean.assign(c, 0.f);
  f.inv_std.assign(c, 0.f);
  f.running_mean.assign(c, 0.f);
  f.running_var.assign(c, 1.f);
  return f;
}

void run_case(benchmark::State& state, const bench_shape& s, bnorm::layout l, path p, int threads) {
  fixture f = make_fixture(s, l, threads);
  if (!f.plan.valid()) {
    state.SkipWithError("make_plan failed");
    return;
  }
  std::vector<unsigned char> storage(f.plan.scratch_size() + 64);
  void* scratch = storage.data() + (64 - reinterpret_cast<std::uintptr_t>(storage.data()) % 64) % 64;
  bnorm::training_args train;
  train.src = f.x.data();
  train.dst = f.y.data();
  train.scale = {f.gamma.data(), f.gamma.size()};
  train.shift = {f.beta.data(), f.beta.size()};
  train.batch_mean = {f.mean.data(), f.mean.size()};
  train.batch_inv_std = {f.inv_std.data(), f.inv_std.size()};
  train.running_mean = {f.running_mean.data(), f.running_mean.size()};
  train.running_var = {f.running_var.data(), f.running_var.size()};
  train.scratch = scratch;
  train.scratch_size = f.plan.scratch_size();
  bnorm::inference_args infer;
  infer.src = f.x.data();
  infer.dst = f.y.data();
  infer.scale = train.scale;
  infer.shift = train.shift;
  infer.mean = {f.running_mean.data(), f.running_mean.size()};
  infer.var = {f.running_var.data(), f.running_var.size()};
  infer.scratch = scratch;
  infer.scratch_size = train.scratch_size;
  for (auto _ : state) {
    const bnorm::status st =
        p == path::training ? f.plan.forward_training(train) : f.plan.forward_inference(infer);
    if (!st.ok()) {
      state.SkipWithError(st.message());
      break;
    }
    benchmark::DoNotOptimize(f.y.data());
    benchmark::ClobberMemory();
  }
  const double bytes = static_cast<double>(s.elements()) * sizeof(float) *
                       (p == path::training ? 3.0 : 2.0);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  state.counters["threads"] = threads;
  state.SetLabel(bnorm::to_string(f.plan.isa()));
}

void register_all() {
  const int cores = tbb::info::default_concurrency();
  for (const bench_shape& s : bnorm_bench::suite()) {
    for (bnorm::layout l : {bnorm::layout::channels_first, bnorm::layout::channels_last}) {
      for (path p : {path::training, path::inference}) {
        for (int threads : {1, cores}) {
          const std::string name = std::string(s.name) +
                                   (l == bnorm::layout::channels_first ? "/nchw" : "/nhwc") +
                                   (p == path::training ? "/train" : "/infer") + "/threads:" +
                                   std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
            run_case(st, s, l, p, threads);
          })->UseRealTime();
          if (cores == 1) break;
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
