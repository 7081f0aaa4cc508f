#include "roofline.hpp"

#include <map>
#include <memory>
#include <mutex>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/parallel_reduce.h>
#include <oneapi/tbb/task_arena.h>

namespace bnorm_bench {
namespace {

constexpr std::size_t chunk = 32 * 1024;  // elements per task, as bnorm's unit

// Each loop is compiled for the best ISA of the CPU (GCC function multiversioning), so the
// roofline is what the memory system allows, not what a baseline build emits.
__attribute__((target_clones("avx512f", "avx2", "default"))) void affine_block(const float* x,
                                                                               float* y,
                                                                               std::size_t n) {
#pragma omp simd
  for (std::size_t i = 0; i < n; ++i) y[i] = 1.5f * x[i] + 0.25f;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) double sum_block(const float* x,
                                                                              std::size_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (std::size_t i = 0; i < n; ++i) s += x[i];
  return s;
}

tbb::task_arena& arena_for(int threads) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<tbb::task_arena>> arenas;
  std::lock_guard<std::mutex> lock(mutex);
  auto& a = arenas[threads];
  if (!a) a = std::make_unique<tbb::task_arena>(threads);
  return *a;
}

}  // namespace

void stream_affine(const float* x, float* y, std::size_t n, int threads) {
  if (threads <= 1 || n <= chunk) {
    affine_block(x, y, n);
    return;
  }
  arena_for(threads).execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<std::size_t>(0, n, chunk),
        [&](const tbb::blocked_range<std::size_t>& r) {
          affine_block(x + r.begin(), y + r.begin(), r.size());
        },
        tbb::static_partitioner());
  });
}

double stream_sum(const float* x, std::size_t n, int threads) {
  if (threads <= 1 || n <= chunk) return sum_block(x, n);
  return arena_for(threads).execute([&] {
    return tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, n, chunk), 0.0,
        [&](const tbb::blocked_range<std::size_t>& r, double s) {
          return s + sum_block(x + r.begin(), r.size());
        },
        [](double a, double b) { return a + b; }, tbb::static_partitioner());
  });
}

}  // namespace bnorm_bench
