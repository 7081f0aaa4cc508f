// bnorm's channels-last inference against a plain loop over the same bytes, one thread and two,
// in one process: the open lead of docs/design.md, "Tried and not kept (stop 45)". The loop
// computes y = x·a + b with per-channel a and b that the calling thread rewrites before each call
// (as bnorm works out its coefficients), in two halves of the rows, and in 16 chunks through a
// std::function in an isolated context (as bnorm's run_parallel). Prints the medians of 301
// batches of 20 calls, µs a call, three times.
//
//   g++ -std=c++17 -O3 -march=native -Iinclude -Ibuild/release/include
//       scripts/map_two_threads.cpp build/release/libbnorm.a -ltbb -lpthread
//       -o /tmp/map_two_threads                                        (one line)
//   /tmp/map_two_threads 196 1024      (rows, channels: (1,1024,14,14) NHWC)
#include <bnorm/bnorm.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

namespace {

std::size_t rows, width;
float* x;
float* y;
std::vector<float> a, b;

[[gnu::noinline]] void work_out(float v) {
  for (std::size_t j = 0; j < width; ++j) {
    a[j] = v;
    b[j] = 2 * v;
  }
}

/// Rows [r0, r1): y = x·a + b.
[[gnu::noinline]] void map_rows(std::size_t r0, std::size_t r1) {
  const float* pa = a.data();
  const float* pb = b.data();
  for (std::size_t r = r0; r < r1; ++r) {
    const float* in = x + r * width;
    float* out = y + r * width;
    for (std::size_t j = 0; j < width; ++j) out[j] = in[j] * pa[j] + pb[j];
  }
}

template <class F>
double median_us(const F& f) {
  std::vector<double> t;
  for (int k = 0; k < 301; ++k) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) f();
    t.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                    .count() /
                20);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s rows channels\n", argv[0]);
    return 2;
  }
  rows = std::strtoull(argv[1], nullptr, 10);
  width = std::strtoull(argv[2], nullptr, 10);
  const std::size_t n = rows * width;
  x = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
  y = static_cast<float*>(std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64));
  for (std::size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i * 7919 % 101) * 0.01f;
  a.assign(width, 1.f);
  b.assign(width, 0.f);

  const std::int64_t dims[2] = {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(width)};
  const bnorm::problem prob{bnorm::tensor_shape(dims, 2), bnorm::layout::channels_last,
                            bnorm::dtype::f32, 1e-5};
  bnorm::plan one, two;
  bnorm::plan_options options;
  options.max_threads = 1;
  if (bnorm::status s = bnorm::make_plan(prob, options, &one); !s) {
    std::fprintf(stderr, "%s\n", s.message());
    return 1;
  }
  options.max_threads = 2;
  if (bnorm::status s = bnorm::make_plan(prob, options, &two); !s) {
    std::fprintf(stderr, "%s\n", s.message());
    return 1;
  }
  std::printf("%s\n", two.describe());
  std::vector<float> gamma(width, 1.f), beta(width, 0.f), mean(width, 0.f), var(width, 1.f);
  const auto infer = [&](const bnorm::plan& plan) {
    bnorm::inference_args args;
    args.src = x;
    args.dst = y;
    args.scale = {gamma.data(), width};
    args.shift = {beta.data(), width};
    args.mean = {mean.data(), width};
    args.var = {var.data(), width};
    if (bnorm::status s = plan.forward_inference(args); !s) {
      std::fprintf(stderr, "%s\n", s.message());
      std::exit(1);
    }
  };
  tbb::task_arena arena(2);
  const std::function<void(std::size_t, std::size_t)> chunks = [&](std::size_t c0, std::size_t c1) {
    for (std::size_t c = c0; c < c1; ++c) map_rows(c * rows / 16, (c + 1) * rows / 16);
  };
  for (int k = 0; k < 3; ++k) {
    const double bnorm_one = median_us([&] { infer(one); });
    const double bnorm_two = median_us([&] { infer(two); });
    const double loop_one = median_us([] {
      work_out(1.f);
      map_rows(0, rows);
    });
    const double loop_halves = median_us([&] {
      work_out(1.f);
      arena.execute([&] {
        tbb::parallel_for(tbb::blocked_range<std::size_t>(0, 2, 1),
                          [&](const tbb::blocked_range<std::size_t>& r) {
                            for (std::size_t t = r.begin(); t < r.end(); ++t) {
                              map_rows(t * rows / 2, (t + 1) * rows / 2);
                            }
                          });
      });
    });
    const double loop_chunks = median_us([&] {
      work_out(1.f);
      arena.execute([&] {
        tbb::task_group_context context(tbb::task_group_context::isolated);
        tbb::parallel_for(
            tbb::blocked_range<std::size_t>(0, 16, 1),
            [&](const tbb::blocked_range<std::size_t>& r) { chunks(r.begin(), r.end()); }, context);
      });
    });
    std::printf(
        "bnorm inference: 1 thread %.2f, 2 threads %.2f | loop: 1 thread %.2f, 2 threads in "
        "halves %.2f, in 16 chunks %.2f µs\n",
        bnorm_one, bnorm_two, loop_one, loop_halves, loop_chunks);
  }
  std::free(x);
  std::free(y);
}
