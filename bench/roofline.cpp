#include "roofline.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include <immintrin.h>

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

// The same passes with non-temporal stores, in the widest vectors the CPU has: the cached
// loop up to y's first cache line and after its last whole vector, the vectors streamed
// between, and a fence so that the stores are ordered before the pass returns.
std::size_t line_head(const float* y, std::size_t n) {
  const std::size_t off = reinterpret_cast<std::uintptr_t>(y) % 64 / sizeof(float);
  return off == 0 ? 0 : std::min(n, 64 / sizeof(float) - off);
}

// The two streamed passes for one ISA, from its vector type, width and intrinsics.
#define BNORM_BENCH_STREAMED_PASSES(TARGET, ISA, V, LANES, SET1, LOADU, ADD, MUL, STREAM)         \
  TARGET void affine_streamed_##ISA(const float* x, float* y, std::size_t n) {                    \
    std::size_t i = line_head(y, n);                                                              \
    affine_block(x, y, i);                                                                        \
    const V a = SET1(1.5f), b = SET1(0.25f);                                                      \
    for (; i + LANES <= n; i += LANES) STREAM(y + i, ADD(MUL(a, LOADU(x + i)), b));               \
    affine_block(x + i, y + i, n - i);                                                            \
    _mm_sfence();                                                                                 \
  }                                                                                               \
  TARGET void combine_streamed_##ISA(const float* x, const float* dy, float* dx, std::size_t n) { \
    std::size_t i = line_head(dx, n);                                                             \
    combine_block(x, dy, dx, i);                                                                  \
    const V a = SET1(1.5f), b = SET1(-0.5f), c = SET1(0.25f);                                     \
    for (; i + LANES <= n; i += LANES) {                                                          \
      STREAM(dx + i, ADD(ADD(MUL(a, LOADU(dy + i)), MUL(b, LOADU(x + i))), c));                   \
    }                                                                                             \
    combine_block(x + i, dy + i, dx + i, n - i);                                                  \
    _mm_sfence();                                                                                 \
  }
BNORM_BENCH_STREAMED_PASSES(__attribute__((target("avx512f"))), avx512, __m512, 16, _mm512_set1_ps,
                            _mm512_loadu_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_stream_ps)
BNORM_BENCH_STREAMED_PASSES(__attribute__((target("avx"))), avx, __m256, 8, _mm256_set1_ps,
                            _mm256_loadu_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_stream_ps)
BNORM_BENCH_STREAMED_PASSES(, sse2, __m128, 4, _mm_set1_ps, _mm_loadu_ps, _mm_add_ps, _mm_mul_ps,
                            _mm_stream_ps)
#undef BNORM_BENCH_STREAMED_PASSES

void affine_streamed(const float* x, float* y, std::size_t n) {
  static const auto kernel = __builtin_cpu_supports("avx512f") ? affine_streamed_avx512
                             : __builtin_cpu_supports("avx")   ? affine_streamed_avx
                                                               : affine_streamed_sse2;
  kernel(x, y, n);
}

void combine_streamed(const float* x, const float* dy, float* dx, std::size_t n) {
  static const auto kernel = __builtin_cpu_supports("avx512f") ? combine_streamed_avx512
                             : __builtin_cpu_supports("avx")   ? combine_streamed_avx
                                                               : combine_streamed_sse2;
  kernel(x, dy, dx, n);
}

