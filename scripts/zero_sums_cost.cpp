// What the backward pays where its float32 Σdy·(x − mean) is exactly zero while Σdy is not,
// which kernels::sums_small_products answers by summing the channel again in float64: dy of 1
// on integer-valued x whose mean is exact (a power of two of values a channel), in every
// channel, against dy that varies. One process, one thread, batches of calls alternating
// between the two; prints the medians of the batches, µs a call, and their ratio.
//
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include scripts/zero_sums_cost.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/zero_sums_cost     (one line)
//   /tmp/zero_sums_cost [--last] [--bf16] N C [spatial...]
//   e.g. /tmp/zero_sums_cost --last 16 64 64 64
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

template <class S>
int run(const bnorm::plan& plan, const std::vector<std::int64_t>& dims) {
  std::size_t elements = 1;
  for (const std::int64_t d : dims) elements *= static_cast<std::size_t>(d);
  const std::size_t c = static_cast<std::size_t>(dims[1]);
  const auto value = [](float v) {
    if constexpr (std::is_same_v<S, float>) {
      return v;
    } else {
      return S::from_float(v);
    }
  };
  std::vector<S> x(elements), y(elements), ones(elements, value(1.0f)), varying(elements),
      dx(elements);
  for (std::size_t i = 0; i < elements; ++i) {
    x[i] = value(static_cast<float>(i * 7919 % 13));
    varying[i] = value(static_cast<float>(i * 31 % 17) * 0.125f - 1.0f);
  }
  std::vector<float> gamma(c, 1.0f), beta(c, 0.0f), mean(c, 0.0f), var(c, 1.0f), saved_mean(c),
      saved_inv_std(c), dgamma(c), dbeta(c);
  std::int64_t steps = 0;
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
  if (bnorm::status s = plan.forward_training(t); !s) {
    std::fprintf(stderr, "%s\n", s.message());
    return 1;
  }
  std::vector<double> us[2];
  for (int round = 0; round < 21; ++round) {
    for (int which = 0; which < 2; ++which) {
      bnorm::backward_args b;
      b.src = x.data();
      b.diff_dst = which == 0 ? ones.data() : varying.data();
      b.diff_src = dx.data();
      b.scale = {gamma.data(), c};
      b.mean = {saved_mean.data(), c};
      b.inv_std = {saved_inv_std.data(), c};
      b.diff_scale = {dgamma.data(), c};
      b.diff_shift = {dbeta.data(), c};
      constexpr int calls = 3;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) {
        if (bnorm::status s = plan.backward_training(b); !s) {
          std::fprintf(stderr, "%s\n", s.message());
          return 1;
        }
      }
      const std::chrono::duration<double, std::micro> took =
          std::chrono::steady_clock::now() - start;
      if (round > 0) us[which].push_back(took.count() / calls);
    }
  }
  for (std::vector<double>& v : us) std::sort(v.begin(), v.end());
  const double zero = us[0][us[0].size() / 2], ordinary = us[1][us[1].size() / 2];
  std::printf("%s\ndy of 1: %.1f us  varying dy: %.1f us  ratio %.2f\n", plan.describe(), zero,
              ordinary, zero / ordinary);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bnorm::problem prob;
  std::vector<std::int64_t> dims;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "--last") == 0) {
      prob.layout = bnorm::layout::channels_last;
    } else if (std::strcmp(argv[a], "--bf16") == 0) {
      prob.dtype = bnorm::dtype::bf16;
    } else {
      dims.push_back(std::atoll(argv[a]));
    }
  }
  if (dims.size() < 2) {
    std::fprintf(stderr, "usage: %s [--last] [--bf16] N C [spatial...]\n", argv[0]);
    return 2;
  }
  prob.shape = bnorm::tensor_shape(dims.data(), dims.size());
  bnorm::plan_options options;
  options.max_threads = 1;
  bnorm::plan plan;
  if (bnorm::status s = bnorm::make_plan(prob, options, &plan); !s) {
    std::fprintf(stderr, "%s\n", s.message());
    return 1;
  }
  return prob.dtype == bnorm::dtype::bf16 ? run<bnorm::bfloat16>(plan, dims)
                                          : run<float>(plan, dims);
}
