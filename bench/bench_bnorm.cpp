// The benchmark harness: bnorm's training and inference paths, and its training and frozen
// backward, over the suite of shapes, both layouts, one thread and all cores, each next to its
// memory roofline (measured here, in the same process) and, when built with oneDNN, oneDNN on
// the same buffers.
//
//   bnorm_bench [google benchmark flags]      names: SHAPE/LAYOUT/MODE/threads:T/IMPL
//               [--fail_on_error]             exits 1 if a case ended in an error (bnorm's
//                                             call refused, a peer's output rejected)
//   bnorm_bench --samples_out=FILE            writes sampled bnorm outputs for bench_torch.py
//   bnorm_bench --calls=CASE --count=K        runs bnorm's CASE (e.g. r50_b1_c2048_7/nchw/train/
//                                             threads:1) K times and nothing else: under
//                                             valgrind --tool=callgrind, the difference of two
//                                             counts gives instructions per call, which a noisy
//                                             machine does not move. CASE/roofline runs the
//                                             case's roofline pass instead.
//
// Half cases (train_bf16, infer_f16, ...) store x and y as bfloat16 or float16 with float32
// parameters; their bytes, and their roofline's, are the half tensors'.
//
// Bytes/s count the traffic a batch norm cannot avoid: training reads x twice and writes y;
// inference reads x and writes y; the backward reads x and dy twice (a reduce pass, then the
// map) and writes dx; the frozen backward reads dy and writes dx. Every implementation of a
// case reports the same bytes. Backward cases also run `roofline1`, their one-pass bound (one
// read of x and dy, one write of dx).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
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

/// The paths, and both forwards with a fused activation: ReLU, and add+ReLU with a residual
/// (relu and add_relu are inference's; train_relu and train_add_relu training's).
enum class mode {
  training,
  inference,
  backward,
  frozen,
  relu,
  add_relu,
  training_relu,
  training_add_relu
};

const char* mode_name(mode m) {
  switch (m) {
    case mode::training: return "train";
    case mode::inference: return "infer";
    case mode::backward: return "backward";
    case mode::frozen: return "frozen";
    case mode::relu: return "relu";
    case mode::add_relu: return "add_relu";
    case mode::training_relu: return "train_relu";
    case mode::training_add_relu: return "train_add_relu";
  }
  return "?";
}

/// Tensor-sizes of traffic a case cannot avoid (see above).
double traffic(mode m) {
  switch (m) {
    case mode::training: return 3;
    case mode::inference: return 2;
    case mode::backward: return 5;
    case mode::frozen: return 2;
    case mode::relu: return 2;
    case mode::add_relu: return 3;  // x and z read, y written
    case mode::training_relu: return 3;
    case mode::training_add_relu: return 4;  // x read twice, z read, y written
  }
  return 0;
}
constexpr double epsilon = 1e-5;

/// Bytes of a tensor element of the case's storage type.
std::size_t element_bytes(bnorm::dtype type) {
  return type == bnorm::dtype::f32 ? 4 : 2;
}

struct bench_case {
  bench_shape shape;
  bnorm::layout layout;
  mode m;
  int threads;
  /// f32, or the half storage types (training and inference): modes train_bf16, infer_f16...
  bnorm::dtype type = bnorm::dtype::f32;

  std::string name(const char* impl) const {
    const std::string storage =
        type == bnorm::dtype::f32 ? "" : std::string("_") + bnorm::to_string(type);
    return std::string(shape.name) + (layout == bnorm::layout::channels_first ? "/nchw" : "/nhwc") +
           "/" + mode_name(m) + storage + "/threads:" + std::to_string(threads) + "/" + impl;
  }
  double bytes() const {
    return static_cast<double>(shape.elements()) * element_bytes(type) * traffic(m);
  }
  bool half() const { return type != bnorm::dtype::f32; }
  bool backward() const { return m == mode::backward || m == mode::frozen; }
  bool adds_residual() const { return m == mode::add_relu || m == mode::training_add_relu; }
  bool fused() const { return m == mode::relu || adds_residual() || m == mode::training_relu; }
  bool trains() const {
    return m == mode::training || m == mode::training_relu || m == mode::training_add_relu;
  }
  /// The case without its activation: what `unfused` runs before its separate pass.
  mode plain() const { return trains() ? mode::training : mode::inference; }
  /// The cases whose second tensor (dy, or the residual z) the buffers hold.
  bool two_inputs() const { return backward() || adds_residual(); }
};