// The read-only passes, in the widest vectors the CPU has, each with eight independent chains of
// additions: one chain (what `#pragma omp simd reduction` gives) waits an addition's latency
// for every vector, and over a cache-resident tensor read slower than a pass that reads and
// writes the same bytes.
#define BNORM_BENCH_SUM_PASSES(TARGET, ISA, V, LANES, ZERO, LOADU, ADD, MUL, STORE)        \
  TARGET double lanes_sum_##ISA(V v) {                                                     \
    alignas(64) float lanes[LANES];                                                        \
    STORE(lanes, v);                                                                       \
    double s = 0.0;                                                                        \
    for (float lane : lanes) s += lane;                                                    \
    return s;                                                                              \
  }                                                                                        \
  TARGET double sum_##ISA(const float* x, std::size_t n) {                                 \
    V a[8];                                                                                \
    for (V & v : a) v = ZERO();                                                            \
    std::size_t i = 0;                                                                     \
    for (; i + 8 * LANES <= n; i += 8 * LANES) {                                           \
      for (int k = 0; k < 8; ++k) a[k] = ADD(a[k], LOADU(x + i + k * LANES));              \
    }                                                                                      \
    for (; i + LANES <= n; i += LANES) a[0] = ADD(a[0], LOADU(x + i));                     \
    double tail = 0.0;                                                                     \
    for (; i < n; ++i) tail += x[i];                                                       \
    const V all =                                                                          \
        ADD(ADD(ADD(a[0], a[1]), ADD(a[2], a[3])), ADD(ADD(a[4], a[5]), ADD(a[6], a[7]))); \
    return lanes_sum_##ISA(all) + tail;                                                    \
  }                                                                                        \
  TARGET double sum2_##ISA(const float* x, const float* dy, std::size_t n) {               \
    V s[4], t[4];                                                                          \
    for (int k = 0; k < 4; ++k) s[k] = t[k] = ZERO();                                      \
    std::size_t i = 0;                                                                     \
    for (; i + 4 * LANES <= n; i += 4 * LANES) {                                           \
      for (int k = 0; k < 4; ++k) {                                                        \
        const V d = LOADU(dy + i + k * LANES);                                             \
        s[k] = ADD(s[k], d);                                                               \
        t[k] = ADD(t[k], MUL(d, LOADU(x + i + k * LANES)));                                \
      }                                                                                    \
    }                                                                                      \
    double tail = 0.0;                                                                     \
    for (; i < n; ++i) tail += dy[i] + dy[i] * x[i];                                       \
    const V all =                                                                          \
        ADD(ADD(ADD(s[0], s[1]), ADD(s[2], s[3])), ADD(ADD(t[0], t[1]), ADD(t[2], t[3]))); \
    return lanes_sum_##ISA(all) + tail;                                                    \
  }
BNORM_BENCH_SUM_PASSES(__attribute__((target("avx512f"))), avx512, __m512, 16, _mm512_setzero_ps,
                       _mm512_loadu_ps, _mm512_add_ps, _mm512_mul_ps, _mm512_store_ps)
BNORM_BENCH_SUM_PASSES(__attribute__((target("avx"))), avx, __m256, 8, _mm256_setzero_ps,
                       _mm256_loadu_ps, _mm256_add_ps, _mm256_mul_ps, _mm256_store_ps)
BNORM_BENCH_SUM_PASSES(, sse2, __m128, 4, _mm_setzero_ps, _mm_loadu_ps, _mm_add_ps, _mm_mul_ps,
                       _mm_store_ps)
#undef BNORM_BENCH_SUM_PASSES

double sum_block(const float* x, std::size_t n) {
  static const auto kernel = __builtin_cpu_supports("avx512f") ? sum_avx512
                             : __builtin_cpu_supports("avx")   ? sum_avx
                                                               : sum_sse2;
  return kernel(x, n);
}

double sum2_block(const float* x, const float* dy, std::size_t n) {
  static const auto kernel = __builtin_cpu_supports("avx512f") ? sum2_avx512
                             : __builtin_cpu_supports("avx")   ? sum2_avx
                                                               : sum2_sse2;
  return kernel(x, dy, n);
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

void stream_affine(const float* x, float* y, std::size_t n, int threads, stores kind) {
  for_chunks(n, threads, [&](std::size_t b, std::size_t e) {
    if (kind == stores::streamed) {
      affine_streamed(x + b, y + b, e - b);
    } else {
      affine_block(x + b, y + b, e - b);
    }
  });
}

double stream_sum(const float* x, std::size_t n, int threads) {
  return sum_chunks(n, threads,
                    [&](std::size_t b, std::size_t e) { return sum_block(x + b, e - b); });
}

double stream_sum2(const float* x, const float* dy, std::size_t n, int threads) {
  return sum_chunks(n, threads,
                    [&](std::size_t b, std::size_t e) { return sum2_block(x + b, dy + b, e - b); });
}

void stream_combine(const float* x, const float* dy, float* dx, std::size_t n, int threads,
                    stores kind) {
  for_chunks(n, threads, [&](std::size_t b, std::size_t e) {
    if (kind == stores::streamed) {
      combine_streamed(x + b, dy + b, dx + b, e - b);
    } else {
      combine_block(x + b, dy + b, dx + b, e - b);
    }
  });
}

void stream_relu(float* y, std::size_t n, int threads) {
  for_chunks(n, threads, [&](std::size_t b, std::size_t e) { relu_block(y + b, e - b); });
}

void stream_add_relu(float* y, const float* z, std::size_t n, int threads) {
  for_chunks(n, threads,
             [&](std::size_t b, std::size_t e) { add_relu_block(y + b, z + b, e - b); });
}

}  // namespace bnorm_bench
