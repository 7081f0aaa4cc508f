// Calls under two ISA caps or two store policies (plan_options::stores), timed in one process:
// batches of calls alternate between the plans, so both see the same phases of a shared machine
// (whose speed can change by 2× from one process to the next). Buffers start on cache lines, as
// the benchmark's. Prints, per mode and thread count, the median of the batches' ns a call.
//
//   g++ -std=c++17 -O3 -fopenmp-simd -c bench/roofline.cpp -o /tmp/roofline.o
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include -Ibench scripts/plan_ab.cpp
//       /tmp/roofline.o build/release/libbnorm.a -ltbb -lpthread -o /tmp/plan_ab   (one line)
//   /tmp/plan_ab [--bf16 | --f16] [--last] [--threads 1,2] [--rounds R] [--calls K] [--modes M,...]
//                A B N C [spatial...]
//   A, B: two ISAs, two of automatic, cached, streaming, or two of none, relu and add_relu
//   (the fused activation). Defaults: one thread, 200 rounds of 2,000 calls (small tensors),
//   the modes training, inference, backward and frozen. --modes: some of those, statistics
//   (local_statistics: the training's reduce pass alone), training+next, backward+next and
//   inference+next (the call, then the next layer's read of its output: an inference over y
//   or dx with cached stores, which finds a streamed output in memory), gradient_sums
//   (local_gradient_sums: the backward's reduce pass alone) and gradient_map
//   (backward_training_merged from the sums of the first call: its map pass alone), and the
//   backward's rooflines, the same for A and B (bench/roofline.hpp, on the same threads):
//   roofline_sums (Σdy and Σdy·x, one read of both) and roofline_dx (one read of x and dy, one
//   streamed write of dx). Each mode's calls follow the previous mode's, whose outputs may still
//   be in cache: inference after a streamed training finds no y there.
//   e.g. /tmp/plan_ab avx512bf16 avx2 2 4
//        /tmp/plan_ab --threads 1,2 --rounds 20 --calls 5 automatic cached 2 32 16 56 56
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "../support/aligned64.hpp"
#include "roofline.hpp"