using tensor = bnorm_bench::aligned_vector<float>;

/// A tensor in memory order, reproducible in numpy (bench_torch.py uses the same formulas):
/// the input x, or (with its own multiplier and range) the upstream gradient dy.
tensor make_values(std::size_t n, std::size_t multiplier, double range, double low) {
  tensor x(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] =
        static_cast<float>(static_cast<double>((i * multiplier) % 10007) / 10007.0 * range + low);
  }
  return x;
}

/// A float as a half storage type's bits, rounded to nearest even (NaN aside: none here).
std::uint16_t half_bits(float v, bnorm::dtype type) {
  if (type == bnorm::dtype::f16) {
    const _Float16 h = static_cast<_Float16>(v);
    std::uint16_t bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
  }
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return static_cast<std::uint16_t>((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}

float half_value(std::uint16_t bits, bnorm::dtype type) {
  if (type == bnorm::dtype::f16) {
    _Float16 h;
    std::memcpy(&h, &bits, sizeof h);
    return static_cast<float>(h);
  }
  const std::uint32_t wide = static_cast<std::uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

using half_tensor = bnorm_bench::aligned_vector<std::uint16_t>;

/// Buffers of one case; gamma 1.5, beta 0.25, running mean 0 and variance 1. Half cases keep
/// x rounded to their storage type in hx, and y in hy.
struct buffers {
  tensor x, y, dy, dx;
  half_tensor hx, hy;
  std::vector<float> gamma, beta, mean, var, batch_mean, batch_inv_std, dgamma, dbeta;
  explicit buffers(const bench_case& k)
      : x(make_values(static_cast<std::size_t>(k.shape.elements()), 7919, 4.0, -1.5)),
        y(x.size()),
        dy(k.two_inputs() ? make_values(x.size(), 104729, 2.0, -1.0) : tensor()),
        dx(dy.size()),
        gamma(static_cast<std::size_t>(k.shape.c), 1.5f),
        beta(gamma.size(), 0.25f),
        mean(gamma.size(), 0.f),
        var(gamma.size(), 1.f),
        batch_mean(gamma.size()),
        batch_inv_std(gamma.size()),
        dgamma(gamma.size()),
        dbeta(gamma.size()) {
    if (k.half()) {
      hx.resize(x.size());
      hy.resize(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) hx[i] = half_bits(x[i], k.type);
    }
  }
  const void* src(const bench_case& k) const {
    return k.half() ? static_cast<const void*>(hx.data()) : x.data();
  }
  void* dst(const bench_case& k) { return k.half() ? static_cast<void*>(hy.data()) : y.data(); }
  /// What the case computes: y, or dx (half outputs widened to float).
  tensor output(const bench_case& k) const {
    if (!k.half()) return k.backward() ? dx : y;
    tensor widened(hy.size());
    for (std::size_t i = 0; i < hy.size(); ++i) widened[i] = half_value(hy[i], k.type);
    return widened;
  }
};

/// A bnorm plan bound to a case's buffers; run() executes the case's path once.
class bnorm_runner {
 public:
  bnorm_runner(const bench_case& k, buffers& b, int threads) : mode_(k.m) {
    bnorm::plan_options opts;
    opts.max_threads = threads;
    opts.activation = !k.fused()          ? bnorm::activation::none
                      : k.adds_residual() ? bnorm::activation::add_relu
                                          : bnorm::activation::relu;
    status_ = bnorm::make_plan({k.shape.shape(), k.layout, k.type, epsilon}, opts, &plan_);
    scratch_.resize(plan_.scratch_size() + 64);
    void* scratch =
        scratch_.data() + (64 - reinterpret_cast<std::uintptr_t>(scratch_.data()) % 64) % 64;
    train_.src = infer_.src = b.src(k);
    train_.dst = infer_.dst = b.dst(k);
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
    if (k.adds_residual()) train_.residual = infer_.residual = b.dy.data();  // dy's holds z
    infer_.var = {b.var.data(), b.var.size()};
    train_.scratch = infer_.scratch = backward_.scratch = scratch;
    train_.scratch_size = infer_.scratch_size = backward_.scratch_size = plan_.scratch_size();
    backward_.src = b.x.data();
    backward_.diff_dst = b.dy.data();
    backward_.diff_src = b.dx.data();
    backward_.scale = train_.scale;
    if (k.m == mode::backward) {
      // The statistics a training forward saves, as an engine passes them on.
      if (status_) status_ = plan_.forward_training(train_);
      backward_.mean = {b.batch_mean.data(), b.batch_mean.size()};
      backward_.inv_std = {b.batch_inv_std.data(), b.batch_inv_std.size()};
      backward_.diff_scale = {b.dgamma.data(), b.dgamma.size()};
      backward_.diff_shift = {b.dbeta.data(), b.dbeta.size()};
    } else {  // frozen: dx alone, from the running variance
      backward_.var = infer_.var;
    }
  }
  bnorm::status run() const {
    if (!status_) return status_;
    switch (mode_) {
      case mode::training:
      case mode::training_relu:
      case mode::training_add_relu: return plan_.forward_training(train_);
      case mode::inference:
      case mode::relu:
      case mode::add_relu: return plan_.forward_inference(infer_);
      case mode::backward: return plan_.backward_training(backward_);
      case mode::frozen: return plan_.backward_frozen(backward_);
    }
    return status_;
  }
  const bnorm::plan& plan() const { return plan_; }

 private:
  mode mode_;
  bnorm::status status_;
  bnorm::plan plan_;
  std::vector<unsigned char> scratch_;
  std::vector<float> running_mean_, running_var_;
  bnorm::training_args train_;
  bnorm::inference_args infer_;
  bnorm::backward_args backward_;
};

void finish(benchmark::State& state, const bench_case& k) {
  state.SetBytesProcessed(static_cast<std::int64_t>(k.bytes()) * state.iterations());
  state.counters["threads"] = k.threads;
}

/// One pass of a case's roofline, its outputs written with `stores`; with `one_pass`, a
/// backward's one-pass bound.
void roofline_pass(const bench_case& k, buffers& b, bnorm_bench::stores stores,
                   bool one_pass = false) {
  if (k.half()) {  // the same bytes, streamed as floats
    const std::size_t n = b.hx.size() * sizeof(std::uint16_t) / sizeof(float);
    const float* x = reinterpret_cast<const float*>(b.hx.data());
    if (k.m == mode::training) benchmark::DoNotOptimize(bnorm_bench::stream_sum(x, n, k.threads));
    bnorm_bench::stream_affine(x, reinterpret_cast<float*>(b.hy.data()), n, k.threads, stores);
    benchmark::ClobberMemory();
    return;
  }
  const std::size_t n = b.x.size();
  switch (k.m) {
    case mode::training:
      benchmark::DoNotOptimize(bnorm_bench::stream_sum(b.x.data(), n, k.threads));
      [[fallthrough]];
    case mode::inference:
      bnorm_bench::stream_affine(b.x.data(), b.y.data(), n, k.threads, stores);
      break;
    case mode::backward:
      if (!one_pass) {
        benchmark::DoNotOptimize(bnorm_bench::stream_sum2(b.x.data(), b.dy.data(), n, k.threads));
      }
      bnorm_bench::stream_combine(b.x.data(), b.dy.data(), b.dx.data(), n, k.threads, stores);
      break;
    case mode::frozen:
      bnorm_bench::stream_affine(b.dy.data(), b.dx.data(), n, k.threads, stores);
      break;
    case mode::relu:
      bnorm_bench::stream_affine(b.x.data(), b.y.data(), n, k.threads, stores);
      break;
    case mode::add_relu:
      bnorm_bench::stream_combine(b.x.data(), b.dy.data(), b.y.data(), n, k.threads, stores);
      break;
    case mode::training_relu:
      benchmark::DoNotOptimize(bnorm_bench::stream_sum(b.x.data(), n, k.threads));
      bnorm_bench::stream_affine(b.x.data(), b.y.data(), n, k.threads, stores);
      break;
    case mode::training_add_relu:
      benchmark::DoNotOptimize(bnorm_bench::stream_sum(b.x.data(), n, k.threads));
      bnorm_bench::stream_combine(b.x.data(), b.dy.data(), b.y.data(), n, k.threads, stores);
      break;
  }
  benchmark::ClobberMemory();
}

/// The faster stores for a case's roofline on this machine: the first time a process runs the
/// case, the best of four passes of each, alternating (the first also touches the buffers).
bnorm_bench::stores faster_stores(const bench_case& k, buffers& b, bool one_pass) {
  static std::map<std::string, bnorm_bench::stores> chosen;
  const std::string name = k.name(one_pass ? "roofline1" : "roofline");
  if (const auto found = chosen.find(name); found != chosen.end()) {
    roofline_pass(k, b, found->second, one_pass);  // first touch
    return found->second;
  }
  using bnorm_bench::stores;
  double best[2] = {std::numeric_limits<double>::infinity(),
                    std::numeric_limits<double>::infinity()};
  for (int round = 0; round < 4; ++round) {
    for (const stores kind : {stores::cached, stores::streamed}) {
      const auto start = std::chrono::steady_clock::now();
      roofline_pass(k, b, kind, one_pass);
      const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
      double& best_of_kind = best[kind == stores::streamed];
      best_of_kind = std::min(best_of_kind, took.count());
    }
  }
  return chosen[name] = best[1] < best[0] ? stores::streamed : stores::cached;
}

void run_roofline(benchmark::State& state, const bench_case& k, bool one_pass) {
  buffers b(k);
  const bnorm_bench::stores stores = faster_stores(k, b, one_pass);
  for (auto _ : state) roofline_pass(k, b, stores, one_pass);
  finish(state, k);
  state.SetLabel(stores == bnorm_bench::stores::streamed ? "streamed stores" : "cached stores");
}

/// Cases that ended in an error (bnorm's call refused, a peer's output rejected): with
/// --fail_on_error, the exit status says so (the benchmark_smoke test).
int failed_cases = 0;

void fail_case(benchmark::State& state, const std::string& message) {
  ++failed_cases;
  state.SkipWithError(message.c_str());
}

/// max over i < n of |got(i) − expected(i)| / (1 + |expected(i)|); +inf where a term is NaN,
/// which no tolerance accepts (a running maximum by comparisons would let a later term drop it).
template <class Got, class Expected>
double worst_relative_error(std::size_t n, Got got, Expected expected) {
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = std::fabs(got(i) - expected(i)) / (1 + std::fabs(expected(i)));
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, e);
  }
  return worst;
}

void run_bnorm(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  const bnorm_runner runner(k, b, k.threads);
  if (bnorm::status s = runner.run(); !s) {
    fail_case(state, s.message());
    return;
  }
  for (auto _ : state) {
    runner.run();
    benchmark::ClobberMemory();
  }
  finish(state, k);
  state.SetLabel(runner.plan().describe());  // the ISA first, then the schedule
}

/// A fused-activation case as an engine runs it without fusion: bnorm's plain forward (the same
/// path), then a separate activation pass over y.
void run_unfused(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  bench_case plain = k;
  plain.m = k.plain();
  const bnorm_runner runner(plain, b, k.threads);
  const auto step = [&] {
    const bnorm::status s = runner.run();
    if (!k.adds_residual()) {
      bnorm_bench::stream_relu(b.y.data(), b.y.size(), k.threads);
    } else {
      bnorm_bench::stream_add_relu(b.y.data(), b.dy.data(), b.y.size(), k.threads);
    }
    return s;
  };
  if (bnorm::status s = step(); !s) {
    fail_case(state, s.message());
    return;
  }
  for (auto _ : state) {
    step();
    benchmark::ClobberMemory();
  }
  finish(state, k);
}

#if BNORM_BENCH_WITH_ONEDNN
void run_onednn(benchmark::State& state, const bench_case& k) {
  buffers b(k);
  // bnorm's output first: oneDNN's time counts only if it computes the same thing.
  const bnorm_runner runner(k, b, 1);
  if (bnorm::status s = runner.run(); !s) {
    fail_case(state, s.message());
    return;
  }
  const tensor expected = b.output(k);
  tensor& output = k.backward() ? b.dx : b.y;
  std::fill(output.begin(), output.end(), 0.f);
  std::fill(b.hy.begin(), b.hy.end(), std::uint16_t{0});
  std::vector<float> mean = b.mean, var = b.var;
  if (k.m == mode::backward) {  // the batch statistics, oneDNN taking the biased variance
    mean = b.batch_mean;
    for (std::size_t c = 0; c < var.size(); ++c) {
      const double inv = b.batch_inv_std[c];
      var[c] = static_cast<float>(1.0 / (inv * inv) - epsilon);
    }
  }
  std::vector<float> dgamma(b.gamma.size()), dbeta(b.gamma.size());
  bnorm_bench::peer_buffers peer_args;
  peer_args.src = b.src(k);
  peer_args.dst = b.dst(k);
  peer_args.scale = b.gamma.data();
  peer_args.shift = b.beta.data();
  peer_args.mean = mean.data();
  peer_args.var = var.data();
  peer_args.diff_dst = b.dy.data();
  peer_args.diff_src = b.dx.data();
  peer_args.diff_scale = dgamma.data();
  peer_args.diff_shift = dbeta.data();
  const bnorm_bench::peer_kind kind = k.m == mode::training    ? bnorm_bench::peer_kind::training
                                      : k.m == mode::inference ? bnorm_bench::peer_kind::inference
                                      : k.m == mode::relu ? bnorm_bench::peer_kind::inference_relu
                                      : k.m == mode::training_relu
                                          ? bnorm_bench::peer_kind::training_relu
                                      : k.m == mode::backward ? bnorm_bench::peer_kind::backward
                                                              : bnorm_bench::peer_kind::frozen;
  bnorm_bench::onednn_peer peer(k.shape.shape(), k.layout, kind, k.type, epsilon, peer_args,
                                k.threads);
  peer.run();
  // oneDNN's frozen backward takes no scale: its dx is bnorm's over gamma (1.5 throughout).
  const double factor = k.m == mode::frozen ? 1.5 : 1.0;
  const tensor got_output = b.output(k);
  const double worst = worst_relative_error(
      expected.size(), [&](std::size_t i) { return double(got_output[i]) * factor; },
      [&](std::size_t i) { return double(expected[i]); });
  // bfloat16 outputs may differ by an ulp of theirs (2^-8 relative) where rounding differs.
  if (!(worst <= (k.half() ? 1e-2 : 1e-4))) {
    fail_case(state, "oneDNN output differs from bnorm's by " + std::to_string(worst));
    return;
  }
  if (k.m == mode::backward) {  // and dγ, dβ, within float32 sums of the batch's values
    const double worst_parameter =
        std::max(worst_relative_error(
                     dgamma.size(), [&](std::size_t c) { return double(dgamma[c]); },
                     [&](std::size_t c) { return double(b.dgamma[c]); }),
                 worst_relative_error(
                     dbeta.size(), [&](std::size_t c) { return double(dbeta[c]); },
                     [&](std::size_t c) { return double(b.dbeta[c]); }));
    if (!(worst_parameter <= 1e-3)) {
      fail_case(state, "oneDNN dgamma or dbeta differs from bnorm's by " +
                           std::to_string(worst_parameter));
      return;
    }
  }
  for (auto _ : state) {
    peer.run();
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
      for (mode m : {mode::training, mode::inference, mode::backward, mode::frozen, mode::relu,
                     mode::add_relu, mode::training_relu, mode::training_add_relu}) {
        cases.push_back({s, l, m, 1});
        if (cores > 1) cases.push_back({s, l, m, cores});
      }
      for (bnorm::dtype type : {bnorm::dtype::bf16, bnorm::dtype::f16}) {
        for (mode m : {mode::training, mode::inference}) {
          cases.push_back({s, l, m, 1, type});
          if (cores > 1) cases.push_back({s, l, m, cores, type});
        }
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
      run_roofline(s, k, false);
    })->UseRealTime();
    if (k.m == mode::backward) {
      benchmark::RegisterBenchmark(k.name("roofline1").c_str(), [k](benchmark::State& s) {
        run_roofline(s, k, true);
      })->UseRealTime();
    }
    if (k.fused()) {
      benchmark::RegisterBenchmark(k.name("unfused").c_str(), [k](benchmark::State& s) {
        run_unfused(s, k);
      })->UseRealTime();
    }
    benchmark::RegisterBenchmark(k.name("bnorm").c_str(), [k](benchmark::State& s) {
      run_bnorm(s, k);
    })->UseRealTime();
#if BNORM_BENCH_WITH_ONEDNN
    // oneDNN fuses no add+ReLU into its batch norm, and 2.6 has no f16 batch norm on CPU.
    if (!k.adds_residual() && k.type != bnorm::dtype::f16) {
      benchmark::RegisterBenchmark(k.name("onednn").c_str(), [k](benchmark::State& s) {
        run_onednn(s, k);
      })->UseRealTime();
    }
#endif
  }
}

