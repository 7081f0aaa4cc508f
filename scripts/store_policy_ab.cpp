// Training, inference and the backward of one tensor under two store policies
// (plan_options::stores), timed in one process: batches of calls alternate between the plans,
// so both see the same phases of a shared machine (whose speed can change by 2× from one
// process to the next), on one thread and on two. Prints, per mode, the median of the batches'
// µs a call.
//
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include scripts/store_policy_ab.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/store_policy_ab     (one line)
//   /tmp/store_policy_ab [--bf16] [--last] POLICY_A POLICY_B N C [spatial...]
//   e.g. /tmp/store_policy_ab automatic cached 2 32 16 56 56
// POLICY: automatic, cached or streaming.
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

namespace {

std::optional<bnorm::store_policy> parse_policy(const char* name) {
  for (bnorm::store_policy p : {bnorm::store_policy::automatic, bnorm::store_policy::cached,
                                bnorm::store_policy::streaming}) {
    if (std::strcmp(bnorm::to_string(p), name) == 0) return p;
  }
  return std::nullopt;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// A 64-byte aligned buffer of `bytes`, every byte `fill` (0x3f3f: bfloat16 0.75, float ~0.75).
struct buffer {
  unsigned char* data;
  buffer(std::size_t bytes, unsigned char fill)
      : data(static_cast<unsigned char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64))) {
    std::memset(data, fill, bytes);
  }
  ~buffer() { std::free(data); }
};

}  // namespace

int main(int argc, char** argv) {
  bool half = false, last = false;
  int arg = 1;
  for (; arg < argc && argv[arg][0] == '-'; ++arg) {
    half = half || std::strcmp(argv[arg], "--bf16") == 0;
    last = last || std::strcmp(argv[arg], "--last") == 0;
  }
  if (argc - arg < 4) {
    std::fprintf(stderr, "usage: %s [--bf16] [--last] POLICY_A POLICY_B N C [spatial...]\n",
                 argv[0]);
    return 2;
  }
  const std::optional<bnorm::store_policy> policies[2] = {parse_policy(argv[arg]),
                                                          parse_policy(argv[arg + 1])};
  if (!policies[0] || !policies[1]) {
    std::fprintf(stderr, "policies: automatic, cached, streaming\n");
    return 2;
  }
  std::vector<std::int64_t> dims;
  for (int i = arg + 2; i < argc; ++i) dims.push_back(std::atoll(argv[i]));
  std::size_t elements = 1;
  for (std::int64_t d : dims) elements *= static_cast<std::size_t>(d);
  const std::size_t c = static_cast<std::size_t>(dims[1]);
  const bnorm::problem prob{bnorm::tensor_shape(dims.data(), dims.size()),
                            last ? bnorm::layout::channels_last : bnorm::layout::channels_first,
                            half ? bnorm::dtype::bf16 : bnorm::dtype::f32, 1e-5};
  bnorm::plan plans[4];  // policy p, threads t: index 2p + t − 1
  for (int p = 0; p < 2; ++p) {
    for (int t = 1; t <= 2; ++t) {
      bnorm::plan_options options;
      options.max_threads = t;
      options.stores = *policies[p];
      if (bnorm::status s = bnorm::make_plan(prob, options, &plans[2 * p + t - 1]); !s) {
        std::fprintf(stderr, "%s\n", s.message());
        return 1;
      }
    }
  }
  for (int p = 0; p < 2; ++p) std::printf("%s: %s\n", argv[arg + p], plans[2 * p].describe());
  const std::size_t bytes = elements * (half ? 2 : 4);
  buffer x(bytes, 0x3f), y(bytes, 0), dy(bytes, 0x3e), dx(bytes, 0);
  std::vector<float> gamma(c, 1.f), beta(c, 0.f), mean(c, 0.f), var(c, 1.f), batch_mean(c),
      batch_inv_std(c), dgamma(c), dbeta(c);
  std::int64_t steps = 0;
  const auto call = [&](const bnorm::plan& plan, int mode) {
    if (mode == 0) {
      bnorm::training_args t;
      t.src = x.data;
      t.dst = y.data;
      t.scale = {gamma.data(), c};
      t.shift = {beta.data(), c};
      t.batch_mean = {batch_mean.data(), c};
      t.batch_inv_std = {batch_inv_std.data(), c};
      t.running_mean = {mean.data(), c};
      t.running_var = {var.data(), c};
      t.num_batches_tracked = &steps;
      return plan.forward_training(t).ok();
    }
    if (mode == 1) {
      bnorm::inference_args a;
      a.src = x.data;
      a.dst = y.data;
      a.scale = {gamma.data(), c};
      a.shift = {beta.data(), c};
      a.mean = {mean.data(), c};
      a.var = {var.data(), c};
      return plan.forward_inference(a).ok();
    }
    bnorm::backward_args b;
    b.src = x.data;
    b.diff_dst = dy.data;
    b.diff_src = dx.data;
    b.scale = {gamma.data(), c};
    b.mean = {batch_mean.data(), c};
    b.inv_std = {batch_inv_std.data(), c};
    b.diff_scale = {dgamma.data(), c};
    b.diff_shift = {dbeta.data(), c};
    return plan.backward_training(b).ok();
  };
  for (const bnorm::plan& plan : plans) call(plan, 0);  // the saved statistics of the backward
  constexpr int rounds = 20, calls = 5;
  std::vector<double> us[4][3];
  for (int round = 0; round < rounds; ++round) {
    for (int k = 0; k < 4; ++k) {
      for (int mode = 0; mode < 3; ++mode) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) {
          if (!call(plans[k], mode)) return 1;
        }
        const std::chrono::duration<double, std::micro> took =
            std::chrono::steady_clock::now() - start;
        us[k][mode].push_back(took.count() / calls);
      }
    }
  }
  std::printf("µs a call     %s 1T  %s 2T  %s 1T  %s 2T\n", argv[arg], argv[arg], argv[arg + 1],
              argv[arg + 1]);
  const char* modes[] = {"training", "inference", "backward"};
  for (int mode = 0; mode < 3; ++mode) {
    std::printf("%-10s", modes[mode]);
    for (int k = 0; k < 4; ++k) std::printf("  %9.1f", median(us[k][mode]));
    std::printf("\n");
  }
  return 0;
}