namespace {

/// A plan variant named on the command line: an ISA cap, a store policy, or a fused activation
/// without parameters (none, relu, add_relu: its residual z a tensor of its own).
bool apply(const char* name, bnorm::plan_options& options) {
  for (bnorm::activation f :
       {bnorm::activation::none, bnorm::activation::relu, bnorm::activation::add_relu}) {
    if (std::strcmp(bnorm::to_string(f), name) == 0) {
      options.activation = f;
      return true;
    }
  }
  for (bnorm::isa i : bnorm::available_isas()) {
    if (std::strcmp(bnorm::to_string(i), name) == 0) {
      options.max_isa = i;
      return true;
    }
  }
  for (bnorm::store_policy p : {bnorm::store_policy::automatic, bnorm::store_policy::cached,
                                bnorm::store_policy::streaming}) {
    if (std::strcmp(bnorm::to_string(p), name) == 0) {
      options.stores = p;
      return true;
    }
  }
  return false;
}

/// Where roofline_sums leaves its sum, so that the compiler keeps the pass.
volatile double kept_sum;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool bf16 = false, f16 = false, last = false;
  std::vector<int> threads;
  int rounds = 200, calls = 2000;
  constexpr int mode_count = 12;
  const char* modes[mode_count] = {"training",      "inference",      "backward",
                                   "frozen",        "statistics",     "training+next",
                                   "backward+next", "inference+next", "gradient_sums",
                                   "gradient_map",  "roofline_sums",  "roofline_dx"};
  bool runs[mode_count] = {true,  true,  true,  true,  false, false,
                           false, false, false, false, false, false};
  int a = 1;
  for (; a < argc && argv[a][0] == '-'; ++a) {
    bf16 = bf16 || std::strcmp(argv[a], "--bf16") == 0;
    f16 = f16 || std::strcmp(argv[a], "--f16") == 0;
    last = last || std::strcmp(argv[a], "--last") == 0;
    const bool valued = a + 1 < argc;
    if (valued && std::strcmp(argv[a], "--threads") == 0) {
      for (const char* t = argv[++a]; *t != '\0'; t += *t == ',') {
        char* end = nullptr;
        threads.push_back(static_cast<int>(std::strtol(t, &end, 10)));
        if (end == t) return 2;  // not a number
        t = end;
      }
    } else if (valued && std::strcmp(argv[a], "--rounds") == 0) {
      rounds = std::atoi(argv[++a]);
    } else if (valued && std::strcmp(argv[a], "--calls") == 0) {
      calls = std::atoi(argv[++a]);
    } else if (valued && std::strcmp(argv[a], "--modes") == 0) {
      const std::string list = std::string(",") + argv[++a] + ",";
      for (int m = 0; m < mode_count; ++m) {
        runs[m] = list.find(std::string(",") + modes[m] + ",") != std::string::npos;
      }
    }
  }
  if (threads.empty()) threads.push_back(1);
  if (std::none_of(runs, runs + mode_count, [](bool r) { return r; })) {
    std::fprintf(stderr,
                 "--modes: expected some of training,inference,backward,frozen,statistics,"
                 "training+next,backward+next,inference+next,gradient_sums,gradient_map,roofline_"
                 "sums,roofline_dx\n");
    return 2;
  }
  if (argc - a < 4) {
    std::fprintf(stderr,
                 "usage: %s [--bf16 | --f16] [--last] [--threads 1,2] [--rounds R] [--calls K] "
                 "[--modes M,...] A B N C [spatial...]\n",
                 argv[0]);
    return 2;
  }
  bnorm::plan_options variants[2];
  for (int k = 0; k < 2; ++k) {
    if (!apply(argv[a + k], variants[k])) {
      std::fprintf(stderr, "%s: neither an ISA this CPU offers, a store policy nor none or relu\n",
                   argv[a + k]);
      return 2;
    }
  }
  std::vector<std::int64_t> dims;
  for (int i = a + 2; i < argc; ++i) dims.push_back(std::atoll(argv[i]));
  std::size_t elements = 1;
  for (std::int64_t d : dims) elements *= static_cast<std::size_t>(d);
  const std::size_t c = static_cast<std::size_t>(dims[1]);
  bnorm::problem prob{bnorm::tensor_shape(dims.data(), dims.size()),
                      last ? bnorm::layout::channels_last : bnorm::layout::channels_first,
                      bf16  ? bnorm::dtype::bf16
                      : f16 ? bnorm::dtype::f16
                            : bnorm::dtype::f32,
                      1e-5};
  // Plan 2t + k: variant k on threads[t].
  std::vector<bnorm::plan> plans(2 * threads.size());
  for (std::size_t p = 0; p < plans.size(); ++p) {
    bnorm::plan_options options = variants[p % 2];
    options.max_threads = threads[p / 2];
    if (bnorm::status s = bnorm::make_plan(prob, options, &plans[p]); !s) {
      std::fprintf(stderr, "%s\n", s.message());
      return 1;
    }
  }
  for (int k = 0; k < 2; ++k) std::printf("%s: %s\n", argv[a + k], plans[k].describe());
  // The next layer of the +next modes: the same problem on the same threads, its stores cached.
  std::vector<bnorm::plan> next_plans(plans.size());
  for (std::size_t p = 0; p < plans.size(); ++p) {
    bnorm::plan_options options;
    options.max_threads = threads[p / 2];
    options.stores = bnorm::store_policy::cached;
    if (bnorm::status s = bnorm::make_plan(prob, options, &next_plans[p]); !s) {
      std::fprintf(stderr, "%s\n", s.message());
      return 1;
    }
  }
  // float32 buffers are large enough for either storage type.
  // On cache lines, as the benchmark's (a vector's 16-byte alignment splits 64-byte accesses).
  // dy varies as x does, on another pattern: a constant dy makes Σdy·(x − mean) exactly 0,
  // which sends the backward to its float64 sums (sums_small_products), not its common path.
  std::vector<float, bnorm_bench::aligned64<float>> x(elements), y(elements), dy(elements),
      dx(elements), z(elements);
  for (std::size_t i = 0; i < elements; ++i) {
    x[i] = static_cast<float>(i * 7919 % 101) * 0.01f;
    dy[i] = static_cast<float>(i * 104729 % 89) * 0.01f - 0.4f;
    z[i] = static_cast<float>(i * 6101 % 97) * 0.01f - 0.5f;
  }
  // Half-precision storage: each float buffer's first half holds the tensor's values.
  const auto to_half = [&](auto half_type) {
    using half = decltype(half_type);
    for (auto* buffer : {&x, &dy, &z}) {
      auto* values = reinterpret_cast<half*>(buffer->data());
      for (std::size_t i = 0; i < elements; ++i) values[i] = half::from_float((*buffer)[i]);
    }
  };
  if (bf16) to_half(bnorm::bfloat16{});
  if (f16) to_half(bnorm::float16{});
  std::vector<float> gamma(c, 1.f), beta(c, 0.f), mean(c, 0.f), var(c, 1.f), saved_mean(c),
      saved_inv_std(c), dgamma(c), dbeta(c);
  std::int64_t steps = 0;
  std::vector<double> exchange(bnorm::statistics_exchange_size(c)),
      gradient_exchange(bnorm::gradient_exchange_size(c));
  std::vector<float, bnorm_bench::aligned64<float>> next_out(elements);
  // The rooflines stream the tensors' bytes as float32: half as many values for bfloat16.
  const std::size_t floats_of_tensor = bf16 || f16 ? elements / 2 : elements;
  std::function<bnorm::status(const bnorm::plan&, int)> call;
  call = [&](const bnorm::plan& plan, int mode) -> bnorm::status {
    const void* residual =
        plan.options().activation == bnorm::activation::add_relu ? z.data() : nullptr;
    if (mode >= 5 && mode <= 7) {
      // The call, then the next layer's read of its output (an inference over y or dx, cached
      // stores, on the same threads): what a store policy costs or saves its consumer.
      if (bnorm::status s = call(plan, mode == 5 ? 0 : mode == 6 ? 2 : 1); !s) return s;
      bnorm::inference_args i;
      i.src = mode == 6 ? dx.data() : y.data();
      i.dst = next_out.data();
      i.scale = {gamma.data(), c};
      i.shift = {beta.data(), c};
      i.mean = {mean.data(), c};
      i.var = {var.data(), c};
      return next_plans[&plan - plans.data()].forward_inference(i);
    }
    if (mode == 0 || mode == 4) {
      bnorm::training_args t;
      t.src = x.data();
      t.dst = y.data();
      t.scale = {gamma.data(), c};
      t.shift = {beta.data(), c};
      t.batch_mean = {saved_mean.data(), c};
      t.batch_inv_std = {saved_inv_std.data(), c};
      t.running_mean = {mean.data(), c};
      t.running_var = {var.data(), c};
      t.num_batches_tracked = &steps;
      t.residual = residual;
      if (mode == 4) return plan.local_statistics(t, exchange.data(), exchange.size());
      return plan.forward_training(t);
    }
    if (mode == 1) {
      bnorm::inference_args i;
      i.src = x.data();
      i.dst = y.data();
      i.residual = residual;
      i.scale = {gamma.data(), c};
      i.shift = {beta.data(), c};
      i.mean = {mean.data(), c};
      i.var = {var.data(), c};
      return plan.forward_inference(i);
    }
    if (mode == 10) {
      kept_sum = bnorm_bench::stream_sum2(x.data(), dy.data(), floats_of_tensor,
                                          plan.options().max_threads);
      return bnorm::status();
    }
    if (mode == 11) {
      bnorm_bench::stream_combine(x.data(), dy.data(), dx.data(), floats_of_tensor,
                                  plan.options().max_threads, bnorm_bench::stores::streamed);
      return bnorm::status();
    }
    bnorm::backward_args b;
    b.diff_dst = dy.data();
    b.diff_src = dx.data();
    b.scale = {gamma.data(), c};
    // A fused activation's backward masks dy with the forward's output.
    if (plan.options().activation != bnorm::activation::none) b.dst = y.data();
    if (mode == 2 || mode == 8 || mode == 9) {  // the training backward, whole or a pass of it
      b.src = x.data();
      b.mean = {saved_mean.data(), c};
      b.inv_std = {saved_inv_std.data(), c};
      b.diff_scale = {dgamma.data(), c};
      b.diff_shift = {dbeta.data(), c};
      if (mode == 8) {
        return plan.local_gradient_sums(b, gradient_exchange.data(), gradient_exchange.size());
      }
      if (mode == 9) {
        return plan.backward_training_merged(b, gradient_exchange.data(), gradient_exchange.data(),
                                             gradient_exchange.size());
      }
      return plan.backward_training(b);
    }
    b.mean = {mean.data(), c};
    b.var = {var.data(), c};
    return plan.backward_frozen(b);
  };
  for (const bnorm::plan& plan : plans) {
    call(plan, 0);  // the backward's saved statistics
    call(plan, 8);  // gradient_map's sums
  }
  std::vector<std::vector<double>> ns(plans.size() * mode_count);  // plan p, mode m
  for (int round = 0; round < rounds; ++round) {
    // The plans in one order, then in the other: a plan's place in a round can cost it (on two
    // threads, the second of two identical plans ran up to 20% slower).
    for (std::size_t q = 0; q < plans.size(); ++q) {
      const std::size_t p = round % 2 == 0 ? q : plans.size() - 1 - q;
      for (int mode = 0; mode < mode_count; ++mode) {
        if (!runs[mode]) continue;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) {
          if (bnorm::status s = call(plans[p], mode); !s) {
            std::fprintf(stderr, "%s: %s\n", modes[mode], s.message());
            return 1;
          }
        }
        const std::chrono::duration<double, std::nano> took =
            std::chrono::steady_clock::now() - start;
        ns[mode_count * p + mode].push_back(took.count() / calls);
      }
    }
  }
  for (std::size_t t = 0; t < threads.size(); ++t) {
    for (int mode = 0; mode < mode_count; ++mode) {
      if (!runs[mode]) continue;
      std::printf("%-9s %dT  %s %.1f ns  %s %.1f ns\n", modes[mode], threads[t], argv[a],
                  median(ns[mode_count * (2 * t) + mode]), argv[a + 1],
                  median(ns[mode_count * (2 * t + 1) + mode]));
    }
  }
  return 0;
}