/// The positions of a case's output that bench_torch.py compares with PyTorch's: one in every
/// channel (a batch index and a spatial position spread by a hash of the channel), then 64
/// spread over the whole tensor.
std::vector<std::size_t> sample_positions(const bench_case& k) {
  const auto c_count = static_cast<std::size_t>(k.shape.c);
  const auto n_count = static_cast<std::size_t>(k.shape.n);
  const std::size_t elements = static_cast<std::size_t>(k.shape.elements());
  const std::size_t spatial = elements / (n_count * c_count);
  std::vector<std::size_t> positions;
  for (std::size_t c = 0; c < c_count; ++c) {
    const std::size_t n = (c * 2654435761u) % n_count, s = (c * 40503u + 7) % spatial;
    positions.push_back(k.layout == bnorm::layout::channels_first
                            ? (n * c_count + c) * spatial + s
                            : (n * spatial + s) * c_count + c);
  }
  for (std::size_t j = 0; j < 64; ++j) positions.push_back((j * 2654435761u) % elements);
  return positions;
}

/// A sample [position, value] as JSON, non-finite values as Python's json reads them (NaN,
/// Infinity), which bench_torch.py's check then rejects.
void write_sample(std::FILE* f, const char* separator, std::size_t position, double value) {
  if (std::isfinite(value)) {
    std::fprintf(f, "%s[%zu, %.9g]", separator, position, value);
  } else {
    std::fprintf(f, "%s[%zu, %s]", separator, position,
                 std::isnan(value) ? "NaN"
                 : value > 0       ? "Infinity"
                                   : "-Infinity");
  }
}

