// The channels-first plane kernels alone, per ISA table of this CPU: N planes of C channels of
// L values each (an (N, C, L) tensor, 64-byte aligned, warm in cache; N = 1 unless given),
// float32, or bfloat16 or float16 storage after --bf16 or --f16, timed in one process with the
// tables taking turns. Prints, per table, the median ns of a call of each kernel: plane_pivots,
// plane_stats, plane_normalize, plane_gradient_sums and plane_gradient.
//
//   g++ -std=c++17 -O2 -Isrc -Iinclude -Ibuild/release/include scripts/plane_kernel_timing.cpp
//       build/release/libbnorm.a -ltbb -lpthread -o /tmp/plane_kernel_timing     (one line)
//   /tmp/plane_kernel_timing [--bf16|--f16] C L [N]   e.g. /tmp/plane_kernel_timing 2048 49
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "cpu_isa.hpp"
#include "kernels/kernels.hpp"

namespace {

namespace kernels = bnorm::kernels;

template <class S>
struct aligned_elements {
  explicit aligned_elements(std::size_t n)
      : data(static_cast<S*>(::operator new (n * sizeof(S), std::align_val_t{64}))) {
    std::fill(data, data + n, S{});
  }
  ~aligned_elements() { ::operator delete (data, std::align_val_t{64}); }
  aligned_elements(const aligned_elements&) = delete;
  aligned_elements& operator=(const aligned_elements&) = delete;
  S* data;
};

float as_float(float v) {
  return v;
}
float as_float(bnorm::bfloat16 v) {
  return v.to_float();
}
float as_float(bnorm::float16 v) {
  return v.to_float();
}
template <class S>
S from_float(float v) {
  if constexpr (std::is_same<S, float>::value) {
    return v;
  } else {
    return S::from_float(v);
  }
}

/// Median ns of a call of f over `batches` batches of `calls` calls.
template <class F>
double median_ns(int batches, int calls, const F& f) {
  std::vector<double> ns;
  for (int b = 0; b < batches; ++b) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) f();
    const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
    ns.push_back(took.count() / calls);
  }
  std::sort(ns.begin(), ns.end());
  return ns[ns.size() / 2];
}

template <class S>
int time_kernels(std::size_t channels, std::size_t len, std::size_t planes) {
  const std::size_t n = planes * channels * len;
  aligned_elements<S> x(n + 32), dy(n + 32), out(n + 32);
  for (std::size_t i = 0; i < n; ++i) {
    x.data[i] = from_float<S>(3.0f + static_cast<float>(i * 7919 % 101) * 0.02f);
    dy.data[i] = from_float<S>(static_cast<float>(i * 104729 % 97) * 0.01f - 0.5f);
  }
  std::vector<float> pivot(channels), zeros(channels + 16, 0.0f), ones(channels + 16, 1.0f);
  std::vector<double> sum(channels), sum_sq(channels);
  const kernels::plane_block block{len, planes, channels * len, channels};
  kernels::normalize_params<float> normalize;
  normalize.coeffs = {zeros.data(), ones.data(), zeros.data(), ones.data()};
  kernels::gradient_params<float> gradient;
  // center 0, dy_center 0, dy_scale 1, x_scale 0, shift 0, prescales 1
  gradient.coeffs = {zeros.data(), zeros.data(), ones.data(), zeros.data(),
                     zeros.data(), ones.data(),  ones.data()};
  const int calls =
      static_cast<int>(std::max<std::size_t>(1, 2000000 / std::max<std::size_t>(n, 1)));
  for (int round = 0; round < 3; ++round) {
    for (bnorm::isa isa : bnorm::available_isas()) {
      const kernels::kernel_set<S>& k = bnorm::detail::table_for(isa).template get<S>();
      const double pivots =
          median_ns(31, calls, [&] { k.plane_pivots(x.data, block, pivot.data()); });
      const double stats = median_ns(31, calls, [&] {
        k.plane_stats(x.data, block, pivot.data(), sum.data(), sum_sq.data());
      });
      const double normalized = median_ns(
          31, calls, [&] { k.plane_normalize(x.data, out.data, nullptr, block, normalize, 0); });
      const double gradient_sums = median_ns(31, calls, [&] {
        k.plane_gradient_sums(x.data, dy.data, block, pivot.data(), sum.data(), sum_sq.data());
      });
      const double gradient_map = median_ns(
          31, calls, [&] { k.plane_gradient(x.data, dy.data, out.data, block, gradient, 0); });
      std::printf(
          "%-10s pivots %8.0f  stats %8.0f  normalize %8.0f  gradient sums %8.0f  "
          "gradient %8.0f ns\n",
          bnorm::to_string(isa), pivots, stats, normalized, gradient_sums, gradient_map);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* storage = argc > 1 && argv[1][0] == '-' ? argv[1] : nullptr;
  const int first = storage ? 2 : 1;
  const int given = argc - first;
  if ((given != 2 && given != 3) ||
      (storage && std::strcmp(storage, "--bf16") != 0 && std::strcmp(storage, "--f16") != 0)) {
    std::fprintf(stderr, "usage: %s [--bf16|--f16] C L [N]\n", argv[0]);
    return 2;
  }
  const std::size_t channels = std::strtoul(argv[first], nullptr, 10);
  const std::size_t len = std::strtoul(argv[first + 1], nullptr, 10);
  const std::size_t planes = given == 3 ? std::strtoul(argv[first + 2], nullptr, 10) : 1;
  if (!storage) return time_kernels<float>(channels, len, planes);
  if (std::strcmp(storage, "--bf16") == 0) {
    return time_kernels<bnorm::bfloat16>(channels, len, planes);
  }
  return time_kernels<bnorm::float16>(channels, len, planes);
}
