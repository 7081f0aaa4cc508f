// The kernels of two source trees timed in one process: the AVX-512 (avx512bf16) kernel table
// of each tree is compiled into its own object (scripts/kernel_ab.sh; the kernels have internal
// linkage, so the two coexist), and batches of calls alternate between them, so that both see
// the same phases of a shared machine. Prints the median ns a call of each and their ratio.
//
//   bash scripts/kernel_ab.sh OLD_REV [MODE ROWS WIDTH [ELEMENT]]
//   MODE: planes (plane_stats over ROWS planes of WIDTH), planes_gradient, rows
//   (interleaved_stats over ROWS rows of WIDTH slots), rows_gradient, planes_map, rows_map
//   (the centered normalization; with CENTER=0 in the environment, centers of +0: inference's
//   uncentered form), planes_gradient_map, rows_gradient_map (the backward's dx; these four
//   with STREAM set in the environment: streaming stores), coefficients (inference_coefficients of
//   WIDTH channels), moments (channel_moments of WIDTH channels, with gamma); ELEMENT: bf16
//   (default), f16 or f32. Buffers start on cache lines, or OFFSET elements past (environment
//   variable OFFSET). The row modes read READ_AHEAD bytes ahead where their kernels fetch (none
//   unset; READ_AHEAD_NEW, if set, for the new tree's); with ROW_ORDER set, the row sums walk each
//   block's rows in memory order.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/kernels.hpp"

namespace bnorm::kernels {
const kernel_table& table_a() noexcept;
const kernel_table& table_b() noexcept;
}  // namespace bnorm::kernels

