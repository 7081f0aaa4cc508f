// Small calls under two ISA caps, timed in one process: batches of calls alternate between the
// two plans, so both see the same phases of a shared machine (whose speed can change by 2×
// from one process to the next). Prints, per mode, the median of the batches' ns a call.
//
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include scripts/isa_ab.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/isa_ab     (one line)
//   /tmp/isa_ab [--bf16] [--last] ISA_A ISA_B N C [spatial...]
//   e.g. /tmp/isa_ab avx512bf16 avx2 2 4
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

std::optional<bnorm::isa> parse_isa(const char* name) {
  for (bnorm::isa i : bnorm::available_isas()) {
    if (std::strcmp(bnorm::to_string(i), name) == 0) return i;
  }
  return std::nullopt;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool bf16 = false, last = false;
  int a = 1;
  for (; a < argc && argv[a][0] == '-'; ++a) {
    bf16 = bf16 || std::strcmp(argv[a], "--bf16") == 0;
    last = last || std::strcmp(argv[a], "--last") == 0;
  }
  if (argc - a < 4) {
    std::fprintf(stderr, "usage: %s [--bf16] [--last] ISA_A ISA_B N C [spatial...]\n", argv[0]);
    return 2;
  }
  const std::optional<bnorm::isa> isas[2] = {parse_isa(argv[a]), parse_isa(argv[a + 1])};
  if (!isas[0] || !isas[1]) {
    std::fprintf(stderr, "an ISA this CPU does not offer\n");
    return 2;
  }
  std::vector<std::int64_t> dims;
  for (int i = a + 2; i < argc; ++i) dims.push_back(std::atoll(argv[i]));
  std::size_t elements = 1;
  for (std::int64_t d : dims) elements *= static_cast<std::size_t>(d);
  const std::size_t c = static_cast<std::size_t>(dims[1]);
  bnorm::problem prob{bnorm::tensor_shape(dims.data(), dims.size()),
                      last ? bnorm::layout::channels_last : bnorm::layout::channels_first,
                      bf16 ? bnorm::dtype::bf16 : bnorm::dtype::f32, 1e-5};
  bnorm::plan plans[2];
  for (int k = 0; k < 2; ++k) {
    bnorm::plan_options options;
    options.max_isa = isas[k];
    options.max_threads = 1;
    if (bnorm::status s = bnorm::make_plan(prob, options, &plans[k]); !s) {
      std::fprintf(stderr, "%s\n", s.message());
      return 1;
    }
  }
  // float32 buffers are large enough for either storage type.
  std::vector<float> x(elements), y(elements), dy(elements, 0.5f), dx(elements);
  for (std::size_t i = 0; i < elements; ++i) x[i] = static_cast<float>(i * 7919 % 101) * 0.01f;
  if (bf16) {
    auto* half = reinterpret_cast<bnorm::bfloat16*>(x.data());
    for (std::size_t i = 0; i < elements; ++i) half[i] = bnorm::bfloat16::from_float(x[i]);
    auto* half_dy = reinterpret_cast<bnorm::bfloat16*>(dy.data());
    for (std::size_t i = 0; i < elements; ++i) half_dy[i] = bnorm::bfloat16::from_float(0.5f);
  }
  std::vector<float> gamma(c, 1.f), beta(c, 0.f), mean(c, 0.f), var(c, 1.f), saved_mean(c),
      saved_inv_std(c), dgamma(c), dbeta(c);
  std::int64_t steps = 0;
  const char* modes[] = {"training", "inference", "backward", "frozen"};
  const auto call = [&](const bnorm::plan& plan, int mode) {
    if (mode == 0) {
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
      return plan.forward_training(t);
    }
    if (mode == 1) {
      bnorm::inference_args i;
      i.src = x.data();
      i.dst = y.data();
      i.scale = {gamma.data(), c};
      i.shift = {beta.data(), c};
      i.mean = {mean.data(), c};
      i.var = {var.data(), c};
      return plan.forward_inference(i);
    }
    bnorm::backward_args b;
    b.diff_dst = dy.data();
    b.diff_src = dx.data();
    b.scale = {gamma.data(), c};
    if (mode == 2) {
      b.src = x.data();
      b.mean = {saved_mean.data(), c};
      b.inv_std = {saved_inv_std.data(), c};
      b.diff_scale = {dgamma.data(), c};
      b.diff_shift = {dbeta.data(), c};
      return plan.backward_training(b);
    }
    b.mean = {mean.data(), c};
    b.var = {var.data(), c};
    return plan.backward_frozen(b);
  };
  constexpr int rounds = 200, calls = 2000;
  std::vector<double> ns[2][4];
  for (int round = 0; round < rounds; ++round) {
    for (int k = 0; k < 2; ++k) {
      for (int mode = 0; mode < 4; ++mode) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) {
          if (bnorm::status s = call(plans[k], mode); !s) {
            std::fprintf(stderr, "%s: %s\n", modes[mode], s.message());
            return 1;
          }
        }
        const std::chrono::duration<double, std::nano> took =
            std::chrono::steady_clock::now() - start;
        ns[k][mode].push_back(took.count() / calls);
      }
    }
  }
  for (int mode = 0; mode < 4; ++mode) {
    std::printf("%-9s  %s %.1f ns  %s %.1f ns\n", modes[mode], argv[a], median(ns[0][mode]),
                argv[a + 1], median(ns[1][mode]));
  }
  return 0;
}
