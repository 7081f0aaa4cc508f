// What the data's values cost: training and backward calls on data that take bnorm's careful
// paths, against ordinary data of the same tensor. Patterns: `ordinary` (x spread around 0.5,
// dy varying), `zero_sums` (integer x over a power of two of values a channel, dy of 1: every
// float32 Σdy·(x − mean) exactly zero, kernels::sums_small_products sums it again in float64),
// `one_nan` (ordinary, one NaN in x), `huge` (x around 1e31, spread 1e30: float32 squares
// overflow, the blocks are summed again in float64). One process, one thread, batches of calls
// alternating between the patterns, in one order and then the other; prints the medians of the
// batches, µs a call, and each pattern's ratio to ordinary data's.
//
//   g++ -std=c++17 -O2 -Iinclude -Ibuild/release/include scripts/data_costs.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/data_costs     (one line)
//   /tmp/data_costs [--last] [--bf16] N C [spatial...]
//   e.g. /tmp/data_costs --last 16 64 64 64
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

enum pattern { ordinary, zero_sums, one_nan, huge, patterns };
const char* const pattern_names[patterns] = {"ordinary", "zero_sums", "one_nan", "huge"};

template <class S>
S element(float v) {
  if constexpr (std::is_same_v<S, float>) {
    return v;
  } else {
    return S::from_float(v);
  }
}

template <class S>
int run(const bnorm::plan& plan, const std::vector<std::int64_t>& dims) {
  std::size_t elements = 1;
  for (const std::int64_t d : dims) elements *= static_cast<std::size_t>(d);
  const std::size_t c = static_cast<std::size_t>(dims[1]);
  std::vector<S> x[patterns], dy[patterns];
  for (int p = 0; p < patterns; ++p) {
    x[p].resize(elements);
    dy[p].resize(elements);
    for (std::size_t i = 0; i < elements; ++i) {
      const float spread = static_cast<float>(i * 7919 % 1013) / 1013.0f;  // [0, 1)
      const float varying = static_cast<float>(i * 31 % 17) * 0.125f - 1.0f;
      float value = spread, gradient = varying;
      if (p == zero_sums) {
        value = static_cast<float>(i * 7919 % 13);
        gradient = 1.0f;
      } else if (p == huge) {
        value = 1e31f + 1e30f * spread;
      }
      x[p][i] = element<S>(value);
      dy[p][i] = element<S>(gradient);
    }
  }
  x[one_nan][elements / 3] = element<S>(std::numeric_limits<float>::quiet_NaN());
  std::vector<S> y(elements), dx(elements);
  std::vector<float> gamma(c, 1.0f), beta(c, 0.0f), mean(c, 0.0f), var(c, 1.0f);
  std::vector<float> saved_mean[patterns], saved_inv_std[patterns];
  std::vector<float> dgamma(c), dbeta(c);
  std::int64_t steps = 0;
  const auto train = [&](int p) {
    saved_mean[p].resize(c);
    saved_inv_std[p].resize(c);
    bnorm::training_args t;
    t.src = x[p].data();
    t.dst = y.data();
    t.scale = {gamma.data(), c};
    t.shift = {beta.data(), c};
    t.batch_mean = {saved_mean[p].data(), c};
    t.batch_inv_std = {saved_inv_std[p].data(), c};
    t.running_mean = {mean.data(), c};
    t.running_var = {var.data(), c};
    t.num_batches_tracked = &steps;
    return plan.forward_training(t);
  };
  const auto backward = [&](int p) {
    bnorm::backward_args b;
    b.src = x[p].data();
    b.diff_dst = dy[p].data();
    b.diff_src = dx.data();
    b.scale = {gamma.data(), c};
    b.mean = {saved_mean[p].data(), c};
    b.inv_std = {saved_inv_std[p].data(), c};
    b.diff_scale = {dgamma.data(), c};
    b.diff_shift = {dbeta.data(), c};
    return plan.backward_training(b);
  };
  std::vector<double> us[patterns][2];
  for (int round = 0; round < 16; ++round) {
    for (int q = 0; q < patterns; ++q) {
      const int p = round % 2 == 0 ? q : patterns - 1 - q;  // either order: see plan_ab.cpp
      for (int mode = 0; mode < 2; ++mode) {
        constexpr int calls = 3;
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i) {
          if (bnorm::status s = mode == 0 ? train(p) : backward(p); !s) {
            std::fprintf(stderr, "%s\n", s.message());
            return 1;
          }
        }
        const std::chrono::duration<double, std::micro> took =
            std::chrono::steady_clock::now() - start;
        if (round > 0) us[p][mode].push_back(took.count() / calls);
      }
    }
  }
  std::printf("%s\n", plan.describe());
  double median[patterns][2];
  for (int p = 0; p < patterns; ++p) {
    for (int mode = 0; mode < 2; ++mode) {
      std::vector<double>& v = us[p][mode];
      std::sort(v.begin(), v.end());
      median[p][mode] = v[v.size() / 2];
    }
    std::printf("%-10s training %9.1f us (%.2fx)  backward %9.1f us (%.2fx)\n", pattern_names[p],
                median[p][0], median[p][0] / median[ordinary][0], median[p][1],
                median[p][1] / median[ordinary][1]);
  }
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