/// Sampled bnorm outputs of every case (1 thread: sample_positions), and the backward's dγ and
/// dβ, for bench_torch.py's check of PyTorch.
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
    const tensor out = b.output(k);
    const char* separator = "";
    for (const std::size_t i : sample_positions(k)) {
      write_sample(f, separator, i, static_cast<double>(out[i]));
      separator = ", ";
    }
    std::fprintf(f, "]");
    if (k.m == mode::backward) {  // and every channel's dγ and dβ
      for (const auto& [what, values] : {std::pair{"dgamma", &b.dgamma}, {"dbeta", &b.dbeta}}) {
        std::fprintf(f, ",\n\"%s/%s\": [", k.name("bnorm").c_str(), what);
        for (std::size_t c = 0; c < values->size(); ++c) {
          write_sample(f, c ? ", " : "", c, static_cast<double>((*values)[c]));
        }
        std::fprintf(f, "]");
      }
    }
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
      for (long i = 0; i < count; ++i) roofline_pass(k, b, bnorm_bench::stores::cached);
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
  bool fail_on_error = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--samples_out=", 14) == 0) return write_samples(argv[i] + 14);
    if (std::strncmp(argv[i], "--calls=", 8) == 0) calls = argv[i] + 8;
    if (std::strncmp(argv[i], "--count=", 8) == 0) count = std::atol(argv[i] + 8);
    if (std::strcmp(argv[i], "--fail_on_error") == 0) {
      fail_on_error = true;
      std::copy(argv + i + 1, argv + argc + 1, argv + i);  // not benchmark's: out of its sight
      --argc;
      --i;
    }
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
  if (fail_on_error && failed_cases > 0) {
    std::fprintf(stderr, "%d case(s) ended in an error\n", failed_cases);
    return 1;
  }
  return 0;
}
