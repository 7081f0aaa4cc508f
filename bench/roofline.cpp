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

__attribute__((target_clones("avx512f", "avx2", "default"))) double sum2_block(const float* x,
                                                                               const float* dy,
                                                                               std::size_t n) {
  float s = 0.f, t = 0.f;
#pragma omp simd reduction(+ : s, t)
  for (std::size_t i = 0; i < n; ++i) {
    s += dy[i];
    t += dy[i] * x[i];
  }
  return s + t;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void combine_block(const float* x,
                                                                                const float* dy,
                                                                                float* dx,
                                                                                std::size_t n) {
#pragma omp simd
  for (std::size_t i = 0; i < n; ++i) dx[i] = 1.5f * dy[i] - 0.5f * x[i] + 0.25f;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void relu_block(float* y,
                                                                             std::size_t n) {
#pragma omp simd
  for (std::size_t i = 0; i < n; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void add_relu_block(float* y,
                                                                                 const float* z,
                                                                                 std::size_t n) {
#pragma omp simd
  for (std::size_t i = 0; i < n; ++i) {
    const float v = y[i] + z[i];
    y[i] = v < 0.f ? 0.f : v;
  }
}

tbb::task_arena& arena_for(int threads) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<tbb::task_arena>> arenas;
  std::lock_guard<std::mutex> lock(mutex);
  auto& a = arenas[threads];
  if (!a) a = std::make_unique<tbb::task_arena>(threads);
  return *a;
}

/// body(begin, end) over [0, n) in chunks, on `threads` threads.
template <class Body>
void for_chunks(std::size_t n, int threads, const Body& body) {
  if (threads <= 1 || n <= chunk) {
    body(std::size_t{0}, n);
    return;
  }
  arena_for(threads).execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<std::size_t>(0, n, chunk),
        [&](const tbb::blocked_range<std::size_t>& r) { body(r.begin(), r.end()); },
        tbb::static_partitioner());
  });
}

template <class Block>
double sum_chunks(std::size_t n, int threads, const Block& block) {
  if (threads <= 1 || n <= chunk) return block(std::size_t{0}, n);
  return arena_for(threads).execute([&] {
    return tbb::parallel_reduce(
        tbb::blocked_range<std::size_t>(0, n, chunk), 0.0,
        [&](const tbb::blocked_range<std::size_t>& r, double s) {
          return s + block(r.begin(), r.end());
        },
        [](double a, double b) { return a + b; }, tbb::static_partitioner());
  });
}

}  // namespace

void stream_affine(const float* x, float* y, std::size_t n, int threads) {
  for_chunks(n, threads, [&](std::size_t b, std::size_t e) { affine_block(x + b, y + b, e - b); });
}

double stream_sum(const float* x, std::size_t n, int threads) {
  return sum_chunks(n, threads,
                    [&](std::size_t b, std::size_t e) { return sum_block(x + b, e - b); });
}

double stream_sum2(const float* x, const float* dy, std::size_t n, int threads) {
  return sum_chunks(n, threads,
                    [&](std::size_t b, std::size_t e) { return sum2_block(x + b, dy + b, e - b); });
}

void stream_combine(const float* x, const float* dy, float* dx, std::size_t n, int threads) {
  for_chunks(n, threads,
             [&](std::size_t b, std::size_t e) { combine_block(x + b, dy + b, dx + b, e - b); });
}

void stream_relu(float* y, std::size_t n, int threads) {
  for_chunks(n, threads, [&](std::size_t b, std::size_t e) { relu_block(y + b, e - b); });
}

void stream_add_relu(float* y, const float* z, std::size_t n, int threads) {
  for_chunks(n, threads,
             [&](std::size_t b, std::size_t e) { add_relu_block(y + b, z + b, e - b); });
}

}  // namespace bnorm_bench