namespace {

using namespace bnorm;

/// `count` elements from a cache line on, `offset` elements past it.
template <class S>
struct buffer {
  std::vector<unsigned char> bytes;
  S* data;
  buffer(std::size_t count, std::size_t offset) : bytes((count + offset) * sizeof(S) + 64) {
    const auto at = (reinterpret_cast<std::uintptr_t>(bytes.data()) + 63) & ~std::uintptr_t(63);
    data = reinterpret_cast<S*>(at) + offset;
  }
};

template <class S>
S element(float v) {
  if constexpr (std::is_same<S, float>::value) {
    return v;
  } else {
    return S::from_float(v);
  }
}

template <class S>
int run(const std::string& mode, std::size_t rows, std::size_t width) {
  const char* offset_text = std::getenv("OFFSET");
  const std::size_t offset = offset_text ? std::strtoul(offset_text, nullptr, 10) : 0;
  const std::size_t n = rows * width;
  buffer<S> x(n, offset), dy(n, offset), y(n, offset);
  for (std::size_t i = 0; i < n; ++i) {
    x.data[i] = element<S>(1.0f + static_cast<float>(i * 7919 % 1000) * 1e-3f);
    dy.data[i] = element<S>(static_cast<float>(i * 104729 % 1000) * 1e-3f - 0.5f);
  }
  using T = kernels::compute_of_t<S>;
  const char* center_text = std::getenv("CENTER");
  const T center_value = center_text ? static_cast<T>(std::strtod(center_text, nullptr)) : T(1.5);
  std::vector<T> center(width + 64, center_value), scale(width + 64, T(0.7)),
      shift(width + 64, T(0.1));
  std::vector<double> sum(width), sum_sq(width);
  kernels::normalize_params<T> params;
  params.coeffs = {center.data(), scale.data(), shift.data(), nullptr};
  params.stream = std::getenv("STREAM") != nullptr;
  kernels::gradient_params<T> gradient;
  std::vector<T> zero(width + 64, T(0));  // dy_center
  gradient.coeffs = {center.data(), zero.data(), scale.data(), scale.data(),
                     shift.data(),  nullptr,     nullptr};
  gradient.stream = params.stream;
  // The per-channel modes: WIDTH channels of variances 0.5 to 4.5 and of means near 1.
  std::vector<T> mean(width), variance(width), gamma(width, T(1.25)), beta(width, T(0.5));
  for (std::size_t c = 0; c < width; ++c) {
    mean[c] = T(1) + static_cast<T>(c % 17) * T(0.01);
    variance[c] = T(0.5) + static_cast<T>(c % 9) * T(0.5);
  }
  std::vector<T> prescale(width + 64, T(1));
  const kernels::coefficients<T> coefficients{center.data(), scale.data(), shift.data(),
                                              prescale.data()};
  std::vector<double> sums(width), squares(width), moment_mean(width), moment_variance(width),
      inv_std(width), scaled(width);
  for (std::size_t c = 0; c < width; ++c) {
    sums[c] = 0.1 * static_cast<double>(c % 5);
    squares[c] = 49.0 * static_cast<double>(variance[c]);
  }
  kernels::moment_channels<T> moments;
  moments.channels = width;
  moments.count = 49.0;
  moments.epsilon = 1e-5;
  moments.pivot = mean.data();
  moments.gamma = gamma.data();
  moments.sum_to_mean = moment_mean.data();
  moments.sum_sq_to_variance = moment_variance.data();
  moments.inv_std = inv_std.data();
  moments.scale = scaled.data();
  moments.max_offset_squared = 9.0;
  const kernels::plane_block planes{width, rows, width, 1};
  // The row modes' blocks for the old tree's kernels and the new's.
  kernels::row_block row_blocks[2];
  for (int v = 0; v < 2; ++v) {
    const char* read_ahead_text =
        std::getenv(v == 1 && std::getenv("READ_AHEAD_NEW") ? "READ_AHEAD_NEW" : "READ_AHEAD");
    row_blocks[v] = {rows, width, width};
    row_blocks[v].read_ahead_bytes =
        read_ahead_text ? std::strtoul(read_ahead_text, nullptr, 10) : 0;
    row_blocks[v].in_row_order = std::getenv("ROW_ORDER") != nullptr;
  }
  const auto call = [&](const kernels::kernel_set<S>& k, int which) {
    const kernels::row_block& row_block = row_blocks[which];
    if (mode == "planes") {
      k.plane_stats(x.data, planes, center.data(), sum.data(), sum_sq.data());
    } else if (mode == "planes_gradient") {
      k.plane_gradient_sums(x.data, dy.data, planes, center.data(), sum.data(), sum_sq.data());
    } else if (mode == "rows") {
      k.interleaved_stats(x.data, row_block, center.data(), sum.data(), sum_sq.data(),
                          kernels::sums_mode::start);
    } else if (mode == "rows_gradient") {
      k.interleaved_gradient_sums(x.data, dy.data, row_block, center.data(), sum.data(),
                                  sum_sq.data(), kernels::sums_mode::start);
    } else if (mode == "planes_map") {
      k.plane_normalize(x.data, y.data, nullptr, planes, params, 0);
    } else if (mode == "rows_map") {
      k.interleaved_normalize(x.data, y.data, nullptr, row_block, params, 0);
    } else if (mode == "planes_gradient_map") {
      k.plane_gradient(x.data, dy.data, y.data, planes, gradient, 0);
    } else if (mode == "rows_gradient_map") {
      k.interleaved_gradient(x.data, dy.data, y.data, row_block, gradient, 0);
    } else if (mode == "coefficients") {
      k.inference_coefficients(width, 1e-5, mean.data(), variance.data(), gamma.data(), beta.data(),
                               coefficients, 0);
    } else if (mode == "moments") {
      std::copy(sums.begin(), sums.end(), moment_mean.begin());  // the moments overwrite them
      std::copy(squares.begin(), squares.end(), moment_variance.begin());
      k.channel_moments(moments);
    } else {
      return false;
    }
    return true;
  };
  const kernels::kernel_set<S>* sets[2] = {&kernels::table_a().get<S>(),
                                           &kernels::table_b().get<S>()};
  if (!call(*sets[0], 0)) {
    std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
    return 2;
  }
  const int calls = static_cast<int>(std::max<std::size_t>(1, 4000000 / (n + 1)));
  std::vector<double> ns[2];
  for (int round = 0; round < 41; ++round) {
    for (int v = 0; v < 2; ++v) {
      const int which = round % 2 ? v : 1 - v;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) call(*sets[which], which);
      const std::chrono::duration<double, std::nano> took =
          std::chrono::steady_clock::now() - start;
      ns[which].push_back(took.count() / calls);
    }
  }
  for (auto& v : ns) std::sort(v.begin(), v.end());
  const double a = ns[0][20], b = ns[1][20];
  std::printf("%s %zu × %zu, offset %zu: old %.1f ns, new %.1f ns (new/old %.3f)\n", mode.c_str(),
              rows, width, offset, a, b, b / a);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODE ROWS WIDTH [bf16|f16|f32]\n", argv[0]);
    return 2;
  }
  const std::string mode = argv[1], element_type = argc > 4 ? argv[4] : "bf16";
  const std::size_t rows = std::strtoul(argv[2], nullptr, 10);
  const std::size_t width = std::strtoul(argv[3], nullptr, 10);
  if (element_type == "f32") return run<float>(mode, rows, width);
  if (element_type == "f16") return run<bnorm::float16>(mode, rows, width);
  return run<bnorm::bfloat16>(mode, rows, width);
}
