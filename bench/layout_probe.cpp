// A probe for the channels-last inference gap (see README, Benchmarks): on ONE pair of buffers,
// in one process, it alternates bnorm's channels-first and channels-last inference of the same
// shape, the roofline's plain y = a·x + b pass and a plain per-channel row loop, so that the
// placement of x and y in memory and the machine's state are the same for all four. It prints
// each variant's min, first quartile and median time per call.
//
//   bnorm_layout_probe N C H W [--threads T] [--y-offset BYTES] [--scratch-offset BYTES]
//                      [--rounds R]
//
// --y-offset moves y by that many bytes (a multiple of 4) from a 4 KiB boundary; x starts on
// one. --scratch-offset passes bnorm a caller scratch that many bytes (a multiple of 64) past a
// 4 KiB boundary; without it bnorm uses its own. Speed is measured here, not asserted.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "bnorm/bnorm.hpp"
#include "roofline.hpp"

namespace {

/// y[r·C + c] = (x[r·C + c] − center[c])·scale[c] + shift[c]: the least a channels-last
/// normalization does, left to the compiler's vectorizer for every clone.
__attribute__((target_clones("avx512f", "avx2", "default"))) void rows_with_coefficients(
    const float* x, float* y, std::size_t rows, std::size_t channels, const float* center,
    const float* scale, const float* shift) {
  for (std::size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * channels;
    float* yr = y + r * channels;
#pragma omp simd
    for (std::size_t c = 0; c < channels; ++c) yr[c] = (xr[c] - center[c]) * scale[c] + shift[c];
  }
}

struct page_buffer {  // 4 KiB aligned, freed on scope exit
  float* data;
  explicit page_buffer(std::size_t bytes)
      : data(static_cast<float*>(::operator new(bytes, std::align_val_t(4096)))) {}
  ~page_buffer() { ::operator delete(data, std::align_val_t(4096)); }
  page_buffer(const page_buffer&) = delete;
  page_buffer& operator=(const page_buffer&) = delete;
};

bool make(const bnorm::tensor_shape& shape, bnorm::layout l, int threads, bnorm::plan* out) {
  bnorm::plan_options options;
  options.max_threads = threads;
  const bnorm::status s = bnorm::make_plan({shape, l, bnorm::dtype::f32, 1e-5}, options, out);
  if (!s) std::fprintf(stderr, "%s\n", s.message());
  return static_cast<bool>(s);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: %s N C H W [--threads T] [--y-offset BYTES] [--scratch-offset BYTES] "
                 "[--rounds R]\n",
                 argv[0]);
    return 2;
  }
  const std::int64_t n = std::atoll(argv[1]), c = std::atoll(argv[2]);
  const std::int64_t h = std::atoll(argv[3]), w = std::atoll(argv[4]);
  int threads = 1, rounds = 100;
  std::size_t y_offset = 0;
  long scratch_offset = -1;
  for (int i = 5; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (flag == "--y-offset")
      y_offset = std::strtoull(argv[i + 1], nullptr, 10) / 4 * 4;
    else if (flag == "--scratch-offset")
      scratch_offset = std::atol(argv[i + 1]) / 64 * 64;
    else if (flag == "--rounds")
      rounds = std::atoi(argv[i + 1]);
  }
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0 || threads <= 0 || rounds <= 0) {
    std::fprintf(stderr, "N, C, H, W, T and R must be positive\n");
    return 2;
  }
  const bnorm::tensor_shape shape{n, c, h, w};
  const std::size_t elements = static_cast<std::size_t>(n * c * h * w);
  const std::size_t channels = static_cast<std::size_t>(c);
  page_buffer x_buffer(elements * sizeof(float)), y_buffer(elements * sizeof(float) + y_offset);
  float* x = x_buffer.data;
  float* y = y_buffer.data + y_offset / sizeof(float);
  for (std::size_t i = 0; i < elements; ++i) x[i] = static_cast<float>(i * 7919 % 10007) / 10007.f;
  std::fill(y, y + elements, 0.f);
  std::vector<float> gamma(channels, 1.5f), beta(channels, 0.25f), mean(channels, 0.1f),
      var(channels, 1.f), center(channels, 0.1f), scale(channels, 1.5f), shift(channels, 0.25f);

  bnorm::plan first, last;
  if (!make(shape, bnorm::layout::channels_first, threads, &first) ||
      !make(shape, bnorm::layout::channels_last, threads, &last)) {
    return 1;
  }
  bnorm::inference_args args;
  args.src = x;
  args.dst = y;
  args.scale = {gamma.data(), channels};
  args.shift = {beta.data(), channels};
  args.mean = {mean.data(), channels};
  args.var = {var.data(), channels};
  const std::size_t scratch_bytes = std::max(first.scratch_size(), last.scratch_size());
  page_buffer scratch_buffer(scratch_bytes + 4096);
  if (scratch_offset >= 0) {
    args.scratch = reinterpret_cast<unsigned char*>(scratch_buffer.data) + scratch_offset % 4096;
    args.scratch_size = scratch_bytes;
  }

  struct variant {
    const char* name;
    std::function<void()> run;
    std::vector<double> us;
  };
  std::vector<variant> variants;
  variants.push_back({"bnorm channels-last", [&] { last.forward_inference(args); }, {}});
  variants.push_back({"bnorm channels-first", [&] { first.forward_inference(args); }, {}});
  variants.push_back(
      {"plain y = a*x + b", [&] { bnorm_bench::stream_affine(x, y, elements, threads); }, {}});
  if (threads == 1) {
    variants.push_back({"plain per-channel rows",
                        [&] {
                          rows_with_coefficients(x, y, elements / channels, channels, center.data(),
                                                 scale.data(), shift.data());
                        },
                        {}});
  }
  constexpr int calls = 10;
  for (int round = 0; round < rounds; ++round) {
    for (variant& v : variants) {
      v.run();  // the previous variant's cache state out of the way
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) v.run();
      const std::chrono::duration<double, std::micro> took =
          std::chrono::steady_clock::now() - start;
      v.us.push_back(took.count() / calls);
    }
  }
  std::printf(
      "(%lld,%lld,%lld,%lld) float32, %d thread(s), y %zu bytes past a 4 KiB boundary, "
      "scratch %ld (-1: bnorm's own), %d rounds of %d calls; µs per call\n",
      static_cast<long long>(n), static_cast<long long>(c), static_cast<long long>(h),
      static_cast<long long>(w), threads, y_offset, scratch_offset % 4096, rounds, calls);
  for (variant& v : variants) {
    std::sort(v.us.begin(), v.us.end());
    std::printf("%-24s min %8.1f  p25 %8.1f  median %8.1f\n", v.name, v.us.front(),
                v.us[v.us.size() / 4], v.us[v.us.size() / 2]);
  }
  return 0;
}
